//! Parquet in and out: a history written by pandas or pyarrow trains the bundle its CSV twin
//! trains; Parquet events score as their JSONL twins do, and Parquet predictions read back with
//! pyarrow and with manymodel's own reader; a file that cannot be read as asked is refused
//! naming the file, the column and what to do.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{run, run_ok};
use manymodel::codec::parquet::{ParquetFile, Use, Value};
use manymodel::model::bundle::{Bundle, PartitionModel};
use manymodel::model::Model;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use serde_json::Value as Json;

fn python() -> String {
    common::python_with("pyarrow, pandas", &["pyarrow", "pandas"])
}

fn twins(python: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/parquet_twins.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "parquet_twins.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn train(dir: &Path, input: &str, bundle: &str) -> String {
    run_ok(&[
        "train",
        "--spec",
        s(&dir.join("train.toml")),
        "--input",
        s(&dir.join(input)),
        "--output",
        s(&dir.join(bundle)),
        "--version",
        "v1",
    ])
}

fn predict(bundle: &Path, input: &Path, output: &Path) -> String {
    run_ok(&[
        "predict",
        "--bundle",
        s(bundle),
        "--input",
        s(input),
        "--output",
        s(output),
    ])
}

/// The summary lines that must agree between twins (not the examples, which count lines in
/// CSV and rows in Parquet, nor the timing).
fn counts(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| {
            l.contains("rows used") || l.contains("rejected rows by reason") || l.contains("RMSE")
        })
        .map(str::to_owned)
        .collect()
}

fn linear(m: &PartitionModel) -> (f64, &[f64]) {
    match &m.model {
        Model::Linear(l) => (l.intercept, &l.coefficients),
        Model::Trees(_) => panic!("{}: not linear", m.partition),
    }
}

fn assert_close(what: &str, a: f64, b: f64) {
    let scale = a.abs().max(b.abs()).max(1.0);
    assert!((a - b).abs() <= 1e-12 * scale, "{what}: {a} vs {b}");
}

fn assert_same_bundle(csv: &Bundle, parquet: &Bundle, name: &str) {
    assert_eq!(csv.spec, parquet.spec, "{name}: spec (learned categories)");
    assert_eq!(csv.rows_used, parquet.rows_used, "{name}");
    assert_eq!(csv.rows_rejected, parquet.rows_rejected, "{name}");
    let mut all_csv = csv.partitions.clone();
    all_csv.push(csv.fallback.clone());
    let mut all_parquet = parquet.partitions.clone();
    all_parquet.push(parquet.fallback.clone());
    assert_eq!(all_csv.len(), all_parquet.len(), "{name}: partitions");
    for (a, b) in all_csv.iter().zip(&all_parquet) {
        assert_eq!(a.partition, b.partition, "{name}");
        assert_eq!(a.rows, b.rows, "{name} {}", a.partition);
        assert_close(&format!("{name} {} rmse", a.partition), a.rmse, b.rmse);
        let ((ia, ca), (ib, cb)) = (linear(a), linear(b));
        assert_close(&format!("{name} {} intercept", a.partition), ia, ib);
        assert_eq!(ca.len(), cb.len());
        for (i, (x, y)) in ca.iter().zip(cb).enumerate() {
            assert_close(&format!("{name} {} input {i}", a.partition), *x, *y);
        }
    }
}

#[test]
fn a_history_written_by_pandas_or_pyarrow_trains_the_bundle_its_csv_twin_trains() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    twins(&python, &["history", s(d)]);
    let csv_report = train(d, "history.csv", "csv.avro");
    let csv = Bundle::read(&d.join("csv.avro")).unwrap();
    assert!(
        csv.rows_rejected > 0 && csv.rows_used > 2000,
        "the twins have nulls to reject and rows to fit: {csv_report}"
    );
    // Categories learned from every kind of label: text (trimmed) and int8.
    let categories: Vec<_> = csv
        .spec
        .features
        .iter()
        .filter_map(|f| f.categories.clone())
        .collect();
    assert_eq!(
        categories,
        [vec!["cloudy", "rainy", "sunny"], vec!["1", "2", "3", "4"]]
    );
    let mut predictions = Vec::new();
    for (input, name) in [
        ("history.parquet", "pandas.avro"),
        ("history_arrow.parquet", "arrow.avro"),
    ] {
        let report = train(d, input, name);
        assert_eq!(counts(&report), counts(&csv_report), "{input}: {report}");
        assert!(
            report.contains("    row "),
            "rejections name rows: {report}"
        );
        let bundle = Bundle::read(&d.join(name)).unwrap();
        assert_same_bundle(&csv, &bundle, input);
        // Scoring the Parquet history as events (ints, uint16, float32, dates, INT96
        // timestamps, dictionaries, nulls) with either bundle gives the same predictions.
        let out = d.join(format!("{name}.jsonl"));
        predict(&d.join(name), &d.join("history_arrow.parquet"), &out);
        predictions.push(std::fs::read_to_string(out).unwrap());
    }
    let out = d.join("csv.jsonl");
    predict(&d.join("csv.avro"), &d.join("history_arrow.parquet"), &out);
    let from_csv = std::fs::read_to_string(out).unwrap();
    assert!(from_csv.lines().count() > 2000);
    for p in &predictions {
        assert_eq!(*p, from_csv);
    }
}

