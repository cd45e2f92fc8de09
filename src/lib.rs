//! manymodel: serve thousands of small per-partition forecasting models over Kafka.
//!
//! One model is fitted per data partition (a store, a taxi zone, a bike station) and the
//! models travel together as a versioned **bundle**. Each sales event is scored by the model of
//! its own partition, partitions in parallel, and its prediction is stamped with the version
//! that made it.
//!
//! # How an event travels
//!
//! 1. [`kafka::consumer`] reads a record; [`kafka::position`] checks it is the one expected
//!    after any seek, and [`kafka::offsets`] registers its offset.
//! 2. [`codec`] decodes it (JSON or Avro) and [`event`] turns it into an event (through
//!    [`features`], the one encoder training also uses) or names what is wrong with it
//!    ([`error::RecordError`]), in which case
//!    [`kafka::producer`] sends it to the dead-letter topic.
//! 3. [`router`] hands it to the [`partition`] actor of its partition id's shard (the id is
//!    hashed once, [`model::index::id_hash`]); the actor looks up its store's model for a whole
//!    batch at once, scores it ([`model`]) and writes the [`prediction`] record.
//! 4. [`kafka::producer`] delivers the prediction; its acknowledgement finishes the offset and
//!    [`serve`] commits the contiguous finished prefix.
//!
//! # Modules
//!
//! | module | owns |
//! |---|---|
//! | [`spec`] | the training spec (`train.toml`) and its validation |
//! | [`field`] | parsing one value: numbers, bools, timestamps, categories |
//! | [`features`] | the feature encoder shared by training and serving |
//! | [`train`] | `train`: history reading (CSV, or Parquet in [`train::parquet`]), per-partition fitting, the summary |
//! | [`model`] | fitted linear models, tree ensembles and the Avro bundle format |
//! | [`import`] | `import`: bundles from XGBoost and linear-JSON models trained elsewhere |
//! | [`codec`] | input and output formats: JSON (the usual event decoded straight into model inputs, other flat objects scanned by hand in [`codec::flat_json`], the rest through serde_json), Avro (Confluent, single-object, raw framing, a schema registry client, container files), resolution planned once per writer schema; Parquet files read by column name in batches ([`codec::parquet`]) |
//! | [`event`] | the decoded fields of a record → an event ready to score (one place for every format) |
//! | [`scoring`] | which model scores an event (and [`scoring::ModelSource`]: its own or the fallback); unknown partitions |
//! | [`prediction`] | the prediction record, in JSON, Avro and Parquet ([`prediction::parquet`]) |
//! | [`predict`] | `predict`: offline scoring of a JSONL, Avro or Parquet file |
//! | [`inspect`] | `inspect`: a bundle for people |
//! | [`config`] | the serve configuration |
//! | [`control`] | hot reload: publishing bundles, the control topic, validation, the active version |
//! | [`kafka`] | consumer, producer, offset tracking |
//! | [`router`], [`partition`] | the partition actors: stores spread over them by id (`[pipeline] actors`), each store in order |
//! | [`spares`] | input buffers the actors hand back for the consumer loop to decode into again |
//! | [`cache`] | cache hints: index slots, model weights and inputs loaded before they are read |
//! | [`backpressure`] | parked work and paused Kafka partitions when a queue is full |
//! | [`awaiting`] | records set aside while the schema registry is asked for their writer schema (bounded) |
//! | [`watchdog`] | the stall watchdog: work waiting, nothing acknowledged |
//! | [`serve`] | the daemon: wiring, commits, shutdown |
//! | [`metrics`] | every metric name, described once, and the in-process tally |
//! | [`accuracy`] | live accuracy: actuals, per-store error and drift, `/partitions` |
//! | [`health`], [`http`] | `/healthz`, `/readyz` and the listener that serves them with `/metrics` |
//! | [`retrain`] | `retrain`: drifting stores refitted on their recent actuals, champion against challenger, the kept refits published as a delta; `--watch` |
//! | [`generate`] | synthetic data: stores, history, events and their actuals; stores that change behaviour part-way ([`generate::drift`]) |
//! | [`demo`], [`bench`] | the self-contained demo (with the accuracy loop, [`demo::accuracy_loop`]: drift flagged, refitted, a delta swapped in) and the end-to-end benchmark |
//! | [`bench_trees`] | `bench --trees`: tree-ensemble predictions per second on one core |
//! | [`bench_train`] | `bench --train`: rows and stores per second of `train`, and its peak RSS |
//! | [`local`] | Kafka helpers for the demo, the benchmark and the tests |
//! | [`pacing`] | sending at a steady rate (`generate --brokers`, the benchmark's loader) |
//! | [`memory`] | the process's resident and peak memory, for the benchmarks; freed memory handed back |
//! | [`clock`] | wall-clock milliseconds |
//! | [`plural`] | counts in printed sentences (`1 partition`, `2 partitions`) |
//! | [`error`] | the error types |

pub mod accuracy;
pub mod awaiting;
pub mod backpressure;
pub mod bench;
pub mod bench_train;
pub mod bench_trees;
pub mod cache;
pub mod clock;
pub mod codec;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
pub mod event;
pub mod features;
pub mod field;
pub mod generate;
pub mod health;
pub mod http;
pub mod import;
pub mod inspect;
pub mod kafka;
pub mod local;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pacing;
pub mod partition;
pub mod plural;
pub mod predict;
pub mod prediction;
pub mod retrain;
pub mod router;
pub mod scoring;
pub mod serve;
pub mod spares;
pub mod spec;
pub mod train;
pub mod watchdog;

pub use error::{Error, Result};
