//! The daemon against Apache Kafka: every event gets exactly one prediction, equal to
//! what offline `predict` gives, stamped with the version, in per-store order; unknown stores
//! and bad records go where the configuration says.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use common::{generate_and_train, run_ok, write_config, Broker, Daemon, Stack};
use manymodel::local;
use serde_json::Value;

fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read_to_string(path)
        .expect("file readable")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

async fn produce(brokers: &str, topic: &str, payloads: Vec<Vec<u8>>) {
    local::produce_events(brokers, topic, std::sync::Arc::new(payloads), None)
        .await
        .expect("events produced");
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("output is JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_gets_one_prediction_equal_to_offline_predict_in_store_order() {
    let broker = Broker::start();
    broker.create_topic("sales", 3);
    broker.create_topic("predictions", 3);
    broker.create_topic("sales-dlq", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let events = 20_000;
    let bundle = generate_and_train(dir.path(), 50, events, "v-test");

    // What offline scoring says, through the same decoder and scorer.
    let offline = dir.path().join("offline.jsonl");
    run_ok(&[
        "predict",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        dir.path().join("events.jsonl").to_str().unwrap(),
        "--output",
        offline.to_str().unwrap(),
    ]);
    let expected: HashMap<String, Value> = read_lines(&offline)
        .iter()
        .map(|l| {
            let v = json(l);
            (v["event_id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    assert_eq!(expected.len(), events);

    let config = write_config(
        dir.path(),
        "core",
        &broker.brokers(),
        ("sales", "predictions", "sales-dlq"),
        &bundle,
        "fallback",
    );
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    produce(
        &broker.brokers(),
        "sales",
        read_lines(&dir.path().join("events.jsonl")),
    )
    .await;

    let records = local::read(
        &broker.brokers(),
        "predictions",
        events,
        Duration::from_secs(120),
    )
    .await
    .expect("predictions readable");
    assert_eq!(
        records.len(),
        events,
        "a prediction per event:\n{}",
        daemon.log_text()
    );
    // A second reader waits a little longer for anything beyond one per event.
    let again = local::read(
        &broker.brokers(),
        "predictions",
        events + 1,
        Duration::from_secs(15),
    )
    .await
    .expect("predictions readable");
    assert_eq!(again.len(), events, "and no more than one per event");

    let mut seen = HashSet::new();
    let mut last_index: HashMap<String, u64> = HashMap::new();
    for r in &records {
        let p = json(&r.value);
        let id = p["event_id"].as_str().expect("event_id echoed").to_owned();
        assert!(seen.insert(id.clone()), "{id} predicted twice");
        let want = &expected[&id];
        assert_eq!(&p, want, "Kafka and offline predictions differ for {id}");
        assert_eq!(p["model_version"], "v-test");
        assert_eq!(
            r.headers.get("model-version").map(String::as_str),
            Some("v-test")
        );
        let store = p["store_id"].as_str().unwrap().to_owned();
        assert_eq!(
            r.key.as_deref(),
            Some(store.as_bytes()),
            "keyed by the partition id"
        );
        // Events were produced in file order, so per store the indices must rise.
        let index: u64 = id.trim_start_matches("ev-").parse().unwrap();
        if let Some(prev) = last_index.insert(store.clone(), index) {
            assert!(prev < index, "store {store}: {id} left after ev-{prev}");
        }
    }
    assert_eq!(last_index.len(), 50);
    let status = daemon.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
}

/// Events for a store the bundle has never seen: one known, one unknown.
fn mixed_events() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 { "S001" } else { "NEW-STORE" };
        out.push(
            serde_json::json!({"event_id": format!("m-{i}"), "store_id": store, "ts": "2025-03-01T12:00:00Z",
                "price": 5.0, "promo": false, "temperature": 14.0, "weather": "sunny"})
            .to_string()
            .into_bytes(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_stores_get_the_fallback_or_the_dlq_as_configured() {
    let broker = Broker::start();
    for t in ["in-fb", "out-fb", "dlq-fb", "in-dlq", "out-dlq", "dlq-dlq"] {
        broker.create_topic(t, 2);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = generate_and_train(dir.path(), 5, 10, "v-unknown");

    let mut fb = Daemon::start(&write_config(
        dir.path(),
        "fb",
        &broker.brokers(),
        ("in-fb", "out-fb", "dlq-fb"),
        &bundle,
        "fallback",
    ));
    let mut dl = Daemon::start(&write_config(
        dir.path(),
        "dl",
        &broker.brokers(),
        ("in-dlq", "out-dlq", "dlq-dlq"),
        &bundle,
        "dlq",
    ));
    fb.wait_assigned();
    dl.wait_assigned();
    produce(&broker.brokers(), "in-fb", mixed_events()).await;
    produce(&broker.brokers(), "in-dlq", mixed_events()).await;

    let out = local::read(&broker.brokers(), "out-fb", 20, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(out.len(), 20);
    for r in &out {
        let p = json(&r.value);
        let want = if p["store_id"] == "NEW-STORE" {
            "fallback"
        } else {
            "partition"
        };
        assert_eq!(p["model"], want);
    }

    let out = local::read(&broker.brokers(), "out-dlq", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|r| json(&r.value)["store_id"] == "S001"));
    let dead = local::read(&broker.brokers(), "dlq-dlq", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(dead.len(), 10);
    let originals = mixed_events();
    for r in &dead {
        assert_eq!(r.headers["error-kind"], "unknown_partition");
        assert_eq!(r.headers["source-topic"], "in-dlq");
        assert!(r.headers["error-message"].contains("NEW-STORE"));
        assert!(
            originals.contains(&r.value),
            "the original value, untouched"
        );
        assert_eq!(
            r.key.as_deref(),
            Some(&b"NEW-STORE"[..]),
            "the original key, untouched"
        );
    }
    assert!(fb.terminate().success());
    assert!(dl.terminate().success());
}

#[test]
fn bench_against_a_real_broker_prints_both_pipelines_and_their_ratio() {
    let broker = Broker::start();
    let out = run_ok(&[
        "bench",
        "--brokers",
        &broker.brokers(),
        "--records-per-batch",
        "1",
        "--events",
        "3000",
        "--stores",
        "20",
        "--kafka-partitions",
        "3",
        "--latency-rate",
        "200",
    ]);
    assert!(out.contains(&broker.brokers()), "names the broker: {out}");
    for pipeline in ["passthrough", "scoring"] {
        assert!(
            common::bench_rate(&out, pipeline) > 0.0,
            "{pipeline} drained every event: {out}"
        );
    }
    assert!(out.contains("scoring / passthrough throughput"), "{out}");
    assert!(
        out.contains("scoring's extra CPU over passthrough"),
        "prints the goal's figure: {out}"
    );
    assert!(
        out.contains("before the pipeline read the event")
            && out.contains("from the read to the acknowledgement"),
        "splits the latency at the read: {out}"
    );
    assert!(
        out.contains("until the broker acknowledged the event to the loader"),
        "splits the part before the read at the input's acknowledgement: {out}"
    );
}

/// `--latency-rate half` first finds the highest rate the scoring pipeline keeps up with while
/// the bench's loader streams into it (probes that step down from the drain rate), prints it
/// with the probes, and measures latency at half of it. `--loader-option` sets the loader alone.
#[test]
fn bench_at_half_measures_latency_at_half_the_rate_scoring_kept_up_with_while_streaming() {
    let broker = Broker::start();
    let out = run_ok(&[
        "bench",
        "--brokers",
        &broker.brokers(),
        "--events",
        "5000",
        "--stores",
        "20",
        "--repeat",
        "1",
        "--latency-rate",
        "half",
        "--loader-option",
        "linger.ms=2",
    ]);
    let number_after = |prefix: &str| -> u64 {
        let at = out
            .find(prefix)
            .unwrap_or_else(|| panic!("{prefix:?} in {out}"));
        let digits: String = out[at + prefix.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("a number after {prefix:?}: {out}"))
    };
    assert!(
        out.contains("librdkafka options of the loader only (--loader-option): linger.ms=2"),
        "{out}"
    );
    let streamed = number_after("streamed maximum: ");
    assert!(streamed > 0, "{out}");
    assert!(
        out.contains("the loader idle: ") && out.contains("rate / acknowledged: "),
        "the probes and the drain rate beside it: {out}"
    );
    assert_eq!(
        number_after("latency measured at "),
        (streamed / 2).max(1),
        "half of it: {out}"
    );
    assert!(
        out.contains("(half the highest rate scoring kept up with while the loader streamed)"),
        "{out}"
    );
}

/// A producer sending ids never seen before (buggy or hostile) cannot make the daemon keep
/// anything per id: every event is scored by the fallback, the actors stay one per core, and
/// the process grows by less than 50 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn never_seen_store_ids_are_scored_by_the_fallback_and_leave_nothing_behind() {
    const IDS: usize = 300_000;
    let Stack {
        daemon,
        broker,
        dir: _dir,
    } = Stack::start("ids", 2, 5, 10, "v-ids");
    let addr = daemon.metrics_addr();
    let pid = daemon.child.id();
    let before = common::chaos::memory_kib(pid).0;
    let payloads: Vec<Vec<u8>> = (0..IDS)
        .map(|i| {
            format!(
                r#"{{"event_id":"e{i}","store_id":"never-seen-{i:07}","ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}}"#
            )
            .into_bytes()
        })
        .collect();
    produce(&broker.brokers(), "in", payloads).await;
    common::wait_for(Duration::from_secs(120), "every event scored", || {
        common::metric_sum(
            &common::http_get(&addr, "/metrics").1,
            "manymodel_predictions_produced_total",
        ) >= IDS as f64
    });
    let metrics = common::http_get(&addr, "/metrics").1;
    let actors = common::metric_sum(&metrics, "manymodel_partition_actors");
    // Measured once the daemon has settled: the allocator hands the burst's freed buffers
    // (the consumer's prefetched records, the producer's sent ones) back to the kernel when a
    // thread idles, at most once a second per thread, which a busy machine delays. What stays
    // is what the daemon keeps.
    let settle_by = std::time::Instant::now() + Duration::from_secs(15);
    let mut after = common::chaos::memory_kib(pid).0;
    while after.saturating_sub(before) >= 50 * 1024 && std::time::Instant::now() < settle_by {
        std::thread::sleep(Duration::from_millis(200));
        after = common::chaos::memory_kib(pid).0;
    }
    println!(
        "{IDS} never-seen ids: {actors} partition actors, RSS {} -> {} MiB",
        before / 1024,
        after / 1024
    );
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    assert!(
        actors <= cores,
        "{actors} actors for {IDS} ids: state grows with unknown ids"
    );
    assert!(
        after.saturating_sub(before) < 50 * 1024,
        "grew by {} KiB for {IDS} never-seen ids",
        after - before
    );
    assert!(daemon.terminate().success());
}
