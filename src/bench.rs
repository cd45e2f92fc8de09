//! `manymodel bench`: the serving path end to end, next to a passthrough baseline that uses
//! the same consumer, producer and offset handling but copies records instead of scoring.
//!
//! Two measurements per mode, in one run:
//! * throughput: N events are loaded first, then a new pipeline drains them; events/s from the
//!   first record read to the last output acknowledged, the median of `--repeat` runs per mode
//!   (alternating, so that drift in the machine's load hits both alike);
//! * latency: events are produced at a steady rate while the pipeline runs; each one's
//!   latency is from its produce timestamp to its output being acknowledged (millisecond
//!   resolution: Kafka timestamps are milliseconds).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::codec::framing::Framing;
use crate::codec::{avro_twin, Format, SALES_EVENT_AVSC};
use crate::config::InputConfig;
use crate::control::publish::{publish_bytes, PublishOptions, DEFAULT_CHUNK_BYTES};
use crate::control::reader::ControlOptions;
use crate::control::ActiveBundle;
use crate::error::{Error, Result};
use crate::kafka::connection::Connection;
use crate::local;
use crate::memory;
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::serve::{self, Mode};

/// The rate the latency runs stream events at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyRate {
    /// This many events per second.
    PerSecond(u64),
    /// Half the highest rate the scoring pipeline keeps up with while the bench's loader
    /// streams into it on the same machine (see [`streamed_max`]).
    HalfMax,
    /// Half the scoring pipeline's drain throughput, as the throughput runs measured it: the
    /// meaning of `half` until 5 December 2026. The loader is idle while a backlog drains, so
    /// on a machine that also runs the loader (and the broker) this rate loads it far more
    /// than half.
    HalfDrain,
}

impl LatencyRate {
    /// Parses `half`, `half-drain` or a number of events per second.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "half" => Ok(LatencyRate::HalfMax),
            "half-drain" => Ok(LatencyRate::HalfDrain),
            n => match n.parse::<u64>() {
                Ok(r) if r > 0 => Ok(LatencyRate::PerSecond(r)),
                _ => Err(format!(
                    "{n:?}: give events per second (at least 1), `half` for half the highest rate the scoring pipeline keeps up with while the loader streams, or `half-drain` for half its drain throughput"
                )),
            },
        }
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Bootstrap servers; `None` starts an in-process MockCluster.
    pub brokers: Option<String>,
    /// librdkafka options for every client the run creates (the loader, the pipelines'
    /// consumers and producers, the admin client, the control topic's publisher and reader):
    /// TLS and SASL for a secured broker, or settings such as `linger.ms` to try.
    pub kafka_options: BTreeMap<String, String>,
    /// librdkafka options for the loader only, after `kafka_options`: the loader stands for
    /// the producers of the events, whose batching counts in the latency.
    pub loader_options: BTreeMap<String, String>,
    /// Events for the throughput run.
    pub events: usize,
    /// Stores in the generated data.
    pub stores: usize,
    /// Kafka partitions of the input topics.
    pub kafka_partitions: i32,
    /// The rate of the latency runs.
    pub latency_rate: LatencyRate,
    /// Seconds each latency run streams (the first fifth warms up). A p99 over five seconds
    /// is decided by whether one stall of the broker (a collection, a burst of writeback)
    /// falls in them; thirty seconds average over several.
    pub latency_seconds: u64,
    /// Also measure latency while a new bundle is published and swapped in every second.
    pub reload: bool,
    /// The input format: JSON, or Avro with Confluent framing (schema id 1 =
    /// `schemas/sales_event.avsc`, from a local table).
    pub format: Format,
    /// Records per batch when loading events (librdkafka `batch.num.messages`); `None` keeps
    /// librdkafka's batching. `Some(1)` is needed on tansu 0.6.0, which answers a fetch that
    /// starts inside a record batch with nothing, so a Kafka partition paused and resumed
    /// mid-batch would never be read again.
    pub records_per_batch: Option<u32>,
    /// Replicas of each topic the run creates on a real broker (-1: the broker's
    /// `default.replication.factor`). A cluster whose `min.insync.replicas` is above it
    /// refuses the run's writes.
    pub replication_factor: i32,
    /// Throughput runs per pipeline, alternating passthrough and scoring; the median is
    /// reported (one run's ratio on a shared 2-core machine varies by several points).
    pub repeat: usize,
}

/// One mode's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Events per second, draining a backlog.
    pub events_per_sec: f64,
    /// CPU time of the whole process per event while draining, µs (with the MockCluster, the
    /// broker's share is in it too).
    pub cpu_us_per_event: f64,
    /// The latency at the steady rate.
    pub latency: Latency,
    /// Resident memory while the pipeline runs at the steady rate, bytes.
    pub steady_rss: Option<u64>,
}

struct Setup<'a> {
    /// The broker and the librdkafka options of every client.
    connection: &'a Connection,
    bundle: Arc<Bundle>,
    run_id: i64,
    /// The `[input]` of every pipeline started.
    input: InputConfig,
    /// Pipelines started so far: each gets a consumer group of its own, so every run reads
    /// its input from the beginning.
    started: std::sync::atomic::AtomicUsize,
    /// What to suspect if a run stops acknowledging outputs.
    suspect: Suspect,
}

