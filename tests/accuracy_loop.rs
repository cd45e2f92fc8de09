//! The accuracy loop end to end against Apache Kafka, as issue #19 asks: 500 stores, 5% of
//! them drifting after 50,000 events. A daemon reads the actuals and flags stores; `manymodel
//! retrain` refits the flagged ones and publishes a delta; the daemon swaps it in and the
//! drifted stores' error comes back to the noise.
//!
//! What is stated and asserted:
//! - every drifted store is flagged within [`FLAGGED_WITHIN`] of its own post-drift actuals
//!   (a shift of at least 4 noise sd makes its RMSE about 4× its training RMSE; the moving
//!   average with span 50 crosses 1.5× after about 3 actuals);
//! - at most [`FALSE_FLAGS`] of the 475 stable stores are flagged (the design rate is about
//!   one in a million per window, see README "Accuracy and retraining");
//! - the delta holds only flagged stores whose refit beat the active model;
//! - after the swap every drifted store's recent RMSE is within 1.5× its noise sd, and it is
//!   judged stable again.
//!
//! The actuals carry synthetic, increasing timestamps (their index in `actuals.jsonl` after a
//! base time), so a drift record's `verdict_at_ms` says which actual flagged the store.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::{http_get, metric_sum, run_ok, wait_for, Broker, Daemon, ServeConfigFile};
use manymodel::model::bundle::Bundle;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

const STORES: usize = 500;
const DRIFT_AFTER: usize = 50_000;
/// Actuals read before the retrain: 150 post-drift actuals a store on average.
const BEFORE_RETRAIN: usize = 125_000;
/// All actuals: 60 a store on average after the retrain.
const EVENTS: usize = 155_000;
/// A drifted store is flagged by this many of its post-drift actuals.
const FLAGGED_WITHIN: usize = 10;
/// Stable stores flagged, at most.
const FALSE_FLAGS: usize = 2;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Produces `lines[range]` keyed by store id, actual `i` timestamped `base + i` ms.
fn produce(brokers: &str, topic: &str, lines: &[&str], range: std::ops::Range<usize>, base: i64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    for i in range {
        let v: Value = serde_json::from_str(lines[i]).expect("actual");
        let key = v["store_id"].as_str().expect("store").to_owned();
        let mut record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(lines[i])
            .timestamp(base + i as i64);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flushed");
}

/// The latest drift record per store, and every record, from the start of `topic`.
fn drift_records(brokers: &str, topic: &str) -> Vec<Value> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "loop-drift-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("offset");
    consumer.assign(&tpl).expect("assigned");
    let mut out = Vec::new();
    let mut quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            quiet = std::time::Instant::now();
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON"));
        }
    }
    out
}

fn actuals_scored(addr: &str) -> f64 {
    metric_sum(&http_get(addr, "/metrics").1, "manymodel_actuals_total")
}

