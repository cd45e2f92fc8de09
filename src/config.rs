//! The serve configuration (`manymodel serve --config FILE.toml`).
//!
//! Every struct refuses unknown keys, so a misspelt option is an error at start-up rather
//! than a silently ignored line, and every field says why it exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::framing::Framing;
use crate::codec::Format;
use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::scoring::UnknownPartition;

pub mod actuals;

pub use actuals::ActualsConfig;

/// The whole serve configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Where events come from and predictions go.
    pub kafka: KafkaConfig,
    /// Which bundle scores them.
    pub model: ModelConfig,
    /// Queue sizes, limits and deadlines of the pipeline.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// The operations listener: metrics and health.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The format of input records: JSON (the default) or Avro.
    #[serde(default)]
    pub input: InputConfig,
    /// The format of prediction records: JSON (the default) or Avro.
    #[serde(default)]
    pub output: OutputConfig,
    /// Live accuracy: actuals to score against, per-store error and drift. Off without it.
    #[serde(default)]
    pub actuals: Option<ActualsConfig>,
}

/// How input records are encoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// `json`: one JSON object per record; `avro`: one Avro datum per record.
    #[serde(default)]
    pub format: Format,
    /// Avro only: `confluent` (magic byte 0 + 4-byte schema id), `single_object` (C3 01 +
    /// CRC-64-AVRO fingerprint) or `raw` (a bare datum written with the reader schema).
    #[serde(default)]
    pub framing: Framing,
    /// Avro only: the reader schema, the fields scoring reads and their defaults; relative to
    /// this file. Without it, the shipped `schemas/sales_event.avsc`.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// Avro with Confluent framing: the schema registry writer schemas are fetched from by
    /// id (`GET /schemas/ids/{id}`), once per id. `http://` only.
    #[serde(default)]
    pub registry_url: Option<String>,
    /// Avro: writer schemas known without a registry, schema id → `.avsc` file (relative to
    /// this file). Consulted before the registry; with single-object framing, by fingerprint.
    #[serde(default)]
    pub schemas: BTreeMap<String, PathBuf>,
}

/// How prediction records are encoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// `json` or `avro`.
    #[serde(default)]
    pub format: Format,
    /// Avro only: `confluent`, `single_object` or `raw`, as for the input.
    #[serde(default)]
    pub framing: Framing,
    /// Avro only: the prediction schema (relative to this file); without it, the shipped
    /// `schemas/prediction.avsc`.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// Avro with Confluent framing: the registry the prediction schema is registered in at
    /// start-up, under `<output_topic>-value`.
    #[serde(default)]
    pub registry_url: Option<String>,
    /// Avro with Confluent framing: the prediction schema's registry id, instead of
    /// registering it.
    #[serde(default)]
    pub schema_id: Option<u32>,
}

/// The operations listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the listener serving `/metrics`, `/healthz` and `/readyz`; port 0 picks a
    /// free port (the log says which).
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// Stores that get their own `partition` label on `manymodel_partition_events_scored_total`.
    /// Empty by default, so label cardinality stays bounded whatever the number of stores.
    #[serde(default)]
    pub per_partition_metrics: Vec<String>,
}

fn default_metrics_listen() -> String {
    "0.0.0.0:9898".into()
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
            per_partition_metrics: Vec::new(),
        }
    }
}

