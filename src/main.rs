//! The `manymodel` command: flags in, library call out.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use manymodel::scoring::UnknownPartition;

/// mimalloc instead of the system allocator: events are decoded on the consumer loop's thread
/// and freed on their actor's, which glibc's malloc handles slowly and unevenly (`manymodel
/// bench`, scoring: 4.5 to 5.1 µs of CPU per event with mimalloc, 4.6 to 9.6 with glibc). With
/// the crate's `override` feature (Cargo.toml) it also serves librdkafka's `malloc`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "manymodel",
    version,
    about = "Serve thousands of per-partition forecasting models over Kafka"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fit one model per partition plus a fallback, and write a bundle.
    Train {
        /// The training spec (TOML).
        #[arg(long)]
        spec: PathBuf,
        /// The sales history: CSV with a header, or Parquet when named *.parquet.
        #[arg(long)]
        input: PathBuf,
        /// The bundle file to write.
        #[arg(long)]
        output: PathBuf,
        /// The bundle version (default: the UTC time, e.g. 20261125T081500Z).
        #[arg(long)]
        version: Option<String>,
        /// Stop at the first bad row instead of skipping it.
        #[arg(long)]
        strict: bool,
        /// Write a delta of this bundle: refit only some partitions and keep the rest from it.
        #[arg(long)]
        base: Option<PathBuf>,
        /// With --base: the partitions to refit (default: every partition in the history).
        #[arg(long, value_delimiter = ',', requires = "base")]
        partitions: Vec<String>,
    },
    /// Publish a bundle on the control topic: every daemon validates it and swaps it in.
    Publish {
        /// The bundle file (full or delta).
        #[arg(long)]
        bundle: PathBuf,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The control topic the daemons read ([kafka] control_topic).
        #[arg(long)]
        control_topic: String,
        /// Sign with this secret key (from `manymodel keygen`).
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Bytes per chunk; keep it below the broker's message size limit.
        #[arg(long, default_value_t = manymodel::control::publish::DEFAULT_CHUNK_BYTES)]
        chunk_bytes: usize,
        /// Only hand the bundle to the daemons; activate it later with `control activate`.
        #[arg(long)]
        no_activate: bool,
    },
    /// Send a command to every daemon: activate a version they hold, or roll back.
    Control {
        #[command(subcommand)]
        action: ControlAction,
    },
    /// Write an ed25519 key pair for signing bundles: KEY (secret) and KEY.pub.
    Keygen {
        /// The secret key file; the public key goes to the same path plus `.pub`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a bundle from models trained elsewhere (XGBoost JSON/UBJSON, linear JSON).
    Import {
        /// The import manifest (TOML): feature spec, one model file per partition, feature
        /// name mapping.
        #[arg(long)]
        manifest: PathBuf,
        /// The bundle file to write.
        #[arg(long)]
        output: PathBuf,
        /// The bundle version (default: the UTC time, e.g. 20261125T081500Z).
        #[arg(long)]
        version: Option<String>,
    },
    /// Print what a bundle holds, or one partition's model.
    Inspect {
        /// The bundle file.
        bundle: PathBuf,
        /// Show this partition's model.
        #[arg(long)]
        partition: Option<String>,
    },
    /// Score a file of events offline (JSONL, an Avro container file, or Parquet), through the
    /// serving code.
    Predict {
        /// The bundle file.
        #[arg(long)]
        bundle: PathBuf,
        /// One JSON event per line, or with --format avro an Avro object container file; a file
        /// named *.parquet is read as Parquet (columns by name).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the predictions: one JSON record per line, or with --format avro an
        /// Avro container file of schemas/prediction.avsc records; a file named *.parquet gets
        /// Parquet with the same columns.
        #[arg(long)]
        output: PathBuf,
        /// What to do with partitions that have no model: score with the fallback or reject.
        #[arg(long, value_parser = ["fallback", "dlq"], default_value = "fallback")]
        unknown_partition: String,
        /// The format of input and output (a *.parquet side is Parquet whatever this says).
        #[arg(long, value_parser = ["json", "avro"], default_value = "json")]
        format: String,
        /// With --format avro: the reader schema the file's writer schema is resolved against
        /// (added fields take their defaults); by default the file is read as written.
        #[arg(long)]
        schema: Option<PathBuf>,
    },
    /// Refit drifting stores on their recent actuals and publish the refits that beat the
    /// active models, as a delta of the active version.
    Retrain {
        /// The retrain configuration (TOML; config/retrain.toml shows every field).
        #[arg(long)]
        config: PathBuf,
        /// Keep running: retrain stores as drift records arrive, each at most once per
        /// [watch] cooldown_secs, until SIGINT or SIGTERM.
        #[arg(long)]
        watch: bool,
        /// Refit these stores (their actuals of the last [actuals] window_secs) instead of
        /// the drifting ones.
        #[arg(long, value_delimiter = ',', conflicts_with = "watch")]
        partitions: Vec<String>,
        /// Build on this full bundle instead of the control topic's active version.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Also write the delta bundle to this file.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Decide (and write --output) but publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// The delta's version (default: the base's, plus .r and the UTC time).
        #[arg(long, conflicts_with = "watch")]
        version: Option<String>,
    },
    /// Run the daemon: score a Kafka topic until SIGINT or SIGTERM.
    Serve {
        /// The serve configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Write synthetic history.csv, events.jsonl, actuals.jsonl, drift.json and train.toml.
    Generate {
        /// Number of stores.
        #[arg(long, default_value_t = 50)]
        stores: usize,
        /// Days of hourly history.
        #[arg(long, default_value_t = 60)]
        days: usize,
        /// Events after the history (files: default 10,000; streaming: default no limit).
        #[arg(long)]
        events: Option<usize>,
        /// Output folder for history.csv, events.jsonl, actuals.jsonl (each event with its
        /// realised `sales`), drift.json (which stores drift, every store's noise sd) and
        /// train.toml.
        #[arg(long, required_unless_present = "brokers")]
        out: Option<PathBuf>,
        /// Random seed; the same seed gives the same stores, in files and in a stream.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Stream events to Kafka instead of writing files: the bootstrap servers.
        #[arg(long, requires = "topic", conflicts_with = "out")]
        brokers: Option<String>,
        /// The topic to stream to.
        #[arg(long, requires = "brokers")]
        topic: Option<String>,
        /// Events per second when streaming.
        #[arg(long, default_value_t = 100, requires = "brokers")]
        rate: u64,
        /// The share of stores (0..=1, chosen by the seed; round(FRACTION × stores) of them)
        /// whose behaviour shifts from event --drift-after on: a new base level, 4-8 noise sd
        /// away, and a price elasticity scaled the same way. Default 0: no store drifts.
        #[arg(long, value_name = "FRACTION", requires = "drift_after")]
        drift: Option<f64>,
        /// With --drift: the number (from 0, counted across all stores) of the first event
        /// under the new behaviour; the history and earlier events keep the old one.
        #[arg(long, value_name = "N", requires = "drift")]
        drift_after: Option<usize>,
        /// When streaming: also produce each event's actual (the event plus its realised
        /// `sales`) to this topic, keyed by store, right after the event.
        #[arg(long, value_name = "TOPIC", requires = "brokers")]
        actuals_topic: Option<String>,
        /// When streaming: write the drift report (drift.json's shape) to this file.
        #[arg(long, value_name = "PATH", requires = "brokers")]
        drift_report: Option<PathBuf>,
        #[command(flatten)]
        kafka: KafkaOptionArgs,
    },
    /// Generate, train, serve and score on an in-process Kafka mock, and report.
    Demo {
        /// Number of stores.
        #[arg(long, default_value_t = 200)]
        stores: usize,
        /// Events to stream.
        #[arg(long, default_value_t = 50_000)]
        events: usize,
    },
    /// Measure the serving path end to end against a passthrough baseline.
    Bench {
        /// Bootstrap servers; by default an in-process MockCluster.
        #[arg(long)]
        brokers: Option<String>,
        /// librdkafka options for every client of the run (loader, pipelines, admin, control
        /// topic), on a real broker or the MockCluster: TLS and SASL, or settings to try such
        /// as -X linger.ms=1.
        #[command(flatten)]
        kafka: KafkaOptionArgs,
        /// A librdkafka option for the bench's loader only, the stand-in for your producers
        /// (repeatable; wins over -X for the loader): -X linger.ms=0.5 --loader-option
        /// linger.ms=2 tries manymodel's output at 0.5 ms with producers that batch for 2.
        #[arg(long, value_name = "KEY=VALUE")]
        loader_option: Vec<String>,
        /// Events to load for the throughput run.
        #[arg(long, default_value_t = 200_000, value_parser = at_least_one::<usize>)]
        events: usize,
        /// Number of stores.
        #[arg(long, default_value_t = 1000)]
        stores: usize,
        /// Kafka partitions of the input topic. The run creates its topics (bench-in-*,
        /// bench-out-*, bench-live-*, bench-probe-*, bench-dlq-*, bench-control-*, named with
        /// a timestamp); on a real broker they stay behind, to be deleted afterwards (all match
        /// `bench-.*`). On the MockCluster it is raised so that no Kafka partition holds more
        /// than the mock's 5 MB (10 for 200,000 events), and a latency run's input gets the
        /// fewest, up to this many, that hold a quarter second each (the mock's fetch walks
        /// every record batch a Kafka partition holds).
        #[arg(long, default_value_t = 6)]
        kafka_partitions: i32,
        /// Events per second for the latency runs (--latency-seconds each); `half`: half the highest rate
        /// the scoring pipeline keeps up with while the bench's loader streams into it on this
        /// machine (measured first, and printed); `half-drain`: half the scoring pipeline's
        /// drain throughput (the loader idle).
        #[arg(long, default_value = "5000", value_parser = manymodel::bench::LatencyRate::parse)]
        latency_rate: manymodel::bench::LatencyRate,
        /// Seconds each latency run streams, 1 to 3,600; the first fifth warms up. On a real
        /// broker, 30 gives a p99 that one stall of the broker (a garbage collection, a burst
        /// of writeback) does not decide alone.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        latency_seconds: u64,
        /// Instead of the Kafka benchmark: score a synthetic ensemble of this many trees on
        /// one core and print predictions per second.
        #[arg(long)]
        trees: Option<usize>,
        /// Instead of the Kafka benchmark: train the history --input under --spec once and
        /// print rows/s, stores/s and the peak RSS (scripts/bench-train-python compares it
        /// with pandas and scikit-learn).
        #[arg(long, requires_all = ["spec", "input"], conflicts_with = "trees")]
        train: bool,
        /// The training spec, with --train.
        #[arg(long, requires = "train")]
        spec: Option<PathBuf>,
        /// The history (CSV, or Parquet when named *.parquet), with --train.
        #[arg(long, requires = "train")]
        input: Option<PathBuf>,
        /// Depth of every tree, with --trees.
        #[arg(long, default_value_t = 6, requires = "trees")]
        depth: usize,
        /// Also measure latency while a new bundle is swapped in every second (hot reload).
        #[arg(long)]
        reload: bool,
        /// The input format of the scoring pipeline: JSON, or Avro with Confluent framing
        /// (writer schema ids resolved from a local table, as without a registry).
        #[arg(long, value_parser = ["json", "avro"], default_value = "json")]
        format: String,
        /// Records per batch when loading events (librdkafka batch.num.messages); by default
        /// librdkafka batches. Use 1 against tansu 0.6.0, which cannot fetch from inside a
        /// record batch: a Kafka partition paused and resumed mid-batch is read again from
        /// further back (counted as read gaps), which slows the run.
        #[arg(long, value_parser = at_least_one::<u32>)]
        records_per_batch: Option<u32>,
        /// Replicas of each topic the run creates on a real broker; -1 takes the broker's
        /// default.replication.factor. A cluster whose min.insync.replicas is above it refuses
        /// the run's writes.
        #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = replication_factor)]
        replication_factor: i32,
        /// Throughput runs per pipeline, alternating passthrough and scoring; events/s and
        /// the ratio are the medians.
        #[arg(long, default_value_t = 3, value_parser = at_least_one::<u64>)]
        repeat: u64,
    },
}

/// A count that must be at least 1 (`--events`, `--repeat`, `--records-per-batch`).
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        _ => Err(format!("{s:?}: give a whole number, at least 1")),
    }
}

