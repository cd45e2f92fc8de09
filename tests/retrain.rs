//! `manymodel retrain` against Apache Kafka: drifting stores are refitted on their post-drift
//! actuals and published as a signed delta of the active version, which a daemon activates;
//! refits that do not beat their champion, stores without enough actuals and malformed drift
//! records publish nothing; `--watch` waits for actuals, retrains and stops on SIGTERM.
//!
//! The actuals are a store's own history rows (so the champion has seen them), with `sales`
//! shifted by +60 where the store's behaviour is to have changed; drift records are written
//! here in the daemons' format.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{run_ok, wait_for, Broker, Daemon, ServeConfigFile};
use manymodel::model::bundle::Bundle;
use manymodel::retrain::challenger::{Champion, Outcome, Rejected};
use manymodel::retrain::{Origin, RetrainConfig, RetrainOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

/// The shift of a drifting store's sales.
const SHIFT: f64 = 60.0;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// One test's topics on the shared broker, a trained and published `v1`, and a signing key.
struct Setup {
    dir: tempfile::TempDir,
    brokers: String,
    name: String,
    key: PathBuf,
    v1: PathBuf,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let broker = Broker::shared();
        let brokers = broker.brokers();
        for (topic, partitions) in [
            (format!("control-{name}"), 1),
            (format!("control-{name}-chunks"), 1),
            (format!("actuals-{name}"), 3),
            (format!("drift-{name}"), 1),
        ] {
            broker.create_topic(&topic, partitions);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        run_ok(&[
            "generate",
            "--stores",
            "20",
            "--days",
            "20",
            "--events",
            "100",
            "--out",
            s(d),
        ]);
        let v1 = common::train(d, "v1.avro", "v1");
        let key = d.join("release.key");
        run_ok(&["keygen", "--out", s(&key)]);
        let setup = Setup {
            brokers,
            name: name.to_owned(),
            key,
            v1,
            dir,
        };
        run_ok(&[
            "publish",
            "--bundle",
            s(&setup.v1),
            "--brokers",
            &setup.brokers,
            "--control-topic",
            &setup.control(),
            "--signing-key",
            s(&setup.key),
        ]);
        setup
    }

    fn control(&self) -> String {
        format!("control-{}", self.name)
    }
    fn actuals(&self) -> String {
        format!("actuals-{}", self.name)
    }
    fn drift(&self) -> String {
        format!("drift-{}", self.name)
    }
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `retrain.toml` with `extra` lines appended (whole tables).
    fn config(&self, extra: &str) -> PathBuf {
        let text = format!(
            "[kafka]\nbrokers = \"{}\"\ncontrol_topic = \"{}\"\nactuals_topic = \"{}\"\n\
             [source]\ndrift_topic = \"{}\"\n\
             [actuals]\nmin_actuals = 60\nread_timeout_secs = 20\n\
             [model]\ntrusted_keys = [\"release.key.pub\"]\n\
             [publish]\nsigning_key = \"release.key\"\n{extra}",
            self.brokers,
            self.control(),
            self.actuals(),
            self.drift()
        );
        let path = self.dir().join("retrain.toml");
        std::fs::write(&path, text).expect("config written");
        path
    }

    /// The store's history rows as actuals (JSON objects), oldest first.
    fn rows(&self, store: &str) -> Vec<serde_json::Map<String, Value>> {
        let text = std::fs::read_to_string(self.dir().join("history.csv")).expect("history");
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().expect("header").split(',').collect();
        lines
            .map(|l| l.split(',').collect::<Vec<&str>>())
            .filter(|cells| cells[1] == store)
            .map(|cells| {
                header
                    .iter()
                    .zip(cells)
                    .map(|(h, c)| {
                        let v = match *h {
                            "price" | "temperature" | "sales" => {
                                json!(c.parse::<f64>().expect("number"))
                            }
                            "promo" => json!(c == "1"),
                            _ => json!(c),
                        };
                        (h.to_string(), v)
                    })
                    .collect()
            })
            .collect()
    }

    /// Produces the last `n` history rows of `store` as actuals, `sales` shifted by
    /// `shift`, one second apart and ending `ago_ms` before now; returns their timestamps.
    fn actuals_of(&self, store: &str, n: usize, shift: f64, ago_ms: i64) -> Vec<i64> {
        let rows = self.rows(store);
        assert!(rows.len() >= n, "{store} has {} history rows", rows.len());
        let now = chrono::Utc::now().timestamp_millis() - ago_ms;
        let mut records = Vec::new();
        let mut stamps = Vec::new();
        for (i, mut row) in rows[rows.len() - n..].iter().cloned().enumerate() {
            let sales = row["sales"].as_f64().expect("sales") + shift;
            row.insert("sales".into(), json!(sales));
            row.insert("event_id".into(), json!(format!("actual-{store}-{i}")));
            let ts = now - (n - i) as i64 * 1000;
            stamps.push(ts);
            records.push((store.to_owned(), Value::Object(row).to_string(), ts));
        }
        produce(&self.brokers, &self.actuals(), &records);
        stamps
    }

    /// Sends drift records (key, value) to the drift topic.
    fn drift_records(&self, records: &[(&str, String)]) {
        let now = chrono::Utc::now().timestamp_millis();
        let records: Vec<(String, String, i64)> = records
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone(), now))
            .collect();
        produce(&self.brokers, &self.drift(), &records);
    }

    /// The end offset of the control topic: how many records it holds.
    fn control_records(&self) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", "retrain-test-watermarks")
            .create()
            .expect("consumer");
        consumer
            .fetch_watermarks(&self.control(), 0, Duration::from_secs(10))
            .expect("watermarks")
            .1
    }

    /// A daemon reading the control topic and trusting the key.
    fn daemon(&self) -> Daemon {
        let broker = Broker::shared();
        let (input, output, dlq) = (
            format!("in-{}", self.name),
            format!("out-{}", self.name),
            format!("dlq-{}", self.name),
        );
        for t in [&input, &output, &dlq] {
            broker.create_topic(t, 1);
        }
        let config = ServeConfigFile::new(&self.brokers, &format!("serve-{}", self.name))
            .topics(&input, &output, &dlq)
            .kafka(&format!("control_topic = \"{}\"", self.control()))
            .model(&format!(
                "trusted_keys = [\"{}\"]",
                self.key.with_extension("key.pub").display()
            ))
            .write(self.dir(), "serve");
        Daemon::start(&config)
    }
}

