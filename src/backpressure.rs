//! Backpressure: work that cannot be handed on yet, and which Kafka partitions are paused.
//!
//! The consumer loop never blocks on a full queue. When a partition actor's mailbox or the
//! producer's queue has no room, the record is parked here, in read order per Kafka
//! partition, and the loop stops taking records for a moment ([`Backpressure::waiting_for_room`]):
//! an actor empties a full mailbox in about a millisecond, and waiting for it costs nothing,
//! while pausing a Kafka partition throws away what librdkafka had fetched for it and reads it
//! again. Only when the parked work is still there after [`PATIENCE`] is the Kafka partition
//! paused at the consumer and reading goes on with the others; later records of it are parked
//! behind it, so order holds. Parked work is offered again whenever an actor takes events
//! from its mailbox, and every few milliseconds; a Kafka partition resumes once its parked
//! queue is empty. Because the loop keeps polling the consumer, `max.poll.interval.ms` is
//! never exceeded however slow scoring is.
//!
//! Two more reasons pause a Kafka partition: every partition pauses while more than
//! `[pipeline] max_in_flight` events are read and not yet acknowledged (the memory bound when
//! the output is slow), and a Kafka partition with an output the broker refused stays paused
//! until that output is delivered (see [`crate::kafka::producer`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

use crate::kafka::consumer::InputConsumer;
use crate::kafka::offsets::{Ack, OffsetTracker};
use crate::kafka::producer::{OutputProducer, OwnedRecord};
use crate::model::bundle::Bundle;
use crate::partition::Job;
use crate::router::Router;

/// How long the loop waits for room for parked work before it pauses the parked work's Kafka
/// partitions and reads the others.
pub const PATIENCE: Duration = Duration::from_millis(100);

/// Work read from Kafka and not yet handed on.
pub enum Work {
    /// An event for its partition actor, with the bundle that scores it.
    Score(Arc<Bundle>, Job),
    /// A record for the producer: a dead letter, or a passthrough copy.
    Produce(OwnedRecord),
}

impl Work {
    fn ack(&self) -> &Ack {
        match self {
            Work::Score(_, job) => &job.ack,
            Work::Produce(record) => &record.delivery.ack,
        }
    }

    /// Hands the work on without waiting, or gives it back.
    // A full queue hands the job back by value to be parked; boxing it would cost an
    // allocation for every event to spare one move on the rare full queue.
    #[allow(clippy::result_large_err)]
    fn offer(self, router: &mut Router, producer: &OutputProducer) -> Result<(), Work> {
        match self {
            Work::Score(bundle, job) => router
                .try_route(&bundle, job)
                .map_err(|job| Work::Score(bundle, job)),
            Work::Produce(record) => producer.try_resend(record).map_err(Work::Produce),
        }
    }
}

/// Parked work and the pause state of the consumer.
pub struct Backpressure {
    topic: String,
    max_in_flight: usize,
    /// Parked work per Kafka partition, in read order.
    parked: HashMap<i32, VecDeque<Work>>,
    /// When the parked work began: nothing was parked before.
    parked_since: Option<Instant>,
    /// Paused Kafka partitions, with the assignment (its generation) they were paused
    /// in: a revoke and a new assignment unpause a Kafka partition at the consumer.
    paused: HashMap<i32, u64>,
    /// Every Kafka partition is held because too much is in flight.
    holding_all: bool,
}

impl Backpressure {
    /// Backpressure for the input `topic`.
    pub fn new(topic: &str, max_in_flight: usize) -> Self {
        Backpressure {
            topic: topic.to_owned(),
            max_in_flight: max_in_flight.max(1),
            parked: HashMap::new(),
            parked_since: None,
            paused: HashMap::new(),
            holding_all: false,
        }
    }

    /// Hands `job` of Kafka partition `kafka_partition`, to be scored by `bundle`, to its
    /// actor, or parks it (behind anything already parked for that Kafka partition). Returns
    /// true if the pause state may need to change.
    pub fn dispatch(
        &mut self,
        kafka_partition: i32,
        bundle: &Arc<Bundle>,
        job: Job,
        router: &mut Router,
    ) -> bool {
        if let Some(queue) = self.parked.get_mut(&kafka_partition) {
            queue.push_back(Work::Score(bundle.clone(), job));
            return false;
        }
        match router.try_route(bundle, job) {
            Ok(()) => false,
            Err(job) => {
                self.park(kafka_partition, Work::Score(bundle.clone(), job));
                true
            }
        }
    }

    /// Parks `work` behind anything parked for `kafka_partition`; the caller then syncs the
    /// pause state.
    pub fn park(&mut self, kafka_partition: i32, work: Work) {
        self.parked_since.get_or_insert_with(Instant::now);
        self.parked
            .entry(kafka_partition)
            .or_default()
            .push_back(work);
    }

    /// True while work is parked and has waited less than [`PATIENCE`]: the loop takes no
    /// record meanwhile, and waits for an actor to make room.
    pub fn waiting_for_room(&self) -> bool {
        self.parked_since.is_some_and(|t| t.elapsed() < PATIENCE)
    }

    /// True when nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// True when the in-flight bound calls for a change of pause state.
    pub fn in_flight_crossed(&self, tracker: &OffsetTracker) -> bool {
        let n = tracker.in_flight();
        if self.holding_all {
            n <= self.resume_below()
        } else {
            n >= self.max_in_flight
        }
    }