/// `--replication-factor`: -1 (the broker's default) or 1 to 32767.
fn replication_factor(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(n) if n == -1 || (1..=i32::from(i16::MAX)).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: give the replicas of each topic (1 to 32767), or -1 for the broker's default"
        )),
    }
}

/// Where a tool connects: the bootstrap servers and librdkafka options (TLS, SASL).
#[derive(clap::Args)]
struct KafkaArgs {
    /// Bootstrap servers.
    #[arg(long)]
    brokers: String,
    #[command(flatten)]
    options: KafkaOptionArgs,
}

/// librdkafka options for a tool, as serve's `[kafka] librdkafka_options` holds them.
#[derive(clap::Args)]
struct KafkaOptionArgs {
    /// A librdkafka option, e.g. -X security.protocol=SASL_SSL (repeatable; wins over
    /// --command-config).
    #[arg(short = 'X', long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_option: Vec<String>,
    /// A client properties file (key=value lines, as Kafka's own tools take) of librdkafka
    /// options: keeps passwords off the command line.
    #[arg(long, value_name = "FILE")]
    command_config: Option<PathBuf>,
}

impl KafkaOptionArgs {
    fn connection(
        &self,
        brokers: &str,
    ) -> manymodel::Result<manymodel::kafka::connection::Connection> {
        manymodel::kafka::connection::Connection::new(
            brokers,
            self.command_config.as_deref(),
            &self.kafka_option,
        )
    }
}

