//! The input side: the group consumer and its rebalance callbacks.
//!
//! Offsets are never stored or committed automatically: the [`OffsetTracker`] decides what is
//! safe. On a revoke, the completed prefix of each revoked Kafka partition is committed
//! synchronously while this instance still owns it, and the partition's state is retired so
//! later acknowledgements cannot commit for it.

use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::{Processing, ServeConfig};
use crate::error::{Error, Result};
use crate::kafka::client_log::ClientLog;
use crate::kafka::offsets::OffsetTracker;
use crate::metrics::PipelineStats;

/// The consumer's context.
pub struct RebalanceContext {
    /// The input topic; other topics in a rebalance are not ours to track.
    pub topic: String,
    /// The offsets this instance is responsible for.
    pub tracker: Arc<OffsetTracker>,
    /// The pipeline's tally.
    pub stats: Arc<PipelineStats>,
    /// librdkafka's messages, rate-limited.
    pub log: ClientLog,
    /// How long a revoke waits for outputs already handed to the producer.
    pub revoke_timeout: std::time::Duration,
    /// Offsets go into transactions, never into plain commits.
    pub exactly_once: bool,
    /// The input consumer reports the daemon's health, lag and assignment; a side consumer
    /// (the actuals') only its own per-topic lag and commits.
    pub primary: bool,
}

/// Each broker and librdkafka's state for it, e.g. `127.0.0.1:9092/1: CONNECT`.
fn broker_states(statistics: &rdkafka::Statistics) -> String {
    let mut states: Vec<String> = statistics
        .brokers
        .values()
        .filter(|b| b.source != "internal" && b.source != "logical")
        .map(|b| format!("{}: {}", b.name, b.state))
        .collect();
    states.sort();
    match states.is_empty() {
        true => "no broker connection".to_owned(),
        false => states.join(", "),
    }
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        if self.primary {
            self.stats
                .health
                .broker_states((!up).then(|| broker_states(&statistics)));
        }
        let mut lag = 0;
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's internal unassigned partition; -1001 lag means unknown.
                if *p >= 0 && part.consumer_lag >= 0 {
                    crate::metrics::consumer_lag(topic, *p, part.consumer_lag);
                    if *topic == self.topic {
                        lag += part.consumer_lag;
                    }
                }
            }
        }
        if self.primary {
            self.stats.health.set_lag(lag);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if self.primary
            && error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown)
        {
            self.stats.health.brokers_down(reason);
        }
        self.log.error("consumer", &error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log("consumer", level, fac, message);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        // First stop the work: actors drop queued events of these Kafka partitions and the
        // producer stops retrying their outputs. Then wait (bounded) for the outputs already
        // on their way, so what completed is committed and the next owner repeats little.
        let revoked: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let leaving: Vec<_> = revoked
            .iter()
            .filter_map(|&p| self.tracker.revoking(p))
            .collect();
        let deadline = std::time::Instant::now() + self.revoke_timeout;
        while leaving.iter().any(|o| o.in_producer() > 0) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let unsettled: usize = leaving.iter().map(|o| o.in_producer()).sum();
        // Retire and commit under the commit lock, so no periodic commit computed before
        // this point can land after it.
        let _guard = self.tracker.commit_guard();
        let mut commit = TopicPartitionList::new();
        for &p in &revoked {
            if let Some(pos) = self.tracker.revoke(p) {
                let _ = commit.add_partition_offset(&self.topic, p, Offset::Offset(pos));
            }
        }
        if self.primary {
            self.stats.assignment_changed(0, revoked.len() as u64);
        }
        tracing::info!(
            topic = %self.topic,
            kafka_partitions = ?revoked,
            outputs_not_acknowledged = unsettled,
            "Kafka partitions revoked"
        );
        // In exactly-once mode offsets are committed only inside a transaction.
        if commit.count() > 0 && !self.exactly_once {
            let ok = consumer.commit(&commit, CommitMode::Sync).is_ok();
            self.stats.committed(ok);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned: Vec<i32> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                // Where each Kafka partition starts: the group's committed offset, so that a
                // broker skipping records after it is noticed (see [`crate::kafka::position`]).
                let starts = committed(consumer, tpl);
                for &p in &assigned {
                    let start = starts
                        .elements_for_topic(&self.topic)
                        .iter()
                        .find(|e| e.partition() == p)
                        .and_then(|e| e.offset().to_raw())
                        .filter(|&o| o >= 0);
                    self.tracker.assign(p, start);
                }
                // A Kafka partition paused for backpressure before a rebalance gave it back
                // to this instance starts unpaused: its parked work was dropped with the revoke.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "cannot resume newly assigned Kafka partitions");
                }
                if self.primary {
                    self.stats.assignment_changed(assigned.len() as u64, 0);
                }
                tracing::info!(topic = %self.topic, kafka_partitions = ?assigned, "Kafka partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The committed offsets of `assigned`; empty when the group coordinator cannot say in time
/// (reading then starts unchecked).
fn committed(
    consumer: &BaseConsumer<RebalanceContext>,
    assigned: &TopicPartitionList,
) -> TopicPartitionList {
    consumer
        .committed_offsets(assigned.clone(), std::time::Duration::from_secs(10))
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the committed offsets of newly assigned Kafka partitions");
            TopicPartitionList::new()
        })
}