impl Setup<'_> {
    async fn start(
        &self,
        mode: Mode,
        input: &str,
        output: &str,
        bundles: Option<ActiveBundle>,
    ) -> (
        Arc<PipelineStats>,
        CancellationToken,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let nth = self.started.fetch_add(1, Ordering::Relaxed);
        let name = format!("bench-{mode:?}-{input}-{}-{nth}", self.run_id).to_lowercase();
        let mut config = local::serve_config(
            &self.connection.brokers,
            &name,
            input,
            output,
            &format!("bench-dlq-{}", self.run_id),
        );
        config.input = self.input.clone();
        config.kafka.librdkafka_options = self.connection.options.clone();
        // The one lock per event serve does not take: the in-process latency histogram
        // the bench prints quantiles from.
        let stats = Arc::new(PipelineStats::printing_latency());
        let shutdown = CancellationToken::new();
        let handle = {
            let bundles = bundles.unwrap_or_else(|| crate::control::fixed(self.bundle.clone()));
            let (stats, shutdown) = (stats.clone(), shutdown.clone());
            tokio::spawn(async move { serve::run(&config, bundles, mode, stats, shutdown).await })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while stats.assigned.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (stats, shutdown, handle)
    }
}

/// How long the pipeline may go without an output acknowledged before the run gives up.
const NO_PROGRESS: Duration = Duration::from_secs(60);

/// How often the watcher looks at the pipeline's counters.
const WATCH_EVERY: Duration = Duration::from_micros(500);

/// Waits for the pipeline's first record read, then for `n` outputs acknowledged, and returns
/// the wall time and the process CPU time between the two. It watches from a thread of its
/// own: the runtime's workers are busy with the pipeline being measured, and a timer of theirs
/// can fire hundreds of milliseconds late, which would cut the start of the drain out of the
/// measurement. `suspect` names the likely cause if outputs stop.
async fn watch(
    stats: &Arc<PipelineStats>,
    n: u64,
    timeout: Duration,
    suspect: Suspect,
) -> Result<(Duration, Duration)> {
    let stats = stats.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let waiting = Instant::now();
        while stats.consumed.load(Ordering::Relaxed) == 0 {
            if waiting.elapsed() > NO_PROGRESS || Instant::now() > deadline {
                return Err(Error::Kafka(format!(
                    "no record read for {:?}; is the broker up, and does the input topic hold events?",
                    waiting.elapsed()
                )));
            }
            std::thread::sleep(WATCH_EVERY);
        }
        let (started, cpu) = (Instant::now(), process_cpu());
        wait_outputs(&stats, n, deadline, suspect)?;
        Ok((started.elapsed(), process_cpu().saturating_sub(cpu)))
    })
    .await
    .map_err(|e| Error::Internal(format!("the bench's watcher failed: {e}")))?
}

/// What to suspect when a run stops acknowledging outputs, by the broker and how the events
/// were loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suspect {
    /// The MockCluster, which drops a Kafka partition's oldest record batches beyond about 5 MB:
    /// a latency run's pipeline that fell further behind lost them.
    MockDropped,
    /// The broker itself: the events were loaded one per record batch.
    Broker,
    /// tansu 0.6.0, which cannot fetch from inside a record batch.
    Tansu,
}

impl Suspect {
    fn of(opts: &BenchOptions) -> Suspect {
        match (opts.brokers.is_none(), opts.records_per_batch == Some(1)) {
            (true, _) => Suspect::MockDropped,
            (false, true) => Suspect::Broker,
            (false, false) => Suspect::Tansu,
        }
    }
}

/// Blocks until `n` outputs are acknowledged, failing after [`NO_PROGRESS`] without one or at
/// `deadline`.
fn wait_outputs(stats: &PipelineStats, n: u64, deadline: Instant, suspect: Suspect) -> Result<()> {
    let mut report = Instant::now();
    let (mut last, mut progressed) = (stats.produced.load(Ordering::Relaxed), Instant::now());
    while stats.produced.load(Ordering::Relaxed) < n {
        let now = stats.produced.load(Ordering::Relaxed);
        if now != last {
            (last, progressed) = (now, Instant::now());
        } else if progressed.elapsed() > NO_PROGRESS {
            let refused = stats.delivery_failures.load(Ordering::Relaxed);
            let hint = match (refused, suspect) {
                (1.., _) => {
                    "the broker refused outputs (see the log): if the cluster's \
                     min.insync.replicas is above the topics' replicas, give \
                     --replication-factor (-1 takes the broker's default)"
                }
                (0, Suspect::MockDropped) => {
                    "the MockCluster keeps about 5 MB per Kafka partition and drops older record \
                     batches, and a latency run's input holds about a quarter second in each: \
                     the pipeline fell further behind and lost events; give a lower \
                     --latency-rate"
                }
                (0, Suspect::Broker) => {
                    "is the broker up, and does it acknowledge what the pipeline produces?"
                }
                (0, Suspect::Tansu) => {
                    "on tansu 0.6.0 run with --records-per-batch 1 (it cannot fetch from inside \
                     a record batch, so a Kafka partition resumed mid-batch is never read again)"
                }
            };
            return Err(Error::Kafka(format!(
                "no output acknowledged for {NO_PROGRESS:?} ({now} of {n}, {} read, {refused} refused by the broker); {hint}",
                stats.consumed.load(Ordering::Relaxed)
            )));
        }
        if report.elapsed() > Duration::from_secs(5) {
            report = Instant::now();
            tracing::info!(
                consumed = stats.consumed.load(Ordering::Relaxed),
                acknowledged = stats.produced.load(Ordering::Relaxed),
                failed = stats.delivery_failures.load(Ordering::Relaxed),
                "waiting for outputs"
            );
        }
        if Instant::now() > deadline {
            return Err(Error::Internal(format!(
                "only {} of {n} outputs acknowledged in time",
                stats.produced.load(Ordering::Relaxed)
            )));
        }
        std::thread::sleep(WATCH_EVERY);
    }
    Ok(())
}

