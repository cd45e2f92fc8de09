//! The output side: predictions and dead letters, and their acknowledgements.
//!
//! One librdkafka producer (with its own polling thread) carries both outputs. Each record
//! travels with a [`Delivery`]: when the broker acknowledges it, the delivery callback finishes
//! the input offset it came from, which is what lets the offset tracker commit.
//!
//! A record the broker refuses (an unwritable dead-letter topic, a deleted output topic, a
//! broker away for longer than `message.timeout.ms`) is never given up: its offset stays
//! unfinished, so nothing past it is committed, its Kafka partition is paused (see
//! [`crate::serve`]), and [`Retries`] sends it again with a growing pause until it is
//! acknowledged or its Kafka partition moves to another instance.
//!
//! The consumer loop never waits on the producer: [`OutputProducer::try_send`] hands back an
//! [`OwnedRecord`] when librdkafka's queue is full, and the loop parks it and pauses the Kafka
//! partition instead.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedHeaders, DeliveryResult, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::clock::now_ms;
use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::kafka::offsets::Ack;
use crate::metrics::PipelineStats;
use crate::scoring::ModelSource;

/// What an output record is.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    /// A prediction, made by this kind of model.
    Prediction(ModelSource),
    /// A dead letter, for this reason.
    DeadLetter(RecordErrorKind),
    /// A copied record (the benchmark's passthrough pipeline).
    Copy,
    /// A record on the drift topic: a store started (`true`) or stopped drifting.
    Drift(bool),
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
    /// When the input record was read, for the benchmark's split of the latency: the part from
    /// the read to the acknowledgement is what the pipeline, this producer and the broker's
    /// acknowledgement add.
    pub read_at: Option<std::time::Instant>,
    /// Times the broker refused this output so far.
    pub attempts: u32,
}

impl Delivery {
    /// A first attempt at delivering `output` for `ack`, whose input was read at `read_at`.
    pub fn new(
        ack: Ack,
        output: Output,
        source_timestamp_ms: Option<i64>,
        read_at: Option<std::time::Instant>,
    ) -> Box<Self> {
        Box::new(Delivery {
            ack,
            output,
            source_timestamp_ms,
            read_at,
            attempts: 0,
        })
    }
}

/// An output record that owns its bytes: parked while the producer's queue is full, or
/// waiting to be sent again after the broker refused it.
pub struct OwnedRecord {
    /// The topic it goes to.
    pub topic: String,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub payload: Option<Vec<u8>>,
    /// Its headers.
    pub headers: Option<OwnedHeaders>,
    /// What it finishes.
    pub delivery: Box<Delivery>,
}

impl OwnedRecord {
    /// A record holding its own copy of borrowed bytes.
    pub fn copied(
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        delivery: Box<Delivery>,
    ) -> Self {
        OwnedRecord {
            topic: topic.to_owned(),
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            headers,
            delivery,
        }
    }

    /// The Kafka partition of the input offset it finishes.
    pub fn kafka_partition(&self) -> i32 {
        self.delivery.ack.partition()
    }
}

/// The producer's context: it turns acknowledgements into finished offsets and metrics.
pub struct DeliveryContext {
    stats: Arc<PipelineStats>,
    /// Dead letters since the last log line about them, and when that line was written: one
    /// line per burst, at most every ten seconds, never one per record.
    dlq_burst: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
    /// librdkafka's messages, rate-limited.
    log: crate::kafka::client_log::ClientLog,
    /// Refused outputs go here to be sent again; `None` in exactly-once mode, where a refused
    /// output fails its transaction instead.
    retries: Option<tokio::sync::mpsc::UnboundedSender<OwnedRecord>>,
    /// Set when an output of the open transaction was refused (exactly-once mode).
    transaction_failed: std::sync::atomic::AtomicBool,
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

