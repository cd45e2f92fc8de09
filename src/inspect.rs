//! `manymodel inspect`: what a bundle holds, for people.

use std::fmt::Write;

use crate::model::bundle::{Bundle, PartitionModel};
use crate::model::Model;
use crate::train::spread;

/// The bundle summary: version, spec, partition count, fallback, metric spread.
pub fn summary(b: &Bundle) -> String {
    let mut s = String::new();
    let created = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(b.created_at_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| b.created_at_ms.to_string());
    let _ = writeln!(s, "version:          {}", b.version);
    if let Some(base) = &b.base_version {
        let _ = writeln!(
            s,
            "base version:     {base} (a delta: its partitions replace those of {base}, the rest come from it)"
        );
    }
    let _ = writeln!(s, "created:          {created}");
    let _ = writeln!(s, "partition column: {}", b.spec.partition_column);
    let _ = writeln!(s, "target:           {}", b.spec.target);
    let _ = write!(s, "model:            {}", b.spec.model.as_str());
    if let Some(a) = b.spec.alpha {
        let _ = write!(s, " (alpha {a})");
    }
    let _ = writeln!(s, "\nmin_rows:         {}", b.spec.min_rows);
    let _ = writeln!(s, "features:");
    for f in &b.spec.features {
        let _ = write!(s, "  {} ({})", f.column, f.kind.as_str());
        if let Some(c) = &f.categories {
            let _ = write!(s, " categories: {}", c.join(", "));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "model inputs:     {}", b.encoder().width());
    if b.spec.model != crate::spec::ModelKind::Imported {
        let _ = writeln!(
            s,
            "training rows:    {} used, {} rejected",
            b.rows_used, b.rows_rejected
        );
    }
    let _ = write!(s, "partitions:       {}", b.partitions.len());
    let linear = b
        .partitions
        .iter()
        .filter(|m| matches!(m.model, Model::Linear(_)))
        .count();
    let _ = writeln!(
        s,
        " ({linear} linear, {} trees)",
        b.partitions.len() - linear
    );
    if b.has_fallback() {
        let _ = write!(s, "fallback:         {}", describe(&b.fallback.model));
        if b.fallback.rmse.is_finite() {
            let _ = write!(
                s,
                ", {} rows, in-sample RMSE {:.4}",
                b.fallback.rows, b.fallback.rmse
            );
        }
        s.push('\n');
    } else {
        let _ = writeln!(
            s,
            "fallback:         none (partitions without a model are dead-lettered)"
        );
    }
    let mut rmse: Vec<f64> = b
        .partitions
        .iter()
        .map(|m| m.rmse)
        .filter(|r| r.is_finite())
        .collect();
    if let Some((lo, mid, hi)) = spread(&mut rmse) {
        let _ = writeln!(
            s,
            "in-sample RMSE:   min {lo:.4}  median {mid:.4}  max {hi:.4}"
        );
    }
    let mut rows: Vec<f64> = b
        .partitions
        .iter()
        .filter(|m| m.rows > 0)
        .map(|m| m.rows as f64)
        .collect();
    if let Some((lo, mid, hi)) = spread(&mut rows) {
        let _ = writeln!(s, "rows per model:   min {lo}  median {mid}  max {hi}");
    }
    s
}

/// A model's kind and shape in one line, e.g. `trees (count:poisson, 100 trees, depth 6)`.
fn describe(m: &Model) -> String {
    match m {
        Model::Linear(_) => "linear".into(),
        Model::Trees(t) => format!(
            "trees ({}, {} trees, depth {})",
            t.objective().as_str(),
            t.trees(),
            t.max_depth()
        ),
    }
}

/// One partition's model: coefficient by coefficient, or a tree ensemble's shape.
pub fn partition(b: &Bundle, m: &PartitionModel) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "partition:  {}", m.partition);
    let _ = writeln!(s, "version:    {}", b.version);
    let _ = writeln!(s, "kind:       {}", m.model.kind());
    if m.rmse.is_finite() {
        let _ = writeln!(s, "rows:       {}", m.rows);
        let _ = writeln!(s, "rmse:       {:.6}", m.rmse);
    }
    let names = b.encoder().names();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    match &m.model {
        Model::Linear(l) => {
            let _ = writeln!(s, "intercept:  {}", number(l.intercept));
            let _ = writeln!(s, "coefficients:");
            for (name, c) in names.iter().zip(l.coefficients.iter()) {
                let _ = writeln!(s, "  {name:<width$}  {}", number(*c));
            }
        }
        Model::Trees(t) => {
            let _ = writeln!(s, "objective:  {}", t.objective().as_str());
            let _ = writeln!(s, "base_score: {}", t.base_score());
            let _ = writeln!(s, "trees:      {}", t.trees());
            let _ = writeln!(s, "nodes:      {}", t.nodes());
            let _ = writeln!(s, "max depth:  {}", t.max_depth());
            let _ = writeln!(s, "inputs used:");
            for i in t.inputs_used() {
                if let Some(name) = names.get(i) {
                    let _ = writeln!(s, "  {name}");
                }
            }
        }
    }
    s
}

/// A coefficient for reading: plain decimals in the usual range, scientific notation for the
/// tiny (round-off of an input never seen in training) and the huge.
fn number(x: f64) -> String {
    if x == 0.0 || (1e-4..1e9).contains(&x.abs()) {
        format!("{x:.6}")
    } else {
        format!("{x:.6e}")
    }
}
