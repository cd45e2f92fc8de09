//! Cross-check against another Avro implementation: the Avro twins of generated JSON events,
//! written by Python's fastavro in Confluent's wire format and as a container file, decode to
//! the same events and the same predictions as the JSON events themselves, through the daemon
//! (against tansu) and through `predict --format avro`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{generate_and_train, run_ok, write_config, Broker, Daemon};
use manymodel::local;

fn python_with_fastavro() -> String {
    common::python_with("fastavro", &["fastavro"])
}

/// event_id → the prediction's JSON text (compared as text: see tests/avro.rs).
fn predictions(jsonl: &str) -> HashMap<String, String> {
    jsonl
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let text = l
                .split("\"prediction\":")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap();
            (v["event_id"].as_str().unwrap().to_owned(), text.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn fastavro_twins_score_like_their_json_events() {
    let python = python_with_fastavro();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bundle = generate_and_train(d, 5, 60, "v-fastavro");
    let events = d.join("events.jsonl");
    let json_out = d.join("json.jsonl");
    run_ok(&[
        "predict",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        events.to_str().unwrap(),
        "--output",
        json_out.to_str().unwrap(),
    ]);
    let want = predictions(&std::fs::read_to_string(&json_out).unwrap());
    assert_eq!(want.len(), 60);

    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/sales_event.avsc");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/avro_twins.py");
    let status = Command::new(&python)
        .arg(&script)
        .arg(&events)
        .arg(&schema)
        .arg("7")
        .arg(d)
        .status()
        .unwrap();
    assert!(status.success(), "avro_twins.py failed");

    // Offline: the container file.
    let avro_out = d.join("predictions.avro");
    run_ok(&[
        "predict",
        "--format",
        "avro",
        "--bundle",
        bundle.to_str().unwrap(),
        "--input",
        d.join("events.avro").to_str().unwrap(),
        "--output",
        avro_out.to_str().unwrap(),
    ]);
    let file = std::fs::read(&avro_out).unwrap();
    let mut seen = 0;
    for v in apache_avro::Reader::new(&file[..]).unwrap() {
        let apache_avro::types::Value::Record(fields) = v.unwrap() else {
            panic!()
        };
        let f: HashMap<String, apache_avro::types::Value> = fields.into_iter().collect();
        let apache_avro::types::Value::Union(_, id) = &f["event_id"] else {
            panic!()
        };
        let apache_avro::types::Value::String(id) = id.as_ref() else {
            panic!()
        };
        let apache_avro::types::Value::Double(p) = f["prediction"] else {
            panic!()
        };
        assert_eq!(serde_json::json!(p).to_string(), want[id], "event {id}");
        seen += 1;
    }
    assert_eq!(seen, want.len());

    // Through the daemon: Confluent-framed records, schema id 7 from a local table.
    let broker = Broker::start();
    for t in ["in", "out", "dlq"] {
        broker.create_topic(t, 2);
    }
    let config = write_config(
        d,
        "fastavro",
        &broker.brokers(),
        ("in", "out", "dlq"),
        &bundle,
        "fallback",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[input]\nformat = \"avro\"\nframing = \"confluent\"\nschema = \"{0}\"\n[input.schemas]\n7 = \"{0}\"\n",
        schema.display()
    ));
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let records: Vec<Vec<u8>> = std::fs::read_to_string(d.join("confluent.hex"))
        .unwrap()
        .lines()
        .map(|l| hex::decode(l).unwrap())
        .collect();
    let brokers = broker.brokers();
    tokio::task::spawn_blocking(move || {
        local::produce(&brokers, "in", &records, |_| Some(b"k".to_vec()), None).unwrap()
    })
    .await
    .unwrap();
    let out = local::read(
        &broker.brokers(),
        "out",
        want.len(),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    assert_eq!(out.len(), want.len(), "{}", daemon.log_text());
    for r in &out {
        let text = std::str::from_utf8(&r.value).unwrap();
        let p: serde_json::Value = serde_json::from_str(text).unwrap();
        let id = p["event_id"].as_str().unwrap();
        assert!(
            text.contains(&format!("\"prediction\":{},", want[id])),
            "{text} vs {}",
            want[id]
        );
    }
    assert!(daemon.terminate().success());
}
