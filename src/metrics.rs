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
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::RecordErrorKind;
use crate::scoring::ModelSource;

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
/// Record read to prediction enqueued.
pub const SCORING_LATENCY: &str = "manymodel_scoring_latency_seconds";
/// Consumer lag per topic and Kafka partition, from librdkafka's statistics.
pub const CONSUMER_LAG: &str = "manymodel_consumer_lag";
/// The active bundle: 1, labelled with its version.
pub const BUNDLE_INFO: &str = "manymodel_bundle_info";
/// When the active bundle became active.
pub const BUNDLE_ACTIVATED: &str = "manymodel_bundle_activated_timestamp_seconds";
/// Partition models in the active bundle.
pub const BUNDLE_PARTITIONS: &str = "manymodel_bundle_partitions";
/// Bundles loaded and made active.
pub const BUNDLE_LOADS: &str = "manymodel_bundle_loads_total";
/// Bundles rejected, by reason.
pub const BUNDLE_REJECTIONS: &str = "manymodel_bundle_rejections_total";
/// How long the consumer loop paused for the last bundle swap.
pub const BUNDLE_SWAP_PAUSE: &str = "manymodel_bundle_swap_pause_seconds";
/// Live partition actors (`[pipeline] actors`); the stores are spread over them by id.
pub const ACTORS: &str = "manymodel_partition_actors";
/// Events queued in partition mailboxes, all actors together.
pub const MAILBOX_DEPTH: &str = "manymodel_mailbox_depth";
/// Outputs handed to the producer and not yet acknowledged.
pub const PRODUCER_QUEUE: &str = "manymodel_producer_queue_depth";
/// Kafka partitions paused for backpressure.
pub const PAUSED_PARTITIONS: &str = "manymodel_paused_kafka_partitions";
/// Events read and not yet acknowledged, over all Kafka partitions.
pub const IN_FLIGHT: &str = "manymodel_in_flight_events";
/// 1 while the stall watchdog finds work waiting and nothing progressing.
pub const STALLED: &str = "manymodel_stalled";
/// Kafka transactions of exactly-once mode, by `result` (committed or aborted).
pub const TRANSACTIONS: &str = "manymodel_transactions_total";
/// Build information: 1, labelled with version and git commit.
pub const BUILD_INFO: &str = "manymodel_build_info";
/// Events scored for the stores listed in `per_partition_metrics`, by partition.
pub const PARTITION_EVENTS: &str = "manymodel_partition_events_scored_total";
/// Records the broker skipped after a seek (a fetch from inside a record batch), noticed and
/// sought again rather than committed across.
pub const READ_GAPS: &str = "manymodel_read_gaps_total";
/// Records read a second time in one assignment (after a seek back) and dropped.
pub const RECORDS_REPEATED: &str = "manymodel_records_repeated_total";
/// Input records librdkafka could not decode (a corrupt or unsupported batch), by Kafka
/// partition of the input topic.
pub const UNDECODABLE_BATCHES: &str = "manymodel_undecodable_batches_total";
/// Writer schemas held in the registry cache, by `kind`: `resolved` or `unknown` (ids the
/// registry does not have). Both are bounded.
pub const SCHEMA_CACHE_ENTRIES: &str = "manymodel_schema_cache_entries";
/// Writer schema ids being asked of the registry or queued to be.
pub const SCHEMA_LOOKUPS: &str = "manymodel_schema_lookups_pending";
/// Records waiting aside for their writer schema from the registry.
pub const AWAITING_SCHEMA: &str = "manymodel_records_awaiting_schema";
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
        SCHEMA_CACHE_ENTRIES,
        Unit::Count,
        "Writer schemas held in the registry cache, by kind (resolved or unknown); both bounded."
    );
    describe_gauge!(
        SCHEMA_LOOKUPS,
        Unit::Count,
        "Writer schema ids being asked of the registry or queued to be."
    );
    describe_gauge!(
        AWAITING_SCHEMA,
        Unit::Count,
        "Records waiting aside for their writer schema from the registry."
    );
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        Unit::Count,
        "Kafka partitions of the input topic assigned to this instance."
    );
    describe_histogram!(
        SCORING_LATENCY,
        Unit::Seconds,
        "Time from a record being read to its prediction being computed."
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Consumer lag in records per topic and Kafka partition, from librdkafka's statistics."
    );
    describe_gauge!(
        BUNDLE_INFO,
        "The active bundle (value 1), labelled with its version."
    );
    describe_gauge!(
        BUNDLE_ACTIVATED,
        Unit::Seconds,
        "Unix time at which the active bundle became active."
    );
    describe_gauge!(
        BUNDLE_PARTITIONS,
        Unit::Count,
        "Partition models in the active bundle."
    );
    describe_counter!(BUNDLE_LOADS, Unit::Count, "Bundles loaded and made active.");
    describe_counter!(
        BUNDLE_REJECTIONS,
        Unit::Count,
        "Bundles and control records rejected, by reason."
    );
    describe_gauge!(
        BUNDLE_SWAP_PAUSE,
        Unit::Seconds,
        "How long the consumer loop paused to swap in the last activated bundle."
    );
    describe_gauge!(
        ACTORS,
        Unit::Count,
        "Live partition actors ([pipeline] actors); the stores are spread over them by id."
    );
    describe_gauge!(
        MAILBOX_DEPTH,
        Unit::Count,
        "Events queued in partition actors' mailboxes, all actors together."
    );
    describe_gauge!(
        PRODUCER_QUEUE,
        Unit::Count,
        "Outputs handed to the producer and not yet acknowledged."
    );
    describe_gauge!(
        PAUSED_PARTITIONS,
        Unit::Count,
        "Kafka partitions paused, for backpressure or for an output the broker refused."
    );
    describe_gauge!(
        IN_FLIGHT,
        Unit::Count,
        "Events read and not yet acknowledged, over all Kafka partitions; bounded by [pipeline] max_in_flight."
    );
    describe_gauge!(
        STALLED,
        Unit::Count,
        "1 while events wait and nothing has been acknowledged for [pipeline] stall_timeout_secs."
    );
    describe_counter!(
        TRANSACTIONS,
        Unit::Count,
        "Kafka transactions in exactly_once mode, by result (committed, aborted)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Build information (value 1), labelled with version and git commit."
    );
    describe_counter!(
        PARTITION_EVENTS,
        Unit::Count,
        "Events scored for the stores listed in per_partition_metrics, by partition."
    );
    describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "Time from the event's Kafka timestamp to its prediction being acknowledged."
    );
    describe_counter!(
        READ_GAPS,
        Unit::Count,
        "Times the broker skipped records after a seek (a fetch from inside a record batch); each time they were sought again, never committed across."
    );
    describe_counter!(
        RECORDS_REPEATED,
        Unit::Count,
        "Records read a second time in one assignment (after a seek back) and dropped."
    );
    describe_counter!(
        UNDECODABLE_BATCHES,
        Unit::Count,
        "Consumer errors for record batches librdkafka could not decode (corrupt, or a codec it lacks)."
    );
}

