//! `[actuals]`: the realised sales the daemon checks its forecasts against.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where actuals come from and how a store's recent error is judged. An actual is a record
/// shaped like a history row: the bundle spec's partition column, feature columns and target
/// column, in the input's format (`[input]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActualsConfig {
    /// The topic of actuals, keyed by store id (any key works: the partition column decides).
    pub topic: String,
    /// The consumer group of the actuals consumer; by default `<[kafka] group_id>.actuals`.
    /// Instances of one group share the actuals' Kafka partitions, so each instance judges
    /// the stores whose actuals it reads: key actuals by store id.
    #[serde(default)]
    pub group_id: Option<String>,
    /// How many recent actuals a store's error statistics cover: they are exponentially
    /// weighted moving averages with this span (pandas `ewm(span = window)`: weight
    /// `2 / (window + 1)` on the newest), so the newest `window` actuals carry 86% of the
    /// weight. O(1) memory per store, whatever the window.
    #[serde(default = "default_window")]
    pub window: u32,
    /// No verdict on a store before this many actuals scored by its current model.
    #[serde(default = "default_min_actuals")]
    pub min_actuals: u32,
    /// A store starts drifting when its recent RMSE exceeds this multiple of the RMSE its
    /// model is expected to have on new data: the training RMSE the bundle records per store,
    /// times `sqrt((n + p) / (n − p))` for its `n` training rows and `p` inputs.
    #[serde(default = "default_drift_ratio")]
    pub drift_ratio: f64,
    /// A drifting store is stable again when its recent RMSE falls to this multiple of its
    /// expected RMSE or below; by default 0.9 × `drift_ratio`, so a store near the line
    /// does not flap.
    #[serde(default)]
    pub recover_ratio: Option<f64>,
    /// Where a record goes, keyed by store id, whenever a store starts or stops drifting
    /// (JSON, the shape of one `/partitions` entry). Optional.
    #[serde(default)]
    pub drift_topic: Option<String>,
    /// Stores without a model of their own (scored by the fallback) that get a row of
    /// statistics; the ones beyond count in the metrics only, so a stream of unknown ids
    /// cannot grow the daemon.
    #[serde(default = "default_max_fallback_stores")]
    pub max_fallback_stores: usize,
    /// Avro actuals: the reader schema (it must have the target column); relative to this
    /// file. By default the input's reader schema (`[input] schema`), whose writer schemas
    /// (`[input.schemas]`, the registry) serve actuals too.
    #[serde(default)]
    pub schema: Option<PathBuf>,
}

fn default_window() -> u32 {
    50
}
fn default_min_actuals() -> u32 {
    30
}
fn default_drift_ratio() -> f64 {
    1.5
}
fn default_max_fallback_stores() -> usize {
    10_000
}

impl ActualsConfig {
    /// Actuals read from `topic` with every other field at its default, as a config naming
    /// only `topic` gives.
    pub fn new(topic: impl Into<String>) -> Self {
        ActualsConfig {
            topic: topic.into(),
            group_id: None,
            window: default_window(),
            min_actuals: default_min_actuals(),
            drift_ratio: default_drift_ratio(),
            recover_ratio: None,
            drift_topic: None,
            max_fallback_stores: default_max_fallback_stores(),
            schema: None,
        }
    }

    /// The ratio at or below which a drifting store is stable again.
    pub fn recover_ratio(&self) -> f64 {
        self.recover_ratio.unwrap_or(0.9 * self.drift_ratio)
    }

    /// The actuals consumer's group.
    pub fn group_id(&self, kafka_group_id: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("{kafka_group_id}.actuals"))
    }

    /// Checks the values against each other and against the daemon's other topics.
    pub fn check(&self, other_topics: &[&str]) -> Result<(), String> {
        if self.topic.trim().is_empty() {
            return Err("actuals.topic is empty".into());
        }
        if other_topics.contains(&self.topic.as_str()) {
            return Err(format!(
                "actuals.topic = {:?} must be a topic of its own, not the input, output, dead-letter or control topic",
                self.topic
            ));
        }
        if let Some(d) = &self.drift_topic {
            if d.trim().is_empty() || *d == self.topic || other_topics.contains(&d.as_str()) {
                return Err(format!(
                    "actuals.drift_topic = {d:?} must be a non-empty topic of its own"
                ));
            }
        }
        if self.window == 0 {
            return Err("actuals.window must be at least 1".into());
        }
        if self.min_actuals == 0 {
            return Err("actuals.min_actuals must be at least 1".into());
        }
        if !(self.drift_ratio.is_finite() && self.drift_ratio > 0.0) {
            return Err(format!(
                "actuals.drift_ratio = {} must be a positive number (e.g. 1.5)",
                self.drift_ratio
            ));
        }
        let recover = self.recover_ratio();
        if !(recover.is_finite() && recover > 0.0 && recover <= self.drift_ratio) {
            return Err(format!(
                "actuals.recover_ratio = {recover} must be positive and at most drift_ratio = {}",
                self.drift_ratio
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_is_what_a_table_naming_only_the_topic_gives() {
        let parsed: ActualsConfig = toml::from_str("topic = \"actuals\"").unwrap();
        assert_eq!(ActualsConfig::new("actuals"), parsed);
    }
}
