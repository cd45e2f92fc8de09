//! Every metric manymodel reports, named and described once.
//!
//! [`PipelineStats`] is the pipeline's own tally: it moves the Prometheus metrics through the
//! `metrics` facade (a no-op until an exporter is installed) and keeps the few numbers the
//! demo and the benchmark print (counts and an end-to-end latency histogram) in-process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Unit,
};

use crate::error::RecordErrorKind;
use crate::model::bundle::ModelSource;

/// Input records read from Kafka.
pub const EVENTS_CONSUMED: &str = "manymodel_events_consumed_total";
/// Events scored, by `model` (partition or fallback).
pub const EVENTS_SCORED: &str = "manymodel_events_scored_total";
/// Predictions acknowledged by the broker.
pub const PREDICTIONS_PRODUCED: &str = "manymodel_predictions_produced_total";
/// Events sent to the dead-letter topic, by `reason`.
pub const EVENTS_DEAD_LETTERED: &str = "manymodel_events_dead_lettered_total";
/// Outputs the broker did not acknowledge.
pub const DELIVERY_FAILURES: &str = "manymodel_delivery_failures_total";
/// Offset commits, by `result`.
pub const OFFSET_COMMITS: &str = "manymodel_offset_commits_total";
/// Kafka partitions of the input topic assigned to this instance.
pub const ASSIGNED_PARTITIONS: &str = "manymodel_assigned_kafka_partitions";
/// Event timestamp to prediction acknowledged.
pub const END_TO_END_LATENCY: &str = "manymodel_end_to_end_latency_seconds";

/// Describes every metric to the installed recorder.
pub fn describe() {
    describe_counter!(
        EVENTS_CONSUMED,
        Unit::Count,
        "Input records read from Kafka."
    );
    describe_counter!(
        EVENTS_SCORED,
        Unit::Count,
        "Events scored, by the model that scored them (partition or fallback)."
    );
    describe_counter!(
        PREDICTIONS_PRODUCED,
        Unit::Count,
        "Predictions acknowledged by the broker."
    );
    describe_counter!(
        EVENTS_DEAD_LETTERED,
        Unit::Count,
        "Events sent to the dead-letter topic, by reason."
    );
    describe_counter!(
        DELIVERY_FAILURES,
        Unit::Count,
        "Predictions or dead letters the broker did not acknowledge."
    );
    describe_counter!(OFFSET_COMMITS, Unit::Count, "Offset commits, by result.");
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        Unit::Count,
        "Kafka partitions of the input topic assigned to this instance."
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "Time from the event's Kafka timestamp to its prediction being acknowledged."
    );
}

/// The pipeline's running tally.
///
/// Metric handles are registered once, when the tally is made (after the exporter is
/// installed), so the hot path only bumps atomics.
#[derive(Debug)]
pub struct PipelineStats {
    /// Records read.
    pub consumed: AtomicU64,
    /// Predictions acknowledged.
    pub produced: AtomicU64,
    /// Of which made by the fallback model.
    pub fallback: AtomicU64,
    /// Dead letters acknowledged.
    pub dead_lettered: AtomicU64,
    /// Outputs the broker refused or timed out.
    pub delivery_failures: AtomicU64,
    /// Kafka partitions of the input topic currently assigned to this instance.
    pub assigned: AtomicU64,
    /// Event timestamp to acknowledgement, in microseconds.
    latency_us: Mutex<Histogram<u64>>,
    handles: Handles,
}

#[derive(Debug)]
struct Handles {
    consumed: Counter,
    scored_partition: Counter,
    scored_fallback: Counter,
    produced: Counter,
    dead_lettered: Vec<(RecordErrorKind, Counter)>,
    delivery_failures: Counter,
    commits_ok: Counter,
    commits_failed: Counter,
    assigned: Gauge,
    latency: metrics::Histogram,
}

impl Default for PipelineStats {
    fn default() -> Self {
        PipelineStats {
            consumed: AtomicU64::new(0),
            produced: AtomicU64::new(0),
            fallback: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            delivery_failures: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            // Three significant figures from 1 µs to an hour.
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("constant histogram bounds are valid"),
            ),
            handles: Handles {
                consumed: counter!(EVENTS_CONSUMED),
                scored_partition: counter!(EVENTS_SCORED, "model" => "partition"),
                scored_fallback: counter!(EVENTS_SCORED, "model" => "fallback"),
                produced: counter!(PREDICTIONS_PRODUCED),
                dead_lettered: RecordErrorKind::ALL
                    .iter()
                    .map(|k| (*k, counter!(EVENTS_DEAD_LETTERED, "reason" => k.as_str())))
                    .collect(),
                delivery_failures: counter!(DELIVERY_FAILURES),
                commits_ok: counter!(OFFSET_COMMITS, "result" => "ok"),
                commits_failed: counter!(OFFSET_COMMITS, "result" => "error"),
                assigned: gauge!(ASSIGNED_PARTITIONS),
                latency: histogram!(END_TO_END_LATENCY),
            },
        }
    }
}

impl PipelineStats {
    /// A record was read.
    pub fn consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
        self.handles.consumed.increment(1);
    }

    /// An event was scored.
    pub fn scored(&self, source: ModelSource) {
        match source {
            ModelSource::Partition => self.handles.scored_partition.increment(1),
            ModelSource::Fallback => self.handles.scored_fallback.increment(1),
        }
    }

    /// A prediction was acknowledged; `latency_us` is from the event's timestamp.
    pub fn produced(&self, source: ModelSource, latency_us: Option<u64>) {
        self.produced.fetch_add(1, Ordering::Relaxed);
        if source == ModelSource::Fallback {
            self.fallback.fetch_add(1, Ordering::Relaxed);
        }
        self.handles.produced.increment(1);
        if let Some(us) = latency_us {
            self.handles.latency.record(us as f64 / 1e6);
            if let Ok(mut h) = self.latency_us.lock() {
                h.saturating_record(us.max(1));
            }
        }
    }

    /// A dead letter was acknowledged.
    pub fn dead_lettered(&self, kind: RecordErrorKind) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if let Some((_, c)) = self.handles.dead_lettered.iter().find(|(k, _)| *k == kind) {
            c.increment(1);
        }
    }

    /// An output was not acknowledged.
    pub fn delivery_failed(&self) {
        self.delivery_failures.fetch_add(1, Ordering::Relaxed);
        self.handles.delivery_failures.increment(1);
    }

    /// Kafka partitions were assigned (`added`) or revoked (`removed`).
    pub fn assignment_changed(&self, added: u64, removed: u64) {
        let before = self.assigned.load(Ordering::Relaxed);
        let now = (before + added).saturating_sub(removed);
        self.assigned.store(now, Ordering::Relaxed);
        self.handles.assigned.set(now as f64);
    }

    /// An offset commit finished.
    pub fn committed(&self, ok: bool) {
        if ok {
            self.handles.commits_ok.increment(1);
        } else {
            self.handles.commits_failed.increment(1);
        }
    }

    /// A copy of the latency histogram (microseconds), cleared with `reset`.
    pub fn latency(&self, reset: bool) -> Histogram<u64> {
        match self.latency_us.lock() {
            Ok(mut h) => {
                let copy = h.clone();
                if reset {
                    h.reset();
                }
                copy
            }
            Err(e) => e.into_inner().clone(),
        }
    }
}
