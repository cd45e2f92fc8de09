//! The retrain configuration (`manymodel retrain --config FILE.toml`).
//!
//! Like serve's configuration, every table refuses unknown keys and every relative path is
//! taken from the config file's folder. The defaults suit hourly actuals of a few hundred
//! stores; `config/retrain.toml` shows every field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::kafka::connection::Connection;

/// The whole retrain configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainConfig {
    /// The cluster, the actuals and the control topic.
    pub kafka: RetrainKafka,
    /// Which stores are drifting: a drift topic or a daemon's `/partitions`.
    #[serde(default)]
    pub source: SourceConfig,
    /// Which actuals a refit reads.
    #[serde(default)]
    pub actuals: ActualsConfig,
    /// How a refit is judged against the active model.
    #[serde(default)]
    pub challenger: ChallengerConfig,
    /// Where the active bundle comes from, and whose signatures count on the control topic.
    #[serde(default)]
    pub model: RetrainModel,
    /// How the delta is published.
    #[serde(default)]
    pub publish: PublishConfig,
    /// `--watch`: how often, and how often per store.
    #[serde(default)]
    pub watch: WatchConfig,
}

/// The Kafka side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainKafka {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// librdkafka properties for every client retrain makes (consumers of the actuals, drift
    /// and control topics, the producer of the delta), passed through as they are: TLS and
    /// SASL go here as in serve's `[kafka] librdkafka_options`, e.g.
    /// `{ "security.protocol" = "SASL_SSL", "sasl.mechanism" = "SCRAM-SHA-512", ... }`.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
    /// The topic of actuals: JSON objects with the spec's partition column, feature columns
    /// and target column, keyed by store id; the Kafka record timestamp is the actual's time.
    pub actuals_topic: String,
    /// The control topic the daemons read: the active version is found on it (unless
    /// `[model] bundle` is set) and the delta is published to it.
    pub control_topic: String,
}

/// Where drifting stores are found; `--partitions` names stores instead. At most one of the
/// two; with neither, only `--partitions` works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The drift topic the daemons write (key = store id, value = a drift record): read from
    /// its beginning to its end, the latest record per store is its state. Create it with
    /// `cleanup.policy=compact` so that reading it stays cheap. With `--watch` it is then
    /// followed as it grows.
    #[serde(default)]
    pub drift_topic: Option<String>,
    /// A daemon's listener, e.g. `http://serve-1:9898` (`http://` only): `GET
    /// /partitions?sort=drift&limit=N` lists the stores it tracks, worst first. With `--watch`
    /// it is asked every `[watch] check_secs`.
    #[serde(default)]
    pub partitions_url: Option<String>,
    /// The `limit` asked of `/partitions`.
    #[serde(default = "default_partitions_limit")]
    pub partitions_limit: usize,
}

fn default_partitions_limit() -> usize {
    10_000
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            drift_topic: None,
            partitions_url: None,
            partitions_limit: default_partitions_limit(),
        }
    }
}

/// Which actuals a refit reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActualsConfig {
    /// At most this many actuals per store, the newest.
    #[serde(default = "default_recent")]
    pub recent: usize,
    /// Stores with fewer usable actuals are rejected ("not enough actuals"); with `--watch`
    /// a drifting store waits until it has this many post-drift actuals.
    #[serde(default = "default_min_actuals")]
    pub min_actuals: usize,
    /// A drifting store's actuals are those at or after its `verdict_at_ms` less this many
    /// seconds (0: only post-drift actuals; a little more catches the actuals that made the
    /// verdict, which the daemon saw before it changed).
    #[serde(default)]
    pub lookback_secs: u64,
    /// A store named with `--partitions` (not drifting) reads the actuals of this many
    /// seconds before now, the newest `recent` of them.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// A history file (CSV, or Parquet when named `*.parquet`, as `train --input` takes) whose
    /// rows of a refitted store are added to the challenger's training rows, never to its
    /// held-out rows. Without it a challenger learns from actuals alone.
    #[serde(default)]
    pub history: Option<PathBuf>,
    /// With `history`: at most this many rows per store from it, the last in the file.
    #[serde(default)]
    pub history_rows: Option<usize>,
    /// How long the reading of the actuals topic may go without a record before it gives up,
    /// in seconds.
    #[serde(default = "default_read_timeout_secs")]
    pub read_timeout_secs: u64,
}

