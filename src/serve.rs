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
//! Backpressure ([`crate::backpressure`]): the loop never waits on a full queue; it parks the
//! record and pauses its Kafka partition, and keeps polling, so the group never evicts it.
//! The stall watchdog ([`crate::watchdog`]) looks once a second for work waiting with nothing
//! acknowledged.
//!
//! Delivery guarantee: at-least-once by default (periodic commits of the finished prefix, and
//! on revoke and shutdown); in `exactly_once` mode ([`crate::kafka::transaction`]) the loop
//! cuts a transaction every `commit_interval_ms` instead, and a revoke aborts the open one.
//!
//! Layout: this file wires the pipeline and drains it; `serve/reader.rs` is the consumer loop
//! (read, decode, route, dead letters, the once-a-second checks) and `serve/exactly_once.rs`
//! its side of transactions (cut, abort, rewind).
//!
//! Shutdown (SIGINT/SIGTERM, or the caller's token): stop reading, close the router so every
//! actor drains its queue, flush the producer, commit synchronously (or commit the last
//! transaction). If the drain deadline passes first, nothing more is committed and [`run`]
//! returns an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::awaiting::AwaitingSchema;
use crate::backpressure::Backpressure;
use crate::codec::{Decoder, PredictionEncoder};
use crate::config::{Processing, ServeConfig};
use crate::control::local::LocalBundle;
use crate::control::reader::ControlOptions;
use crate::control::signing::TrustedKeys;
use crate::control::ActiveBundle;
use crate::error::{Error, Result};
use crate::kafka::commit::{commit_periodically, final_commit};
use crate::kafka::consumer;
use crate::kafka::offsets::OffsetTracker;
use crate::kafka::producer::{producer_config, OutputProducer};
use crate::kafka::transaction::{transactional_id, Outcome, Transactions};
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::partition::ActorContext;
use crate::router::Router;
use crate::watchdog::StallWatchdog;

mod exactly_once;
mod reader;

