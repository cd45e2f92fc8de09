//! `manymodel retrain`: refit drifting stores on their recent actuals, keep the refits that
//! beat the active models, and publish them as a delta bundle.
//!
//! ```text
//!  drift topic | /partitions | --partitions ──▶ stores, each with the time its actuals start
//!  control topic (replayed as a restart does) | --bundle ──▶ the active bundle
//!  actuals topic (offsets_for_times .. end at start) ──▶ each store's newest actuals
//!        ▼ challenger: fit on the older part, judge both models on the newest part
//!  kept refits ──▶ delta bundle (base = active version) ──▶ publish (chunks, manifest, signed)
//! ```
//!
//! [`drift`] finds the drifting stores (drift records from a topic or a daemon's `/partitions`), [`active`] the bundle they are scored with,
//! [`actuals`] reads and encodes their actuals through the one feature encoder, and
//! [`challenger`] decides, with the fitting code of `train`. This module ties one run
//! together and reports it; [`watch`] runs rounds as drift records arrive.
//!
//! A run writes nothing but the delta (and `--output`): it never commits offsets, never joins
//! a consumer group and never changes the active version other than by publishing.

pub mod active;
pub mod actuals;
pub mod challenger;
pub mod config;
pub mod drift;
pub mod topic;
pub mod watch;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::control::publish::{publish_bytes, PublishOptions, Published};
use crate::control::signing::BundleSigner;
use crate::error::{Error, Result};
use crate::model::bundle::{Bundle, PartitionModel};
use crate::model::delta;
use crate::spec::ModelKind;
use crate::train::fit::{MethodParams, Structure};
use active::Found;
use actuals::{ActualsDecoder, StoreActuals, Wanted};
use challenger::{Champion, Outcome, Row, Rules};
pub use config::RetrainConfig;

/// What `retrain` was asked to do besides its config.
#[derive(Debug, Clone, Default)]
pub struct RetrainOptions {
    /// Refit these stores (their actuals of the last `[actuals] window_secs`) instead of the
    /// drifting ones.
    pub partitions: Vec<String>,
    /// Build on this full bundle instead of the control topic's active version (overrides
    /// `[model] bundle`).
    pub bundle: Option<PathBuf>,
    /// Also write the delta to this file.
    pub output: Option<PathBuf>,
    /// Decide and write `output`, but publish nothing.
    pub dry_run: bool,
    /// The delta's version; by default `<base>.r<UTC time>` (see [`next_version`]).
    pub version: Option<String>,
}

/// Why a store was refitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Its latest drift record says drifting, since this time (epoch ms).
    Drifting {
        /// `verdict_at_ms` of the drift record.
        verdict_at_ms: i64,
    },
    /// Named with `--partitions`.
    Listed,
}

/// What was decided for one store.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The store id.
    pub partition: String,
    /// Why it was looked at.
    pub origin: Origin,
    /// Usable actuals read (at most `recent`).
    pub actuals: usize,
    /// Actuals of the store in its time range that could not be used.
    pub unusable: u64,
    /// Of the actuals, how many were held out to judge.
    pub held_out: usize,
    /// History rows added to its training rows.
    pub history_rows: usize,
    /// The model it had: its own, the fallback, or none.
    pub champion: Champion,
    /// The champion's RMSE on the held-out actuals.
    pub champion_rmse: Option<f64>,
    /// The challenger's RMSE on them.
    pub challenger_rmse: Option<f64>,
    /// Kept (with its final fit) or rejected (with the reason).
    pub outcome: Outcome,
}

impl Decision {
    /// True when the refit goes into the delta.
    pub fn kept(&self) -> bool {
        matches!(self.outcome, Outcome::Kept { .. })
    }
}

/// The delta a run wrote.
#[derive(Debug, Clone)]
pub struct Delta {
    /// Its version.
    pub version: String,
    /// The version it builds on.
    pub base_version: String,
    /// The stores it replaces.
    pub partitions: usize,
    /// Where it was written (`--output`).
    pub output: Option<PathBuf>,
}