/// The predictions of a file, by event id: (store, prediction, version, model).
type ById = HashMap<String, (String, f64, String, String)>;

fn jsonl_predictions(path: &Path) -> ById {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Json = serde_json::from_str(l).unwrap();
            let store = match &v["store_id"] {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            (
                v["event_id"].as_str().unwrap().to_owned(),
                (
                    store,
                    v["prediction"].as_f64().unwrap(),
                    v["model_version"].as_str().unwrap().to_owned(),
                    v["model"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

/// Predictions read back with manymodel's own Parquet reader.
fn our_reader(path: &Path) -> ById {
    let file = ParquetFile::open(path).unwrap();
    let columns: Vec<_> = file
        .columns(&[
            ("event_id", Use::Id, false),
            ("store_id", Use::Id, false),
            ("prediction", Use::Number, false),
            ("model_version", Use::Id, false),
            ("model", Use::Id, false),
        ])
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let text = |v: Value<'_>| match v {
        Value::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("not text: {other:?}"),
    };
    let mut out = ById::new();
    file.read(&columns, |batch| {
        for r in 0..batch.rows {
            let Value::Double(p) = batch.value(2, r) else {
                panic!("prediction is not a double")
            };
            out.insert(
                text(batch.value(0, r)),
                (
                    text(batch.value(1, r)),
                    p,
                    text(batch.value(3, r)),
                    text(batch.value(4, r)),
                ),
            );
        }
        Ok(())
    })
    .unwrap();
    out
}

fn pyarrow_reader(python: &str, path: &Path) -> (Json, ById) {
    let v: Json = serde_json::from_str(&twins(python, &["read", s(path)])).unwrap();
    let rows = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().unwrap().to_owned(),
                (
                    r["store_id"].as_str().unwrap().to_owned(),
                    r["prediction"].as_f64().unwrap(),
                    r["model_version"].as_str().unwrap().to_owned(),
                    r["model"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect();
    (v, rows)
}

fn assert_same_predictions(what: &str, a: &ById, b: &ById) {
    assert_eq!(a.len(), b.len(), "{what}: count");
    for (id, (store, p, version, model)) in a {
        let other = b.get(id).unwrap_or_else(|| panic!("{what}: no {id}"));
        assert_eq!(
            (store, version, model),
            (&other.0, &other.2, &other.3),
            "{what}: {id}"
        );
        assert_close(&format!("{what}: {id}"), *p, other.1);
    }
}

#[test]
fn parquet_events_score_to_parquet_predictions_equal_to_the_jsonl_path() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(&[
        "generate",
        "--stores",
        "12",
        "--days",
        "14",
        "--events",
        "3000",
        "--out",
        s(d),
        "--seed",
        "7",
    ]);
    run_ok(&[
        "train",
        "--spec",
        s(&d.join("train.toml")),
        "--input",
        s(&d.join("history.csv")),
        "--output",
        s(&d.join("b.avro")),
        "--version",
        "v9",
    ]);
    // Events the bundle cannot score (a null price, no timestamp) and one for a store it
    // never saw (the fallback), in both twins.
    let mut events = std::fs::read_to_string(d.join("events.jsonl")).unwrap();
    events.push_str(concat!(
        r#"{"event_id":"no-price","store_id":"S001","price":null,"promo":true,"temperature":20.5,"weather":"sunny","ts":"2025-03-01T10:00:00Z"}"#,
        "\n",
        r#"{"event_id":"no-ts","store_id":"S002","price":3.5,"promo":false,"temperature":20.5,"weather":"sunny"}"#,
        "\n",
        r#"{"event_id":"new-store","store_id":"S999","price":3.5,"promo":false,"temperature":20.5,"weather":"foggy","ts":"2025-03-01T10:00:00+05:30"}"#,
        "\n",
    ));
    std::fs::write(d.join("events.jsonl"), events).unwrap();
    twins(
        &python,
        &[
            "events",
            s(&d.join("events.jsonl")),
            s(&d.join("events.parquet")),
        ],
    );
    let bundle = d.join("b.avro");
    let jsonl = predict(&bundle, &d.join("events.jsonl"), &d.join("p.jsonl"));
    let parquet = predict(&bundle, &d.join("events.parquet"), &d.join("p.parquet"));
    assert!(
        jsonl.contains("3001 predictions (1 by the fallback)")
            && jsonl.contains("2 lines rejected"),
        "{jsonl}"
    );
    assert!(
        parquet.contains("3001 predictions (1 by the fallback)")
            && parquet.contains("2 rows rejected"),
        "{parquet}"
    );
    let reference = jsonl_predictions(&d.join("p.jsonl"));
    assert_eq!(reference["new-store"].3, "fallback");

    let ours = our_reader(&d.join("p.parquet"));
    assert_same_predictions("our reader", &reference, &ours);
    let (file, theirs) = pyarrow_reader(&python, &d.join("p.parquet"));
    assert_same_predictions("pyarrow", &reference, &theirs);
    assert_eq!(
        file["schema"],
        serde_json::json!({"event_id": "string", "store_id": "string", "prediction": "double",
                           "model_version": "string", "model": "string"})
    );
    assert_eq!(
        file["nullable"],
        serde_json::json!({"event_id": true, "store_id": false, "prediction": false,
                           "model_version": false, "model": false})
    );

    // Either side alone may be Parquet.
    predict(&bundle, &d.join("events.parquet"), &d.join("q.jsonl"));
    assert_same_predictions(
        "parquet in",
        &reference,
        &jsonl_predictions(&d.join("q.jsonl")),
    );
    predict(&bundle, &d.join("events.jsonl"), &d.join("q.parquet"));
    assert_same_predictions("parquet out", &reference, &our_reader(&d.join("q.parquet")));
}

/// A Parquet column for [`write_parquet`].
enum Column<'a> {
    /// `binary` (with or without a string annotation), nulls as `None`.
    Bytes(Vec<Option<&'a str>>),
    /// `double`.
    Double(Vec<Option<f64>>),
}

/// Writes a one-row-group Parquet file with `schema` (Parquet's text form) and `columns` in
/// its order.
fn write_parquet(path: &Path, schema: &str, columns: Vec<Column<'_>>) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::default())).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for column in columns {
        let mut w = group.next_column().unwrap().unwrap();
        match column {
            Column::Bytes(v) => {
                let defs: Vec<i16> = v.iter().map(|x| i16::from(x.is_some())).collect();
                let values: Vec<ByteArray> = v.iter().flatten().map(|x| (*x).into()).collect();
                w.typed::<ByteArrayType>()
                    .write_batch(&values, Some(&defs), None)
                    .unwrap();
            }
            Column::Double(v) => {
                let defs: Vec<i16> = v.iter().map(|x| i16::from(x.is_some())).collect();
                let values: Vec<f64> = v.iter().flatten().copied().collect();
                w.typed::<DoubleType>()
                    .write_batch(&values, Some(&defs), None)
                    .unwrap();
            }
        }
        w.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

const SPEC: &str = r#"partition_column = "store_id"
target = "sales"
model = "linear"
min_rows = 2
[[features]]
column = "price"
kind = "numeric"
[[features]]
column = "weather"
kind = "one_hot"
"#;

/// A history of two stores in `dir`, with `price` written as `price_type` (`double`, `binary`
/// or `binary (STRING)`); returns its path.
fn history(dir: &Path, name: &str, price_type: &str, target: Vec<Option<f64>>) -> PathBuf {
    let path = dir.join(name);
    let n = target.len();
    let prices: Vec<String> = (0..n).map(|i| format!("{}.5", i % 4)).collect();
    let (physical, annotation) = price_type.split_once(' ').unwrap_or((price_type, ""));
    let schema = format!(
        "message m {{ optional binary store_id (STRING); optional {physical} price {annotation}; optional binary weather (STRING); optional double sales; }}"
    );
    let price = if price_type.starts_with("double") {
        Column::Double((0..n).map(|i| Some((i % 4) as f64 + 0.5)).collect())
    } else {
        Column::Bytes(prices.iter().map(|p| Some(p.as_str())).collect())
    };
    write_parquet(
        &path,
        &schema,
        vec![
            Column::Bytes((0..n).map(|i| Some(["S1", "S2"][i % 2])).collect()),
            price,
            Column::Bytes(
                (0..n)
                    .map(|i| Some(["sun", "rain", "fog"][i % 3]))
                    .collect(),
            ),
            Column::Double(target),
        ],
    );
    path
}

/// A bundle trained under [`SPEC`] on a good Parquet history, in `dir`.
fn good_bundle(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("spec.toml"), SPEC).unwrap();
    let good = history(dir, "good.parquet", "double", sales(12));
    let bundle = dir.join("b.avro");
    run_ok(&[
        "train",
        "--spec",
        s(&dir.join("spec.toml")),
        "--input",
        s(&good),
        "--output",
        s(&bundle),
    ]);
    bundle
}

fn train_fails(dir: &Path, input: &Path) -> String {
    std::fs::write(dir.join("spec.toml"), SPEC).unwrap();
    let out = run(&[
        "train",
        "--spec",
        s(&dir.join("spec.toml")),
        "--input",
        s(input),
        "--output",
        s(&dir.join("b.avro")),
        "--strict",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8(out.stderr).unwrap()
}

fn sales(n: usize) -> Vec<Option<f64>> {
    (0..n).map(|i| Some(10.0 + i as f64)).collect()
}

#[test]
fn a_column_of_the_wrong_type_is_refused_naming_the_file_the_column_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (price_type, found) in [("binary", "binary"), ("binary (STRING)", "string")] {
        let path = history(d, "wrong.parquet", price_type, sales(12));
        let err = train_fails(d, &path);
        assert!(
            err.contains(s(&path))
                && err.contains(&format!("column price has type {found}; expected a number"))
                && err.contains("pd.to_numeric"),
            "{err}"
        );
    }
    // The same file scored by a bundle: the events' price is refused alike.
    let bundle = good_bundle(d);
    let out = run(&[
        "predict",
        "--bundle",
        s(&bundle),
        "--input",
        s(&d.join("wrong.parquet")),
        "--output",
        s(&d.join("p.parquet")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("wrong.parquet") && err.contains("column price has type string"),
        "{err}"
    );
}

#[test]
fn a_missing_column_is_refused_naming_it_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = d.join("no_weather.parquet");
    write_parquet(
        &path,
        "message m { required binary store_id (STRING); required double price; required double sales; }",
        vec![
            Column::Bytes(vec![Some("S1"), Some("S2")]),
            Column::Double(vec![Some(1.0), Some(2.0)]),
            Column::Double(vec![Some(3.0), Some(4.0)]),
        ],
    );
    let err = train_fails(d, &path);
    assert!(
        err.contains(s(&path))
            && err.contains("there is no column weather")
            && err.contains("it has: store_id, price, sales"),
        "{err}"
    );
    // Events without a feature column, for a linear bundle.
    let bundle = good_bundle(d);
    let out = run(&[
        "predict",
        "--bundle",
        s(&bundle),
        "--input",
        s(&path),
        "--output",
        s(&d.join("p.jsonl")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no_weather.parquet") && err.contains("there is no column weather"),
        "{err}"
    );
}

#[test]
fn a_bad_row_is_named_by_its_row_and_a_file_that_is_not_parquet_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut target = sales(12);
    target[2] = None;
    let path = history(d, "null_target.parquet", "double", target);
    let err = train_fails(d, &path);
    assert!(
        err.contains(&format!("{} row 3: target sales is missing", s(&path))),
        "{err}"
    );
    let fake = d.join("history.parquet");
    std::fs::write(&fake, "ts,store_id,sales\n").unwrap();
    let err = train_fails(d, &fake);
    assert!(
        err.contains(s(&fake)) && err.contains("not a Parquet file"),
        "{err}"
    );
}
