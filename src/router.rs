//! Partition id → the actor of its shard.
//!
//! Stores are spread over a fixed number of shard actors (one per core by default) by a hash of
//! their id, so every event of one store goes to the same actor and is scored in arrival order,
//! while the number of tasks, queues and buffers does not grow with the number of stores: a
//! store costs nothing here, whether it has a model of its own or is scored by the fallback,
//! and a stream of never-seen ids cannot make the daemon keep anything for them.
//!
//! Events reach an actor in batches: the router collects each shard's events as the consumer
//! loop reads them and hands a batch over when it holds [`BATCH`] events or when the loop has
//! read everything already fetched ([`Router::flush`]), so an actor is woken once per batch,
//! not once per event. A shard's capacity counts its collected events too, so a full mailbox
//! still refuses the next event at once (see [`crate::backpressure`]).
//!
//! The router is owned by the consumer loop alone, so it needs no lock. Closing it drops every
//! handle, which lets each actor drain its queue and stop.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::partition::{ActorContext, Job, PartitionHandle};

/// Events a shard collects before they are handed to its actor as one batch.
pub const BATCH: usize = 64;

/// One shard: its actor's mailbox and the events collected for it.
struct Shard {
    handle: PartitionHandle,
    /// Routed, in order, and not yet handed over.
    collected: Vec<Job>,
}

/// Routes jobs to the shard actors.
pub struct Router {
    shards: Vec<Shard>,
    /// A fixed hasher, so a store maps to the same shard for the life of the pipeline.
    hasher: std::collections::hash_map::RandomState,
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
            })
            .collect();
        Router {
            shards,
            hasher: std::collections::hash_map::RandomState::new(),
            ctx,
            room,
            tasks,
        }
    }

    /// Shards by default: one per core the process may use.
    pub fn default_shards() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    /// Hands a job to its shard's actor at once, waiting while the mailbox is full.
    pub async fn route(&mut self, job: Job) {
        let i = self.shard_of(&job.event.partition);
        self.hand_over(i);
        if let Err(job) = self.shards[i].handle.send(job).await {
            // The actor stopped (only on cancellation); its offset stays unfinished and is
            // therefore never committed.
            tracing::debug!(partition = %job.event.partition, "actor gone; event left uncommitted");
        }
    }

    /// Collects a job for its shard's actor without waiting: a full mailbox gives the job
    /// back, for the caller to park. The job reaches the actor with its batch, at the latest
    /// at the next [`Router::flush`].
    // A full queue hands the job back by value to be parked; boxing it would cost an
    // allocation for every event to spare one move on the rare full queue.
    #[allow(clippy::result_large_err)]
    pub fn try_route(&mut self, job: Job) -> Result<(), Job> {
        let i = self.shard_of(&job.event.partition);
        let shard = &mut self.shards[i];
        if shard.handle.room() <= shard.collected.len() {
            return Err(job);
        }
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
        if shard.collected.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut shard.collected, Vec::with_capacity(BATCH));
        if let Err(batch) = shard.handle.send_batch(batch) {
            // The actor stopped (only on cancellation): the offsets stay unfinished.
            tracing::debug!(events = batch.len(), "actor gone; events left uncommitted");
        }
    }

    /// The shard of `partition`.
    fn shard_of(&self, partition: &str) -> usize {
        let h = self.hasher.hash_one(partition);
        (h % self.shards.len() as u64) as usize
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
