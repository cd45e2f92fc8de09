//! The input side: the group consumer and its rebalance callbacks.
//!
//! Offsets are never stored or committed automatically: the [`OffsetTracker`] decides what is
//! safe. On a revoke, the completed prefix of each revoked Kafka partition is committed
//! synchronously while this instance still owns it, and the partition's state is retired so
//! later acknowledgements cannot commit for it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

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
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.stats
            .health
            .broker(up, (!up).then(|| "no broker connection is up".to_owned()));
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                // -1 is librdkafka's internal unassigned partition; -1001 lag means unknown.
                if *p >= 0 && part.consumer_lag >= 0 {
                    crate::metrics::consumer_lag(topic, *p, part.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.stats.health.broker(false, Some(reason.to_owned()));
        }
        self.log.error("consumer", &error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log("consumer", level, fac, message);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut commit = TopicPartitionList::new();
            let mut revoked = Vec::new();
            for elem in tpl.elements_for_topic(&self.topic) {
                revoked.push(elem.partition());
                if let Some(pos) = self.tracker.revoke(elem.partition()) {
                    let _ = commit.add_partition_offset(
                        &self.topic,
                        elem.partition(),
                        Offset::Offset(pos),
                    );
                }
            }
            self.stats.assignment_changed(0, revoked.len() as u64);
            tracing::info!(topic = %self.topic, kafka_partitions = ?revoked, "Kafka partitions revoked");
            if commit.count() > 0 {
                let ok = consumer.commit(&commit, CommitMode::Sync).is_ok();
                self.stats.committed(ok);
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned: Vec<i32> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                for &p in &assigned {
                    self.tracker.assign(p);
                }
                self.stats.assignment_changed(assigned.len() as u64, 0);
                tracing::info!(topic = %self.topic, kafka_partitions = ?assigned, "Kafka partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The input consumer.
pub type InputConsumer = StreamConsumer<RebalanceContext>;

/// Creates the consumer and subscribes it to `topic`.
pub fn create(
    brokers: &str,
    group_id: &str,
    topic: &str,
    options: &BTreeMap<String, String>,
    tracker: Arc<OffsetTracker>,
    stats: Arc<PipelineStats>,
) -> Result<InputConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A fetch returns as soon as data is there; this caps the wait of an idle one, which
        // bounds latency on brokers that hold fetches to the maximum.
        .set("fetch.wait.max.ms", "20")
        // Statistics feed the lag gauges and broker reachability.
        .set("statistics.interval.ms", "5000");
    for (k, v) in options {
        if is_consumer_option(k) {
            config.set(k, v);
        }
    }
    let context = RebalanceContext {
        topic: topic.to_owned(),
        tracker,
        stats,
        log: ClientLog::default(),
    };
    let consumer: InputConsumer = config
        .create_with_context(context)
        .map_err(|e| Error::Kafka(format!("cannot create the consumer for {brokers}: {e}")))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| Error::Kafka(format!("cannot subscribe to {topic}: {e}")))?;
    consumer.context().stats.health.subscribed();
    Ok(consumer)
}

fn is_consumer_option(key: &str) -> bool {
    !(key.starts_with("linger.")
        || key.starts_with("batch.")
        || key.starts_with("queue.buffering.")
        || key.starts_with("message.timeout.")
        || key.starts_with("compression.")
        || key.starts_with("acks")
        || key.starts_with("request.required.acks")
        || key.starts_with("enable.idempotence")
        || key.starts_with("transactional.")
        || key.starts_with("retries")
        || key.starts_with("max.in.flight"))
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
