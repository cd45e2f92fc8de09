//! The one place that turns the fields a decoder found into an [`Event`] ready to score.
//!
//! Every input format (JSON in [`crate::codec::json`], Avro in [`crate::codec::avro`]) only
//! finds the fields scoring reads and hands them over as [`Slot`]s; [`assemble`] checks the
//! partition key and runs the one [`FeatureEncoder`]. Offline `predict` and the Kafka pipeline
//! both come through here, so a JSON line, a JSON Kafka record and an Avro record carrying the
//! same values become the same event, or the same [`RecordError`].

use std::borrow::Cow;

use serde_json::Value;
use smol_str::SmolStr;

use crate::error::{RecordError, RecordErrorKind};
use crate::features::FeatureEncoder;
use crate::field::{partition_id, Field};

/// A decoded sales event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The partition id in text form (the Kafka key of its prediction); kept inline, without
    /// an allocation, up to 23 bytes.
    pub partition: SmolStr,
    /// Whether the event wrote the partition id as a JSON integer rather than a string: the
    /// prediction echoes it the same way.
    pub partition_was_number: bool,
    /// The event's `event_id`, if it has one, echoed in the prediction.
    pub event_id: Option<EventId>,
    /// The encoded model inputs.
    pub inputs: Vec<f64>,
}

/// An event's `event_id` as the event wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum EventId {
    /// A string, as most ids are: kept inline, without an allocation, up to 23 bytes.
    Text(SmolStr),
    /// Any other value (a number, a boolean, an array or an object).
    Json(Value),
}

impl EventId {
    /// The id as text: a string as it is, any other value as JSON.
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            EventId::Text(s) => Cow::Borrowed(s.as_str()),
            EventId::Json(Value::String(s)) => Cow::Borrowed(s.as_str()),
            EventId::Json(v) => Cow::Owned(v.to_string()),
        }
    }
}

impl From<&str> for EventId {
    fn from(s: &str) -> Self {
        EventId::Text(s.into())
    }
}

impl From<String> for EventId {
    fn from(s: String) -> Self {
        EventId::Text(s.into())
    }
}

/// One field of an event as a decoder found it, perhaps borrowing from the record's bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Slot<'a> {
    /// The record does not have the field.
    #[default]
    Absent,
    /// A JSON value; Avro nulls, booleans, ints, longs, strings and enum symbols are these too.
    Json(Value),
    /// A JSON string, borrowed from the record when it has no escapes: the same as
    /// [`Slot::Json`] of that string, without building a [`Value`] for a feature that only
    /// reads it.
    Str(Cow<'a, str>),
    /// An Avro `float` or `double` (possibly NaN or infinite, which JSON cannot hold).
    Float(f64),
    /// An Avro value of a kind no feature reads, named for the error message.
    Other(&'static str),
}

impl Slot<'_> {
    fn field(&self) -> Option<Field<'_>> {
        match self {
            Slot::Absent => None,
            Slot::Json(v) => Some(Field::Json(v)),
            Slot::Str(s) => Some(Field::JsonStr(s)),
            Slot::Float(x) => Some(Field::Float(*x)),
            Slot::Other(kind) => Some(Field::Other(kind)),
        }
    }
}

/// The fields of an event that scoring reads: slot 0 is the partition column, slot 1
/// `event_id`, then one slot per feature column of the encoder, in its order.
pub fn slot_count(encoder: &FeatureEncoder) -> usize {
    2 + encoder.columns().len()
}

/// The slot of a field named `name`, if scoring reads it.
pub fn slot_of(name: &str, partition_column: &str, encoder: &FeatureEncoder) -> Option<usize> {
    if name == partition_column {
        Some(0)
    } else if name == "event_id" {
        Some(1)
    } else {
        encoder.column_position(name).map(|i| 2 + i)
    }
}

/// Checks the partition key and encodes the features of the slots a decoder filled.
///
/// The inputs are written into `inputs` (cleared first): a recycled buffer
/// ([`crate::spares`]), or a new one.
pub fn assemble(
    slots: &mut [Slot<'_>],
    partition_column: &str,
    encoder: &FeatureEncoder,
    mut inputs: Vec<f64>,
) -> Result<Event, RecordError> {
    let (partition, partition_was_number) = match slots.first_mut().map(std::mem::take) {
        None | Some(Slot::Absent) => {
            return Err(RecordError::new(
                RecordErrorKind::MissingKey,
                format!("partition column {partition_column:?} is missing"),
            ))
        }
        Some(Slot::Str(s)) => (SmolStr::from(s.as_ref()), false),
        Some(Slot::Json(Value::String(s))) => (SmolStr::from(s), false),
        Some(Slot::Json(v)) => match partition_id(&v) {
            Some(id) => (SmolStr::from(id.as_ref()), v.is_number()),
            None if v.is_null() => return Err(empty_key(partition_column)),
            None => {
                return Err(RecordError::new(
                    RecordErrorKind::WrongType,
                    format!(
                        "partition column {partition_column:?} must be a string or an integer, got {}",
                        json_type(&v)
                    ),
                ))
            }
        },
        Some(Slot::Float(x)) => {
            return Err(RecordError::new(
                RecordErrorKind::WrongType,
                format!(
                    "partition column {partition_column:?} must be a string or an integer, got the floating-point number {x}"
                ),
            ))
        }
        Some(Slot::Other(kind)) => {
            return Err(RecordError::new(
                RecordErrorKind::WrongType,
                format!(
                    "partition column {partition_column:?} must be a string or an integer, got {kind}"
                ),
            ))
        }
    };
    if is_blank(&partition) {
        return Err(empty_key(partition_column));
    }
    let event_id = match slots.get_mut(1).map(std::mem::take) {
        Some(Slot::Json(Value::String(s))) => Some(EventId::Text(s.into())),
        Some(Slot::Json(v)) if !v.is_null() => Some(EventId::Json(v)),
        Some(Slot::Str(s)) => Some(EventId::Text(s.as_ref().into())),
        Some(Slot::Float(x)) => serde_json::Number::from_f64(x).map(|n| EventId::Json(n.into())),
        _ => None,
    };
    encoder.encode_columns(|i| slots.get(2 + i).and_then(Slot::field), &mut inputs)?;
    Ok(Event {
        partition,
        partition_was_number,
        event_id,
        inputs,
    })
}

/// Whether `id` is empty or all whitespace (as [`str::trim`] sees it). An id that starts
/// with a printable ASCII character, as nearly every one does, is answered without a scan.
fn is_blank(id: &str) -> bool {
    match id.as_bytes().first() {
        Some(b) if b.is_ascii_graphic() => false,
        _ => id.trim().is_empty(),
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

    /// The shortcut agrees with `trim` on every leading character that matters: ASCII
    /// whitespace, Unicode whitespace, control and printable characters.
    #[test]
    fn blank_means_what_trim_says() {
        let starts = [
            "", " ", "\t", "\n", "\u{b}", "\u{c}", "\r", "\u{1f}", "\u{85}", "\u{a0}", "\u{3000}",
            "a", "~", "!", "é", "\u{7f}",
        ];
        for first in starts {
            for rest in ["", " ", "x", "\u{2028}"] {
                let id = format!("{first}{rest}");
                assert_eq!(is_blank(&id), id.trim().is_empty(), "{id:?}");
            }
        }
    }
}
