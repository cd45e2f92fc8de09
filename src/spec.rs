//! The training spec (`train.toml`): which column names the partition, what to predict, which
//! model to fit and how each feature is encoded.
//!
//! The spec is parsed and validated here, before any data is read, in the spirit of linfa's
//! `ParamGuard`: a spec that cannot produce a model is refused with a message that says which
//! key to change. The bundle stores the spec it was trained with, with one-hot categories
//! resolved, so serving encodes events exactly as training encoded rows.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The model fitted per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Ordinary least squares with an intercept; the minimum-norm solution where a partition's
    /// design is rank-deficient, as LAPACK's `gelsd` (and scikit-learn) give.
    #[default]
    Linear,
    /// Ridge regression with an unpenalised intercept and penalty `alpha`.
    Ridge,
    /// Models trained elsewhere and brought in by `manymodel import`; never written in a
    /// training spec, only recorded in bundles.
    #[serde(skip_deserializing)]
    Imported,
}

impl ModelKind {
    /// The spec spelling, `linear` or `ridge`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Linear => "linear",
            ModelKind::Ridge => "ridge",
            ModelKind::Imported => "imported",
        }
    }

    /// Parses the spelling a bundle records.
    pub fn parse(s: &str) -> Option<Self> {
        [ModelKind::Linear, ModelKind::Ridge, ModelKind::Imported]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// How one column becomes model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// The value itself, one input.
    Numeric,
    /// 1 for true, 0 for false, one input.
    Bool,
    /// One 0/1 input per category; a category unseen in training sets none of them.
    OneHot,
    /// One 0/1 input per UTC hour of the timestamp (24 inputs).
    HourOfDay,
    /// One 0/1 input per UTC day of the week, Monday first (7 inputs).
    DayOfWeek,
    /// One 0/1 input per UTC month, January first (12 inputs).
    Month,
}

impl FeatureKind {
    /// The spec spelling, e.g. `hour_of_day`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Numeric => "numeric",
            FeatureKind::Bool => "bool",
            FeatureKind::OneHot => "one_hot",
            FeatureKind::HourOfDay => "hour_of_day",
            FeatureKind::DayOfWeek => "day_of_week",
            FeatureKind::Month => "month",
        }
    }

    /// Parses the spec spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "numeric" => FeatureKind::Numeric,
            "bool" => FeatureKind::Bool,
            "one_hot" => FeatureKind::OneHot,
            "hour_of_day" => FeatureKind::HourOfDay,
            "day_of_week" => FeatureKind::DayOfWeek,
            "month" => FeatureKind::Month,
            _ => return None,
        })
    }
}

/// One `[[features]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// The input column (CSV header name, JSON field name).
    pub column: String,
    /// How the column is encoded.
    pub kind: FeatureKind,
    /// For `one_hot`: the categories, in input order. Without them they are learned from the
    /// training data (sorted); a bundle always stores them resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

/// The whole training spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// The column that names the partition (a store, a zone, a station).
    pub partition_column: String,
    /// The column to predict.
    pub target: String,
    /// The model fitted per partition and for the fallback.
    #[serde(default)]
    pub model: ModelKind,
    /// The ridge penalty; required for `model = "ridge"`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Partitions with fewer usable rows get no model of their own and are scored by the
    /// fallback.
    #[serde(default = "default_min_rows")]
    pub min_rows: u64,
    /// The model inputs, in order.
    pub features: Vec<FeatureSpec>,
}

fn default_min_rows() -> u64 {
    30
}

impl TrainSpec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|reason| Error::Config {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and validates spec text; the error is a sentence for the user.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let spec: TrainSpec = toml::from_str(text).map_err(|e| e.to_string())?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks everything that can be checked without data.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.partition_column.trim().is_empty() {
            return Err("partition_column is empty: name the column that identifies a partition, e.g. \"store_id\"".into());
        }
        if self.target.trim().is_empty() {
            return Err("target is empty: name the column to predict, e.g. \"sales\"".into());
        }
        if self.partition_column == self.target {
            return Err(format!(
                "partition_column and target are both {:?}",
                self.target
            ));
        }
        if self.features.is_empty() {
            return Err("the spec names no feature: add at least one [[features]] entry with column and kind".into());
        }
        match (self.model, self.alpha) {
            (ModelKind::Ridge, None) => {
                return Err("model = \"ridge\" needs alpha, the penalty (e.g. alpha = 1.0)".into())
            }
            (ModelKind::Ridge, Some(a)) if !(a.is_finite() && a > 0.0) => {
                return Err(format!("alpha must be a positive number, got {a}"))
            }
            (ModelKind::Linear | ModelKind::Imported, Some(_)) => {
                return Err(
                    "alpha is only used with model = \"ridge\"; remove it or set model = \"ridge\""
                        .into(),
                )
            }
            _ => {}
        }
        let mut seen = HashSet::new();
        for f in &self.features {
            if f.column.trim().is_empty() {
                return Err("a [[features]] entry has an empty column".into());
            }
            if f.column == self.target || f.column == self.partition_column {
                return Err(format!(
                    "feature column {:?} is the target or the partition column",
                    f.column
                ));
            }
            if !seen.insert((f.column.as_str(), f.kind)) {
                return Err(format!(
                    "feature {:?} of kind {} is listed twice",
                    f.column,
                    f.kind.as_str()
                ));
            }
            match (&f.categories, f.kind) {
                (Some(_), k) if k != FeatureKind::OneHot => {
                    return Err(format!(
                        "feature {:?}: categories are only for kind = \"one_hot\"",
                        f.column
                    ))
                }
                (Some(c), _) => {
                    let distinct: HashSet<&String> = c.iter().collect();
                    if c.is_empty() || distinct.len() != c.len() {
                        return Err(format!(
                            "feature {:?}: categories must be a non-empty list without repeats",
                            f.column
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Every column the spec reads from a record, partition column and target included.
    pub fn columns(&self) -> Vec<&str> {
        let mut out = vec![self.partition_column.as_str(), self.target.as_str()];
        for f in &self.features {
            if !out.contains(&f.column.as_str()) {
                out.push(f.column.as_str());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_spec_parses_with_defaults() {
        let spec = TrainSpec::parse(
            "partition_column = \"store_id\"\ntarget = \"sales\"\n[[features]]\ncolumn = \"price\"\nkind = \"numeric\"\n",
        )
        .unwrap();
        assert_eq!(spec.model, ModelKind::Linear);
        assert_eq!(spec.min_rows, 30);
    }

    #[test]
    fn specs_that_name_nothing_valid_are_refused_with_a_reason() {
        let cases = [
            ("partition_column = \"s\"\ntarget = \"y\"\nfeatures = []", "no feature"),
            ("partition_column = \"s\"\ntarget = \"y\"\nmodel = \"ridge\"\n[[features]]\ncolumn = \"p\"\nkind = \"numeric\"", "alpha"),
            ("partition_column = \"s\"\ntarget = \"y\"\n[[features]]\ncolumn = \"p\"\nkind = \"cubic\"", "unknown variant"),
            ("partition_column = \"s\"\ntarget = \"y\"\nbogus = 1\n[[features]]\ncolumn = \"p\"\nkind = \"numeric\"", "unknown field"),
            ("partition_column = \"s\"\ntarget = \"y\"\n[[features]]\ncolumn = \"p\"\nkind = \"numeric\"\ncategories = [\"a\"]", "only for"),
        ];
        for (text, needle) in cases {
            let err = TrainSpec::parse(text).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}
