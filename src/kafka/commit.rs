//! Offset commits of at-least-once mode: the contiguous finished prefix that the
//! [`super::offsets::OffsetTracker`] computes, committed periodically while serving and once
//! more at shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::kafka::consumer::{self, InputConsumer};
use crate::kafka::offsets::OffsetTracker;

/// How long the final commit keeps trying while the group is rebalancing.
const FINAL_COMMIT_PATIENCE: Duration = Duration::from_secs(10);

/// The last commit of at-least-once mode. A stop often comes in the middle of a rebalance (a
/// rolling deploy starts one instance while it stops another): the group coordinator then
/// refuses commits until the rebalance completes, which needs this consumer to be polled. So
/// the consumer is polled between attempts (records it hands over are not scored and not
/// committed), and a revoke on the way commits its Kafka partitions itself.
pub async fn final_commit(
    consumer: &InputConsumer,
    tracker: &OffsetTracker,
    topic: &str,
) -> Result<()> {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let deadline = Instant::now() + FINAL_COMMIT_PATIENCE;
    loop {
        let positions = tracker.all_committable();
        let result = {
            let _guard = tracker.commit_guard();
            consumer::commit(consumer, topic, &positions, CommitMode::Sync)
        };
        let e = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let rebalancing = matches!(
            e.rdkafka_error_code(),
            Some(Code::RebalanceInProgress | Code::IllegalGeneration | Code::UnknownMemberId)
        );
        if !rebalancing || Instant::now() >= deadline {
            return Err(Error::Kafka(format!("final offset commit failed: {e}")));
        }
        tracing::info!(error = %e, "the group is rebalancing; serving the rebalance before the final commit");
        let _ = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
    }
}

/// Commits the tracker's finished positions every `every` until `shutdown`.
pub async fn commit_periodically(
    consumer: Arc<InputConsumer>,
    topic: String,
    tracker: Arc<OffsetTracker>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let positions = tracker.take_committable();
                if positions.is_empty() {
                    continue;
                }
                // A synchronous commit off the runtime: its result is known here, so it is
                // counted, and a failed one is retried with the next tick.
                // Under the commit lock, re-checked there: a revoke in between retires the
                // Kafka partitions this instance no longer owns.
                let (c, t, tr) = (consumer.clone(), topic.clone(), tracker.clone());
                let p = positions.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let _guard = tr.commit_guard();
                    let owned: Vec<(i32, i64)> = p.into_iter().filter(|(k, _)| tr.owns(*k)).collect();
                    consumer::commit(&c, &t, &owned, CommitMode::Sync)
                }).await;
                let ok = matches!(result, Ok(Ok(())));
                consumer.context().stats.committed(ok);
                if !ok {
                    tracker.retry(&positions);
                    tracing::warn!(?result, "offset commit failed; retrying with the next one");
                }
            }
        }
    }
}
