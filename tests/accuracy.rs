//! Live accuracy against Apache Kafka: actuals scored with each store's model, per-store error
//! and drift verdicts on `/partitions`, drift records, the metrics, dead letters for bad
//! actuals, a bound on the stores without a model, and at-least-once commits of actuals.
//!
//! One broker serves the whole binary; every test has topics of its own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{generate_and_train, http_get, metric_sum, Broker, Daemon, ServeConfigFile};
use manymodel::local;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

/// One record read back: key, value and headers.
struct Record {
    key: String,
    value: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Every record of `topic` (all Kafka partitions, from the start) until `quiet` passes with none.
fn read_all(brokers: &str, topic: &str, partitions: i32, quiet: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("read-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("offset");
    }
    consumer.assign(&tpl).expect("assigned");
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < quiet {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = std::time::Instant::now();
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let headers = m
                    .headers()
                    .into_iter()
                    .flat_map(manymodel::kafka::headers::each)
                    .map(|h| (text(h.name), text(h.value.unwrap_or_default())))
                    .collect();
                out.push(Record {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Actuals for the generated events: realised sales with noise of sd 1 (well under every
/// store's training RMSE), plus `shift` for the stores in `shifted`.
fn actuals(events: &str, shifted: &BTreeSet<&str>, shift: f64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let noise = Normal::new(0.0, 1.0).expect("sd 1");
    events
        .lines()
        .map(|line| {
            let mut v: Value = serde_json::from_str(line).expect("event json");
            let store = v["store_id"].as_str().expect("store").to_owned();
            let expected = v["expected_sales"].as_f64().expect("expected_sales");
            let extra = if shifted.contains(store.as_str()) {
                shift
            } else {
                0.0
            };
            v["sales"] = Value::from(expected + extra + noise.sample(&mut rng));
            v.to_string().into_bytes()
        })
        .collect()
}

fn json(addr: &str, path: &str) -> Value {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn wait_for_metric(addr: &str, prefix: &str, at_least: f64) -> String {
    let mut text = String::new();
    common::wait_for(Duration::from_secs(60), prefix, || {
        text = http_get(addr, "/metrics").1;
        metric_sum(&text, prefix) >= at_least
    });
    text
}

#[test]
fn actuals_give_each_store_its_error_and_flag_exactly_the_shifted_ones() {
    let kafka = Broker::shared();
    let brokers = kafka.brokers();
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = generate_and_train(dir.path(), 20, 4000, "v1");
    for (topic, partitions) in [
        ("acc-in", 2),
        ("acc-out", 2),
        ("acc-dlq", 1),
        ("acc-actuals", 3),
        ("acc-drift", 1),
    ] {
        kafka.create_topic(topic, partitions);
    }
    let config = ServeConfigFile::new(&brokers, "acc")
        .topics("acc-in", "acc-out", "acc-dlq")
        .bundle(&bundle)
        .metrics(r#"per_partition_metrics = ["S003", "S004"]"#)
        .actuals(r#"topic = "acc-actuals""#)
        .actuals(r#"drift_topic = "acc-drift""#)
        .actuals("min_actuals = 20")
        .actuals("max_fallback_stores = 5")
        .write(dir.path(), "serve");
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();

    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events");
    let shifted: BTreeSet<&str> = ["S003", "S007", "S011"].into();
    let mut payloads = actuals(&events, &shifted, 40.0);
    let good = payloads.len();
    // Twenty stores without a model (scored by the fallback); only five get a row.
    let first: Value = serde_json::from_slice(&payloads[0]).expect("json");
    for i in 0..20 {
        let mut v = first.clone();
        v["store_id"] = Value::from(format!("U{i:03}"));
        payloads.push(v.to_string().into_bytes());
    }
    // Bad actuals: not JSON, no target, a target that is not a number.
    let mut no_target = first.clone();
    no_target.as_object_mut().expect("object").remove("sales");
    let mut text_target = first.clone();
    text_target["sales"] = Value::from("lots");
    payloads.push(no_target.to_string().into_bytes());
    payloads.push(text_target.to_string().into_bytes());
    local::produce(
        &brokers,
        "acc-actuals",
        &payloads,
        local::json_key("store_id"),
        None,
    )
    .expect("actuals produced");
    // The last one carries headers of its own, which its dead letter keeps.
    let sent = common::headers::producer_headers();
    let not_json = (None, b"not json".to_vec());
    common::headers::produce(&brokers, "acc-actuals", &[not_json], &sent);
    payloads.push(b"not json".to_vec());

    let metrics = wait_for_metric(&addr, "manymodel_actuals_total", (good + 20) as f64);
    assert_eq!(
        metric_sum(&metrics, "manymodel_actuals_total{model=\"fallback\"}"),
        20.0
    );
    assert_eq!(
        metric_sum(&metrics, "manymodel_actual_absolute_error_count"),
        (good + 20) as f64
    );
    let drifting = || {
        metric_sum(
            &http_get(&addr, "/metrics").1,
            "manymodel_partitions_drifting",
        )
    };
    common::wait_for(Duration::from_secs(10), "drifting gauge", || {
        drifting() == 3.0
    });

    // The worst stores are exactly the shifted ones.
    let page = json(&addr, "/partitions?sort=drift&limit=3");
    assert_eq!(
        page["tracked"], 25,
        "20 stores with a model + 5 of the 20 unknown"
    );
    assert_eq!(page["drifting"], 3);
    let worst: BTreeSet<&str> = page["partitions"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["partition"].as_str().expect("id"))
        .collect();
    assert_eq!(worst, shifted);
    for r in page["partitions"].as_array().expect("list") {
        assert_eq!(r["verdict"], "drifting", "{r}");
        assert_eq!(r["kind"], "partition");
        assert_eq!(r["model_version"], "v1");
        assert!(r["ratio"].as_f64().expect("ratio") > 1.5, "{r}");
        assert!(
            (r["bias"].as_f64().expect("bias") - 40.0).abs() < 5.0,
            "{r}"
        );
        assert!(r["verdict_at_ms"].as_i64().is_some());
    }
    // A stable store: its error is the sd-1 noise, far under its training RMSE.
    let calm = json(&addr, "/partitions/S001");
    assert_eq!(calm["verdict"], "stable", "{calm}");
    assert!(calm["actuals"].as_u64().expect("count") >= 20);
    let rmse = calm["rmse"].as_f64().expect("rmse");
    assert!(rmse > 0.5 && rmse < 2.0, "{calm}");
    assert!(calm["training_rmse"].as_f64().expect("training") > 2.0);
    assert_eq!(http_get(&addr, "/partitions/nobody").0, 404);
    assert_eq!(http_get(&addr, "/partitions?sort=loudest").0, 400);
    let all = json(&addr, "/partitions?sort=partition&limit=1000");
    let rows = all["partitions"].as_array().expect("list");
    assert_eq!(rows.len(), 25);
    assert_eq!(rows[0]["partition"], "S001");
    // Which five unknown stores got a row depends on arrival order; the others got none.
    let fallback: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r["kind"] == "fallback")
        .map(|r| r["partition"].as_str().expect("id"))
        .collect();
    assert_eq!(fallback.len(), 5);
    for i in 0..20 {
        let id = format!("U{i:03}");
        let status = http_get(&addr, &format!("/partitions/{id}")).0;
        assert_eq!(
            status == 200,
            fallback.contains(id.as_str()),
            "{id}: {status}"
        );
    }

    // Per-store gauges only for the listed stores.
    let metrics = http_get(&addr, "/metrics").1;
    assert!(
        metric_sum(
            &metrics,
            "manymodel_partition_drift_ratio{partition=\"S003\"}"
        ) > 1.5
    );
    assert!(
        metric_sum(
            &metrics,
            "manymodel_partition_recent_rmse{partition=\"S004\"}"
        ) > 0.0
    );
    assert!(
        !metrics.contains("partition=\"S007\""),
        "S007 is not listed"
    );
    assert!(metric_sum(&metrics, "manymodel_partition_error_ratio_count") > 0.0);
    common::wait_for(Duration::from_secs(5), "table bytes gauge", || {
        let text = http_get(&addr, "/metrics").1;
        metric_sum(&text, "manymodel_accuracy_table_bytes") > 0.0
            && metric_sum(&text, "manymodel_accuracy_partitions_tracked") == 25.0
    });

    // One drift record per shifted store, keyed by it.
    let drift = read_all(&brokers, "acc-drift", 1, Duration::from_secs(3));
    let keys: BTreeSet<&str> = drift.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, shifted);
    assert_eq!(drift.len(), 3);
    for r in &drift {
        let v: Value = serde_json::from_slice(&r.value).expect("drift record is JSON");
        assert_eq!(v["partition"], r.key.as_str());
        assert_eq!(v["verdict"], "drifting");
        assert!(v["training_rmse"].as_f64().expect("training") > 0.0);
    }
    common::wait_for(Duration::from_secs(10), "drift records counted", || {
        metric_sum(
            &http_get(&addr, "/metrics").1,
            "manymodel_drift_records_total{change=\"started\"}",
        ) == 3.0
    });

    // Bad actuals are dead letters with their reason and source.
    let dead = read_all(&brokers, "acc-dlq", 1, Duration::from_secs(3));
    let kinds: BTreeSet<&str> = dead
        .iter()
        .map(|r| {
            assert_eq!(r.headers["source-topic"], "acc-actuals");
            r.headers["error-kind"].as_str()
        })
        .collect();
    assert_eq!(
        kinds,
        ["invalid_json", "missing_feature", "wrong_type"].into()
    );
    assert!(dead.iter().any(|r| r.value == b"not json"));
    let lists = common::headers::read(&brokers, "acc-dlq", dead.len(), Duration::from_secs(30));
    let invalid_json = |list: &&common::headers::HeaderList| {
        list.iter()
            .any(|(k, v)| k == b"error-kind" && v.as_deref() == Some(&b"invalid_json"[..]))
    };
    let names: Vec<Vec<u8>> = lists
        .iter()
        .find(invalid_json)
        .map(|list| list.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, common::headers::expected_dead_letter_names(&sent));

    // Every actual's offset is committed at shutdown (dead letters included).
    assert!(daemon.terminate().success());
    let committed = common::chaos::committed_offsets(&brokers, "acc.actuals", "acc-actuals", 3);
    let total: i64 = committed.values().sum();
    assert_eq!(total, payloads.len() as i64, "{committed:?}");
}

#[test]
fn without_actuals_the_partitions_endpoint_says_how_to_turn_it_on() {
    let kafka = Broker::shared();
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = generate_and_train(dir.path(), 3, 10, "v1");
    for t in ["noacc-in", "noacc-out", "noacc-dlq"] {
        kafka.create_topic(t, 1);
    }
    let config = ServeConfigFile::new(&kafka.brokers(), "noacc")
        .topics("noacc-in", "noacc-out", "noacc-dlq")
        .bundle(&bundle)
        .write(dir.path(), "serve");
    let daemon = Daemon::start(&config);
    let addr = daemon.metrics_addr();
    let (status, body) = http_get(&addr, "/partitions");
    assert_eq!(status, 404);
    assert!(body.contains("[actuals]"), "{body}");
    assert!(daemon.terminate().success());
}

#[test]
fn avro_actuals_are_read_with_the_actuals_reader_schema() {
    let kafka = Broker::shared();
    let brokers = kafka.brokers();
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = generate_and_train(dir.path(), 5, 500, "v1");
    for (topic, partitions) in [
        ("avacc-in", 1),
        ("avacc-out", 1),
        ("avacc-dlq", 1),
        ("avacc-actuals", 2),
    ] {
        kafka.create_topic(topic, partitions);
    }
    let schemas = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let (event_avsc, actual_avsc) = (
        schemas.join("sales_event.avsc"),
        schemas.join("sales_actual.avsc"),
    );
    let text = ServeConfigFile::new(&brokers, "avacc")
        .topics("avacc-in", "avacc-out", "avacc-dlq")
        .bundle(&bundle)
        .actuals(r#"topic = "avacc-actuals""#)
        .actuals("min_actuals = 20")
        .actuals(&format!("schema = {:?}", actual_avsc.display().to_string()))
        .text()
        + &format!(
            "[input]\nformat = \"avro\"\nframing = \"confluent\"\n[input.schemas]\n1 = {:?}\n2 = {:?}\n",
            event_avsc.display().to_string(),
            actual_avsc.display().to_string()
        );
    let config = dir.path().join("serve.toml");
    std::fs::write(&config, text).expect("config");
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let addr = daemon.metrics_addr();

    // Actuals in Confluent framing with the actuals schema (id 2): sales = the truth.
    let parse = |text: &str| apache_avro::Schema::parse_str(text).expect("schema");
    let actual_schema = parse(&std::fs::read_to_string(&actual_avsc).expect("avsc"));
    let event_schema = parse(manymodel::codec::SALES_EVENT_AVSC);
    let framed = |id: u32, schema: &apache_avro::Schema, v: &Value| {
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend(manymodel::codec::avro_twin(schema, v).expect("Avro twin"));
        out
    };
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events");
    let mut payloads: Vec<Vec<u8>> = events
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("event");
            v["sales"] = v["expected_sales"].clone();
            framed(2, &actual_schema, &v)
        })
        .collect();
    let good = payloads.len();
    // An event (schema id 1) on the actuals topic: no sales, so not an actual.
    let first: Value = serde_json::from_str(events.lines().next().expect("one")).expect("json");
    payloads.push(framed(1, &event_schema, &first));
    local::produce(&brokers, "avacc-actuals", &payloads, |_| None, None).expect("produced");

    wait_for_metric(&addr, "manymodel_actuals_total", good as f64);
    let page = json(&addr, "/partitions?sort=partition&limit=10");
    assert_eq!(page["tracked"], 5, "{page}");
    for r in page["partitions"].as_array().expect("list") {
        assert_eq!(r["verdict"], "stable", "{r}");
        assert!(r["ratio"].as_f64().expect("ratio") < 1.0, "{r}");
    }
    let dead = read_all(&brokers, "avacc-dlq", 1, Duration::from_secs(3));
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers["error-kind"], "incompatible_schema",
        "{:?}",
        dead[0].headers
    );
    assert!(daemon.terminate().success());
}