/// What a run did.
#[derive(Debug)]
pub struct RetrainReport {
    /// The active version the run built on.
    pub base_version: String,
    /// Where that version was found.
    pub base: Found,
    /// One per store looked at, sorted by id.
    pub decisions: Vec<Decision>,
    /// The delta, when a challenger was kept.
    pub delta: Option<Delta>,
    /// The publish, unless nothing was kept or `--dry-run`.
    pub published: Option<Published>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// The bundle the daemons serve once the delta is active (the base, with the kept models).
    pub merged: Option<Arc<Bundle>>,
    /// Wall time.
    pub seconds: f64,
}

/// Runs once: finds the stores, refits, publishes.
pub fn run(config: &RetrainConfig, opts: &RetrainOptions) -> Result<RetrainReport> {
    run_until(config, opts, &CancellationToken::new())
}

/// [`run`], stopped early (with an error) when `cancel` fires.
pub fn run_until(
    config: &RetrainConfig,
    opts: &RetrainOptions,
    cancel: &CancellationToken,
) -> Result<RetrainReport> {
    let started = Instant::now();
    let signer = signer(config, opts.dry_run)?;
    let stores = select(config, opts, cancel)?;
    let file = opts.bundle.as_deref().or(config.model.bundle.as_deref());
    let (active, found) = active::active_bundle(config, file, cancel)?;
    tracing::info!(version = %active.version, from = %found, stores = stores.len(), "building on the active version");
    let refits = refit(config, &active, &stores, cancel)?;
    let (decisions, kept): (Vec<Decision>, Vec<Option<PartitionModel>>) =
        refits.into_iter().unzip();
    let kept: Vec<PartitionModel> = kept.into_iter().flatten().collect();
    let delivered = deliver(config, opts, &active, kept, signer.as_ref())?;
    Ok(RetrainReport::new(
        &active, found, decisions, delivered, opts, started,
    ))
}

/// The signing key, loaded before any work so that a wrong path fails at once.
fn signer(config: &RetrainConfig, dry_run: bool) -> Result<Option<BundleSigner>> {
    match (&config.publish.signing_key, dry_run) {
        (Some(path), false) => BundleSigner::load(path).map(Some),
        _ => Ok(None),
    }
}

/// The stores to refit: `--partitions`, else the drifting ones of the source.
fn select(
    config: &RetrainConfig,
    opts: &RetrainOptions,
    cancel: &CancellationToken,
) -> Result<Vec<(Wanted, Origin)>> {
    let now = crate::clock::now_ms();
    if !opts.partitions.is_empty() {
        let since_ms = now.saturating_sub(secs_to_ms(config.actuals.window_secs));
        let mut ids: Vec<&String> = opts.partitions.iter().collect();
        ids.sort();
        ids.dedup();
        return Ok(ids
            .into_iter()
            .map(|p| {
                let wanted = Wanted {
                    partition: p.clone(),
                    since_ms,
                };
                (wanted, Origin::Listed)
            })
            .collect());
    }
    let drifting = match (&config.source.drift_topic, &config.source.partitions_url) {
        (Some(topic), _) => {
            let patience = Duration::from_secs(config.actuals.read_timeout_secs);
            drift::DriftTopic::read(&config.connection(), topic, patience, cancel)?
                .state
                .drifting()
        }
        (None, Some(url)) => {
            drift::PartitionsUrl::new(url)?.drifting(config.source.partitions_limit)?
        }
        (None, None) => {
            return Err(Error::Usage(
                "nothing to retrain: set [source] drift_topic or partitions_url in the config, or name stores with --partitions".into(),
            ))
        }
    };
    Ok(drifting
        .into_iter()
        .map(|d| wanted_since_drift(config, d))
        .collect())
}