use reader::Reader;

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
    let exactly_once = k.processing == Processing::ExactlyOnce;
    let tracker = Arc::new(OffsetTracker::default());
    let mut client = producer_config(&k.brokers, &k.librdkafka_options);
    let transactional_id = exactly_once.then(|| transactional_id(config));
    if let Some(id) = &transactional_id {
        client.set("transactional.id", id);
    }
    let (producer, retries) = OutputProducer::new(&client, stats.clone())?;
    let transactions = match transactional_id {
        Some(id) => {
            crate::metrics::transactions_from_zero();
            Some(Transactions::start(producer.clone(), id).await?)
        }
        None => None,
    };
    let consumer = Arc::new(consumer::create(config, tracker.clone(), stats.clone())?);
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
    let background = CancellationToken::new();
    let retrying = tokio::spawn(retries.run(background.clone()));
    crate::metrics::bundle_activated(&bundle.version, bundle.partitions.len(), None);
    stats.health.bundle_active(&bundle.version);
    // The listed stores' counters exist from the start, at zero, not from their first event.
    for store in &config.metrics.per_partition_metrics {
        crate::metrics::partition_counter(store).increment(0);
    }
    let spares = Arc::new(crate::spares::InputSpares::default());
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
            spares: spares.clone(),
        },
        config.pipeline.actors(),
        config.pipeline.mailbox_capacity,
    );
    tracing::info!(
        version = %bundle.version,
        partitions = bundle.partitions.len(),
        input = %k.input_topic,
        output = %k.output_topic,
        processing = ?k.processing,
        "serving"
    );

    let actuals = match &config.actuals {
        Some(a) => {
            let (handle, task) = crate::accuracy::actuals::start(
                config,
                a,
                bundles.clone(),
                bundle.clone(),
                stats.clone(),
                shutdown.clone(),
            )?;
            stats.set_accuracy(Some(handle));
            Some(task)
        }
        None => None,
    };

    let committer = (!exactly_once).then(|| {
        tokio::spawn(commit_periodically(
            consumer.clone(),
            k.input_topic.clone(),
            tracker.clone(),
            Duration::from_millis(k.commit_interval_ms.max(10)),
            shutdown.clone(),
        ))
    });

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
        spares: crate::spares::SpareStock::new(spares),
        awaiting: AwaitingSchema::default(),
        flow: Backpressure::new(&k.input_topic, config.pipeline.max_in_flight),
        watchdog: StallWatchdog::new(Duration::from_secs(config.pipeline.stall_timeout_secs)),
        transactions,
        revocations: 0,
        read_since_commit: false,
        turn_started: std::time::Instant::now(),
    };
    let (router, mut flow, transactions) = reader.read_until(&consumer, &shutdown).await?;
    if let Some(task) = actuals {
        stats.set_accuracy(None);
        task.join(Duration::from_secs(config.pipeline.shutdown_timeout_secs))
            .await;
    }

    // Drain: parked work and actors first (they enqueue the last predictions), then the
    // producer.
    let deadline = Instant::now() + Duration::from_secs(config.pipeline.shutdown_timeout_secs);
    let actors = router.actors();
    let mut router = router;
    let parked_drained = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        flow.drain(&mut router, &producer),
    )
    .await
    .is_ok();
    let drained = parked_drained
        && router
            .close(deadline.saturating_duration_since(Instant::now()))
            .await;
    let flushed = drained
        && producer
            .flush(deadline.saturating_duration_since(Instant::now()))
            .is_ok();
    // Outputs refused by the broker are still being sent again: give them until the deadline.
    while flushed && tracker.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivered = flushed && tracker.in_flight() == 0;
    if let Some(c) = committer {
        let _ = c.await;
    }
    background.cancel();
    // The retry task holds a producer handle: gone before the caller drops the broker (the
    // demo's and bench's MockCluster), or librdkafka warns that every broker is down.
    let _ = tokio::time::timeout(Duration::from_secs(5), retrying).await;
    if !delivered {
        hard_stop.cancel();
    }
    let positions = tracker.all_committable();
    // At shutdown a transactional call is tried once: the next instance reads again whatever
    // is not committed.
    let once = crate::kafka::transaction::Retry::once();
    match transactions {
        // A transaction is all or nothing: with events undelivered, nothing of it commits.
        Some(mut t) if !delivered => t.abort(once).await?,
        Some(mut t) => {
            let outcome = t
                .commit(&consumer, &k.input_topic, &positions, once)
                .await?;
            if outcome == Outcome::Aborted {
                return Err(Error::Kafka(
                    "the last transaction was aborted at shutdown; its events are read again by the next instance".into(),
                ));
            }
        }
        // The delivered prefix is committed either way, so the next instance repeats less.
        None => final_commit(&consumer, &tracker, &k.input_topic).await?,
    }
    if !delivered {
        return Err(Error::Kafka(format!(
            "shutdown deadline of {}s passed with {} events in flight; their offsets were not committed and will be read again",
            config.pipeline.shutdown_timeout_secs,
            tracker.in_flight()
        )));
    }
    // Leave the group before saying so: closing the consumer revokes its Kafka partitions (and
    // logs it), which would otherwise come after the last line, when the consumer is dropped.
    drop(consumer);
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

/// Loads the config and bundle and serves until SIGINT or SIGTERM.
pub async fn serve(config_path: &std::path::Path) -> Result<()> {
    let config = ServeConfig::load(config_path)?;
    // Before any client starts: librdkafka would name neither the option nor the path.
    crate::kafka::connection::check_files(&config.kafka.librdkafka_options).map_err(|what| {
        Error::Usage(format!(
            "{}: [kafka.librdkafka_options] {what}",
            config_path.display()
        ))
    })?;
    let local = match &config.model.bundle {
        None => None,
        Some(path) => Some(LocalBundle::read(config_path, path)?),
    };
    let metrics = crate::metrics::install()
        .map_err(|e| Error::Internal(format!("cannot install the metrics recorder: {e}")))?;
    crate::metrics::bundle_rejections_from_zero(
        &crate::control::rejection::Reason::ALL.map(|r| r.as_str()),
    );
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
        (None, Some(local)) => {
            // Before the pipeline starts, so nothing waits for it.
            local.bundle.into_huge_pages();
            (crate::control::fixed(Arc::new(local.bundle)), None)
        }
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
