//! The partition actor: it scores the events of one shard of the stores ([`crate::router`]
//! picks the shard by the store id), each store's events in arrival order.
//!
//! The rest of the program talks to it through a cheap, cloneable [`PartitionHandle`] over a
//! bounded queue: a full queue makes the router wait, which is the backpressure that keeps
//! memory bounded. The actor scores its events in arrival order and enqueues their
//! predictions in that order, and the producer keeps per-key order, so one store's
//! predictions leave in the order its events arrived. It keeps no state per store: which
//! model scores an event travels in its [`Job`]; a store therefore costs the actor nothing
//! between its events.
//!
//! An event's model is usually looked up here, not on the consumer loop: a batch's lookups
//! run one after another with nothing between them, so the processor overlaps their cache
//! misses (with a million stores each lookup misses the cache up to four times), and then
//! each event is scored while the weights of one a few places further on are fetched
//! ([`warm`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::kafka::offsets::Ack;
use crate::kafka::producer::{Delivery, Output, OutputProducer, OwnedRecord};
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::prediction::VERSION_HEADER;
use crate::scoring::ModelSource;
use crate::spares::InputSpares;

/// Batches the actor takes from its mailbox per wake-up.
const BATCHES: usize = 16;

/// One event to score, with the offset it finishes. The bundle that scores it travels with
/// its [`Batch`].
#[derive(Debug)]
pub struct Job {
    /// The decoded event.
    pub event: Event,
    /// The [`crate::model::index::id_hash`] of its partition id, computed once when it was
    /// read: it found the model and picks the shard.
    pub id_hash: u64,
    /// Which model scores it.
    pub model: ModelRef,
    /// The input offset, finished when the prediction is acknowledged.
    pub ack: Ack,
    /// The input record's Kafka timestamp, for end-to-end latency.
    pub timestamp_ms: Option<i64>,
    /// When the record was read, for scoring latency.
    pub read_at: std::time::Instant,
}

/// Which of its bundle's models scores a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelRef {
    /// The store's own model, at this position in the bundle's `partitions`.
    Own(usize),
    /// The bundle's fallback: the store has no model of its own.
    Fallback,
    /// Not looked up yet: the actor looks the store up in the batch's bundle. The consumer
    /// loop leaves it so when an unknown store is scored by the fallback anyway, and looks it
    /// up itself when an unknown store must be dead-lettered instead.
    Lookup,
}

/// Events handed to an actor together, all read while `bundle` was active: one reference to
/// the bundle per batch, not one per event.
#[derive(Debug)]
pub struct Batch {
    /// The bundle that was active when the events were read: it scores them.
    pub bundle: Arc<Bundle>,
    /// The events, in the order they were read.
    pub jobs: Vec<Job>,
}

/// What an actor needs besides its queue.
#[derive(Clone)]
pub struct ActorContext {
    /// Where predictions go.
    pub producer: OutputProducer,
    /// The output topic.
    pub output_topic: Arc<str>,
    /// Writes prediction records (`[output]`).
    pub encoder: crate::codec::PredictionEncoder,
    /// The pipeline's tally.
    pub stats: Arc<PipelineStats>,
    /// Cancelled when the drain deadline passed: stop at once.
    pub cancel: CancellationToken,
    /// Stores that get their own `partition` label on a counter (`per_partition_metrics`).
    pub labelled: Arc<std::collections::HashSet<String>>,
    /// Where scored events' input buffers go back to, for the consumer loop to decode into.
    pub spares: Arc<InputSpares>,
}

/// The handle the router holds: the actor's mailbox, which takes events in batches (one
/// wake-up of the actor per batch, not per event) and counts them one by one against its
/// capacity.
#[derive(Clone)]
pub struct PartitionHandle {
    tx: mpsc::Sender<Batch>,
    /// Events sent and not yet taken by the actor.
    queued: Arc<AtomicUsize>,
    /// The most events the mailbox holds.
    capacity: usize,
}

impl PartitionHandle {
    /// Starts an actor on `tasks` with a mailbox of `capacity` events; it notifies `room`
    /// whenever it takes events from the mailbox.
    pub fn spawn(
        capacity: usize,
        ctx: ActorContext,
        room: Arc<Notify>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Self {
        let capacity = capacity.max(1);
        // Every batch holds at least one event, so a mailbox of `capacity` events never
        // holds more than `capacity` batches: `send_batch` never finds it full.
        let (tx, rx) = mpsc::channel(capacity);
        let queued = Arc::new(AtomicUsize::new(0));
        let labelled = ctx
            .labelled
            .iter()
            .map(|store| (store.clone(), crate::metrics::partition_counter(store)))
            .collect();
        let actor = PartitionActor {
            rx,
            queued: queued.clone(),
            room,
            labelled,
            ctx,
            buf: Vec::with_capacity(256),
            scored: Vec::with_capacity(crate::router::BATCH),
            returned: Vec::with_capacity(crate::router::BATCH),
        };
        tasks.spawn(actor.run());
        PartitionHandle {
            tx,
            queued,
            capacity,
        }
    }

    /// Room for this many more events now.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.depth())
    }

