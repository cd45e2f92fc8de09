//! The one place that turns an input record into an [`Event`] ready to score.
//!
//! Offline `predict` and the Kafka pipeline both call [`decode_json`], so a line of a JSONL
//! file and a Kafka record with the same bytes become the same event, or the same
//! [`RecordError`].

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
pub fn decode_json(
    bytes: &[u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
) -> Result<Event, RecordError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        RecordError::new(RecordErrorKind::InvalidJson, format!("not valid JSON: {e}"))
    })?;
    let Value::Object(mut object) = value else {
        return Err(RecordError::new(
            RecordErrorKind::InvalidJson,
            format!("a JSON {} is not an event object", json_type(&value)),
        ));
    };
    let partition_value = match object.get(partition_column) {
        None => {
            return Err(RecordError::new(
                RecordErrorKind::MissingKey,
                format!("partition column {partition_column:?} is missing"),
            ))
        }
        Some(v) => v.clone(),
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
    let mut inputs = Vec::with_capacity(encoder.width());
    encoder.encode(|c| object.get(c).map(Field::Json), &mut inputs)?;
    let event_id = object.remove("event_id").filter(|v| !v.is_null());
    Ok(Event {
        partition,
        partition_value,
        event_id,
        inputs,
    })
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