/// Histogram buckets for latencies, in seconds: fine around milliseconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Actuals scored against the active model, by kind of model.
pub const ACTUALS: &str = "manymodel_actuals_total";
/// |actual − predicted| of every actual scored, over all stores.
pub const ACTUAL_ABSOLUTE_ERROR: &str = "manymodel_actual_absolute_error";
/// Per-store ratio of recent to training RMSE, one sample per actual once judged.
pub const ERROR_RATIO: &str = "manymodel_partition_error_ratio";
/// Stores drifting now.
pub const PARTITIONS_DRIFTING: &str = "manymodel_partitions_drifting";
/// Stores with accuracy statistics.
pub const PARTITIONS_TRACKED: &str = "manymodel_accuracy_partitions_tracked";
/// Bytes of the accuracy table.
pub const ACCURACY_TABLE_BYTES: &str = "manymodel_accuracy_table_bytes";
/// Drift records produced, by change.
pub const DRIFT_RECORDS: &str = "manymodel_drift_records_total";
/// Recent RMSE of the stores listed in per_partition_metrics.
pub const PARTITION_RECENT_RMSE: &str = "manymodel_partition_recent_rmse";
/// Ratio of recent to training RMSE of the stores listed in per_partition_metrics.
pub const PARTITION_DRIFT_RATIO: &str = "manymodel_partition_drift_ratio";

