//! Exactly-once mode, the consumer loop's side: a transaction is cut by letting every event
//! read in it be acknowledged (records awaiting their writer schema, parked work, actors'
//! queues) and committing it with its offsets; an abort drops all of that and rewinds every
//! owned Kafka partition to its committed offset. The Kafka side (begin, commit, abort, the
//! committed offsets) is [`crate::kafka::transaction`].

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::reader::Reader;
use crate::error::Result;
use crate::kafka::consumer::InputConsumer;
use crate::kafka::transaction::{Outcome, Retry};
use crate::metrics::PipelineStats;

/// How long exactly-once mode waits for a transaction's events to be acknowledged before it
/// aborts the transaction.
const TRANSACTION_DRAIN: Duration = Duration::from_secs(30);

impl Reader<'_> {
    /// Exactly-once: stop reading, let every event read in the transaction be acknowledged,
    /// then commit it with its offsets.
    pub(super) async fn cut_transaction(
        &mut self,
        consumer: &InputConsumer,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        if !std::mem::take(&mut self.read_since_commit) {
            return Ok(());
        }
        let deadline = Instant::now() + TRANSACTION_DRAIN;
        // Records waiting for their writer schema belong to this transaction too.
        while !self.awaiting.is_empty() && Instant::now() < deadline {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline.into()) => {}
                id = self.decoder.resolved(), if self.decoder.looking_up() => self.release(consumer, id),
            }
        }
        self.flow.drain(&mut self.router, self.producer).await;
        // A producer that failed fatally acknowledges nothing more: abort at once (which fails,
        // and says why).
        while self.tracker.in_flight() > 0
            && Instant::now() < deadline
            && self.producer.fatal_error().is_none()
        {
            if shutdown.is_cancelled() {
                return Ok(()); // the shutdown path commits
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let Some(t) = self.transactions.as_mut() else {
            return Ok(());
        };
        if self.tracker.in_flight() > 0 {
            tracing::warn!(
                in_flight = self.tracker.in_flight(),
                "events of this transaction were not acknowledged in time; aborting it"
            );
            return self.abort(consumer, shutdown).await;
        }
        let positions = self.tracker.all_committable();
        let topic = &self.config.kafka.input_topic;
        let retry = retry(self.stats, shutdown);
        match t.commit(consumer, topic, &positions, retry).await? {
            Outcome::Committed => {
                tracing::debug!(?positions, "transaction committed");
                self.stats.committed(true);
                self.revocations = self.tracker.revocations();
                Ok(())
            }
            Outcome::Aborted => {
                self.forget();
                self.rewind(consumer, shutdown).await
            }
        }
    }

    /// Exactly-once: aborts the open transaction and rewinds to the committed offsets. While
    /// the broker is away both are tried again until they go through (or `shutdown`): the
    /// daemon stays up, reading nothing.
    pub(super) async fn abort(
        &mut self,
        consumer: &InputConsumer,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        // Outstanding work is dropped first, so nothing of it reaches the next transaction.
        self.forget();
        let retry = retry(self.stats, shutdown);
        if let Some(t) = self.transactions.as_mut() {
            t.abort(retry).await?;
        }
        self.rewind(consumer, shutdown).await
    }

    /// Exactly-once: drops every event read in the aborted transaction, wherever it is.
    fn forget(&mut self) {
        self.tracker.reset();
        self.flow.clear();
        self.awaiting.clear();
    }

    /// Exactly-once, after an abort and [`Reader::forget`]: every owned Kafka partition
    /// reads again from its committed offset.
    async fn rewind(
        &mut self,
        consumer: &InputConsumer,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        self.revocations = self.tracker.revocations();
        let owned: Vec<i32> = self.tracker.owned().iter().map(|o| o.partition()).collect();
        let topic = &self.config.kafka.input_topic;
        let retry = retry(self.stats, shutdown);
        let sought = crate::kafka::transaction::rewind(consumer, topic, &owned, retry).await?;
        // Reading starts again at the committed offsets: checked like any other seek.
        for offsets in self.tracker.owned() {
            if let Some(&(_, at)) = sought.iter().find(|(p, _)| *p == offsets.partition()) {
                offsets.sought(at);
            }
        }
        tracing::info!(kafka_partitions = ?owned, "transaction aborted; rewound to the committed offsets");
        Ok(())
    }
}

/// Retries of an abort or a rewind while the broker is away: until `shutdown`, the consumer
/// loop marked alive meanwhile.
fn retry<'s>(stats: &'s PipelineStats, shutdown: &'s CancellationToken) -> Retry<'s> {
    Retry {
        until: Some(shutdown),
        health: Some(&stats.health),
    }
}
