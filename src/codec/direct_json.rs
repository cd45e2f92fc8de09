//! The fastest path for the usual JSON event: a flat object of plain values, each the kind
//! its features read, decoded straight into the model's inputs.
//!
//! [`decode`] reads the record with the flat scanner's [`Cursor`], and each field scoring
//! reads straight into the form its features take ([`ColumnRead`]): a number into an `f64`, a
//! `true`/`false` into 1 or 0, a string into a borrowed category label or a timestamp. No
//! [`Slot`](crate::event::Slot), no `serde_json` value and no [`Field`] is built. It only
//! ever answers with the event the general way ([`flat_json`], then [`assemble`]) makes of
//! the same record: anything else, whether the general way would accept it or refuse it (a
//! bool spelled `1`, a number as text, a null, a missing feature, an out-of-range timestamp,
//! a blank key), gives the record back to the general way, which decides what it means and
//! names any fault.
//!
//! [`assemble`]: crate::event::assemble

use smol_str::SmolStr;

use super::flat_json::{self, Cursor};
use crate::event::{slot_of, Event, EventId};
use crate::features::{ColumnRead, ColumnValue, FeatureEncoder};
use crate::field::{partition_id, Field, MAX_MAGNITUDE};

/// Encoders with up to this many columns keep their values on the stack; wider ones take
/// the general way.
const INLINE_COLUMNS: usize = 16;

/// Decodes `bytes` into an [`Event`] whose inputs are written into `inputs`, or gives
/// `inputs` back if the record must take the general way.
pub(super) fn decode(
    bytes: &[u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
    mut inputs: Vec<f64>,
) -> Result<Event, Vec<f64>> {
    let columns = encoder.columns().len();
    if columns > INLINE_COLUMNS {
        return Err(inputs);
    }
    let mut values = [ColumnValue::Absent; INLINE_COLUMNS];
    let Some(fields) = scan(bytes, partition_column, encoder, &mut values[..columns]) else {
        return Err(inputs);
    };
    let Some((partition, partition_was_number)) = fields.partition else {
        return Err(inputs);
    };
    if encoder
        .encode_read(&values[..columns], &mut inputs)
        .is_none()
    {
        return Err(inputs);
    }
    Ok(Event {
        partition,
        partition_was_number,
        event_id: fields.event_id,
        inputs,
    })
}

/// The fields of an event besides its features, as [`scan`] found them.
struct KeyFields {
    /// The partition id and whether it was written as a number; `None` if it is absent.
    partition: Option<(SmolStr, bool)>,
    /// The `event_id`, `None` if it is absent or null.
    event_id: Option<EventId>,
}

/// Walks a flat object, reading each feature column into `values`; `None` as soon as
/// something is not what this path reads. Repeated keys: the last one wins, as in the
/// general way.
fn scan<'a>(
    bytes: &'a [u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
    values: &mut [ColumnValue<'a>],
) -> Option<KeyFields> {
    let mut fields = KeyFields {
        partition: None,
        event_id: None,
    };
    flat_json::walk_object(bytes, |key, cursor| {
        match slot_of(key, partition_column, encoder) {
            Some(0) => fields.partition = Some(partition(cursor)?),
            Some(1) => fields.event_id = event_id(cursor)?,
            Some(slot) => {
                let at = slot - 2;
                *values.get_mut(at)? = column(cursor, encoder.column_read(at))?;
            }
            None => cursor.skip_value()?,
        }
        Some(())
    })?;
    Some(fields)
}

/// Reads a feature column's value as its features take it.
///
/// Inlined, as [`partition`] is: a value handed back through memory was read back before its
/// bytes had all been stored (a store-forwarding stall, a quarter of `walk_object`'s samples
/// in `perf annotate` of decoding the bench's events).
#[inline(always)]
fn column<'a>(cursor: &mut Cursor<'a>, read: ColumnRead) -> Option<ColumnValue<'a>> {
    match (read, cursor.peek()?) {
        (ColumnRead::Number, b'-' | b'0'..=b'9') => {
            let x = flat_json::exact_f64(cursor.number()?)?;
            (x.abs() <= MAX_MAGNITUDE).then_some(ColumnValue::Number(x))
        }
        (ColumnRead::Bool, b't') => cursor.literal("true").map(|()| ColumnValue::Number(1.0)),
        (ColumnRead::Bool, b'f') => cursor.literal("false").map(|()| ColumnValue::Number(0.0)),
        (ColumnRead::Category, b'"') => cursor.string().map(ColumnValue::Category),
        (ColumnRead::Time, b'"') => {
            let text = cursor.string()?;
            Field::JsonStr(text)
                .timestamp_ms("")
                .ok()
                .map(ColumnValue::Time)
        }
        (ColumnRead::Time, b'0'..=b'9') => {
            let number = flat_json::number_value(cursor.number()?)?;
            Field::Json(&number)
                .timestamp_ms("")
                .ok()
                .map(ColumnValue::Time)
        }
        _ => None,
    }
}

/// Reads the partition id: a string that is not blank, or an integer, as
/// [`crate::event::assemble`] takes them.
#[inline(always)]
fn partition(cursor: &mut Cursor<'_>) -> Option<(SmolStr, bool)> {
    match cursor.peek()? {
        b'"' => {
            let id = cursor.string()?;
            // A blank id is refused the general way.
            let first = id.as_bytes().first()?;
            first.is_ascii_graphic().then(|| (SmolStr::from(id), false))
        }
        b'0'..=b'9' => {
            let number = flat_json::number_value(cursor.number()?)?;
            let id = partition_id(&number)?;
            Some((SmolStr::from(id.as_ref()), true))
        }
        _ => None,
    }
}

/// Reads the `event_id` as [`crate::event::assemble`] keeps it: a string as text, a null as
/// none, any other plain value as JSON.
fn event_id(cursor: &mut Cursor<'_>) -> Option<Option<EventId>> {
    if cursor.peek()? == b'"' {
        return cursor.string().map(|id| Some(EventId::Text(id.into())));
    }
    let value = match cursor.value()? {
        crate::event::Slot::Json(value) => value,
        _ => return None,
    };
    Some((!value.is_null()).then_some(EventId::Json(value)))
}

/// Only for the differential test: whether the direct path takes `bytes`.
#[cfg(test)]
pub(super) fn takes(bytes: &[u8], partition_column: &str, encoder: &FeatureEncoder) -> bool {
    decode(bytes, partition_column, encoder, Vec::new()).is_ok()
}
