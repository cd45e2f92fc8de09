//! Cross-check against scikit-learn: per-store OLS and ridge fits, on stores whose designs are
//! rank-deficient (a price that never varies, a weather category never seen, hours never open),
//! must predict within 1e-6 (relative) of `LinearRegression` / `Ridge`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::run_ok;

fn python_with_sklearn() -> String {
    common::python_with("sklearn, numpy", &["scikit-learn", "numpy"])
}

/// Rewrites the generated history so some stores' designs are rank-deficient.
fn make_rank_deficient(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut cols: Vec<String> = line.split(',').map(str::to_owned).collect();
        // ts,store_id,price,promo,temperature,weather,sales
        let hour: u32 = cols[0][11..13].parse().unwrap();
        match cols[1].as_str() {
            "S001" => cols[2] = "4.99".into(),        // price never varies
            "S002" if cols[5] == "rainy" => continue, // a category it never saw
            "S003" if hour >= 15 => continue,         // hours it never opened
            "S004" => cols[3] = "0".into(),           // never on promotion
            "S005" if cols[4].starts_with('1') => continue, // fewer rows: may fall to min_rows
            _ => {}
        }
        out.push_str(&cols.join(","));
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

fn compare(dir: &Path, spec: &str, python: &str) {
    let d = dir.to_str().unwrap();
    let spec_path = dir.join("spec.toml");
    std::fs::write(&spec_path, spec).unwrap();
    let bundle = dir.join("b.avro");
    run_ok(&[
        "train",
        "--spec",
        spec_path.to_str().unwrap(),
        "--input",
        &format!("{d}/history.csv"),
        "--output",
        bundle.to_str().unwrap(),
    ]);
    let ours_path = dir.join("ours.jsonl");
    run_ok(&[
        "predict",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        &format!("{d}/events.jsonl"),
        "--output",
        ours_path.to_str().unwrap(),
    ]);
    let theirs_path = dir.join("theirs.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/reference_fit.py");
    let status = Command::new(python)
        .arg(script)
        .args([
            spec_path.to_str().unwrap(),
            &format!("{d}/history.csv"),
            &format!("{d}/events.jsonl"),
            theirs_path.to_str().unwrap(),
        ])
        .status()
        .expect("python runs");
    assert!(status.success());
    let theirs: HashMap<String, f64> =
        serde_json::from_str(&std::fs::read_to_string(theirs_path).unwrap()).unwrap();
    let mut worst = 0.0f64;
    let mut n = 0;
    for line in std::fs::read_to_string(ours_path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["event_id"].as_str().unwrap();
        let ours = v["prediction"].as_f64().unwrap();
        let reference = theirs[id];
        let rel = (ours - reference).abs() / reference.abs().max(1.0);
        worst = worst.max(rel);
        assert!(
            rel <= 1e-6,
            "{id} ({}): ours {ours}, scikit-learn {reference}",
            v["store_id"]
        );
        n += 1;
    }
    assert_eq!(n, theirs.len());
    eprintln!("{n} predictions, worst relative difference {worst:e}");
}

#[test]
fn linear_and_ridge_match_scikit_learn_on_rank_deficient_stores() {
    let python = python_with_sklearn();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run_ok(&[
        "generate", "--stores", "12", "--days", "10", "--events", "3000", "--out", d, "--seed", "3",
    ]);
    make_rank_deficient(&dir.path().join("history.csv"));
    let base = std::fs::read_to_string(dir.path().join("train.toml")).unwrap();
    compare(
        dir.path(),
        &base.replace("min_rows = 30", "min_rows = 60"),
        &python,
    );
    compare(
        dir.path(),
        &base.replace("model = \"linear\"", "model = \"ridge\"\nalpha = 2.5"),
        &python,
    );
}
