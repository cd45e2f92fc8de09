//! `manymodel serve`: the long-lived pipeline.
//!
//! ```text
//!  Kafka input ──▶ consumer loop ──decode──▶ router ──▶ partition actor (one per store)
//!                     │  (offset tracker: begin)            │ score, encode
//!                     └──bad record──▶ dead letter          ▼
//!                                            producer ──▶ output topic
//!                                               │ acknowledged
//!                                               └──▶ offset tracker: finish ──▶ commit
//! ```
//!
//! The consumer loop is the only reader of Kafka and the only owner of the router. Every
//! record read is registered with the offset tracker before anything else happens to it, and
//! its offset finishes only when its prediction or dead letter is acknowledged; commits take
//! the contiguous finished prefix, periodically and at shutdown.
//!
//! Hot reload ([`crate::control`]): the loop decodes each record with the bundle active when
//! it read it and hands that bundle to the actor with the event, so a swap happens between two
//! records, costs one pointer exchange, and every prediction carries the version that made it.
//!
//! Shutdown (SIGINT/SIGTERM, or the caller's token): stop reading, close the router so every
//! actor drains its queue, flush the producer, commit synchronously. If the drain deadline
//! passes first, nothing more is committed and [`run`] returns an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::codec::{Decoder, PredictionEncoder};
use crate::config::ServeConfig;
use crate::control::reader::{ControlOptions, LocalBundle};
use crate::control::signing::TrustedKeys;
use crate::control::ActiveBundle;
use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::kafka::consumer::{self, InputConsumer};
use crate::kafka::offsets::OffsetTracker;
use crate::kafka::producer::{producer_config, Delivery, Output, OutputProducer};
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::partition::{ActorContext, Job};
use crate::router::Router;
use crate::scoring::{self, UnknownPartition};

/// What the pipeline does with each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Decode, score and produce a prediction: the product.
    #[default]
    Score,
    /// Copy each record to the output unchanged, through the same consumer, producer and
    /// offset handling: the benchmark's baseline.
    Passthrough,
}

/// Runs the pipeline until `shutdown` is cancelled, then drains and commits. Reading starts
/// once `bundles` holds a bundle, and follows it as it changes.
pub async fn run(
    config: &ServeConfig,
    mut bundles: ActiveBundle,
    mode: Mode,
    stats: Arc<PipelineStats>,
    shutdown: CancellationToken,
) -> Result<()> {
    let k = &config.kafka;
    let Some(bundle) = first_bundle(&mut bundles, &shutdown).await else {
        tracing::info!("stopped before any bundle became active");
        return Ok(());
    };
    let tracker = Arc::new(OffsetTracker::default());
    let producer = OutputProducer::new(
        &producer_config(&k.brokers, &k.librdkafka_options),
        stats.clone(),
    )?;
    let consumer = Arc::new(consumer::create(
        &k.brokers,
        &k.group_id,
        &k.input_topic,
        &k.librdkafka_options,
        tracker.clone(),
        stats.clone(),
    )?);
    let hard_stop = CancellationToken::new();
    let decoder = Decoder::new(&config.input, shutdown.clone())?;
    if let Some(why) = decoder.cannot_feed(&bundle.spec) {
        return Err(Error::Usage(format!("bundle {}: {why}", bundle.version)));
    }
    let encoder = PredictionEncoder::new(
        &config.output,
        &k.output_topic,
        &bundle.spec.partition_column,
    )
    .await?;
    crate::metrics::bundle_activated(&bundle.version, bundle.partitions.len(), None);
    stats.health.bundle_active(&bundle.version);
    let router = Router::new(
        ActorContext {
            producer: producer.clone(),
            output_topic: Arc::from(k.output_topic.as_str()),
            encoder,
            stats: stats.clone(),
            cancel: hard_stop.clone(),
            labelled: Arc::new(
                config
                    .metrics
                    .per_partition_metrics
                    .iter()
                    .cloned()
                    .collect(),
            ),
        },
        config.pipeline.mailbox_capacity,
    );
    tracing::info!(
        version = %bundle.version,
        partitions = bundle.partitions.len(),
        input = %k.input_topic,
        output = %k.output_topic,
        "serving"
    );

    let committer = tokio::spawn(commit_periodically(
        consumer.clone(),
        k.input_topic.clone(),
        tracker.clone(),
        Duration::from_millis(k.commit_interval_ms.max(10)),
        shutdown.clone(),
    ));

    let reader = Reader {
        config,
        bundle,
        bundles,
        follow: true,
        producer: &producer,
        tracker: &tracker,
        stats: &stats,
        router,
        mode,
        decoder,
    };
    let router = reader.read_until(&consumer, &shutdown).await;

    // Drain: actors first (they enqueue the last predictions), then the producer.
    let deadline = Instant::now() + Duration::from_secs(config.pipeline.shutdown_timeout_secs);
    let actors = router.actors();
    let drained = router
        .close(deadline.saturating_duration_since(Instant::now()))
        .await;
    let flushed = drained
        && producer
            .flush(deadline.saturating_duration_since(Instant::now()))
            .is_ok();
    let _ = committer.await;
    if !flushed {
        hard_stop.cancel();
        return Err(Error::Kafka(format!(
            "shutdown deadline of {}s passed with {} events in flight; their offsets were not committed and will be read again",
            config.pipeline.shutdown_timeout_secs,
            tracker.in_flight()
        )));
    }
    let positions = tracker.all_committable();
    consumer::commit(&consumer, &k.input_topic, &positions, CommitMode::Sync)
        .map_err(|e| Error::Kafka(format!("final offset commit failed: {e}")))?;
    tracing::info!(actors, committed = ?positions, "stopped cleanly");
    Ok(())
}