/// Seeks a Kafka partition of `topic` to `offset` without waiting (librdkafka drops what it
/// had fetched past the old position).
pub fn seek(consumer: &InputConsumer, topic: &str, kafka_partition: i32, offset: i64) {
    if let Err(e) = consumer.seek(
        topic,
        kafka_partition,
        Offset::Offset(offset),
        std::time::Duration::ZERO,
    ) {
        tracing::warn!(topic, kafka_partition, offset, error = %e, "cannot seek");
    }
}

/// The high watermark librdkafka last saw for a Kafka partition of `topic`, from its fetch
/// responses: no broker round trip.
pub fn cached_high_watermark(
    consumer: &InputConsumer,
    topic: &str,
    kafka_partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client handle lives as long as `consumer`; the topic is a valid C string
    // for the call, and librdkafka only writes the two out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            kafka_partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// Whether a consumer error is a record batch librdkafka cannot decode: corrupt, or in a
/// codec it lacks. librdkafka tries the fetch again; the daemon cannot skip the batch.
pub fn is_undecodable(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::BadCompression
                | Code::BadMessage
                | Code::NotImplemented
                | Code::InvalidRecord
                | Code::InvalidMessage
        )
    )
}

/// The input consumer.
pub type InputConsumer = StreamConsumer<RebalanceContext>;

/// What a consumer reads, and for whom.
pub struct Subscription<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The consumer group.
    pub group_id: &'a str,
    /// Offsets go into transactions, never into plain commits (the input in `exactly_once`).
    pub transactional_offsets: bool,
    /// It reports the daemon's health, lag and assignment (the input consumer).
    pub primary: bool,
}

/// Creates the consumer of `[kafka] input_topic` and subscribes it.
pub fn create(
    config: &ServeConfig,
    tracker: Arc<OffsetTracker>,
    stats: Arc<PipelineStats>,
) -> Result<InputConsumer> {
    let k = &config.kafka;
    let subscription = Subscription {
        topic: &k.input_topic,
        group_id: &k.group_id,
        transactional_offsets: k.processing == Processing::ExactlyOnce,
        primary: true,
    };
    create_for(config, &subscription, tracker, stats)
}

/// Creates a consumer of `subscription` with the daemon's client settings, and subscribes it.
/// In `exactly_once` mode every consumer reads committed records only.
pub fn create_for(
    config: &ServeConfig,
    subscription: &Subscription<'_>,
    tracker: Arc<OffsetTracker>,
    stats: Arc<PipelineStats>,
) -> Result<InputConsumer> {
    let k = &config.kafka;
    let (brokers, topic) = (k.brokers.as_str(), subscription.topic);
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", subscription.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A fetch returns as soon as data is there; this caps the wait of an idle one, which
        // bounds latency on brokers that hold fetches to the maximum.
        .set("fetch.wait.max.ms", "20")
        // Once the local prefetch queue is over its thresholds (queued.min.messages per Kafka
        // partition, queued.max.messages.kbytes), librdkafka waits this long before fetching
        // that Kafka partition again: its default of 1 s left the pipeline idle for most of a
        // second whenever it caught up with a backlog faster than that.
        .set("fetch.queue.backoff.ms", "10")
        // Statistics feed the lag gauges and broker reachability.
        .set("statistics.interval.ms", "5000");
    if k.processing == Processing::ExactlyOnce {
        // Never read a record from an aborted upstream transaction.
        client.set("isolation.level", "read_committed");
    }
    for (key, v) in &k.librdkafka_options {
        if crate::kafka::connection::is_consumer_option(key) {
            client.set(key, v);
        }
    }
    let context = RebalanceContext {
        topic: topic.to_owned(),
        tracker,
        stats,
        log: ClientLog::default(),
        revoke_timeout: std::time::Duration::from_millis(config.pipeline.revoke_timeout_ms),
        exactly_once: subscription.transactional_offsets,
        primary: subscription.primary,
    };
    let consumer: InputConsumer = client.create_with_context(context).map_err(|e| {
        Error::Usage(format!(
            "cannot create the consumer for {brokers}: {e} (check [kafka.librdkafka_options])"
        ))
    })?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| Error::Kafka(format!("cannot subscribe to {topic}: {e}")))?;
    if subscription.primary {
        consumer.context().stats.health.subscribed();
    }
    Ok(consumer)
}

/// Commits `positions` (Kafka partition, next offset) of `topic`.
pub fn commit(
    consumer: &InputConsumer,
    topic: &str,
    positions: &[(i32, i64)],
    mode: CommitMode,
) -> KafkaResult<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::with_capacity(positions.len());
    for &(p, o) in positions {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    consumer.commit(&tpl, mode)
}
