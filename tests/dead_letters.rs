//! Every kind of bad input becomes a dead letter, never a crash, a stall or a silent drop: one
//! test per case against Apache Kafka. Each sends the bad records and then a good one to a daemon of
//! its own, and checks that the dead letters carry their reason and source in headers with
//! the original key, value and headers untouched, that the reason's counter moved, that the good
//! record behind them is scored (no stall), and that the offsets of the dead letters are
//! committed like any other (no poison pill loops).
//!
//! One broker serves the whole binary; every test has topics of its own.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{generate_and_train, headers, http_get, metric_sum, write_config, Broker, Daemon};
use manymodel::local;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const GOOD: &str = r#"{"event_id":"good","store_id":"S001","ts":"2025-03-01T12:00:00Z","price":5.0,"promo":true,"temperature":9.5,"weather":"rainy"}"#;

/// A bundle trained once for the binary.
fn bundle() -> &'static Path {
    static BUNDLE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = BUNDLE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = generate_and_train(dir.path(), 3, 10, "v-dlq");
        (dir, bundle)
    });
    path
}

/// The Confluent-framed Avro twin of a JSON event under `schemas/sales_event.avsc`, id `id`.
fn avro(id: u32, json: &str) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(manymodel::codec::SALES_EVENT_AVSC).unwrap();
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    out.extend(manymodel::codec::avro_twin(&schema, &value).unwrap());
    out
}

/// The Avro `[input]` section: Confluent framing, schema id 1 = the shipped event schema.
fn avro_input() -> String {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/sales_event.avsc");
    format!(
        "[input]\nformat = \"avro\"\nframing = \"confluent\"\nschema = \"{0}\"\n[input.schemas]\n1 = \"{0}\"\n",
        schemas.display()
    )
}

/// One case: `records` (key, value) go in, followed by `good`; each must come out of the
/// dead-letter topic with `kind`.
struct Case<'a> {
    name: &'a str,
    /// Extra config sections appended to the usual config.
    extra: String,
    unknown_partition: &'a str,
    records: Vec<(Option<&'a [u8]>, Vec<u8>)>,
    kind: &'a str,
    /// A good record in the input's format.
    good: Vec<u8>,
}