fn default_recent() -> usize {
    500
}
fn default_min_actuals() -> usize {
    60
}
fn default_window_secs() -> u64 {
    7 * 24 * 3600
}
fn default_read_timeout_secs() -> u64 {
    30
}

impl Default for ActualsConfig {
    fn default() -> Self {
        ActualsConfig {
            recent: default_recent(),
            min_actuals: default_min_actuals(),
            lookback_secs: 0,
            window_secs: default_window_secs(),
            history: None,
            history_rows: None,
            read_timeout_secs: default_read_timeout_secs(),
        }
    }
}

/// Champion and challenger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengerConfig {
    /// The newest fraction of a store's actuals held out to judge both models (at least one
    /// actual); the challenger is fitted on the rest.
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// The challenger is kept only when its held-out RMSE ≤ (1 − margin) × the champion's.
    #[serde(default = "default_margin")]
    pub margin: f64,
}

fn default_holdout() -> f64 {
    0.25
}
fn default_margin() -> f64 {
    0.05
}

impl Default for ChallengerConfig {
    fn default() -> Self {
        ChallengerConfig {
            holdout: default_holdout(),
            margin: default_margin(),
        }
    }
}

/// The active bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrainModel {
    /// A full bundle file to build on instead of the control topic's active version (relative
    /// to this file); `--bundle` overrides it. The delta's base is this bundle's version, so
    /// the daemons accept it only when that version is the one they have active.
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// The daemons' `[model] trusted_keys` (hex, or `.pub` files relative to this file): the
    /// control topic is replayed with the same checks, so retrain finds the version the
    /// daemons have active. Empty accepts unsigned bundles.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// The daemons' `[model] max_bundle_bytes`, for the same reason.
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: usize,
    /// How long replaying the control topic may take, in seconds.
    #[serde(default = "default_replay_timeout_secs")]
    pub replay_timeout_secs: u64,
}

fn default_max_bundle_bytes() -> usize {
    1 << 30
}
fn default_replay_timeout_secs() -> u64 {
    300
}

impl Default for RetrainModel {
    fn default() -> Self {
        RetrainModel {
            bundle: None,
            trusted_keys: Vec::new(),
            max_bundle_bytes: default_max_bundle_bytes(),
            replay_timeout_secs: default_replay_timeout_secs(),
        }
    }
}

/// Publishing the delta, as `manymodel publish` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Sign with this secret key (from `manymodel keygen`; relative to this file).
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Bytes per chunk; keep it below the broker's message size limit.
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: usize,
    /// Activate the delta on arrival; false only hands it to the daemons, for a later
    /// `control activate`.
    #[serde(default = "yes")]
    pub activate: bool,
}

fn default_chunk_bytes() -> usize {
    crate::control::publish::DEFAULT_CHUNK_BYTES
}
fn yes() -> bool {
    true
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            signing_key: None,
            chunk_bytes: default_chunk_bytes(),
            activate: true,
        }
    }
}

/// `--watch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// A store is refitted at most once per this many seconds, kept or rejected (a store
    /// still short of `min_actuals` is not counted: it waits).
    #[serde(default = "default_cooldown_secs")]
    pub cooldown_secs: u64,
    /// How often drifting stores are checked for enough post-drift actuals, in seconds (and
    /// `partitions_url` asked).
    #[serde(default = "default_check_secs")]
    pub check_secs: u64,
}

fn default_cooldown_secs() -> u64 {
    3600
}
fn default_check_secs() -> u64 {
    60
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            cooldown_secs: default_cooldown_secs(),
            check_secs: default_check_secs(),
        }
    }
}

