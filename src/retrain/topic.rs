//! Reading a bounded stretch of a topic: from given offsets to the end each Kafka partition had
//! when the run started, by hand-assigned partitions (no consumer group, no commits).
//!
//! The actuals and the drift topic are read this way; nothing here knows what the records
//! mean.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::kafka::client_log::ClientLog;
use crate::kafka::connection::Connection;

/// How long a metadata, watermark or offset lookup may take.
const LOOKUP: Duration = Duration::from_secs(10);

/// librdkafka's messages, rate-limited; reaching the end of a partition is not an error.
#[derive(Default)]
pub struct RetrainContext {
    log: ClientLog,
}

impl rdkafka::ClientContext for RetrainContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            self.log.error("retrain", &error, reason);
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log("retrain", level, fac, message);
    }
}

impl ConsumerContext for RetrainContext {}

/// A consumer of hand-assigned partitions.
pub type TopicConsumer = BaseConsumer<RetrainContext>;

/// A consumer that never joins a group and never commits.
pub fn consumer(connection: &Connection) -> Result<TopicConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &connection.brokers)
        .set(
            "group.id",
            format!("manymodel-retrain-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    for (k, v) in &connection.options {
        if !k.starts_with("group.")
            && !k.starts_with("enable.")
            && !k.starts_with("partition.assignment")
        {
            config.set(k, v);
        }
    }
    config
        .create_with_context(RetrainContext::default())
        .map_err(|e| Error::Kafka(format!("consumer for {}: {e}", connection.brokers)))
}

/// One Kafka partition's stretch: offsets `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    /// The Kafka partition.
    pub partition: i32,
    /// The first offset read.
    pub start: i64,
    /// The end offset at the start of the run (the high watermark): not read.
    pub end: i64,
}

/// The Kafka partitions of `topic`.
pub fn partitions(consumer: &TopicConsumer, topic: &str) -> Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), LOOKUP)
        .map_err(|e| {
            Error::Kafka(format!(
                "metadata of topic {topic}: {e} (can [kafka] brokers be reached with its librdkafka_options?)"
            ))
        })?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| Error::Kafka(format!("no metadata for topic {topic}")))?;
    if let Some(e) = t.error() {
        return Err(Error::Kafka(format!(
            "topic {topic}: {e:?} (does it exist? check the name in the retrain config)"
        )));
    }
    if t.partitions().is_empty() {
        return Err(Error::Kafka(format!(
            "topic {topic} has no Kafka partitions"
        )));
    }
    Ok(t.partitions().iter().map(|p| p.id()).collect())
}

/// Each Kafka partition of `topic` from the first record at or after `since_ms` (from its
/// beginning when `None`) to its end now.
pub fn stretches(
    consumer: &TopicConsumer,
    topic: &str,
    since_ms: Option<i64>,
) -> Result<Vec<Stretch>> {
    let ids = partitions(consumer, topic)?;
    let mut out = Vec::with_capacity(ids.len());
    let starts = match since_ms {
        None => None,
        Some(ms) => {
            let mut list = TopicPartitionList::new();
            for &p in &ids {
                list.add_partition_offset(topic, p, Offset::Offset(ms.max(0)))
                    .map_err(|e| Error::Kafka(format!("{topic}/{p}: {e}")))?;
            }
            let found = consumer.offsets_for_times(list, LOOKUP).map_err(|e| {
                Error::Kafka(format!(
                    "finding the offsets of {topic} at timestamp {ms} ms: {e}"
                ))
            })?;
            let mut by_partition = HashMap::new();
            for e in found.elements() {
                by_partition.insert(e.partition(), e.offset());
            }
            Some(by_partition)
        }
    };
    for p in ids {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, LOOKUP)
            .map_err(|e| Error::Kafka(format!("the end offsets of {topic}/{p}: {e}")))?;
        let start = match starts.as_ref().and_then(|s| s.get(&p)) {
            None => low,
            // No record at or after the time: nothing to read, unless the newest record
            // says otherwise (librdkafka's MockCluster answers End to every timestamp lookup):
            // then the partition is read whole, the time filter still applying.
            Some(Offset::End) => match since_ms {
                Some(ms) if high > low && newest_timestamp(consumer, topic, p, high)? >= ms => {
                    tracing::debug!(topic, partition = p, "the timestamp lookup answered End before a newer record: reading from the beginning");
                    low
                }
                _ => high,
            },
            Some(Offset::Offset(o)) => (*o).max(low),
            Some(other) => {
                return Err(Error::Kafka(format!(
                    "{topic}/{p}: the broker answered {other:?} for a timestamp lookup"
                )))
            }
        };
        out.push(Stretch {
            partition: p,
            start,
            end: high,
        });
    }
    Ok(out)
}