    /// Queues a batch the caller made room for (see [`PartitionHandle::room`]). Gives it
    /// back if the actor is gone.
    pub fn send_batch(&self, batch: Batch) -> Result<(), Batch> {
        let n = batch.jobs.len();
        self.queued.fetch_add(n, Ordering::AcqRel);
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(
                mpsc::error::TrySendError::Full(batch) | mpsc::error::TrySendError::Closed(batch),
            ) => {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                Err(batch)
            }
        }
    }

    /// Queues one job, waiting while the mailbox is full. Gives the job back if the actor is
    /// gone.
    pub async fn send(&self, bundle: Arc<Bundle>, job: Job) -> Result<(), Job> {
        while self.room() == 0 && !self.tx.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        let batch = Batch {
            bundle,
            jobs: vec![job],
        };
        match self.tx.send(batch).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(mut batch)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                batch.jobs.pop().map_or(Ok(()), Err)
            }
        }
    }

    /// Events waiting in the mailbox.
    pub fn depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

struct PartitionActor {
    rx: mpsc::Receiver<Batch>,
    /// Shared with the handle: events sent and not yet taken.
    queued: Arc<AtomicUsize>,
    /// Notified when events are taken, for a router waiting for room.
    room: Arc<Notify>,
    /// The counters of the stores listed in `per_partition_metrics` (a short list).
    labelled: HashMap<String, metrics::Counter>,
    ctx: ActorContext,
    /// The prediction being encoded, reused.
    buf: Vec<u8>,
    /// When each job of the current batch was read and which model scored it, for the
    /// scoring-latency histogram once the batch is done; reused.
    scored: Vec<(std::time::Instant, ModelSource)>,
    /// The input buffers of the current batch's scored events, handed back together once the
    /// batch is done; reused.
    returned: Vec<Vec<f64>>,
}

/// How many events ahead of the one it scores the actor starts loading an event's model
/// weights and inputs: far enough that a load from memory (about 100 ns) is done when the
/// event's turn comes. With a million stores each is otherwise a cache miss the actor waits
/// for.
const AHEAD: usize = 3;

/// Starts loading what scoring `job` will read: its inputs and its model's weights. The
/// model's entry is already in cache: [`look_up`] has just read it (or, for a job the
/// consumer loop looked up, reading it here is the one miss left).
fn warm(bundle: &Bundle, job: &Job) {
    crate::cache::prefetch(&job.event.inputs[..]);
    if let Some(m) = own_model(bundle, job.model) {
        m.model.prefetch();
    }
}

/// The store's own model, if `model` is one.
fn own_model(bundle: &Bundle, model: ModelRef) -> Option<&crate::model::bundle::PartitionModel> {
    match model {
        ModelRef::Own(i) => bundle.partitions.get(i),
        ModelRef::Fallback | ModelRef::Lookup => None,
    }
}

/// Looks up the model of every job of a batch that still needs one: first asks for every
/// job's index slot, then finds them all, so their cache misses overlap instead of following
/// one another.
fn look_up(bundle: &Bundle, jobs: &mut [Job]) {
    for job in jobs.iter().filter(|j| j.model == ModelRef::Lookup) {
        bundle.prefetch_partition(job.id_hash);
    }
    for job in jobs.iter_mut().filter(|j| j.model == ModelRef::Lookup) {
        job.model = bundle
            .partition_index_hashed(job.id_hash, &job.event.partition)
            .map_or(ModelRef::Fallback, ModelRef::Own);
    }
}