    fn delivery(&self, result: &DeliveryResult<'_>, mut delivery: Box<Delivery>) {
        delivery.ack.settled();
        match result {
            Ok(_) => {
                let Delivery {
                    ack,
                    output,
                    source_timestamp_ms,
                    read_at,
                    attempts,
                } = *delivery;
                let latency_us = source_timestamp_ms.map(|t| (now_ms() - t).max(0) as u64 * 1000);
                match output {
                    Output::Prediction(source) => {
                        self.stats.produced(source, latency_us);
                        self.stats.acknowledged_after_read(read_at);
                    }
                    Output::Copy => {
                        self.stats.produced(ModelSource::Partition, latency_us);
                        self.stats.acknowledged_after_read(read_at);
                    }
                    Output::Drift(started) => crate::metrics::drift_record(started),
                    Output::DeadLetter(kind) => {
                        self.stats.dead_lettered(kind);
                        self.log_dead_letter(kind);
                    }
                }
                if attempts > 0 {
                    ack.recovered();
                    tracing::info!(
                        kafka_partition = ack.partition(),
                        offset = ack.offset(),
                        attempts,
                        "refused output delivered at last"
                    );
                }
                ack.finish();
            }
            Err((e, message)) => {
                self.stats.delivery_failed();
                let ack = &delivery.ack;
                if delivery.attempts == 0 || delivery.attempts.is_power_of_two() {
                    tracing::error!(
                        topic = message.topic(),
                        kafka_partition = ack.partition(),
                        offset = ack.offset(),
                        attempts = delivery.attempts + 1,
                        error = %e,
                        "output not acknowledged by the broker; its input offset is not committed, its Kafka partition is paused, and it is sent again"
                    );
                }
                let Some(retries) = &self.retries else {
                    self.transaction_failed
                        .store(true, std::sync::atomic::Ordering::Release);
                    return;
                };
                if ack.is_revoked() {
                    return; // the next owner reads the event again
                }
                if delivery.attempts == 0 {
                    ack.failing();
                }
                delivery.attempts += 1;
                let record = OwnedRecord::copied(
                    message.topic(),
                    message.key(),
                    message.payload(),
                    message.headers().map(|h| h.detach()),
                    delivery,
                );
                let _ = retries.send(record);
            }
        }
    }
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
    let defaults = [
        // Keep per-key order through retries.
        ("enable.idempotence", "true"),
        ("linger.ms", "2"),
        ("queue.buffering.max.messages", "200000"),
        ("compression.type", "none"),
    ];
    crate::kafka::connection::producer_side_config(brokers, &defaults, options)
}

impl OutputProducer {
    /// Creates the producer, and the [`Retries`] that must run beside it to send refused
    /// outputs again. With a `transactional.id` in `config`, refused outputs fail the open
    /// transaction instead ([`OutputProducer::transaction_failed`]) and there are no retries.
    pub fn new(config: &ClientConfig, stats: Arc<PipelineStats>) -> Result<(Self, Retries)> {
        let transactional = config.get("transactional.id").is_some();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let producer: ThreadedProducer<DeliveryContext> = config
            .create_with_context(DeliveryContext {
                stats,
                dlq_burst: std::sync::Mutex::new((0, None)),
                log: Default::default(),
                retries: (!transactional).then_some(tx),
                transaction_failed: Default::default(),
            })
            .map_err(|e| {
                Error::Usage(format!(
                    "cannot create the producer: {e} (check the librdkafka options: [kafka.librdkafka_options], -X or --command-config)"
                ))
            })?;
        let producer = OutputProducer {
            producer: Arc::new(producer),
        };
        let retries = Retries {
            producer: producer.clone(),
            rx,
        };
        Ok((producer, retries))
    }

