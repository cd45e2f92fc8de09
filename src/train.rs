//! `manymodel train`: fit one model per partition and a global fallback, write a bundle.
//!
//! The history is read and encoded by [`history`], the fits run on every core with rayon
//! (a progress bar on a terminal), and [`fit`] solves each one. Partitions below `min_rows` get
//! no model of their own; their rows still train the fallback.
//!
//! With a base bundle the run writes a delta ([`crate::model::delta`]): only the partitions
//! asked for (or found in the history) are refitted, with the base's spec, and the fallback is
//! the base's.

pub mod fit;
pub mod history;

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::bundle::{Bundle, PartitionModel, FALLBACK_ID};
use crate::model::delta;
use crate::model::Model;
use crate::spec::TrainSpec;
use fit::{fit, Method};
use history::{PartitionRows, Rejections};

/// What `train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The spec file.
    pub spec: PathBuf,
    /// The history CSV.
    pub input: PathBuf,
    /// Where to write the bundle.
    pub output: PathBuf,
    /// The bundle version; a UTC timestamp when absent.
    pub version: Option<String>,
    /// Make the first bad row fatal.
    pub strict: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Write a delta of this bundle instead of a full bundle.
    pub base: Option<PathBuf>,
    /// With `base`: the partitions to refit; empty means every partition in the history.
    pub partitions: Vec<String>,
}

/// A partition that got no model of its own, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// The partition id.
    pub partition: String,
    /// Its usable rows.
    pub rows: usize,
    /// Why it was skipped.
    pub reason: String,
}

/// What a training run did, printed as its summary.
#[derive(Debug)]
pub struct TrainReport {
    /// The bundle written.
    pub bundle: Bundle,
    /// Where.
    pub output: PathBuf,
    /// Partitions left to the fallback.
    pub skipped: Vec<Skipped>,
    /// Rejected history rows.
    pub rejected: Rejections,
    /// Wall time.
    pub seconds: f64,
}

