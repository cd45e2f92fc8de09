//! The consumer loop: it reads every input record, registers its offset, decodes it with the
//! active bundle and hands it to its partition actor, or to the producer as a dead letter,
//! never waiting (what cannot be handed on now is parked, see [`crate::backpressure`]). Once a
//! second it beats, samples its queues and asks the stall watchdog. In `exactly_once` mode it
//! also cuts transactions ([`super::exactly_once`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedHeaders, Message, OwnedHeaders, Timestamp};
use tokio_util::sync::CancellationToken;

use super::Mode;
use crate::awaiting::{AwaitingSchema, Waiting};
use crate::backpressure::{Backpressure, Work};
use crate::codec::{Decoded, Decoder};
use crate::config::ServeConfig;
use crate::control::ActiveBundle;
use crate::error::{Error, Result};
use crate::kafka::consumer::{self, InputConsumer};
use crate::kafka::offsets::{Ack, Admission, OffsetTracker};
use crate::kafka::producer::{Delivery, Output, OutputProducer, OwnedRecord};
use crate::kafka::transaction::Transactions;
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::partition::{Job, ModelRef};
use crate::router::Router;
use crate::scoring;
use crate::spares::SpareStock;
use crate::watchdog::StallWatchdog;

/// The consumer loop's state.
pub(super) struct Reader<'a> {
    pub(super) config: &'a ServeConfig,
    /// The active bundle: decodes every record read, and goes with it to its actor.
    pub(super) bundle: Arc<Bundle>,
    /// Where newly activated bundles come from.
    pub(super) bundles: ActiveBundle,
    /// False once `bundles` can no longer change.
    pub(super) follow: bool,
    pub(super) producer: &'a OutputProducer,
    pub(super) tracker: &'a OffsetTracker,
    pub(super) stats: &'a PipelineStats,
    pub(super) router: Router,
    pub(super) mode: Mode,
    /// Turns record bytes into events (`[input]`), built once.
    pub(super) decoder: Decoder,
    /// Input buffers the actors handed back, to decode into.
    pub(super) spares: SpareStock,
    /// Records set aside while the registry is asked for their writer schema.
    pub(super) awaiting: AwaitingSchema,
    /// Parked work and paused Kafka partitions.
    pub(super) flow: Backpressure,
    /// Looks for work waiting with nothing acknowledged.
    pub(super) watchdog: StallWatchdog,
    /// The open transaction, in exactly-once mode.
    pub(super) transactions: Option<Transactions>,
    /// The tracker's revocation count when the open transaction began.
    pub(super) revocations: u64,
    /// Whether anything was read since the last transaction.
    pub(super) read_since_commit: bool,
    /// When the current turn began reading: the read time of every record it reads (one
    /// clock read per turn, not per record).
    pub(super) turn_started: Instant,
}

