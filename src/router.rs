//! Partition id → the actor of its shard.
//!
//! Stores are spread over a fixed number of shard actors (`[pipeline] actors`: by default one
//! per core but one, which the consumer loop keeps busy) by a hash of their id, so every event
//! of one store goes to the same actor and is scored in arrival order, while the number of
//! tasks, queues and buffers does not grow with the number of stores: a store costs nothing
//! here, whether it has a model of its own or is scored by the fallback, and a stream of
//! never-seen ids cannot make the daemon keep anything for them.
//!
//! Events reach an actor in batches: the router collects each shard's events as the consumer
//! loop reads them and hands a batch over when it holds [`BATCH`] events or when the loop has
//! read everything already fetched ([`Router::flush`]), so an actor is woken once per batch,
//! not once per event. A shard's capacity counts its collected events too, so a full mailbox
//! still refuses the next event at once (see [`crate::backpressure`]).
//!
//! The router is owned by the consumer loop alone, so it needs no lock. Closing it drops every
//! handle, which lets each actor drain its queue and stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::model::bundle::Bundle;
use crate::partition::{ActorContext, Batch, Job, PartitionHandle};

/// Events a shard collects before they are handed to its actor as one batch.
pub const BATCH: usize = 64;

/// One shard: its actor's mailbox and the events collected for it.
struct Shard {
    handle: PartitionHandle,
    /// Routed, in order, and not yet handed over.
    collected: Vec<Job>,
    /// The bundle that scores the collected events; `None` while nothing is collected.
    bundle: Option<Arc<Bundle>>,
}

/// Routes jobs to the shard actors.
pub struct Router {
    shards: Vec<Shard>,
    ctx: ActorContext,
    /// Notified whenever an actor takes events from its mailbox.
    room: Arc<Notify>,
    tasks: JoinSet<()>,
}

impl Router {
    /// A router over `shards` actors (at least one) whose queues hold `capacity` jobs each.
    pub fn new(ctx: ActorContext, shards: usize, capacity: usize) -> Self {
        let mut tasks = JoinSet::new();
        let room = Arc::new(Notify::new());
        let shards = (0..shards.max(1))
            .map(|_| Shard {
                handle: PartitionHandle::spawn(capacity, ctx.clone(), room.clone(), &mut tasks),
                collected: Vec::with_capacity(BATCH),
                bundle: None,
            })
            .collect();
        Router {
            shards,
            ctx,
            room,
            tasks,
        }
    }

    /// Hands a job, to be scored by `bundle`, to its shard's actor at once, waiting while the
    /// mailbox is full.
    pub async fn route(&mut self, bundle: Arc<Bundle>, job: Job) {
        let i = self.shard_of(job.id_hash);
        self.hand_over(i);
        if let Err(job) = self.shards[i].handle.send(bundle, job).await {
            // The actor stopped (only on cancellation); its offset stays unfinished and is
            // therefore never committed.
            tracing::debug!(partition = %job.event.partition, "actor gone; event left uncommitted");
        }
    }

    /// Collects a job, to be scored by `bundle`, for its shard's actor without waiting: a full
    /// mailbox gives the job back, for the caller to park. The job reaches the actor with its
    /// batch, at the latest at the next [`Router::flush`]; a job for another bundle than the
    /// collected ones starts a new batch.
    // A full queue hands the job back by value to be parked; boxing it would cost an
    // allocation for every event to spare one move on the rare full queue.
    #[allow(clippy::result_large_err)]
    pub fn try_route(&mut self, bundle: &Arc<Bundle>, job: Job) -> Result<(), Job> {
        let i = self.shard_of(job.id_hash);
        let shard = &self.shards[i];
        if shard.handle.room() <= shard.collected.len() {
            return Err(job);
        }
        if shard
            .bundle
            .as_ref()
            .is_some_and(|b| !Arc::ptr_eq(b, bundle))
        {
            self.hand_over(i);
        }
        let shard = &mut self.shards[i];
        shard.bundle.get_or_insert_with(|| bundle.clone());
        shard.collected.push(job);
        if shard.collected.len() >= BATCH {
            self.hand_over(i);
        }
        Ok(())
    }

    /// Resolves when an actor has taken events from its mailbox since the last call (perhaps
    /// making room for a job [`Router::try_route`] gave back).
    pub async fn room(&self) {
        self.room.notified().await
    }

    /// Hands every shard's collected events to its actor.
    pub fn flush(&mut self) {
        for i in 0..self.shards.len() {
            self.hand_over(i);
        }
    }