/// A drifting store's actuals start at its verdict, less the lookback.
fn wanted_since_drift(config: &RetrainConfig, d: drift::Drifting) -> (Wanted, Origin) {
    let since_ms = d
        .verdict_at_ms
        .saturating_sub(secs_to_ms(config.actuals.lookback_secs));
    let origin = Origin::Drifting {
        verdict_at_ms: d.verdict_at_ms,
    };
    (
        Wanted {
            partition: d.partition,
            since_ms,
        },
        origin,
    )
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Reads the stores' actuals and judges each: a decision per store (sorted by id), with the
/// model for the delta when kept.
fn refit(
    config: &RetrainConfig,
    active: &Bundle,
    stores: &[(Wanted, Origin)],
    cancel: &CancellationToken,
) -> Result<Vec<(Decision, Option<PartitionModel>)>> {
    if stores.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: Vec<Wanted> = stores.iter().map(|(w, _)| w.clone()).collect();
    let read = read_actuals(config, active, &wanted, cancel)?;
    judge(config, active, stores, read)
}

/// The actuals of `wanted`, encoded for `active`'s spec.
fn read_actuals(
    config: &RetrainConfig,
    active: &Bundle,
    wanted: &[Wanted],
    cancel: &CancellationToken,
) -> Result<HashMap<String, StoreActuals>> {
    let spec = &active.spec;
    if spec.model == ModelKind::Imported {
        return Err(Error::Usage(format!(
            "the active version {} holds imported models; retrain refits only bundles trained by `manymodel train` (model = \"linear\" or \"ridge\")",
            active.version
        )));
    }
    let decoder = ActualsDecoder::new(spec).map_err(|e| Error::Bundle {
        path: active.version.clone(),
        reason: e.to_string(),
    })?;
    let consumer = topic::consumer(&config.connection())?;
    actuals::read(
        &consumer,
        &config.kafka.actuals_topic,
        wanted,
        &decoder,
        config.actuals.recent,
        Duration::from_secs(config.actuals.read_timeout_secs),
        cancel,
    )
}

/// Champion against challenger for each store whose actuals were read.
fn judge(
    config: &RetrainConfig,
    active: &Bundle,
    stores: &[(Wanted, Origin)],
    mut read: HashMap<String, StoreActuals>,
) -> Result<Vec<(Decision, Option<PartitionModel>)>> {
    let spec = &active.spec;
    let method = linfa::ParamGuard::check(MethodParams::from_spec(spec.model, spec.alpha))
        .map_err(|e| Error::Usage(format!("the active version {}: {e}", active.version)))?;
    let encoder = active.encoder();
    let rules = Rules {
        method,
        structure: Structure {
            groups: encoder.indicator_groups(),
        },
        width: encoder.width(),
        min_rows: spec.min_rows,
        min_actuals: config.actuals.min_actuals,
        holdout: config.challenger.holdout,
        margin: config.challenger.margin,
    };
    let ids: Vec<&str> = stores.iter().map(|(w, _)| w.partition.as_str()).collect();
    let mut history = history_rows(config, active, &ids)?;
    let mut out = Vec::with_capacity(stores.len());
    for (wanted, origin) in stores {
        let id = wanted.partition.as_str();
        let store = read.remove(id).unwrap_or_default();
        let rows = history.remove(id).unwrap_or_default();
        let champion = match (active.partition(id), active.fallback_model()) {
            (Some(own), _) => Some((&own.model, Champion::Own)),
            (None, Some(fallback)) => Some((&fallback.model, Champion::Fallback)),
            (None, None) => None,
        };
        let e = challenger::evaluate(id, &store.actuals, &rows, champion, &rules);
        let decision = Decision {
            partition: id.to_owned(),
            origin: *origin,
            actuals: store.actuals.len(),
            unusable: store.unusable,
            held_out: e.held_out,
            history_rows: rows.len(),
            champion: e.champion,
            champion_rmse: e.champion_rmse,
            challenger_rmse: e.challenger_rmse,
            outcome: e.outcome,
        };
        log(&decision, store.first_error.as_deref());
        out.push((decision, e.model));
    }
    out.sort_by(|a, b| a.0.partition.cmp(&b.0.partition));
    Ok(out)
}

fn log(d: &Decision, first_error: Option<&str>) {
    let decision = match &d.outcome {
        Outcome::Kept { .. } => "kept".to_owned(),
        Outcome::Rejected(why) => format!("rejected: {why}"),
    };
    tracing::info!(
        partition = %d.partition,
        actuals = d.actuals,
        unusable = d.unusable,
        history_rows = d.history_rows,
        champion = d.champion.as_str(),
        champion_rmse = ?d.champion_rmse,
        challenger_rmse = ?d.challenger_rmse,
        decision,
        first_unusable = first_error,
        "store judged"
    );
}

/// Each store's rows from `[actuals] history`, the last `history_rows` of them.
fn history_rows(
    config: &RetrainConfig,
    active: &Bundle,
    ids: &[&str],
) -> Result<HashMap<String, Vec<Row>>> {
    let Some(path) = &config.actuals.history else {
        return Ok(HashMap::new());
    };
    let history = crate::train::history::read(path, &active.spec, false, &|_| {})?;
    if history.encoder.names() != active.encoder().names() {
        return Err(Error::Usage(format!(
            "[actuals] history {}: its inputs differ from the active version {}'s",
            path.display(),
            active.version
        )));
    }
    let width = history.encoder.width();
    let mut out = HashMap::new();
    for id in ids {
        let Some(k) = history.find(id) else { continue };
        let range = history.rows(k);
        let take = config.actuals.history_rows.unwrap_or(usize::MAX);
        let first = range.end - range.len().min(take);
        let rows: Vec<Row> = (first..range.end)
            .map(|row| {
                let mut x = vec![0.0; width];
                history.columns.encode(&history.encoder, row, &mut x);
                (x, history.columns.target[row])
            })
            .collect();
        out.insert((*id).to_owned(), rows);
    }
    Ok(out)
}

/// What [`deliver`] made.
struct Delivered {
    delta: Delta,
    merged: Arc<Bundle>,
    published: Option<Published>,
}

impl RetrainReport {
    /// The report of a run on `active` that began at `started`.
    fn new(
        active: &Bundle,
        base: Found,
        decisions: Vec<Decision>,
        delivered: Option<Delivered>,
        opts: &RetrainOptions,
        started: Instant,
    ) -> Self {
        RetrainReport {
            base_version: active.version.clone(),
            base,
            decisions,
            delta: delivered.as_ref().map(|d| d.delta.clone()),
            merged: delivered.as_ref().map(|d| d.merged.clone()),
            published: delivered.and_then(|d| d.published),
            dry_run: opts.dry_run,
            seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// Builds the delta of the kept models on `active`, checks that it applies, writes it
/// (`--output`) and publishes it (unless `--dry-run`); nothing when nothing was kept.
fn deliver(
    config: &RetrainConfig,
    opts: &RetrainOptions,
    active: &Bundle,
    kept: Vec<PartitionModel>,
    signer: Option<&BundleSigner>,
) -> Result<Option<Delivered>> {
    if kept.is_empty() {
        tracing::info!("no challenger kept: nothing to publish");
        return Ok(None);
    }
    let version = opts
        .version
        .clone()
        .unwrap_or_else(|| next_version(&active.version, chrono::Utc::now()));
    let partitions = kept.len();
    let rows: u64 = kept.iter().map(|m| m.rows).sum();
    let bad = |e: crate::error::BundleError| Error::Internal(format!("the delta {version}: {e}"));
    // As `train --base` writes one: the base's spec and fallback, the refitted stores only.
    let delta = Bundle::assemble(
        version.clone(),
        Some(active.version.clone()),
        crate::clock::now_ms(),
        active.spec.clone(),
        (rows, 0),
        active.fallback_model().cloned(),
        kept,
    )
    .map_err(bad)?;
    // What every daemon will build and try before swapping it in.
    let merged = delta::apply(active, &delta).map_err(bad)?;
    crate::control::validate::trial(&merged)
        .map_err(|r| Error::Internal(format!("the delta {version} fails its trial: {r}")))?;
    let bytes = delta.to_avro()?;
    if let Some(path) = &opts.output {
        std::fs::write(path, &bytes).map_err(|e| Error::io(path, e))?;
    }
    let published = if opts.dry_run {
        None
    } else {
        let options = PublishOptions {
            bundle: opts
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("<delta {version}>"))),
            connection: config.connection(),
            control_topic: config.kafka.control_topic.clone(),
            signing_key: config.publish.signing_key.clone(),
            chunk_bytes: config.publish.chunk_bytes,
            activate: config.publish.activate,
        };
        let published = publish_bytes(&bytes, &options, signer)?;
        tracing::info!(%version, base = %active.version, partitions, signed = signer.is_some(), "delta published");
        Some(published)
    };
    Ok(Some(Delivered {
        delta: Delta {
            version,
            base_version: active.version.clone(),
            partitions,
            output: opts.output.clone(),
        },
        merged: Arc::new(merged),
        published,
    }))
}

/// The version of a delta of `base` made at `now`: `<root>.r<UTC time to the millisecond>`,
/// where `root` is `base` without an earlier retrain's suffix, so repeated retrains do not
/// grow the name (the manifest's `base_version` keeps the lineage).
pub fn next_version(base: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    let root = match base.rfind(".r") {
        Some(i) if is_stamp(&base[i + 2..]) => &base[..i],
        _ => base,
    };
    format!("{root}.r{}", now.format("%Y%m%dT%H%M%S%3fZ"))
}

/// `YYYYMMDDTHHMMSSmmmZ`.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b[8] == b'T'
        && b[18] == b'Z'
        && b[..8].iter().chain(&b[9..18]).all(u8::is_ascii_digit)
}

fn number(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.4}"))
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decision = match &self.outcome {
            Outcome::Kept {
                rows,
                training_rmse,
            } => format!("kept: refitted on all {rows} rows, training RMSE {training_rmse:.4}"),
            Outcome::Rejected(why) => format!("rejected: {why}"),
        };
        let unusable = match self.unusable {
            0 => String::new(),
            n => format!(" ({n} records not usable as actuals: see the log)"),
        };
        write!(
            f,
            "{:<16} {:>7} {:<8} {:>14} {:>15}  {decision}{unusable}",
            self.partition,
            self.actuals,
            self.champion.as_str(),
            number(self.champion_rmse),
            number(self.challenger_rmse),
        )
    }
}

