//! Hostile control records, fed straight into the reader's state (no broker): whatever an
//! attacker with write access to the control topic sends, the daemon never panics, holds no
//! more pending chunk bytes than `max_bundle_bytes` plus a small allowance, and keeps serving
//! the bundle a trusted key signed.
//!
//! `PROPTEST_CASES` sets how many generated sequences run (default 256).
//!
//! The same records written to a real control topic (Apache Kafka) against a running daemon:
//! it stays ready, scores with its signed bundle, counts each rejection by reason, stays within
//! a stated memory bound, and a restart that replays the topic comes up on the same bundle.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_get, metric_sum, run_ok, Broker, Daemon, ServeConfigFile};

use manymodel::codec::FormatCheck;
use manymodel::control::admission::Admission;
use manymodel::control::assembly::{sha256_hex, Assembler};
use manymodel::control::message::{CHUNK_HEADER, KIND_HEADER, PUBLISH_HEADER};
use manymodel::control::rejection::Reason;
use manymodel::control::signing::{keygen, BundleSigner, TrustedKeys};
use manymodel::control::state::{ControlState, Outcome};
use manymodel::model::bundle::{Bundle, PartitionModel, FALLBACK_ID};
use manymodel::model::linear::LinearModel;
use manymodel::model::Model;
use manymodel::spec::TrainSpec;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// `[model] max_bundle_bytes` in these tests.
const MAX: usize = 64 * 1024;

/// A record as the reader sees it: key, headers, payload.
#[derive(Debug, Clone)]
struct Record {
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    payload: Option<Vec<u8>>,
}

impl Record {
    fn chunk(publish_id: &str, index: &str, bytes: Vec<u8>) -> Self {
        Record {
            key: Some(b"v".to_vec()),
            headers: vec![
                (KIND_HEADER.into(), b"chunk".to_vec()),
                (PUBLISH_HEADER.into(), publish_id.as_bytes().to_vec()),
                (CHUNK_HEADER.into(), index.as_bytes().to_vec()),
            ],
            payload: Some(bytes),
        }
    }

    fn message(value: &Value) -> Self {
        Record {
            key: None,
            headers: Vec::new(),
            payload: Some(value.to_string().into_bytes()),
        }
    }
}

fn feed(state: &mut ControlState, r: &Record) -> Outcome {
    let header = |name: &str| {
        r.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    };
    state.record(r.key.as_deref(), header, r.payload.as_deref())
}

/// The genuine bundle: its file bytes, and its manifest fields signed by the trusted key.
struct Genuine {
    bytes: Vec<u8>,
    sha256: String,
    signature: String,
    signer: BundleSigner,
    _keys: tempfile::TempDir,
}

fn genuine() -> Genuine {
    let spec = TrainSpec::parse(
        r#"
        partition_column = "store_id"
        target = "sales"
        [[features]]
        column = "price"
        kind = "numeric"
        "#,
    )
    .expect("spec");
    let model = |id: &str, b: f64| PartitionModel {
        partition: id.into(),
        rows: 10,
        rmse: 1.0,
        model: Model::Linear(LinearModel {
            intercept: b,
            coefficients: vec![2.0].into(),
        }),
    };
    let bundle = Bundle::new(
        "genuine".into(),
        None,
        1,
        spec,
        20,
        0,
        model(FALLBACK_ID, 1.0),
        vec![model("A", 3.0)],
    )
    .expect("bundle");
    let bytes = bundle.to_avro().expect("avro");
    assert!(bytes.len() < MAX / 4, "the genuine bundle fits the limit");
    let keys = tempfile::tempdir().expect("temp dir");
    let (secret, _) = keygen(&keys.path().join("k")).expect("key");
    let signer = BundleSigner::load(&secret).expect("key loads");
    let sha256 = sha256_hex(&bytes);
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&sha256, &mut digest).expect("hex");
    let signature = signer.sign(&digest);
    Genuine {
        bytes,
        sha256,
        signature,
        signer,
        _keys: keys,
    }
}

