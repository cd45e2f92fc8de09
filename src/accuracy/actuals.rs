//! The actuals actor: it reads the actuals topic, scores each actual with its store's active
//! model, keeps the store's row of the [`AccuracyTable`], and answers `/partitions`.
//!
//! ```text
//!  actuals topic ──▶ decode (the input's format, plus the target column)
//!                      │ bad ──▶ dead-letter topic (same kinds as events)
//!                      ▼
//!                   score with the active bundle ──▶ table row: error stats, verdict
//!                                                       │ started / stopped drifting
//!                                                       ▼
//!                                                    drift topic
//! ```
//!
//! One task owns the table: `/partitions` asks it through an [`AccuracyHandle`], so no lock
//! is shared with the scoring path. Actuals are at-least-once like events: an offset is
//! finished when the actual has been counted, or when its dead letter or drift record is
//! acknowledged, and the finished prefix is committed periodically, on revoke and at
//! shutdown. The statistics live in memory; after a restart a store is judged again once it
//! has `min_actuals` new actuals.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, Timestamp};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::report::{PartitionsPage, Sort, StoreReport};
use super::stats::{Change, Thresholds};
use super::table::{AccuracyTable, Observed};
use crate::codec::{Decoded, Decoder};
use crate::config::{ActualsConfig, PipelineConfig, ServeConfig};
use crate::control::ActiveBundle;
use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::features::FeatureEncoder;
use crate::kafka::commit::{commit_periodically, final_commit};
use crate::kafka::consumer::{self, InputConsumer, Subscription};
use crate::kafka::offsets::{Ack, Admission, OffsetTracker};
use crate::kafka::producer::{producer_config, Delivery, Output, OutputProducer};
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::scoring::{self, ModelSource};
use crate::spec::{FeatureKind, FeatureSpec};

/// Questions for the actor, each with where its answer goes.
enum Query {
    Page {
        sort: Sort,
        limit: usize,
        reply: oneshot::Sender<PartitionsPage>,
    },
    One {
        id: String,
        reply: oneshot::Sender<Option<StoreReport>>,
    },
}

/// Asks the actuals actor about stores; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccuracyHandle {
    tx: mpsc::Sender<Query>,
}

impl AccuracyHandle {
    /// The first `limit` stores in `sort` order; `None` once the actor has stopped.
    pub async fn page(&self, sort: Sort, limit: usize) -> Option<PartitionsPage> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Query::Page { sort, limit, reply })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// One store; `None` once the actor has stopped, `Some(None)` for a store without a row.
    pub async fn one(&self, id: &str) -> Option<Option<StoreReport>> {
        let (reply, answer) = oneshot::channel();
        let id = id.to_owned();
        self.tx.send(Query::One { id, reply }).await.ok()?;
        answer.await.ok()
    }
}

/// The encoder of actuals for one bundle: its features, then the target as one more
/// numeric input.
struct ActualsEncoder {
    version: String,
    encoder: FeatureEncoder,
}

impl ActualsEncoder {
    fn new(bundle: &Bundle) -> Result<Self> {
        let spec = &bundle.spec;
        let mut features = spec.features.clone();
        features.push(FeatureSpec {
            column: spec.target.clone(),
            kind: FeatureKind::Numeric,
            categories: None,
        });
        let mut encoder = FeatureEncoder::new(&features).map_err(|e| {
            Error::Usage(format!(
                "bundle {}: cannot read actuals: {e}",
                bundle.version
            ))
        })?;
        if bundle.encoder().takes_missing() {
            encoder = encoder.missing_as_nan();
        }
        Ok(ActualsEncoder {
            version: bundle.version.clone(),
            encoder,
        })
    }
}

/// Handles of the metrics the actor moves, registered once.
struct Gauges {
    scored_partition: metrics::Counter,
    scored_fallback: metrics::Counter,
    abs_error: metrics::Histogram,
    ratio: metrics::Histogram,
    drifting: metrics::Gauge,
    tracked: metrics::Gauge,
    table_bytes: metrics::Gauge,
    /// Recent RMSE and ratio gauges of the stores in `per_partition_metrics`.
    labelled: HashMap<String, (metrics::Gauge, metrics::Gauge)>,
}