/// Produces `payloads` (its distinct events in turn, as many as it counts) to `topic`, keyed
/// by store, at `rate` events/s (or as fast as possible), `records_per_batch` records per
/// batch (`None`: as librdkafka batches).
/// The `-X` options win over the loader's own, and `loader` (`--loader-option`) over those.
/// `acked`, when given, hears when the broker acknowledged each event.
async fn produce(
    connection: Connection,
    loader: BTreeMap<String, String>,
    topic: String,
    payloads: local::Cycle,
    rate: Option<u64>,
    records_per_batch: Option<u32>,
    acked: Option<Arc<PipelineStats>>,
) -> Result<()> {
    let mut options: Vec<(String, String)> = records_per_batch
        .map(|n| vec![("batch.num.messages".to_owned(), n.to_string())])
        .unwrap_or_default();
    options.extend(connection.options.clone());
    options.extend(loader);
    // A consumer's option given with -X for every client is no business of the loader's
    // (librdkafka would warn that it ignores it).
    options.retain(|(k, _)| crate::kafka::connection::is_producer_option(k));
    local::produce_events_with(&connection.brokers, &topic, payloads, rate, options, acked).await
}

/// Parses `--loader-option KEY=VALUE` flags and checks them as librdkafka would.
pub fn loader_options(flags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    for flag in flags {
        match flag.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                options.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => {
                return Err(Error::Usage(format!(
                    "--loader-option takes KEY=VALUE (a librdkafka producer option), got {flag:?}"
                )))
            }
        }
    }
    crate::kafka::connection::check_options(&options)
        .map_err(|what| Error::Usage(format!("--loader-option: {what}")))?;
    Ok(options)
}

