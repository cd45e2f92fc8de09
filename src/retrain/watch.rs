//! `manymodel retrain --watch`: a daemon that retrains drifting stores as drift records
//! arrive.
//!
//! The drift topic is read from its beginning to its end at start (its latest record per
//! store is the store's state, so stores already drifting are seen), then followed; no
//! consumer group, no commits: a restart reads the state again. With `partitions_url` the
//! daemon's `/partitions` is asked every `check_secs` instead.
//!
//! Every `check_secs`, and at once when the set of drifting stores changes, the drifting
//! stores out of their cooldown are checked: their post-drift actuals are read, and those
//! with `min_actuals` of them are refitted in one round, which publishes one delta for the
//! stores kept. A store short of actuals waits (it is checked again at the next check); a
//! store refitted, kept or rejected, is not refitted again for `cooldown_secs`. The cooldown
//! is held in memory: a restart forgets it.
//!
//! A round that fails (the broker away, a publish refused) is logged and tried again at the
//! next check; a malformed drift record is logged and skipped. SIGINT or SIGTERM (through
//! `cancel`) ends the loop between two polls, and a round under way at its next read.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::active::{self, Found};
use super::actuals::Wanted;
use super::config::RetrainConfig;
use super::drift::{DriftTopic, Drifting, PartitionsUrl};
use super::{deliver, judge, read_actuals, signer, wanted_since_drift, Origin};
use super::{RetrainOptions, RetrainReport};
use crate::control::signing::BundleSigner;
use crate::error::{Error, Result};
use crate::model::bundle::Bundle;

/// Where drifting stores come from while watching.
enum Source {
    /// Followed record by record.
    Topic(DriftTopic),
    /// Asked at every check.
    Url(PartitionsUrl),
}

/// The active bundle as the watcher knows it.
struct Known {
    /// The bundle to decode actuals with and, from a file, to build on.
    bundle: Option<Arc<Bundle>>,
    /// The bundle file named instead of the control topic; after a publish the bundle above
    /// is the delta applied to it.
    file: Option<std::path::PathBuf>,
}

/// Watches until `cancel`; each round's report is written to `out`.
pub fn watch(
    config: &RetrainConfig,
    opts: &RetrainOptions,
    cancel: &CancellationToken,
    out: &mut dyn Write,
) -> Result<()> {
    if !opts.partitions.is_empty() || opts.version.is_some() {
        return Err(Error::Usage(
            "--watch retrains the drifting stores under versions of its own: --partitions and --version are for a single run".into(),
        ));
    }
    let signer = signer(config, opts.dry_run)?;
    let patience = Duration::from_secs(config.actuals.read_timeout_secs);
    let mut source = match (&config.source.drift_topic, &config.source.partitions_url) {
        (Some(topic), _) => Source::Topic(DriftTopic::read(
            &config.connection(),
            topic,
            patience,
            cancel,
        )?),
        (None, Some(url)) => Source::Url(PartitionsUrl::new(url)?),
        (None, None) => {
            return Err(Error::Usage(
                "--watch needs [source] drift_topic or partitions_url in the config".into(),
            ))
        }
    };
    let file = opts.bundle.clone().or_else(|| config.model.bundle.clone());
    let mut known = Known {
        bundle: None,
        file: file.clone(),
    };
    if let Some(path) = &file {
        known.bundle = Some(active::active_bundle(config, Some(path), cancel)?.0);
    }
    let cooldown = Duration::from_secs(config.watch.cooldown_secs);
    let check = Duration::from_secs(config.watch.check_secs);
    let mut refitted: HashMap<String, Instant> = HashMap::new();
    let mut seen: HashSet<(String, i64)> = HashSet::new();
    let mut next_check = Instant::now();
    tracing::info!(
        cooldown_secs = config.watch.cooldown_secs,
        check_secs = config.watch.check_secs,
        "watching for drifting stores"
    );
    while !cancel.is_cancelled() {
        let drifting = match &mut source {
            Source::Topic(t) => {
                t.follow(Duration::from_millis(500));
                let drifting = t.state.drifting();
                let now: HashSet<(String, i64)> = drifting
                    .iter()
                    .map(|d| (d.partition.clone(), d.verdict_at_ms))
                    .collect();
                if now != seen {
                    // A store started (or stopped) drifting: look now, not at the next check.
                    seen = now;
                    next_check = Instant::now();
                }
                if Instant::now() < next_check {
                    continue;
                }
                drifting
            }
            Source::Url(u) => {
                if Instant::now() < next_check {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                match u.drifting(config.source.partitions_limit) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list the drifting stores; asking again at the next check");
                        next_check = Instant::now() + check;
                        continue;
                    }
                }
            }
        };
        next_check = Instant::now() + check;
        let due: Vec<(Wanted, Origin)> = drifting
            .into_iter()
            .filter(|d: &Drifting| {
                refitted
                    .get(&d.partition)
                    .is_none_or(|at| at.elapsed() >= cooldown)
            })
            .map(|d| wanted_since_drift(config, d))
            .collect();
        if due.is_empty() {
            continue;
        }
        match round(config, opts, &mut known, &due, signer.as_ref(), cancel) {
            Ok(None) => {}
            Ok(Some(report)) => {
                for d in &report.decisions {
                    refitted.insert(d.partition.clone(), Instant::now());
                }
                let _ = write!(out, "{report}");
                let _ = out.flush();
            }
            Err(_) if cancel.is_cancelled() => break,
            Err(e) => {
                tracing::error!(error = %e, "retrain round failed; trying again at the next check")
            }
        }
    }
    tracing::info!("retrain --watch stopped");
    Ok(())
}

