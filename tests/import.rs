//! `manymodel import`: bundles from models trained elsewhere. Linear JSON and XGBoost trees
//! mix in one bundle, flow through `predict` and `serve`, missing values follow the trees'
//! default directions, and every mistake in a manifest or a model file is refused (exit 2)
//! with the file and what to fix.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run, run_ok, write_config, Broker, Daemon, ServeConfigFile};
use manymodel::local;
use serde_json::{json, Value};

const SPEC: &str = r#"
partition_column = "store_id"
target = "sales"

[[features]]
column = "price"
kind = "numeric"

[[features]]
column = "weather"
kind = "one_hot"
categories = ["sunny", "rainy"]

[[features]]
column = "ts"
kind = "day_of_week"

[feature_names]
"WEEKDAY_{}" = "ts.day_of_week={}"
cost = "price"
"#;

/// An XGBoost JSON model over `cost` and `WEEKDAY_0`: base 10, then
/// cost < 5 ? (WEEKDAY_0 < 1 ? +1 : +2) : +3, a missing cost going right.
fn xgboost_model(objective: &str, split_type: u8) -> Value {
    json!({
        "learner": {
            "attributes": {},
            "feature_names": ["cost", "WEEKDAY_0", "never_used"],
            "feature_types": ["float", "int", "float"],
            "gradient_booster": {"name": "gbtree", "model": {
                "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": "1"},
                "iteration_indptr": [0, 1],
                "tree_info": [0],
                "trees": [{
                    "id": 0,
                    "left_children": [1, 3, -1, -1, -1],
                    "right_children": [2, 4, -1, -1, -1],
                    "split_indices": [0, 1, 0, 0, 0],
                    "split_conditions": [5.0, 1.0, 3.0, 1.0, 2.0],
                    "default_left": [0, 1, 0, 0, 0],
                    "split_type": [0, split_type, 0, 0, 0],
                    "categories": [], "categories_nodes": [], "categories_segments": [], "categories_sizes": [],
                    "tree_param": {"num_deleted": "0", "num_feature": "3", "num_nodes": "5", "size_leaf_vector": "1"}
                }]
            }},
            "learner_model_param": {"base_score": "[1E1]", "boost_from_average": "1", "num_class": "0", "num_feature": "3", "num_target": "1"},
            "objective": {"name": objective, "reg_loss_param": {"scale_pos_weight": "1"}}
        },
        "version": [3, 2, 0]
    })
}

/// Writes the manifest and its model files; `extra` is appended to the manifest.
fn write_manifest(dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(
        dir.join("models/T1.json"),
        xgboost_model("reg:squarederror", 0).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("models/L1.json"),
        json!({"intercept": 2.0, "coefficients": {"cost": 3.0, "weather=rainy": 10.0, "WEEKDAY_0": 1.0}})
            .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("models/all.json"),
        json!({"intercept": 100.0, "coefficients": {"price": -1.0}}).to_string(),
    )
    .unwrap();
    let path = dir.join("manifest.toml");
    std::fs::write(&path, format!("{SPEC}\n{extra}")).unwrap();
    path
}

const MIXED: &str = r#"
[fallback]
file = "models/all.json"

[partitions]
T1 = { file = "models/T1.json", rows = 250, rmse = 1.25 }
L1 = "models/L1.json"
"#;

/// 2025-03-03 is a Monday (day_of_week 0), 2025-03-04 a Tuesday.
fn event(id: &str, store: &str, price: Value, weather: &str, monday: bool) -> String {
    let ts = if monday {
        "2025-03-03T12:00:00Z"
    } else {
        "2025-03-04T12:00:00Z"
    };
    json!({"event_id": id, "store_id": store, "price": price, "weather": weather, "ts": ts})
        .to_string()
}

fn import(manifest: &Path, bundle: &Path) -> String {
    run_ok(&[
        "import",
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        bundle.to_str().unwrap(),
        "--version",
        "imp-1",
    ])
}

