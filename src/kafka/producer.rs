//! The output side: predictions and dead letters, and their acknowledgements.
//!
//! One librdkafka producer (with its own polling thread) carries both outputs. Each record
//! travels with a [`Delivery`]: when the broker acknowledges it, the delivery callback finishes
//! the input offset it came from, which is what lets the offset tracker commit. A record the
//! broker does not acknowledge is logged and counted and its offset is never finished, so it
//! is never committed past: at-least-once, even across a crash.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::kafka::offsets::Ack;
use crate::metrics::PipelineStats;
use crate::model::bundle::ModelSource;

/// What an output record is.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// A prediction, made by this kind of model.
    Prediction(ModelSource),
    /// A dead letter, for this reason.
    DeadLetter(RecordErrorKind),
    /// A copied record (the benchmark's passthrough pipeline).
    Copy,
}

/// What travels with an output record to its delivery callback.
#[derive(Debug)]
pub struct Delivery {
    /// The input offset to finish once the output is acknowledged.
    pub ack: Ack,
    /// What the output is.
    pub output: Output,
    /// The input record's Kafka timestamp (ms), for end-to-end latency.
    pub source_timestamp_ms: Option<i64>,
}

/// The producer's context: it turns acknowledgements into finished offsets and metrics.
pub struct DeliveryContext {
    stats: Arc<PipelineStats>,
    /// Dead letters since the last log line about them, and when that line was written: one
    /// line per burst, at most every ten seconds, never one per record.
    dlq_burst: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
    /// librdkafka's messages, rate-limited.
    log: crate::kafka::client_log::ClientLog,
}

impl DeliveryContext {
    fn log_dead_letter(&self, kind: RecordErrorKind) {
        let Ok(mut burst) = self.dlq_burst.lock() else {
            return;
        };
        burst.0 += 1;
        let due = burst
            .1
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(
                dead_letters = burst.0,
                last_reason = kind.as_str(),
                "records sent to the dead-letter topic (counted by reason in manymodel_events_dead_lettered_total)"
            );
            *burst = (0, Some(std::time::Instant::now()));
        }
    }
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error("producer", &error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log("producer", level, fac, message);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        let Delivery {
            ack,
            output,
            source_timestamp_ms,
        } = *delivery;
        match result {
            Ok(_) => {
                let latency_us = source_timestamp_ms.map(|t| (now_ms() - t).max(0) as u64 * 1000);
                match output {
                    Output::Prediction(source) => self.stats.produced(source, latency_us),
                    Output::Copy => self.stats.produced(ModelSource::Partition, latency_us),
                    Output::DeadLetter(kind) => {
                        self.stats.dead_lettered(kind);
                        self.log_dead_letter(kind);
                    }
                }
                ack.finish();
            }
            Err((e, _)) => {
                self.stats.delivery_failed();
                tracing::error!(
                    kafka_partition = ack.partition(),
                    offset = ack.offset(),
                    error = %e,
                    "output not acknowledged by the broker; this input offset will not be committed and is read again after a restart"
                );
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A cloneable handle on the output producer.
#[derive(Clone)]
pub struct OutputProducer {
    producer: Arc<ThreadedProducer<DeliveryContext>>,
}

/// The producer settings manymodel relies on; user options override them.
pub fn producer_config(
    brokers: &str,
    options: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        // Keep per-key order through retries.
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "200000")
        .set("compression.type", "none");
    for (k, v) in options {
        if is_producer_option(k) {
            config.set(k, v);
        }
    }
    config
}

/// Options that only make sense on a consumer are not given to the producer, and vice versa,
/// so one `librdkafka_options` table can serve both without warnings.
fn is_producer_option(key: &str) -> bool {
    !(key.starts_with("fetch.")
        || key.starts_with("group.")
        || key.starts_with("session.")
        || key.starts_with("heartbeat.")
        || key.starts_with("auto.")
        || key.starts_with("enable.auto.")
        || key.starts_with("max.poll.")
        || key.starts_with("partition.assignment.")
        || key.starts_with("isolation.")
        || key.starts_with("queued.")
        || key == "check.crcs")
}

impl OutputProducer {
    /// Creates the producer.
    pub fn new(config: &ClientConfig, stats: Arc<PipelineStats>) -> Result<Self> {
        let producer: ThreadedProducer<DeliveryContext> = config
            .create_with_context(DeliveryContext {
                stats,
                dlq_burst: std::sync::Mutex::new((0, None)),
                log: Default::default(),
            })
            .map_err(|e| Error::Kafka(format!("cannot create the producer: {e}")))?;
        Ok(OutputProducer {
            producer: Arc::new(producer),
        })
    }

    /// Enqueues one record, waiting while librdkafka's queue is full (backpressure) and
    /// retrying other errors with a growing pause: the offset is never given up.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        delivery: Box<Delivery>,
    ) {
        let mut record = BaseRecord::with_opaque_to(topic, delivery);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let mut pause = Duration::from_millis(1);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, r)) => {
                    record = r;
                    tracing::warn!(topic, error = %e, "cannot enqueue output record; retrying in {:?}", pause);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Sends a dead letter: the original key and value untouched, the reason and the source
    /// position in headers.
    #[allow(clippy::too_many_arguments)]
    pub async fn dead_letter(
        &self,
        dlq_topic: &str,
        source_topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        error: &RecordError,
        ack: Ack,
    ) {
        let partition = ack.partition().to_string();
        let offset = ack.offset().to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "error-kind",
                value: Some(error.kind.as_str()),
            })
            .insert(Header {
                key: "error-message",
                value: Some(error.message.as_str()),
            })
            .insert(Header {
                key: "source-topic",
                value: Some(source_topic),
            })
            .insert(Header {
                key: "source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "source-offset",
                value: Some(offset.as_str()),
            });
        let delivery = Box::new(Delivery {
            ack,
            output: Output::DeadLetter(error.kind),
            source_timestamp_ms: None,
        });
        self.send(dlq_topic, key, value, Some(headers), delivery)
            .await;
    }

    /// Waits until every enqueued record is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.producer
            .flush(timeout)
            .map_err(|e| Error::Kafka(format!("flushing the producer: {e}")))
    }

    /// Records enqueued and not yet acknowledged.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}
