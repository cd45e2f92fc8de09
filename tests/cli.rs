//! train, inspect and predict as a user runs them: summaries, rejections, exit codes.

mod common;

use common::{run, run_ok};

const SPEC: &str = r#"
partition_column = "store_id"
target = "sales"
min_rows = 3
[[features]]
column = "price"
kind = "numeric"
[[features]]
column = "ts"
kind = "hour_of_day"
"#;

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn bad_rows_are_rejected_with_their_lines_and_strict_makes_them_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "spec.toml", SPEC);
    let csv = write(
        dir.path(),
        "h.csv",
        "store_id,ts,price,sales\nA,2025-01-01T10:00:00Z,1,10\nA,2025-01-01T11:00:00Z,2,12\nA,1735732800000,3,14\nA,not-a-time,4,16\nB,2025-01-01T10:00:00Z,abc,5\nB,2025-01-01T10:00:00Z,2\nB,2025-01-01T12:00:00Z,2,7\n",
    );
    let out = dir.path().join("b.avro");
    let text = run_ok(&[
        "train",
        "--spec",
        &spec,
        "--input",
        &csv,
        "--output",
        out.to_str().unwrap(),
        "--version",
        "v1",
    ]);
    assert!(text.contains("partitions fitted: 1"), "{text}");
    assert!(text.contains("rows rejected: 3"), "{text}");
    assert!(text.contains("line 5"), "bad timestamp on line 5: {text}");
    assert!(text.contains("line 6"), "bad number on line 6: {text}");
    assert!(text.contains("skipped \"B\""), "B has too few rows: {text}");

    let strict = run(&[
        "train",
        "--spec",
        &spec,
        "--input",
        &csv,
        "--output",
        out.to_str().unwrap(),
        "--strict",
    ]);
    assert_eq!(strict.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("line 5"));

    let inspect = run_ok(&["inspect", out.to_str().unwrap()]);
    assert!(inspect.contains("version:          v1"), "{inspect}");
    assert!(inspect.contains("partitions:       1"), "{inspect}");
    let one = run_ok(&["inspect", out.to_str().unwrap(), "--partition", "A"]);
    assert!(one.contains("ts.hour_of_day=10"), "{one}");
    assert_eq!(
        run(&["inspect", out.to_str().unwrap(), "--partition", "Z"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn missing_columns_empty_files_and_empty_specs_exit_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(dir.path(), "spec.toml", SPEC);
    let out = dir.path().join("b.avro");
    let out = out.to_str().unwrap();
    let no_price = write(
        dir.path(),
        "a.csv",
        "store_id,ts,sales\nA,2025-01-01T10:00:00Z,1\n",
    );
    refused(
        &[
            "train", "--spec", &spec, "--input", &no_price, "--output", out,
        ],
        "no column price",
    );

    let empty = write(dir.path(), "e.csv", "");
    refused(
        &["train", "--spec", &spec, "--input", &empty, "--output", out],
        "empty",
    );

    let nothing = write(
        dir.path(),
        "n.toml",
        "partition_column = \"store_id\"\ntarget = \"sales\"\nfeatures = []\n",
    );
    refused(
        &[
            "train", "--spec", &nothing, "--input", &no_price, "--output", out,
        ],
        "no feature",
    );
}

#[test]
fn predict_scores_good_lines_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = small_bundle(dir.path(), Some("v9"));
    let events = write(
        dir.path(),
        "ev.jsonl",
        "{\"event_id\":1,\"store_id\":\"A\",\"ts\":\"2025-02-01T10:30:00Z\",\"price\":2}\n{\"store_id\":\"Q\",\"ts\":0,\"price\":2}\nnope\n",
    );
    let out = dir.path().join("p.jsonl");
    let r = run(&[
        "predict",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        &events,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("line 3"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event_id"], 1);
    assert_eq!(lines[0]["model"], "partition");
    assert_eq!(lines[0]["model_version"], "v9");
    // Rows at 10:00 with price 1 and 3 average to price 2 → sales 12 at hour 10.
    assert!(
        (lines[0]["prediction"].as_f64().unwrap() - 12.0).abs() < 1e-9,
        "{:?}",
        lines[0]
    );
    assert_eq!(lines[1]["model"], "fallback");
    assert!(lines[1].get("event_id").is_none());
}

#[test]
fn predict_on_a_file_with_nothing_to_score_exits_2_and_caps_its_error_list() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = small_bundle(dir.path(), None);
    let out = dir.path().join("p.jsonl");
    // The history is not a JSONL file of events: every line is rejected.
    let many: String = (0..50).map(|i| format!("A,{i},1,2\n")).collect();
    let wrong = write(dir.path(), "wrong.csv", &many);
    let r = run(&[
        "predict",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        &wrong,
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(
        stderr.matches("wrong.csv line ").count(),
        10,
        "ten examples, then a count: {stderr}"
    );
    assert!(stderr.contains("40 more rejected lines"), "{stderr}");
    let empty = write(dir.path(), "empty.jsonl", "");
    refused(
        &[
            "predict",
            "--bundle",
            bundle.to_str().unwrap(),
            "--input",
            &empty,
            "--output",
            out.to_str().unwrap(),
        ],
        "no events",
    );
}

/// Trains a bundle for store A (three rows: price and hour of day) in `dir`.
fn small_bundle(dir: &std::path::Path, version: Option<&str>) -> std::path::PathBuf {
    let spec = write(dir, "spec.toml", SPEC);
    let csv = write(
        dir,
        "h.csv",
        "store_id,ts,price,sales\nA,2025-01-01T10:00:00Z,1,10\nA,2025-01-01T11:00:00Z,2,12\nA,2025-01-01T10:00:00Z,3,14\n",
    );
    let bundle = dir.join("b.avro");
    let out = bundle.to_str().unwrap();
    let mut args = vec!["train", "--spec", &spec, "--input", &csv, "--output", out];
    if let Some(v) = version {
        args.extend(["--version", v]);
    }
    run_ok(&args);
    bundle
}

/// Runs manymodel and expects it to refuse: exit code 2 and `needle` in what it says.
fn refused(args: &[&str], needle: &str) {
    let r = run(args);
    assert_eq!(r.status.code(), Some(2), "{args:?}");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
}

/// `bench` refuses settings that cannot work before it starts anything: a topic needs at least
/// one replica (or -1, the broker's default), a run at least one event, one run per pipeline
/// and one record per batch, a latency rate is events/s, `half` or `half-drain`, a latency run
/// lasts 1 to 3,600 seconds, and a
/// librdkafka option (-X, or --loader-option for the loader alone) is KEY=VALUE with a name
/// and value librdkafka takes.
#[test]
fn bench_refuses_impossible_settings_before_it_starts() {
    for bad in ["0", "-2", "32768", "two"] {
        refused(
            &["bench", "--replication-factor", bad],
            "the replicas of each topic",
        );
    }
    for count in ["--events", "--repeat", "--records-per-batch"] {
        refused(&["bench", count, "0"], "at least 1");
        refused(&["bench", count, "1.5"], "at least 1");
    }
    refused(&["bench", "--latency-rate", "halve"], "`half-drain`");
    refused(&["bench", "--latency-rate", "0"], "at least 1");
    refused(&["bench", "--latency-seconds", "0"], "1..=3600");
    refused(&["bench", "-X", "linger.ms"], "KEY=VALUE");
    refused(&["bench", "--loader-option", "=2"], "KEY=VALUE");
    refused(
        &["bench", "--loader-option", "linger.ms=abc"],
        "--loader-option: linger.ms=abc: Invalid value",
    );
    refused(&["bench", "-X", "=5"], "the key is empty");
    // librdkafka checks names and values before anything starts.
    refused(
        &["bench", "-X", "linger.ms=abc"],
        "linger.ms=abc: Invalid value",
    );
    refused(
        &["bench", "-X", "no.such.option=1"],
        "No such configuration property",
    );
}

/// A latency run streams `--latency-rate` events a second for `--latency-seconds`, the
/// backlog's events again in turn when it needs more than the backlog holds (here 400 from
/// 300), and every one of them is scored (MockCluster).
#[test]
fn bench_streams_for_the_latency_seconds_given() {
    let out = run_ok(&[
        "bench",
        "--events",
        "300",
        "--stores",
        "10",
        "--repeat",
        "1",
        "--latency-rate",
        "200",
        "--latency-seconds",
        "2",
    ]);
    assert!(
        out.contains("latency measured at 200 events/s over the last 320 of 400 events (2 s,"),
        "{out}"
    );
    for pipeline in ["passthrough", "scoring"] {
        assert!(
            common::bench_rate(&out, pipeline) > 0.0,
            "{pipeline}: {out}"
        );
    }
}