/// Histogram buckets for absolute errors, in the target's units: wide, since the scale is
/// the user's.
const ERROR_BUCKETS: [f64; 20] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0,
    1000.0, 2500.0, 5000.0, 10000.0, 100000.0,
];

/// Histogram buckets for the ratio of recent to training RMSE.
const RATIO_BUCKETS: [f64; 13] = [
    0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0, 1000.0,
];

/// Counts a drift record acknowledged by the broker.
pub fn drift_record(started: bool) {
    let change = if started { "started" } else { "stopped" };
    counter!(DRIFT_RECORDS, "change" => change).increment(1);
}

/// Describes the accuracy metrics.
fn describe_accuracy() {
    describe_counter!(
        ACTUALS,
        Unit::Count,
        "Actuals scored against the active model, by kind of model (partition or fallback)."
    );
    describe_histogram!(
        ACTUAL_ABSOLUTE_ERROR,
        "Absolute error |actual - predicted| of every actual, over all stores, in the target's units."
    );
    describe_histogram!(
        ERROR_RATIO,
        "Per-store ratio of recent RMSE to training RMSE, one sample per actual once the store has min_actuals."
    );
    describe_gauge!(
        PARTITIONS_DRIFTING,
        Unit::Count,
        "Stores whose recent RMSE is over drift_ratio times their training RMSE."
    );
    describe_gauge!(
        PARTITIONS_TRACKED,
        Unit::Count,
        "Stores with accuracy statistics."
    );
    describe_gauge!(
        ACCURACY_TABLE_BYTES,
        Unit::Bytes,
        "Memory of the per-store accuracy table."
    );
    describe_counter!(
        DRIFT_RECORDS,
        Unit::Count,
        "Records produced to the drift topic, by change (started or stopped)."
    );
    describe_gauge!(
        PARTITION_RECENT_RMSE,
        "Recent RMSE of the stores listed in per_partition_metrics, by partition."
    );
    describe_gauge!(
        PARTITION_DRIFT_RATIO,
        "Ratio of recent to training RMSE of the stores listed in per_partition_metrics, by partition."
    );
}

/// Installs the Prometheus recorder, describes every metric and sets the build info. Call
/// once per process, before the pipeline starts.
pub fn install() -> Result<PrometheusHandle, String> {
    install_with_upkeep(UPKEEP_EVERY)
}

/// Runs of the upkeep thread that [`install_with_upkeep`] starts, so far.
static UPKEEP_RUNS: AtomicU64 = AtomicU64::new(0);

/// How many times the upkeep thread has folded the histograms' samples so far: a caller that
/// sees it move by two knows that everything recorded before it looked has been folded.
pub fn upkeep_runs() -> u64 {
    UPKEEP_RUNS.load(Ordering::Acquire)
}

/// [`install`], folding histogram samples every `every`.
///
/// Histogram samples are kept raw until they are folded into buckets, which a scrape does;
/// a thread does it every few seconds as well, so a daemon nobody scrapes (Prometheus down,
/// not yet configured) does not grow by 16 bytes per sample for as long as it runs.
pub fn install_with_upkeep(every: std::time::Duration) -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(Matcher::Full(ACTUAL_ABSOLUTE_ERROR.into()), &ERROR_BUCKETS)
        .map_err(|e| e.to_string())?
        .set_buckets_for_metric(Matcher::Full(ERROR_RATIO.into()), &RATIO_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            upkeep.run_upkeep();
            UPKEEP_RUNS.fetch_add(1, Ordering::Release);
        })
        .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
    describe();
    describe_accuracy();
    gauge!(
        BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "git_commit" => option_env!("MANYMODEL_GIT_COMMIT").unwrap_or("unknown")
    )
    .set(1.0);
    gauge!(PAUSED_PARTITIONS).set(0.0);
    gauge!(BUNDLE_SWAP_PAUSE).set(0.0);
    gauge!(IN_FLIGHT).set(0.0);
    gauge!(STALLED).set(0.0);
    counter!(READ_GAPS).increment(0);
    counter!(RECORDS_REPEATED).increment(0);
    counter!(UNDECODABLE_BATCHES).increment(0);
    Ok(handle)
}

