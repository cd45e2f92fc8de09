//! Partition id → the actor of its shard.
//!
//! Stores are spread over a fixed number of shard actors (one per core by default) by a hash of
//! their id, so every event of one store goes to the same actor and is scored in arrival order,
//! while the number of tasks, queues and buffers does not grow with the number of stores: a
//! store costs nothing here, whether it has a model of its own or is scored by the fallback,
//! and a stream of never-seen ids cannot make the daemon keep anything for them.
//!
//! The router is owned by the consumer loop alone, so it needs no lock. Closing it drops every
//! handle, which lets each actor drain its queue and stop.

use std::hash::BuildHasher;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::partition::{ActorContext, Job, PartitionHandle};

/// Routes jobs to the shard actors.
pub struct Router {
    shards: Vec<PartitionHandle>,
    /// A fixed hasher, so a store maps to the same shard for the life of the pipeline.
    hasher: std::collections::hash_map::RandomState,
    ctx: ActorContext,
    tasks: JoinSet<()>,
}

impl Router {
    /// A router over `shards` actors (at least one) whose queues hold `capacity` jobs each.
    pub fn new(ctx: ActorContext, shards: usize, capacity: usize) -> Self {
        let mut tasks = JoinSet::new();
        let shards = (0..shards.max(1))
            .map(|_| PartitionHandle::spawn(capacity, ctx.clone(), &mut tasks))
            .collect();
        Router {
            shards,
            hasher: std::collections::hash_map::RandomState::new(),
            ctx,
            tasks,
        }
    }

    /// Shards by default: one per core the process may use.
    pub fn default_shards() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    /// Hands a job to its shard's actor, waiting while the queue is full.
    pub async fn route(&mut self, job: Job) {
        if let Err(job) = self.shard(&job.event.partition).send(job).await {
            // The actor stopped (only on cancellation); its offset stays unfinished and is
            // therefore never committed.
            tracing::debug!(partition = %job.event.partition, "actor gone; event left uncommitted");
        }
    }

    /// Hands a job to its shard's actor without waiting: a full queue gives the job back, for
    /// the caller to park.
    // A full queue hands the job back by value to be parked; boxing it would cost an
    // allocation for every event to spare one move on the rare full queue.
    #[allow(clippy::result_large_err)]
    pub fn try_route(&mut self, job: Job) -> Result<(), Job> {
        match self.shard(&job.event.partition).try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => Err(job),
            Err(mpsc::error::TrySendError::Closed(job)) => {
                // The actor stopped (only on cancellation): the offset stays unfinished.
                tracing::debug!(partition = %job.event.partition, "actor gone; event left uncommitted");
                Ok(())
            }
        }
    }

    /// The actor of `partition`'s shard.
    fn shard(&self, partition: &str) -> &PartitionHandle {
        let h = self.hasher.hash_one(partition);
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    /// Live shard actors.
    pub fn actors(&self) -> usize {
        self.shards.len()
    }

    /// Jobs queued over all actors.
    pub fn queued(&self) -> usize {
        self.shards.iter().map(PartitionHandle::depth).sum()
    }

    /// Closes every queue and waits up to `deadline` for the actors to drain. Returns false
    /// if the deadline passed first.
    pub async fn close(mut self, deadline: Duration) -> bool {
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