impl fmt::Display for RetrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = self.decisions.iter().filter(|d| d.kept()).count();
        writeln!(
            f,
            "retrain on {} ({}): {}, {kept} kept, {} rejected ({:.2}s)",
            self.base_version,
            self.base,
            crate::plural::count(self.decisions.len(), "store"),
            self.decisions.len() - kept,
            self.seconds
        )?;
        if !self.decisions.is_empty() {
            writeln!(
                f,
                "{:<16} {:>7} {:<8} {:>14} {:>15}  decision",
                "partition", "actuals", "champion", "champion_rmse", "challenger_rmse"
            )?;
            for d in &self.decisions {
                writeln!(f, "{d}")?;
            }
        }
        match (&self.delta, &self.published) {
            (None, _) => writeln!(f, "nothing to publish: no challenger was kept")?,
            (Some(d), Some(p)) => {
                write!(f, "{p}")?;
                if let Some(out) = &d.output {
                    writeln!(f, "delta {} also written to {}", d.version, out.display())?;
                }
            }
            (Some(d), None) => writeln!(
                f,
                "dry run: delta {} of {} ({}) not published{}",
                d.version,
                d.base_version,
                crate::plural::count(d.partitions, "partition"),
                d.output
                    .as_ref()
                    .map(|o| format!("; written to {}", o.display()))
                    .unwrap_or_else(|| "; give --output to keep it".into())
            )?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_name_their_root_once_and_the_time_to_the_millisecond() {
        let now = chrono::DateTime::from_timestamp_millis(1_764_650_000_123).unwrap();
        let v = next_version("v1", now);
        assert_eq!(v, "v1.r20251202T043320123Z");
        assert_eq!(next_version(&v, now), v, "an earlier suffix is replaced");
        assert_eq!(next_version("a.rb", now), "a.rb.r20251202T043320123Z");
    }
}