/// Produces `(key, value, timestamp)` records.
fn produce(brokers: &str, topic: &str, records: &[(String, String, i64)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for (k, v, ts) in records {
        producer
            .send(
                BaseRecord::to(topic)
                    .key(k.as_bytes())
                    .payload(v.as_bytes())
                    .timestamp(*ts),
            )
            .expect("queued");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
}

/// A drift record in the daemons' format.
fn drift(store: &str, verdict: &str, verdict_at_ms: i64) -> String {
    json!({
        "partition": store, "kind": "partition", "model_version": "v1", "actuals": 57,
        "mae": 9.8, "rmse": 12.3, "bias": 8.1, "training_rmse": 3.9, "ratio": 3.15,
        "verdict": verdict, "verdict_at_ms": verdict_at_ms,
        "last_actual_ms": verdict_at_ms + 12_345,
    })
    .to_string()
}

fn coefficients(b: &Bundle, store: &str) -> Vec<f64> {
    match &b.partition(store).expect("a model of its own").model {
        manymodel::model::Model::Linear(l) => {
            let mut c = vec![l.intercept];
            c.extend(l.coefficients.iter());
            c
        }
        other => panic!("not linear: {other:?}"),
    }
}

#[test]
fn a_drifting_store_is_refitted_and_published_as_a_signed_delta_that_a_daemon_activates() {
    let setup = Setup::new("drift");
    let daemon = setup.daemon();
    daemon.wait_active("v1");

    // S001 changed: 40 actuals as before, then 160 with sales 60 higher. S003 drifts with 10
    // actuals only. S004 drifted and is stable again. S010's actuals are someone else's.
    let before = setup.actuals_of("S001", 40, 0.0, 200_000);
    let shifted = setup.actuals_of("S001", 160, SHIFT, 0);
    assert!(before[39] < shifted[0]);
    setup.actuals_of("S003", 10, SHIFT, 0);
    setup.actuals_of("S004", 100, SHIFT, 0);
    setup.actuals_of("S010", 50, 0.0, 0);
    setup.drift_records(&[
        ("S001", drift("S001", "drifting", shifted[0])),
        ("S003", drift("S003", "drifting", 0)),
        ("S004", drift("S004", "drifting", 0)),
        ("S004", drift("S004", "stable", 1)),
        ("S005", "not json at all".into()),
        (
            "S006",
            r#"{"partition":"S006","verdict":"drifting"}"#.into(),
        ),
        ("S007", drift("S008", "drifting", 0)),
    ]);

    let config = RetrainConfig::load(&setup.config("")).expect("config loads");
    let output = setup.dir().join("delta1.avro");
    let report = manymodel::retrain::run(
        &config,
        &RetrainOptions {
            output: Some(output.clone()),
            ..Default::default()
        },
    )
    .expect("retrain runs");
    println!("{report}");
    assert_eq!(report.base_version, "v1");
    let ids: Vec<&str> = report
        .decisions
        .iter()
        .map(|d| d.partition.as_str())
        .collect();
    assert_eq!(
        ids,
        ["S001", "S003"],
        "stable and malformed records are not retrained"
    );

    let s001 = &report.decisions[0];
    assert_eq!(
        s001.origin,
        Origin::Drifting {
            verdict_at_ms: shifted[0]
        }
    );
    assert_eq!(s001.actuals, 160, "only the post-drift actuals: {s001:?}");
    assert_eq!(s001.champion, Champion::Own);
    let (champion, challenger) = (s001.champion_rmse.unwrap(), s001.challenger_rmse.unwrap());
    assert!(
        champion > 40.0,
        "the old model misses by the shift: {champion}"
    );
    assert!(challenger < 15.0, "the refit learns it: {challenger}");
    assert!(
        matches!(s001.outcome, Outcome::Kept { rows: 160, .. }),
        "{s001:?}"
    );
    assert_eq!(
        report.decisions[1].outcome,
        Outcome::Rejected(Rejected::NotEnoughActuals { have: 10, need: 60 })
    );

    // The delta: S001 only, on v1, with v1's spec and fallback; signed and published.
    let delta = report.delta.as_ref().expect("a delta");
    assert_eq!(delta.base_version, "v1");
    let published = report.published.as_ref().expect("published");
    assert!(published.manifest.signature.is_some());
    assert_eq!(published.manifest.base_version.as_deref(), Some("v1"));
    assert_eq!(published.manifest.version, delta.version);
    let file = Bundle::read(&output).expect("the delta file loads");
    let v1 = Bundle::read(&setup.v1).expect("v1");
    assert_eq!(file.version, delta.version);
    assert_eq!(file.base_version.as_deref(), Some("v1"));
    assert_eq!(
        file.partitions
            .iter()
            .map(|m| m.partition.as_str())
            .collect::<Vec<_>>(),
        ["S001"]
    );
    assert_eq!(file.partitions[0].rows, 160);
    assert_eq!(file.spec, v1.spec);
    assert_eq!(file.fallback, v1.fallback);
    let merged = report.merged.as_ref().expect("merged");
    assert_eq!(merged.partitions.len(), v1.partitions.len());
    assert_eq!(coefficients(merged, "S002"), coefficients(&v1, "S002"));
    let (old, new) = (coefficients(&v1, "S001"), coefficients(merged, "S001"));
    assert!(
        (new[0] - old[0] - SHIFT).abs() < 15.0,
        "the intercept moved by about the shift: {} → {}",
        old[0],
        new[0]
    );
    daemon.wait_active(&delta.version);

    // Round two builds on the delta, itself a delta: S001's refit is now the champion and
    // a new refit does not beat it; S006 starts drifting.
    let s006 = setup.actuals_of("S006", 120, -SHIFT / 2.0, 0);
    setup.drift_records(&[("S006", drift("S006", "drifting", s006[0]))]);
    let report2 = manymodel::retrain::run(&config, &RetrainOptions::default()).expect("second run");
    println!("{report2}");
    assert_eq!(report2.base_version, delta.version);
    let outcome = |id: &str| {
        report2
            .decisions
            .iter()
            .find(|d| d.partition == id)
            .map(|d| d.outcome.clone())
            .unwrap_or_else(|| panic!("{id} not judged"))
    };
    assert!(matches!(
        outcome("S001"),
        Outcome::Rejected(Rejected::NotBetter { .. })
    ));
    assert!(matches!(outcome("S006"), Outcome::Kept { rows: 120, .. }));
    let delta2 = report2.delta.as_ref().expect("a second delta");
    assert_eq!(delta2.base_version, delta.version);
    assert_eq!(delta2.partitions, 1);
    daemon.wait_active(&delta2.version);
    daemon.terminate();
}

#[test]
fn listed_stores_that_do_not_beat_their_champion_or_lack_actuals_publish_nothing() {
    let setup = Setup::new("listed");
    // S002 behaves as in its history; S003 has 10 actuals.
    setup.actuals_of("S002", 150, 0.0, 0);
    setup.actuals_of("S003", 10, 0.0, 0);
    let config = setup.config("");
    let before = setup.control_records();
    let out = run_ok(&[
        "retrain",
        "--config",
        s(&config),
        "--partitions",
        "S002,S003",
    ]);
    println!("{out}");
    let line = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}:\n{out}"))
            .to_owned()
    };
    assert!(
        line("S002").contains("rejected: not better by the margin"),
        "{out}"
    );
    assert!(
        line("S003").contains("rejected: not enough actuals (10 < 60)"),
        "{out}"
    );
    assert!(out.contains("nothing to publish"), "{out}");
    assert!(out.contains("retrain on v1"), "{out}");
    assert_eq!(setup.control_records(), before, "nothing was published");

    // A dry run with a store that would be kept writes its delta and publishes nothing.
    setup.actuals_of("S009", 100, SHIFT, 0);
    let delta = setup.dir().join("dry.avro");
    let out = run_ok(&[
        "retrain",
        "--config",
        s(&config),
        "--partitions",
        "S009",
        "--dry-run",
        "--output",
        s(&delta),
        "--version",
        "v1-dry",
    ]);
    assert!(line_of(&out, "S009").contains("kept"), "{out}");
    assert!(out.contains("dry run: delta v1-dry of v1"), "{out}");
    assert_eq!(
        setup.control_records(),
        before,
        "a dry run publishes nothing"
    );
    let b = Bundle::read(&delta).expect("the dry run's delta loads");
    assert_eq!(b.base_version.as_deref(), Some("v1"));
}

