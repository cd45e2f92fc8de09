//! Avro through the daemon against Apache Kafka: records in every framing, written with older and
//! newer writer schemas, score exactly like their JSON twins scored by offline `predict`;
//! writer schemas come from a schema registry (a stub here) or a local table; a registry
//! outage holds records back instead of dead-lettering them; and `predict --format avro`
//! reads container files.
//!
//! One broker serves the whole binary; every test has topics of its own.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use apache_avro::types::Value as A;
use apache_avro::Schema;
use common::{generate_and_train, headers, run_ok, write_config, Broker, Daemon};
use manymodel::codec::{avro_twin, SALES_EVENT_AVSC};
use manymodel::local;
use serde_json::{json, Value};

/// An older writer: fields in another order, `ts` a plain long, `event_id` a plain string,
/// an extra `cashier`, no `expected_sales` (the reader's default fills it).
const OLDER: &str = r#"{"type":"record","name":"SalesEvent","namespace":"manymodel","fields":[
    {"name":"store_id","type":"string"},
    {"name":"cashier","type":"string"},
    {"name":"price","type":"double"},
    {"name":"ts","type":"long"},
    {"name":"promo","type":"boolean"},
    {"name":"temperature","type":"double"},
    {"name":"weather","type":"string"},
    {"name":"event_id","type":"string"}]}"#;

/// A newer writer: `store_id` as bytes (promoted to string), added enum, array and map
/// fields the reader skips.
const NEWER: &str = r#"{"type":"record","name":"SalesEvent","namespace":"manymodel","fields":[
    {"name":"event_id","type":["null","string"],"default":null},
    {"name":"store_id","type":"bytes"},
    {"name":"channel","type":{"type":"enum","name":"Channel","symbols":["web","shop"]}},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"basket","type":{"type":"array","items":"string"}},
    {"name":"price","type":"double"},
    {"name":"promo","type":"boolean"},
    {"name":"temperature","type":"double"},
    {"name":"weather","type":"string"},
    {"name":"expected_sales","type":["null","double"],"default":null}]}"#;

/// Generated events, their bundle, and offline JSON predictions by event id.
struct Data {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    events: Vec<Value>,
    /// event_id → (prediction, model, store_id) from `predict --format json`; the prediction
    /// as the JSON text, compared as text, because serde_json's default float parser may
    /// land one ULP off while its writer prints the shortest exact form.
    expected: HashMap<String, (String, String, String)>,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bundle = generate_and_train(dir.path(), 4, 30, "v-avro");
        let events_path = dir.path().join("events.jsonl");
        let mut events: Vec<Value> = std::fs::read_to_string(&events_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // One store the bundle does not know: scored by the fallback in both formats.
        events[3]["store_id"] = json!("S999");
        let text: String = events.iter().map(|e| format!("{e}\n")).collect();
        std::fs::write(&events_path, text).unwrap();
        let out = dir.path().join("expected.jsonl");
        run_ok(&[
            "predict",
            "--bundle",
            bundle.to_str().unwrap(),
            "--input",
            events_path.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        let expected = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| {
                let p: Value = serde_json::from_str(l).unwrap();
                let text = l.split("\"prediction\":").nth(1).unwrap();
                let text = text.split(',').next().unwrap().to_owned();
                (
                    p["event_id"].as_str().unwrap().to_owned(),
                    (
                        text,
                        p["model"].as_str().unwrap().to_owned(),
                        p["store_id"].as_str().unwrap().to_owned(),
                    ),
                )
            })
            .collect();
        Data {
            _dir: dir,
            bundle,
            events,
            expected,
        }
    })
}

/// The event with the extra fields newer and older writers carry.
fn widened(e: &Value) -> Value {
    let mut e = e.clone();
    e["cashier"] = json!("ann");
    e["channel"] = json!("web");
    e["basket"] = json!(["bread", "milk"]);
    e
}

fn datum(schema: &str, event: &Value) -> Vec<u8> {
    avro_twin(&Schema::parse_str(schema).unwrap(), &widened(event)).unwrap()
}

fn confluent(id: u32, schema: &str, event: &Value) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(datum(schema, event));
    out
}

fn single_object(schema: &str, event: &Value) -> Vec<u8> {
    let s = Schema::parse_str(schema).unwrap();
    let fp = s.fingerprint::<apache_avro::rabin::Rabin>();
    let mut out = vec![0xC3, 0x01];
    out.extend_from_slice(&fp.bytes);
    out.extend(datum(schema, event));
    out
}