async fn check(case: Case<'_>) {
    let broker = Broker::shared();
    let (input, output, dlq) = (
        format!("in-{}", case.name),
        format!("out-{}", case.name),
        format!("dlq-{}", case.name),
    );
    for t in [&input, &output, &dlq] {
        broker.create_topic(t, 1);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        case.name,
        &broker.brokers(),
        (&input, &output, &dlq),
        bundle(),
        case.unknown_partition,
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&case.extra);
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();

    let mut records: Vec<(Option<Vec<u8>>, Vec<u8>)> = case
        .records
        .iter()
        .map(|(k, v)| (k.map(<[u8]>::to_vec), v.clone()))
        .collect();
    records.push((Some(b"S001".to_vec()), case.good.clone()));
    let sent = headers::producer_headers();
    {
        let (brokers, topic, sent) = (broker.brokers(), input.clone(), sent.clone());
        tokio::task::spawn_blocking(move || headers::produce(&brokers, &topic, &records, &sent))
            .await
            .unwrap();
    }

    let n = case.records.len();
    let dead = local::read(&broker.brokers(), &dlq, n, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(dead.len(), n, "dead letters:\n{}", daemon.log_text());
    for (i, (r, (key, value))) in dead.iter().zip(&case.records).enumerate() {
        assert_eq!(r.headers["error-kind"], case.kind, "{:?}", r.headers);
        assert!(!r.headers["error-message"].is_empty());
        assert_eq!(r.headers["source-topic"], input);
        assert_eq!(r.headers["source-partition"], "0");
        assert_eq!(r.headers["source-offset"], i.to_string());
        assert_eq!(&r.value, value, "the original value, untouched");
        assert_eq!(r.key.as_deref(), *key, "the original key, untouched");
    }
    // The input record's own headers travel with it, in order, before manymodel's.
    let lists = headers::read(&broker.brokers(), &dlq, n, Duration::from_secs(30));
    assert_eq!(lists.len(), n);
    let kept: Vec<_> = sent.iter().filter(|(k, _)| k != b"error-kind").collect();
    for list in &lists {
        let names: Vec<Vec<u8>> = list.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(names, headers::expected_dead_letter_names(&sent));
        assert_eq!(list[..kept.len()].iter().collect::<Vec<_>>(), kept);
        assert_eq!(list[kept.len()].1.as_deref(), Some(case.kind.as_bytes()));
    }
    let scored = local::read(&broker.brokers(), &output, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(scored.len(), 1, "the good record behind them is scored");

    let addr = daemon.metrics_addr();
    let series = format!(
        "manymodel_events_dead_lettered_total{{reason=\"{}\"}}",
        case.kind
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http_get(&addr, "/metrics");
        if metric_sum(&body, &series) >= n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "{series} in:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(daemon.terminate().success());
    assert_eq!(
        committed(&broker.brokers(), case.name, &input),
        (n + 1) as i64,
        "dead letters are committed like predictions"
    );
}

/// The group's committed offset of Kafka partition 0 of `topic`.
fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match got.find_partition(topic, 0).map(|p| p.offset()) {
        Some(Offset::Offset(o)) => o,
        other => panic!("no committed offset for {topic}: {other:?}"),
    }
}

fn json_case<'a>(name: &'a str, kind: &'a str, values: &[&str]) -> Case<'a> {
    Case {
        name,
        extra: String::new(),
        unknown_partition: "fallback",
        records: values
            .iter()
            .map(|v| (Some(&b"S001"[..]), v.as_bytes().to_vec()))
            .collect(),
        kind,
        good: GOOD.as_bytes().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_is_dead_lettered() {
    check(json_case(
        "invalid-json",
        "invalid_json",
        &["{not json", "\u{0}\u{1}"],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_value_that_is_not_an_object_is_dead_lettered() {
    check(json_case(
        "not-object",
        "invalid_json",
        &["[1,2]", "42", "\"S001\""],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_partition_key_is_dead_lettered() {
    check(json_case(
        "missing-key",
        "missing_key",
        &[r#"{"ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_null_or_empty_key_is_dead_lettered() {
    let mut case = json_case(
        "empty-key",
        "empty_key",
        &[
            r#"{"store_id":null,"ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
            r#"{"store_id":"","ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
            r#"{"store_id":"  ","ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
        ],
    );
    // Kafka keys as producers send them: none, and empty.
    case.records[0].0 = None;
    case.records[1].0 = Some(b"");
    check(case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_feature_is_dead_lettered() {
    check(json_case(
        "missing-feature",
        "missing_feature",
        &[
            r#"{"store_id":"S001","ts":"2025-03-01T12:00:00Z","promo":1,"temperature":9.5,"weather":"rainy"}"#,
            r#"{"store_id":"S001","ts":"2025-03-01T12:00:00Z","price":null,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
        ],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_type_is_dead_lettered() {
    check(json_case(
        "wrong-type",
        "wrong_type",
        &[
            r#"{"store_id":"S001","ts":"2025-03-01T12:00:00Z","price":"cheap","promo":1,"temperature":9.5,"weather":"rainy"}"#,
            r#"{"store_id":{"id":1},"ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
            r#"{"store_id":"S001","ts":"2025-03-01T12:00:00Z","price":5,"promo":7,"temperature":9.5,"weather":"rainy"}"#,
        ],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nan_and_infinity_are_dead_lettered() {
    // JSON cannot spell them; Avro doubles can.
    let nan = GOOD.replace("\"price\":5.0", "\"price\":0.0");
    let mut records = Vec::new();
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut bytes = avro(1, &nan);
        // The price double sits right after the header, event_id, store_id and ts; patch it
        // by finding the eight zero bytes of 0.0.
        let at = bytes
            .windows(8)
            .position(|w| w == 0f64.to_le_bytes())
            .expect("price 0.0 in the datum");
        bytes[at..at + 8].copy_from_slice(&bad.to_le_bytes());
        records.push((Some(&b"S001"[..]), bytes));
    }
    check(Case {
        name: "not-finite",
        extra: avro_input(),
        unknown_partition: "fallback",
        records,
        kind: "not_finite",
        good: avro(1, GOOD),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_number_so_large_a_prediction_could_overflow_is_dead_lettered() {
    check(json_case(
        "too-large",
        "not_finite",
        &[
            r#"{"store_id":"S001","ts":"2025-03-01T12:00:00Z","price":1e308,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
            r#"{"store_id":"S001","ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":-2e151,"weather":"rainy"}"#,
        ],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timestamp_out_of_range_is_dead_lettered() {
    check(json_case(
        "ts-range",
        "timestamp_out_of_range",
        &[
            r#"{"store_id":"S001","ts":"3000-01-01T00:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
            r#"{"store_id":"S001","ts":-9999999999999,"price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
        ],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_id_longer_than_max_key_bytes_is_dead_lettered() {
    let long = "S".repeat(257);
    let record = format!(
        r#"{{"store_id":"{long}","ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}}"#
    );
    check(json_case("key-long", "oversize_key", &[record.as_str()])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timestamp_that_is_not_a_time_is_dead_lettered() {
    check(json_case(
        "ts-bad",
        "bad_timestamp",
        &[
            r#"{"store_id":"S001","ts":"soon","price":5,"promo":1,"temperature":9.5,"weather":"rainy"}"#,
        ],
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_record_is_dead_lettered_at_the_configured_limit() {
    let big = format!(
        r#"{{"store_id":"S001","ts":"2025-03-01T12:00:00Z","price":5,"promo":1,"temperature":9.5,"weather":"rainy","note":"{}"}}"#,
        "x".repeat(600)
    );
    let mut case = json_case("oversize", "oversize", &[&big]);
    case.extra = "[pipeline]\nmax_record_bytes = 512\n".into();
    check(case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_schema_id_is_dead_lettered() {
    check(Case {
        name: "unknown-schema",
        extra: avro_input(),
        unknown_partition: "fallback",
        records: vec![(Some(b"S001"), avro(99, GOOD))],
        kind: "unknown_schema",
        good: avro(1, GOOD),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_or_garbage_avro_payload_is_dead_lettered() {
    let good = avro(1, GOOD);
    let truncated = good[..good.len() - 3].to_vec();
    let mut garbage = vec![0, 0, 0, 0, 1];
    garbage.extend_from_slice(&[0xff; 12]);
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"extra");
    check(Case {
        name: "bad-avro",
        extra: avro_input(),
        unknown_partition: "fallback",
        records: vec![
            (Some(b"S001"), truncated),
            (Some(b"S001"), garbage),
            (Some(b"S001"), trailing),
            (Some(b"S001"), vec![0, 0, 0]),
        ],
        kind: "invalid_avro",
        good,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_magic_byte_is_dead_lettered() {
    let mut wrong = avro(1, GOOD);
    wrong[0] = 1;
    check(Case {
        name: "wrong-magic",
        extra: avro_input(),
        unknown_partition: "fallback",
        records: vec![
            (Some(b"S001"), wrong),
            (Some(b"S001"), GOOD.as_bytes().to_vec()),
        ],
        kind: "wrong_magic_byte",
        good: avro(1, GOOD),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_partition_is_dead_lettered_when_configured() {
    let mut case = json_case(
        "unknown-partition",
        "unknown_partition",
        &[&GOOD.replace("S001", "NEW-STORE")],
    );
    case.unknown_partition = "dlq";
    case.records[0].0 = Some(b"NEW-STORE");
    check(case).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_schema_that_does_not_resolve_is_dead_lettered() {
    // Schema id 2: price as a string, which does not promote to the reader's double.
    let dir = tempfile::tempdir().unwrap();
    let v2 = dir.path().join("v2.avsc");
    std::fs::write(
        &v2,
        manymodel::codec::SALES_EVENT_AVSC.replace(
            r#"{"name": "price", "type": "double"}"#,
            r#"{"name": "price", "type": "string"}"#,
        ),
    )
    .unwrap();
    let mut extra = avro_input();
    extra.push_str(&format!("2 = \"{}\"\n", v2.display()));
    let mut bad = vec![0, 0, 0, 0, 2];
    bad.extend_from_slice(&avro(1, GOOD)[5..]);
    check(Case {
        name: "incompatible",
        extra,
        unknown_partition: "fallback",
        records: vec![(Some(b"S001"), bad)],
        kind: "incompatible_schema",
        good: avro(1, GOOD),
    })
    .await;
}

/// README's snippet for replaying dead letters, run as it is written there (with `B`, the
/// dead-letter topic and the target topic filled in): it copies back exactly the
/// `unknown_partition` dead letters, with their keys, values and own headers, and stops at the
/// end it saw when it started.
#[tokio::test(flavor = "multi_thread")]
async fn the_readmes_replay_snippet_copies_back_the_unknown_partition_dead_letters() {
    let python = common::python_with("confluent_kafka", &["confluent-kafka"]);
    let broker = Broker::shared();
    let (input, output, dlq, replayed) = ("in-replay", "out-replay", "dlq-replay", "replayed");
    for (topic, partitions) in [(input, 1), (output, 1), (dlq, 2), (replayed, 1)] {
        broker.create_topic(topic, partitions);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "replay",
        &broker.brokers(),
        (input, output, dlq),
        bundle(),
        "dlq",
    );
    let mut daemon = Daemon::start(&config);
    daemon.wait_assigned();
    let unknown = |store: &str| {
        let value = GOOD.replace("S001", store).into_bytes();
        (Some(store.as_bytes().to_vec()), value)
    };
    let records = vec![
        unknown("NEW-1"),
        (Some(b"S001".to_vec()), b"{not json".to_vec()),
        unknown("NEW-2"),
        (Some(b"S001".to_vec()), GOOD.as_bytes().to_vec()),
    ];
    // confluent-kafka's Python client raises on a header name that is not UTF-8.
    let sent: headers::HeaderList = headers::producer_headers()
        .into_iter()
        .filter(|(name, _)| std::str::from_utf8(name).is_ok())
        .collect();
    headers::produce(&broker.brokers(), input, &records, &sent);
    let dead = local::read(&broker.brokers(), dlq, 3, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(dead.len(), 3, "{}", daemon.log_text());
    assert!(daemon.terminate().success());

    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("```python\nfrom confluent_kafka import OFFSET_BEGINNING")
        .expect("the replay snippet in README.md")
        + "```python\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let snippet = readme[start..end]
        .replace("\"sales-dlq\"", &format!("{dlq:?}"))
        .replace("\"sales\"", &format!("{replayed:?}"));
    let script = format!("B = {:?}\n{snippet}", broker.brokers());
    let status = std::process::Command::new(&python)
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "the snippet failed:\n{script}");

    let copied = local::read(&broker.brokers(), replayed, 3, Duration::from_secs(10))
        .await
        .unwrap();
    let mut got: Vec<_> = copied
        .iter()
        .map(|r| (r.key.clone(), r.value.clone()))
        .collect();
    got.sort();
    assert_eq!(got, vec![unknown("NEW-1"), unknown("NEW-2")]);
    let own: Vec<_> = sent
        .iter()
        .filter(|(k, _)| k != b"error-kind")
        .cloned()
        .collect();
    for list in headers::read(&broker.brokers(), replayed, 2, Duration::from_secs(10)) {
        assert_eq!(list, own, "the records' own headers, without manymodel's");
    }
}
