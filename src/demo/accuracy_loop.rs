//! The demo's accuracy loop: a few stores change behaviour part-way through the stream; the
//! daemon, scoring their actuals, flags them on the drift topic; `retrain` refits them on their
//! post-drift actuals and publishes a delta; the daemon swaps it in and their error falls back
//! to the noise floor.
//!
//! ```text
//!  event  0 ──── 10% ──────────── 50% ──────────── 80% ─────────────────────────── 100%
//!               drift:            hot reload:      retrain: the flagged stores
//!               5% of the stores  demo-v2          refitted, a delta published
//!               change                             and swapped in
//!  actuals after each batch of events; the daemon flags drifting stores on the drift topic
//! ```
//!
//! This module plans where the drift and the retrain fall, feeds the actuals, reads what the
//! daemon concluded (its accuracy table and the drift topic), runs `retrain` in-process and
//! reports. The events, the hot reloads and the other figures are [`crate::demo`]'s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::truth::Errors;
use crate::accuracy::report::{Sort, StoreReport};
use crate::accuracy::stats::Verdict;
use crate::config::ActualsConfig;
use crate::error::{Error, Result};
use crate::generate::Drift;
use crate::kafka::connection::Connection;
use crate::local;
use crate::metrics::PipelineStats;
use crate::plural::count;
use crate::retrain::config::{
    ActualsConfig as RefitActuals, RetrainKafka, RetrainModel, SourceConfig,
};
use crate::retrain::drift::{self, DriftRecord};
use crate::retrain::{topic, RetrainConfig, RetrainOptions, RetrainReport};

/// The topic of actuals.
pub const ACTUALS: &str = "actuals";
/// The topic the daemon writes drift records to and `retrain` reads them from.
pub const DRIFT: &str = "drift";

/// The share of stores that change behaviour (at least one).
const SHIFTED_SHARE: f64 = 0.05;
/// They change after this share of the events...
const DRIFT_AT: f64 = 0.1;
/// ...and `retrain` runs after this share. The actuals in between are what the refits learn
/// from, so the gap is wide: at the defaults (250 events per store) a shifted store has about
/// 170 post-drift actuals at the retrain, and about 50 after it to show the refit at work.
const RETRAIN_AT: f64 = 0.8;
/// No verdict on a store before this many actuals scored by its current model (the daemon's
/// default).
const VERDICT_AFTER: u32 = 30;
/// A refit needs this many post-drift actuals. The spec's model has 37 inputs, about 25
/// parameters to fit (one-hot groups share the intercept, and only 14 hours of the day
/// occur); on fewer rows an ordinary least-squares fit learns the noise: its error on new
/// actuals well above the noise floor, its training RMSE well below. Stores with fewer are
/// rejected ("not enough actuals"), as `retrain` would reject them in production.
const REFIT_MIN_ACTUALS: usize = 100;
/// How long the daemon may take to score the actuals of one batch, and to write its drift
/// records.
const PATIENCE: Duration = Duration::from_secs(60);

/// Where the drift and the retrain fall in the stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Which stores change behaviour, and from which event.
    pub drift: Drift,
    /// How many stores change.
    pub shifted: usize,
    /// The first event after the retrain.
    pub retrain_at: usize,
}

impl Plan {
    /// The plan for `stores` stores and `events` events: 5% of the stores (at least one) change
    /// after 10% of the events, the retrain runs after 80%.
    pub fn new(stores: usize, events: usize) -> Plan {
        let shifted = ((stores as f64 * SHIFTED_SHARE).round() as usize).clamp(1, stores.max(1));
        let fraction = if stores == 0 {
            0.0
        } else {
            shifted as f64 / stores as f64
        };
        let at = |share: f64| (events as f64 * share) as usize;
        Plan {
            drift: Drift {
                fraction,
                after: at(DRIFT_AT),
            },
            shifted,
            retrain_at: at(RETRAIN_AT),
        }
    }
}

/// Serve's `[actuals]` for the demo: drift records on [`DRIFT`], a verdict after
/// `VERDICT_AFTER` actuals, the other thresholds at their defaults.
pub fn actuals_config() -> ActualsConfig {
    ActualsConfig {
        drift_topic: Some(DRIFT.into()),
        min_actuals: VERDICT_AFTER,
        ..ActualsConfig::new(ACTUALS)
    }
}