/// The default version: the current UTC time, e.g. `20261125T081500Z`.
pub fn default_version() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// Runs a training job.
pub fn run(opts: &TrainOptions) -> Result<TrainReport> {
    let started = Instant::now();
    let requested = TrainSpec::load(&opts.spec)?;
    let base = opts.base.as_deref().map(Bundle::read).transpose()?;
    let spec = match &base {
        None => requested,
        Some(b) if delta::is_delta(b) => {
            return Err(Error::Usage(format!(
                "--base {} is itself a delta of {}; train deltas on a full bundle",
                b.version,
                b.base_version.as_deref().unwrap_or("?")
            )))
        }
        Some(b) => delta::training_spec(&requested, b).map_err(Error::Usage)?,
    };
    let history = history::read(&opts.input, &spec, opts.strict)?;
    let width = history.encoder.width();
    let method = Method::from_spec(history.spec.model, history.spec.alpha);

    let mut ids: Vec<&String> = if opts.partitions.is_empty() {
        history.partitions.keys().collect()
    } else {
        let mut ids = Vec::with_capacity(opts.partitions.len());
        for id in &opts.partitions {
            match history.partitions.get_key_value(id) {
                Some((k, _)) => ids.push(k),
                None => {
                    return Err(Error::Usage(format!(
                        "--partitions names {id:?}, which has no rows in {}",
                        opts.input.display()
                    )))
                }
            }
        }
        ids.dedup();
        ids
    };
    ids.sort();
    ids.dedup();
    let (eligible, small): (Vec<&String>, Vec<&String>) = ids
        .into_iter()
        .partition(|id| history.partitions[*id].len() as u64 >= history.spec.min_rows);

    let bar = if opts.progress {
        ProgressBar::new(eligible.len() as u64 + 1)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} fitting {pos}/{len} partitions [{bar:30}] {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );

    let fit_one = |id: &str, rows: &PartitionRows| -> std::result::Result<PartitionModel, String> {
        let x = ArrayView2::from_shape((rows.len(), width), &rows.x).map_err(|e| e.to_string())?;
        let y = ArrayView1::from(&rows.y);
        let fitted = fit(x, y, method).map_err(|e| e.to_string())?;
        Ok(PartitionModel {
            partition: id.to_owned(),
            rows: rows.len() as u64,
            rmse: fitted.rmse,
            model: Model::Linear(fitted.model),
        })
    };

    let results: Vec<(String, std::result::Result<PartitionModel, String>)> = eligible
        .par_iter()
        .map(|id| {
            let r = fit_one(id, &history.partitions[*id]);
            bar.inc(1);
            ((*id).clone(), r)
        })
        .collect();

    let fallback = match &base {
        // A delta keeps its base's fallback: it was fitted on every store's rows.
        Some(b) => b.fallback_model().cloned(),
        None => Some({
            let mut all = PartitionRows::default();
            for rows in history.partitions.values() {
                all.x.extend_from_slice(&rows.x);
                all.y.extend_from_slice(&rows.y);
            }
            fit_one(FALLBACK_ID, &all).map_err(|e| {
                Error::Usage(format!(
                    "the fallback model cannot be fitted on {} rows: {e}",
                    all.len()
                ))
            })?
        }),
    };
    bar.inc(1);
    bar.finish_and_clear();

    let mut skipped: Vec<Skipped> = small
        .into_iter()
        .map(|id| Skipped {
            partition: id.clone(),
            rows: history.partitions[id].len(),
            reason: match &base {
                None => format!("fewer than min_rows = {}", history.spec.min_rows),
                Some(b) => format!(
                    "fewer than min_rows = {}; keeps its model from {}",
                    history.spec.min_rows, b.version
                ),
            },
        })
        .collect();
    let mut models = Vec::with_capacity(results.len());
    for (id, r) in results {
        match r {
            Ok(m) => models.push(m),
            Err(reason) => skipped.push(Skipped {
                rows: history.partitions[&id].len(),
                partition: id,
                reason,
            }),
        }
    }

    if base.is_some() && models.is_empty() {
        return Err(Error::Usage(
            "the delta would replace no partition: every partition asked for was skipped (see min_rows)".into(),
        ));
    }
    let bundle = Bundle::assemble(
        opts.version.clone().unwrap_or_else(default_version),
        base.as_ref().map(|b| b.version.clone()),
        chrono::Utc::now().timestamp_millis(),
        history.spec,
        (history.rows_used, history.rejected.count),
        fallback,
        models,
    )
    .map_err(|e| Error::Usage(e.to_string()))?;
    bundle.write(&opts.output)?;
    Ok(TrainReport {
        bundle,
        output: opts.output.clone(),
        skipped,
        rejected: history.rejected,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Min, median and max of a list of numbers.
pub fn spread(values: &mut [f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    Some((
        values[0],
        values[values.len() / 2],
        values[values.len() - 1],
    ))
}

impl fmt::Display for TrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bundle;
        match &b.base_version {
            None => writeln!(f, "bundle {} written to {}", b.version, self.output.display())?,
            Some(base) => writeln!(
                f,
                "delta bundle {} of base {base} written to {}: replaces {} partitions, keeps the rest and the fallback from {base}",
                b.version,
                self.output.display(),
                b.partitions.len()
            )?,
        }
        writeln!(
            f,
            "  partitions fitted: {}   skipped: {}   inputs per model: {}   ({:.2}s)",
            b.partitions.len(),
            self.skipped.len(),
            b.encoder().width(),
            self.seconds
        )?;
        writeln!(
            f,
            "  rows used: {}   rows rejected: {}",
            b.rows_used, self.rejected.count
        )?;
        let mut rmse: Vec<f64> = b.partitions.iter().map(|m| m.rmse).collect();
        if let Some((lo, mid, hi)) = spread(&mut rmse) {
            writeln!(
                f,
                "  in-sample RMSE per partition: min {lo:.4}  median {mid:.4}  max {hi:.4}"
            )?;
        }
        writeln!(
            f,
            "  fallback: {} rows, in-sample RMSE {:.4}",
            b.fallback.rows, b.fallback.rmse
        )?;
        for s in self.skipped.iter().take(10) {
            writeln!(
                f,
                "  skipped {:?}: {} rows, {}",
                s.partition, s.rows, s.reason
            )?;
        }
        if self.skipped.len() > 10 {
            writeln!(f, "  ... and {} more skipped", self.skipped.len() - 10)?;
        }
        if self.rejected.count > 0 {
            let mut kinds: Vec<_> = self.rejected.by_kind.iter().collect();
            kinds.sort();
            let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            writeln!(f, "  rejected rows by reason: {}", kinds.join(", "))?;
            for (line, e) in &self.rejected.examples {
                writeln!(f, "    line {line}: {e}")?;
            }
        }
        Ok(())
    }
}
