//! `manymodel train`: fit one model per partition and a global fallback, write a bundle.
//!
//! The history (CSV, or Parquet through [`parquet`]) is read and encoded by [`history`] (CSV
//! line numbers by `csv_lines`), the fits run on every core with rayon
//! (a progress bar on a terminal), and [`fit`] solves each one. Partitions below `min_rows` get
//! no model of their own; their rows still train the fallback.
//!
//! With a base bundle the run writes a delta ([`crate::model::delta`]): only the partitions
//! asked for (or found in the history) are refitted, with the base's spec, and the fallback is
//! the base's.

mod csv_lines;
pub mod fit;
pub mod history;
mod linalg;
pub mod parquet;
pub mod pooled;

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::bundle::{Bundle, PartitionModel, FALLBACK_ID};
use crate::model::delta;
use crate::model::Model;
use crate::spec::TrainSpec;
use fit::{fit_rows, MethodParams, Structure, Workspace};
use history::Rejections;
use pooled::Pooled;

/// What `train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The spec file.
    pub spec: PathBuf,
    /// The history: CSV, or Parquet when named `*.parquet`.
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
    let reading = if opts.progress {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::hidden()
    };
    reading.set_style(
        ProgressStyle::with_template("{spinner} reading {human_pos} rows ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let history = history::read(&opts.input, &spec, opts.strict, &|rows| {
        reading.set_position(rows)
    })?;
    reading.finish_and_clear();
    let width = history.encoder.width();
    let method = linfa::ParamGuard::check(MethodParams::from_spec(
        history.spec.model,
        history.spec.alpha,
    ))
    .map_err(|e| Error::Usage(format!("{}: {e}", opts.spec.display())))?;
    let structure = Structure {
        groups: history.encoder.indicator_groups(),
    };

    let mut selected: Vec<usize> = if opts.partitions.is_empty() {
        (0..history.ids.len()).collect()
    } else {
        let mut ks = Vec::with_capacity(opts.partitions.len());
        for id in &opts.partitions {
            match history.find(id) {
                Some(k) => ks.push(k),
                None => {
                    return Err(Error::Usage(format!(
                        "--partitions names {id:?}, which has no rows in {}",
                        opts.input.display()
                    )))
                }
            }
        }
        ks
    };
    selected.sort_unstable();
    selected.dedup();
    let min_rows = history.spec.min_rows;
    let eligible = |k: usize| history.rows(k).len() as u64 >= min_rows;
    let small: Vec<usize> = selected.iter().copied().filter(|&k| !eligible(k)).collect();
    let fitting = selected.len() - small.len();

    let bar = if opts.progress {
        ProgressBar::new(fitting as u64 + 1)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} fitting {pos}/{len} partitions [{bar:30}] {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );

    // Every store's rows are encoded into a reused buffer, fitted, and pooled for the
    // fallback; no store's encoded design outlives its fit.
    let pool = base.is_none();
    let group_bits = match structure.groups.len() {
        g if g >= 64 => u64::MAX,
        g => (1u64 << g) - 1,
    };
    let load = |ws: &mut Workspace, k: usize| -> (usize, u64) {
        let rows = history.rows(k);
        let n = rows.len();
        ws.x.resize(n * width, 0.0);
        ws.y.clear();
        ws.y.extend_from_slice(&history.columns.target[rows.clone()]);
        let mut exact = group_bits;
        for (i, row) in rows.enumerate() {
            exact &= history.columns.encode(
                &history.encoder,
                row,
                &mut ws.x[i * width..(i + 1) * width],
            );
        }
        (n, exact)
    };
    type Fits = Vec<(usize, std::result::Result<fit::Fitted, String>)>;
    let (results, pooled): (Fits, Pooled) = (0..history.ids.len())
        .into_par_iter()
        .filter(|&k| pool || selected.binary_search(&k).is_ok())
        .fold(
            || (Workspace::default(), Vec::new(), Pooled::new(width)),
            |(mut ws, mut out, mut pooled), k| {
                let (n, exact) = load(&mut ws, k);
                if selected.binary_search(&k).is_ok() && eligible(k) {
                    let r = fit_rows(&mut ws, n, width, &structure, exact, method);
                    out.push((k, r.map_err(|e| e.to_string())));
                    bar.inc(1);
                } else {
                    fit::prepare(&mut ws, n, width, &structure, exact, method);
                }
                if pool {
                    pooled.add(&ws, n, exact);
                }
                (ws, out, pooled)
            },
        )
        .map(|(_, out, pooled)| (out, pooled))
        .reduce(
            || (Vec::new(), Pooled::new(width)),
            |(mut a, mut pa), (b, pb)| {
                a.extend(b);
                pa.merge(&pb);
                (a, pa)
            },
        );

    let fallback = match &base {
        // A delta keeps its base's fallback: it was fitted on every store's rows.
        Some(b) => b.fallback_model().cloned(),
        None => {
            let replay = |sink: &mut dyn FnMut(&[f64], f64)| {
                let mut x = vec![0.0; width];
                for row in 0..history.columns.len() {
                    history.columns.encode(&history.encoder, row, &mut x);
                    sink(&x, history.columns.target[row]);
                }
            };
            let fitted = pooled.fit(&structure, method, replay).map_err(|e| {
                Error::Usage(format!(
                    "the fallback model cannot be fitted on {} rows: {e}",
                    pooled.rows()
                ))
            })?;
            Some(PartitionModel {
                partition: FALLBACK_ID.into(),
                rows: pooled.rows() as u64,
                rmse: fitted.rmse,
                model: Model::Linear(fitted.model),
            })
        }
    };
    bar.inc(1);
    bar.finish_and_clear();

    let mut skipped: Vec<Skipped> = small
        .into_iter()
        .map(|k| Skipped {
            partition: history.ids[k].clone(),
            rows: history.rows(k).len(),
            reason: match &base {
                None => format!("fewer than min_rows = {min_rows}"),
                Some(b) => format!(
                    "fewer than min_rows = {min_rows}; keeps its model from {}",
                    b.version
                ),
            },
        })
        .collect();
    let mut results = results;
    results.sort_unstable_by_key(|(k, _)| *k);
    let mut models = Vec::with_capacity(results.len());
    for (k, r) in results {
        match r {
            Ok(fitted) => models.push(PartitionModel {
                partition: history.ids[k].as_str().into(),
                rows: history.rows(k).len() as u64,
                rmse: fitted.rmse,
                model: Model::Linear(fitted.model),
            }),
            Err(reason) => skipped.push(Skipped {
                rows: history.rows(k).len(),
                partition: history.ids[k].clone(),
                reason,
            }),
        }
    }

    // The rows are no longer needed: free them before the bundle is encoded.
    drop(history.columns);
    if base.is_some() && models.is_empty() {
        return Err(Error::Usage(
            "the delta would replace no partition: every partition asked for was skipped (see min_rows)".into(),
        ));
    }
    // A delta's rows are those of the stores it refits; a full bundle's fallback used them all.
    let rows_used = match &base {
        Some(_) => models.iter().map(|m| m.rows).sum(),
        None => history.rows_used,
    };
    let bundle = Bundle::assemble(
        opts.version.clone().unwrap_or_else(default_version),
        base.as_ref().map(|b| b.version.clone()),
        chrono::Utc::now().timestamp_millis(),
        history.spec,
        (rows_used, history.rejected.count),
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
                "delta bundle {} of base {base} written to {}: replaces {}, keeps the rest and the fallback from {base}",
                b.version,
                self.output.display(),
                crate::plural::count(b.partitions.len(), "partition")
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
            for (at, e) in &self.rejected.examples {
                writeln!(f, "    {} {at}: {e}", self.rejected.unit)?;
            }
        }
        Ok(())
    }
}
