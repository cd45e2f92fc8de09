//! The per-partition actor: one per store, created on first use, holding that store's model.
//!
//! The rest of the program talks to it through a cheap, cloneable [`PartitionHandle`] over a
//! bounded queue: a full queue makes the router wait, which is the backpressure that keeps
//! memory bounded. The actor scores its events in arrival order and enqueues their
//! predictions in that order, and the producer keeps per-key order, so one store's
//! predictions leave in the order its events arrived.

use std::sync::{Arc, Weak};

use rdkafka::message::{Header, OwnedHeaders};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::kafka::offsets::Ack;
use crate::kafka::producer::{Delivery, Output, OutputProducer};
use crate::metrics::PipelineStats;
use crate::model::bundle::{Bundle, ModelSource};
use crate::prediction::VERSION_HEADER;

/// Events the actor takes from its queue per wake-up.
const BATCH: usize = 64;

/// One event to score, with the offset it finishes.
#[derive(Debug)]
pub struct Job {
    /// The bundle that was active when the record was read: it scores the event.
    pub bundle: Arc<Bundle>,
    /// The decoded event.
    pub event: Event,
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
    /// Starts the actor for `partition` on `tasks`.
    pub fn spawn(
        partition: &str,
        capacity: usize,
        ctx: ActorContext,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let labelled = ctx
            .labelled
            .contains(partition)
            .then(|| crate::metrics::partition_counter(partition));
        let actor = PartitionActor {
            rx,
            labelled,
            lookup: None,
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
    /// This store's own counter, when it is listed in `per_partition_metrics`.
    labelled: Option<metrics::Counter>,
    /// Where this partition's model sits in the bundle its last job came with: the
    /// partition's own (`Some(i)`) or the fallback. A `Weak` so an idle actor never keeps a
    /// retired bundle alive, and so a new bundle can never be mistaken for the old one.
    lookup: Option<(Weak<Bundle>, Option<usize>)>,
    ctx: ActorContext,
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

    /// This partition's model index in `bundle`, looked up once per bundle.
    fn index_in(&mut self, bundle: &Arc<Bundle>, partition: &str) -> Option<usize> {
        match &self.lookup {
            Some((seen, index)) if std::ptr::eq(seen.as_ptr(), Arc::as_ptr(bundle)) => *index,
            _ => {
                let index = bundle.partition_index(partition);
                self.lookup = Some((Arc::downgrade(bundle), index));
                index
            }
        }
    }

    async fn score(&mut self, job: Job) {
        if job.ack.is_revoked() {
            // Its Kafka partition moved to another instance, which scores it again.
            return;
        }
        let bundle = &job.bundle;
        let index = self.index_in(bundle, &job.event.partition);
        let (model, source) = match index.and_then(|i| bundle.partitions.get(i)) {
            Some(m) => (m, ModelSource::Partition),
            None => (&bundle.fallback, ModelSource::Fallback),
        };
        let value = model.model.predict(&job.event.inputs);
        self.ctx
            .stats
            .scored(source, job.read_at.elapsed().as_secs_f64());
        if let Some(c) = &self.labelled {
            c.increment(1);
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