    /// Hands shard `i`'s collected events to its actor as one batch.
    fn hand_over(&mut self, i: usize) {
        let shard = &mut self.shards[i];
        let Some(bundle) = shard.bundle.take() else {
            return; // nothing collected
        };
        let jobs = std::mem::replace(&mut shard.collected, Vec::with_capacity(BATCH));
        if let Err(batch) = shard.handle.send_batch(Batch { bundle, jobs }) {
            // The actor stopped (only on cancellation): the offsets stay unfinished.
            tracing::debug!(
                events = batch.jobs.len(),
                "actor gone; events left uncommitted"
            );
        }
    }

    /// The shard of the partition whose id hashes to `id_hash`: the same for the life of the
    /// process, whichever bundle is active.
    fn shard_of(&self, id_hash: u64) -> usize {
        (id_hash % self.shards.len() as u64) as usize
    }

    /// Live shard actors.
    pub fn actors(&self) -> usize {
        self.shards.len()
    }

    /// Jobs queued over all actors, collected ones included.
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.handle.depth() + s.collected.len())
            .sum()
    }

    /// Closes every queue and waits up to `deadline` for the actors to drain. Returns false
    /// if the deadline passed first.
    pub async fn close(mut self, deadline: Duration) -> bool {
        self.flush();
        self.shards.clear();
        let drained = tokio::time::timeout(deadline, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            self.ctx.cancel.cancel();
            self.tasks.shutdown().await;
        }
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::kafka::offsets::OffsetTracker;
    use crate::kafka::producer::{producer_config, OutputProducer};
    use crate::metrics::PipelineStats;
    use crate::model::bundle::tests::sample;
    use tokio_util::sync::CancellationToken;

    fn job(tracker: &OffsetTracker, i: i64) -> Job {
        Job {
            event: Event {
                partition: "A".into(),
                partition_was_number: false,
                event_id: Some(format!("ev-{i}").into()),
                inputs: vec![1.0, 0.0, 1.0],
            },
            id_hash: crate::model::index::id_hash("A"),
            model: crate::partition::ModelRef::Own(1),
            ack: tracker.begin(0, i),
            timestamp_ms: None,
            read_at: std::time::Instant::now(),
        }
    }

    /// A shard's capacity counts the events collected for it as well as its mailbox, so a
    /// full shard refuses the next event at once; collected events reach the actor at the
    /// flush, and one store's predictions leave in the order its events were routed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_shard_refuses_at_once_and_a_store_keeps_its_order() {
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("out", 1, 1).expect("topic");
        let stats = Arc::new(PipelineStats::default());
        let config = producer_config(&mock.bootstrap_servers(), &Default::default());
        let (producer, _retries) = OutputProducer::new(&config, stats.clone()).expect("producer");
        let ctx = ActorContext {
            producer,
            output_topic: "out".into(),
            encoder: crate::codec::PredictionEncoder::json(),
            stats: stats.clone(),
            cancel: CancellationToken::new(),
            labelled: Default::default(),
            spares: Default::default(),
        };
        let tracker = OffsetTracker::default();
        tracker.assign(0, None);
        let bundle = Arc::new(sample("v1"));
        let mut router = Router::new(ctx, 1, 3);
        for i in 0..3 {
            assert!(router.try_route(&bundle, job(&tracker, i)).is_ok());
        }
        assert_eq!(
            router.queued(),
            3,
            "collected events count against the capacity"
        );
        let refused = router.try_route(&bundle, job(&tracker, 3));
        assert!(
            refused.is_err(),
            "a full shard refuses the next event at once"
        );
        router.flush();
        tokio::time::timeout(Duration::from_secs(10), router.room())
            .await
            .expect("the actor takes the batch and says so");
        assert_eq!(router.queued(), 0);
        tokio::time::timeout(Duration::from_secs(10), async {
            while stats.produced.load(std::sync::atomic::Ordering::Relaxed) < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the three collected events are scored and acknowledged");
        assert!(
            router.try_route(&bundle, job(&tracker, 4)).is_ok(),
            "room again"
        );
        assert!(
            router.close(Duration::from_secs(10)).await,
            "the actor drains and stops"
        );
        let records =
            crate::local::read(&mock.bootstrap_servers(), "out", 4, Duration::from_secs(10))
                .await
                .expect("predictions readable");
        let ids: Vec<String> = records
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.value).expect("JSON")["event_id"]
                    .to_string()
            })
            .collect();
        assert_eq!(ids, ["\"ev-0\"", "\"ev-1\"", "\"ev-2\"", "\"ev-4\""]);
    }
}
