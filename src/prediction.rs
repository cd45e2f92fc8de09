//! The prediction record, the same in a JSONL file and on Kafka:
//!
//! ```json
//! {"event_id": "ev-1", "store_id": "S1", "prediction": 123.4, "model_version": "v7", "model": "partition"}
//! ```
//!
//! The partition column keeps its own name and the value the event gave it; `event_id` is
//! written when the event had one. On Kafka the record key is the partition id and the header
//! `model-version` carries the version.
//!
//! In Avro ([`OutPlan`], `schemas/prediction.avsc`) the record has the same fields; the
//! partition column's value is written as text (the partition id) and `event_id` as text or
//! null, since an Avro field has one type whatever the events carried. A Parquet file of
//! predictions ([`parquet`]) has the same columns, typed as in Avro.

pub mod parquet;

use apache_avro::Schema;
use serde_json::Value;

use crate::codec::avro::{write_bytes, write_long};
use crate::event::{Event, EventId};
use crate::scoring::ModelSource;

/// The Kafka header that carries the model version.
pub const VERSION_HEADER: &str = "model-version";

/// Appends the JSON prediction record for `event` to `buf` (no newline).
pub fn write_json(
    buf: &mut Vec<u8>,
    partition_column: &str,
    event: &Event,
    prediction: f64,
    version: &str,
    source: ModelSource,
) {
    buf.push(b'{');
    if let Some(id) = &event.event_id {
        buf.extend_from_slice(b"\"event_id\":");
        match id {
            EventId::Text(id) => write_str(buf, id),
            EventId::Json(id) => write_value(buf, id),
        }
        buf.push(b',');
    }
    write_str(buf, partition_column);
    buf.push(b':');
    if event.partition_was_number {
        // An integer's decimal digits, as serde_json writes it.
        buf.extend_from_slice(event.partition.as_bytes());
    } else {
        write_str(buf, &event.partition);
    }
    buf.extend_from_slice(b",\"prediction\":");
    // Writing JSON into a Vec cannot fail. A non-finite prediction is written as null.
    let _ = serde_json::to_writer(&mut *buf, &prediction);
    buf.extend_from_slice(b",\"model_version\":");
    write_str(buf, version);
    buf.extend_from_slice(b",\"model\":\"");
    buf.extend_from_slice(source.as_str().as_bytes());
    buf.extend_from_slice(b"\"}");
}

/// Appends `value` as JSON: a string as [`write_str`] does, anything else as serde_json does.
fn write_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => write_str(buf, s),
        // Writing JSON into a Vec cannot fail.
        other => {
            let _ = serde_json::to_writer(&mut *buf, other);
        }
    }
}

