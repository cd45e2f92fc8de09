//! `manymodel bench --train`: how fast `train` turns a history into a bundle, and how much
//! memory it needs for it. The run is a normal `train` (bundle written to a temporary file);
//! the figures are rows and stores per second of wall time and the peak resident set size
//! (`VmHWM` of `/proc/self/status`), also per input row. `scripts/bench-train-python` runs the
//! same history through pandas and scikit-learn and prints the ratio.

use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::train::{run as train, TrainOptions};

/// What the training benchmark measured.
#[derive(Debug, Clone, Copy)]
pub struct TrainBench {
    /// Rows used.
    pub rows: u64,
    /// Stores fitted.
    pub stores: usize,
    /// Wall time of the whole run, reading to writing.
    pub seconds: f64,
    /// Peak resident set size in bytes, if the platform reports it.
    pub peak_rss: Option<u64>,
}

use crate::memory::peak_rss;

/// Trains `input` under `spec` once and prints the figures to `out`.
pub fn run(spec: PathBuf, input: PathBuf, out: &mut dyn Write) -> Result<TrainBench> {
    let dir = tempfile_dir()?;
    let output = dir.join("bench-train.avro");
    let report = train(&TrainOptions {
        spec,
        input,
        output: output.clone(),
        version: Some("bench".into()),
        strict: false,
        progress: false,
        base: None,
        partitions: Vec::new(),
    });
    let _ = std::fs::remove_file(&output);
    let _ = std::fs::remove_dir(&dir);
    let report = report?;
    let bench = TrainBench {
        rows: report.bundle.rows_used,
        stores: report.bundle.partitions.len(),
        seconds: report.seconds,
        peak_rss: peak_rss(),
    };
    let io = |e| Error::Internal(format!("writing the report: {e}"));
    writeln!(
        out,
        "train: {} rows, {} stores in {:.2} s: {:.0} rows/s, {:.0} stores/s",
        bench.rows,
        bench.stores,
        bench.seconds,
        bench.rows as f64 / bench.seconds,
        bench.stores as f64 / bench.seconds
    )
    .map_err(io)?;
    if let Some(rss) = bench.peak_rss {
        writeln!(
            out,
            "peak RSS: {:.1} MiB ({:.1} bytes per row)",
            rss as f64 / (1024.0 * 1024.0),
            rss as f64 / bench.rows.max(1) as f64
        )
        .map_err(io)?;
    }
    Ok(bench)
}

/// A fresh private directory for the bundle.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("manymodel-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}