#[test]
fn drifted_stores_are_flagged_refitted_and_back_at_the_noise_floor() {
    let kafka = Broker::shared();
    let brokers = kafka.brokers();
    for (topic, partitions) in [
        ("loop-in", 2),
        ("loop-out", 2),
        ("loop-dlq", 1),
        ("loop-control", 1),
        ("loop-control-chunks", 1),
        ("loop-actuals", 4),
        ("loop-drift", 1),
    ] {
        kafka.create_topic(topic, partitions);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    run_ok(&[
        "generate",
        "--stores",
        &STORES.to_string(),
        "--events",
        &EVENTS.to_string(),
        "--drift",
        "0.05",
        "--drift-after",
        &DRIFT_AFTER.to_string(),
        "--seed",
        "5",
        "--out",
        s(d),
    ]);
    let v1 = common::train(d, "v1.avro", "v1");
    run_ok(&[
        "publish",
        "--bundle",
        s(&v1),
        "--brokers",
        &brokers,
        "--control-topic",
        "loop-control",
    ]);
    let plan: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("drift.json")).expect("drift.json"))
            .expect("JSON");
    let drifted: BTreeSet<String> = plan["drifted"]
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    assert_eq!(drifted.len(), 25, "5% of 500");
    let noise = |id: &str| plan["noise_sd"][id].as_f64().expect("noise sd");

    let config = ServeConfigFile::new(&brokers, "loop")
        .topics("loop-in", "loop-out", "loop-dlq")
        .kafka(r#"control_topic = "loop-control""#)
        .actuals(r#"topic = "loop-actuals""#)
        .actuals(r#"drift_topic = "loop-drift""#)
        .actuals("min_actuals = 30")
        .write(d, "serve");
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();

    // Phase 1: the actuals up to 150 a store after the drift.
    let text = std::fs::read_to_string(d.join("actuals.jsonl")).expect("actuals");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), EVENTS);
    let base = manymodel::clock::now_ms() - 3_600_000;
    produce(&brokers, "loop-actuals", &lines, 0..BEFORE_RETRAIN, base);
    wait_for(Duration::from_secs(120), "phase 1 actuals scored", || {
        actuals_scored(&addr) >= BEFORE_RETRAIN as f64
    });
    std::thread::sleep(Duration::from_secs(2)); // drift records acknowledged

    // Which stores were flagged, and by how many of their post-drift actuals.
    let records = drift_records(&brokers, "loop-drift");
    let mut flagged_at: BTreeMap<String, i64> = BTreeMap::new();
    for r in &records {
        if r["verdict"] == "drifting" {
            let id = r["partition"].as_str().expect("id").to_owned();
            let at = r["verdict_at_ms"].as_i64().expect("verdict_at_ms");
            flagged_at.entry(id).or_insert(at);
        }
    }
    let flagged: BTreeSet<String> = flagged_at.keys().cloned().collect();
    let missed: Vec<&String> = drifted.difference(&flagged).collect();
    assert!(missed.is_empty(), "drifted stores not flagged: {missed:?}");
    let false_flags: Vec<&String> = flagged.difference(&drifted).collect();
    assert!(
        false_flags.len() <= FALSE_FLAGS,
        "stable stores flagged: {false_flags:?}"
    );
    let store_of = |i: usize| -> String {
        let v: Value = serde_json::from_str(lines[i]).expect("actual");
        v["store_id"].as_str().expect("id").to_owned()
    };
    let mut delays = BTreeMap::new();
    for id in &drifted {
        let flipped = (flagged_at[id] - base) as usize;
        assert!(flipped >= DRIFT_AFTER, "{id} was flagged before it drifted");
        let delay = (DRIFT_AFTER..=flipped)
            .filter(|&i| store_of(i) == *id)
            .count();
        delays.insert(id.clone(), delay);
    }
    println!("post-drift actuals until flagged: {delays:?}; false flags: {false_flags:?}");
    assert!(
        delays.values().all(|&n| n <= FLAGGED_WITHIN),
        "flagged later than {FLAGGED_WITHIN} actuals: {delays:?}"
    );

    // The retrain: a delta of only flagged stores that improved, published and swapped in.
    let delta_file = d.join("delta.avro");
    std::fs::write(
        d.join("retrain.toml"),
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ncontrol_topic = \"loop-control\"\nactuals_topic = \"loop-actuals\"\n\
             [source]\ndrift_topic = \"loop-drift\"\n\
             [actuals]\nmin_actuals = 60\nread_timeout_secs = 20\n"
        ),
    )
    .expect("retrain.toml");
    let report = run_ok(&[
        "retrain",
        "--config",
        s(&d.join("retrain.toml")),
        "--output",
        s(&delta_file),
    ]);
    println!("{report}");
    let delta = Bundle::read(&delta_file).expect("the delta loads");
    assert_eq!(delta.base_version.as_deref(), Some("v1"));
    let refit: BTreeSet<String> = delta
        .partitions
        .iter()
        .map(|m| m.partition.to_string())
        .collect();
    assert!(refit.is_subset(&flagged), "only flagged stores: {refit:?}");
    assert_eq!(
        refit.intersection(&drifted).count(),
        drifted.len(),
        "every drifted store improved: {report}"
    );
    daemon.wait_active(&delta.version);

    // Phase 2: the rest of the actuals, scored by the refitted models.
    produce(
        &brokers,
        "loop-actuals",
        &lines,
        BEFORE_RETRAIN..EVENTS,
        base,
    );
    wait_for(Duration::from_secs(120), "phase 2 actuals scored", || {
        actuals_scored(&addr) >= EVENTS as f64
    });
    let mut after = BTreeMap::new();
    let mut still_judging = 0;
    for id in &drifted {
        let (status, body) = http_get(&addr, &format!("/partitions/{id}"));
        assert_eq!(status, 200, "{id}: {body}");
        let r: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(r["model_version"], delta.version.as_str(), "{r}");
        let ratio = r["rmse"].as_f64().expect("rmse") / noise(id);
        after.insert(id.clone(), (ratio * 100.0).round() / 100.0);
        assert!(ratio <= 1.5, "{id}: recent RMSE {ratio:.2}× its noise: {r}");
        if r["actuals"].as_u64().expect("count") >= 30 {
            assert_eq!(r["verdict"], "stable", "{r}");
        } else {
            still_judging += 1; // drifting until its new model has min_actuals actuals
        }
    }
    println!("drifted stores' recent RMSE over noise after the swap: {after:?}");
    // Each store judged stable again said so on the drift topic, keyed by it.
    std::thread::sleep(Duration::from_secs(2));
    let stopped: BTreeSet<String> = drift_records(&brokers, "loop-drift")
        .iter()
        .filter(|r| r["verdict"] == "stable")
        .map(|r| r["partition"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(
        stopped.len(),
        drifted.len() - still_judging,
        "stop records: {stopped:?}"
    );
    assert!(stopped.is_subset(&drifted));
    let page: Value =
        serde_json::from_str(&http_get(&addr, "/partitions?limit=1").1).expect("JSON");
    assert!(
        page["drifting"].as_u64().expect("count") <= (FALSE_FLAGS + still_judging) as u64,
        "{page}"
    );
    assert!(daemon.terminate().success());
}