/// Runs predict; returns predictions by event id and stderr.
fn predict(dir: &Path, bundle: &Path, events: &[String]) -> (HashMap<String, Value>, String) {
    let input = dir.join("events.jsonl");
    std::fs::write(&input, events.join("\n") + "\n").unwrap();
    let output = dir.join("predictions.jsonl");
    let out = run(&[
        "predict",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let predictions = std::fs::read_to_string(output)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["event_id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    (predictions, stderr)
}

#[test]
fn linear_and_tree_models_mix_in_one_bundle_with_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), MIXED);
    let bundle = dir.path().join("b.avro");
    let summary = import(&manifest, &bundle);
    assert!(summary.contains("2 (1 trees, 1 linear)"), "{summary}");
    assert!(
        summary.contains("\"never_used\""),
        "unused model features are noted: {summary}"
    );

    let (p, stderr) = predict(
        dir.path(),
        &bundle,
        &[
            event("t-cheap-tue", "T1", json!(4.0), "sunny", false),
            event("t-cheap-mon", "T1", json!(4.0), "sunny", true),
            event("t-dear", "T1", json!(6.5), "sunny", false),
            event("l-1", "L1", json!(2.0), "rainy", true),
            event("l-2", "L1", json!(2.0), "snowy", false),
            event("other", "Z9", json!(30.0), "sunny", false),
            event("t-missing", "T1", Value::Null, "sunny", false),
        ],
    );
    let value = |id: &str| p[id]["prediction"].as_f64().unwrap();
    assert_eq!(value("t-cheap-tue"), 11.0);
    assert_eq!(value("t-cheap-mon"), 12.0);
    assert_eq!(value("t-dear"), 13.0);
    assert_eq!(value("l-1"), 2.0 + 6.0 + 10.0 + 1.0);
    assert_eq!(value("l-2"), 2.0 + 6.0);
    assert_eq!(value("other"), 70.0);
    assert_eq!(p["other"]["model"], "fallback");
    assert_eq!(p["t-dear"]["model_version"], "imp-1");
    // A linear model has no rule for a missing value, so a bundle holding one refuses them.
    assert!(!p.contains_key("t-missing"));
    assert!(stderr.contains("missing_feature"), "{stderr}");

    let b = bundle.to_str().unwrap();
    let overview = run_ok(&["inspect", b]);
    assert!(
        overview.contains("model:            imported"),
        "{overview}"
    );
    assert!(overview.contains("(1 linear, 1 trees)"), "{overview}");
    assert!(overview.contains("fallback:         linear"), "{overview}");
    let t1 = run_ok(&["inspect", b, "--partition", "T1"]);
    assert!(t1.contains("kind:       trees"), "{t1}");
    assert!(t1.contains("objective:  reg:squarederror"), "{t1}");
    assert!(t1.contains("rmse:       1.250000"), "{t1}");
    let l1 = run_ok(&["inspect", b, "--partition", "L1"]);
    assert!(l1.contains("kind:       linear"), "{l1}");
    assert!(l1.contains("weather=rainy"), "{l1}");
}

#[test]
fn a_trees_only_bundle_scores_missing_values_and_has_no_fallback_unless_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    let manifest = write_manifest(dir.path(), "[partitions]\nT1 = \"models/T1.json\"\n");
    // The same model as XGBoost's binary format (UBJSON) for a second store.
    let mut ubj = vec![b'{'];
    ubj_object(&xgboost_model("count:poisson", 0), &mut ubj);
    std::fs::write(dir.path().join("models/T2.ubj"), ubj).unwrap();
    std::fs::write(
        &manifest,
        format!("{SPEC}\n[partitions]\nT1 = \"models/T1.json\"\nT2 = \"models/T2.ubj\"\n"),
    )
    .unwrap();
    let bundle = dir.path().join("b.avro");
    let summary = import(&manifest, &bundle);
    assert!(summary.contains("fallback: none"), "{summary}");
    assert!(
        summary.contains("missing feature values: scored"),
        "{summary}"
    );

    let (p, stderr) = predict(
        dir.path(),
        &bundle,
        &[
            event("null-price", "T1", Value::Null, "sunny", true),
            json!({"event_id": "no-price", "store_id": "T1", "weather": "sunny", "ts": "2025-03-03T12:00:00Z"}).to_string(),
            json!({"event_id": "no-weather", "store_id": "T1", "price": 1.0, "ts": "2025-03-03T12:00:00Z"}).to_string(),
            event("poisson", "T2", json!(4.0), "sunny", true),
            event("unknown", "Z9", json!(1.0), "sunny", true),
        ],
    );
    let value = |id: &str| p[id]["prediction"].as_f64().unwrap();
    assert_eq!(value("null-price"), 13.0, "a missing cost goes right");
    assert_eq!(value("no-price"), 13.0);
    assert_eq!(
        value("no-weather"),
        12.0,
        "weather is not read by the trees"
    );
    let want = (10f32.ln() as f64 + 2.0).exp();
    assert!((value("poisson") - want).abs() < 1e-9 * want);
    assert!(!p.contains_key("unknown"));
    assert!(stderr.contains("no fallback"), "{stderr}");
}

