//! `manymodel import`: build a bundle from models trained elsewhere (XGBoost in Python, linear
//! models as JSON), so a team keeps its training notebooks and replaces only the serving side.
//!
//! The [`manifest`] names the feature spec, each partition's model file and how the models'
//! feature names map onto the spec's model inputs; [`xgboost`] (with [`ubjson`]) and
//! [`linear_json`] read the files. Every problem is reported with the file it is in and what to
//! change, and stops the import (exit code 2): a bundle is never written half right.

pub mod linear_json;
pub mod manifest;
pub mod ubjson;
pub mod xgboost;

use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::features::FeatureEncoder;
use crate::model::bundle::{Bundle, PartitionModel, FALLBACK_ID};
use crate::model::Model;
use manifest::{FeatureNames, Manifest, ModelRef};

/// What `import` was asked to do.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The manifest file.
    pub manifest: PathBuf,
    /// Where to write the bundle.
    pub output: PathBuf,
    /// The bundle version; a UTC timestamp when absent.
    pub version: Option<String>,
}

/// What an import did, printed as its summary.
#[derive(Debug)]
pub struct ImportReport {
    /// The bundle written.
    pub bundle: Bundle,
    /// Where.
    pub output: PathBuf,
    /// Model features that no split reads and that map to no model input, with a file that
    /// has them (ignored: they cannot change a prediction).
    pub ignored: Vec<(String, PathBuf)>,
}

/// Runs an import.
pub fn run(opts: &ImportOptions) -> Result<ImportReport> {
    let manifest = Manifest::load(&opts.manifest)?;
    let dir = opts
        .manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let spec = manifest.spec();
    let encoder = FeatureEncoder::new(&spec.features).map_err(Error::Usage)?;
    let names =
        FeatureNames::new(&manifest.feature_names, encoder.names()).map_err(Error::Usage)?;
    let read = |id: &str, r: &ModelRef| {
        read_model(
            &dir,
            id,
            r,
            &names,
            encoder.width(),
            manifest.use_best_iteration,
        )
    };
    let models: Vec<(PartitionModel, Vec<String>, PathBuf)> = manifest
        .partitions
        .par_iter()
        .map(|(id, r)| read(id, r))
        .collect::<Result<_>>()?;
    let fallback = manifest
        .fallback
        .as_ref()
        .map(|r| read(FALLBACK_ID, r))
        .transpose()?;

    let mut ignored: Vec<(String, PathBuf)> = Vec::new();
    for (_, names, file) in models.iter().chain(fallback.iter()) {
        for n in names {
            if !ignored.iter().any(|(seen, _)| seen == n) {
                ignored.push((n.clone(), file.clone()));
            }
        }
    }
    let bundle = Bundle::assemble(
        opts.version
            .clone()
            .unwrap_or_else(crate::train::default_version),
        None,
        chrono::Utc::now().timestamp_millis(),
        spec,
        (0, 0),
        fallback.map(|(m, _, _)| m),
        models.into_iter().map(|(m, _, _)| m).collect(),
    )
    .map_err(|e| Error::Usage(format!("{}: {e}", opts.manifest.display())))?;
    bundle.write(&opts.output)?;
    Ok(ImportReport {
        bundle,
        output: opts.output.clone(),
        ignored,
    })
}

/// Reads one model file: its model, the model features it ignores, and its path.
fn read_model(
    dir: &Path,
    id: &str,
    r: &ModelRef,
    names: &FeatureNames<'_>,
    width: usize,
    use_best_iteration: bool,
) -> Result<(PartitionModel, Vec<String>, PathBuf)> {
    let path = dir.join(&r.file);
    let what = if id == FALLBACK_ID {
        "the fallback".to_owned()
    } else {
        format!("partition {id:?}")
    };
    let fail = |reason: String| Error::Usage(format!("{} ({what}): {reason}", path.display()));
    let bytes = std::fs::read(&path).map_err(|e| {
        fail(format!(
            "cannot read the model file: {e}; paths in the manifest are relative to the manifest's folder"
        ))
    })?;
    let ubj = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("ubj" | "ubjson")
    );
    let doc = if ubj {
        ubjson::decode(&bytes).map_err(fail)?
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            fail(format!(
                "not JSON ({e}); XGBoost models are read from save_model(\"model.json\") or \"model.ubj\""
            ))
        })?
    };
    let (model, ignored) = if linear_json::is_linear(&doc) {
        let m = linear_json::read(doc, names, width).map_err(fail)?;
        (Model::Linear(m), Vec::new())
    } else {
        let m = xgboost::read(doc, names, use_best_iteration).map_err(fail)?;
        (Model::Trees(Box::new(m.trees)), m.ignored)
    };
    if let Some(rmse) = r.rmse {
        if !rmse.is_finite() || rmse < 0.0 {
            return Err(fail(format!("rmse = {rmse} must be a non-negative number")));
        }
    }
    Ok((
        PartitionModel {
            partition: id.into(),
            rows: r.rows.unwrap_or(0),
            rmse: r.rmse.unwrap_or(f64::NAN),
            model,
        },
        ignored,
        path,
    ))
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bundle;
        writeln!(
            f,
            "bundle {} written to {}",
            b.version,
            self.output.display()
        )?;
        let trees = b
            .partitions
            .iter()
            .filter(|m| matches!(m.model, Model::Trees(_)))
            .count();
        writeln!(
            f,
            "  partitions: {} ({} trees, {} linear)   inputs per model: {}",
            b.partitions.len(),
            trees,
            b.partitions.len() - trees,
            b.encoder().width()
        )?;
        if b.has_fallback() {
            writeln!(f, "  fallback: {}", b.fallback.model.kind())?;
        } else {
            writeln!(
                f,
                "  fallback: none: events of partitions without a model will be dead-lettered"
            )?;
        }
        writeln!(
            f,
            "  missing feature values: {}",
            if b.encoder().takes_missing() {
                "scored (NaN follows each split's default direction)"
            } else {
                "dead-lettered (a linear model cannot score them)"
            }
        )?;
        for (name, file) in &self.ignored {
            writeln!(
                f,
                "  note: model feature {name:?} (e.g. in {}) maps to no model input; no split reads it, so it is ignored",
                file.display()
            )?;
        }
        Ok(())
    }
}