/// A schema registry stub: serves `GET /schemas/ids/{id}` from `schemas` (404 otherwise, 503
/// while `up` is false) and answers every `POST .../versions` with id 42.
struct Registry {
    url: String,
    up: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
}

fn registry(schemas: HashMap<u32, &'static str>) -> Registry {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let up = Arc::new(AtomicBool::new(true));
    let asked = Arc::new(AtomicUsize::new(0));
    let (up2, asked2) = (up.clone(), asked.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (status, answer) = if !up2.load(Ordering::SeqCst) {
                ("503 Service Unavailable", json!({"error_code": 50301}))
            } else if request.starts_with("POST") {
                ("200 OK", json!({"id": 42}))
            } else {
                asked2.fetch_add(1, Ordering::SeqCst);
                let id = path
                    .strip_prefix("/schemas/ids/")
                    .and_then(|i| i.parse::<u32>().ok());
                match id.and_then(|i| schemas.get(&i)) {
                    Some(s) => ("200 OK", json!({ "schema": s })),
                    None => (
                        "404 Not Found",
                        json!({"error_code": 40403, "message": "Schema not found"}),
                    ),
                }
            };
            let body = answer.to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Registry { url, up, asked }
}

/// Topics `in-NAME`, `out-NAME`, `dlq-NAME` and a daemon reading them with `extra` config.
fn daemon(name: &str, extra: &str, dir: &Path) -> (Daemon, [String; 3]) {
    let broker = Broker::shared();
    let topics = [
        format!("in-{name}"),
        format!("out-{name}"),
        format!("dlq-{name}"),
    ];
    for t in &topics {
        broker.create_topic(t, 2);
    }
    let config = write_config(
        dir,
        name,
        &broker.brokers(),
        (&topics[0], &topics[1], &topics[2]),
        &data().bundle,
        "fallback",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(extra);
    std::fs::write(&config, text).unwrap();
    let mut d = Daemon::start(&config);
    d.wait_assigned();
    (d, topics)
}

async fn produce(topic: &str, records: Vec<Vec<u8>>) {
    let brokers = Broker::shared().brokers();
    let topic = topic.to_owned();
    let keys: Vec<String> = data()
        .events
        .iter()
        .map(|e| e["store_id"].as_str().unwrap().to_owned())
        .collect();
    tokio::task::spawn_blocking(move || {
        for (value, key) in records.iter().zip(keys.iter().cycle()) {
            let key = key.as_bytes().to_vec();
            local::produce(
                &brokers,
                &topic,
                std::slice::from_ref(value),
                |_| Some(key.clone()),
                None,
            )
            .unwrap();
        }
    })
    .await
    .unwrap();
}

/// Reads every prediction of `topic`, decoding Avro predictions of the shipped schema after a
/// header of `header` bytes, and checks each equals the JSON twin's.
async fn assert_like_json_twins(topic: &str, header: usize, daemon: &Daemon) {
    let want = &data().expected;
    let out = local::read(
        &Broker::shared().brokers(),
        topic,
        want.len(),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    assert_eq!(out.len(), want.len(), "{}", daemon.log_text());
    let schema = Schema::parse_str(manymodel::codec::PREDICTION_AVSC).unwrap();
    for r in &out {
        let v = apache_avro::from_avro_datum(&schema, &mut &r.value[header..], None).unwrap();
        let A::Record(fields) = v else {
            panic!("{v:?}")
        };
        let f: HashMap<String, A> = fields.into_iter().collect();
        let A::Union(_, id) = &f["event_id"] else {
            panic!()
        };
        let A::String(id) = id.as_ref() else { panic!() };
        let (prediction, model, store) = &want[id];
        let A::Double(p) = f["prediction"] else {
            panic!()
        };
        assert_eq!(&json!(p).to_string(), prediction, "event {id}");
        assert_eq!(f["store_id"], A::String(store.clone()));
        let A::Enum(_, m) = &f["model"] else { panic!() };
        assert_eq!(m, model);
        assert_eq!(r.key.as_deref(), Some(store.as_bytes()));
        assert_eq!(r.headers["model-version"], "v-avro");
        assert_eq!(f["model_version"], A::String("v-avro".into()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn confluent_records_of_three_writer_versions_from_a_registry_score_like_their_json_twins() {
    let reg = registry(HashMap::from([
        (1, SALES_EVENT_AVSC),
        (2, OLDER),
        (3, NEWER),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[input]\nformat = \"avro\"\nframing = \"confluent\"\nregistry_url = \"{0}\"\n[output]\nformat = \"avro\"\nframing = \"confluent\"\nregistry_url = \"{0}\"\n",
        reg.url
    );
    let (d, [input, output, dlq]) = daemon("registry", &extra, dir.path());
    let records = data()
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| match i % 3 {
            0 => confluent(1, SALES_EVENT_AVSC, e),
            1 => confluent(2, OLDER, e),
            _ => confluent(3, NEWER, e),
        })
        .collect();
    produce(&input, records).await;
    assert_like_json_twins(&output, 5, &d).await;
    let out = local::read(
        &Broker::shared().brokers(),
        &output,
        1,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(
        &out[0].value[..5],
        &[0, 0, 0, 0, 42],
        "the registered prediction schema id"
    );
    assert!(
        reg.asked.load(Ordering::SeqCst) <= 6,
        "each writer schema is fetched once per instance, not per record"
    );
    // An id the registry does not have is a dead letter, which keeps the record's own
    // headers although the record waited for the registry's answer.
    let sent = headers::producer_headers();
    let record = (
        Some(b"S001".to_vec()),
        confluent(77, SALES_EVENT_AVSC, &data().events[0]),
    );
    let brokers = Broker::shared().brokers();
    headers::produce(&brokers, &input, &[record], &sent);
    let dead = local::read(
        &Broker::shared().brokers(),
        &dlq,
        1,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(dead[0].headers["error-kind"], "unknown_schema");
    assert!(dead[0].headers["error-message"].contains("77"));
    let lists = headers::read(&brokers, &dlq, 1, Duration::from_secs(30));
    let names: Vec<Vec<u8>> = lists[0].iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(names, headers::expected_dead_letter_names(&sent));
    assert_eq!(lists[0][..6], sent[..6], "the input's headers, in order");
    assert!(d.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_outage_holds_records_back_instead_of_dead_lettering_them() {
    let reg = registry(HashMap::from([(1, SALES_EVENT_AVSC)]));
    reg.up.store(false, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[input]\nformat = \"avro\"\nregistry_url = \"{}\"\n",
        reg.url
    );
    let (d, [input, output, dlq]) = daemon("outage", &extra, dir.path());
    let records = data()
        .events
        .iter()
        .map(|e| confluent(1, SALES_EVENT_AVSC, e))
        .collect();
    produce(&input, records).await;
    // The daemon waits on the registry: nothing is scored and nothing dead-lettered.
    let early = local::read(
        &Broker::shared().brokers(),
        &output,
        1,
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert!(early.is_empty());
    assert!(
        d.log_text().contains("schema registry unavailable"),
        "{}",
        d.log_text()
    );
    reg.up.store(true, Ordering::SeqCst);
    let want = data().expected.len();
    let out = local::read(
        &Broker::shared().brokers(),
        &output,
        want,
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    assert_eq!(
        out.len(),
        want,
        "every record scored once the registry is back"
    );
    let dead = local::read(&Broker::shared().brokers(), &dlq, 1, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        dead.is_empty(),
        "no dead letters: {:?}",
        dead.first().map(|r| &r.headers)
    );
    assert!(d.terminate().success());
}

/// The daemon's resident memory in KiB, from `/proc`.
fn rss_kib(d: &Daemon) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", d.child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The bound on ids the registry does not have that the daemon keeps (`schema_cache.rs`).
const MAX_UNKNOWN_IDS: f64 = 10_000.0;
/// The bound on records set aside for their writer schema (`awaiting.rs`).
const MAX_AWAITING: f64 = 4096.0;
/// The bound on the daemon's resident memory through the flood, in KiB.
const MAX_RSS_KIB: u64 = 256 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_distinct_unknown_schema_ids_are_dead_lettered_in_bounded_memory_while_good_records_are_scored(
) {
    let reg = registry(HashMap::from([(1, SALES_EVENT_AVSC)]));
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[input]\nformat = \"avro\"\nregistry_url = \"{}\"\n",
        reg.url
    );
    let (d, [input, output, dlq]) = daemon("random-ids", &extra, dir.path());
    let good = &data().events;
    const BAD: usize = 100_000;
    let every = BAD / good.len();
    // Distinct random ids, none of them 1 (xorshift: reproducible, no two alike in a run).
    let mut seen = std::collections::HashSet::from([1u32]);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut records = Vec::with_capacity(BAD + good.len());
    let mut g = good.iter();
    for i in 0..BAD {
        let id = loop {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = x as u32;
            if seen.insert(id) {
                break id;
            }
        };
        records.push(confluent(id, SALES_EVENT_AVSC, &good[i % good.len()]));
        if i % every == every / 2 {
            if let Some(e) = g.next() {
                records.push(confluent(1, SALES_EVENT_AVSC, e));
            }
        }
    }
    for e in g {
        records.push(confluent(1, SALES_EVENT_AVSC, e));
    }
    let (brokers, topic) = (Broker::shared().brokers(), input.clone());
    tokio::task::spawn_blocking(move || {
        local::produce(&brokers, &topic, &records, |_| Some(b"S001".to_vec()), None).unwrap()
    })
    .await
    .unwrap();

    let addr = d.metrics_addr();
    let dead = "manymodel_events_dead_lettered_total{reason=\"unknown_schema\"}";
    let (mut peak_unknown, mut peak_awaiting, mut peak_rss) = (0.0f64, 0.0f64, 0u64);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let (_, body) = common::http_get(&addr, "/metrics");
        let unknown = common::metric_sum(&body, "manymodel_schema_cache_entries{kind=\"unknown\"}");
        peak_unknown = peak_unknown.max(unknown);
        peak_awaiting = peak_awaiting.max(common::metric_sum(
            &body,
            "manymodel_records_awaiting_schema",
        ));
        peak_rss = peak_rss.max(rss_kib(&d));
        if common::metric_sum(&body, dead) >= BAD as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {BAD} dead-lettered; {}",
            common::metric_sum(&body, dead),
            d.log_text()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scored = local::read(
        &Broker::shared().brokers(),
        &output,
        good.len(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(scored.len(), good.len(), "every good record is scored");
    let sample = local::read(
        &Broker::shared().brokers(),
        &dlq,
        10,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(sample
        .iter()
        .all(|r| r.headers["error-kind"] == "unknown_schema"));
    eprintln!(
        "{BAD} distinct unknown ids: peak unknown-id cache {peak_unknown}, peak records awaiting {peak_awaiting}, peak RSS {} MiB, registry asked {} times",
        peak_rss / 1024,
        reg.asked.load(Ordering::SeqCst)
    );
    assert!(peak_unknown <= MAX_UNKNOWN_IDS, "{peak_unknown}");
    assert!(peak_awaiting <= MAX_AWAITING, "{peak_awaiting}");
    assert!(peak_rss <= MAX_RSS_KIB, "{peak_rss} KiB");
    assert!(d.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn single_object_records_of_two_writers_from_a_local_table_score_like_their_json_twins() {
    let dir = tempfile::tempdir().unwrap();
    let older = dir.path().join("older.avsc");
    std::fs::write(&older, OLDER).unwrap();
    let extra = format!(
        "[input]\nformat = \"avro\"\nframing = \"single_object\"\n[input.schemas]\n2 = \"{}\"\n[output]\nformat = \"avro\"\nframing = \"single_object\"\n",
        older.display()
    );
    let (d, [input, output, _]) = daemon("single", &extra, dir.path());
    let records = data()
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| single_object(if i % 2 == 0 { SALES_EVENT_AVSC } else { OLDER }, e))
        .collect();
    produce(&input, records).await;
    assert_like_json_twins(&output, 10, &d).await;
    assert!(d.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_records_score_like_their_json_twins_and_json_output_keeps_its_shape() {
    let dir = tempfile::tempdir().unwrap();
    let extra = "[input]\nformat = \"avro\"\nframing = \"raw\"\n";
    let (d, [input, output, _]) = daemon("raw", extra, dir.path());
    let records = data()
        .events
        .iter()
        .map(|e| datum(SALES_EVENT_AVSC, e))
        .collect();
    produce(&input, records).await;
    let want = &data().expected;
    let out = local::read(
        &Broker::shared().brokers(),
        &output,
        want.len(),
        Duration::from_secs(90),
    )
    .await
    .unwrap();
    assert_eq!(out.len(), want.len(), "{}", d.log_text());
    for r in &out {
        let p: Value = serde_json::from_slice(&r.value).unwrap();
        let (prediction, model, store) = &want[p["event_id"].as_str().unwrap()];
        let text = std::str::from_utf8(&r.value).unwrap();
        assert!(
            text.contains(&format!("\"prediction\":{prediction},")),
            "{text}"
        );
        assert_eq!(p["model"], json!(model));
        assert_eq!(p["store_id"], json!(store));
    }
    assert!(d.terminate().success());
}

#[test]
fn predict_reads_an_avro_container_file_resolving_an_older_writer_like_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let older = Schema::parse_str(OLDER).unwrap();
    let mut w = apache_avro::Writer::with_codec(
        &older,
        Vec::new(),
        apache_avro::Codec::Deflate(Default::default()),
    );
    for e in &data().events {
        let bytes = datum(OLDER, e);
        let v = apache_avro::from_avro_datum(&older, &mut &bytes[..], None).unwrap();
        w.append(v).unwrap();
    }
    let input = dir.path().join("events.avro");
    std::fs::write(&input, w.into_inner().unwrap()).unwrap();
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/sales_event.avsc");
    let output = dir.path().join("predictions.avro");
    let printed = run_ok(&[
        "predict",
        "--format",
        "avro",
        "--schema",
        reader.to_str().unwrap(),
        "--bundle",
        data().bundle.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(
        printed.contains("0 lines rejected") || printed.contains("0 records rejected"),
        "{printed}"
    );
    let file = std::fs::read(&output).unwrap();
    let mut seen = 0;
    for v in apache_avro::Reader::new(&file[..]).unwrap() {
        let A::Record(fields) = v.unwrap() else {
            panic!()
        };
        let f: HashMap<String, A> = fields.into_iter().collect();
        let A::Union(_, id) = &f["event_id"] else {
            panic!()
        };
        let A::String(id) = id.as_ref() else { panic!() };
        let A::Double(p) = f["prediction"] else {
            panic!()
        };
        assert_eq!(json!(p).to_string(), data().expected[id].0);
        seen += 1;
    }
    assert_eq!(seen, data().expected.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_whose_columns_the_reader_schema_lacks_is_refused_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let narrow = dir.path().join("narrow.avsc");
    let text = SALES_EVENT_AVSC.replace(
        r#"{"name": "weather", "type": "string", "doc": "A category: sunny, cloudy or rainy."},"#,
        "",
    );
    assert!(!text.contains("weather\""));
    std::fs::write(&narrow, text).unwrap();
    let broker = Broker::shared();
    let input = format!(
        "[input]\nformat = \"avro\"\nschema = \"{}\"\n[input.schemas]\n1 = \"{0}\"\n",
        narrow.display()
    );

    // A local bundle: serve refuses to start, naming the column.
    for t in ["in-narrow", "out-narrow", "dlq-narrow", "control-narrow"] {
        broker.create_topic(t, 1);
    }
    let config = write_config(
        dir.path(),
        "narrow",
        &broker.brokers(),
        ("in-narrow", "out-narrow", "dlq-narrow"),
        &data().bundle,
        "fallback",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&input);
    std::fs::write(&config, &text).unwrap();
    let out = common::manymodel()
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"weather\""), "{stderr}");

    // From the control topic: rejected with reason "format", nothing swapped in.
    let text = text
        .replace(&format!("bundle = \"{}\"\n", data().bundle.display()), "")
        .replace(
            "commit_interval_ms = 200\n",
            "commit_interval_ms = 200\ncontrol_topic = \"control-narrow\"\n",
        );
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start(&config);
    let addr = d.metrics_addr();
    run_ok(&[
        "publish",
        "--bundle",
        data().bundle.to_str().unwrap(),
        "--brokers",
        &broker.brokers(),
        "--control-topic",
        "control-narrow",
    ]);
    let series = "manymodel_bundle_rejections_total{reason=\"format\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = common::http_get(&addr, "/metrics");
        if common::metric_sum(&body, series) >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series}:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.log_text().contains("weather"), "{}", d.log_text());
    assert!(d.terminate().success());
}

#[test]
fn bench_with_avro_input_runs_end_to_end() {
    let out = run_ok(&[
        "bench",
        "--format",
        "avro",
        "--events",
        "2000",
        "--stores",
        "10",
        "--latency-rate",
        "200",
    ]);
    assert!(out.contains("Avro (Confluent framing) events"), "{out}");
    assert!(
        common::bench_rate(&out, "scoring") > 0.0,
        "every Avro event scored: {out}"
    );
}
