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
//! Shutdown (SIGINT/SIGTERM, or the caller's token): stop reading, close the router so every
//! actor drains its queue, flush the producer, commit synchronously (or commit the last
//! transaction). If the drain deadline passes first, nothing more is committed and [`run`]
//! returns an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, Timestamp};
use tokio_util::sync::CancellationToken;

use rdkafka::message::OwnedHeaders;

use crate::awaiting::{AwaitingSchema, Waiting};
use crate::backpressure::{Backpressure, Work};
use crate::codec::{Decoded, Decoder, PredictionEncoder};
use crate::config::{Processing, ServeConfig};
use crate::control::local::LocalBundle;
use crate::control::reader::ControlOptions;
use crate::control::signing::TrustedKeys;
use crate::control::ActiveBundle;
use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::kafka::commit::{commit_periodically, final_commit};
use crate::kafka::consumer::{self, InputConsumer};
use crate::kafka::offsets::{Ack, Admission, OffsetTracker};
use crate::kafka::producer::{producer_config, Delivery, Output, OutputProducer, OwnedRecord};
use crate::kafka::transaction::{transactional_id, Outcome, Transactions};
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::partition::{ActorContext, Job};
use crate::router::Router;
use crate::scoring::{self, UnknownPartition};
use crate::watchdog::StallWatchdog;

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
    if exactly_once {
        client.set("transactional.id", transactional_id(config));
    }
    let (producer, retries) = OutputProducer::new(&client, stats.clone())?;
    let transactions = match exactly_once {
        true => {
            crate::metrics::transactions_from_zero();
            Some(Transactions::start(producer.clone()).await?)
        }
        false => None,
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
        Router::default_shards(),
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
        awaiting: AwaitingSchema::default(),
        flow: Backpressure::new(&k.input_topic, config.pipeline.max_in_flight),
        watchdog: StallWatchdog::new(Duration::from_secs(config.pipeline.stall_timeout_secs)),
        transactions,
        revocations: 0,
        read_since_commit: false,
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
    match transactions {
        // A transaction is all or nothing: with events undelivered, nothing of it commits.
        Some(mut t) if !delivered => t.abort().await?,
        Some(mut t) => {
            if t.commit(&consumer, &k.input_topic, &positions).await? == Outcome::Aborted {
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
    /// Records set aside while the registry is asked for their writer schema.
    awaiting: AwaitingSchema,
    /// Parked work and paused Kafka partitions.
    flow: Backpressure,
    /// Looks for work waiting with nothing acknowledged.
    watchdog: StallWatchdog,
    /// The open transaction, in exactly-once mode.
    transactions: Option<Transactions>,
    /// The tracker's revocation count when the open transaction began.
    revocations: u64,
    /// Whether anything was read since the last transaction.
    read_since_commit: bool,
}

impl Reader<'_> {
    /// Reads until `shutdown`, then hands back what the drain needs.
    async fn read_until(
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
                _ = tick.tick() => self.second(consumer),
                _ = relieve.tick() => {
                    self.flow.relieve(consumer, self.tracker, &mut self.router, self.producer);
                    if self.transactions.is_some() && self.tracker.revocations() != self.revocations {
                        // Outputs of a revoked Kafka partition sit in the open transaction
                        // without their offsets: discard them all and start over.
                        tracing::info!("Kafka partitions were revoked: aborting the open transaction");
                        self.abort(consumer).await?;
                    }
                }
                _ = transaction.tick(), if self.transactions.is_some() => {
                    self.cut_transaction(consumer, shutdown).await?;
                }
                id = self.decoder.resolved(), if self.decoder.looking_up() => {
                    self.release(consumer, id);
                }
                message = consumer.recv(), if !self.awaiting.is_full() => match message {
                    Ok(m) => self.handle(consumer, &m).await,
                    Err(e) => {
                        if consumer::is_undecodable(&e) {
                            crate::metrics::undecodable_batch();
                            self.stats.health.undecodable_batch(&e.to_string());
                        }
                        consumer.context().log.error("consumer", &e, "while reading");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        Ok((self.router, self.flow, self.transactions))
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

    /// Exactly-once: stop reading, let every event read in the transaction be acknowledged,
    /// then commit it with its offsets.
    async fn cut_transaction(
        &mut self,
        consumer: &InputConsumer,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        if !std::mem::take(&mut self.read_since_commit) {
            return Ok(());
        }
        let deadline = Instant::now() + TRANSACTION_DRAIN;
        // Records waiting for their writer schema belong to this transaction too.
        while !self.awaiting.is_empty() && Instant::now() < deadline {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline.into()) => {}
                id = self.decoder.resolved(), if self.decoder.looking_up() => self.release(consumer, id),
            }
        }
        self.flow.drain(&mut self.router, self.producer).await;
        while self.tracker.in_flight() > 0 && Instant::now() < deadline {
            if shutdown.is_cancelled() {
                return Ok(()); // the shutdown path commits
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let Some(t) = self.transactions.as_mut() else {
            return Ok(());
        };
        if self.tracker.in_flight() > 0 {
            tracing::warn!(
                in_flight = self.tracker.in_flight(),
                "events of this transaction were not acknowledged in time; aborting it"
            );
            return self.abort(consumer).await;
        }
        let positions = self.tracker.all_committable();
        let topic = &self.config.kafka.input_topic;
        match t.commit(consumer, topic, &positions).await? {
            Outcome::Committed => {
                tracing::debug!(?positions, "transaction committed");
                self.stats.committed(true);
                self.revocations = self.tracker.revocations();
                Ok(())
            }
            Outcome::Aborted => {
                self.forget();
                self.rewind(consumer).await
            }
        }
    }

    /// Exactly-once: aborts the open transaction and rewinds to the committed offsets.
    async fn abort(&mut self, consumer: &InputConsumer) -> Result<()> {
        // Outstanding work is dropped first, so nothing of it reaches the next transaction.
        self.forget();
        if let Some(t) = self.transactions.as_mut() {
            t.abort().await?;
        }
        self.rewind(consumer).await
    }

    /// Exactly-once: drops every event read in the aborted transaction, wherever it is.
    fn forget(&mut self) {
        self.tracker.reset();
        self.flow.clear();
        self.awaiting.clear();
    }

    /// Exactly-once, after an abort and [`Reader::forget`]: every owned Kafka partition
    /// reads again from its committed offset.
    async fn rewind(&mut self, consumer: &InputConsumer) -> Result<()> {
        self.revocations = self.tracker.revocations();
        let owned: Vec<i32> = self.tracker.owned().iter().map(|o| o.partition()).collect();
        let sought =
            crate::kafka::transaction::rewind(consumer, &self.config.kafka.input_topic, &owned)?;
        // Reading starts again at the committed offsets: checked like any other seek.
        for offsets in self.tracker.owned() {
            if let Some(&(_, at)) = sought.iter().find(|(p, _)| *p == offsets.partition()) {
                offsets.sought(at);
            }
        }
        tracing::info!(kafka_partitions = ?owned, "transaction aborted; rewound to the committed offsets");
        Ok(())
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
        tokio::task::spawn_blocking(move || drop(previous));
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
        let payload = m.payload();
        let k = &self.config.kafka;
        if self.mode == Mode::Passthrough {
            let delivery = Delivery::new(ack, Output::Copy, timestamp_ms);
            let topic = k.output_topic.clone();
            self.produce(consumer, &topic, m.key(), payload, None, delivery);
            return;
        }
        self.route(consumer, m.key(), payload, ack, timestamp_ms);
    }

    /// Decodes a record read (or taken back from waiting for its writer schema) and hands it
    /// on; `ack` is the claim on its offset.
    fn route(
        &mut self,
        consumer: &InputConsumer,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        ack: Ack,
        timestamp_ms: Option<i64>,
    ) {
        let kafka_partition = ack.partition();
        let k = &self.config.kafka;
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
            let decoded = self.decoder.decode(
                bytes,
                &self.bundle.spec.partition_column,
                self.bundle.encoder(),
            );
            let decoded = match decoded {
                Decoded::Done(d) => d,
                Decoded::Awaiting(id) => {
                    let waiting = Waiting {
                        key: key.map(<[u8]>::to_vec),
                        payload: bytes.to_vec(),
                        ack,
                        timestamp_ms,
                    };
                    self.awaiting.push(id, waiting);
                    return;
                }
            };
            decoded.and_then(|event| {
                let max_key = self.config.pipeline.max_key_bytes;
                if event.partition.len() > max_key {
                    return Err(RecordError::new(
                        RecordErrorKind::OversizeKey,
                        format!(
                            "partition id of {} bytes exceeds pipeline.max_key_bytes = {max_key}",
                            event.partition.len()
                        ),
                    ));
                }
                let model = self.bundle.partition_index(&event.partition);
                let unknown = model.is_none();
                if unknown && !self.bundle.has_fallback() {
                    Err(scoring::no_fallback(&event.partition))
                } else if unknown && self.config.model.unknown_partition == UnknownPartition::Dlq {
                    Err(scoring::unknown(&event.partition))
                } else {
                    Ok((event, model))
                }
            })
        };
        let work = match decoded {
            Ok((event, model)) => Work::Score(Job {
                bundle: self.bundle.clone(),
                event,
                model,
                ack,
                timestamp_ms,
                read_at: Instant::now(),
            }),
            Err(error) => {
                tracing::debug!(
                    topic = %k.input_topic,
                    kafka_partition = ack.partition(),
                    offset = ack.offset(),
                    %error,
                    "dead-lettering record"
                );
                let headers = OutputProducer::dead_letter_headers(&k.input_topic, &error, &ack);
                let delivery = Delivery::new(ack, Output::DeadLetter(error.kind), None);
                let topic = k.dlq_topic.clone();
                self.produce(consumer, &topic, key, payload, Some(headers), delivery);
                return;
            }
        };

        let changed = self
            .flow
            .dispatch(kafka_partition, work, &mut self.router, self.producer);
        if changed
            || self.flow.in_flight_crossed(self.tracker)
            || self.flow.holding_unpaused(kafka_partition)
        {
            self.flow.sync(consumer, self.tracker);
        }
    }

    /// Decodes again, in read order, the records that waited for writer schema `id`.
    fn release(&mut self, consumer: &InputConsumer, id: u32) {
        for waiting in self.awaiting.take(id) {
            let Waiting {
                key,
                payload,
                ack,
                timestamp_ms,
            } = waiting;
            if ack.is_revoked() {
                continue; // another instance reads it now
            }
            self.route(consumer, key.as_deref(), Some(&payload), ack, timestamp_ms);
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

/// How long a Kafka partition may show no record after a seek, while its log goes on, before
/// it is sought further back.
const SEEK_PATIENCE: Duration = Duration::from_secs(3);

/// How long exactly-once mode waits for a transaction's events to be acknowledged before it
/// aborts the transaction.
const TRANSACTION_DRAIN: Duration = Duration::from_secs(30);

/// Loads the config and bundle and serves until SIGINT or SIGTERM.
pub async fn serve(config_path: &std::path::Path) -> Result<()> {
    let config = ServeConfig::load(config_path)?;
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