impl Gauges {
    fn new(labelled: &[String]) -> Self {
        use crate::metrics as m;
        Gauges {
            scored_partition: metrics::counter!(m::ACTUALS, "model" => "partition"),
            scored_fallback: metrics::counter!(m::ACTUALS, "model" => "fallback"),
            abs_error: metrics::histogram!(m::ACTUAL_ABSOLUTE_ERROR),
            ratio: metrics::histogram!(m::ERROR_RATIO),
            drifting: metrics::gauge!(m::PARTITIONS_DRIFTING),
            tracked: metrics::gauge!(m::PARTITIONS_TRACKED),
            table_bytes: metrics::gauge!(m::ACCURACY_TABLE_BYTES),
            labelled: labelled
                .iter()
                .map(|p| {
                    let rmse = metrics::gauge!(m::PARTITION_RECENT_RMSE, "partition" => p.clone());
                    let ratio = metrics::gauge!(m::PARTITION_DRIFT_RATIO, "partition" => p.clone());
                    (p.clone(), (rmse, ratio))
                })
                .collect(),
        }
    }
}

/// The running actuals actor: join it after shutdown to have its last offsets committed.
pub struct ActualsTask {
    task: tokio::task::JoinHandle<()>,
}

impl ActualsTask {
    /// Waits (bounded) for the actor to stop and commit.
    pub async fn join(self, patience: Duration) {
        if tokio::time::timeout(patience, self.task).await.is_err() {
            tracing::warn!("the actuals consumer did not stop in time; its last offsets are read again after a restart");
        }
    }
}

/// Starts the actuals actor of `config.actuals`; the handle answers `/partitions`.
pub fn start(
    config: &ServeConfig,
    actuals: &ActualsConfig,
    bundles: ActiveBundle,
    bundle: Arc<Bundle>,
    stats: Arc<PipelineStats>,
    shutdown: CancellationToken,
) -> Result<(AccuracyHandle, ActualsTask)> {
    let k = &config.kafka;
    let tracker = Arc::new(OffsetTracker::default());
    let group_id = actuals.group_id(&k.group_id);
    let subscription = Subscription {
        topic: &actuals.topic,
        group_id: &group_id,
        transactional_offsets: false,
        primary: false,
    };
    let consumer = Arc::new(consumer::create_for(
        config,
        &subscription,
        tracker.clone(),
        stats.clone(),
    )?);
    // Its own producer, never transactional: a dead letter or drift record of an actual is
    // no part of the input's transactions.
    let (producer, retries) = OutputProducer::new(
        &producer_config(&k.brokers, &k.librdkafka_options),
        stats.clone(),
    )?;
    let mut input = config.input.clone();
    if actuals.schema.is_some() {
        input.schema = actuals.schema.clone();
    }
    let decoder = Decoder::new(&input, shutdown.clone())?;
    let encoder = ActualsEncoder::new(&bundle)?;
    let (tx, queries) = mpsc::channel(16);
    let actor = ActualsActor {
        topic: actuals.topic.clone(),
        dlq_topic: k.dlq_topic.clone(),
        drift_topic: actuals.drift_topic.clone(),
        policy: config.model.unknown_partition,
        limits: config.pipeline.clone(),
        consumer,
        tracker,
        producer,
        decoder,
        bundles,
        bundle,
        encoder,
        table: AccuracyTable::new(Thresholds::new(actuals), actuals.max_fallback_stores),
        stats,
        queries,
        gauges: Gauges::new(&config.metrics.per_partition_metrics),
        commit_every: Duration::from_millis(k.commit_interval_ms.max(10)),
    };
    let task = tokio::spawn(actor.run(retries, shutdown));
    Ok((AccuracyHandle { tx }, ActualsTask { task }))
}