/// Runs the benchmark and prints its table to `out`.
pub async fn run(opts: &BenchOptions, out: &mut dyn Write) -> Result<()> {
    // The pipelines record their metrics as `serve` does, so their cost is measured too (a
    // process that already has a recorder keeps it).
    let _ = crate::metrics::install();
    let run_id = now_ms();
    let mock = match &opts.brokers {
        None => Some(
            MockCluster::new(1)
                .map_err(|e| Error::Kafka(format!("cannot start the MockCluster: {e}")))?,
        ),
        Some(_) => None,
    };
    let connection = Connection {
        brokers: match (&mock, &opts.brokers) {
            (Some(m), _) => m.bootstrap_servers(),
            (None, Some(b)) => b.clone(),
            (None, None) => unreachable!("one of the two is set above"),
        },
        options: opts.kafka_options.clone(),
    };
    let t = |s: &str| format!("bench-{s}-{run_id}");
    let kafka_partitions = partitions_for(mock.is_some(), opts, opts.events);
    let topics = [
        (t("in"), kafka_partitions),
        (t("out-score"), kafka_partitions),
        (t("out-pass"), kafka_partitions),
        (t("dlq"), 1),
        (t("control"), 1),
    ];
    create_topics(mock.as_ref(), &connection, &topics, opts.replication_factor).await?;

    let work = local::workload(
        opts.stores,
        14,
        opts.events,
        11,
        "bench",
        Default::default(),
    )?;
    if work.fitted_stores < opts.stores {
        let _ = writeln!(
            out,
            "synthetic bundle: {} stores fitted from generated history, their models spread over {} stores",
            work.fitted_stores, opts.stores
        );
    }
    let bundle = Arc::new(work.bundle);
    // As `serve` does with the bundle it loads.
    bundle.into_huge_pages();
    let loaded_rss = memory::rss();
    let mut lines: Vec<Vec<u8>> = work.events.lines().map(|l| l.as_bytes().to_vec()).collect();
    let schema_file = std::env::temp_dir().join(format!("manymodel-bench-{run_id}.avsc"));
    let input = match opts.format {
        Format::Json => InputConfig::default(),
        Format::Avro => {
            // The same events as Avro twins, Confluent-framed with schema id 1.
            let schema = apache_avro::Schema::parse_str(SALES_EVENT_AVSC)
                .map_err(|e| Error::Internal(format!("schemas/sales_event.avsc: {e}")))?;
            for line in &mut lines {
                let json: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| Error::Internal(format!("a generated event: {e}")))?;
                let mut framed = vec![0, 0, 0, 0, 1];
                framed.extend(avro_twin(&schema, &json).map_err(Error::Internal)?);
                *line = framed;
            }
            std::fs::write(&schema_file, SALES_EVENT_AVSC)
                .map_err(|e| Error::io(&schema_file, e))?;
            InputConfig {
                format: Format::Avro,
                framing: Framing::Confluent,
                schemas: [("1".to_owned(), schema_file.clone())].into(),
                ..InputConfig::default()
            }
        }
    };
    let lines = Arc::new(lines);
    let backlog = local::Cycle {
        distinct: lines.clone(),
        count: opts.events,
    };

    let _ = writeln!(
        out,
        "manymodel bench: {} {} events, {} stores, {} Kafka partitions, broker {}",
        opts.events,
        match opts.format {
            Format::Json => "JSON",
            Format::Avro => "Avro (Confluent framing)",
        },
        opts.stores,
        kafka_partitions,
        if mock.is_some() {
            "MockCluster (in-process)".to_owned()
        } else {
            connection.brokers.clone()
        }
    );
    if !connection.options.is_empty() {
        let _ = writeln!(
            out,
            "librdkafka options of every client (-X, --command-config): {}",
            shown_options(&connection.options)
        );
    }
    if !opts.loader_options.is_empty() {
        let _ = writeln!(
            out,
            "librdkafka options of the loader only (--loader-option): {}",
            shown_options(&opts.loader_options)
        );
    }
    let load = Instant::now();
    produce(
        connection.clone(),
        opts.loader_options.clone(),
        t("in"),
        backlog.clone(),
        None,
        opts.records_per_batch,
        None,
    )
    .await?;
    let _ = writeln!(
        out,
        "loaded {} events in {:.2}s",
        opts.events,
        load.elapsed().as_secs_f64()
    );

    let setup = Setup {
        connection: &connection,
        bundle,
        run_id,
        input,
        started: Default::default(),
        suspect: Suspect::of(opts),
    };
    let modes = [
        (Mode::Passthrough, t("out-pass"), t("live-pass")),
        (Mode::Score, t("out-score"), t("live-score")),
    ];
    // Throughput: drain the backlog, `repeat` times per pipeline, alternating.
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut cpu: [Vec<f64>; 2] = Default::default();
    for _ in 0..opts.repeat.max(1) {
        for ((mode, output, _), (rates, cpu)) in modes.iter().zip(rates.iter_mut().zip(&mut cpu)) {
            let (rate, us) = drain(&setup, *mode, &t("in"), output, opts.events).await?;
            rates.push(rate);
            cpu.push(us);
        }
    }
    // Latency: events streamed at a steady rate through each pipeline.
    let drain_rate = median(&rates[1]).round() as u64;
    let (latency_rate, streamed) = match opts.latency_rate {
        LatencyRate::PerSecond(r) => (r, None),
        LatencyRate::HalfDrain => ((drain_rate / 2).max(1), None),
        LatencyRate::HalfMax => {
            let probes = streamed_max(&setup, &t, &lines, drain_rate, mock.as_ref(), opts).await?;
            let kept = probes.kept_up();
            ((kept / 2).max(1), Some(probes))
        }
    };
    // The backlog's events again, as many as the latency runs need.
    let latency_seconds = opts.latency_seconds.max(1);
    let live_events = (latency_rate * latency_seconds) as usize;
    let live = local::Cycle {
        distinct: lines.clone(),
        count: live_events,
    };
    let live_partitions = live_partitions(mock.is_some(), opts, latency_rate);
    let live_topics = [
        (t("live-score"), live_partitions),
        (t("live-pass"), live_partitions),
        (t("live-reload"), live_partitions),
        (t("out-reload"), live_partitions),
    ];
    create_topics(
        mock.as_ref(),
        &connection,
        &live_topics,
        opts.replication_factor,
    )
    .await?;
    let mut figures = Vec::new();
    for ((mode, output, live_in), (rates, cpu)) in modes.iter().zip(rates.iter().zip(&cpu)) {
        let mut f = Figures {
            events_per_sec: median(rates),
            cpu_us_per_event: median(cpu),
            ..Figures::default()
        };
        let (stats, stop, handle) = setup.start(*mode, live_in, output, None).await;
        f.latency = steady_latency(&stats, &connection, live_in, &live, latency_rate, opts).await?;
        f.steady_rss = memory::rss();
        stop.cancel();
        handle.await.map_err(|e| Error::Internal(e.to_string()))??;
        figures.push((*mode, f));
    }

    let reload = if opts.reload {
        Some(reload_latency(&setup, &t, &live, latency_rate, opts).await?)
    } else {
        None
    };

    let _ = writeln!(
        out,
        "\n{:<12} {:>12} {:>10} {:>10} {:>14} {:>16}",
        "pipeline", "events/s", "p50 ms", "p99 ms", "CPU µs/event", "steady RSS MiB"
    );
    for (mode, f) in &figures {
        let name = pipeline_name(*mode);
        let _ = writeln!(
            out,
            "{name:<12} {:>12.0} {:>10.1} {:>10.1} {:>14.2} {:>16.1}",
            f.events_per_sec,
            f.latency.p50_ms,
            f.latency.p99_ms,
            f.cpu_us_per_event,
            f.steady_rss.map_or(f64::NAN, memory::mib)
        );
    }
    // One side of the latency's split at the read, per pipeline.
    let split = |side: fn(&Latency) -> (f64, f64)| {
        let each = figures.iter().map(|(mode, f)| {
            let (p50, p99) = side(&f.latency);
            format!("{} {p50:.1} / {p99:.1}", pipeline_name(*mode))
        });
        each.collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(
        out,
        "of that latency, before the pipeline read the event (the loader's batching, the broker, the fetch), p50 / p99 ms: {}",
        split(|f| f.read_wait_ms)
    );
    if figures
        .iter()
        .all(|(_, f)| f.latency.input_acked_ms.is_some())
    {
        let _ = writeln!(
            out,
            "  of which until the broker acknowledged the event to the loader (its batching, the broker's append, seen on the loader's next tick), p50 / p99 ms: {}",
            split(|f| f.input_acked_ms.unwrap_or_default())
        );
    }
    let _ = writeln!(
        out,
        "and from the read to the acknowledgement (the pipeline, its producer's batching, the broker's acknowledgement), p50 / p99 ms: {}",
        split(|f| f.after_read_ms)
    );
    if let Some((p50, p99, swaps)) = reload {
        let _ = writeln!(
            out,
            "{:<12} {:>12} {p50:>10.1} {p99:>10.1}   ({swaps} bundles published and swapped in, one a second)",
            "scoring+reload", "-"
        );
    }
    let _ = writeln!(
        out,
        "memory: {} stores; resident after loading the bundle {:.1} MiB; peak {:.1} MiB{}",
        opts.stores,
        loaded_rss.map_or(f64::NAN, memory::mib),
        memory::peak_rss().map_or(f64::NAN, memory::mib),
        if opts.reload {
            " (with the hot swaps)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "bundle in memory: {:.0} bytes per store, by count of what it holds (ids, models, index)",
        setup.bundle.memory_bytes() as f64 / setup.bundle.partitions.len().max(1) as f64
    );
    let accuracy = accuracy_bytes(&setup.bundle);
    let scoring_rss = figures[1].1.steady_rss.map_or(f64::NAN, memory::mib);
    let _ = writeln!(
        out,
        "accuracy state ([actuals]): {:.0} bytes per store with a row for each of the {} stores ({:.1} MiB); scoring's steady RSS with it: {:.1} MiB",
        accuracy as f64 / setup.bundle.partitions.len().max(1) as f64,
        setup.bundle.partitions.len(),
        memory::mib(accuracy as u64),
        scoring_rss + memory::mib(accuracy as u64)
    );
    let _ = std::fs::remove_file(&schema_file);
    let ratio = figures[1].1.events_per_sec / figures[0].1.events_per_sec;
    let _ = writeln!(
        out,
        "\nscoring / passthrough throughput: {:.2} (scoring costs {:.0}% of the passthrough rate; goal: under 20%)",
        ratio,
        (1.0 - ratio).max(0.0) * 100.0
    );
    let pairs = cpu[1].len();
    let _ = writeln!(
        out,
        "scoring's extra CPU over passthrough: {:.2} µs per event ({}; goal: at most 1.0)",
        median(&extra_cpu(&cpu[0], &cpu[1])),
        if pairs == 1 {
            "one side-by-side run's difference: read it as a rough figure".to_owned()
        } else {
            format!("the median of the {pairs} side-by-side runs' differences")
        }
    );
    let _ = writeln!(
        out,
        "latency measured at {} events/s{} over the last {} of {} events ({} s, the first fifth warming up), from produce timestamp to acknowledgement, {}",
        latency_rate,
        match opts.latency_rate {
            LatencyRate::PerSecond(_) => "",
            LatencyRate::HalfMax => " (half the highest rate scoring kept up with while the loader streamed)",
            LatencyRate::HalfDrain => " (half the scoring pipeline's drain throughput)",
        },
        live_events - live_events / 5,
        live_events,
        latency_seconds,
        crate::plural::count(live_partitions as usize, "Kafka partition")
    );
    if let Some(probes) = &streamed {
        let _ = writeln!(
            out,
            "streamed maximum: {} events/s, the highest rate at which the scoring pipeline acknowledged at least {:.0}% of what the loader streamed into it on this machine (probes of {} s, rate / acknowledged: {}); its drain rate, with the loader idle: {drain_rate}",
            probes.kept_up(),
            KEPT_UP * 100.0,
            PROBE.as_secs_f64(),
            probes.shown()
        );
    }
    if rates[0].len() > 1 {
        // The individual runs, `decimals` places each.
        let list = |runs: &[f64], decimals: usize| {
            runs.iter()
                .map(|r| format!("{r:.decimals$}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "events/s is the median of {} throughput runs, alternating: passthrough {}; scoring {}",
            rates[0].len(),
            list(&rates[0], 0),
            list(&rates[1], 0)
        );
        let _ = writeln!(
            out,
            "CPU µs/event (the whole process{}, while draining): passthrough {}; scoring {}",
            if mock.is_some() {
                ", the MockCluster's broker threads included"
            } else {
                ""
            },
            list(&cpu[0], 2),
            list(&cpu[1], 2)
        );
    }
    Ok(())
}

/// Drains `events` backlog events from `input` through a new pipeline: events/s from the
/// first record read to the last output acknowledged, and the process's CPU µs per event
/// over that time.
async fn drain(
    setup: &Setup<'_>,
    mode: Mode,
    input: &str,
    output: &str,
    events: usize,
) -> Result<(f64, f64)> {
    let (stats, stop, handle) = setup.start(mode, input, output, None).await;
    let watched = watch(
        &stats,
        events as u64,
        Duration::from_secs(600),
        setup.suspect,
    )
    .await;
    let (elapsed, cpu) = match watched {
        Ok(times) => times,
        Err(e) => {
            stop.cancel();
            let _ = handle.await;
            return Err(e);
        }
    };
    let rate = events as f64 / elapsed.as_secs_f64();
    let cpu_us = cpu.as_secs_f64() * 1e6 / events as f64;
    stop.cancel();
    handle.await.map_err(|e| Error::Internal(e.to_string()))??;
    Ok((rate, cpu_us))
}

/// CPU time used by this process so far, over all its threads.
fn process_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to write; CLOCK_PROCESS_CPUTIME_ID is
    // always available on Linux.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0;
    match ok {
        true => Duration::new(t.tv_sec as u64, t.tv_nsec as u32),
        false => Duration::ZERO,
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Scoring's CPU per event minus the passthrough's, run by run: each scoring run is paired
/// with the passthrough run just before it, so a change in the machine's speed between runs
/// (large on a shared VM) falls mostly outside the difference.
fn extra_cpu(passthrough: &[f64], scoring: &[f64]) -> Vec<f64> {
    passthrough
        .iter()
        .zip(scoring)
        .map(|(p, s)| s - p)
        .collect()
}

/// Bytes of the `[actuals]` statistics with one row for every store of `bundle` (each
/// store's id and a row, as the actuals actor keeps them).
fn accuracy_bytes(bundle: &Bundle) -> usize {
    use crate::accuracy::stats::Thresholds;
    use crate::accuracy::table::AccuracyTable;
    let defaults = crate::config::ActualsConfig::new("bench-actuals");
    let mut table = AccuracyTable::new(Thresholds::new(&defaults), 0);
    for m in &bundle.partitions {
        let source = crate::scoring::ModelSource::Partition;
        table.observe(&m.partition, Some(m.rmse), source, &bundle.version, 0.0, 0);
    }
    table.memory_bytes()
}

/// How much of a stream the MockCluster should hold in each Kafka partition of a latency
/// run's input, seconds.
const MOCK_HOLDS: f64 = 0.25;

/// Kafka partitions for a latency run's input at `rate` events/s: `--kafka-partitions` on a
/// broker. On the MockCluster, the fewest that hold about [`MOCK_HOLDS`] of the stream each
/// (at most `--kafka-partitions`): its fetch looks for the offset asked for by walking every
/// record batch a Kafka partition holds, from the oldest, so at a high rate a topic sized to
/// keep the whole run would spend the mock's one thread walking, and measure that instead of
/// the pipeline. It drops the oldest batches beyond about 5 MB per Kafka partition; a
/// pipeline that falls that far behind loses events, and the run says so.
fn live_partitions(mock: bool, opts: &BenchOptions, rate: u64) -> i32 {
    match mock {
        true => {
            let bytes = rate as f64 * 200.0 * MOCK_HOLDS;
            ((bytes / f64::from(4 << 20)).ceil() as i32).clamp(1, opts.kafka_partitions.max(1))
        }
        false => opts.kafka_partitions,
    }
}

/// Kafka partitions for a topic of `events`: on the MockCluster, enough that none holds more
/// than its 5 MB (it drops older records beyond that, which would strand a backlog).
fn partitions_for(mock: bool, opts: &BenchOptions, events: usize) -> i32 {
    match mock {
        true => opts
            .kafka_partitions
            .max((events * 200 / (4 << 20) + 1) as i32),
        false => opts.kafka_partitions,
    }
}

/// Creates `topics` (name, Kafka partitions) on the MockCluster or the broker.
async fn create_topics(
    mock: Option<&MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    connection: &Connection,
    topics: &[(String, i32)],
    replication: i32,
) -> Result<()> {
    match mock {
        Some(m) => {
            for (name, n) in topics {
                m.create_topic(name, *n, 1)
                    .map_err(|e| Error::Kafka(format!("creating {name}: {e}")))?;
            }
            Ok(())
        }
        None => {
            let list: Vec<(&str, i32)> = topics.iter().map(|(n, p)| (n.as_str(), *p)).collect();
            local::create_topics_with(connection, &list, replication).await
        }
    }
}

/// `key=value, ...`, with the values of secrets (passwords, keys, tokens) left out.
fn shown_options(options: &BTreeMap<String, String>) -> String {
    let secret = |k: &str| {
        ["password", "secret", "key", "token"]
            .iter()
            .any(|s| k.contains(s))
    };
    options
        .iter()
        .map(|(k, v)| match secret(k) {
            true => format!("{k}=(hidden)"),
            false => format!("{k}={v}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name a pipeline has in the bench's table.
fn pipeline_name(mode: Mode) -> &'static str {
    if mode == Mode::Score {
        "scoring"
    } else {
        "passthrough"
    }
}

/// What [`steady_latency`] measured, ms: from the event's produce timestamp to the
/// acknowledgement of its output, and that split at the read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// The part before the pipeline read the event (the loader's batching, the broker, the
    /// fetch): median and 99th percentile, ms.
    pub read_wait_ms: (f64, f64),
    /// The part from the read to the acknowledgement (the pipeline, its producer's batching,
    /// the broker's acknowledgement): median and 99th percentile, ms.
    pub after_read_ms: (f64, f64),
    /// Of the part before the read, the time until the broker acknowledged the event to the
    /// loader (the loader's batching, the broker's append): median and 99th percentile, ms;
    /// `None` where the broker returns its append time instead of the loader's timestamp (the
    /// MockCluster).
    pub input_acked_ms: Option<(f64, f64)>,
}

/// Produces the live events at the steady rate and returns the latency; the first fifth warms
/// up (fetch positions, connections) and is not measured.
async fn steady_latency(
    stats: &Arc<PipelineStats>,
    connection: &Connection,
    input: &str,
    live: &local::Cycle,
    rate: u64,
    opts: &BenchOptions,
) -> Result<Latency> {
    let producing = tokio::spawn(produce(
        connection.clone(),
        opts.loader_options.clone(),
        input.to_owned(),
        live.clone(),
        Some(rate),
        opts.records_per_batch,
        Some(stats.clone()),
    ));
    let n = live.count as u64;
    let suspect = Suspect::of(opts);
    watch(stats, n / 5, Duration::from_secs(120), suspect).await?;
    stats.latency(true);
    stats.read_wait(true);
    stats.after_read(true);
    stats.input_acked(true);
    producing
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    watch(stats, n, Duration::from_secs(120), suspect).await?;
    let missing = || Error::Internal("the bench's stats keep no latency histogram".into());
    let h = stats.latency(false).ok_or_else(missing)?;
    let w = stats.read_wait(false).ok_or_else(missing)?;
    let a = stats.after_read(false).ok_or_else(missing)?;
    let i = stats.input_acked(false).ok_or_else(missing)?;
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        read_wait_ms: (ms(&w, 0.5), ms(&w, 0.99)),
        after_read_ms: (ms(&a, 0.5), ms(&a, 0.99)),
        input_acked_ms: (!i.is_empty()).then(|| (ms(&i, 0.5), ms(&i, 0.99))),
    })
}

/// How long each probe of [`streamed_max`] streams.
const PROBE: Duration = Duration::from_secs(3);

/// The share of a probe's rate the pipeline must acknowledge to keep up.
const KEPT_UP: f64 = 0.95;

/// What [`streamed_max`] measured: (rate streamed, rate acknowledged) per probe, events/s.
struct Probes(Vec<(u64, u64)>);

impl Probes {
    /// The highest rate a probe kept up with, else the last rate acknowledged.
    fn kept_up(&self) -> u64 {
        let kept = self
            .0
            .iter()
            .filter(|(rate, acked)| *acked as f64 >= KEPT_UP * *rate as f64);
        kept.map(|(rate, _)| *rate)
            .max()
            .or_else(|| self.0.last().map(|(_, acked)| *acked))
            .unwrap_or(1)
    }

    fn shown(&self) -> String {
        let each = self
            .0
            .iter()
            .map(|(rate, acked)| format!("{rate} / {acked}"));
        each.collect::<Vec<_>>().join(", ")
    }
}

/// The highest rate the scoring pipeline keeps up with while the bench's loader streams into
/// it on the same machine. A drain measures the pipeline with the loader idle; streaming, the
/// loader (and on the MockCluster or a local broker, the broker too) takes its share of the
/// cores, so half the drain rate can load the machine nearly fully. Each probe streams for
/// [`PROBE`] at a rate and measures what the pipeline acknowledged over its last two thirds:
/// the first probe streams at the drain rate, each next one at the rate the one before
/// acknowledged, until one keeps up ([`KEPT_UP`]) or four have run.
async fn streamed_max(
    setup: &Setup<'_>,
    t: &dyn Fn(&str) -> String,
    lines: &Arc<Vec<Vec<u8>>>,
    drain_rate: u64,
    mock: Option<&MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    opts: &BenchOptions,
) -> Result<Probes> {
    let mut probes = Probes(Vec::new());
    let mut rate = drain_rate.max(1);
    for probe in 0..4 {
        let input = t(&format!("probe-{probe}"));
        let partitions = live_partitions(mock.is_some(), opts, rate);
        create_topics(
            mock,
            setup.connection,
            &[(input.clone(), partitions)],
            opts.replication_factor,
        )
        .await?;
        let n = (rate as f64 * PROBE.as_secs_f64()) as usize;
        let events = local::Cycle {
            distinct: lines.clone(),
            count: n,
        };
        let (stats, stop, handle) = setup
            .start(Mode::Score, &input, &t("out-score"), None)
            .await;
        let producing = tokio::spawn(produce(
            setup.connection.clone(),
            opts.loader_options.clone(),
            input,
            events,
            Some(rate),
            opts.records_per_batch,
            None,
        ));
        let acked = {
            let stats = stats.clone();
            tokio::task::spawn_blocking(move || acknowledged_rate(&stats))
                .await
                .map_err(|e| Error::Internal(format!("the bench's watcher failed: {e}")))??
        };
        producing
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        stop.cancel();
        handle.await.map_err(|e| Error::Internal(e.to_string()))??;
        probes.0.push((rate, acked));
        if acked as f64 >= KEPT_UP * rate as f64 {
            break;
        }
        rate = acked.max(1);
    }
    Ok(probes)
}

/// Events/s the pipeline acknowledged over the last two thirds of a probe, from its first
/// record read; watched from a thread of its own, as [`watch`] does.
fn acknowledged_rate(stats: &PipelineStats) -> Result<u64> {
    let waiting = Instant::now();
    while stats.consumed.load(Ordering::Relaxed) == 0 {
        if waiting.elapsed() > NO_PROGRESS {
            return Err(Error::Kafka(format!(
                "no record read for {NO_PROGRESS:?} while probing the streamed maximum; is the broker up?"
            )));
        }
        std::thread::sleep(WATCH_EVERY);
    }
    std::thread::sleep(PROBE / 3);
    let (from, acked) = (Instant::now(), stats.produced.load(Ordering::Relaxed));
    std::thread::sleep(PROBE * 2 / 3);
    let more = stats.produced.load(Ordering::Relaxed).saturating_sub(acked);
    Ok((more as f64 / from.elapsed().as_secs_f64()) as u64)
}

/// The largest bundle `--reload` publishes on the MockCluster, which keeps about 5 MB per
/// Kafka partition.
const MOCK_BUNDLE_BYTES: usize = 4 << 20;

/// The steady-rate latency of the scoring pipeline while a new version of the bundle is
/// published on a control topic and swapped in every second: (p50 ms, p99 ms, swaps).
async fn reload_latency(
    setup: &Setup<'_>,
    t: &dyn Fn(&str) -> String,
    live: &local::Cycle,
    rate: u64,
    opts: &BenchOptions,
) -> Result<(f64, f64, usize)> {
    let seconds = (live.count as u64 / rate.max(1)) as usize + 10;
    let first = local::reversioned(&setup.bundle, "bench-reload-000")?;
    if opts.brokers.is_none() && first.len() > MOCK_BUNDLE_BYTES {
        return Err(Error::Usage(format!(
            "--reload publishes a {} MB bundle a second, and the MockCluster keeps at most about 5 MB per Kafka partition (older chunks would be gone before the manifest arrives); run it against a real broker with --brokers, or with fewer --stores",
            first.len() >> 20
        )));
    }
    let publish = PublishOptions {
        bundle: Default::default(),
        connection: setup.connection.clone(),
        control_topic: t("control"),
        signing_key: None,
        chunk_bytes: DEFAULT_CHUNK_BYTES,
        activate: true,
    };
    let p = publish.clone();
    tokio::task::spawn_blocking(move || publish_bytes(&first, &p, None))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    let cancel = CancellationToken::new();
    let (bundles, reader) = crate::control::reader::start(
        ControlOptions {
            brokers: setup.connection.brokers.clone(),
            topic: t("control"),
            librdkafka_options: setup.connection.options.clone(),
            trusted: Default::default(),
            keep_versions: 4,
            max_bundle_bytes: 1 << 30,
            formats: Default::default(),
        },
        None,
        cancel.clone(),
    );
    let (stats, stop, handle) = setup
        .start(
            Mode::Score,
            &t("live-reload"),
            &t("out-reload"),
            Some(bundles),
        )
        .await;
    let reloading = {
        let stop = stop.clone();
        let bundle = setup.bundle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut swaps = 0;
            for i in 1..=seconds {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // One version's bytes at a time: a million stores make 200 MB each.
                let (p, b) = (publish.clone(), bundle.clone());
                let version = format!("bench-reload-{i:03}");
                let publishing = tokio::task::spawn_blocking(move || {
                    publish_bytes(&local::reversioned(&b, &version)?, &p, None)
                });
                match publishing.await {
                    Ok(Ok(_)) => swaps += 1,
                    Ok(Err(e)) => tracing::warn!(error = %e, "bench: publishing a bundle failed"),
                    Err(e) => tracing::warn!(error = %e, "bench: publisher task failed"),
                }
            }
            swaps
        })
    };
    let Latency { p50_ms, p99_ms, .. } = steady_latency(
        &stats,
        setup.connection,
        &t("live-reload"),
        live,
        rate,
        opts,
    )
    .await?;
    stop.cancel();
    cancel.cancel();
    let swaps = reloading
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    handle.await.map_err(|e| Error::Internal(e.to_string()))??;
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    Ok((p50_ms, p99_ms, swaps))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(kafka_partitions: i32) -> BenchOptions {
        BenchOptions {
            brokers: None,
            kafka_options: BTreeMap::new(),
            loader_options: BTreeMap::new(),
            events: 200_000,
            stores: 1000,
            kafka_partitions,
            latency_rate: LatencyRate::HalfMax,
            latency_seconds: 5,
            reload: false,
            format: Format::Json,
            records_per_batch: None,
            replication_factor: 1,
            repeat: 3,
        }
    }

    #[test]
    fn a_latency_rate_is_a_number_half_or_half_drain() {
        assert_eq!(LatencyRate::parse("2000"), Ok(LatencyRate::PerSecond(2000)));
        assert_eq!(LatencyRate::parse("half"), Ok(LatencyRate::HalfMax));
        assert_eq!(LatencyRate::parse("half-drain"), Ok(LatencyRate::HalfDrain));
        for bad in ["0", "-5", "1.5", "halve", ""] {
            let e = LatencyRate::parse(bad).expect_err(bad);
            assert!(e.contains("half-drain"), "{bad}: {e}");
        }
    }

    /// On the MockCluster a latency run's input holds about a quarter second per Kafka
    /// partition: one at a few thousand events/s, more as the rate grows, never more than
    /// `--kafka-partitions`; a real broker gets `--kafka-partitions`.
    #[test]
    fn the_mock_gets_the_fewest_kafka_partitions_that_hold_a_quarter_second() {
        let opts = options(6);
        assert_eq!(live_partitions(true, &opts, 5_000), 1);
        assert_eq!(live_partitions(true, &opts, 100_000), 2);
        assert_eq!(live_partitions(true, &opts, 200_000), 3);
        assert_eq!(live_partitions(true, &opts, 2_000_000), 6);
        assert_eq!(live_partitions(false, &opts, 5_000), 6);
        assert_eq!(live_partitions(true, &options(1), 400_000), 1);
    }

    #[test]
    fn the_streamed_maximum_is_the_highest_rate_a_probe_kept_up_with() {
        let kept = Probes(vec![(600_000, 430_000), (430_000, 420_000)]);
        assert_eq!(kept.kept_up(), 430_000, "420,000 is within 5% of 430,000");
        assert_eq!(kept.shown(), "600000 / 430000, 430000 / 420000");
        let never = Probes(vec![(600_000, 300_000), (300_000, 200_000)]);
        assert_eq!(never.kept_up(), 200_000, "else the last rate acknowledged");
        assert_eq!(Probes(vec![(1000, 1000)]).kept_up(), 1000);
        assert_eq!(Probes(Vec::new()).kept_up(), 1);
    }
}