/// A state with `trusted_keys` set (or not) that has the genuine bundle active.
fn serving(g: &Genuine, trusted: bool) -> (ControlState, Arc<Bundle>) {
    let keys = if trusted {
        TrustedKeys::load(&[g.signer.public_hex()], std::path::Path::new("/")).expect("keys")
    } else {
        TrustedKeys::default()
    };
    let admission = Admission {
        max_bundle_bytes: MAX,
        trusted: keys,
    };
    let mut state = ControlState::new(admission, FormatCheck::default(), 4);
    let chunks: Vec<&[u8]> = g.bytes.chunks(1024).collect();
    for (i, c) in chunks.iter().enumerate() {
        let out = feed(
            &mut state,
            &Record::chunk("genuine-1", &i.to_string(), c.to_vec()),
        );
        assert!(matches!(out, Outcome::Chunk { .. }), "{out:?}");
    }
    let manifest = json!({
        "kind": "manifest", "publish_id": "genuine-1", "version": "genuine",
        "size": g.bytes.len(), "chunks": chunks.len(), "sha256": g.sha256,
        "signature": g.signature, "signer": g.signer.public_hex(),
    });
    let Outcome::Activated(active) = feed(&mut state, &Record::message(&manifest)) else {
        panic!("the genuine bundle activates");
    };
    assert_eq!(state.pending_bytes(), 0);
    (state, active)
}