/// Encodes a JSON object's members as UBJSON (after the opening `{`), the way XGBoost does:
/// length-prefixed keys, typed numeric arrays.
fn ubj_object(v: &Value, out: &mut Vec<u8>) {
    fn len(n: usize, out: &mut Vec<u8>) {
        out.push(b'L');
        out.extend((n as i64).to_be_bytes());
    }
    fn value(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Null => out.push(b'Z'),
            Value::Bool(b) => out.push(if *b { b'T' } else { b'F' }),
            Value::Number(n) if n.is_i64() => {
                out.push(b'L');
                out.extend(n.as_i64().unwrap().to_be_bytes());
            }
            Value::Number(n) => {
                out.push(b'd');
                out.extend((n.as_f64().unwrap() as f32).to_be_bytes());
            }
            Value::String(s) => {
                out.push(b'S');
                len(s.len(), out);
                out.extend(s.as_bytes());
            }
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => {
                let float = a.iter().any(|x| !x.is_i64());
                out.extend([b'[', b'$', if float { b'd' } else { b'l' }, b'#']);
                len(a.len(), out);
                for x in a {
                    if float {
                        out.extend((x.as_f64().unwrap() as f32).to_be_bytes());
                    } else {
                        out.extend((x.as_i64().unwrap() as i32).to_be_bytes());
                    }
                }
            }
            Value::Array(a) => {
                out.push(b'[');
                for x in a {
                    value(x, out);
                }
                out.push(b']');
            }
            Value::Object(_) => {
                out.push(b'{');
                ubj_object(v, out);
            }
        }
    }
    for (k, x) in v.as_object().unwrap() {
        len(k.len(), out);
        out.extend(k.as_bytes());
        value(x, out);
    }
    out.push(b'}');
}