struct ActualsActor {
    topic: String,
    dlq_topic: String,
    drift_topic: Option<String>,
    policy: scoring::UnknownPartition,
    /// The record-size and key-length limits of `[pipeline]`, as events have them.
    limits: PipelineConfig,
    consumer: Arc<InputConsumer>,
    tracker: Arc<OffsetTracker>,
    producer: OutputProducer,
    decoder: Decoder,
    bundles: ActiveBundle,
    bundle: Arc<Bundle>,
    encoder: ActualsEncoder,
    table: AccuracyTable,
    stats: Arc<PipelineStats>,
    queries: mpsc::Receiver<Query>,
    gauges: Gauges,
    commit_every: Duration,
}

impl ActualsActor {
    async fn run(mut self, retries: crate::kafka::producer::Retries, shutdown: CancellationToken) {
        let background = CancellationToken::new();
        let retrying = tokio::spawn(retries.run(background.clone()));
        let committer = tokio::spawn(commit_periodically(
            self.consumer.clone(),
            self.topic.clone(),
            self.tracker.clone(),
            self.commit_every,
            shutdown.clone(),
        ));
        tracing::info!(topic = %self.topic, "reading actuals");
        let mut follow = true;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = self.consumer.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                // Once every handle is gone this branch is off; actuals go on.
                Some(query) = self.queries.recv() => self.answer(query),
                changed = self.bundles.changed(), if follow => match changed {
                    Ok(()) => self.swap(),
                    Err(_) => follow = false,
                },
                _ = tick.tick() => self.publish_gauges(),
                message = consumer.recv() => match message {
                    Ok(m) => self.handle(&m).await,
                    Err(e) => {
                        consumer.context().log.error("actuals consumer", &e, "while reading");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        // Dead letters and drift records on their way finish their offsets; then the last
        // commit.
        let _ = self.producer.flush(Duration::from_secs(10));
        let _ = committer.await;
        if let Err(e) = final_commit(&self.consumer, &self.tracker, &self.topic).await {
            tracing::warn!(topic = %self.topic, error = %e, "last commit of the actuals failed; they are read again after a restart");
        }
        background.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), retrying).await;
    }

    fn answer(&self, query: Query) {
        match query {
            Query::Page { sort, limit, reply } => {
                let _ = reply.send(self.table.page(sort, limit, &self.bundle));
            }
            Query::One { id, reply } => {
                let _ = reply.send(self.table.report(&id, &self.bundle));
            }
        }
    }

    /// A new active bundle: rows of stores whose model changed start over.
    fn swap(&mut self) {
        let Some(next) = self.bundles.borrow_and_update().clone() else {
            return;
        };
        if Arc::ptr_eq(&next, &self.bundle) {
            return;
        }
        match ActualsEncoder::new(&next) {
            Ok(e) => self.encoder = e,
            Err(e) => {
                tracing::error!(error = %e, "actuals cannot be read with the new bundle; keeping the old encoder")
            }
        }
        self.table.bundle_changed(&self.bundle, &next);
        self.bundle = next;
        // The listed stores' gauges say what the table says now (nothing yet for a new model).
        for id in self.gauges.labelled.keys().cloned().collect::<Vec<_>>() {
            self.labelled_gauges(&id);
        }
    }

    /// Sets the recent-RMSE and ratio gauges of a store listed in `per_partition_metrics`.
    fn labelled_gauges(&self, id: &str) {
        let Some((rmse, ratio)) = self.gauges.labelled.get(id) else {
            return;
        };
        let report = self
            .table
            .report(id, &self.bundle)
            .filter(|r| r.actuals > 0);
        rmse.set(report.as_ref().map_or(f64::NAN, |r| r.rmse));
        ratio.set(report.and_then(|r| r.ratio).unwrap_or(f64::NAN));
    }

    fn publish_gauges(&self) {
        self.gauges.drifting.set(self.table.drifting() as f64);
        self.gauges.tracked.set(self.table.tracked() as f64);
        self.gauges
            .table_bytes
            .set(self.table.memory_bytes() as f64);
    }

