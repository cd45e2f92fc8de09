//! `generate --drift FRACTION --drift-after N` and the actuals, as a user (or an accuracy
//! monitor's test) runs them: the same files as ever without drift, a seeded share of stores
//! whose old model goes stale from event N on, and actuals that carry each store's noise.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::run_ok;
use manymodel::generate::{drift_plan, Drift, DriftPlan, StreamOptions};
use serde_json::Value;

fn generate(out: &Path, extra: &[&str]) {
    let mut args = vec!["generate", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_ok(&args);
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn plan_of(dir: &Path) -> DriftPlan {
    serde_json::from_str(&std::fs::read_to_string(dir.join("drift.json")).unwrap()).unwrap()
}

fn num(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Root mean square of `errors` per store.
fn rmse_by_store(errors: impl Iterator<Item = (String, f64)>) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (store, e) in errors {
        let s = sums.entry(store).or_default();
        s.0 += e * e;
        s.1 += 1;
    }
    sums.into_iter()
        .map(|(store, (sq, n))| (store, (sq / n as f64).sqrt()))
        .collect()
}

/// Trains `history` under `spec`, scores `events` and returns each event id's prediction.
fn fit_and_predict(
    dir: &Path,
    spec: &Path,
    history: &Path,
    events: &Path,
) -> BTreeMap<String, f64> {
    let bundle = dir.join("bundle.avro");
    let predictions = dir.join("predictions.jsonl");
    run_ok(&[
        "train",
        "--spec",
        spec.to_str().unwrap(),
        "--input",
        history.to_str().unwrap(),
        "--output",
        bundle.to_str().unwrap(),
        "--version",
        "v1",
    ]);
    run_ok(&[
        "predict",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        events.to_str().unwrap(),
        "--output",
        predictions.to_str().unwrap(),
    ]);
    json_lines(&predictions)
        .iter()
        .map(|p| {
            assert_eq!(text(p, "model"), "partition", "{p}");
            (text(p, "event_id").to_owned(), num(p, "prediction"))
        })
        .collect()
}

#[test]
fn without_drift_the_files_are_the_ones_generate_always_wrote() {
    use sha2::{Digest, Sha256};
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--stores", "30", "--days", "5", "--events", "3000", "--seed", "7",
    ];
    generate(dir.path(), &args);
    let sha = |name: &str| {
        hex::encode(Sha256::digest(
            std::fs::read(dir.path().join(name)).unwrap(),
        ))
    };
    // Written by the generator before drift and actuals existed; benchmarks and tests compare
    // against data of this stream.
    assert_eq!(
        sha("history.csv"),
        "0856e2c56bb737d38441c8a2001d2f275d0f4c826ff53ea4a0f8fdfbe5e65373"
    );
    assert_eq!(
        sha("events.jsonl"),
        "e6e2375abdb0f0fef752f5c026d088a5414f55a14dd0458fc7e17e7147007664"
    );
    let plan = plan_of(dir.path());
    assert!(plan.drifted.is_empty());
    assert_eq!(plan.noise_sd.len(), 30);
}

#[test]
fn the_same_seed_drifts_the_same_round_fraction_of_stores() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, seed: &str| {
        let out = dir.path().join(name);
        let args = [
            "--stores", "50", "--days", "0", "--events", "10", "--seed", seed,
        ];
        generate(
            &out,
            &[&args[..], &["--drift", "0.05", "--drift-after", "5"]].concat(),
        );
        plan_of(&out)
    };
    let (a, b, other) = (run("a", "42"), run("b", "42"), run("c", "43"));
    assert_eq!(a.drifted.len(), 3, "round(0.05 × 50) = round(2.5) = 3");
    assert_eq!(a, b);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("a/drift.json")).unwrap(),
        drift_plan(50, 42, 0.05).unwrap().to_json(5),
        "the library agrees"
    );
    assert_ne!(a.drifted, other.drifted);
    let sorted = {
        let mut s = a.drifted.clone();
        s.sort();
        s
    };
    assert_eq!(a.drifted, sorted);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a/drift.json")).unwrap())
            .unwrap();
    assert_eq!(report["drift_after"], 5);
    assert_eq!(report["fraction"], 0.05);
    assert_eq!(report["seed"], 42);
}