/// Runs import expecting exit code 2 and every needle in stderr.
fn refused(manifest: &Path, needles: &[&str]) {
    let bundle = manifest.with_file_name("refused.avro");
    let out = run(&[
        "import",
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        bundle.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    assert!(!bundle.exists(), "no bundle is written");
}

#[test]
fn import_mistakes_are_refused_with_the_file_and_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let manifest = write_manifest(d, MIXED);

    std::fs::write(
        d.join("models/L1.json"),
        json!({"intercept": 1.0, "coefficients": {"colour": 1.0}}).to_string(),
    )
    .unwrap();
    refused(
        &manifest,
        &[
            "L1.json",
            "partition \"L1\"",
            "unknown feature name \"colour\"",
            "[feature_names]",
        ],
    );

    let manifest = write_manifest(d, MIXED);
    std::fs::write(
        d.join("models/T1.json"),
        xgboost_model("binary:logistic", 0).to_string(),
    )
    .unwrap();
    refused(
        &manifest,
        &[
            "T1.json",
            "unsupported objective \"binary:logistic\"",
            "reg:tweedie",
        ],
    );

    let manifest = write_manifest(d, MIXED);
    std::fs::write(
        d.join("models/T1.json"),
        xgboost_model("reg:squarederror", 1).to_string(),
    )
    .unwrap();
    refused(&manifest, &["T1.json", "categorical splits", "one-hot"]);

    let manifest = write_manifest(d, MIXED);
    std::fs::write(d.join("models/T1.json"), "{not json").unwrap();
    refused(&manifest, &["T1.json", "not JSON"]);

    let manifest = write_manifest(d, &MIXED.replace("models/L1.json", "models/L9.json"));
    refused(&manifest, &["L9.json", "cannot read the model file"]);

    let manifest = write_manifest(d, &MIXED.replace("T1 = {", "T1 = { filename = \"x\", "));
    refused(&manifest, &["manifest.toml", "unknown field `filename`"]);

    std::fs::write(
        &manifest,
        format!(
            "{}\n{MIXED}",
            SPEC.replace("cost = \"price\"", "cost = \"pryce\"")
        ),
    )
    .unwrap();
    refused(&manifest, &["manifest.toml", "no model input \"pryce\""]);

    std::fs::write(&manifest, SPEC).unwrap();
    refused(&manifest, &["manifest.toml", "no model"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_bundle_is_served_over_kafka_as_predict_scores_it() {
    let broker = Broker::start();
    for t in ["in", "out", "dlq"] {
        broker.create_topic(t, 2);
    }
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.avro");
    import(&write_manifest(dir.path(), MIXED), &bundle);
    let mut events = Vec::new();
    for i in 0..300 {
        let store = ["T1", "L1", "Z9"][i % 3];
        let price = json!(1.0 + (i % 9) as f64);
        let weather = ["sunny", "rainy"][i % 2];
        events.push(event(&format!("ev-{i}"), store, price, weather, i % 4 == 0));
    }
    let (offline, _) = predict(dir.path(), &bundle, &events);
    assert_eq!(offline.len(), events.len());

    let config = write_config(
        dir.path(),
        "imported",
        &broker.brokers(),
        ("in", "out", "dlq"),
        &bundle,
        "fallback",
    );
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    local::produce_events(
        &broker.brokers(),
        "in",
        std::sync::Arc::new(events.iter().map(|e| e.clone().into_bytes()).collect()),
        None,
    )
    .await
    .expect("events produced");
    let records = local::read(
        &broker.brokers(),
        "out",
        events.len(),
        Duration::from_secs(90),
    )
    .await
    .expect("predictions readable");
    assert_eq!(records.len(), events.len(), "{}", daemon.log_text());
    for r in &records {
        let p: Value = serde_json::from_slice(&r.value).unwrap();
        let id = p["event_id"].as_str().unwrap();
        assert_eq!(
            p, offline[id],
            "Kafka and offline predictions differ for {id}"
        );
    }
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_trees_only_bundle_hot_reloads_scores_missing_values_and_dead_letters_unknown_stores(
) {
    let broker = Broker::start();
    let brokers = broker.brokers();
    for (t, n) in [("in", 2), ("out", 2), ("dlq", 1), ("control", 1)] {
        broker.create_topic(t, n);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mixed = d.join("mixed.avro");
    import(&write_manifest(d, MIXED), &mixed);
    let trees_dir = d.join("trees");
    let manifest = write_manifest(&trees_dir, "[partitions]\nT1 = \"models/T1.json\"\n");
    let trees = trees_dir.join("trees.avro");
    run_ok(&[
        "import",
        "--manifest",
        manifest.to_str().unwrap(),
        "--output",
        trees.to_str().unwrap(),
        "--version",
        "imp-2",
    ]);

    let config = ServeConfigFile::new(&brokers, "reload")
        .kafka(r#"control_topic = "control""#)
        .bundle(&mixed)
        .write(d, "reload");
    let mut daemon = Daemon::start(&config);
    daemon.wait_active("imp-1");
    run_ok(&[
        "publish",
        "--bundle",
        trees.to_str().unwrap(),
        "--brokers",
        &brokers,
        "--control-topic",
        "control",
    ]);
    daemon.wait_active("imp-2");
    daemon.wait_assigned();

    let events = [
        event("cheap", "T1", json!(4.0), "sunny", false),
        event("missing", "T1", Value::Null, "sunny", true),
        event("unknown", "Z9", json!(4.0), "sunny", false),
    ];
    local::produce_events(
        &brokers,
        "in",
        std::sync::Arc::new(events.iter().map(|e| e.clone().into_bytes()).collect()),
        None,
    )
    .await
    .expect("events produced");
    let out = local::read(&brokers, "out", 2, Duration::from_secs(60))
        .await
        .expect("predictions readable");
    let by_id: HashMap<String, Value> = out
        .iter()
        .map(|r| {
            let p: Value = serde_json::from_slice(&r.value).unwrap();
            (p["event_id"].as_str().unwrap().to_owned(), p)
        })
        .collect();
    assert_eq!(by_id.len(), 2, "{}", daemon.log_text());
    assert_eq!(by_id["cheap"]["prediction"], json!(11.0));
    assert_eq!(by_id["missing"]["prediction"], json!(13.0));
    assert!(by_id.values().all(|p| p["model_version"] == "imp-2"));
    let dead = local::read(&brokers, "dlq", 1, Duration::from_secs(60))
        .await
        .expect("dead letters readable");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers.get("error-kind").map(String::as_str),
        Some("unknown_partition")
    );
    assert!(dead[0].headers["error-message"].contains("no fallback"));
    assert!(daemon.terminate().success());
}

#[test]
fn bench_trees_prints_predictions_per_second_for_the_asked_ensemble() {
    let out = run_ok(&["bench", "--trees", "10", "--depth", "3"]);
    assert!(out.contains("10 trees of depth 3 (150 nodes"), "{out}");
    let rate: f64 = out
        .split(" predictions/s")
        .next()
        .and_then(|s| s.split_whitespace().last())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {out}"));
    assert!(rate > 0.0);
}