    /// True when every Kafka partition should be held but `kafka_partition`, read from just
    /// now, is not paused yet (it had nothing read when the hold began).
    pub fn holding_unpaused(&self, kafka_partition: i32) -> bool {
        self.holding_all && !self.paused.contains_key(&kafka_partition)
    }

    fn resume_below(&self) -> usize {
        self.max_in_flight / 10 * 9
    }

    /// Offers parked work again, drops work of revoked Kafka partitions, and pauses or
    /// resumes Kafka partitions to match.
    pub fn relieve(
        &mut self,
        consumer: &InputConsumer,
        tracker: &OffsetTracker,
        router: &mut Router,
        producer: &OutputProducer,
    ) {
        self.parked.retain(|_, queue| {
            // Work of a revoked Kafka partition is the next owner's: dropping it gives the
            // offsets up, and they were never committed.
            queue.retain(|w| !w.ack().is_revoked());
            while let Some(work) = queue.pop_front() {
                if let Err(work) = work.offer(router, producer) {
                    queue.push_front(work);
                    break;
                }
            }
            !queue.is_empty()
        });
        if self.parked.is_empty() {
            self.parked_since = None;
        }
        self.sync(consumer, tracker);
    }

    /// Pauses and resumes Kafka partitions so that exactly those with a reason are paused.
    pub fn sync(&mut self, consumer: &InputConsumer, tracker: &OffsetTracker) {
        let in_flight = tracker.in_flight();
        if self.holding_all && in_flight <= self.resume_below() {
            self.holding_all = false;
            tracing::info!(in_flight, "in-flight events back under the bound; resuming");
        } else if !self.holding_all && in_flight >= self.max_in_flight {
            self.holding_all = true;
            tracing::info!(
                in_flight,
                max_in_flight = self.max_in_flight,
                "too many events in flight (the output is slower than the input); pausing every Kafka partition"
            );
        }
        let waiting = self.waiting_for_room();
        let owned = tracker.owned();
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        // Where each resumed Kafka partition goes on reading: one past its last record read.
        let mut resume_at = Vec::new();
        let mut now_paused = HashMap::with_capacity(owned.len());
        for offsets in &owned {
            let p = offsets.partition();
            let id = offsets.generation();
            // A Kafka partition with nothing read yet in this assignment is never paused:
            // librdkafka resumes such a partition from where it had fetched to, not from
            // where the application read to, which would skip records.
            let Some(next) = offsets.next_read() else {
                continue;
            };
            let wanted = self.holding_all
                || (self.parked.contains_key(&p) && !waiting)
                || offsets.failing() > 0;
            // Paused in an earlier assignment of the same Kafka partition: whether the pause
            // survived the rebalance is librdkafka's business, so resume it to be sure.
            let earlier = self.paused.get(&p).is_some_and(|&was| was != id);
            let was = self.paused.get(&p) == Some(&id);
            if wanted {
                if !was {
                    let _ = pause.add_partition(&self.topic, p);
                }
                now_paused.insert(p, id);
            } else if was || earlier {
                let _ = resume.add_partition(&self.topic, p);
                resume_at.push((offsets.clone(), next));
            }
        }
        if pause.count() > 0 {
            if let Err(e) = consumer.pause(&pause) {
                tracing::warn!(error = %e, "cannot pause Kafka partitions");
            }
        }
        if resume.count() > 0 {
            if let Err(e) = consumer.resume(&resume) {
                tracing::warn!(error = %e, "cannot resume Kafka partitions");
            }
            // Reading goes on exactly after the last record read, whatever librdkafka had
            // fetched and dropped meanwhile (an asynchronous seek: it never blocks the loop).
            for (offsets, next) in resume_at {
                crate::kafka::consumer::seek(consumer, &self.topic, offsets.partition(), next);
                offsets.sought(next);
            }
        }
        self.paused = now_paused;
        crate::metrics::paused_partitions(self.paused.len());
    }

    /// Events parked, over all Kafka partitions.
    pub fn parked(&self) -> usize {
        self.parked.values().map(VecDeque::len).sum()
    }

    /// Parked events of one Kafka partition.
    pub fn parked_in(&self, kafka_partition: i32) -> usize {
        self.parked.get(&kafka_partition).map_or(0, VecDeque::len)
    }

    /// Whether `kafka_partition` is paused now.
    pub fn is_paused(&self, kafka_partition: i32) -> bool {
        self.paused.contains_key(&kafka_partition)
    }

    /// Hands every parked job to its actor, waiting for room: the loop stops reading during
    /// a drain, so waiting is what it should do.
    pub async fn drain(&mut self, router: &mut Router, producer: &OutputProducer) {
        router.flush();
        self.parked_since = None;
        for (_, queue) in self.parked.drain() {
            for work in queue {
                if work.ack().is_revoked() {
                    continue;
                }
                match work {
                    Work::Score(bundle, job) => router.route(bundle, job).await,
                    Work::Produce(r) => producer.send_owned(r).await,
                }
            }
        }
    }

    /// Forgets every parked record (after an aborted transaction: they are read again).
    pub fn clear(&mut self) {
        self.parked.clear();
        self.parked_since = None;
    }
}