/// The timestamp of the record before offset `high` of `topic`/`partition` (-1 when it has
/// none, or none comes within [`LOOKUP`]).
fn newest_timestamp(
    consumer: &TopicConsumer,
    topic: &str,
    partition: i32,
    high: i64,
) -> Result<i64> {
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(high - 1))
        .map_err(|e| Error::Kafka(format!("{topic}/{partition}: {e}")))?;
    consumer
        .assign(&list)
        .map_err(|e| Error::Kafka(format!("reading {topic}/{partition}: {e}")))?;
    let started = Instant::now();
    let mut ts = -1;
    while started.elapsed() < LOOKUP {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                use rdkafka::Message;
                ts = m.timestamp().to_millis().unwrap_or(-1);
                break;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            _ => {}
        }
    }
    let _ = consumer.unassign();
    Ok(ts)
}

/// Reads `stretches` of `topic`, handing every record in them to `each`. Gives up when no
/// record comes for `patience`, naming the Kafka partitions and offsets still missing; stops
/// early (with `Ok(false)`) when `cancel` fires.
pub fn read(
    consumer: &TopicConsumer,
    topic: &str,
    stretches: &[Stretch],
    patience: Duration,
    cancel: &CancellationToken,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<bool> {
    let mut pending: HashMap<i32, (i64, i64)> = stretches
        .iter()
        .filter(|s| s.start < s.end)
        .map(|s| (s.partition, (s.start, s.end)))
        .collect();
    if pending.is_empty() {
        return Ok(true);
    }
    let mut list = TopicPartitionList::new();
    for (&p, &(start, _)) in &pending {
        list.add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(|e| Error::Kafka(format!("{topic}/{p}: {e}")))?;
    }
    consumer
        .assign(&list)
        .map_err(|e| Error::Kafka(format!("reading {topic}: {e}")))?;
    let mut progress = Instant::now();
    let mut last_error = None;
    let outcome = loop {
        if pending.is_empty() {
            break Ok(true);
        }
        if cancel.is_cancelled() {
            break Ok(false);
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                progress = Instant::now();
                use rdkafka::Message;
                let p = m.partition();
                let Some(&(_, end)) = pending.get(&p) else {
                    continue;
                };
                if m.offset() < end {
                    each(&m);
                }
                match pending.get_mut(&p) {
                    Some(at) if m.offset() + 1 < end => at.0 = m.offset() + 1,
                    _ => {
                        pending.remove(&p);
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                pending.remove(&p);
            }
            Some(Err(e)) => last_error = Some(e.to_string()),
            None => {}
        }
        if progress.elapsed() > patience {
            let mut missing: Vec<String> = pending
                .iter()
                .map(|(p, (at, end))| format!("{topic}/{p} offsets {at}..{end}"))
                .collect();
            missing.sort();
            break Err(Error::Kafka(format!(
                "no record for {}s while reading {}{}; is the broker reachable? (raise [actuals] read_timeout_secs for a slow cluster)",
                patience.as_secs(),
                missing.join(", "),
                last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )));
        }
    };
    let _ = consumer.unassign();
    outcome
}