/// Waits until `bundles` holds a bundle; `None` if `shutdown` comes first or no bundle can
/// ever come.
async fn first_bundle(
    bundles: &mut ActiveBundle,
    shutdown: &CancellationToken,
) -> Option<Arc<Bundle>> {
    loop {
        if let Some(b) = bundles.borrow_and_update().clone() {
            return Some(b);
        }
        tracing::info!("waiting for a bundle to be activated on the control topic");
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            changed = bundles.changed() => changed.ok()?,
        }
    }
}

/// The consumer loop's state.
struct Reader<'a> {
    config: &'a ServeConfig,
    /// The active bundle: decodes every record read, and goes with it to its actor.
    bundle: Arc<Bundle>,
    /// Where newly activated bundles come from.
    bundles: ActiveBundle,
    /// False once `bundles` can no longer change.
    follow: bool,
    producer: &'a OutputProducer,
    tracker: &'a OffsetTracker,
    stats: &'a PipelineStats,
    router: Router,
    mode: Mode,
    /// Turns record bytes into events (`[input]`), built once.
    decoder: Decoder,
}

impl Reader<'_> {
    /// Reads until `shutdown`, then hands back the router for draining.
    async fn read_until(
        mut self,
        consumer: &InputConsumer,
        shutdown: &CancellationToken,
    ) -> Router {
        // The loop beats and samples its queues once a second, records or not.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = self.bundles.changed(), if self.follow => match changed {
                    Ok(()) => self.swap(),
                    Err(_) => self.follow = false,
                },
                _ = tick.tick() => {
                    self.stats.health.beat();
                    crate::metrics::queues(self.router.actors(), self.router.queued(), self.producer.in_flight());
                }
                message = consumer.recv() => match message {
                    Ok(m) => self.handle(&m).await,
                    Err(e) => {
                        consumer.context().log.error("consumer", &e, "while reading");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.router
    }

    /// Makes the newly activated bundle the one every following record is scored with.
    fn swap(&mut self) {
        let started = Instant::now();
        let Some(next) = self.bundles.borrow_and_update().clone() else {
            return;
        };
        if Arc::ptr_eq(&next, &self.bundle) {
            return;
        }
        let previous = std::mem::replace(&mut self.bundle, next);
        let pause = started.elapsed();
        let b = &self.bundle;
        crate::metrics::bundle_activated(&b.version, b.partitions.len(), Some(&previous.version));
        crate::metrics::bundle_swap_pause(pause.as_secs_f64());
        self.stats.health.bundle_active(&b.version);
        tracing::info!(
            version = %b.version,
            previous = %previous.version,
            partitions = b.partitions.len(),
            pause_us = pause.as_secs_f64() * 1e6,
            "bundle swapped in: every record read from now on is scored by it"
        );
        // Freeing a large bundle takes time; never on the consumer loop.
        tokio::task::spawn_blocking(move || drop(previous));
    }

    async fn handle(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        self.stats.consumed();
        let ack = self.tracker.begin(m.partition(), m.offset());
        let timestamp_ms = match m.timestamp() {
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            Timestamp::NotAvailable => None,
        };
        let payload = m.payload();
        let k = &self.config.kafka;
        if self.mode == Mode::Passthrough {
            let delivery = Box::new(Delivery {
                ack,
                output: Output::Copy,
                source_timestamp_ms: timestamp_ms,
            });
            self.producer
                .send(&k.output_topic, m.key(), payload, None, delivery)
                .await;
            return;
        }
        let bytes = payload.unwrap_or_default();
        let decoded = if bytes.len() > self.config.pipeline.max_record_bytes {
            Err(RecordError::new(
                RecordErrorKind::Oversize,
                format!(
                    "record of {} bytes exceeds pipeline.max_record_bytes = {}",
                    bytes.len(),
                    self.config.pipeline.max_record_bytes
                ),
            ))
        } else {
            let decoded = self
                .decoder
                .decode(
                    bytes,
                    &self.bundle.spec.partition_column,
                    self.bundle.encoder(),
                )
                .await;
            // Stopped while the schema registry was unreachable: the offset stays unfinished.
            let Some(decoded) = decoded else { return };
            decoded.and_then(|event| {
                let unknown = self.bundle.partition(&event.partition).is_none();
                if unknown && !self.bundle.has_fallback() {
                    Err(scoring::no_fallback(&event.partition))
                } else if unknown && self.config.model.unknown_partition == UnknownPartition::Dlq {
                    Err(scoring::unknown(&event.partition))
                } else {
                    Ok(event)
                }
            })
        };
        match decoded {
            Ok(event) => {
                self.router
                    .route(Job {
                        bundle: self.bundle.clone(),
                        event,
                        ack,
                        timestamp_ms,
                        read_at: Instant::now(),
                    })
                    .await
            }
            Err(error) => {
                tracing::debug!(
                    topic = m.topic(),
                    kafka_partition = m.partition(),
                    offset = m.offset(),
                    %error,
                    "dead-lettering record"
                );
                self.producer
                    .dead_letter(&k.dlq_topic, m.topic(), m.key(), payload, &error, ack)
                    .await;
            }
        }
    }
}

