//! The one place that turns an input record into an [`Event`] ready to score.
//!
//! Offline `predict` and the Kafka pipeline both call [`decode_json`], so a line of a JSONL
//! file and a Kafka record with the same bytes become the same event, or the same
//! [`RecordError`].

use serde::Deserializer as _;
use serde_json::Value;

use crate::error::{RecordError, RecordErrorKind};
use crate::features::FeatureEncoder;
use crate::field::{partition_id, Field};

/// A decoded sales event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The partition id in text form (the Kafka key of its prediction).
    pub partition: String,
    /// The partition column's value as the event wrote it, echoed in the prediction.
    pub partition_value: Value,
    /// The event's `event_id`, if it has one, echoed in the prediction.
    pub event_id: Option<Value>,
    /// The encoded model inputs.
    pub inputs: Vec<f64>,
}

/// Decodes one JSON event: an object holding the partition column and the features.
///
/// Only the fields the bundle reads are materialised (the partition column, `event_id` and
/// the feature columns); every other field is skipped without allocating.
pub fn decode_json(
    bytes: &[u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
) -> Result<Event, RecordError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wanted = Wanted {
        partition_column,
        columns: encoder.columns(),
    };
    let mut slots = de
        .deserialize_map(wanted)
        .and_then(|slots| de.end().map(|_| slots))
        .map_err(|e| {
            RecordError::new(
                RecordErrorKind::InvalidJson,
                format!("not a JSON event object: {e}"),
            )
        })?;
    let partition_value = match slots[0].take() {
        None => {
            return Err(RecordError::new(
                RecordErrorKind::MissingKey,
                format!("partition column {partition_column:?} is missing"),
            ))
        }
        Some(v) => v,
    };
    let partition = match partition_id(&partition_value) {
        Some(id) if !id.trim().is_empty() => id.into_owned(),
        Some(_) => return Err(empty_key(partition_column)),
        None if partition_value.is_null() => return Err(empty_key(partition_column)),
        None => {
            return Err(RecordError::new(
                RecordErrorKind::WrongType,
                format!(
                    "partition column {partition_column:?} must be a string or an integer, got {}",
                    json_type(&partition_value)
                ),
            ))
        }
    };
    let event_id = slots[1].take().filter(|v| !v.is_null());
    let columns = encoder.columns();
    let mut inputs = Vec::with_capacity(encoder.width());
    encoder.encode(
        |c| {
            let i = columns.iter().position(|name| name == c)?;
            slots[2 + i].as_ref().map(Field::Json)
        },
        &mut inputs,
    )?;
    Ok(Event {
        partition,
        partition_value,
        event_id,
        inputs,
    })
}

/// The fields of an event object that scoring reads: slot 0 is the partition column, slot 1
/// `event_id`, then one slot per feature column.
struct Wanted<'a> {
    partition_column: &'a str,
    columns: &'a [String],
}

impl<'de> serde::de::Visitor<'de> for Wanted<'_> {
    type Value = Vec<Option<Value>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots = vec![None; 2 + self.columns.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let slot = if key == self.partition_column {
                Some(0)
            } else if key == "event_id" {
                Some(1)
            } else {
                self.columns.iter().position(|c| *c == key).map(|i| 2 + i)
            };
            match slot {
                Some(i) => slots[i] = Some(map.next_value::<Value>()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(slots)
    }
}

fn empty_key(partition_column: &str) -> RecordError {
    RecordError::new(
        RecordErrorKind::EmptyKey,
        format!("partition column {partition_column:?} is null or empty"),
    )
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FeatureKind, FeatureSpec};

    fn encoder() -> FeatureEncoder {
        FeatureEncoder::new(&[FeatureSpec {
            column: "price".into(),
            kind: FeatureKind::Numeric,
            categories: None,
        }])
        .unwrap()
    }

    fn kind(bytes: &str) -> RecordErrorKind {
        decode_json(bytes.as_bytes(), "store_id", &encoder())
            .unwrap_err()
            .kind
    }

    #[test]
    fn a_good_event_decodes_with_its_id_and_key() {
        let e = decode_json(
            br#"{"event_id":"ev-1","store_id":7,"price":2.5,"extra":[1]}"#,
            "store_id",
            &encoder(),
        )
        .unwrap();
        assert_eq!(e.partition, "7");
        assert_eq!(e.partition_value, serde_json::json!(7));
        assert_eq!(e.event_id, Some(serde_json::json!("ev-1")));
        assert_eq!(e.inputs, vec![2.5]);
    }

    #[test]
    fn each_kind_of_bad_event_is_named() {
        assert_eq!(kind("{not json"), RecordErrorKind::InvalidJson);
        assert_eq!(kind("[1,2]"), RecordErrorKind::InvalidJson);
        assert_eq!(kind(r#"{"price":1}"#), RecordErrorKind::MissingKey);
        assert_eq!(
            kind(r#"{"store_id":null,"price":1}"#),
            RecordErrorKind::EmptyKey
        );
        assert_eq!(
            kind(r#"{"store_id":"","price":1}"#),
            RecordErrorKind::EmptyKey
        );
        assert_eq!(
            kind(r#"{"store_id":"S","price":"x"}"#),
            RecordErrorKind::WrongType
        );
        assert_eq!(kind(r#"{"store_id":"S"}"#), RecordErrorKind::MissingFeature);
        assert_eq!(
            kind(r#"{"store_id":"S","price":1e999}"#),
            RecordErrorKind::InvalidJson
        );
    }
}