/// What `manymodel retrain --config` would read for the demo's cluster: drifting stores from
/// [`DRIFT`], their actuals since their verdict from [`ACTUALS`], the active version from
/// `control_topic`, where the delta goes too (unsigned, activated on arrival).
pub fn retrain_config(brokers: &str, control_topic: &str) -> RetrainConfig {
    RetrainConfig {
        kafka: RetrainKafka {
            brokers: brokers.to_owned(),
            librdkafka_options: Default::default(),
            actuals_topic: ACTUALS.into(),
            control_topic: control_topic.to_owned(),
        },
        source: SourceConfig {
            drift_topic: Some(DRIFT.into()),
            ..Default::default()
        },
        actuals: RefitActuals {
            min_actuals: REFIT_MIN_ACTUALS,
            read_timeout_secs: 10,
            ..Default::default()
        },
        challenger: Default::default(),
        model: RetrainModel {
            replay_timeout_secs: 30,
            ..Default::default()
        },
        publish: Default::default(),
        watch: Default::default(),
    }
}

/// Produces the actuals of `range` (one per event, in the events' order) keyed by store, and
/// waits until the daemon has scored `range.end` actuals in all; false when it had not
/// within `PATIENCE`.
pub async fn feed(
    brokers: &str,
    actuals: Arc<Vec<Vec<u8>>>,
    range: std::ops::Range<usize>,
    stats: &PipelineStats,
) -> Result<bool> {
    if range.is_empty() {
        return Ok(true);
    }
    let brokers = brokers.to_owned();
    let scored_at = range.end as u64;
    tokio::task::spawn_blocking(move || {
        local::produce(
            &brokers,
            ACTUALS,
            &actuals[range],
            local::json_key("store_id"),
            None,
        )
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))??;
    let deadline = Instant::now() + PATIENCE;
    while stats.actuals.load(Ordering::Relaxed) < scored_at {
        if Instant::now() > deadline {
            tracing::warn!(
                scored = stats.actuals.load(Ordering::Relaxed),
                produced = scored_at,
                "the daemon did not score every actual in time"
            );
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(true)
}

/// Every store's accuracy now, as `GET /partitions` would list it.
pub async fn accuracy(stats: &PipelineStats) -> Result<HashMap<String, StoreReport>> {
    let page = match stats.accuracy() {
        Some(handle) => handle.page(Sort::Partition, usize::MAX).await,
        None => None,
    };
    let page =
        page.ok_or_else(|| Error::Internal("the daemon's actuals actor is not running".into()))?;
    Ok(page
        .partitions
        .into_iter()
        .map(|r| (r.partition.clone(), r))
        .collect())
}

/// What the daemon concluded before the retrain.
#[derive(Debug)]
pub struct Detection {
    /// Every store a drift record said was drifting.
    pub flagged: BTreeSet<String>,
    /// Every store's accuracy just before the retrain.
    pub before: HashMap<String, StoreReport>,
}

/// Once the actuals are scored: waits until the drift topic says of every store what the
/// daemon's table says (the records of the last verdicts may still be on their way), then
/// takes both.
pub async fn detect(brokers: &str, stats: &PipelineStats) -> Result<Detection> {
    let before = accuracy(stats).await?;
    let drifting: BTreeSet<&str> = before
        .values()
        .filter(|r| r.verdict == Verdict::Drifting.as_str())
        .map(|r| r.partition.as_str())
        .collect();
    let deadline = Instant::now() + PATIENCE;
    let records = loop {
        let records = {
            let brokers = brokers.to_owned();
            tokio::task::spawn_blocking(move || drift_records(&brokers))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??
        };
        let mut latest: BTreeMap<&str, &DriftRecord> = BTreeMap::new();
        for r in &records {
            latest.insert(&r.partition, r);
        }
        let written: BTreeSet<&str> = latest
            .values()
            .filter(|r| r.verdict == drift::Verdict::Drifting)
            .map(|r| r.partition.as_str())
            .collect();
        if written == drifting {
            break records;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                drifting = drifting.len(),
                written = written.len(),
                "the drift topic does not agree with the daemon's table"
            );
            break records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let flagged = records
        .into_iter()
        .filter(|r| r.verdict == drift::Verdict::Drifting)
        .map(|r| r.partition)
        .collect();
    Ok(Detection { flagged, before })
}

/// Every record on [`DRIFT`] now, in order (it has one Kafka partition).
fn drift_records(brokers: &str) -> Result<Vec<DriftRecord>> {
    let consumer = topic::consumer(&Connection::plain(brokers))?;
    let stretches = topic::stretches(&consumer, DRIFT, None)?;
    let mut records = Vec::new();
    topic::read(
        &consumer,
        DRIFT,
        &stretches,
        Duration::from_secs(10),
        &CancellationToken::new(),
        |m| {
            use rdkafka::Message;
            match DriftRecord::parse(m.payload().unwrap_or_default()) {
                Ok(r) => records.push(r),
                Err(why) => tracing::warn!(error = %why, "not a drift record"),
            }
        },
    )?;
    Ok(records)
}

/// Runs `retrain` once, as `manymodel retrain --config` would with [`retrain_config`].
pub async fn retrain(brokers: &str, control_topic: &str) -> Result<RetrainReport> {
    let config = retrain_config(brokers, control_topic);
    tokio::task::spawn_blocking(move || crate::retrain::run(&config, &RetrainOptions::default()))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

/// The retrain and what became of its delta.
#[derive(Debug)]
pub struct Retrained {
    /// The run, or why it failed.
    pub run: Result<RetrainReport>,
    /// The delta's version, when one was published.
    pub delta: Option<String>,
    /// Whether the daemon swapped the delta in.
    pub swapped: bool,
}

/// The loop's section of the demo report.
pub struct LoopReport<'a> {
    /// The plan.
    pub plan: Plan,
    /// All stores.
    pub stores: usize,
    /// The stores that changed behaviour (the generator's truth), sorted.
    pub shifted: &'a [String],
    /// Every store's noise sd: the floor of a correct model's RMSE.
    pub noise: &'a BTreeMap<String, f64>,
    /// What the daemon flagged.
    pub detection: &'a Detection,
    /// The retrain.
    pub retrained: &'a Retrained,
    /// Every store's accuracy at the end.
    pub after: &'a HashMap<String, StoreReport>,
    /// The shifted stores' predictions after their drift against the truth: by the models
    /// trained before it, and by the delta.
    pub stale: Errors,
    /// See `stale`.
    pub refit: Errors,
}

impl fmt::Display for LoopReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shifted: BTreeSet<&str> = self.shifted.iter().map(String::as_str).collect();
        let flagged = &self.detection.flagged;
        writeln!(
            f,
            "  accuracy loop ({} of {} stores change behaviour after event {}; retrain after event {}):",
            self.shifted.len(),
            self.stores,
            self.plan.drift.after,
            self.plan.retrain_at
        )?;
        let wrongly: Vec<&str> = flagged
            .iter()
            .map(String::as_str)
            .filter(|s| !shifted.contains(s))
            .collect();
        let missed: Vec<&str> = shifted
            .iter()
            .copied()
            .filter(|s| !flagged.contains(*s))
            .collect();
        let exact = wrongly.is_empty() && missed.is_empty();
        writeln!(
            f,
            "    drift detected on {}, exactly the shifted ones: {} ({} flagged{}{})",
            count(flagged.len(), "store"),
            if exact { "yes" } else { "no" },
            count(wrongly.len(), "stable store"),
            list(&wrongly),
            if missed.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} missed{}",
                    count(missed.len(), "shifted store"),
                    list(&missed)
                )
            }
        )?;
        let r = self.retrained;
        match &r.run {
            Err(e) => writeln!(f, "    retrain: failed: {e}")?,
            Ok(run) => {
                let kept = run.decisions.iter().filter(|d| d.kept()).count();
                let delta = match (&r.delta, r.swapped) {
                    (None, _) => "nothing published".to_owned(),
                    (Some(v), true) => format!("delta {v} published and swapped in"),
                    (Some(v), false) => {
                        format!("delta {v} published, not swapped in within 30 s (see the log)")
                    }
                };
                writeln!(
                    f,
                    "    retrain: {} refitted, {kept} kept, {} rejected in {:.2}s; {delta}",
                    run.decisions.len(),
                    run.decisions.len() - kept,
                    run.seconds
                )?;
            }
        }
        writeln!(
            f,
            "    {:<7} {:>6}   {:>19}   {:>10}   {:<8}  verdict now",
            "store", "noise", "RMSE before retrain", "RMSE after", "retrain"
        )?;
        let decisions: HashMap<&str, bool> = match &r.run {
            Ok(run) => run
                .decisions
                .iter()
                .map(|d| (d.partition.as_str(), d.kept()))
                .collect(),
            Err(_) => HashMap::new(),
        };
        let rmse = |reports: &HashMap<String, StoreReport>, id: &str| {
            reports
                .get(id)
                .map_or_else(|| "-".to_owned(), |r| format!("{:.2}", r.rmse))
        };
        for id in self.shifted {
            let outcome = match decisions.get(id.as_str()) {
                Some(true) => "kept",
                Some(false) => "rejected",
                None => "-",
            };
            writeln!(
                f,
                "    {:<7} {:>6}   {:>19}   {:>10}   {:<8}  {}",
                id,
                self.noise
                    .get(id)
                    .map_or_else(|| "-".to_owned(), |n| format!("{n:.2}")),
                rmse(&self.detection.before, id),
                rmse(self.after, id),
                outcome,
                self.after.get(id).map_or("-", |r| r.verdict.as_str()),
            )?;
        }
        writeln!(
            f,
            "    (RMSE against their actuals as the daemon keeps it, a moving average over about the last {}: before, by the models trained before the drift; after, by the refits alone)",
            actuals_config().window
        )?;
        // A refit's verdict waits for `min_actuals` actuals of its own; until then it stays
        // drifting, and a refit that is still off says so here.
        let recover = actuals_config().recover_ratio();
        let still: Vec<String> = self
            .shifted
            .iter()
            .filter(|id| decisions.get(id.as_str()) == Some(&true))
            .filter_map(|id| self.after.get(id))
            .filter(|r| r.verdict == Verdict::Drifting.as_str())
            .map(|r| {
                let expected = r.expected_rmse.unwrap_or(f64::NAN);
                format!(
                    "{} ({:.2} vs {recover:.2} × {expected:.2})",
                    r.partition, r.rmse
                )
            })
            .collect();
        if !still.is_empty() {
            writeln!(
                f,
                "    still drifting by the daemon's rule (not yet {} actuals since the swap, or recent RMSE > {recover:.2} × the RMSE expected on new data): {}",
                actuals_config().min_actuals,
                still.join(", ")
            )?;
        }
        if self.stale.n + self.refit.n > 0 {
            writeln!(
                f,
                "    their predictions after the drift against the generator's truth: RMSE {:.3} by the models trained before it ({} predictions), {:.3} by the refits ({} predictions)",
                self.stale.rmse(),
                self.stale.n,
                self.refit.rmse(),
                self.refit.n
            )?;
        }
        Ok(())
    }
}

/// `: a, b` for a few ids, nothing for none.
fn list(ids: &[&str]) -> String {
    match ids.len() {
        0 => String::new(),
        1..=8 => format!(": {}", ids.join(", ")),
        n => format!(": {}, ... ({} more)", ids[..8].join(", "), n - 8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_percent_of_the_stores_shift_and_at_least_one() {
        let p = Plan::new(200, 50_000);
        assert_eq!(p.shifted, 10);
        assert_eq!((p.drift.after, p.retrain_at), (5_000, 40_000));
        assert_eq!(
            (p.drift.fraction * 200.0).round() as usize,
            10,
            "the generator drifts as many"
        );
        let small = Plan::new(5, 100);
        assert_eq!(small.shifted, 1);
        assert_eq!((small.drift.fraction * 5.0).round() as usize, 1);
    }

    #[test]
    fn the_retrain_config_passes_the_checks_of_a_config_file() {
        let config = retrain_config("127.0.0.1:9092", "control");
        let text = toml::to_string(&config).unwrap();
        assert_eq!(RetrainConfig::parse(&text).unwrap(), config);
    }
}