/// Records the registry cache's sizes and the lookups pending.
pub fn schema_cache(resolved: usize, unknown: usize, lookups: usize) {
    gauge!(SCHEMA_CACHE_ENTRIES, "kind" => "resolved").set(resolved as f64);
    gauge!(SCHEMA_CACHE_ENTRIES, "kind" => "unknown").set(unknown as f64);
    gauge!(SCHEMA_LOOKUPS).set(lookups as f64);
}

/// Records how many records wait for their writer schema.
pub fn awaiting_schema(n: usize) {
    gauge!(AWAITING_SCHEMA).set(n as f64);
}

/// Records the consumer loop's pause for a bundle swap.
pub fn bundle_swap_pause(seconds: f64) {
    gauge!(BUNDLE_SWAP_PAUSE).set(seconds);
}

/// Makes the rejection counter of every reason exist, at zero, so an alert on its increase
/// fires on the first rejection.
pub fn bundle_rejections_from_zero(reasons: &[&'static str]) {
    for reason in reasons {
        counter!(BUNDLE_REJECTIONS, "reason" => *reason).increment(0);
    }
}

/// Makes both transaction counters exist, at zero (exactly-once mode).
pub fn transactions_from_zero() {
    for result in ["committed", "aborted"] {
        counter!(TRANSACTIONS, "result" => result).increment(0);
    }
}

/// Counts a rejected bundle or control record.
pub fn bundle_rejected(reason: &'static str) {
    counter!(BUNDLE_REJECTIONS, "reason" => reason).increment(1);
}

/// Records that `bundle` became the active bundle.
pub fn bundle_activated(version: &str, partitions: usize, previous: Option<&str>) {
    if let Some(old) = previous {
        gauge!(BUNDLE_INFO, "version" => old.to_owned()).set(0.0);
    }
    gauge!(BUNDLE_INFO, "version" => version.to_owned()).set(1.0);
    gauge!(BUNDLE_ACTIVATED).set(crate::clock::now_ms() as f64 / 1000.0);
    gauge!(BUNDLE_PARTITIONS).set(partitions as f64);
    counter!(BUNDLE_LOADS).increment(1);
}

/// Sets the consumer lag of one Kafka partition.
pub fn consumer_lag(topic: &str, kafka_partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_owned(), "kafka_partition" => kafka_partition.to_string())
        .set(lag as f64);
}

/// Sets the pipeline's queue gauges.
pub fn queues(actors: usize, mailbox_depth: usize, producer_queue: i32) {
    gauge!(ACTORS).set(actors as f64);
    gauge!(MAILBOX_DEPTH).set(mailbox_depth as f64);
    gauge!(PRODUCER_QUEUE).set(producer_queue as f64);
}

/// Counts records the broker skipped after a seek.
pub fn read_gap() {
    counter!(READ_GAPS).increment(1);
}

/// Counts a record read twice in one assignment.
pub fn record_repeated() {
    counter!(RECORDS_REPEATED).increment(1);
}

/// Counts a batch librdkafka could not decode.
pub fn undecodable_batch() {
    counter!(UNDECODABLE_BATCHES).increment(1);
}

/// Sets the number of paused Kafka partitions.
pub fn paused_partitions(n: usize) {
    gauge!(PAUSED_PARTITIONS).set(n as f64);
}

/// Sets the number of events in flight.
pub fn in_flight(n: usize) {
    gauge!(IN_FLIGHT).set(n as f64);
}

/// Sets whether the pipeline is stalled.
pub fn stalled(yes: bool) {
    gauge!(STALLED).set(if yes { 1.0 } else { 0.0 });
}

/// Counts a finished transaction.
pub fn transaction(committed: bool) {
    counter!(TRANSACTIONS, "result" => if committed { "committed" } else { "aborted" })
        .increment(1);
}

