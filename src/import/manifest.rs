//! The import manifest (`MANIFEST.toml`): the feature spec, where each partition's model file
//! is, and how the models' feature names map onto the spec's model inputs.
//!
//! The manifest is parsed and validated here before any model file is read; model files are
//! the business of [`super::xgboost`] and [`super::linear_json`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::features::FeatureEncoder;
use crate::spec::{FeatureSpec, ModelKind, TrainSpec};

/// The `target` recorded when the manifest names none.
pub const DEFAULT_TARGET: &str = "prediction";

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The event field that names the partition, as in train.toml.
    pub partition_column: String,
    /// What the models predict; informative only (default `prediction`).
    #[serde(default)]
    pub target: Option<String>,
    /// Accepted so a train.toml can be reused as is; the models come from their files, so it
    /// must be `linear` or `ridge` if present and is otherwise ignored.
    #[serde(default)]
    pub model: Option<String>,
    /// Accepted with `model = "ridge"` from a reused train.toml; ignored.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// The minimum rows per partition used when training in Python; recorded in the bundle.
    #[serde(default)]
    pub min_rows: Option<u64>,
    /// The model inputs, exactly as in train.toml; one-hot features must list their
    /// categories (there is no data to learn them from).
    pub features: Vec<FeatureSpec>,
    /// Model feature name → model input name (`price`, `region=north`,
    /// `ts.day_of_week=3`). A key holding `{}` is a pattern: `"HOUR_{}" = "ts.hour_of_day={}"`
    /// maps `HOUR_17` to `ts.hour_of_day=17`. A model feature named like a model input needs
    /// no entry.
    #[serde(default)]
    pub feature_names: BTreeMap<String, String>,
    /// Follow XGBoost's `best_iteration` (from early stopping) when a model file records one,
    /// as `XGBRegressor.predict` does; `false` uses every tree, as `Booster.predict` does.
    #[serde(default = "yes")]
    pub use_best_iteration: bool,
    /// The model for partitions without one of their own. Without it, events of such
    /// partitions are dead-lettered (`unknown_partition`).
    #[serde(default)]
    pub fallback: Option<ModelRef>,
    /// Partition id → its model file.
    #[serde(default)]
    pub partitions: BTreeMap<String, ModelRef>,
}

fn yes() -> bool {
    true
}

/// Where one model is: a path, or a table with the path and what is known of its training.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRef {
    /// The model file, relative to the manifest.
    pub file: PathBuf,
    /// Training rows, if known (shown by `inspect`).
    pub rows: Option<u64>,
    /// In-sample (or validation) RMSE, if known (shown by `inspect`).
    pub rmse: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelTable {
    file: PathBuf,
    #[serde(default)]
    rows: Option<u64>,
    #[serde(default)]
    rmse: Option<f64>,
}

impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ModelRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a model file path, or a table { file = \"...\", rows = N, rmse = X }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<ModelRef, E> {
                Ok(ModelRef {
                    file: PathBuf::from(v),
                    rows: None,
                    rmse: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<ModelRef, A::Error> {
                let t = ModelTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ModelRef {
                    file: t.file,
                    rows: t.rows,
                    rmse: t.rmse,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|reason| Error::Config {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and validates manifest text; the error is a sentence for the user.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let m: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        m.validate()?;
        Ok(m)
    }

    /// The spec recorded in the bundle.
    pub fn spec(&self) -> TrainSpec {
        TrainSpec {
            partition_column: self.partition_column.clone(),
            target: self
                .target
                .clone()
                .unwrap_or_else(|| DEFAULT_TARGET.to_owned()),
            model: ModelKind::Imported,
            alpha: None,
            min_rows: self.min_rows.unwrap_or(0),
            features: self.features.clone(),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        match self.model.as_deref() {
            None | Some("linear") | Some("ridge") => {}
            Some(other) => {
                return Err(format!(
                    "model = {other:?}: an import takes its models from the files listed under [partitions]; remove the key"
                ))
            }
        }
        for f in &self.features {
            if f.kind == crate::spec::FeatureKind::OneHot && f.categories.is_none() {
                return Err(format!(
                    "feature {:?} is one_hot without categories: list them (categories = [\"a\", \"b\"]) in the order your models were trained with",
                    f.column
                ));
            }
        }
        self.spec().validate()?;
        if self.partitions.is_empty() && self.fallback.is_none() {
            return Err("the manifest lists no model: add a [partitions] table (partition id = \"model file\") and/or a [fallback]".into());
        }
        for id in self.partitions.keys() {
            if id.trim().is_empty() {
                return Err("[partitions] has an empty partition id".into());
            }
            if id == crate::model::bundle::FALLBACK_ID {
                return Err(format!(
                    "[partitions] uses {:?}, the fallback's id: put the fallback model under [fallback]",
                    id
                ));
            }
        }
        let encoder = FeatureEncoder::new(&self.features)?;
        FeatureNames::new(&self.feature_names, encoder.names())?;
        Ok(())
    }
}

/// Resolves a model's feature names to model-input indices.
#[derive(Debug, Clone)]
pub struct FeatureNames<'a> {
    exact: BTreeMap<&'a str, usize>,
    patterns: Vec<(&'a str, &'a str, &'a str)>,
    inputs: &'a [String],
}

impl<'a> FeatureNames<'a> {
    /// Checks the `[feature_names]` table against the spec's model inputs.
    pub fn new(
        table: &'a BTreeMap<String, String>,
        inputs: &'a [String],
    ) -> std::result::Result<Self, String> {
        let mut exact = BTreeMap::new();
        let mut patterns = Vec::new();
        for (key, value) in table {
            match (key.matches("{}").count(), value.matches("{}").count()) {
                (0, 0) => {
                    let i = inputs.iter().position(|n| n == value).ok_or_else(|| {
                        format!(
                            "[feature_names] {key:?} = {value:?}: the spec has no model input {value:?}; {}",
                            known_inputs(inputs)
                        )
                    })?;
                    exact.insert(key.as_str(), i);
                }
                (1, 1) => {
                    let (prefix, suffix) = key.split_once("{}").unwrap_or((key, ""));
                    patterns.push((prefix, suffix, value.as_str()));
                }
                _ => {
                    return Err(format!(
                        "[feature_names] {key:?} = {value:?}: a pattern holds exactly one {{}} on each side, e.g. \"HOUR_{{}}\" = \"ts.hour_of_day={{}}\""
                    ))
                }
            }
        }
        Ok(FeatureNames {
            exact,
            patterns,
            inputs,
        })
    }

    /// The model-input index of a model feature name, or a sentence saying why there is none.
    pub fn resolve(&self, name: &str) -> std::result::Result<usize, String> {
        if let Some(&i) = self.exact.get(name) {
            return Ok(i);
        }
        for (prefix, suffix, value) in &self.patterns {
            if let Some(middle) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
            {
                let target = value.replacen("{}", middle, 1);
                return self.inputs.iter().position(|n| *n == target).ok_or_else(|| {
                    format!(
                        "feature {name:?} maps to {target:?} through \"{prefix}{{}}{suffix}\", but the spec has no such model input; {}",
                        known_inputs(self.inputs)
                    )
                });
            }
        }
        self.inputs.iter().position(|n| n == name).ok_or_else(|| {
            format!(
                "unknown feature name {name:?}: map it to a model input under [feature_names] in the manifest; {}",
                known_inputs(self.inputs)
            )
        })
    }
}

/// A short list of the model inputs, for error messages.
fn known_inputs(inputs: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = format!(
        "the spec's model inputs are {}",
        inputs
            .iter()
            .take(SHOWN)
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if inputs.len() > SHOWN {
        s.push_str(&format!(" and {} more", inputs.len() - SHOWN));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        partition_column = "store_id"
        [[features]]
        column = "price"
        kind = "numeric"
        [[features]]
        column = "ts"
        kind = "day_of_week"
        [feature_names]
        "WEEKDAY_{}" = "ts.day_of_week={}"
        cost = "price"
        [fallback]
        file = "all.json"
        rows = 5000
        [partitions]
        S1 = "s1.json"
        42 = { file = "m/42.json", rmse = 1.5 }
    "#;

    #[test]
    fn a_manifest_parses_with_paths_tables_and_patterns() {
        let m = Manifest::parse(BASE).unwrap();
        assert_eq!(m.partitions["S1"].file, PathBuf::from("s1.json"));
        assert_eq!(m.partitions["42"].rmse, Some(1.5));
        assert_eq!(m.fallback.as_ref().unwrap().rows, Some(5000));
        assert!(m.use_best_iteration);
        let spec = m.spec();
        assert_eq!(spec.target, DEFAULT_TARGET);
        let enc = FeatureEncoder::new(&spec.features).unwrap();
        let names = FeatureNames::new(&m.feature_names, enc.names()).unwrap();
        assert_eq!(names.resolve("WEEKDAY_3"), Ok(4));
        assert_eq!(names.resolve("cost"), Ok(0));
        assert_eq!(names.resolve("price"), Ok(0));
        assert_eq!(names.resolve("ts.day_of_week=6"), Ok(7));
        assert!(names
            .resolve("WEEKDAY_9")
            .unwrap_err()
            .contains("ts.day_of_week=9"));
        assert!(names
            .resolve("HOUR_1")
            .unwrap_err()
            .contains("unknown feature name"));
    }

    #[test]
    fn bad_manifests_say_what_to_fix() {
        let cases = [
            (
                BASE.replace("cost = \"price\"", "cost = \"pryce\""),
                "no model input \"pryce\"",
            ),
            (
                BASE.replace("S1 = \"s1.json\"", "S1 = 3"),
                "a model file path",
            ),
            (
                BASE.replace("rows = 5000", "rowz = 1"),
                "unknown field `rowz`",
            ),
            (
                BASE.replace("\"WEEKDAY_{}\"", "\"WEEKDAY\""),
                "a pattern holds",
            ),
            (
                BASE.replace("partition_column", "partition_col"),
                "partition_col",
            ),
            (
                BASE.replace("kind = \"day_of_week\"", "kind = \"one_hot\""),
                "without categories",
            ),
            (
                format!("model = \"gbdt\"\n{BASE}"),
                "takes its models from the files",
            ),
        ];
        for (text, needle) in cases {
            let err = Manifest::parse(&text).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }
}
