//! Hostile control records, fed straight into the reader's state (no broker): whatever an
//! attacker with write access to the control topic sends, the daemon never panics, holds no
//! more pending chunk bytes than `max_bundle_bytes` plus a small allowance, and keeps serving
//! the bundle a trusted key signed.
//!
//! `PROPTEST_CASES` sets how many generated sequences run (default 256).

use std::sync::Arc;
use std::time::{Duration, Instant};

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
            coefficients: vec![2.0],
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
