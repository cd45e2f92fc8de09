//! Exactly-once mode (`[kafka] processing = "exactly_once"`): predictions, dead letters and
//! input offsets are committed together in one Kafka transaction.
//!
//! The shape is rust-rdkafka's `transactions.rs` example: consume, score, produce into the
//! open transaction, send the input offsets to it, commit. The consumer loop cuts a
//! transaction every `commit_interval_ms`: it stops reading, waits until every event read in
//! the transaction is acknowledged, sends the offsets with the consumer group's metadata (so a
//! zombie instance that lost its Kafka partitions is fenced by the group generation) and
//! commits. Anything that goes wrong before the commit aborts the transaction: its outputs are
//! discarded for `read_committed` consumers, the loop rewinds every owned Kafka partition to
//! its committed offset, and the events are scored again in the next transaction. While the
//! broker is away the abort and the read of the committed offsets are tried again ([`Retry`])
//! instead of ending the daemon; only a producer that failed fatally (fenced) does.

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::health::Health;
use crate::kafka::consumer::InputConsumer;
use crate::kafka::producer::OutputProducer;

/// How long initialising transactions may take at start (the broker's transaction coordinator
/// may still be loading).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed with its offsets.
    Committed,
    /// Aborted: its outputs are discarded and its events must be read again.
    Aborted,
}

/// The transactional producer's state machine, driven by the consumer loop.
pub struct Transactions {
    producer: OutputProducer,
    /// The producer's `transactional.id`, for the messages that say who fenced it.
    id: String,
}

impl Transactions {
    /// Initialises transactions (fencing any earlier producer with the same
    /// `transactional.id`, which is `id`) and opens the first one.
    pub async fn start(producer: OutputProducer, id: String) -> Result<Self> {
        let p = producer.clone();
        blocking(move || {
            p.transactional().init_transactions(CALL_TIMEOUT)?;
            p.transactional().begin_transaction()
        })
        .await
        .map_err(|e| {
            Error::Kafka(format!(
                "cannot start transactions with transactional.id {id:?} (is the broker new enough, and the id unique to this instance?): {e}"
            ))
        })?;
        tracing::info!(transactional_id = %id, "exactly-once: transactions started; an instance that starts with the same transactional_id fences this one");
        Ok(Transactions { producer, id })
    }

    /// Who fences this producer, and how to keep two instances from doing it to each other.
    pub fn fenced_by(&self) -> String {
        format!(
            "another instance with transactional.id {:?} took over (each instance needs its \
             own [kafka] transactional_id; the default, GROUP_ID-HOSTNAME, is the same for \
             instances of one group on one host)",
            self.id
        )
    }

    /// Sends `positions` (Kafka partition, next offset) of `topic` to the open transaction,
    /// commits it and opens the next one. Every output of the transaction must be
    /// acknowledged before this is called. An error that only dooms this transaction aborts
    /// it (see [`Transactions::abort`] for `retry`); an error that dooms the producer
    /// (fenced by a newer instance) is returned.
    pub async fn commit(
        &mut self,
        consumer: &InputConsumer,
        topic: &str,
        positions: &[(i32, i64)],
        retry: Retry<'_>,
    ) -> Result<Outcome> {
        if self.producer.take_transaction_failed() {
            tracing::warn!("an output of this transaction was refused by the broker; aborting it, its events are read again");
            return self.abort(retry).await.map(|()| Outcome::Aborted);
        }
        let mut offsets = TopicPartitionList::with_capacity(positions.len());
        for &(p, o) in positions {
            offsets.add_partition_offset(topic, p, Offset::Offset(o))?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            retry.beat();
            let metadata = consumer.group_metadata();
            if offsets.count() > 0 && metadata.is_none() {
                tracing::warn!(
                    "no consumer group metadata to commit offsets with; aborting the transaction"
                );
                return self.abort(retry).await.map(|()| Outcome::Aborted);
            }
            let p = self.producer.clone();
            let offsets = offsets.clone();
            let result = blocking(move || {
                if let (true, Some(m)) = (offsets.count() > 0, &metadata) {
                    p.transactional().send_offsets_to_transaction(
                        &offsets,
                        m,
                        LOOP_CALL_TIMEOUT,
                    )?;
                }
                p.transactional().commit_transaction(LOOP_CALL_TIMEOUT)
            })
            .await;
            match result {
                Ok(()) => break,
                Err(KafkaError::Transaction(e)) if e.is_fatal() => {
                    return Err(Error::Kafka(format!(
                        "the transactional producer was fenced or failed fatally ({e}); {}, or the broker lost the transaction",
                        self.fenced_by()
                    )));
                }
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < 3 => {
                    tracing::warn!(error = %e, attempt, "committing the transaction failed; retrying");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "committing the transaction failed; aborting it, its events are read again");
                    return self.abort(retry).await.map(|()| Outcome::Aborted);
                }
            }
        }
        crate::metrics::transaction(true);
        let p = self.producer.clone();
        blocking(move || p.transactional().begin_transaction())
            .await
            .map_err(|e| Error::Kafka(format!("cannot open the next transaction: {e}")))?;
        Ok(Outcome::Committed)
    }

    /// Aborts the open transaction and opens the next one. While the broker is away the abort
    /// is tried again as `retry` says, until it goes through; it fails only when the producer
    /// was fenced or failed fatally, or when the retries end.
    pub async fn abort(&mut self, retry: Retry<'_>) -> Result<()> {
        let what =
            "aborting the transaction failed; trying again (the input is not read meanwhile)";
        let abort = || {
            let p = self.producer.clone();
            blocking(move || p.transactional().abort_transaction(LOOP_CALL_TIMEOUT))
        };
        retry.until_done(what, abort).await.map_err(|e| match e {
            KafkaError::Transaction(e) if e.is_fatal() => Error::Kafka(format!(
                "aborting a transaction failed fatally ({e}); {}, or the broker aborted the transaction (after transaction.timeout.ms, e.g. a longer outage); restart the instance: it reads again from the committed offsets",
                self.fenced_by()
            )),
            e => Error::Kafka(format!("aborting a transaction failed: {e}")),
        })?;
        self.producer.take_transaction_failed();
        crate::metrics::transaction(false);
        let p = self.producer.clone();
        blocking(move || p.transactional().begin_transaction())
            .await
            .map_err(|e| Error::Kafka(format!("cannot open the next transaction: {e}")))
    }
}