fn reason(out: Outcome) -> Reason {
    match out {
        Outcome::Rejected { rejection, .. } => rejection.reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn the_hostile_records_of_issue_16_are_refused_at_once_and_the_signed_bundle_stays_active() {
    let g = genuine();
    for trusted in [true, false] {
        let (mut state, active) = serving(&g, trusted);
        let manifest = |size: Value, chunks: Option<Value>| {
            let mut m = json!({
                "kind": "manifest", "publish_id": "evil", "version": "evil",
                "size": size, "sha256": "00".repeat(32),
            });
            if let (Some(c), Value::Object(o)) = (chunks, &mut m) {
                o.insert("chunks".into(), c);
            }
            Record::message(&m)
        };
        let started = Instant::now();
        let expect = |r: Reason| if trusted { Reason::Unsigned } else { r };
        let out = feed(&mut state, &manifest(json!(10), Some(json!(u32::MAX))));
        assert_eq!(reason(out), expect(Reason::Implausible));
        let out = feed(&mut state, &manifest(json!(1u64 << 62), Some(json!(1))));
        assert_eq!(reason(out), expect(Reason::Oversize));
        let out = feed(&mut state, &manifest(json!(10), Some(json!(-1))));
        assert_eq!(reason(out), Reason::Garbage);
        let out = feed(&mut state, &manifest(json!(10), None));
        assert_eq!(reason(out), Reason::Garbage);
        let out = feed(&mut state, &Record::message(&json!("garbage")));
        assert_eq!(reason(out), Reason::Garbage);
        // A forged signature over the claimed digest.
        let mut forged = json!({
            "kind": "manifest", "publish_id": "evil", "version": "evil", "size": 10,
            "chunks": u32::MAX, "sha256": g.sha256, "signature": "11".repeat(64),
        });
        let out = feed(&mut state, &Record::message(&forged));
        assert_eq!(
            reason(out),
            if trusted {
                Reason::Signature
            } else {
                Reason::Implausible
            }
        );
        // The genuine signature replayed with other claims: the chunks must still hash to it.
        forged["signature"] = json!(g.signature);
        forged["chunks"] = json!(3);
        assert_eq!(
            reason(feed(&mut state, &Record::message(&forged))),
            Reason::Incomplete
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "O(1) rejections"
        );

        // 20 publishes that never send a manifest, 4 MiB each: the budget holds.
        for p in 0..20 {
            for i in 0..64 {
                let out = feed(
                    &mut state,
                    &Record::chunk(&format!("flood-{p}"), &i.to_string(), vec![7; 64 * 1024]),
                );
                assert!(!matches!(out, Outcome::Rejected { .. }), "{out:?}");
                assert!(state.pending_bytes() <= Assembler::budget(MAX));
            }
        }
        let out = feed(&mut state, &Record::chunk("flood", "4294967295", vec![1]));
        assert_eq!(reason(out), Reason::Implausible);
        let out = feed(&mut state, &Record::chunk("flood", "-1", vec![1]));
        assert_eq!(reason(out), Reason::Garbage);
        let still = state.versions().active().expect("still active");
        assert!(Arc::ptr_eq(still, &active));
    }
}

/// One record an attacker may send.
fn hostile_record(g_sha256: String, g_signature: String) -> impl Strategy<Value = Record> {
    let publish_id = prop_oneof![
        Just("genuine-1".to_owned()),
        Just("evil".to_owned()),
        "[a-z0-9-]{0,12}",
        ".{0,300}",
    ];
    let index = prop_oneof![
        (0u32..40).prop_map(|i| i.to_string()),
        any::<u32>().prop_map(|i| i.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        ".{0,12}",
    ];
    let chunk_len = prop_oneof![0usize..64, 0usize..4096, 0usize..=2 * MAX];
    let number = prop_oneof![
        (0u64..64).prop_map(Value::from),
        (0u64..=2 * MAX as u64).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::from(u32::MAX)),
        Just(Value::from(1u64 << 62)),
        any::<f64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
        Just(Value::Null),
    ];
    let text = prop_oneof![
        Just("genuine".to_owned()),
        Just("evil".to_owned()),
        ".{0,20}",
        ".{0,400}",
    ];
    let sha = prop_oneof![
        Just(g_sha256),
        proptest::collection::vec(any::<u8>(), 32).prop_map(hex::encode),
        ".{0,70}",
    ];
    let signature = prop_oneof![
        Just(None),
        Just(Some(g_signature)),
        proptest::collection::vec(any::<u8>(), 64).prop_map(|b| Some(hex::encode(b))),
        ".{0,200}".prop_map(Some),
    ];
    // Each field present or not: absent counts and sizes too.
    let manifest = (
        (
            proptest::option::of(publish_id.clone()),
            proptest::option::of(text.clone()),
            proptest::option::of(text.clone()),
        ),
        (
            proptest::option::of(number.clone()),
            proptest::option::of(number),
        ),
        (proptest::option::of(sha), signature, any::<Option<bool>>()),
    )
        .prop_map(
            |((publish_id, version, base), (size, chunks), (sha, signature, activate))| {
                let mut m = Map::new();
                m.insert("kind".into(), json!("manifest"));
                let mut put = |k: &str, v: Option<Value>| {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                };
                put("publish_id", publish_id.map(Value::from));
                put("version", version.map(Value::from));
                put("base_version", base.map(Value::from));
                put("size", size);
                put("chunks", chunks);
                put("sha256", sha.map(Value::from));
                put("signature", signature.map(Value::from));
                put("activate", activate.map(Value::from));
                Record::message(&Value::Object(m))
            },
        );
    let chunk = (publish_id, index, chunk_len, any::<u8>(), any::<bool>()).prop_map(
        |(id, index, len, byte, with_kind)| {
            let mut r = Record::chunk(&id, &index, vec![byte; len]);
            if !with_kind {
                r.headers.remove(0);
            }
            r
        },
    );
    let command = prop_oneof![
        text.prop_map(|v| Record::message(&json!({"kind": "activate", "version": v}))),
        Just(Record::message(&json!({"kind": "rollback"}))),
        ".{0,40}".prop_map(|k| Record::message(&json!({"kind": k}))),
    ];
    let garbage = (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        proptest::collection::vec(
            (
                prop_oneof![
                    Just(KIND_HEADER.to_owned()),
                    Just(PUBLISH_HEADER.to_owned()),
                    Just(CHUNK_HEADER.to_owned()),
                    ".{0,8}"
                ],
                proptest::collection::vec(any::<u8>(), 0..16),
            ),
            0..4,
        ),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
    )
        .prop_map(|(key, headers, payload)| Record {
            key,
            headers,
            payload,
        });
    prop_oneof![4 => chunk, 4 => manifest, 2 => command, 1 => garbage]
}

proptest! {
    #![proptest_config(ProptestConfig {
        // The flood of a case may be large; shrinking keeps the smallest one that fails.
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_sequence_of_hostile_records_panics_outgrows_the_budget_or_moves_the_signed_bundle(
        trusted in any::<bool>(),
        records in {
            let g = GENUINE.with(|g| (g.sha256.clone(), g.signature.clone()));
            proptest::collection::vec(hostile_record(g.0, g.1), 0..60)
        },
    ) {
        GENUINE.with(|g| -> Result<(), TestCaseError> {
            let (mut state, active) = serving(g, trusted);
            for r in &records {
                if let Outcome::Rejected { rejection, version } = feed(&mut state, r) {
                    prop_assert!(rejection.detail.len() <= 600, "{}", rejection.detail.len());
                    prop_assert!(version.is_none_or(|v| v.len() <= 64));
                }
                prop_assert!(
                    state.pending_bytes() <= Assembler::budget(MAX),
                    "{} pending, budget {}",
                    state.pending_bytes(),
                    Assembler::budget(MAX)
                );
                let now = state.versions().active().map(|b| b.version.clone());
                prop_assert_eq!(now.as_deref(), Some("genuine"));
            }
            let still = state.versions().active().expect("active");
            prop_assert!(Arc::ptr_eq(still, &active));
            Ok(())
        })?;
    }
}

thread_local! {
    /// Made once per test thread: key generation and encoding are not what is tested.
    static GENUINE: Genuine = genuine();
}

/// Bytes of chunks the attack writes: 20 publishes of 40 MiB that never send a manifest,
/// twelve times `max_bundle_bytes`.
const FLOOD_BYTES: usize = 800 << 20;
/// `max_bundle_bytes` of the daemon under attack.
const DAEMON_MAX_BUNDLE: usize = 64 << 20;
/// The daemon's resident memory may not pass this while attacked: a small bundle, the
/// pending-chunk budget (`max_bundle_bytes` + 1/16 + 64 KiB) and librdkafka's fetch queue.
const MAX_RSS_MIB: u64 = 512;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Waits until `/readyz` names `version`.
fn wait_ready_on(daemon: &Daemon, version: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = http_get(&daemon.metrics_addr(), "/readyz");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if code == 200 && v["bundle_version"] == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not ready on {version}: {code} {body}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Events scored by the daemon, all by `version`.
async fn scores_with(brokers: &str, dir: &Path, output: &str, version: &str, n: usize) {
    let events: Vec<Vec<u8>> = std::fs::read_to_string(dir.join("events.jsonl"))
        .expect("events")
        .lines()
        .take(n)
        .map(|l| l.as_bytes().to_vec())
        .collect();
    manymodel::local::produce_events(brokers, "in", Arc::new(events), None)
        .await
        .expect("events produced");
    let out = manymodel::local::read(brokers, output, n, Duration::from_secs(60))
        .await
        .expect("predictions");
    assert_eq!(out.len(), n);
    assert!(out
        .iter()
        .all(|r| r.headers.get("model-version").map(String::as_str) == Some(version)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_attacked_on_its_control_topic_keeps_serving_its_signed_bundle_in_bounded_memory()
{
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let broker = Broker::start();
    let brokers = broker.brokers();
    for (t, n) in [
        ("in", 1),
        ("out", 1),
        ("out-2", 1),
        ("dlq", 1),
        ("control", 1),
    ] {
        broker.create_topic(t, n);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    run_ok(&[
        "generate",
        "--stores",
        "5",
        "--days",
        "14",
        "--events",
        "100",
        "--out",
        path_str(d),
    ]);
    let bundle = d.join("v1.avro");
    run_ok(&[
        "train",
        "--spec",
        path_str(&d.join("train.toml")),
        "--input",
        path_str(&d.join("history.csv")),
        "--output",
        path_str(&bundle),
        "--version",
        "v1",
    ]);
    let key = d.join("release.key");
    run_ok(&["keygen", "--out", path_str(&key)]);
    run_ok(&[
        "publish",
        "--bundle",
        path_str(&bundle),
        "--brokers",
        &brokers,
        "--control-topic",
        "control",
        "--signing-key",
        path_str(&key),
    ]);
    let config = |output: &str| {
        ServeConfigFile::new(&brokers, output)
            .topics("in", output, "dlq")
            .kafka(r#"control_topic = "control""#)
            .model(&format!("trusted_keys = [\"{}.pub\"]", key.display()))
            .model(&format!("max_bundle_bytes = {DAEMON_MAX_BUNDLE}"))
            .write(d, output)
    };
    let mut daemon = Daemon::start(&config("out"));
    wait_ready_on(&daemon, "v1", Duration::from_secs(60));
    daemon.wait_assigned();
    let (baseline_kib, _) = common::chaos::memory_kib(daemon.child.id());

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "2000000")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let send = |payload: &[u8], headers: Option<OwnedHeaders>| {
        let mut record = BaseRecord::<[u8], [u8]>::to("control")
            .partition(0)
            .payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(20));
                }
            }
        }
    };
    let sha = "00".repeat(32);
    let manifest = |claims: &str| {
        format!(
            r#"{{"kind":"manifest","publish_id":"evil","version":"evil","sha256":"{sha}",{claims}}}"#
        )
    };
    // Four billion chunks for ten bytes, and 2^62 bytes: unsigned, refused before anything.
    send(
        manifest(r#""size":10,"chunks":4294967295"#).as_bytes(),
        None,
    );
    send(
        manifest(r#""size":4611686018427387904,"chunks":1"#).as_bytes(),
        None,
    );
    // A negative and an absent chunk count, and garbage: not control records at all.
    send(manifest(r#""size":10,"chunks":-1"#).as_bytes(), None);
    send(manifest(r#""size":10"#).as_bytes(), None);
    send(b"\xff\xfe garbage {", None);
    // A header name that is not UTF-8 (rdkafka's own header accessors panic on one).
    producer.flush(Duration::from_secs(30)).expect("flushed");
    let odd_name = vec![(b"\xffkind".to_vec(), Some(b"chunk".to_vec()))];
    common::headers::produce(&brokers, "control", &[(None, b"{".to_vec())], &odd_name);
    // 20 publishes of chunks that never send a manifest.
    let chunk = vec![0x5a_u8; 512 * 1024];
    let per_publish = FLOOD_BYTES / 20 / chunk.len();
    let started = Instant::now();
    let mut peak_kib = 0;
    for p in 0..20 {
        let id = format!("flood-{p}");
        for i in 0..per_publish {
            let index = i.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: KIND_HEADER,
                    value: Some("chunk"),
                })
                .insert(Header {
                    key: PUBLISH_HEADER,
                    value: Some(id.as_str()),
                })
                .insert(Header {
                    key: CHUNK_HEADER,
                    value: Some(index.as_str()),
                });
            send(&chunk, Some(headers));
        }
        producer.flush(Duration::from_secs(60)).expect("flushed");
        peak_kib = peak_kib.max(common::chaos::memory_kib(daemon.child.id()).0);
    }
    // Let the daemon read to the end of the flood, watching its memory.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        peak_kib = peak_kib.max(common::chaos::memory_kib(daemon.child.id()).0);
        let m = http_get(&daemon.metrics_addr(), "/metrics").1;
        let counted = |reason: &str| {
            metric_sum(
                &m,
                &format!("manymodel_bundle_rejections_total{{reason=\"{reason}\"}}"),
            )
        };
        if counted("unsigned") >= 2.0
            && counted("garbage") >= 4.0
            && daemon
                .log_text()
                .matches("dropped the chunks of an unfinished publish")
                .count()
                >= 16
        {
            assert_eq!(counted("unsigned"), 2.0, "{m}");
            assert_eq!(counted("garbage"), 4.0, "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "{m}\n{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, hwm_kib) = common::chaos::memory_kib(daemon.child.id());
    eprintln!(
        "{} MiB of orphan chunks and 6 hostile records written in {:.1}s; daemon RSS {} MiB before, peak {} MiB (VmHWM {} MiB)",
        FLOOD_BYTES >> 20,
        started.elapsed().as_secs_f64(),
        baseline_kib / 1024,
        peak_kib / 1024,
        hwm_kib / 1024
    );
    assert!(hwm_kib / 1024 <= MAX_RSS_MIB, "VmHWM {hwm_kib} KiB");
    let (code, _) = http_get(&daemon.metrics_addr(), "/readyz");
    assert_eq!(code, 200);
    scores_with(&brokers, d, "out", "v1", 50).await;
    assert!(daemon.terminate().success());

    // A restart replays every record above and comes up on the same signed bundle.
    let started = Instant::now();
    let mut daemon = Daemon::start(&config("out-2"));
    wait_ready_on(&daemon, "v1", Duration::from_secs(180));
    let (_, hwm_kib) = common::chaos::memory_kib(daemon.child.id());
    eprintln!(
        "restart replaying the attacked topic: ready on v1 in {:.1}s, VmHWM {} MiB",
        started.elapsed().as_secs_f64(),
        hwm_kib / 1024
    );
    assert!(hwm_kib / 1024 <= MAX_RSS_MIB, "VmHWM {hwm_kib} KiB");
    daemon.wait_assigned();
    scores_with(&brokers, d, "out-2", "v1", 50).await;
    assert!(daemon.terminate().success());
}
