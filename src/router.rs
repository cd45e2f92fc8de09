//! Partition id → actor handle.
//!
//! The router is owned by the consumer loop alone, so its map needs no lock. It creates an
//! actor the first time a partition id is seen and keeps it for the life of the pipeline;
//! closing the router drops every handle, which lets each actor drain its queue and stop.

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::partition::{ActorContext, Job, PartitionHandle};

/// Routes jobs to per-partition actors.
pub struct Router {
    actors: HashMap<String, PartitionHandle>,
    ctx: ActorContext,
    capacity: usize,
    tasks: JoinSet<()>,
}

impl Router {
    /// A router whose actors have queues of `capacity` jobs.
    pub fn new(ctx: ActorContext, capacity: usize) -> Self {
        Router {
            actors: HashMap::new(),
            ctx,
            capacity,
            tasks: JoinSet::new(),
        }
    }

    /// Hands a job to its partition's actor, creating the actor on first use and waiting
    /// while its queue is full.
    pub async fn route(&mut self, job: Job) {
        let handle = match self.actors.get(&job.event.partition) {
            Some(h) => h,
            None => {
                let id = job.event.partition.clone();
                let h =
                    PartitionHandle::spawn(&id, self.capacity, self.ctx.clone(), &mut self.tasks);
                self.actors.entry(id).or_insert(h)
            }
        };
        if let Err(job) = handle.send(job).await {
            // The actor stopped (only on cancellation); its offset stays unfinished and is
            // therefore never committed.
            tracing::debug!(partition = %job.event.partition, "actor gone; event left uncommitted");
        }
    }

    /// Live actors.
    pub fn actors(&self) -> usize {
        self.actors.len()
    }

    /// Jobs queued over all actors.
    pub fn queued(&self) -> usize {
        self.actors.values().map(PartitionHandle::depth).sum()
    }

    /// Closes every queue and waits up to `deadline` for the actors to drain. Returns false
    /// if the deadline passed first.
    pub async fn close(mut self, deadline: Duration) -> bool {
        self.actors.clear();
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