/// Appends `s` as a JSON string. One that needs no escape (no `"`, `\\` or control
/// character; the usual store id, event id or version) is copied as it is; any other is
/// escaped by serde_json, byte for byte as it always writes strings.
fn write_str(buf: &mut Vec<u8>, s: &str) {
    if crate::codec::flat_json::first_special(s.as_bytes()).is_some() {
        let _ = serde_json::to_writer(&mut *buf, s);
    } else {
        buf.reserve(s.len() + 2);
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

/// How to write each field of an Avro prediction schema, planned once per schema and
/// partition column.
#[derive(Debug)]
pub struct OutPlan {
    fields: Vec<Out>,
}

#[derive(Debug)]
enum Out {
    /// Text that may be absent: the union branch of null and of string, if a union.
    EventId(Option<(i64, i64)>),
    /// The partition id as text, with the string branch if a union.
    Partition(Option<i64>),
    /// The prediction: `double`, or `float` when true, with the branch if a union.
    Prediction(bool, Option<i64>),
    /// The version text, with the string branch if a union.
    Version(Option<i64>),
    /// The model source: string, or enum symbol indexes of partition and fallback.
    Model(Option<(i64, i64)>, Option<i64>),
    /// A field manymodel does not fill: its default, encoded.
    Default(Vec<u8>),
}

/// The branch of a union that is of `kind`, or `None` when `s` is that kind itself.
fn branch(s: &Schema, want: impl Fn(&Schema) -> bool) -> Result<Option<i64>, ()> {
    match s {
        Schema::Union(u) => u
            .variants()
            .iter()
            .position(want)
            .map(|i| Some(i as i64))
            .ok_or(()),
        s if want(s) => Ok(None),
        _ => Err(()),
    }
}

impl OutPlan {
    /// Plans writing predictions of a bundle keyed by `partition_column` with `schema`.
    pub fn new(schema: &Schema, partition_column: &str) -> Result<OutPlan, String> {
        let Schema::Record(r) = schema else {
            return Err("the prediction schema must be a record".into());
        };
        let key_field = if r.fields.iter().any(|f| f.name == partition_column) {
            partition_column
        } else {
            "partition"
        };
        let is_text = |s: &Schema| matches!(s, Schema::String);
        let mut fields = Vec::new();
        let mut has_key = false;
        for f in &r.fields {
            let bad =
                |what: &str| format!("field {:?} of the prediction schema must be {what}", f.name);
            let out = match f.name.as_str() {
                n if n == key_field => {
                    has_key = true;
                    Out::Partition(branch(&f.schema, is_text).map_err(|_| bad("a string"))?)
                }
                "event_id" => match &f.schema {
                    Schema::Union(u) => {
                        let v = u.variants();
                        let null = v.iter().position(|s| matches!(s, Schema::Null));
                        let text = v.iter().position(is_text);
                        match (null, text) {
                            (Some(n), Some(t)) => Out::EventId(Some((n as i64, t as i64))),
                            _ => return Err(bad("[\"null\", \"string\"]")),
                        }
                    }
                    _ => return Err(bad("[\"null\", \"string\"]")),
                },
                "prediction" => {
                    let double = branch(&f.schema, |s| matches!(s, Schema::Double));
                    match double {
                        Ok(b) => Out::Prediction(false, b),
                        Err(()) => Out::Prediction(
                            true,
                            branch(&f.schema, |s| matches!(s, Schema::Float))
                                .map_err(|_| bad("a double"))?,
                        ),
                    }
                }
                "model_version" => {
                    Out::Version(branch(&f.schema, is_text).map_err(|_| bad("a string"))?)
                }
                "model" => {
                    let b = branch(&f.schema, |s| matches!(s, Schema::String | Schema::Enum(_)))
                        .map_err(|_| bad("a string or an enum of partition and fallback"))?;
                    let inner = match (&f.schema, b) {
                        (Schema::Union(u), Some(i)) => &u.variants()[i as usize],
                        (s, _) => s,
                    };
                    let symbols = match inner {
                        Schema::Enum(e) => {
                            let at = |s: &str| e.symbols.iter().position(|x| x == s);
                            match (at("partition"), at("fallback")) {
                                (Some(p), Some(f)) => Some((p as i64, f as i64)),
                                _ => {
                                    return Err(bad("an enum with symbols partition and fallback"))
                                }
                            }
                        }
                        _ => None,
                    };
                    Out::Model(symbols, b)
                }
                _ => {
                    let default = f.default.as_ref().ok_or_else(|| {
                        format!(
                            "field {:?} of the prediction schema is not one manymodel writes and has no default",
                            f.name
                        )
                    })?;
                    let mut bytes = Vec::new();
                    encode_default(&f.schema, default, &mut bytes)
                        .map_err(|e| format!("field {:?}: {e}", f.name))?;
                    Out::Default(bytes)
                }
            };
            fields.push(out);
        }
        if !has_key {
            return Err(format!(
                "the prediction schema has no field {partition_column:?} (the bundle's partition column) nor \"partition\""
            ));
        }
        Ok(OutPlan { fields })
    }

    /// Appends the Avro datum of a prediction.
    pub fn write(
        &self,
        buf: &mut Vec<u8>,
        event: &Event,
        prediction: f64,
        version: &str,
        source: ModelSource,
    ) {
        let text = |buf: &mut Vec<u8>, s: &str, b: Option<i64>| {
            if let Some(b) = b {
                write_long(buf, b);
            }
            write_bytes(buf, s.as_bytes());
        };
        for f in &self.fields {
            match f {
                Out::EventId(branches) => {
                    let (null, string) = branches.unwrap_or((0, 1));
                    match &event.event_id {
                        None => write_long(buf, null),
                        Some(id) => text(buf, &id.to_text(), Some(string)),
                    }
                }
                Out::Partition(b) => text(buf, &event.partition, *b),
                Out::Prediction(float, b) => {
                    if let Some(b) = b {
                        write_long(buf, *b);
                    }
                    if *float {
                        buf.extend_from_slice(&(prediction as f32).to_le_bytes());
                    } else {
                        buf.extend_from_slice(&prediction.to_le_bytes());
                    }
                }
                Out::Version(b) => text(buf, version, *b),
                Out::Model(symbols, b) => {
                    if let Some(b) = b {
                        write_long(buf, *b);
                    }
                    match symbols {
                        Some((p, f)) => write_long(
                            buf,
                            if source == ModelSource::Partition {
                                *p
                            } else {
                                *f
                            },
                        ),
                        None => write_bytes(buf, source.as_str().as_bytes()),
                    }
                }
                Out::Default(bytes) => buf.extend_from_slice(bytes),
            }
        }
    }
}

/// Encodes a field default of a simple type (null, boolean, numbers, string, enum; a union's
/// first branch).
fn encode_default(schema: &Schema, default: &Value, buf: &mut Vec<u8>) -> Result<(), String> {
    match (schema, default) {
        (Schema::Union(u), d) => {
            write_long(buf, 0);
            let first = u.variants().first().ok_or("an empty union")?;
            encode_default(first, d, buf)
        }
        (Schema::Null, Value::Null) => Ok(()),
        (Schema::Boolean, Value::Bool(b)) => {
            buf.push(u8::from(*b));
            Ok(())
        }
        (Schema::Int | Schema::Long, Value::Number(n)) if n.as_i64().is_some() => {
            write_long(buf, n.as_i64().unwrap_or_default());
            Ok(())
        }
        (Schema::Float, Value::Number(n)) => {
            buf.extend_from_slice(&(n.as_f64().unwrap_or_default() as f32).to_le_bytes());
            Ok(())
        }
        (Schema::Double, Value::Number(n)) => {
            buf.extend_from_slice(&n.as_f64().unwrap_or_default().to_le_bytes());
            Ok(())
        }
        (Schema::String, Value::String(s)) => {
            write_bytes(buf, s.as_bytes());
            Ok(())
        }
        (Schema::Enum(e), Value::String(s)) => {
            let i = e
                .symbols
                .iter()
                .position(|x| x == s)
                .ok_or("an unknown enum default")?;
            write_long(buf, i as i64);
            Ok(())
        }
        _ => Err(
            "manymodel only writes defaults of null, boolean, number, string and enum fields"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The JSON prediction `write_json` makes of the event `record` decodes to.
    fn prediction_of(record: &[u8], encoder: &crate::features::FeatureEncoder) -> Vec<u8> {
        let event = crate::codec::json::decode_json(record, "store_id", encoder).unwrap();
        let mut buf = Vec::new();
        write_json(
            &mut buf,
            "store_id",
            &event,
            1.0,
            "v1",
            ModelSource::Fallback,
        );
        buf
    }

    #[test]
    fn a_partition_id_is_echoed_as_the_event_wrote_it() {
        let encoder = crate::features::FeatureEncoder::new(&[]).unwrap();
        for (record, echoed) in [
            (r#"{"store_id":7}"#, r#""store_id":7,"#),
            (r#"{"store_id":"7"}"#, r#""store_id":"7","#),
            (r#"{"store_id":-12}"#, r#""store_id":-12,"#),
            (
                r#"{"store_id":18446744073709551615}"#,
                r#""store_id":18446744073709551615,"#,
            ),
            (r#"{"store_id":"a\"b"}"#, r#""store_id":"a\"b","#),
        ] {
            let text = String::from_utf8(prediction_of(record.as_bytes(), &encoder)).unwrap();
            assert!(text.contains(echoed), "{record}: {text}");
        }
    }

    #[test]
    fn strings_and_values_are_written_as_serde_json_writes_them() {
        // Every character class an id can hold, in generated combinations.
        let pieces = [
            "s", "S-0042", "", " ", "\"", "\\", "\n", "\t", "\u{1}", "\u{1f}", "\u{7f}", "é", "店",
            "🙂", "/", "'", "\r\n", "\u{2028}",
        ];
        let mut rng = crate::codec::json::tests::Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let s: String = (0..rng.below(6)).map(|_| rng.pick(&pieces)).collect();
            let mut buf = Vec::new();
            write_str(&mut buf, &s);
            assert_eq!(buf, serde_json::to_vec(&s).unwrap(), "{s:?}");
            for value in [json!(s), json!(rng.next() as i64), json!(null), json!([s])] {
                let mut buf = Vec::new();
                write_value(&mut buf, &value);
                assert_eq!(buf, serde_json::to_vec(&value).unwrap(), "{value:?}");
            }
        }
    }

    #[test]
    fn the_record_keeps_the_partition_column_name_and_event_id() {
        let event = Event {
            partition: "S1".into(),
            partition_was_number: false,
            event_id: Some("ev-1".into()),
            inputs: vec![],
        };
        let mut buf = Vec::new();
        write_json(
            &mut buf,
            "store_id",
            &event,
            123.4,
            "v7",
            ModelSource::Partition,
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            json!({"event_id": "ev-1", "store_id": "S1", "prediction": 123.4, "model_version": "v7", "model": "partition"})
        );
    }

    /// Whatever value an event's `event_id` holds (short or long strings, escapes, numbers,
    /// booleans, objects), decoding the event and writing its prediction echoes that value.
    #[test]
    fn every_kind_of_event_id_is_echoed_as_the_event_wrote_it() {
        let encoder = crate::codec::json::tests::encoder();
        let ids = [
            json!("ev-1"),
            json!("an event id well past twenty-three bytes"),
            json!("tab\t quote\" é ☃"),
            json!(""),
            json!(42),
            json!(-7.25),
            json!(true),
            json!([1, "a"]),
            json!({"shard": 3}),
        ];
        for id in ids {
            let record = json!({"event_id": id, "store_id": "S1", "price": 2.5, "region": "north"});
            let buf = prediction_of(&serde_json::to_vec(&record).unwrap(), &encoder);
            let written: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            assert_eq!(written["event_id"], id, "{}", String::from_utf8_lossy(&buf));
        }
    }

    #[test]
    fn avro_predictions_read_back_with_the_shipped_schema() {
        use apache_avro::types::Value as A;
        let schema = Schema::parse_str(crate::codec::PREDICTION_AVSC).unwrap();
        let plan = OutPlan::new(&schema, "store_id").unwrap();
        let event = Event {
            partition: "7".into(),
            partition_was_number: true,
            event_id: Some("ev-1".into()),
            inputs: vec![],
        };
        let mut buf = Vec::new();
        plan.write(&mut buf, &event, 1.5, "v7", ModelSource::Fallback);
        let v = apache_avro::from_avro_datum(&schema, &mut &buf[..], None).unwrap();
        assert_eq!(
            v,
            A::Record(vec![
                (
                    "event_id".into(),
                    A::Union(1, Box::new(A::String("ev-1".into())))
                ),
                ("store_id".into(), A::String("7".into())),
                ("prediction".into(), A::Double(1.5)),
                ("model_version".into(), A::String("v7".into())),
                ("model".into(), A::Enum(1, "fallback".into())),
            ])
        );
        assert!(
            OutPlan::new(&schema, "zone").is_err(),
            "no field for the key"
        );
    }
}