    async fn handle(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let ack = match self.tracker.admit(m.partition(), m.offset()) {
            Admission::Read(ack) => ack,
            Admission::Repeat => return,
            Admission::Skipped { at, .. } => {
                consumer::seek(&self.consumer, m.topic(), m.partition(), at);
                return;
            }
        };
        let at_ms = match m.timestamp() {
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => t,
            Timestamp::NotAvailable => crate::clock::now_ms(),
        };
        let payload = m.payload().unwrap_or_default();
        match self.score(payload).await {
            Ok((id, source, predicted, actual)) => {
                self.observe(&id, source, predicted, actual, at_ms, ack)
                    .await
            }
            Err(error) => {
                tracing::debug!(topic = %self.topic, kafka_partition = ack.partition(), offset = ack.offset(), %error, "dead-lettering actual");
                let headers =
                    OutputProducer::dead_letter_headers(&self.topic, &error, &ack, m.headers());
                let delivery = Delivery::new(ack, Output::DeadLetter(error.kind), None, None);
                self.producer
                    .send(
                        &self.dlq_topic,
                        m.key(),
                        Some(payload),
                        Some(headers),
                        delivery,
                    )
                    .await;
            }
        }
    }

    /// Decodes one actual and scores it: the store, the kind of model, the forecast and the
    /// actual value.
    async fn score(
        &mut self,
        bytes: &[u8],
    ) -> std::result::Result<(String, ModelSource, f64, f64), RecordError> {
        self.limits.check_record_size(bytes.len())?;
        let spec = &self.bundle.spec;
        let mut event = loop {
            match self
                .decoder
                .decode(bytes, &spec.partition_column, &self.encoder.encoder)
            {
                Decoded::Done(d) => break d?,
                // Actuals are not latency-bound: wait for the registry here.
                Decoded::Awaiting(_) => {
                    self.decoder.resolved().await;
                }
            }
        };
        self.limits.check_key(&event.partition)?;
        let actual = event.inputs.pop().unwrap_or(f64::NAN);
        if actual.is_nan() {
            return Err(RecordError::new(
                RecordErrorKind::MissingFeature,
                format!("target column {:?} is missing", spec.target),
            ));
        }
        let (predicted, source) = scoring::score(&self.bundle, &event, self.policy)?;
        Ok((event.partition.to_string(), source, predicted, actual))
    }

    async fn observe(
        &mut self,
        id: &str,
        source: ModelSource,
        predicted: f64,
        actual: f64,
        at_ms: i64,
        ack: Ack,
    ) {
        match source {
            ModelSource::Partition => self.gauges.scored_partition.increment(1),
            ModelSource::Fallback => self.gauges.scored_fallback.increment(1),
        }
        self.gauges.abs_error.record((actual - predicted).abs());
        let expected = super::table::expected_for(&self.bundle, id);
        let observed = self.table.observe(
            id,
            expected,
            source,
            &self.encoder.version,
            actual - predicted,
            at_ms,
        );
        self.stats.actual_scored();
        let Some(Observed { ratio, change }) = observed else {
            ack.finish();
            return;
        };
        if let Some(r) = ratio {
            self.gauges.ratio.record(r);
        }
        self.labelled_gauges(id);
        let Some(change) = change else {
            ack.finish();
            return;
        };
        self.gauges.drifting.set(self.table.drifting() as f64);
        let report = self.table.report(id, &self.bundle);
        let started = change == Change::Started;
        tracing::info!(
            partition = id,
            drifting = started,
            rmse = report.as_ref().map(|r| r.rmse),
            training_rmse = report.as_ref().map(|r| r.training_rmse),
            "store {} drifting",
            if started { "started" } else { "stopped" }
        );
        match (&self.drift_topic, report) {
            (Some(topic), Some(report)) => {
                let value = serde_json::to_vec(&report).unwrap_or_default();
                let delivery = Delivery::new(ack, Output::Drift(started), None, None);
                self.producer
                    .send(topic, Some(id.as_bytes()), Some(&value), None, delivery)
                    .await;
            }
            _ => ack.finish(),
        }
    }
}