    /// Enqueues one record, waiting while librdkafka's queue is full (backpressure) and
    /// retrying other errors with a growing pause. The record is dropped only when its Kafka
    /// partition was revoked: the next owner scores the event again.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        delivery: Box<Delivery>,
    ) {
        delivery.ack.sent();
        let mut record = base_record(topic, key, payload, headers, delivery);
        let mut pause = Duration::from_millis(1);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((e, r)) => {
                    record = r;
                    if record.delivery_opaque.ack.is_revoked() {
                        record.delivery_opaque.ack.settled();
                        return;
                    }
                    if let KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) = e {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    if self.fatal_error().is_some() {
                        // Nothing will be enqueued again: the record's offset stays
                        // unfinished, and the consumer loop stops the daemon.
                        return;
                    }
                    tracing::warn!(topic, error = %e, "cannot enqueue output record; retrying in {:?}", pause);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// librdkafka's fatal error, once the producer has one: it can send nothing any more (an
    /// idempotent or transactional producer whose sequence the broker lost, or one fenced by
    /// a newer instance). Only a new instance recovers.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{reason} ({code:?})"))
    }

    /// Enqueues one record without waiting. When librdkafka cannot take it now, the record
    /// comes back with its own copy of the bytes, for the caller to park and offer again.
    pub fn try_send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        delivery: Box<Delivery>,
    ) -> std::result::Result<(), OwnedRecord> {
        delivery.ack.sent();
        let record = base_record(topic, key, payload, headers, delivery);
        match self.producer.send(record) {
            Ok(()) => Ok(()),
            Err((e, r)) => {
                if !matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                ) {
                    tracing::warn!(topic, error = %e, "cannot enqueue output record; offering it again shortly");
                }
                r.delivery_opaque.ack.settled();
                Err(OwnedRecord::copied(
                    topic,
                    key,
                    payload,
                    r.headers,
                    r.delivery_opaque,
                ))
            }
        }
    }

    /// [`OutputProducer::send`] for a record that owns its bytes.
    pub async fn send_owned(&self, record: OwnedRecord) {
        let OwnedRecord {
            topic,
            key,
            payload,
            headers,
            delivery,
        } = record;
        self.send(
            &topic,
            key.as_deref(),
            payload.as_deref(),
            headers,
            delivery,
        )
        .await
    }

    /// [`OutputProducer::try_send`] for a parked record.
    pub fn try_resend(&self, record: OwnedRecord) -> std::result::Result<(), OwnedRecord> {
        let OwnedRecord {
            topic,
            key,
            payload,
            headers,
            delivery,
        } = record;
        self.try_send(
            &topic,
            key.as_deref(),
            payload.as_deref(),
            headers,
            delivery,
        )
    }

    /// The headers of a dead letter: the input record's own headers, then the reason and the
    /// source position. The original key and value travel untouched beside them.
    ///
    /// An input header named like one of the five this adds (a dead letter replayed with its
    /// headers and refused again) is left out, so that each of the five appears once and
    /// describes this refusal.
    pub fn dead_letter_headers(
        source_topic: &str,
        error: &RecordError,
        ack: &Ack,
        input: Option<&BorrowedHeaders>,
    ) -> OwnedHeaders {
        let partition = ack.partition().to_string();
        let offset = ack.offset().to_string();
        let ours = [
            ("error-kind", error.kind.as_str()),
            ("error-message", error.message.as_str()),
            ("source-topic", source_topic),
            ("source-partition", partition.as_str()),
            ("source-offset", offset.as_str()),
        ];
        crate::kafka::headers::replacing(input, &ours)
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

    /// The underlying producer, for the transaction calls of exactly-once mode.
    pub fn transactional(&self) -> &ThreadedProducer<DeliveryContext> {
        &self.producer
    }

    /// True (and reset) if an output of the open transaction was refused by the broker.
    pub fn take_transaction_failed(&self) -> bool {
        self.producer
            .context()
            .transaction_failed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }
}

/// A record for librdkafka, carrying its delivery.
fn base_record<'a>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
    delivery: Box<Delivery>,
) -> BaseRecord<'a, [u8], [u8], Box<Delivery>> {
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
    record
}

/// Sends refused outputs again, one at a time, pausing longer after each refusal (up to 30 s).
pub struct Retries {
    producer: OutputProducer,
    rx: tokio::sync::mpsc::UnboundedReceiver<OwnedRecord>,
}

impl Retries {
    /// Runs until `shutdown`.
    pub async fn run(mut self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            let record = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
            };
            let exp = record.delivery.attempts.saturating_sub(1).min(5);
            let pause = Duration::from_millis(1000 << exp).min(Duration::from_secs(30));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            // Everything refused meanwhile goes out with it, so a burst of refusals costs
            // one pause, not one per record.
            let mut batch = vec![record];
            while let Ok(r) = self.rx.try_recv() {
                batch.push(r);
            }
            for record in batch {
                if record.delivery.ack.is_revoked() {
                    continue;
                }
                self.producer.send_owned(record).await;
            }
        }
    }
}
