//! JSON events: one object per record (or per line of a JSONL file).
//!
//! Only the fields scoring reads are materialised (the partition column, `event_id` and the
//! feature columns); every other field is skipped without allocating. What the fields mean is
//! decided in [`crate::event::assemble`], never here.

use serde::Deserializer as _;

use crate::error::{RecordError, RecordErrorKind};
use crate::event::{assemble, slot_count, slot_of, Event, Slot};
use crate::features::FeatureEncoder;

/// Decodes one JSON event: an object holding the partition column and the features.
pub fn decode_json(
    bytes: &[u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
) -> Result<Event, RecordError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wanted = Wanted {
        partition_column,
        encoder,
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
    assemble(&mut slots, partition_column, encoder)
}

/// Fills the slots of the fields scoring reads.
struct Wanted<'a> {
    partition_column: &'a str,
    encoder: &'a FeatureEncoder,
}

impl<'de> serde::de::Visitor<'de> for Wanted<'_> {
    type Value = Vec<Slot>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots = vec![Slot::Absent; slot_count(self.encoder)];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match slot_of(&key, self.partition_column, self.encoder) {
                Some(i) => slots[i] = Slot::Json(map.next_value()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(slots)
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
