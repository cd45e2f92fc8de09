//! Hot reload against Apache Kafka: bundles published on the control topic while
//! events stream are validated and swapped in with no event lost or scored twice; bad bundles
//! are rejected with their reasons; deltas, rollbacks, restarts and late instances converge.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{http_get, metric_sum, run, run_ok, Broker, Daemon, ServeConfigFile};
use manymodel::control::message::{chunk_headers, ControlMessage, Manifest};
use manymodel::control::signing::BundleSigner;
use manymodel::local;
use manymodel::model::bundle::Bundle;
use manymodel::model::Model;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A broker with `topics` (kept alive by holding `broker`), and a folder holding a generated history (5 stores) and two bundles
/// trained from it: v1 on its first 2,000 rows, v2 on 3,000.
struct TwoVersions {
    broker: Broker,
    brokers: String,
    dir: tempfile::TempDir,
    v1: PathBuf,
    v2: PathBuf,
}

fn two_versions(topics: &[(&str, i32)]) -> TwoVersions {
    let broker = Broker::start();
    let brokers = broker.brokers();
    for &(t, n) in topics {
        broker.create_topic(t, n);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    generate(dir.path(), 5, 50);
    let v1 = train(dir.path(), 2_000, "v1", None);
    let v2 = train(dir.path(), 3_000, "v2", None);
    TwoVersions {
        broker,
        brokers,
        dir,
        v1,
        v2,
    }
}

/// A serve config that takes its bundles from the control topic `control`.
fn control_config(
    dir: &Path,
    name: &str,
    brokers: &str,
    output: &str,
    bundle: Option<&Path>,
    trusted: Option<&Path>,
) -> PathBuf {
    let mut c = ServeConfigFile::new(brokers, name)
        .topics("in", output, "dlq")
        .kafka(r#"control_topic = "control""#);
    if let Some(b) = bundle {
        c = c.bundle(b);
    }
    if let Some(k) = trusted {
        c = c.model(&format!("trusted_keys = [\"{}\"]", k.display()));
    }
    c.write(dir, name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Generates stores and events, and the history split so bundles can differ.
fn generate(dir: &Path, stores: usize, events: usize) {
    run_ok(&[
        "generate",
        "--stores",
        &stores.to_string(),
        "--days",
        "21",
        "--events",
        &events.to_string(),
        "--out",
        s(dir),
    ]);
}

/// Trains `version` on the first `rows` history rows (so each version fits other numbers).
fn train(dir: &Path, rows: usize, version: &str, base: Option<(&Path, &str)>) -> PathBuf {
    let history = std::fs::read_to_string(dir.join("history.csv")).expect("history");
    let subset: Vec<&str> = history.lines().take(rows + 1).collect();
    let input = dir.join(format!("history-{version}.csv"));
    std::fs::write(&input, subset.join("\n") + "\n").expect("subset written");
    let output = dir.join(format!("{version}.avro"));
    let spec = dir.join("train.toml");
    let mut args = vec![
        "train",
        "--spec",
        s(&spec),
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--version",
        version,
    ];
    if let Some((b, partitions)) = base {
        args.extend(["--base", s(b), "--partitions", partitions]);
    }
    run_ok(&args);
    output
}

fn publish(brokers: &str, bundle: &Path, key: Option<&Path>) -> String {
    let mut args = vec![
        "publish",
        "--bundle",
        s(bundle),
        "--brokers",
        brokers,
        "--control-topic",
        "control",
    ];
    if let Some(k) = key {
        args.extend(["--signing-key", s(k)]);
    }
    run_ok(&args)
}

/// Publishes a bundle the way a broken publisher would: `damage` gets the chunks and may
/// change them; the manifest describes the undamaged file.
/// Publishes `bundle` signed with `key` (so that the damage, not a missing signature, is what
/// the daemon finds), its chunks damaged after the manifest was made.
fn publish_damaged(
    brokers: &str,
    bundle: &Path,
    key: &Path,
    damage: impl FnOnce(&mut Vec<Vec<u8>>),
) {
    let bytes = std::fs::read(bundle).expect("bundle");
    let version = Bundle::from_avro(&bytes).expect("valid bundle").version;
    let mut chunks: Vec<Vec<u8>> = bytes.chunks(4096).map(<[u8]>::to_vec).collect();
    let signer = BundleSigner::load(key).expect("signing key");
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let manifest = Manifest {
        publish_id: format!("damaged-{version}"),
        version: version.clone(),
        base_version: None,
        size: bytes.len() as u64,
        chunks: chunks.len() as u32,
        sha256: manymodel::control::assembly::sha256_hex(&bytes),
        signature: Some(signer.sign(&digest)),
        signer: Some(signer.public_hex()),
        activate: true,
        published_at_ms: 0,
        chunks_at: None,
    };
    damage(&mut chunks);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for (i, c) in chunks.iter().enumerate() {
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to("control")
                    .partition(0)
                    .key(version.as_bytes())
                    .payload(c)
                    .headers(chunk_headers(&manifest.publish_id, i as u32)),
            )
            .expect("chunk queued");
    }
    let text = serde_json::to_vec(&ControlMessage::Manifest(manifest)).expect("json");
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to("control")
                .partition(0)
                .payload(&text),
        )
        .expect("manifest queued");
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

fn send_raw(brokers: &str, payload: &[u8]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to("control")
                .partition(0)
                .payload(payload),
        )
        .expect("queued");
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// Sends `manymodel control ARGS` to the control topic `control`.
fn control(brokers: &str, args: &[&str]) {
    let mut all = vec!["control"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--brokers", brokers, "--control-topic", "control"]);
    run_ok(&all);
}

/// Offline predictions of every event by `bundle`: event_id → prediction.
fn offline(dir: &Path, bundle: &Path) -> HashMap<String, f64> {
    let out = bundle.with_extension("predictions.jsonl");
    run_ok(&[
        "predict",
        "--bundle",
        s(bundle),
        "--input",
        s(&dir.join("events.jsonl")),
        "--output",
        s(&out),
    ]);
    std::fs::read_to_string(&out)
        .expect("predictions")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("json");
            (
                v["event_id"].as_str().expect("event_id").to_owned(),
                v["prediction"].as_f64().expect("prediction"),
            )
        })
        .collect()
}

fn events(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .expect("events")
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bundles_swap_in_while_events_stream_and_bad_ones_are_rejected() {
    let broker = Broker::start();
    let brokers = broker.brokers();
    broker.create_topic("in", 3);
    broker.create_topic("out", 3);
    broker.create_topic("dlq", 1);
    broker.create_topic("control", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let total = 100_000;
    generate(d, 40, total);
    let key = d.join("release.key");
    let rogue = d.join("rogue.key");
    run_ok(&["keygen", "--out", s(&key)]);
    run_ok(&["keygen", "--out", s(&rogue)]);

    // Ten bundles, told apart by the history rows they were fitted on.
    let v01 = train(d, 8_000, "v01", None);
    let v02 = train(d, 9_000, "v02", None);
    let v03 = train(d, 10_000, "v03", Some((&v02, "S001,S002,S003")));
    let v04 = train(d, 11_000, "v04-corrupt", None);
    let v05 = train(d, 12_000, "v05-truncated", None);
    let v06 = train(d, 13_000, "v06-rogue", None);
    let v07 = train(d, 14_000, "v07", None);
    let v08 = train(d, 15_000, "v08", None);
    let v09 = train(d, 16_000, "v09", Some((&v08, "S004,S005")));
    let v10 = train(d, 17_000, "v10", None);

    publish(&brokers, &v01, Some(&key));
    let config = control_config(
        d,
        "reload",
        &brokers,
        "out",
        None,
        Some(&key.with_extension("key.pub")),
    );
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    daemon.wait_active("v01");

    let payloads = std::sync::Arc::new(events(d));
    let producing = {
        let (brokers, payloads) = (brokers.clone(), payloads.clone());
        tokio::spawn(
            async move { local::produce_events(&brokers, "in", payloads, Some(6_000)).await },
        )
    };
    // The activation order a store's predictions must follow.
    let mut epochs = vec!["v01"];
    let pace = || std::thread::sleep(Duration::from_millis(700));
    let b = brokers.clone();
    let files = [&v02, &v03, &v04, &v05, &v06, &v07, &v08, &v09, &v10].map(|p| p.clone());
    let (key_, rogue_) = (key.clone(), rogue.clone());
    let publishing = tokio::task::spawn_blocking(move || {
        let [v02, v03, v04, v05, v06, v07, v08, v09, v10] = files;
        let (key, rogue) = (key_, rogue_);
        pace();
        publish(&b, &v02, Some(&key));
        pace();
        publish(&b, &v03, Some(&key));
        pace();
        publish_damaged(&b, &v04, &key, |c| c[1][10] ^= 0xff);
        pace();
        publish_damaged(&b, &v05, &key, |c| {
            c.remove(2);
        });
        pace();
        publish(&b, &v06, Some(&rogue));
        pace();
        send_raw(&b, b"\x00\x01 not a control record");
        publish(&b, &v07, Some(&key));
        pace();
        control(&b, &["rollback"]);
        pace();
        publish(&b, &v08, Some(&key));
        pace();
        publish(&b, &v09, Some(&key));
        pace();
        publish(&b, &v10, Some(&key));
    });
    epochs.extend(["v02", "v03", "v07", "v03", "v08", "v09", "v10"]);
    publishing.await.expect("publisher thread");
    producing
        .await
        .expect("producer task")
        .expect("events produced");

    let records = local::read(&brokers, "out", total, Duration::from_secs(120))
        .await
        .expect("predictions read");
    daemon.wait_active("v10");

    // Expected predictions per version; deltas are compared with their materialised bundle.
    let mut expected: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for (version, path) in [
        ("v01", v01.clone()),
        ("v02", v02.clone()),
        ("v07", v07.clone()),
        ("v08", v08.clone()),
        ("v10", v10.clone()),
    ] {
        expected.insert(version.into(), offline(d, &path));
    }
    for (version, base, delta) in [("v03", &v02, &v03), ("v09", &v08, &v09)] {
        let full = manymodel::model::delta::apply(
            &Bundle::read(base).expect("base"),
            &Bundle::read(delta).expect("delta"),
        )
        .expect("delta applies");
        let path = d.join(format!("{version}-full.avro"));
        full.write(&path).expect("written");
        expected.insert(version.into(), offline(d, &path));
    }

    let mut seen = HashSet::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    let mut by_version: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let v: Value = serde_json::from_slice(&r.value).expect("prediction JSON");
        let id = v["event_id"].as_str().expect("event_id").to_owned();
        let version = v["model_version"].as_str().expect("version").to_owned();
        let store = v["store_id"].as_str().expect("store").to_owned();
        assert_eq!(r.headers.get("model-version"), Some(&version));
        let want = expected
            .get(&version)
            .unwrap_or_else(|| panic!("{id} stamped {version}, which was never activated"))[&id];
        let got = v["prediction"].as_f64().expect("prediction");
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{id} stamped {version}: {got}, but {version} predicts {want}"
        );
        // Per store, versions follow the activations: forward, and back only at the rollback.
        let at = position.entry(store.clone()).or_insert(0);
        match epochs[*at..].iter().position(|e| *e == version) {
            Some(step) => *at += step,
            None => panic!(
                "store {store}: {version} after {}, against the activation order {epochs:?}",
                epochs[*at]
            ),
        }
        assert!(seen.insert(id.clone()), "{id} has two predictions");
        *by_version.entry(version).or_default() += 1;
    }
    assert_eq!(seen.len(), total, "every event has exactly one prediction");
    eprintln!("predictions by version: {by_version:?}");

    let metrics = http_get(&daemon.metrics_addr(), "/metrics").1;
    for reason in ["checksum", "incomplete", "signature", "garbage"] {
        assert_eq!(
            metric_sum(
                &metrics,
                &format!("manymodel_bundle_rejections_total{{reason=\"{reason}\"}}")
            ),
            1.0,
            "one rejection for {reason}:\n{metrics}"
        );
    }
    let log = daemon.log_text();
    for version in ["v04-corrupt", "v05-truncated", "v06-rogue"] {
        assert!(
            log.lines()
                .any(|l| l.contains("control record rejected") && l.contains(version)),
            "{version} rejected in the log:\n{log}"
        );
        assert!(!by_version.contains_key(version));
    }
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_without_a_local_bundle_comes_up_on_the_control_topics_version() {
    let broker = Broker::start();
    let brokers = broker.brokers();
    for (t, n) in [
        ("in", 2),
        ("out", 2),
        ("out-late", 2),
        ("dlq", 1),
        ("control", 1),
    ] {
        broker.create_topic(t, n);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    generate(d, 10, 200);
    let v1 = train(d, 3_000, "v1", None);
    let v2 = train(d, 4_000, "v2", None);

    // Nothing published yet: up, but not ready.
    let config = control_config(d, "first", &brokers, "out", None, None);
    let daemon = Daemon::start(&config);
    let addr = daemon.metrics_addr();
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no bundle is active"), "{body}");

    publish(&brokers, &v1, None);
    daemon.wait_active("v1");
    assert!(daemon.terminate().success());

    // Restarted with no local bundle: the control topic's version.
    let mut daemon = Daemon::start(&config);
    daemon.wait_active("v1");
    daemon.wait_assigned();
    let payloads = events(d);
    local::produce_events(&brokers, "in", std::sync::Arc::new(payloads), None)
        .await
        .expect("events produced");
    let records = local::read(&brokers, "out", 200, Duration::from_secs(60))
        .await
        .expect("predictions");
    assert_eq!(records.len(), 200);
    assert!(records
        .iter()
        .all(|r| r.headers.get("model-version").map(String::as_str) == Some("v1")));

    // v2, then a rollback to v1; an instance started later converges on v1 as well.
    publish(&brokers, &v2, None);
    daemon.wait_active("v2");
    control(&brokers, &["rollback"]);
    daemon.wait_active("v1");
    control(&brokers, &["activate", "--version", "v2"]);
    daemon.wait_active("v2");
    let late_config = control_config(d, "late", &brokers, "out-late", Some(&v1), None);
    let late = Daemon::start(&late_config);
    late.wait_active("v2");

    // Commands the daemons cannot honour are rejected, and they keep serving.
    control(&brokers, &["activate", "--version", "v9"]);
    std::thread::sleep(Duration::from_secs(1));
    daemon.wait_active("v2");
    let metrics = http_get(&late.metrics_addr(), "/metrics").1;
    assert_eq!(
        metric_sum(
            &metrics,
            "manymodel_bundle_rejections_total{reason=\"unknown_version\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert!(late.terminate().success());
    assert!(daemon.terminate().success());
}

#[test]
fn a_delta_keeps_the_base_models_it_does_not_replace_and_is_refused_as_a_local_bundle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    generate(d, 8, 10);
    let base = train(d, 3_000, "base", None);
    let delta = train(d, 2_000, "delta", Some((&base, "S002")));
    let b = Bundle::read(&base).expect("base");
    let dl = Bundle::read(&delta).expect("delta");
    assert_eq!(dl.base_version.as_deref(), Some("base"));
    assert_eq!(dl.partitions.len(), 1);
    assert_eq!(
        dl.rows_used, dl.partitions[0].rows,
        "a delta counts the rows of the stores it refits, not the whole history's"
    );
    assert!(dl.rows_used < b.rows_used);
    let full = manymodel::model::delta::apply(&b, &dl).expect("applies");
    assert_eq!(full.partitions.len(), b.partitions.len());
    for m in &full.partitions {
        let from = if m.partition == "S002" { &dl } else { &b };
        assert_eq!(Some(m), from.partition(&m.partition));
    }
    assert!(manymodel::model::delta::apply(&dl, &dl).is_err());

    // Scoring a delta alone would silently use the fallback for every other store: refused.
    let o = run(&[
        "predict",
        "--bundle",
        s(&delta),
        "--input",
        s(&d.join("events.jsonl")),
        "--output",
        s(&d.join("p.jsonl")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a delta of base"));

    // Asking for a store the history lacks, or a delta of a delta, is a usage error.
    let spec = d.join("train.toml");
    let history = d.join("history.csv");
    let out = d.join("x.avro");
    for args in [
        vec!["--base", s(&base), "--partitions", "NOPE"],
        vec!["--base", s(&delta)],
    ] {
        let mut all = vec![
            "train",
            "--spec",
            s(&spec),
            "--input",
            s(&history),
            "--output",
            s(&out),
        ];
        all.extend(args);
        let o = run(&all);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_of_100000_partitions_publishes_and_swaps_in() {
    let broker = Broker::start();
    let brokers = broker.brokers();
    for (t, n) in [("in", 2), ("out", 2), ("dlq", 1), ("control", 1)] {
        broker.create_topic(t, n);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    generate(d, 5, 100);
    let small = train(d, 3_000, "small", None);

    // 100,000 stores, each with its own intercept, built from the small bundle's spec.
    let base = Bundle::read(&small).expect("small bundle");
    let stores = 100_000;
    let partitions: Vec<_> = (0..stores)
        .map(|i| {
            let mut m = base.partitions[i % base.partitions.len()].clone();
            m.partition = format!("Z{i:06}").into();
            if let Model::Linear(l) = &mut m.model {
                l.intercept += i as f64;
                // Distinct coefficients, so the file is as large as a real one (no free
                // compression).
                l.coefficients = l
                    .coefficients
                    .iter()
                    .enumerate()
                    .map(|(j, c)| c + ((i * 7919 + j * 104_729) % 10_007) as f64 * 1e-4)
                    .collect();
            }
            m
        })
        .collect();
    let big = Bundle::new(
        "big".into(),
        None,
        base.created_at_ms + 1,
        base.spec.clone(),
        base.rows_used,
        0,
        base.fallback.clone(),
        partitions,
    )
    .expect("big bundle");
    let big_path = d.join("big.avro");
    big.write(&big_path).expect("written");
    let size = std::fs::metadata(&big_path).expect("size").len();

    let config = control_config(d, "big", &brokers, "out", Some(&small), None);
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let started = Instant::now();
    let said = publish(&brokers, &big_path, None);
    let publish_s = started.elapsed().as_secs_f64();
    daemon.wait_active("big");
    let active_s = started.elapsed().as_secs_f64();

    // Events of three of the new stores are scored by their own models under "big".
    let events: Vec<Vec<u8>> = events(d)
        .iter()
        .take(30)
        .enumerate()
        .map(|(i, e)| {
            let mut v: Value = serde_json::from_slice(e).expect("event");
            v["store_id"] = Value::from(format!("Z{:06}", [7, 50_000, 99_999][i % 3]));
            serde_json::to_vec(&v).expect("json")
        })
        .collect();
    local::produce_events(&brokers, "in", std::sync::Arc::new(events), None)
        .await
        .expect("produced");
    let records = local::read(&brokers, "out", 30, Duration::from_secs(60))
        .await
        .expect("predictions");
    assert_eq!(records.len(), 30);
    for r in &records {
        let v: Value = serde_json::from_slice(&r.value).expect("json");
        assert_eq!(v["model_version"], "big");
        assert_eq!(v["model"], "partition");
    }
    let metrics = http_get(&daemon.metrics_addr(), "/metrics").1;
    assert_eq!(
        metric_sum(&metrics, "manymodel_bundle_partitions"),
        stores as f64
    );
    let pause = metric_sum(&metrics, "manymodel_bundle_swap_pause_seconds");
    let load_ms = daemon
        .log_text()
        .lines()
        .find(|l| l.contains("bundle validated") && l.contains("version=big"))
        .and_then(|l| l.split("load_ms=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_default();
    eprintln!(
        "100,000-partition bundle: {size} bytes; {said}publish {publish_s:.2}s; active after {active_s:.2}s; assembled and validated in {load_ms} ms; swap pause {:.1} µs",
        pause * 1e6
    );
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_made_while_an_instance_was_down_wins_over_its_newer_local_bundle() {
    let TwoVersions {
        broker,
        brokers,
        dir,
        v1,
        v2,
    } = two_versions(&[("in", 1), ("out", 1), ("dlq", 1), ("control", 1)]);
    let d = dir.path();
    publish(&brokers, &v1, None);
    publish(&brokers, &v2, None);
    // The operator rolls back while this instance is down; its local file is the newer v2.
    control(&brokers, &["rollback"]);
    let config = control_config(d, "down", &brokers, "out", Some(&v2), None);
    let daemon = Daemon::start(&config);
    daemon.wait_active("v1");
    std::thread::sleep(Duration::from_secs(2));
    daemon.wait_active("v1");
    assert!(
        !daemon.log_text().contains("version=v2 \"activating\""),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.terminate().success());

    // A topic that activated nothing is bootstrapped by the local file.
    broker.create_topic("control-empty", 1);
    let config = ServeConfigFile::new(&brokers, "empty")
        .topics("in", "out", "dlq")
        .kafka(r#"control_topic = "control-empty""#)
        .bundle(&v2)
        .write(d, "empty");
    let daemon = Daemon::start(&config);
    daemon.wait_active("v2");
    assert!(daemon.terminate().success());
}

/// A daemon started on its local bundle, rolled back to it (or asked to activate it by name)
/// after a publish, comes back on it after a restart, as a new instance with the same file
/// does: the operator's last word holds however it named the local version.
#[tokio::test(flavor = "multi_thread")]
async fn a_return_to_the_local_bundle_outlives_a_restart() {
    let TwoVersions {
        broker: _broker,
        brokers,
        dir,
        v1,
        v2,
    } = two_versions(&[("in", 1), ("out", 1), ("dlq", 1), ("control", 1)]);
    let d = dir.path();
    let config = control_config(d, "local", &brokers, "out", Some(&v1), None);
    let restarted_on = |expected: &str| {
        let daemon = Daemon::start(&config);
        daemon.wait_active(expected);
        std::thread::sleep(Duration::from_secs(2));
        daemon.wait_active(expected);
        daemon
    };

    let daemon = restarted_on("v1");
    publish(&brokers, &v2, None);
    daemon.wait_active("v2");
    control(&brokers, &["rollback"]);
    daemon.wait_active("v1");
    assert!(daemon.terminate().success());
    let daemon = restarted_on("v1");

    control(&brokers, &["activate", "--version", "v2"]);
    daemon.wait_active("v2");
    control(&brokers, &["activate", "--version", "v1"]);
    daemon.wait_active("v1");
    assert!(daemon.terminate().success());
    let daemon = restarted_on("v1");
    assert!(
        !daemon.log_text().contains("no_previous"),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.terminate().success());
}

/// A manifest without `chunks_at` whose chunks never came before it (written by hand, or by a
/// hostile writer) is refused as incomplete; it does not make every restart replay the whole
/// control topic, as a genuine older publish (its chunks in the control topic) still does.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_old_style_manifest_does_not_make_restarts_replay_everything() {
    let TwoVersions {
        broker: _broker,
        brokers,
        dir,
        v1,
        v2,
    } = two_versions(&[
        ("in", 1),
        ("out", 1),
        ("dlq", 1),
        ("control", 1),
        ("control-chunks", 1),
    ]);
    let d = dir.path();
    publish(&brokers, &v1, None);
    let sha = "00".repeat(32);
    let forged = format!(
        r#"{{"kind":"manifest","publish_id":"forged","version":"evil","size":10,"chunks":1,"sha256":"{sha}","activate":true,"published_at_ms":0}}"#
    );
    local::produce_events(
        &brokers,
        "control",
        std::sync::Arc::new(vec![forged.into_bytes()]),
        None,
    )
    .await
    .expect("forged manifest written");
    publish(&brokers, &v2, None);
    let config = ServeConfigFile::new(&brokers, "forged")
        .topics("in", "out", "dlq")
        .kafka(r#"control_topic = "control""#)
        .write(d, "forged");
    let daemon = Daemon::start(&config);
    daemon.wait_active("v2");
    let log = daemon.log_text();
    assert!(!log.contains("replaying it whole"), "{log}");
    assert!(log.contains("reason=\"incomplete\""), "{log}");
    assert_eq!(replay_field(&daemon, "publishes_fetched"), Some(1), "{log}");
    assert!(daemon.terminate().success());
}

/// The number after `field=` in the daemon's "control topic read" line.
fn replay_field(daemon: &Daemon, field: &str) -> Option<usize> {
    daemon
        .log_text()
        .lines()
        .rev()
        .find(|l| l.contains("control topic read"))
        .and_then(|l| l.split(&format!("{field}=")).nth(1))
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_fetches_only_the_chunks_of_the_versions_it_holds() {
    let broker = Broker::start();
    let brokers = broker.brokers();
    for (t, n) in [
        ("in", 1),
        ("out", 1),
        ("dlq", 1),
        ("control", 1),
        ("control-chunks", 1),
    ] {
        broker.create_topic(t, n);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    generate(d, 5, 50);
    let versions: Vec<PathBuf> = (1..=5)
        .map(|i| train(d, 1_500 + 300 * i, &format!("v{i}"), None))
        .collect();
    for v in &versions {
        publish(&brokers, v, None);
    }
    let config = ServeConfigFile::new(&brokers, "held")
        .topics("in", "out", "dlq")
        .kafka(r#"control_topic = "control""#)
        .model("keep_versions = 2")
        .write(d, "held");
    let mut daemon = Daemon::start(&config);
    daemon.wait_active("v5");
    assert_eq!(
        replay_field(&daemon, "records"),
        Some(5),
        "5 manifests, no chunks"
    );
    assert_eq!(replay_field(&daemon, "chunks_passed_over"), Some(0));
    assert_eq!(
        replay_field(&daemon, "publishes_fetched"),
        Some(1),
        "{}",
        daemon.log_text()
    );
    assert_eq!(replay_field(&daemon, "publishes_held_on_topic"), Some(1));
    // Scores with v5, and a rollback reaches v4, which it holds on the topic.
    daemon.wait_assigned();
    local::produce_events(&brokers, "in", std::sync::Arc::new(events(d)), None)
        .await
        .expect("events");
    let records = local::read(&brokers, "out", 50, Duration::from_secs(60))
        .await
        .expect("predictions");
    assert_eq!(records.len(), 50);
    assert!(records
        .iter()
        .all(|r| r.headers.get("model-version").map(String::as_str) == Some("v5")));
    control(&brokers, &["rollback"]);
    daemon.wait_active("v4");
    assert!(daemon.terminate().success());

    // Restarted: the same version. Only v4, the active one, is fetched; v3 (the rollback
    // target) and v5 stay on the topic until a command needs them.
    let daemon = Daemon::start(&config);
    daemon.wait_active("v4");
    assert_eq!(replay_field(&daemon, "publishes_fetched"), Some(1));
    assert_eq!(replay_field(&daemon, "publishes_held_on_topic"), Some(2));
    let metrics = http_get(&daemon.metrics_addr(), "/metrics").1;
    assert_eq!(
        metric_sum(&metrics, "manymodel_bundle_rejections_total"),
        0.0,
        "{metrics}"
    );
    assert!(daemon.terminate().success());

    // Holding 4 versions: v2, v3 and v5 are held on the topic; `rollback` and `activate`
    // bring them back.
    let config = ServeConfigFile::new(&brokers, "held4")
        .topics("in", "out", "dlq")
        .kafka(r#"control_topic = "control""#)
        .model("keep_versions = 4")
        .write(d, "held4");
    let mut daemon = Daemon::start(&config);
    daemon.wait_active("v4");
    assert_eq!(replay_field(&daemon, "publishes_fetched"), Some(1));
    assert_eq!(replay_field(&daemon, "publishes_held_on_topic"), Some(3));
    control(&brokers, &["rollback"]);
    daemon.wait_active("v3");
    control(&brokers, &["activate", "--version", "v5"]);
    daemon.wait_active("v5");
    control(&brokers, &["rollback"]);
    daemon.wait_active("v3");
    control(&brokers, &["activate", "--version", "v2"]);
    daemon.wait_active("v2");
    // Published while it runs: v6 becomes active and v2 leaves memory (only the active bundle
    // stays there); a rollback fetches v2 again, and an activate v6.
    let v6 = train(d, 3_100, "v6", None);
    publish(&brokers, &v6, None);
    daemon.wait_active("v6");
    control(&brokers, &["rollback"]);
    daemon.wait_active("v2");
    control(&brokers, &["activate", "--version", "v6"]);
    daemon.wait_active("v6");
    let metrics = http_get(&daemon.metrics_addr(), "/metrics").1;
    assert_eq!(
        metric_sum(&metrics, "manymodel_bundle_rejections_total"),
        0.0,
        "{metrics}"
    );
    // v1 was never held by this daemon: refused, and v6 stays.
    control(&brokers, &["activate", "--version", "v1"]);
    wait_rejections(&daemon, 1.0);
    daemon.wait_active("v6");
    daemon.wait_assigned();
    local::produce_events(&brokers, "in", std::sync::Arc::new(events(d)), None)
        .await
        .expect("events");
    // 50 by v5 before, the 50 earlier events again by this new group, then the new 50.
    let records = local::read(&brokers, "out", 150, Duration::from_secs(60))
        .await
        .expect("predictions");
    assert!(
        records[100..]
            .iter()
            .all(|r| r.headers.get("model-version").map(String::as_str) == Some("v6")),
        "the version fetched from the topic scores"
    );
    assert!(daemon.terminate().success());
}

/// Waits until the daemon has counted `n` bundle rejections.
fn wait_rejections(daemon: &Daemon, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric_sum(
        &http_get(&daemon.metrics_addr(), "/metrics").1,
        "manymodel_bundle_rejections_total",
    ) < n
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_version_whose_chunks_are_gone_is_refused_and_the_active_one_keeps_serving() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::TopicPartitionList;
    let broker = Broker::start();
    let brokers = broker.brokers();
    for t in ["in", "out", "dlq", "control", "control-chunks"] {
        broker.create_topic(t, 1);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    generate(d, 5, 20);
    for i in 1..=3 {
        publish(
            &brokers,
            &train(d, 1_500 + 300 * i, &format!("v{i}"), None),
            None,
        );
    }
    let config = ServeConfigFile::new(&brokers, "gone")
        .topics("in", "out", "dlq")
        .kafka(r#"control_topic = "control""#)
        .write(d, "gone");
    let mut daemon = Daemon::start(&config);
    daemon.wait_active("v3");
    assert_eq!(replay_field(&daemon, "publishes_held_on_topic"), Some(2));

    // The chunks of v1 and v2 are deleted (as `kafka-delete-records` would, to reclaim space).
    let manifests = local::read(&brokers, "control", 3, Duration::from_secs(30))
        .await
        .expect("manifests");
    let v3: Manifest = match serde_json::from_slice(&manifests[2].value).expect("manifest") {
        ControlMessage::Manifest(m) => m,
        other => panic!("{other:?}"),
    };
    let first_of_v3 = v3.chunks_at.expect("chunks_at").first_offset;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset("control-chunks", 0, rdkafka::Offset::Offset(first_of_v3))
        .expect("offset");
    admin
        .delete_records(&list, &AdminOptions::new())
        .await
        .expect("records deleted");

    // Activating v2 or rolling back to it: refused with their reason; v3 keeps serving.
    control(&brokers, &["activate", "--version", "v2"]);
    wait_rejections(&daemon, 1.0);
    control(&brokers, &["rollback"]);
    wait_rejections(&daemon, 2.0);
    daemon.wait_active("v3");
    let log = daemon.log_text();
    assert!(log.contains("incomplete"), "{log}");
    daemon.wait_assigned();
    local::produce_events(&brokers, "in", std::sync::Arc::new(events(d)), None)
        .await
        .expect("events");
    let records = local::read(&brokers, "out", 20, Duration::from_secs(60))
        .await
        .expect("predictions");
    assert!(records
        .iter()
        .all(|r| r.headers.get("model-version").map(String::as_str) == Some("v3")));
    assert!(daemon.terminate().success());

    // A restart forgets them too, and comes up on v3.
    let daemon = Daemon::start(&config);
    daemon.wait_active("v3");
    assert!(daemon.terminate().success());
}

/// Seconds from start until the daemon reports `version` ready.
fn time_to_ready(config: &Path, version: &str) -> f64 {
    let started = Instant::now();
    let daemon = Daemon::start(config);
    daemon.wait_active(version);
    let took = started.elapsed().as_secs_f64();
    assert!(daemon.terminate().success());
    took
}

/// Prints the time to ready of a restart against control topics holding 1 and 100 publishes
/// of a 100,000-store bundle. Ignored by default (it publishes 2.6 GB):
/// `cargo test --release --test reload restart_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn restart_time_does_not_grow_with_the_publishes_on_the_control_topic() {
    let broker = Broker::start();
    let brokers = broker.brokers();
    for (t, n) in [
        ("in", 1),
        ("out", 1),
        ("dlq", 1),
        ("one", 1),
        ("one-chunks", 1),
        ("hundred", 1),
        ("hundred-chunks", 1),
    ] {
        broker.create_topic(t, n);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    generate(d, 5, 100);
    let small = Bundle::read(&train(d, 3_000, "small", None)).expect("small bundle");
    let stores = 100_000;
    let partitions: Vec<_> = (0..stores)
        .map(|i| {
            let mut m = small.partitions[i % small.partitions.len()].clone();
            m.partition = format!("Z{i:06}").into();
            if let Model::Linear(l) = &mut m.model {
                l.intercept += i as f64;
                l.coefficients = l
                    .coefficients
                    .iter()
                    .enumerate()
                    .map(|(j, c)| c + ((i * 7919 + j * 104_729) % 10_007) as f64 * 1e-4)
                    .collect();
            }
            m
        })
        .collect();
    let write = |version: &str, n: i64| {
        let b = Bundle::new(
            version.into(),
            None,
            small.created_at_ms + n,
            small.spec.clone(),
            small.rows_used,
            0,
            small.fallback.clone(),
            partitions.clone(),
        )
        .expect("bundle");
        let path = d.join("big.avro");
        b.write(&path).expect("written");
        path
    };
    let publish_to = |topic: &str, path: &Path| {
        run_ok(&[
            "publish",
            "--bundle",
            s(path),
            "--brokers",
            &brokers,
            "--control-topic",
            topic,
        ])
    };
    let started = Instant::now();
    publish_to("one", &write("big-1", 1));
    for i in 1..=100 {
        publish_to("hundred", &write(&format!("big-{i}"), i));
    }
    eprintln!(
        "101 publishes of {} bytes in {:.0}s",
        std::fs::metadata(d.join("big.avro")).expect("size").len(),
        started.elapsed().as_secs_f64()
    );
    let config = |topic: &str, keep: usize| {
        let name = format!("{topic}-{keep}");
        ServeConfigFile::new(&brokers, &name)
            .topics("in", "out", "dlq")
            .kafka(&format!("control_topic = \"{topic}\""))
            .model(&format!("keep_versions = {keep}"))
            .write(d, &name)
    };
    // The active version and the one a rollback returns to are read; the other held versions
    // (2 or the default 8) stay on the topic until a command needs them.
    let (one, hundred, hundred_8) = (config("one", 2), config("hundred", 2), config("hundred", 8));
    // Twice each, the second from a warm page cache.
    let (mut t1, mut t100, mut t100_8) = ([0.0; 2], [0.0; 2], [0.0; 2]);
    for i in 0..2 {
        t1[i] = time_to_ready(&one, "big-1");
        t100[i] = time_to_ready(&hundred, "big-100");
        t100_8[i] = time_to_ready(&hundred_8, "big-100");
    }
    eprintln!(
        "time to ready of a 100,000-store bundle (cold / warm): 1 publish {:.2}s / {:.2}s; 100 publishes, keep_versions = 2: {:.2}s / {:.2}s; keep_versions = 8: {:.2}s / {:.2}s",
        t1[0], t1[1], t100[0], t100[1], t100_8[0], t100_8[1]
    );
    assert!(t100[1] <= 2.0 * t1[1], "{t100:?} vs {t1:?}");
    assert!(t100_8[1] <= 2.0 * t1[1], "{t100_8:?} vs {t1:?}");
}
