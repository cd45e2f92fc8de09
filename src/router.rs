//! Partition id → actor handle.
//!
//! The router is owned by the consumer loop alone, so its map needs no lock. It creates an
//! actor the first time a partition id is seen and keeps it for the life of the pipeline;
//! closing the router drops every handle, which lets each actor drain its queue and stop.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
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
        if let Err(job) = self.handle(&job.event.partition).send(job).await {
            // The actor stopped (only on cancellation); its offset stays unfinished and is
            // therefore never committed.
            tracing::debug!(partition = %job.event.partition, "actor gone; event left uncommitted");
        }
    }

    /// Hands a job to its partition's actor without waiting: a full queue gives the job
    /// back, for the caller to park.
    // A full queue hands the job back by value to be parked; boxing it would cost an
    // allocation for every event to spare one move on the rare full queue.
    #[allow(clippy::result_large_err)]
    pub fn try_route(&mut self, job: Job) -> Result<(), Job> {
        match self.handle(&job.event.partition).try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => Err(job),
            Err(mpsc::error::TrySendError::Closed(job)) => {
                // The actor stopped (only on cancellation): the offset stays unfinished.
                tracing::debug!(partition = %job.event.partition, "actor gone; event left uncommitted");
                Ok(())
            }
        }
    }

    /// The actor of `partition`, started on first use.
    fn handle(&mut self, partition: &str) -> &PartitionHandle {
        if !self.actors.contains_key(partition) {
            let h =
                PartitionHandle::spawn(partition, self.capacity, self.ctx.clone(), &mut self.tasks);
            self.actors.insert(partition.to_owned(), h);
        }
        &self.actors[partition]
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