/// The Kafka side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group; instances with the same group share the input's Kafka partitions.
    pub group_id: String,
    /// The topic of sales events.
    pub input_topic: String,
    /// The topic predictions are produced to, keyed by partition id.
    pub output_topic: String,
    /// The topic events that cannot be scored go to, with their reason in headers.
    pub dlq_topic: String,
    /// Extra librdkafka properties for both consumer and producer, passed through as they are
    /// (e.g. `{ "fetch.min.bytes" = "1" }`); they override manymodel's defaults.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
    /// How often completed offsets are committed, in milliseconds.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// The control topic bundles and commands are published on (`manymodel publish`,
    /// `manymodel control`); every instance reads all of it. Without it the daemon serves
    /// `[model] bundle` and never reloads. Create it with one Kafka partition.
    #[serde(default)]
    pub control_topic: Option<String>,
    /// The delivery guarantee: `at_least_once` (the default: offsets are committed after
    /// the predictions are acknowledged; a crash repeats the uncommitted tail) or
    /// `exactly_once` (predictions, dead letters and offsets are committed together in
    /// Kafka transactions; consumers of the output read with `isolation.level =
    /// read_committed`).
    #[serde(default)]
    pub processing: Processing,
    /// The producer's `transactional.id` in `exactly_once` mode. It must be stable across
    /// restarts of one instance and unique in the fleet, so a restarted instance fences its
    /// own previous incarnation at once; the default is `GROUP_ID-HOSTNAME`.
    #[serde(default)]
    pub transactional_id: Option<String>,
}

/// The delivery guarantee of `[kafka] processing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Processing {
    /// Every event gets at least one prediction; a crash repeats the uncommitted tail.
    #[default]
    AtLeastOnce,
    /// Every event gets exactly one committed prediction, through Kafka transactions.
    ExactlyOnce,
}

fn default_commit_interval_ms() -> u64 {
    1000
}

/// The model side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The bundle file to serve at start; relative paths are taken from the config file's
    /// folder. Optional with a control topic: the newest version activated there wins over
    /// this file when it is newer.
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// What to do with events whose partition has no model of its own.
    #[serde(default)]
    pub unknown_partition: UnknownPartition,
    /// Public keys (64 hex digits, or the path of a `.pub` file from `manymodel keygen`)
    /// whose signatures are accepted. When set, unsigned or otherwise signed bundles from
    /// the control topic are rejected.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Validated bundles held in memory, so `control activate` and `control rollback` work
    /// without publishing again. The active version and the rollback target are always held.
    #[serde(default = "default_keep_versions")]
    pub keep_versions: usize,
    /// The largest bundle file accepted from the control topic, in bytes; also the memory
    /// budget for chunks waiting for their manifest (plus a sixteenth and 64 KiB for their
    /// bookkeeping). Every count a control record claims is checked against it first.
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: usize,
}

fn default_keep_versions() -> usize {
    8
}
fn default_max_bundle_bytes() -> usize {
    1 << 30
}

/// Pipeline tunables; the defaults suit most deployments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Events one partition actor may hold before the consumer waits for it (backpressure).
    /// Stores are spread over the actors by id (see `actors`), each store's events in order.
    #[serde(default = "default_mailbox_capacity")]
    pub mailbox_capacity: usize,
    /// Partition actors the stores are spread over. Default: one per core but one (at least
    /// one), because the consumer loop, which reads and decodes every event, keeps a core
    /// busy of its own, and a linear store's scoring is a small fraction of that work: more
    /// actors only move events between cores. Raise it for costly models (large tree
    /// ensembles) when `manymodel_mailbox_depth` stays near `mailbox_capacity` times `actors`.
    #[serde(default)]
    pub actors: Option<std::num::NonZeroUsize>,
    /// Records larger than this many bytes go to the dead-letter topic as `oversize`.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Partition ids (store ids) longer than this many bytes go to the dead-letter topic as
    /// `oversize_key`: a producer sending huge or random ids cannot make the daemon keep
    /// them.
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// On SIGINT/SIGTERM, how long to drain in-flight events before giving up, in seconds.
    #[serde(default = "default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// Events read and not yet acknowledged, over all Kafka partitions, before the consumer
    /// pauses every Kafka partition: the bound on the pipeline's memory when the output is
    /// slow. Reading resumes below nine tenths of it.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// When events are waiting (lag or in-flight work) and nothing has been acknowledged for
    /// this many seconds, `/healthz` reports the daemon stalled and the log says where.
    #[serde(default = "default_stall_timeout_secs")]
    pub stall_timeout_secs: u64,
    /// On a rebalance, how long the revoke waits for outputs of the revoked Kafka partitions
    /// already handed to the producer, in milliseconds, before it commits what completed.
    #[serde(default = "default_revoke_timeout_ms")]
    pub revoke_timeout_ms: u64,
}

