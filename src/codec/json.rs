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