/// How an abort or a rewind that fails while the broker is away tries again.
#[derive(Clone, Copy)]
pub struct Retry<'a> {
    /// Until this is cancelled; `None`: one attempt only (at shutdown, where the next
    /// instance reads again whatever is not committed).
    pub until: Option<&'a CancellationToken>,
    /// Told before every attempt that the waiting consumer loop is alive, so that a liveness
    /// probe does not restart an instance that only waits for its broker.
    pub health: Option<&'a Health>,
}

impl Retry<'_> {
    /// One attempt, no retries.
    pub fn once() -> Retry<'static> {
        Retry {
            until: None,
            health: None,
        }
    }

    /// Marks the consumer loop alive before an attempt.
    fn beat(&self) {
        if let Some(health) = self.health {
            health.beat();
        }
    }

    /// Calls `call` until it succeeds, marking the loop alive before each attempt and waiting
    /// 1, 2, 4, 8, then every 10 seconds between them (logging `what` on the first failure and
    /// every power of two after it). The last error comes back when there are no retries, when
    /// they were cancelled, or when it is a fatal transactional error, which no retry mends.
    async fn until_done<T, F>(
        &self,
        what: &str,
        mut call: impl FnMut() -> F,
    ) -> std::result::Result<T, KafkaError>
    where
        F: std::future::Future<Output = std::result::Result<T, KafkaError>>,
    {
        let mut attempt = 0u32;
        loop {
            self.beat();
            let error = match call().await {
                Ok(done) => return Ok(done),
                Err(KafkaError::Transaction(e)) if e.is_fatal() => {
                    return Err(KafkaError::Transaction(e))
                }
                Err(e) => e,
            };
            let Some(until) = self.until else {
                return Err(error);
            };
            attempt += 1;
            if attempt.is_power_of_two() {
                tracing::warn!(%error, attempt, "{what}");
            }
            let pause = Duration::from_secs(1 << (attempt - 1).min(3)).min(MAX_PAUSE);
            tokio::select! {
                _ = until.cancelled() => return Err(error),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The longest pause between two attempts of [`Retry::until_done`].
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// How long one call the consumer loop waits for (a commit, an abort, reading the committed
/// offsets) may take: two of them, or one and a [`MAX_PAUSE`], stay inside the 30 s after
/// which `/healthz` finds the loop stuck.
const LOOP_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a blocking librdkafka call off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, KafkaError> + Send + 'static,
) -> std::result::Result<T, KafkaError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(KafkaError::Canceled).inspect_err(
            |_| tracing::error!(error = %e, "a transactional call panicked or was cancelled"),
        ),
    }
}

/// Seeks each owned Kafka partition back to its committed offset after an abort (the log start
/// when there is none); returns the offsets sought, to check the first records read there.
///
/// The committed offsets come from the broker: while it is away this is tried again as `retry`
/// says, until it goes through (nothing may be read before, or the events since the last
/// commit would be skipped); it fails only when the retries end.
pub async fn rewind(
    consumer: &InputConsumer,
    topic: &str,
    partitions: &[i32],
    retry: Retry<'_>,
) -> Result<Vec<(i32, i64)>> {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let what = "reading the committed offsets to rewind to after an abort failed; trying again (the input is not read meanwhile)";
    let read = || std::future::ready(consumer.committed_offsets(tpl.clone(), LOOP_CALL_TIMEOUT));
    let committed = retry.until_done(what, read).await.map_err(|e| {
        Error::Kafka(format!(
            "reading committed offsets to rewind after an abort: {e}"
        ))
    })?;
    let mut sought = Vec::new();
    for elem in committed.elements_for_topic(topic) {
        let to = match elem.offset() {
            Offset::Offset(o) => {
                sought.push((elem.partition(), o));
                Offset::Offset(o)
            }
            _ => Offset::Beginning,
        };
        consumer
            .seek(topic, elem.partition(), to, LOOP_CALL_TIMEOUT)
            .map_err(|e| {
                Error::Kafka(format!(
                    "rewinding {topic} Kafka partition {} after an abort: {e}",
                    elem.partition()
                ))
            })?;
    }
    Ok(sought)
}

/// The `transactional.id` of exactly-once mode: configured, or `GROUP_ID-HOSTNAME`.
pub fn transactional_id(config: &crate::config::ServeConfig) -> String {
    config.kafka.transactional_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "manymodel".into());
        format!("{}-{host}", config.kafka.group_id)
    })
}