/// Commits the tracker's finished positions every `every` until `shutdown`.
async fn commit_periodically(
    consumer: Arc<InputConsumer>,
    topic: String,
    tracker: Arc<OffsetTracker>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let positions = tracker.take_committable();
                if positions.is_empty() {
                    continue;
                }
                // A synchronous commit off the runtime: its result is known here, so it is
                // counted, and a failed one is retried with the next tick.
                let (c, t, p) = (consumer.clone(), topic.clone(), positions.clone());
                let result = tokio::task::spawn_blocking(move || consumer::commit(&c, &t, &p, CommitMode::Sync)).await;
                let ok = matches!(result, Ok(Ok(())));
                consumer.context().stats.committed(ok);
                if !ok {
                    tracker.retry(&positions);
                    tracing::warn!(?result, "offset commit failed; retrying with the next one");
                }
            }
        }
    }
}

/// Loads the config and bundle and serves until SIGINT or SIGTERM.
pub async fn serve(config_path: &std::path::Path) -> Result<()> {
    let config = ServeConfig::load(config_path)?;
    let local = match &config.model.bundle {
        None => None,
        Some(path) => Some(local_bundle(config_path, path)?),
    };
    let metrics = crate::metrics::install()
        .map_err(|e| Error::Internal(format!("cannot install the metrics recorder: {e}")))?;
    let listener = crate::http::bind(&config.metrics.listen).await?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics and health listening on http://{addr}/metrics, /healthz, /readyz");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let stats = Arc::new(PipelineStats::default());
    let http_stop = CancellationToken::new();
    tokio::spawn(crate::http::serve(
        listener,
        metrics,
        stats.clone(),
        http_stop.clone(),
    ));
    let (bundles, control) = match (&config.kafka.control_topic, local) {
        (Some(topic), local) => {
            let options = ControlOptions {
                brokers: config.kafka.brokers.clone(),
                topic: topic.clone(),
                librdkafka_options: config.kafka.librdkafka_options.clone(),
                trusted: TrustedKeys::load(&config.model.trusted_keys, std::path::Path::new("."))
                    .map_err(|e| {
                    Error::Usage(format!(
                        "{}: [model] trusted_keys: {e}",
                        config_path.display()
                    ))
                })?,
                keep_versions: config.model.keep_versions,
                max_bundle_bytes: config.model.max_bundle_bytes,
                formats: crate::codec::FormatCheck::new(&config.input, &config.output)?,
            };
            let stop = shutdown.clone();
            let (bundles, thread) = crate::control::reader::start(options, local, stop);
            (bundles, Some(thread))
        }
        (None, Some(local)) => (crate::control::fixed(Arc::new(local.bundle)), None),
        (None, None) => {
            return Err(Error::Usage(
                "nothing to serve: set [model] bundle or [kafka] control_topic".into(),
            ))
        }
    };
    let result = run(&config, bundles, Mode::Score, stats, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(thread) = control {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    http_stop.cancel();
    result
}

/// Reads `[model] bundle`: a full bundle, with its file's SHA-256.
fn local_bundle(config_path: &std::path::Path, path: &std::path::Path) -> Result<LocalBundle> {
    let usage = |e: String| Error::Usage(format!("{}: [model] bundle: {e}", config_path.display()));
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bundle =
        Bundle::from_avro(&bytes).map_err(|e| usage(format!("{}: {e}", path.display())))?;
    if crate::model::delta::is_delta(&bundle) {
        return Err(usage(format!(
            "{} is a delta of {}; serve a full bundle, or publish the delta on the control topic",
            path.display(),
            bundle.base_version.as_deref().unwrap_or("?")
        )));
    }
    Ok(LocalBundle {
        sha256: crate::control::assembly::sha256_hex(&bytes),
        bundle,
    })
}

/// Cancels `token` on the first SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested: draining in-flight events");
    token.cancel();
}
