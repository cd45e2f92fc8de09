//! The partition actor: it scores the events of one shard of the stores ([`crate::router`]
//! picks the shard by the store id), each store's events in arrival order.
//!
//! The rest of the program talks to it through a cheap, cloneable [`PartitionHandle`] over a
//! bounded queue: a full queue makes the router wait, which is the backpressure that keeps
//! memory bounded. The actor scores its events in arrival order and enqueues their
//! predictions in that order, and the producer keeps per-key order, so one store's
//! predictions leave in the order its events arrived. It keeps no state per store: which
//! model scores an event was decided once, when the event was read, and travels in its
//! [`Job`]; a store therefore costs the actor nothing between its events.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::kafka::offsets::Ack;
use crate::kafka::producer::{Delivery, Output, OutputProducer};
use crate::metrics::PipelineStats;
use crate::model::bundle::Bundle;
use crate::prediction::VERSION_HEADER;
use crate::scoring::ModelSource;

/// Events the actor takes from its queue per wake-up.
const BATCH: usize = 64;

/// One event to score, with the offset it finishes.
#[derive(Debug)]
pub struct Job {
    /// The bundle that was active when the record was read: it scores the event.
    pub bundle: Arc<Bundle>,
    /// The decoded event.
    pub event: Event,
    /// Where the store's own model sits in `bundle.partitions`; `None`: the fallback scores it.
    pub model: Option<usize>,
    /// The input offset, finished when the prediction is acknowledged.
    pub ack: Ack,
    /// The input record's Kafka timestamp, for end-to-end latency.
    pub timestamp_ms: Option<i64>,
    /// When the record was read, for scoring latency.
    pub read_at: std::time::Instant,
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
}

/// The handle the router holds.
#[derive(Clone)]
pub struct PartitionHandle {
    tx: mpsc::Sender<Job>,
}

impl PartitionHandle {
    /// Starts an actor on `tasks`.
    pub fn spawn(capacity: usize, ctx: ActorContext, tasks: &mut tokio::task::JoinSet<()>) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let labelled = ctx
            .labelled
            .iter()
            .map(|store| (store.clone(), crate::metrics::partition_counter(store)))
            .collect();
        let actor = PartitionActor {
            rx,
            labelled,
            ctx,
            buf: Vec::with_capacity(256),
        };
        tasks.spawn(actor.run());
        PartitionHandle { tx }
    }

    /// Queues a job, waiting while the queue is full. Gives the job back if the actor is gone.
    pub async fn send(&self, job: Job) -> Result<(), Job> {
        self.tx.send(job).await.map_err(|e| e.0)
    }

    /// Queues a job if there is room now.
    // A full queue hands the job back by value to be parked; boxing it would cost an
    // allocation for every event to spare one move on the rare full queue.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, job: Job) -> Result<(), mpsc::error::TrySendError<Job>> {
        self.tx.try_send(job)
    }

    /// Jobs waiting in the queue.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

struct PartitionActor {
    rx: mpsc::Receiver<Job>,
    /// The counters of the stores listed in `per_partition_metrics` (a short list).
    labelled: HashMap<String, metrics::Counter>,
    ctx: ActorContext,
    /// The prediction being encoded, reused.
    buf: Vec<u8>,
}

impl PartitionActor {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        // Made once: a new one per wake-up would register with the token again each time.
        let cancel = self.ctx.cancel.clone();
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                n = self.rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        // Every handle is gone and the queue is drained: a clean stop.
                        break;
                    }
                    for job in batch.drain(..) {
                        self.score(job).await;
                    }
                }
            }
        }
    }

    async fn score(&mut self, job: Job) {
        if job.ack.is_revoked() {
            // Its Kafka partition moved to another instance, which scores it again.
            return;
        }
        let bundle = &job.bundle;
        let (model, source) = match job.model.and_then(|i| bundle.partitions.get(i)) {
            Some(m) => (m, ModelSource::Partition),
            None => (&bundle.fallback, ModelSource::Fallback),
        };
        let value = model.model.predict(&job.event.inputs);
        self.ctx
            .stats
            .scored(source, job.read_at.elapsed().as_secs_f64());
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
        let delivery = Delivery::new(job.ack, Output::Prediction(source), job.timestamp_ms);
        self.ctx
            .producer
            .send(
                &self.ctx.output_topic,
                Some(job.event.partition.as_bytes()),
                Some(&self.buf),
                Some(headers),
                delivery,
            )
            .await;
    }
}