/// The counter of events scored for one listed store.
pub fn partition_counter(partition: &str) -> Counter {
    counter!(PARTITION_EVENTS, "partition" => partition.to_owned())
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
    /// Actuals scored against their store's active model (`[actuals]`), so that an in-process
    /// caller (the demo) can tell when the actuals it produced have all been judged.
    pub actuals: AtomicU64,
    /// Event timestamp to acknowledgement, in microseconds, for the demo and the benchmark
    /// to print ([`PipelineStats::printing_latency`]); `serve` exports the Prometheus
    /// histogram only and takes no lock per event for this one.
    latency_us: Option<Mutex<Histogram<u64>>>,
    /// Event timestamp to the consumer loop reading it, in microseconds (the part of the
    /// latency spent before the pipeline: the producer's batching, the broker, the fetch),
    /// for the benchmark to print beside `latency_us`; kept only with it.
    read_wait_us: Option<Mutex<Histogram<u64>>>,
    /// The consumer loop reading a record to its output acknowledged, in microseconds (the
    /// part the pipeline, its producer and the broker's acknowledgement add), for the
    /// benchmark to print beside `latency_us`; kept only with it.
    after_read_us: Option<Mutex<Histogram<u64>>>,
    /// Event timestamp to the broker acknowledging the event to its producer (the bench's
    /// loader), in microseconds: of the part before the read, what the producer's batching and
    /// the broker's append took, for the benchmark to print; kept only with `latency_us`.
    input_acked_us: Option<Mutex<Histogram<u64>>>,
    handles: Handles,
    /// What the health endpoints report.
    pub health: crate::health::Health,
    /// Asks the actuals actor, while `[actuals]` is on, for `/partitions`.
    pub accuracy: Mutex<Option<crate::accuracy::AccuracyHandle>>,
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
    scoring_latency: metrics::Histogram,
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
            actuals: AtomicU64::new(0),
            latency_us: None,
            read_wait_us: None,
            after_read_us: None,
            input_acked_us: None,
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
                scoring_latency: histogram!(SCORING_LATENCY),
            },
            health: crate::health::Health::default(),
            accuracy: Mutex::new(None),
        }
    }
}

impl PipelineStats {
    /// Stats that also keep an in-process latency histogram, for [`PipelineStats::latency`].
    pub fn printing_latency() -> Self {
        // Three significant figures from 1 µs to an hour.
        let histogram = || {
            Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .ok()
                .map(Mutex::new)
        };
        PipelineStats {
            latency_us: histogram(),
            read_wait_us: histogram(),
            after_read_us: histogram(),
            input_acked_us: histogram(),
            ..PipelineStats::default()
        }
    }

    /// A record with Kafka timestamp `timestamp_ms` was read now: for the benchmark's split of
    /// the latency into before and inside the pipeline. Does nothing (no clock, no lock) unless
    /// made with [`PipelineStats::printing_latency`].
    pub fn read_after(&self, timestamp_ms: Option<i64>) {
        since_timestamp(self.read_wait_us.as_ref(), timestamp_ms);
    }

    /// The broker acknowledged to its producer (the bench's loader) an input record with Kafka
    /// timestamp `timestamp_ms` now: splits the part before the read into the producing and the
    /// fetching. Does nothing unless made with [`PipelineStats::printing_latency`].
    pub fn input_acknowledged(&self, timestamp_ms: Option<i64>) {
        since_timestamp(self.input_acked_us.as_ref(), timestamp_ms);
    }

    /// An output whose input was read at `read_at` was acknowledged now: the other half of the
    /// benchmark's split. Does nothing (no clock, no lock) unless made with
    /// [`PipelineStats::printing_latency`].
    pub fn acknowledged_after_read(&self, read_at: Option<std::time::Instant>) {
        let (Some(h), Some(read_at)) = (self.after_read_us.as_ref(), read_at) else {
            return;
        };
        let us = read_at.elapsed().as_micros() as u64;
        if let Ok(mut h) = h.lock() {
            h.saturating_record(us.max(1));
        }
    }

    /// The actuals actor's handle, for `/partitions`; `None` while actuals are off.
    pub fn accuracy(&self) -> Option<crate::accuracy::AccuracyHandle> {
        self.accuracy.lock().ok().and_then(|a| a.clone())
    }

    /// Sets (or clears) the actuals actor's handle.
    pub fn set_accuracy(&self, handle: Option<crate::accuracy::AccuracyHandle>) {
        if let Ok(mut a) = self.accuracy.lock() {
            *a = handle;
        }
    }

    /// An actual was scored and counted in its store's statistics.
    pub fn actual_scored(&self) {
        self.actuals.fetch_add(1, Ordering::Relaxed);
    }

