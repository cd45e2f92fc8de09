//! Cross-check against XGBoost itself: per-store regressors trained in Python (one-hot weekday
//! and hour features, min 100 rows per store, a fallback on all rows, some stores saved as
//! JSON and some as UBJSON, some with early stopping, some DART), imported with
//! `manymodel import` and
//! scored with `manymodel predict`, must equal XGBoost's own `predict` within 1e-5 (relative)
//! on held-out events with missing values, for each supported objective.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::run_ok;

const OBJECTIVES: [&str; 4] = [
    "reg:squarederror",
    "reg:tweedie",
    "count:poisson",
    "reg:absoluteerror",
];

fn python_with_xgboost() -> String {
    // The CPU-only wheel: no CUDA libraries to download.
    common::python_with("xgboost, numpy", &["xgboost-cpu", "numpy"])
}

/// Leaves store S006 with fewer than 100 rows, so its events are scored by the fallback.
fn thin_out_one_store(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, line)| {
            // ts,store_id,...: drop S006's afternoons.
            *i == 0 || !(line.contains(",S006,") && &line[11..13] >= "15")
        })
        .map(|(_, l)| l)
        .collect();
    std::fs::write(path, kept.join("\n") + "\n").unwrap();
}

#[test]
fn imported_xgboost_models_predict_what_xgboost_predicts_for_every_objective() {
    let python = python_with_xgboost();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run_ok(&[
        "generate", "--stores", "6", "--days", "9", "--events", "1200", "--out", d, "--seed", "5",
    ]);
    thin_out_one_store(&dir.path().join("history.csv"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/xgboost_fit.py");
    let status = Command::new(&python)
        .arg(script)
        .args([
            &format!("{d}/history.csv"),
            &format!("{d}/events.jsonl"),
            &format!("{d}/xgb"),
        ])
        .args(OBJECTIVES)
        .status()
        .expect("python runs");
    assert!(status.success(), "the XGBoost reference failed");

    for objective in OBJECTIVES {
        let base = dir.path().join("xgb").join(objective.replace(':', "_"));
        let bundle = base.join("bundle.avro");
        let summary = run_ok(&[
            "import",
            "--manifest",
            base.join("manifest.toml").to_str().unwrap(),
            "--output",
            bundle.to_str().unwrap(),
            "--version",
            "xgb-1",
        ]);
        assert!(summary.contains("5 trees, 0 linear"), "{summary}");
        let ours = base.join("ours.jsonl");
        let printed = run_ok(&[
            "predict",
            "--bundle",
            bundle.to_str().unwrap(),
            "--input",
            base.join("events.jsonl").to_str().unwrap(),
            "--output",
            ours.to_str().unwrap(),
        ]);
        assert!(printed.contains("0 lines rejected"), "{printed}");

        let theirs: HashMap<String, f64> =
            serde_json::from_str(&std::fs::read_to_string(base.join("theirs.json")).unwrap())
                .unwrap();
        let events: HashMap<String, serde_json::Value> =
            std::fs::read_to_string(base.join("events.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (v["event_id"].as_str().unwrap().to_owned(), v)
                })
                .collect();
        let (mut n, mut missing, mut fallback, mut worst) = (0, 0, 0, 0.0f64);
        for line in std::fs::read_to_string(&ours).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = v["event_id"].as_str().unwrap();
            let ours = v["prediction"].as_f64().unwrap();
            let reference = theirs[id];
            let rel = (ours - reference).abs() / reference.abs().max(1e-9);
            worst = worst.max(rel);
            assert!(
                rel <= 1e-5,
                "{objective} {id} ({}): manymodel {ours}, XGBoost {reference}, event {}",
                v["store_id"],
                events[id]
            );
            n += 1;
            let ev = &events[id];
            missing += usize::from(ev["price"].is_null() || ev.get("temperature").is_none());
            fallback += usize::from(v["model"] == "fallback");
        }
        assert_eq!(n, theirs.len(), "{objective}: every event predicted");
        assert!(
            missing > 100,
            "{objective}: {missing} events with missing values"
        );
        assert!(
            fallback > 50,
            "{objective}: {fallback} events by the fallback"
        );
        eprintln!(
            "{objective}: {n} predictions ({missing} with missing values, {fallback} by the fallback), worst relative difference {worst:e}"
        );
    }
}