fn line_of(out: &str, id: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no line for {id}:\n{out}"))
        .to_owned()
}

#[test]
fn watch_waits_for_post_drift_actuals_then_retrains_once_and_stops_on_sigterm() {
    let setup = Setup::new("watch");
    let config = setup.config("[watch]\ncheck_secs = 1\ncooldown_secs = 3600\n");
    let stdout = setup.dir().join("watch.out");
    let log = setup.dir().join("watch.log");
    let mut child = common::manymodel()
        .args(["retrain", "--config", s(&config), "--watch"])
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("retrain --watch starts");
    let text = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for(Duration::from_secs(60), "watching", || {
        text(&log).contains("watching for drifting stores")
    });

    // S011 starts drifting with 20 actuals: not enough, it waits; a bad record is skipped.
    let first = setup.actuals_of("S011", 20, SHIFT, 300_000);
    setup.drift_records(&[
        ("S011", drift("S011", "drifting", first[0])),
        ("S012", "{\"partition\":".into()),
    ]);
    wait_for(Duration::from_secs(30), "the bad record skipped", || {
        text(&log).contains("drift record skipped")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !text(&stdout).contains("S011"),
        "S011 waits for actuals:\n{}",
        text(&stdout)
    );
    assert!(child.try_wait().expect("status").is_none(), "still running");

    // 100 more: it has enough, is refitted and published, once.
    setup.actuals_of("S011", 100, SHIFT, 0);
    wait_for(Duration::from_secs(60), "S011 retrained", || {
        text(&stdout).contains("published ")
    });
    let out = text(&stdout);
    assert!(line_of(&out, "S011").contains("kept"), "{out}");
    assert!(out.contains("a delta of v1"), "{out}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        text(&stdout).matches("S011 ").count(),
        1,
        "once per cooldown:\n{}",
        text(&stdout)
    );

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("status") {
            break status;
        }
        assert!(Instant::now() < deadline, "retrain --watch did not stop");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}\n{}", text(&log));
    assert!(text(&log).contains("retrain --watch stopped"));
}

