//! Property tests: arbitrary bytes never panic the JSON decoder, the Avro decoder (every
//! framing, plans with unions, arrays, maps and recursion), the container-file reader or the
//! bundle reader, and neither do good inputs with bytes flipped or cut. Each property runs
//! proptest's default 256 cases; set PROPTEST_CASES to run more (or fewer).

use apache_avro::types::Value as A;
use apache_avro::Schema;
use manymodel::codec::avro::{Plan, ReaderSchema};
use manymodel::codec::framing::{split, Framing};
use manymodel::codec::json::decode_json;
use manymodel::codec::{avro_twin, container, SALES_EVENT_AVSC};
use manymodel::features::FeatureEncoder;
use manymodel::model::bundle::Bundle;
use manymodel::spec::{FeatureKind, FeatureSpec};
use proptest::prelude::*;

fn encoder() -> FeatureEncoder {
    let f = |column: &str, kind, categories: Option<Vec<&str>>| FeatureSpec {
        column: column.into(),
        kind,
        categories: categories.map(|c| c.into_iter().map(String::from).collect()),
    };
    FeatureEncoder::new(&[
        f("price", FeatureKind::Numeric, None),
        f("promo", FeatureKind::Bool, None),
        f("weather", FeatureKind::OneHot, Some(vec!["sunny", "rainy"])),
        f("ts", FeatureKind::HourOfDay, None),
        f("ts", FeatureKind::Month, None),
        f("basket", FeatureKind::Numeric, None),
    ])
    .unwrap()
}

/// A writer with every shape the skipper knows, including a recursive list.
const WIDE: &str = r#"{"type":"record","name":"SalesEvent","namespace":"manymodel","fields":[
    {"name":"event_id","type":["null","string","long"]},
    {"name":"store_id","type":["string","bytes"]},
    {"name":"chain","type":{"type":"record","name":"Link","fields":[
        {"name":"v","type":"int"},{"name":"next","type":["null","Link"]}]}},
    {"name":"basket","type":{"type":"map","values":{"type":"array","items":"float"}}},
    {"name":"price","type":"int"},
    {"name":"promo","type":"boolean"},
    {"name":"code","type":{"type":"fixed","name":"Code","size":3}},
    {"name":"weather","type":{"type":"enum","name":"W","symbols":["sunny","rainy","snowy"]}},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}},
    {"name":"temperature","type":"double"}]}"#;

fn plans() -> Vec<Plan> {
    let reader = ReaderSchema::parse(SALES_EVENT_AVSC).unwrap();
    let wide = Schema::parse_str(WIDE).unwrap();
    let mut wide_reader: serde_json::Value = serde_json::from_str(WIDE).unwrap();
    wide_reader["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "added", "type": "string", "default": "x"}));
    let wide_reader = ReaderSchema::parse(&wide_reader.to_string()).unwrap();
    vec![
        Plan::new(reader.schema(), &reader).unwrap(),
        Plan::new(&wide, &wide_reader).unwrap(),
    ]
}

fn good_datums() -> Vec<Vec<u8>> {
    let event: serde_json::Value = serde_json::json!({"event_id": "e", "store_id": "S1",
        "ts": "2025-03-01T12:00:00Z", "price": 5.0, "promo": true, "temperature": 9.5,
        "weather": "sunny"});
    let sales = avro_twin(&Schema::parse_str(SALES_EVENT_AVSC).unwrap(), &event).unwrap();
    let wide = Schema::parse_str(WIDE).unwrap();
    let link = |v, next| A::Record(vec![("v".into(), A::Int(v)), ("next".into(), next)]);
    let chain = link(
        1,
        A::Union(1, Box::new(link(2, A::Union(0, Box::new(A::Null))))),
    );
    let value = A::Record(vec![
        ("event_id".into(), A::Union(2, Box::new(A::Long(7)))),
        (
            "store_id".into(),
            A::Union(1, Box::new(A::Bytes(b"S1".to_vec()))),
        ),
        ("chain".into(), chain),
        (
            "basket".into(),
            A::Map([("a".to_owned(), A::Array(vec![A::Float(1.0), A::Float(2.0)]))].into()),
        ),
        ("price".into(), A::Int(3)),
        ("promo".into(), A::Boolean(false)),
        ("code".into(), A::Fixed(3, vec![1, 2, 3])),
        ("weather".into(), A::Enum(1, "rainy".into())),
        ("ts".into(), A::TimestampMicros(1_700_000_000_000_000)),
        ("temperature".into(), A::Double(3.5)),
    ]);
    vec![sales, apache_avro::to_avro_datum(&wide, value).unwrap()]
}

#[test]
fn the_good_datums_decode() {
    let plans = plans();
    let datums = good_datums();
    let e = plans[0].decode(&datums[0], "store_id", &encoder());
    // `basket` is not in the shipped schema: a missing feature, decoded all the same.
    assert_eq!(e.unwrap_err().kind.as_str(), "missing_feature");
    let e = plans[1].decode(&datums[1], "store_id", &encoder());
    // `basket` is a map there: a wrong type, after every other field decoded.
    assert_eq!(e.unwrap_err().kind.as_str(), "wrong_type");
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_json_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_json(&bytes, "store_id", &encoder());
    }

    #[test]
    fn arbitrary_json_objects_never_panic_the_json_decoder(
        fields in proptest::collection::vec(
            (prop_oneof![Just("store_id".to_owned()), Just("price".to_owned()), Just("ts".to_owned()),
                         Just("promo".to_owned()), Just("weather".to_owned()), "[a-z]{1,6}"],
             prop_oneof![any::<i64>().prop_map(|x| x.to_string()), any::<f64>().prop_map(|x| format!("{x:?}")),
                         "\"[ -~]{0,12}\"", Just("null".to_owned()), Just("true".to_owned()), Just("[1,{}]".to_owned())]),
            0..8)
    ) {
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        let _ = decode_json(format!("{{{}}}", body.join(",")).as_bytes(), "store_id", &encoder());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_avro_decoder_in_any_framing(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for plan in plans() {
            for framing in [Framing::Confluent, Framing::SingleObject, Framing::Raw] {
                if let Ok((_, datum)) = split(framing, &bytes) {
                    let _ = plan.decode(datum, "store_id", &encoder());
                    let _ = plan.datum_len(datum);
                }
            }
        }
    }

    #[test]
    fn good_avro_datums_with_bytes_changed_or_cut_never_panic(
        which in 0usize..2, at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()
    ) {
        let plans = plans();
        let mut datum = good_datums().swap_remove(which);
        let i = at.index(datum.len());
        datum[i] = byte;
        let _ = plans[which].decode(&datum, "store_id", &encoder());
        let _ = plans[which].decode(&datum[..cut.index(datum.len())], "store_id", &encoder());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_container_and_bundle_readers(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = container::read(&bytes);
        let mut with_header = b"Obj\x01".to_vec();
        with_header.extend_from_slice(&bytes);
        let _ = container::read(&with_header);
        let _ = Bundle::from_avro(&bytes);
        let _ = Bundle::from_avro(&with_header);
    }

    #[test]
    fn a_bundle_with_a_byte_changed_never_panics_the_bundle_reader(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bundle = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bundle-format1.avro")).unwrap();
        let i = at.index(bundle.len());
        bundle[i] = byte;
        let _ = Bundle::from_avro(&bundle);
        let _ = Bundle::from_avro(&bundle[..i]);
    }
}
