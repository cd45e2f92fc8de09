//! JSON events: one object per record (or per line of a JSONL file).
//!
//! Only the fields scoring reads are materialised (the partition column, `event_id` and the
//! feature columns); every other field is skipped without allocating. Keys are matched to
//! their slot as they are read, without being copied, and a string value stays borrowed from
//! the record unless it has escapes. What the fields mean is decided in
//! [`crate::event::assemble`], never here.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::{RecordError, RecordErrorKind};
use crate::event::{assemble, slot_count, slot_of, Event, Slot};
use crate::features::FeatureEncoder;

/// Events with up to this many slots keep them on the stack.
const INLINE_SLOTS: usize = 16;

/// Decodes one JSON event: an object holding the partition column and the features.
pub fn decode_json(
    bytes: &[u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
) -> Result<Event, RecordError> {
    let count = slot_count(encoder);
    let mut inline: [Slot<'_>; INLINE_SLOTS];
    let mut heap: Vec<Slot<'_>>;
    let slots: &mut [Slot<'_>] = if count <= INLINE_SLOTS {
        inline = Default::default();
        &mut inline[..count]
    } else {
        heap = vec![Slot::Absent; count];
        &mut heap
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wanted = Wanted {
        partition_column,
        encoder,
        slots: &mut *slots,
    };
    de.deserialize_map(wanted)
        .and_then(|()| de.end())
        .map_err(|e| {
            RecordError::new(
                RecordErrorKind::InvalidJson,
                format!("not a JSON event object: {e}"),
            )
        })?;
    assemble(slots, partition_column, encoder)
}

/// Fills the slots of the fields scoring reads.
struct Wanted<'a, 'de> {
    partition_column: &'a str,
    encoder: &'a FeatureEncoder,
    slots: &'a mut [Slot<'de>],
}

impl<'de> Visitor<'de> for Wanted<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let key = KeySlot {
            partition_column: self.partition_column,
            encoder: self.encoder,
        };
        while let Some(found) = map.next_key_seed(key)? {
            match found.and_then(|i| self.slots.get_mut(i)) {
                Some(slot) => *slot = map.next_value_seed(SlotValue)?,
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// Reads a key as the slot of its field ([`slot_of`]), without copying it.
#[derive(Clone, Copy)]
struct KeySlot<'a> {
    partition_column: &'a str,
    encoder: &'a FeatureEncoder,
}

impl<'de> DeserializeSeed<'de> for KeySlot<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySlot<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(slot_of(key, self.partition_column, self.encoder))
    }
}

/// Reads a wanted value as a [`Slot`]: a string borrowed where it can be, anything else the
/// [`Value`] `serde_json` itself would build.
struct SlotValue;

impl<'de> DeserializeSeed<'de> for SlotValue {
    type Value = Slot<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Slot<'de>, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SlotValue {
    type Value = Slot<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Slot<'de>, E> {
        Ok(Slot::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Slot<'de>, E> {
        Ok(Slot::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Slot<'de>, E> {
        Ok(Slot::Str(Cow::Owned(s)))
    }

    // The scalars below are built as serde_json's own `Value` visitor builds them.
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Slot<'de>, E> {
        Ok(Slot::Json(Value::Bool(b)))
    }

    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<Slot<'de>, E> {
        Ok(Slot::Json(Value::Number(i.into())))
    }

    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<Slot<'de>, E> {
        Ok(Slot::Json(Value::Number(u.into())))
    }

    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<Slot<'de>, E> {
        Ok(Slot::Json(
            serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Slot<'de>, E> {
        Ok(Slot::Json(Value::Null))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Slot<'de>, E> {
        Ok(Slot::Json(Value::Null))
    }

    // Arrays and objects no feature reads, but the error message shows them: build them as
    // serde_json does.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Slot<'de>, A::Error> {
        serde::Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
            .map(Slot::Json)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Slot<'de>, A::Error> {
        serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            .map(Slot::Json)
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

    /// The event the whole object parsed into a `Value` gives, each wanted field a
    /// [`Slot::Json`]: how events were decoded before keys and strings were borrowed.
    fn reference(bytes: &str, encoder: &FeatureEncoder) -> Result<Event, RecordError> {
        let Value::Object(object) = serde_json::from_str::<Value>(bytes).unwrap() else {
            panic!("not an object: {bytes}")
        };
        let mut slots = vec![Slot::Absent; slot_count(encoder)];
        for (key, value) in object {
            if let Some(i) = slot_of(&key, "store_id", encoder) {
                slots[i] = Slot::Json(value);
            }
        }
        assemble(&mut slots, "store_id", encoder)
    }

    #[test]
    fn borrowed_fields_decode_as_whole_values_do() {
        let encoder = FeatureEncoder::new(&[
            FeatureSpec {
                column: "price".into(),
                kind: FeatureKind::Numeric,
                categories: None,
            },
            FeatureSpec {
                column: "promo".into(),
                kind: FeatureKind::Bool,
                categories: None,
            },
            FeatureSpec {
                column: "weather".into(),
                kind: FeatureKind::OneHot,
                categories: Some(vec!["sunny".into(), "rain\n".into(), "é".into()]),
            },
            FeatureSpec {
                column: "ts".into(),
                kind: FeatureKind::HourOfDay,
                categories: None,
            },
            FeatureSpec {
                column: "ts".into(),
                kind: FeatureKind::Month,
                categories: None,
            },
        ])
        .unwrap();
        let values = [
            r#""""#,
            r#"" ""#,
            r#""S1""#,
            r#""S\u0031""#,
            r#""a\"b""#,
            r#""é""#,
            r#""sunny""#,
            r#""rain\n""#,
            r#""2024-03-05T12:30:00Z""#,
            r#""2024-03-05T14:30:00.25+02:00""#,
            r#""2025-02-30T00:00:00Z""#,
            r#""1709641800000""#,
            r#""true""#,
            "1709641800000",
            "-3",
            "0",
            "1",
            "2.5",
            "-0.0",
            "18446744073709551615",
            "123456789012345678901234567890",
            "1e300",
            "true",
            "false",
            "null",
            "[1,\"x\"]",
            r#"{"a":[]}"#,
        ];
        let fields = ["store_id", "event_id", "price", "promo", "weather", "ts"];
        let base = [r#""S1""#, r#""ev""#, "2.5", "true", r#""sunny""#, "0"];
        let mut checked = 0;
        for (f, field) in fields.iter().enumerate() {
            for value in values {
                let mut parts: Vec<String> = fields
                    .iter()
                    .zip(base)
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                parts[f] = format!("\"{field}\":{value}");
                // Unwanted fields of every kind, and a wanted one given twice.
                parts.push(format!("\"extra\":{value}"));
                parts.insert(0, format!("\"{field}\":{}", values[checked % values.len()]));
                let event = format!("{{{}}}", parts.join(","));
                let got = decode_json(event.as_bytes(), "store_id", &encoder);
                assert_eq!(got, reference(&event, &encoder), "{event}");
                checked += 1;
            }
        }
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