impl Reader<'_> {
    /// Reads until `shutdown`, then hands back what the drain needs.
    pub(super) async fn read_until(
        mut self,
        consumer: &InputConsumer,
        shutdown: &CancellationToken,
    ) -> Result<(Router, Backpressure, Option<Transactions>)> {
        // The loop beats, samples its queues and asks the watchdog once a second, records or
        // not; parked work is offered again every few milliseconds.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut relieve = tokio::time::interval(Duration::from_millis(5));
        relieve.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = Duration::from_millis(self.config.kafka.commit_interval_ms.max(10));
        let mut transaction = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        transaction.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.revocations = self.tracker.revocations();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = self.bundles.changed(), if self.follow => match changed {
                    Ok(()) => self.swap(),
                    Err(_) => self.follow = false,
                },
                _ = tick.tick() => {
                    if let Some(fatal) = self.producer.fatal_error() {
                        let fenced = match &self.transactions {
                            Some(t) => format!(" (if fenced: {})", t.fenced_by()),
                            None => String::new(),
                        };
                        return Err(Error::Kafka(format!(
                            "the output producer failed fatally: {fatal}{fenced}; restart the instance: it reads again from the committed offsets"
                        )));
                    }
                    self.second(consumer);
                }
                _ = relieve.tick() => {
                    self.flow.relieve(consumer, self.tracker, &mut self.router, self.producer);
                    if self.transactions.is_some() && self.tracker.revocations() != self.revocations {
                        // Outputs of a revoked Kafka partition sit in the open transaction
                        // without their offsets: discard them all and start over.
                        tracing::info!("Kafka partitions were revoked: aborting the open transaction");
                        self.abort(consumer, shutdown).await?;
                    }
                }
                _ = transaction.tick(), if self.transactions.is_some() => {
                    self.cut_transaction(consumer, shutdown).await?;
                }
                id = self.decoder.resolved(), if self.decoder.looking_up() => {
                    self.release(consumer, id);
                }
                _ = self.router.room(), if !self.flow.is_empty() => {
                    self.flow.relieve(consumer, self.tracker, &mut self.router, self.producer);
                }
                message = consumer.recv(), if self.taking() => {
                    self.turn_started = Instant::now();
                    self.read(consumer, message).await;
                    // Every record the consumer has already fetched is read in the same turn
                    // (up to BURST), and the actors get them in batches: one wake-up of each
                    // actor per batch, not one per event.
                    for _ in 1..BURST {
                        if !self.taking() {
                            break;
                        }
                        let Some(message) = ready_now(consumer.recv()) else {
                            break;
                        };
                        self.read(consumer, message).await;
                    }
                }
            }
            // Whatever the turn routed reaches its actor before the loop waits again.
            self.router.flush();
        }
        Ok((self.router, self.flow, self.transactions))
    }

    /// Whether the loop takes records now: not while the records awaiting their writer schema
    /// are at their bound, nor while parked work waits for room (see
    /// [`crate::backpressure`]).
    fn taking(&self) -> bool {
        !self.awaiting.is_full() && !self.flow.waiting_for_room()
    }

    /// One record read, or the error the consumer gave instead.
    async fn read(
        &mut self,
        consumer: &InputConsumer,
        message: std::result::Result<
            rdkafka::message::BorrowedMessage<'_>,
            rdkafka::error::KafkaError,
        >,
    ) {
        match message {
            Ok(m) => self.handle(consumer, &m).await,
            Err(e) => {
                if consumer::is_undecodable(&e) {
                    crate::metrics::undecodable_batch();
                    self.stats.health.undecodable_batch(&e.to_string());
                }
                consumer
                    .context()
                    .log
                    .error("consumer", &e, "while reading");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Once a second: the heartbeat, the queue gauges and the stall watchdog.
    fn second(&mut self, consumer: &InputConsumer) {
        self.unstick(consumer);
        let health = &self.stats.health;
        health.beat();
        let in_flight = self.tracker.in_flight();
        crate::metrics::queues(
            self.router.actors(),
            self.router.queued(),
            self.producer.in_flight(),
        );
        crate::metrics::in_flight(in_flight);
        crate::metrics::awaiting_schema(self.awaiting.len());
        let waiting = in_flight > 0 || self.flow.parked() > 0 || health.lag() > 0;
        let (tracker, flow, router, producer) =
            (self.tracker, &self.flow, &self.router, self.producer);
        self.watchdog
            .check(tracker.finished(), waiting, health, || {
                let mut parts: Vec<String> = tracker
                    .owned()
                    .iter()
                    .filter(|o| o.in_flight() > 0 || flow.parked_in(o.partition()) > 0)
                    .map(|o| {
                        format!(
                            "Kafka partition {}: {} in flight from offset {}, {} parked, {} refused by the broker{}",
                            o.partition(),
                            o.in_flight(),
                            o.oldest_unfinished().map_or("-".into(), |x| x.to_string()),
                            flow.parked_in(o.partition()),
                            o.failing(),
                            if flow.is_paused(o.partition()) { ", paused" } else { "" }
                        )
                    })
                    .collect();
                parts.push(format!(
                    "{} in partition mailboxes, {} outputs in the producer queue, consumer lag {}",
                    router.queued(),
                    producer.in_flight(),
                    health.lag()
                ));
                parts.join("; ")
            });
    }

    /// Seeks further back a Kafka partition that has shown no record since a seek although
    /// its log goes on past the offset sought: a broker that answers a fetch from inside a
    /// record batch with nothing (see [`crate::kafka::position`]).
    fn unstick(&mut self, consumer: &InputConsumer) {
        let topic = &self.config.kafka.input_topic;
        for offsets in self.tracker.owned() {
            let p = offsets.partition();
            let Some(next) = offsets.next_read() else {
                continue;
            };
            if self.flow.is_paused(p)
                || consumer::cached_high_watermark(consumer, topic, p).is_none_or(|hi| hi <= next)
            {
                continue;
            }
            if let Some((next, at)) = offsets.stuck(SEEK_PATIENCE) {
                crate::metrics::read_gap();
                tracing::warn!(
                    topic = %topic,
                    kafka_partition = p,
                    expected = next,
                    seek_to = at,
                    "no record since a seek although the log goes on; reading again from further back"
                );
                consumer::seek(consumer, topic, p, at);
            }
        }
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
            pause_us = %format!("{:.1}", pause.as_secs_f64() * 1e6),
            "bundle swapped in: every record read from now on is scored by it"
        );
        // Freeing a large bundle takes time; never on the consumer loop.
        tokio::task::spawn_blocking(move || {
            drop(previous);
            crate::memory::return_freed();
        });
    }

    /// Registers one record, decodes it and hands it on: to its partition actor, or to the
    /// producer as a dead letter (or a passthrough copy). Never waits: what cannot be handed
    /// on now is parked and its Kafka partition paused.
    async fn handle(
        &mut self,
        consumer: &InputConsumer,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) {
        let kafka_partition = m.partition();
        let ack = match self.tracker.admit(kafka_partition, m.offset()) {
            Admission::Read(ack) => ack,
            Admission::Repeat => {
                crate::metrics::record_repeated();
                return;
            }
            Admission::Skipped { next, at } => {
                crate::metrics::read_gap();
                tracing::warn!(
                    topic = m.topic(),
                    kafka_partition,
                    expected = next,
                    got = m.offset(),
                    seek_to = at,
                    "the broker skipped records after a seek (a fetch from inside a record batch); reading them again from further back"
                );
                consumer::seek(consumer, m.topic(), kafka_partition, at);
                return;
            }
        };
        self.stats.consumed();
        self.read_since_commit = true;
        let timestamp_ms = match m.timestamp() {
            Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            Timestamp::NotAvailable => None,
        };
        self.stats.read_after(timestamp_ms);
        let payload = m.payload();
        let k = &self.config.kafka;
        if self.mode == Mode::Passthrough {
            let delivery = Delivery::new(ack, Output::Copy, timestamp_ms, Some(self.turn_started));
            let topic = k.output_topic.clone();
            self.produce(consumer, &topic, m.key(), payload, None, delivery);
            return;
        }
        self.route(
            consumer,
            m.key(),
            payload,
            || m.headers(),
            ack,
            timestamp_ms,
        );
    }

    /// Decodes a record read (or taken back from waiting for its writer schema) and hands it
    /// on; `ack` is the claim on its offset. Its `headers` are looked up only if it waits for
    /// its writer schema or is dead-lettered.
    fn route<'h>(
        &mut self,
        consumer: &InputConsumer,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: impl FnOnce() -> Option<&'h BorrowedHeaders>,
        ack: Ack,
        timestamp_ms: Option<i64>,
    ) {
        let kafka_partition = ack.partition();
        let k = &self.config.kafka;
        let bytes = payload.unwrap_or_default();
        let decoded = if let Err(e) = self.config.pipeline.check_record_size(bytes.len()) {
            Err(e)
        } else {
            let decoded = self.decoder.decode_into(
                bytes,
                &self.bundle.spec.partition_column,
                self.bundle.encoder(),
                self.spares.take(),
            );
            let decoded = match decoded {
                Decoded::Done(d) => d,
                Decoded::Awaiting(id) => {
                    let waiting = Waiting {
                        key: key.map(<[u8]>::to_vec),
                        payload: bytes.to_vec(),
                        headers: headers().map(BorrowedHeaders::detach),
                        ack,
                        timestamp_ms,
                    };
                    self.awaiting.push(id, waiting);
                    return;
                }
            };
            decoded.and_then(|event| {
                self.config.pipeline.check_key(&event.partition)?;
                let id_hash = crate::model::index::id_hash(&event.partition);
                if scoring::scores_unknown(&self.bundle, self.config.model.unknown_partition) {
                    // Every store is scored whether it has a model or not: its actor looks it
                    // up, with the rest of its batch (see `crate::partition`).
                    return Ok((event, id_hash, ModelRef::Lookup));
                }
                match self
                    .bundle
                    .partition_index_hashed(id_hash, &event.partition)
                {
                    Some(i) => Ok((event, id_hash, ModelRef::Own(i))),
                    None => Err(scoring::refusal(&self.bundle, &event.partition)),
                }
            })
        };
        let job = match decoded {
            Ok((event, id_hash, model)) => Job {
                event,
                id_hash,
                model,
                ack,
                timestamp_ms,
                read_at: self.turn_started,
            },
            Err(error) => {
                tracing::debug!(
                    topic = %k.input_topic,
                    kafka_partition = ack.partition(),
                    offset = ack.offset(),
                    %error,
                    "dead-lettering record"
                );
                let headers =
                    OutputProducer::dead_letter_headers(&k.input_topic, &error, &ack, headers());
                let delivery = Delivery::new(ack, Output::DeadLetter(error.kind), None, None);
                let topic = k.dlq_topic.clone();
                self.produce(consumer, &topic, key, payload, Some(headers), delivery);
                return;
            }
        };

        let changed = self
            .flow
            .dispatch(kafka_partition, &self.bundle, job, &mut self.router);
        if changed
            || self.flow.in_flight_crossed(self.tracker)
            || self.flow.holding_unpaused(kafka_partition)
        {
            self.flow.sync(consumer, self.tracker);
        }
    }

    /// Decodes again, in read order, the records that waited for writer schema `id`.
    pub(super) fn release(&mut self, consumer: &InputConsumer, id: u32) {
        self.turn_started = Instant::now();
        for waiting in self.awaiting.take(id) {
            let Waiting {
                key,
                payload,
                headers,
                ack,
                timestamp_ms,
            } = waiting;
            if ack.is_revoked() {
                continue; // another instance reads it now
            }
            let headers = || headers.as_ref().map(OwnedHeaders::as_borrowed);
            self.route(
                consumer,
                key.as_deref(),
                Some(&payload),
                headers,
                ack,
                timestamp_ms,
            );
        }
        crate::metrics::awaiting_schema(self.awaiting.len());
    }

    /// Sends a record read from Kafka straight to the producer (a dead letter or a
    /// passthrough copy), or parks it behind earlier work of its Kafka partition.
    fn produce(
        &mut self,
        consumer: &InputConsumer,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
        delivery: Box<Delivery>,
    ) {
        let kafka_partition = delivery.ack.partition();
        let record = if self.flow.parked_in(kafka_partition) > 0 {
            OwnedRecord::copied(topic, key, payload, headers, delivery)
        } else {
            match self
                .producer
                .try_send(topic, key, payload, headers, delivery)
            {
                Ok(()) => {
                    if self.flow.in_flight_crossed(self.tracker)
                        || self.flow.holding_unpaused(kafka_partition)
                    {
                        self.flow.sync(consumer, self.tracker);
                    }
                    return;
                }
                Err(record) => record,
            }
        };
        self.flow.park(kafka_partition, Work::Produce(record));
        self.flow.sync(consumer, self.tracker);
    }
}

/// The most records the loop reads in one turn without waiting, before it hands their events
/// to the actors and looks at its other duties (ticks, a new bundle, shutdown).
const BURST: usize = 256;

/// The output of `future` if it is ready without waiting (polled once, then dropped).
fn ready_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

/// How long a Kafka partition may show no record after a seek, while its log goes on, before
/// it is sought further back.
const SEEK_PATIENCE: Duration = Duration::from_secs(3);