impl KafkaArgs {
    fn connection(&self) -> manymodel::Result<manymodel::kafka::connection::Connection> {
        self.options.connection(&self.brokers)
    }
}

#[derive(Subcommand)]
enum ControlAction {
    /// Make a version the daemons already hold the active one.
    Activate {
        /// The version.
        #[arg(long)]
        version: String,
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The control topic.
        #[arg(long)]
        control_topic: String,
    },
    /// Go back to the version that was active before the current one.
    Rollback {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// The control topic.
        #[arg(long)]
        control_topic: String,
    },
}

/// Prints a line on stdout; a reader that went away (`| head`) is no reason to panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
fn main() -> ExitCode {
    manymodel::memory::without_huge_pages();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> manymodel::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(manymodel::memory::on_idle)
        .build()
        .map_err(|e| manymodel::Error::Internal(format!("cannot start the async runtime: {e}")))
}

fn run(command: Command) -> manymodel::Result<()> {
    match command {
        Command::Train {
            spec,
            input,
            output,
            version,
            strict,
            base,
            partitions,
        } => {
            let report = manymodel::train::run(&manymodel::train::TrainOptions {
                spec,
                input,
                output,
                version,
                strict,
                base,
                partitions,
                progress: std::io::stderr().is_terminal(),
            })?;
            print!("{report}");
        }
        Command::Import {
            manifest,
            output,
            version,
        } => {
            let report = manymodel::import::run(&manymodel::import::ImportOptions {
                manifest,
                output,
                version,
            })?;
            print!("{report}");
        }
        Command::Inspect { bundle, partition } => {
            let b = manymodel::model::bundle::Bundle::read(&bundle)?;
            match partition {
                None => print!("{}", manymodel::inspect::summary(&b)),
                Some(id) => match b.partition(&id) {
                    Some(m) => print!("{}", manymodel::inspect::partition(&b, m)),
                    None => {
                        return Err(manymodel::Error::Usage(format!(
                            "{} has no model for partition {id:?}; it is scored by the fallback (inspect without --partition to see it)",
                            bundle.display()
                        )))
                    }
                },
            }
        }
        Command::Predict {
            bundle,
            input,
            output,
            unknown_partition,
            format,
            schema,
        } => {
            let unknown_partition = if unknown_partition == "dlq" {
                UnknownPartition::Dlq
            } else {
                UnknownPartition::Fallback
            };
            let report = manymodel::predict::run(
                &manymodel::predict::PredictOptions {
                    bundle,
                    input,
                    output: output.clone(),
                    unknown_partition,
                    format: if format == "avro" {
                        manymodel::codec::Format::Avro
                    } else {
                        manymodel::codec::Format::Json
                    },
                    schema,
                },
                &mut std::io::stderr(),
            )?;
            say!(
                "{} predictions ({} by the fallback) written to {}; {} {} rejected",
                report.predicted,
                report.fallback,
                output.display(),
                report.rejected,
                report.unit
            );
        }
        Command::Publish {
            bundle,
            kafka,
            control_topic,
            signing_key,
            chunk_bytes,
            no_activate,
        } => {
            let published = manymodel::control::publish::publish(
                &manymodel::control::publish::PublishOptions {
                    bundle,
                    connection: kafka.connection()?,
                    control_topic,
                    signing_key,
                    chunk_bytes,
                    activate: !no_activate,
                },
            )?;
            print!("{published}");
        }
        Command::Control { action } => {
            use manymodel::control::message::ControlMessage;
            let (kafka, topic, message) = match action {
                ControlAction::Activate {
                    version,
                    kafka,
                    control_topic,
                } => (kafka, control_topic, ControlMessage::Activate { version }),
                ControlAction::Rollback {
                    kafka,
                    control_topic,
                } => (kafka, control_topic, ControlMessage::Rollback),
            };
            manymodel::control::publish::command(&kafka.connection()?, &topic, &message)?;
            say!(
                "sent {} to {topic}; each daemon applies it, or refuses it and keeps its active version (see its /readyz bundle_version, its log and manymodel_bundle_rejections_total)",
                serde_json::to_string(&message).unwrap_or_default()
            );
        }
        Command::Keygen { out } => {
            let (secret, public) = manymodel::control::signing::keygen(&out)?;
            say!(
                "secret key: {} (keep it private; publish --signing-key)\npublic key: {} (list it in [model] trusted_keys)",
                secret.display(),
                public.display()
            );
        }
        Command::Retrain {
            config,
            watch,
            partitions,
            bundle,
            output,
            dry_run,
            version,
        } => {
            let config = manymodel::retrain::RetrainConfig::load(&config)?;
            let opts = manymodel::retrain::RetrainOptions {
                partitions,
                bundle,
                output,
                dry_run,
                version,
            };
            if watch {
                let runtime = runtime()?;
                let stop = tokio_util::sync::CancellationToken::new();
                runtime.spawn(manymodel::serve::cancel_on_signal(stop.clone()));
                manymodel::retrain::watch::watch(&config, &opts, &stop, &mut std::io::stdout())?;
            } else {
                print!("{}", manymodel::retrain::run(&config, &opts)?);
            }
        }
        Command::Serve { config } => runtime()?.block_on(manymodel::serve::serve(&config))?,
        Command::Generate {
            stores,
            days,
            events,
            out,
            seed,
            brokers,
            topic,
            rate,
            drift,
            drift_after,
            actuals_topic,
            drift_report,
            kafka,
        } => {
            let drift = manymodel::generate::Drift {
                fraction: drift.unwrap_or(0.0),
                after: drift_after.unwrap_or(0),
            };
            if let (Some(brokers), Some(topic)) = (brokers, topic) {
                let sent = manymodel::generate::stream(&manymodel::generate::StreamOptions {
                    stores,
                    seed,
                    connection: kafka.connection(&brokers)?,
                    topic,
                    rate,
                    events,
                    drift,
                    actuals_topic,
                    drift_report,
                })?;
                say!("streamed {sent} events");
                return Ok(());
            }
            let out = out.ok_or_else(|| manymodel::Error::Usage("--out is required".into()))?;
            let r = manymodel::generate::run(&manymodel::generate::GenerateOptions {
                stores,
                days,
                events: events.unwrap_or(10_000),
                out: out.clone(),
                seed,
                drift,
            })?;
            say!(
                "wrote {} history rows, {} events with their actuals, drift.json and train.toml to {}",
                r.history_rows,
                r.events,
                out.display()
            );
            if !r.drifted.is_empty() {
                let shown = &r.drifted[..r.drifted.len().min(10)];
                say!(
                    "{} drift from event {}: {}{}",
                    manymodel::plural::count(r.drifted.len(), "store"),
                    drift.after,
                    shown.join(", "),
                    if shown.len() < r.drifted.len() {
                        ", ... (all in drift.json)"
                    } else {
                        ""
                    }
                );
            }
        }
        Command::Demo { stores, events } => {
            runtime()?.block_on(manymodel::demo::run(stores, events, &mut std::io::stdout()))?
        }
        Command::Bench {
            train: true,
            spec: Some(spec),
            input: Some(input),
            ..
        } => {
            manymodel::bench_train::run(spec, input, &mut std::io::stdout())?;
        }
        Command::Bench {
            trees: Some(trees),
            depth,
            ..
        } => {
            manymodel::bench_trees::run(
                trees,
                depth,
                std::time::Duration::from_secs(3),
                &mut std::io::stdout(),
            )?;
        }
        Command::Bench {
            brokers,
            events,
            stores,
            kafka_partitions,
            latency_rate,
            latency_seconds,
            reload,
            format,
            records_per_batch,
            repeat,
            kafka,
            loader_option,
            replication_factor,
            trees: None,
            ..
        } => runtime()?.block_on(manymodel::bench::run(
            &manymodel::bench::BenchOptions {
                kafka_options: kafka
                    .connection(brokers.as_deref().unwrap_or_default())?
                    .options,
                loader_options: manymodel::bench::loader_options(&loader_option)?,
                brokers,
                events,
                stores,
                kafka_partitions,
                latency_rate,
                latency_seconds,
                reload,
                format: if format == "avro" {
                    manymodel::codec::Format::Avro
                } else {
                    manymodel::codec::Format::Json
                },
                records_per_batch,
                replication_factor,
                repeat: repeat as usize,
            },
            &mut std::io::stdout(),
        ))?,
    }
    Ok(())
}