    /// A record was read.
    pub fn consumed(&self) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
        self.handles.consumed.increment(1);
    }

    /// A batch of events was scored by `now`: each when it was read and which model scored
    /// it. One sample per event goes to the scoring-latency histogram, but the counters move
    /// once per batch, so the actors do not contend for them event by event. Events read in
    /// one turn of the consumer loop share their read time, so a run of them gives one
    /// sample value, recorded once with its count.
    pub fn scored(&self, now: std::time::Instant, scored: &[(std::time::Instant, ModelSource)]) {
        let own = scored
            .iter()
            .filter(|(_, source)| *source == ModelSource::Partition)
            .count() as u64;
        for run in scored.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(read_at, _)) = run.first() else {
                continue;
            };
            let seconds = now.saturating_duration_since(read_at).as_secs_f64();
            self.handles.scoring_latency.record_many(seconds, run.len());
        }
        let fallback = scored.len() as u64 - own;
        if own > 0 {
            self.handles.scored_partition.increment(own);
        }
        if fallback > 0 {
            self.handles.scored_fallback.increment(fallback);
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
            if let Some(Ok(mut h)) = self.latency_us.as_ref().map(Mutex::lock) {
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

    /// A copy of the latency histogram (microseconds), cleared with `reset`; `None` unless
    /// made with [`PipelineStats::printing_latency`].
    pub fn latency(&self, reset: bool) -> Option<Histogram<u64>> {
        copy(self.latency_us.as_ref()?, reset)
    }

    /// A copy of the histogram of event timestamp to read (microseconds), cleared with
    /// `reset`; `None` unless made with [`PipelineStats::printing_latency`].
    pub fn read_wait(&self, reset: bool) -> Option<Histogram<u64>> {
        copy(self.read_wait_us.as_ref()?, reset)
    }

    /// A copy of the histogram of read to acknowledgement (microseconds), cleared with
    /// `reset`; `None` unless made with [`PipelineStats::printing_latency`].
    pub fn after_read(&self, reset: bool) -> Option<Histogram<u64>> {
        copy(self.after_read_us.as_ref()?, reset)
    }

    /// A copy of the histogram of event timestamp to the input's acknowledgement to its
    /// producer (microseconds), cleared with `reset`; `None` unless made with
    /// [`PipelineStats::printing_latency`].
    pub fn input_acked(&self, reset: bool) -> Option<Histogram<u64>> {
        copy(self.input_acked_us.as_ref()?, reset)
    }
}

/// Records in `histogram`, when kept, the time from Kafka timestamp `timestamp_ms` to now
/// (microseconds, at the timestamp's millisecond resolution).
fn since_timestamp(histogram: Option<&Mutex<Histogram<u64>>>, timestamp_ms: Option<i64>) {
    let (Some(h), Some(t)) = (histogram, timestamp_ms) else {
        return;
    };
    let us = (crate::clock::now_ms() - t).max(0) as u64 * 1000;
    if let Ok(mut h) = h.lock() {
        h.saturating_record(us.max(1));
    }
}

/// A copy of `histogram`, cleared afterwards with `reset`.
fn copy(histogram: &Mutex<Histogram<u64>>, reset: bool) -> Option<Histogram<u64>> {
    let mut h = match histogram.lock() {
        Ok(h) => h,
        Err(e) => e.into_inner(),
    };
    let copy = h.clone();
    if reset {
        h.reset();
    }
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's split of the latency at the read: kept by printing stats only, and
    /// counting from the read that each output names.
    #[test]
    fn the_part_after_the_read_is_kept_only_for_printing() {
        let quiet = PipelineStats::default();
        quiet.acknowledged_after_read(Some(std::time::Instant::now()));
        assert!(quiet.after_read(false).is_none());

        let printing = PipelineStats::printing_latency();
        let read_at = std::time::Instant::now() - std::time::Duration::from_millis(3);
        printing.acknowledged_after_read(Some(read_at));
        printing.acknowledged_after_read(None);
        let h = printing.after_read(true).expect("kept");
        assert_eq!(h.len(), 1, "one output with a read time");
        assert!(
            h.max() >= 3_000,
            "at least the 3 ms since the read: {}",
            h.max()
        );
        assert_eq!(
            printing.after_read(false).map(|h| h.len()),
            Some(0),
            "reset"
        );
    }
}