fn default_mailbox_capacity() -> usize {
    1024
}
fn default_max_record_bytes() -> usize {
    1 << 20
}
fn default_max_key_bytes() -> usize {
    256
}
fn default_shutdown_timeout_secs() -> u64 {
    30
}
fn default_max_in_flight() -> usize {
    50_000
}
fn default_stall_timeout_secs() -> u64 {
    60
}
fn default_revoke_timeout_ms() -> u64 {
    5_000
}

impl PipelineConfig {
    /// The number of partition actors: `actors`, or one per core but one (at least one).
    pub fn actors(&self) -> usize {
        self.actors.map_or_else(
            || {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                cores.saturating_sub(1).max(1)
            },
            |n| n.get(),
        )
    }

    /// Refuses a record larger than `max_record_bytes` (a dead letter, `oversize`).
    pub fn check_record_size(&self, len: usize) -> std::result::Result<(), RecordError> {
        if len <= self.max_record_bytes {
            return Ok(());
        }
        Err(RecordError::new(
            RecordErrorKind::Oversize,
            format!(
                "record of {len} bytes exceeds pipeline.max_record_bytes = {}",
                self.max_record_bytes
            ),
        ))
    }

    /// Refuses a partition id longer than `max_key_bytes` (a dead letter, `oversize_key`).
    pub fn check_key(&self, id: &str) -> std::result::Result<(), RecordError> {
        if id.len() <= self.max_key_bytes {
            return Ok(());
        }
        Err(RecordError::new(
            RecordErrorKind::OversizeKey,
            format!(
                "partition id of {} bytes exceeds pipeline.max_key_bytes = {}",
                id.len(),
                self.max_key_bytes
            ),
        ))
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            mailbox_capacity: default_mailbox_capacity(),
            actors: None,
            max_record_bytes: default_max_record_bytes(),
            max_key_bytes: default_max_key_bytes(),
            shutdown_timeout_secs: default_shutdown_timeout_secs(),
            max_in_flight: default_max_in_flight(),
            stall_timeout_secs: default_stall_timeout_secs(),
            revoke_timeout_ms: default_revoke_timeout_ms(),
        }
    }
}