#[test]
fn a_model_fitted_on_the_history_goes_stale_for_the_drifted_stores_only_and_a_refit_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (drifted_dir, stable_dir) = (dir.path().join("drift"), dir.path().join("stable"));
    let args = [
        "--stores", "40", "--days", "30", "--events", "32000", "--seed", "5",
    ];
    let after = 8000;
    generate(
        &drifted_dir,
        &[&args[..], &["--drift", "0.1", "--drift-after", "8000"]].concat(),
    );
    generate(&stable_dir, &args);
    let plan = plan_of(&drifted_dir);
    assert_eq!(plan.drifted.len(), 4);
    let drifts = |store: &str| plan.drifted.iter().any(|d| d == store);
    let noise = |store: &str| plan.noise_sd[store];

    // The truth moves for drifted stores from event `after` on, by at least 4 noise sd, and
    // nowhere else.
    let actuals = json_lines(&drifted_dir.join("actuals.jsonl"));
    let unchanged = json_lines(&stable_dir.join("events.jsonl"));
    assert_eq!(actuals.len(), 32000);
    for (i, (a, old)) in actuals.iter().zip(&unchanged).enumerate() {
        let store = text(a, "store_id");
        let moved = (num(a, "expected_sales") - num(old, "expected_sales")).abs();
        if i >= after && drifts(store) {
            assert!(
                moved >= 4.0 * noise(store) - 0.002,
                "event {i} of {store}: {moved}"
            );
        } else {
            assert_eq!(moved, 0.0, "event {i} of {store}");
        }
    }

    // Actuals: realised sales scatter around the truth with the store's noise sd.
    let scatter = rmse_by_store(actuals.iter().map(|a| {
        (
            text(a, "store_id").to_owned(),
            num(a, "sales") - num(a, "expected_sales"),
        )
    }));
    for (store, sd) in &scatter {
        let ratio = sd / noise(store);
        assert!(
            (0.85..1.15).contains(&ratio),
            "{store}: sd {sd} vs {}",
            noise(store)
        );
    }

    // The model of the history, on the actuals after the drift.
    let predictions = fit_and_predict(
        &drifted_dir,
        &drifted_dir.join("train.toml"),
        &drifted_dir.join("history.csv"),
        &drifted_dir.join("actuals.jsonl"),
    );
    let old_model = rmse_by_store(actuals[after..].iter().map(|a| {
        let error = predictions[text(a, "event_id")] - num(a, "sales");
        (text(a, "store_id").to_owned(), error)
    }));
    assert_eq!(old_model.len(), 40);
    for (store, rmse) in &old_model {
        let ratio = rmse / noise(store);
        if drifts(store) {
            assert!(
                ratio >= 2.5,
                "drifted {store}: RMSE {rmse} = {ratio:.2} × noise"
            );
        } else {
            assert!(
                (0.8..1.3).contains(&ratio),
                "stable {store}: RMSE {rmse} = {ratio:.2} × noise"
            );
        }
    }

    // Refitted on the first half of each store's post-drift actuals, scored on the second half:
    // back at the noise floor, drifted stores included.
    let mut by_store: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for a in &actuals[after..] {
        by_store.entry(text(a, "store_id")).or_default().push(a);
    }
    let refit_dir = dir.path().join("refit");
    std::fs::create_dir_all(&refit_dir).unwrap();
    let mut history = String::from("ts,store_id,price,promo,temperature,weather,sales\n");
    let mut held_out = String::new();
    for rows in by_store.values() {
        let (fit, test) = rows.split_at(rows.len() / 2);
        for a in fit {
            history += &format!(
                "{},{},{},{},{},{},{}\n",
                text(a, "ts"),
                text(a, "store_id"),
                a["price"],
                u8::from(a["promo"].as_bool().unwrap()),
                a["temperature"],
                text(a, "weather"),
                a["sales"]
            );
        }
        for a in test {
            held_out += &format!("{a}\n");
        }
    }
    std::fs::write(refit_dir.join("history.csv"), history).unwrap();
    std::fs::write(refit_dir.join("held_out.jsonl"), &held_out).unwrap();
    let predictions = fit_and_predict(
        &refit_dir,
        &drifted_dir.join("train.toml"),
        &refit_dir.join("history.csv"),
        &refit_dir.join("held_out.jsonl"),
    );
    let refitted = rmse_by_store(held_out.lines().map(|l| {
        let a: Value = serde_json::from_str(l).unwrap();
        let error = predictions[text(&a, "event_id")] - num(&a, "sales");
        (text(&a, "store_id").to_owned(), error)
    }));
    for (store, rmse) in &refitted {
        let ratio = rmse / noise(store);
        assert!(
            ratio < 1.3,
            "refitted {store}: RMSE {rmse} = {ratio:.2} × noise"
        );
    }
}

#[test]
fn stream_sends_each_events_actual_right_after_it_and_reports_the_drift() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    for topic in ["sales", "actuals"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("drift.json");
    let drift = Drift {
        fraction: 0.2,
        after: 300,
    };
    let sent = manymodel::generate::stream(&StreamOptions {
        stores: 20,
        seed: 3,
        connection: manymodel::kafka::connection::Connection::plain(&brokers),
        topic: "sales".into(),
        rate: 5000,
        events: Some(600),
        drift,
        actuals_topic: Some("actuals".into()),
        drift_report: Some(report.clone()),
    })
    .unwrap();
    assert_eq!(sent, 600);
    assert_eq!(
        std::fs::read_to_string(&report).unwrap(),
        drift_plan(20, 3, 0.2).unwrap().to_json(300)
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let read = |topic: &str| {
        runtime
            .block_on(manymodel::local::read(
                &brokers,
                topic,
                600,
                std::time::Duration::from_secs(30),
            ))
            .unwrap()
    };
    let (events, actuals) = (read("sales"), read("actuals"));
    assert_eq!((events.len(), actuals.len()), (600, 600));
    for (i, (e, a)) in events.iter().zip(&actuals).enumerate() {
        assert_eq!(e.key, a.key, "record {i}");
        let event: Value = serde_json::from_slice(&e.value).unwrap();
        let mut actual: Value = serde_json::from_slice(&a.value).unwrap();
        assert_eq!(text(&event, "event_id"), format!("gen-3-{i}"));
        assert_eq!(e.key.as_deref(), Some(text(&event, "store_id").as_bytes()));
        assert!(actual["sales"].is_f64(), "{actual}");
        actual.as_object_mut().unwrap().remove("sales");
        assert_eq!(
            actual, event,
            "record {i}: the actual is its event plus sales"
        );
    }
}
