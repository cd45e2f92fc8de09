//! Delta bundles: new models for some partitions on top of a base version.
//!
//! `train --base BUNDLE` fits only the partitions asked for (or those in the history) with the
//! base's resolved spec, so every input lines up with the base's models, and writes a bundle
//! that holds just those partitions, the base's fallback and `base_version`. A daemon applies
//! it only on top of that exact base ([`apply`]), which gives a full bundle under the delta's
//! version: the base's models, with the delta's replacing or adding theirs.

use std::collections::HashMap;

use crate::error::BundleError;
use crate::model::bundle::{Bundle, PartitionModel};
use crate::spec::TrainSpec;

/// True when `bundle` is a delta that still needs its base.
pub fn is_delta(bundle: &Bundle) -> bool {
    bundle.base_version.is_some()
}

/// The spec a delta of `base` is trained with: the base's, once `requested` (the `--spec`
/// file) is checked to describe the same inputs.
pub fn training_spec(requested: &TrainSpec, base: &Bundle) -> Result<TrainSpec, String> {
    let b = &base.spec;
    let differs = |what: &str, ours: String, theirs: String| {
        Err(format!(
            "the spec's {what} is {ours}, base version {} has {theirs}; a delta must keep the base's inputs (train a full bundle to change them)",
            base.version
        ))
    };
    if requested.partition_column != b.partition_column {
        return differs(
            "partition_column",
            format!("{:?}", requested.partition_column),
            format!("{:?}", b.partition_column),
        );
    }
    if requested.target != b.target {
        return differs(
            "target",
            format!("{:?}", requested.target),
            format!("{:?}", b.target),
        );
    }
    let cols = |s: &TrainSpec| -> Vec<String> {
        s.features
            .iter()
            .map(|f| format!("{} ({})", f.column, f.kind.as_str()))
            .collect()
    };
    if cols(requested) != cols(b) {
        return differs("features", cols(requested).join(", "), cols(b).join(", "));
    }
    for (r, f) in requested.features.iter().zip(&b.features) {
        if let Some(c) = &r.categories {
            if Some(c) != f.categories.as_ref() {
                return differs(
                    &format!("categories of {:?}", r.column),
                    format!("{c:?}"),
                    format!("{:?}", f.categories.as_deref().unwrap_or_default()),
                );
            }
        }
    }
    let mut spec = b.clone();
    // The fitting method and its threshold may change from one retrain to the next.
    spec.model = requested.model;
    spec.alpha = requested.alpha;
    spec.min_rows = requested.min_rows;
    Ok(spec)
}

/// `delta` applied on top of `base`: a full bundle (no `base_version`) under the delta's
/// version.
pub fn apply(base: &Bundle, delta: &Bundle) -> Result<Bundle, BundleError> {
    match &delta.base_version {
        Some(v) if *v == base.version => {}
        Some(v) => {
            return Err(BundleError::Spec(format!(
                "delta {} builds on {v}, not on {}",
                delta.version, base.version
            )))
        }
        None => {
            return Err(BundleError::Spec(format!(
                "{} is not a delta bundle",
                delta.version
            )))
        }
    }
    if base.encoder().names() != delta.encoder().names()
        || base.spec.partition_column != delta.spec.partition_column
    {
        return Err(BundleError::Spec(format!(
            "delta {} has other inputs than its base {}",
            delta.version, base.version
        )));
    }
    let replaced: HashMap<&str, &PartitionModel> = delta
        .partitions
        .iter()
        .map(|m| (m.partition.as_str(), m))
        .collect();
    let mut merged: Vec<PartitionModel> = base
        .partitions
        .iter()
        .filter(|m| !replaced.contains_key(m.partition.as_str()))
        .cloned()
        .collect();
    merged.extend(delta.partitions.iter().cloned());
    // The result is a full bundle: it needs no base any more (the log keeps the lineage).
    Bundle::assemble(
        delta.version.clone(),
        None,
        delta.created_at_ms,
        delta.spec.clone(),
        (base.rows_used, base.rows_rejected),
        delta.fallback_model().cloned(),
        merged,
    )
}