impl PartitionActor {
    async fn run(mut self) {
        let mut batches = Vec::with_capacity(BATCHES);
        // Made once: a new one per wake-up would register with the token again each time.
        let cancel = self.ctx.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                n = self.rx.recv_many(&mut batches, BATCHES) => {
                    if n == 0 {
                        // Every handle is gone and the queue is drained: a clean stop.
                        break;
                    }
                    let taken: usize = batches.iter().map(|b| b.jobs.len()).sum();
                    self.queued.fetch_sub(taken, Ordering::AcqRel);
                    self.room.notify_one();
                    for mut batch in batches.drain(..) {
                        let bundle = &batch.bundle;
                        look_up(bundle, &mut batch.jobs);
                        for job in batch.jobs.iter().take(AHEAD) {
                            warm(bundle, job);
                        }
                        let mut jobs = batch.jobs.into_iter();
                        while let Some(job) = jobs.next() {
                            if let Some(later) = jobs.as_slice().get(AHEAD - 1) {
                                warm(bundle, later);
                            }
                            let read_at = job.read_at;
                            let (source, refused) = self.score(bundle, job);
                            if let Some(source) = source {
                                self.scored.push((read_at, source));
                            }
                            if let Some(record) = refused {
                                // librdkafka's queue is full: wait for room, keeping order.
                                self.ctx.producer.send_owned(record).await;
                            }
                        }
                        // One clock read per batch: a batch is scored within microseconds,
                        // and the histogram's finest bucket is 0.1 ms.
                        self.ctx.stats.scored(std::time::Instant::now(), &self.scored);
                        self.scored.clear();
                        self.ctx.spares.give_back(&mut self.returned);
                    }
                }
            }
        }
    }

    /// Scores one job and offers its prediction to the producer, without waiting. Answers
    /// which model scored it, or `None` if it was dropped (its Kafka partition was revoked);
    /// and the prediction, as a record of its own, if the producer could not take it now, for
    /// the caller to send once there is room.
    fn score(
        &mut self,
        bundle: &Bundle,
        mut job: Job,
    ) -> (Option<ModelSource>, Option<OwnedRecord>) {
        if job.ack.is_revoked() {
            // Its Kafka partition moved to another instance, which scores it again.
            return (None, None);
        }
        let (model, source) = match own_model(bundle, job.model) {
            Some(m) => (m, ModelSource::Partition),
            None => (&bundle.fallback, ModelSource::Fallback),
        };
        let value = model.model.predict(&job.event.inputs);
        if !self.labelled.is_empty() {
            if let Some(c) = self.labelled.get(job.event.partition.as_str()) {
                c.increment(1);
            }
        }
        self.buf.clear();
        self.ctx.encoder.write(
            &mut self.buf,
            &bundle.spec.partition_column,
            &job.event,
            value,
            &bundle.version,
            source,
        );
        let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
            key: VERSION_HEADER,
            value: Some(bundle.version.as_str()),
        });
        let delivery = Delivery::new(
            job.ack,
            Output::Prediction(source),
            job.timestamp_ms,
            Some(job.read_at),
        );
        let refused = self
            .ctx
            .producer
            .try_send(
                &self.ctx.output_topic,
                Some(job.event.partition.as_bytes()),
                Some(&self.buf),
                Some(headers),
                delivery,
            )
            .err();
        self.returned.push(std::mem::take(&mut job.event.inputs));
        (Some(source), refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::offsets::OffsetTracker;
    use crate::model::bundle::tests::sample;

    fn job(tracker: &OffsetTracker, offset: i64, store: &str, model: ModelRef) -> Job {
        Job {
            event: Event {
                partition: store.into(),
                partition_was_number: false,
                event_id: None,
                inputs: vec![1.0, 0.0, 1.0],
            },
            id_hash: crate::model::index::id_hash(store),
            model,
            ack: tracker.begin(0, offset),
            timestamp_ms: None,
            read_at: std::time::Instant::now(),
        }
    }

    /// The actor looks up, in the batch's own bundle, every job the consumer loop left to
    /// it: a store with a model gets its position, a stranger the fallback; jobs already
    /// decided keep what they carry.
    #[test]
    fn a_batch_is_looked_up_in_its_own_bundle() {
        let tracker = OffsetTracker::default();
        tracker.assign(0, None);
        let bundle = sample("v1");
        let mut jobs = vec![
            job(&tracker, 0, "A", ModelRef::Lookup),
            job(&tracker, 1, "Z", ModelRef::Lookup),
            job(&tracker, 2, "B", ModelRef::Lookup),
            job(&tracker, 3, "A", ModelRef::Fallback),
        ];
        look_up(&bundle, &mut jobs);
        let a = bundle.partition_index("A").expect("A has a model");
        let b = bundle.partition_index("B").expect("B has a model");
        let got: Vec<ModelRef> = jobs.iter().map(|j| j.model).collect();
        assert_eq!(
            got,
            [
                ModelRef::Own(a),
                ModelRef::Fallback,
                ModelRef::Own(b),
                ModelRef::Fallback
            ]
        );
        let own = |r| own_model(&bundle, r).map(|m| m.partition.as_str());
        assert_eq!(own(got[0]), Some("A"));
        assert_eq!(own(got[2]), Some("B"));
    }
}