/// One round over the `due` stores: `None` when none has enough actuals yet.
fn round(
    config: &RetrainConfig,
    opts: &RetrainOptions,
    known: &mut Known,
    due: &[(Wanted, Origin)],
    signer: Option<&BundleSigner>,
    cancel: &CancellationToken,
) -> Result<Option<RetrainReport>> {
    let started = Instant::now();
    // Actuals are decoded with the bundle known; the control topic is replayed only when a
    // store is ready, so waiting stores cost one read of the actuals per check.
    let decoding = match &known.bundle {
        Some(b) => b.clone(),
        None => {
            let (b, _) = active::active_bundle(config, None, cancel)?;
            known.bundle = Some(b.clone());
            b
        }
    };
    let wanted: Vec<Wanted> = due.iter().map(|(w, _)| w.clone()).collect();
    let mut read = read_actuals(config, &decoding, &wanted, cancel)?;
    let min = config.actuals.min_actuals;
    let (ready, waiting): (Vec<_>, Vec<_>) = due.iter().cloned().partition(|(w, _)| {
        read.get(&w.partition)
            .is_some_and(|s| s.actuals.len() >= min)
    });
    for (w, _) in &waiting {
        let have = read.get(&w.partition).map_or(0, |s| s.actuals.len());
        tracing::debug!(partition = %w.partition, have, need = min, "waiting for post-drift actuals");
    }
    if ready.is_empty() {
        return Ok(None);
    }
    let (active, found) = match &known.file {
        Some(path) => (decoding.clone(), Found::File(path.clone())),
        None => active::active_bundle(config, None, cancel)?,
    };
    let same_inputs = active.encoder().names() == decoding.encoder().names()
        && active.spec.partition_column == decoding.spec.partition_column
        && active.spec.target == decoding.spec.target;
    if !same_inputs {
        let wanted: Vec<Wanted> = ready.iter().map(|(w, _)| w.clone()).collect();
        read = read_actuals(config, &active, &wanted, cancel)?;
    }
    known.bundle = Some(active.clone());
    let refits = judge(config, &active, &ready, read)?;
    let (decisions, kept): (Vec<_>, Vec<_>) = refits.into_iter().unzip();
    let kept = kept.into_iter().flatten().collect();
    let delivered = deliver(config, opts, &active, kept, signer)?;
    if let Some(d) = delivered.as_ref().filter(|d| d.published.is_some()) {
        // What the daemons hold once it is active: the next delta builds on it.
        known.bundle = Some(d.merged.clone());
    }
    Ok(Some(RetrainReport::new(
        &active, found, decisions, delivered, opts, started,
    )))
}