#[test]
fn the_shipped_config_loads_and_names_every_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/retrain.toml");
    let c = RetrainConfig::load(&path).expect("config/retrain.toml loads");
    let text = std::fs::read_to_string(&path).unwrap();
    let tables: BTreeMap<&str, bool> = [
        "[kafka]",
        "[source]",
        "[actuals]",
        "[challenger]",
        "[model]",
        "[publish]",
        "[watch]",
    ]
    .into_iter()
    .map(|t| (t, text.contains(t)))
    .collect();
    assert!(tables.values().all(|&b| b), "{tables:?}");
    assert_eq!(c.challenger.margin, 0.05);
}

/// The in-process path `manymodel demo` takes: librdkafka's MockCluster, the library's `run`,
/// a drift topic, and history rows joined to a store's actuals.
#[test]
fn run_works_in_process_on_the_mock_cluster_with_history_rows() {
    use manymodel::control::publish::{publish_bytes, PublishOptions};
    use rdkafka::mocking::MockCluster;

    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    for (topic, partitions) in [("control", 1), ("actuals", 2), ("drift", 1)] {
        cluster
            .create_topic(topic, partitions, 1)
            .expect("topic created");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    manymodel::generate::run(&manymodel::generate::GenerateOptions {
        stores: 10,
        days: 20,
        events: 3000,
        out: d.to_owned(),
        seed: 7,
        drift: Default::default(),
    })
    .expect("generated");
    let v1 = manymodel::train::run(&manymodel::train::TrainOptions {
        spec: d.join("train.toml"),
        input: d.join("history.csv"),
        output: d.join("v1.avro"),
        version: Some("v1".into()),
        strict: false,
        progress: false,
        base: None,
        partitions: Vec::new(),
    })
    .expect("trained")
    .bundle;
    publish_bytes(
        &v1.to_avro().expect("bytes"),
        &PublishOptions {
            bundle: Default::default(),
            connection: manymodel::kafka::connection::Connection::plain(&brokers),
            control_topic: "control".into(),
            signing_key: None,
            chunk_bytes: 64 * 1024,
            activate: true,
        },
        None,
    )
    .expect("v1 published");

    // S004's events, with their sales 60 above the truth, as actuals.
    let now = chrono::Utc::now().timestamp_millis();
    let events = std::fs::read_to_string(d.join("events.jsonl")).expect("events");
    let mut actuals = Vec::new();
    for (i, line) in events
        .lines()
        .filter(|l| l.contains("\"S004\""))
        .take(120)
        .enumerate()
    {
        let mut v: Value = serde_json::from_str(line).expect("json");
        let noise = ((i * 7919) % 11) as f64 - 5.0;
        v["sales"] = json!(v["expected_sales"].as_f64().unwrap() + SHIFT + noise);
        actuals.push((
            "S004".to_owned(),
            v.to_string(),
            now - 200_000 + i as i64 * 1000,
        ));
    }
    assert_eq!(actuals.len(), 120);
    let verdict_at = actuals[0].2;
    produce(&brokers, "actuals", &actuals);
    produce(
        &brokers,
        "drift",
        &[("S004".into(), drift("S004", "drifting", verdict_at), now)],
    );

    let config = RetrainConfig::parse(&format!(
        "[kafka]\nbrokers = \"{brokers}\"\ncontrol_topic = \"control\"\nactuals_topic = \"actuals\"\n\
         [source]\ndrift_topic = \"drift\"\n\
         [actuals]\nmin_actuals = 60\nhistory = \"{}\"\nhistory_rows = 50\n",
        d.join("history.csv").display()
    ))
    .expect("config");
    let report = manymodel::retrain::run(&config, &RetrainOptions::default()).expect("runs");
    println!("{report}");
    assert_eq!(report.base_version, "v1");
    assert_eq!(report.decisions.len(), 1);
    let s004 = &report.decisions[0];
    assert_eq!((s004.actuals, s004.history_rows), (120, 50));
    assert!(
        matches!(s004.outcome, Outcome::Kept { rows: 170, .. }),
        "history rows join the final fit: {s004:?}"
    );
    let published = report.published.as_ref().expect("published");
    assert_eq!(published.manifest.base_version.as_deref(), Some("v1"));
    assert!(published.manifest.signature.is_none(), "no signing key");

    // The control topic's active version is now the delta, as a restarting daemon finds it.
    let (active, _) = manymodel::retrain::active::active_bundle(
        &config,
        None,
        &tokio_util::sync::CancellationToken::new(),
    )
    .expect("replayed");
    assert_eq!(active.version, published.manifest.version);
    assert_eq!(active.partition("S004").expect("S004").rows, 170);
}