impl RetrainConfig {
    /// Reads a config file; relative paths are resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let mut config = crate::config::read(path, Self::parse)?;
        if let Some(dir) = path.parent() {
            let relative = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            config
                .model
                .bundle
                .iter_mut()
                .chain(config.publish.signing_key.iter_mut())
                .chain(config.actuals.history.iter_mut())
                .for_each(relative);
            crate::config::relative_key_files(&mut config.model.trusted_keys, dir);
        }
        Ok(config)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let config: RetrainConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let k = &config.kafka;
        crate::config::required(&[
            ("kafka.brokers", &k.brokers),
            ("kafka.actuals_topic", &k.actuals_topic),
            ("kafka.control_topic", &k.control_topic),
        ])?;
        if k.actuals_topic == k.control_topic {
            return Err("kafka.actuals_topic must differ from kafka.control_topic".into());
        }
        let s = &config.source;
        match (&s.drift_topic, &s.partitions_url) {
            (Some(_), Some(_)) => {
                return Err("[source] takes drift_topic or partitions_url, not both".into())
            }
            (Some(t), None) if t.trim().is_empty() => {
                return Err("source.drift_topic is empty".into())
            }
            (Some(t), None) if *t == k.actuals_topic || *t == k.control_topic => {
                return Err("source.drift_topic must be a topic of its own".into())
            }
            (None, Some(u)) if !u.starts_with("http://") => {
                return Err(format!(
                    "source.partitions_url {u:?} must start with http:// (a daemon's [metrics] listener)"
                ))
            }
            _ => {}
        }
        if s.partitions_limit == 0 {
            return Err("source.partitions_limit must be at least 1".into());
        }
        let a = &config.actuals;
        if a.min_actuals < 2 {
            return Err(
                "actuals.min_actuals must be at least 2: one to fit, one to hold out".into(),
            );
        }
        if a.recent < a.min_actuals {
            return Err(format!(
                "actuals.recent = {} is below actuals.min_actuals = {}: no store could ever have enough",
                a.recent, a.min_actuals
            ));
        }
        if a.read_timeout_secs == 0 {
            return Err("actuals.read_timeout_secs must be at least 1".into());
        }
        let c = &config.challenger;
        if !(c.holdout > 0.0 && c.holdout < 1.0) {
            return Err(format!(
                "challenger.holdout = {} must be a fraction between 0 and 1 (e.g. 0.25)",
                c.holdout
            ));
        }
        if !(c.margin >= 0.0 && c.margin < 1.0) {
            return Err(format!(
                "challenger.margin = {} must be at least 0 and below 1 (e.g. 0.05: 5% better)",
                c.margin
            ));
        }
        if config.publish.chunk_bytes == 0 {
            return Err("publish.chunk_bytes must be at least 1".into());
        }
        if config.watch.check_secs == 0 {
            return Err("watch.check_secs must be at least 1".into());
        }
        if config.model.replay_timeout_secs == 0 {
            return Err("model.replay_timeout_secs must be at least 1".into());
        }
        Ok(config)
    }

    /// The connection every client of the run uses.
    pub fn connection(&self) -> Connection {
        Connection {
            brokers: self.kafka.brokers.clone(),
            options: self.kafka.librdkafka_options.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[kafka]\nbrokers = \"b:9092\"\nactuals_topic = \"actuals\"\ncontrol_topic = \"control\"\n";

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let c = RetrainConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.actuals.recent, 500);
        assert_eq!(c.challenger.margin, 0.05);
        assert!(c.publish.activate);
        assert_eq!(c.source.drift_topic, None);
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let refused = |extra: &str| RetrainConfig::parse(&format!("{MINIMAL}{extra}")).unwrap_err();
        assert!(refused("[challenger]\nholdout = 1.0\n").contains("challenger.holdout"));
        assert!(refused("[challenger]\nmargin = -0.1\n").contains("challenger.margin"));
        assert!(refused("[actuals]\nmin_actuals = 1\n").contains("min_actuals"));
        assert!(refused("[actuals]\nrecent = 10\nmin_actuals = 20\n").contains("recent"));
        assert!(
            refused("[source]\ndrift_topic = \"d\"\npartitions_url = \"http://x\"\n")
                .contains("not both")
        );
        assert!(refused("[source]\npartitions_url = \"https://x\"\n").contains("http://"));
        assert!(refused("[source]\ndrift_topic = \"actuals\"\n").contains("of its own"));
        assert!(refused("[watch]\ncooldown = 5\n").contains("cooldown"));
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retrain.toml");
        std::fs::write(
            &path,
            format!("{MINIMAL}[model]\nbundle = \"b.avro\"\ntrusted_keys = [\"k.pub\", \"{}\"]\n[publish]\nsigning_key = \"/abs/k\"\n[actuals]\nhistory = \"h.csv\"\n", "a".repeat(64)),
        )
        .unwrap();
        let c = RetrainConfig::load(&path).unwrap();
        assert_eq!(c.model.bundle, Some(dir.path().join("b.avro")));
        assert_eq!(c.actuals.history, Some(dir.path().join("h.csv")));
        assert_eq!(c.publish.signing_key, Some(PathBuf::from("/abs/k")));
        assert_eq!(
            c.model.trusted_keys[0],
            dir.path().join("k.pub").display().to_string()
        );
        assert_eq!(c.model.trusted_keys[1], "a".repeat(64));
    }
}