impl ServeConfig {
    /// Reads a config file; a relative bundle path is resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let mut config = crate::config::read(path, Self::parse)?;
        if let Some(dir) = path.parent() {
            if let Some(bundle) = config.model.bundle.as_mut().filter(|b| b.is_relative()) {
                *bundle = dir.join(&*bundle);
            }
            let relative = |p: &mut PathBuf| {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            };
            let input = &mut config.input;
            let paths = input.schema.iter_mut().chain(input.schemas.values_mut());
            let actuals_schema = config.actuals.iter_mut().flat_map(|a| a.schema.iter_mut());
            paths
                .chain(config.output.schema.iter_mut())
                .chain(actuals_schema)
                .for_each(relative);
            relative_key_files(&mut config.model.trusted_keys, dir);
        }
        Ok(config)
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let config: ServeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let k = &config.kafka;
        required(&[
            ("kafka.brokers", &k.brokers),
            ("kafka.group_id", &k.group_id),
            ("kafka.input_topic", &k.input_topic),
            ("kafka.output_topic", &k.output_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
        ])?;
        check_librdkafka_options(&k.librdkafka_options)?;
        if k.input_topic == k.output_topic || k.input_topic == k.dlq_topic {
            return Err("kafka.input_topic must differ from output_topic and dlq_topic, or predictions would be read back as events".into());
        }
        match (&config.model.bundle, &k.control_topic) {
            (None, None) => {
                return Err("nothing to serve: set [model] bundle, or [kafka] control_topic to take bundles from `manymodel publish`".into())
            }
            (_, Some(c)) if c.trim().is_empty() => return Err("kafka.control_topic is empty".into()),
            (_, Some(c)) if *c == k.input_topic || *c == k.output_topic || *c == k.dlq_topic => {
                return Err("kafka.control_topic must be a topic of its own".into())
            }
            _ => {}
        }
        for id in config.input.schemas.keys() {
            if id.parse::<u32>().is_err() {
                return Err(format!(
                    "[input.schemas] key {id:?} is not a schema id (a 32-bit number)"
                ));
            }
        }
        if config.output.format == Format::Avro
            && config.output.framing == Framing::Confluent
            && config.output.schema_id.is_none()
            && config.output.registry_url.is_none()
        {
            return Err("[output] format = \"avro\" with framing = \"confluent\" needs schema_id or registry_url".into());
        }
        if config.pipeline.mailbox_capacity == 0 {
            return Err("pipeline.mailbox_capacity must be at least 1".into());
        }
        if config.pipeline.max_in_flight == 0 {
            return Err("pipeline.max_in_flight must be at least 1".into());
        }
        if config.pipeline.stall_timeout_secs == 0 {
            return Err("pipeline.stall_timeout_secs must be at least 1".into());
        }
        if let Some(a) = &config.actuals {
            let mut topics = vec![
                k.input_topic.as_str(),
                k.output_topic.as_str(),
                k.dlq_topic.as_str(),
            ];
            topics.extend(k.control_topic.as_deref());
            a.check(&topics)?;
        }
        Ok(config)
    }
}

/// The librdkafka options manymodel sets itself, and where each is configured instead: set in
/// `[kafka.librdkafka_options]` they would silently override what the delivery guarantees rest
/// on (the group's commits, the producer's ordering).
const MANAGED_OPTIONS: [(&str, &str); 6] = [
    ("bootstrap.servers", "[kafka] brokers"),
    ("group.id", "[kafka] group_id"),
    ("transactional.id", "[kafka] transactional_id"),
    (
        "enable.auto.commit",
        "nothing: manymodel commits offsets once outputs are acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "nothing: manymodel stores offsets once outputs are acknowledged",
    ),
    (
        "enable.idempotence",
        "nothing: the producer is always idempotent, which keeps each store's predictions in order",
    ),
];

/// Checks `[kafka.librdkafka_options]`: none of the [`MANAGED_OPTIONS`], and every name and
/// value one librdkafka takes.
fn check_librdkafka_options(
    options: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<(), String> {
    for (key, instead) in MANAGED_OPTIONS {
        if options.contains_key(key) {
            return Err(format!(
                "[kafka.librdkafka_options] {key:?}: manymodel sets this itself; set {instead}"
            ));
        }
    }
    crate::kafka::connection::check_options(options)
        .map_err(|what| format!("[kafka.librdkafka_options] {what}"))
}

/// Takes the trusted keys that are file paths (not 64 hex digits) relative to `dir`, the
/// config file's folder.
pub fn relative_key_files(keys: &mut [String], dir: &Path) {
    for key in keys {
        let is_hex = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex && Path::new(key.as_str()).is_relative() {
            *key = dir.join(&*key).display().to_string();
        }
    }
}

/// Refuses the first of the named settings that is empty.
pub fn required(settings: &[(&str, &String)]) -> std::result::Result<(), String> {
    match settings.iter().find(|(_, v)| v.trim().is_empty()) {
        Some((name, _)) => Err(format!("{name} is empty")),
        None => Ok(()),
    }
}

/// Reads and parses a config file; a mistake in it is an error that names the file.
pub fn read<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> std::result::Result<T, String>,
) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(&text).map_err(|reason| Error::Config {
        path: path.to_owned(),
        reason,
    })
}
