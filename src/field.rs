//! One field of a record, as text (a CSV cell), as JSON (an event's value) or as a value of a
//! binary record (Avro, Parquet), and the parsers that turn it into numbers, bools, timestamps
//! and categories.
//!
//! Training reads CSV or Parquet and serving reads JSON or Avro; all go through these
//! functions, so a value that trains also scores, and the accepted spellings are the same
//! everywhere: a bool is `true`/`false` or `1`/`0`, a timestamp is RFC 3339 text or integer
//! epoch milliseconds, and time features are taken in UTC. A typed value (a Parquet integer or
//! bool) reads as its JSON twin does.

mod utc;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::Value;

use crate::error::{RecordError, RecordErrorKind};

/// Earliest accepted timestamp: 1900-01-01T00:00:00Z in epoch milliseconds.
pub const MIN_TIMESTAMP_MS: i64 = -2_208_988_800_000;
/// First rejected timestamp: 2200-01-01T00:00:00Z in epoch milliseconds.
pub const MAX_TIMESTAMP_MS: i64 = 7_258_118_400_000;

/// A borrowed field value.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    /// A CSV cell.
    Text(&'a str),
    /// A JSON value of an event. Avro strings, enums, booleans, ints and longs arrive as these
    /// too, so a field reads the same whichever format carried it.
    Json(&'a Value),
    /// A JSON string of an event, borrowed from the record rather than built into a
    /// [`Value`]: reads exactly as [`Field::Json`] of the same string does.
    JsonStr(&'a str),
    /// An Avro `float` or `double`, which unlike JSON can be NaN or infinite.
    Float(f64),
    /// A typed integer (a Parquet column of integers; a timestamp or date column as epoch
    /// milliseconds): read as the JSON integer of the same value.
    Int(i64),
    /// A typed unsigned integer too large for [`Field::Int`].
    UInt(u64),
    /// A typed bool: read as the JSON bool.
    Bool(bool),
    /// A value of a kind no feature reads (an Avro record, array, map, bytes or fixed), named.
    Other(&'static str),
}

fn wrong_type(column: &str, expected: &str, got: &Field<'_>) -> RecordError {
    RecordError::new(
        RecordErrorKind::WrongType,
        format!("{column}: expected {expected}, got {}", got.describe()),
    )
}

/// The largest magnitude a number read for a feature may have (and, for linear models, a
/// coefficient or intercept: [`crate::model::linear::MAX_WEIGHT`]). With both bounds a linear
/// prediction is finite: `|b| + Σ|w·x| <= 1e150 + n·1e300`, far below `f64::MAX` (1.8e308)
/// for any number of inputs a bundle can hold, so a finite input never becomes a prediction
/// of infinity (which JSON cannot even spell).
pub const MAX_MAGNITUDE: f64 = 1e150;

impl Field<'_> {
    /// A short rendering of the value for error messages, cut at 40 characters.
    pub fn describe(&self) -> String {
        let text = match self {
            Field::Text(s) => format!("{s:?}"),
            Field::Json(v) => v.to_string(),
            Field::JsonStr(s) => Value::from(*s).to_string(),
            Field::Float(x) => x.to_string(),
            Field::Int(i) => i.to_string(),
            Field::UInt(u) => u.to_string(),
            Field::Bool(b) => b.to_string(),
            Field::Other(kind) => (*kind).to_owned(),
        };
        if text.chars().count() > 40 {
            let cut: String = text.chars().take(40).collect();
            format!("{cut}...")
        } else {
            text
        }
    }

    /// True for an empty CSV cell or a JSON null: the value is absent.
    pub fn is_missing(&self) -> bool {
        match self {
            Field::Text(s) => s.trim().is_empty(),
            Field::Json(v) => v.is_null(),
            Field::JsonStr(_)
            | Field::Float(_)
            | Field::Int(_)
            | Field::UInt(_)
            | Field::Bool(_)
            | Field::Other(_) => false,
        }
    }

    /// A finite number.
    pub fn number(&self, column: &str) -> Result<f64, RecordError> {
        let x = match self {
            Field::Text(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| wrong_type(column, "a number", self))?,
            Field::Json(Value::Number(n)) => n
                .as_f64()
                .ok_or_else(|| wrong_type(column, "a number", self))?,
            Field::Float(x) => *x,
            // As serde_json's `as_f64` of the same integer: the nearest double.
            Field::Int(i) => *i as f64,
            Field::UInt(u) => *u as f64,
            Field::Json(_) | Field::JsonStr(_) | Field::Bool(_) | Field::Other(_) => {
                return Err(wrong_type(column, "a number", self))
            }
        };
        if x.abs() <= MAX_MAGNITUDE {
            Ok(x)
        } else if x.is_finite() {
            Err(RecordError::new(
                RecordErrorKind::NotFinite,
                format!(
                    "{column}: {} is beyond ±1e150, where a prediction could overflow to infinity",
                    self.describe()
                ),
            ))
        } else {
            Err(RecordError::new(
                RecordErrorKind::NotFinite,
                format!("{column}: {} is not a finite number", self.describe()),
            ))
        }
    }

    /// A bool: `true`/`false` or `1`/`0`, as JSON bools, JSON numbers or text.
    pub fn boolean(&self, column: &str) -> Result<bool, RecordError> {
        let text = match self {
            Field::Json(Value::Bool(b)) => return Ok(*b),
            Field::Json(Value::Number(n)) => match n.as_f64() {
                Some(1.0) => return Ok(true),
                Some(0.0) => return Ok(false),
                _ => return Err(wrong_type(column, "a bool (true/false or 1/0)", self)),
            },
            Field::Float(x) if *x == 1.0 => return Ok(true),
            Field::Float(x) if *x == 0.0 => return Ok(false),
            Field::Bool(b) => return Ok(*b),
            Field::Int(1) | Field::UInt(1) => return Ok(true),
            Field::Int(0) | Field::UInt(0) => return Ok(false),
            Field::Json(Value::String(s)) => s.as_str(),
            Field::JsonStr(s) | Field::Text(s) => s,
            Field::Json(_) | Field::Float(_) | Field::Int(_) | Field::UInt(_) | Field::Other(_) => {
                return Err(wrong_type(column, "a bool (true/false or 1/0)", self))
            }
        };
        match text.trim() {
            "true" | "1" | "TRUE" | "True" => Ok(true),
            "false" | "0" | "FALSE" | "False" => Ok(false),
            _ => Err(wrong_type(column, "a bool (true/false or 1/0)", self)),
        }
    }

    /// A timestamp in epoch milliseconds: RFC 3339 text or an integer of epoch milliseconds.
    pub fn timestamp_ms(&self, column: &str) -> Result<i64, RecordError> {
        let bad = || {
            RecordError::new(
                RecordErrorKind::BadTimestamp,
                format!(
                    "{column}: {} is neither RFC 3339 text nor integer epoch milliseconds",
                    self.describe()
                ),
            )
        };
        let ms = match self {
            Field::Json(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(ms), _) => ms,
                (None, Some(x)) if x.fract() == 0.0 && x.is_finite() => {
                    return Err(out_of_range(column, self))
                }
                _ => return Err(bad()),
            },
            Field::Json(Value::String(s)) => parse_timestamp_text(s).ok_or_else(bad)?,
            Field::JsonStr(s) | Field::Text(s) => parse_timestamp_text(s).ok_or_else(bad)?,
            // A whole double is epoch milliseconds; `as` saturates, so huge ones fail the range.
            Field::Float(x) if x.fract() == 0.0 && x.is_finite() => *x as i64,
            Field::Float(_) => return Err(bad()),
            Field::Int(ms) => *ms,
            Field::UInt(_) => return Err(out_of_range(column, self)),
            Field::Json(_) | Field::Bool(_) | Field::Other(_) => {
                return Err(wrong_type(column, "a timestamp", self))
            }
        };
        if (MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&ms) {
            Ok(ms)
        } else {
            Err(out_of_range(column, self))
        }
    }

    /// A category label: text, or a JSON string, integer or bool rendered as text, so that the
    /// CSV cell `3` and the JSON number `3` name the same category.
    pub fn category(&self, column: &str) -> Result<std::borrow::Cow<'_, str>, RecordError> {
        match self {
            Field::Text(s) => Ok(std::borrow::Cow::Borrowed(s.trim())),
            Field::Json(Value::String(s)) => Ok(std::borrow::Cow::Borrowed(s.as_str())),
            Field::JsonStr(s) => Ok(std::borrow::Cow::Borrowed(s)),
            Field::Json(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                Ok(std::borrow::Cow::Owned(n.to_string()))
            }
            Field::Json(Value::Bool(b)) => Ok(std::borrow::Cow::Owned(b.to_string())),
            Field::Int(i) => Ok(std::borrow::Cow::Owned(i.to_string())),
            Field::UInt(u) => Ok(std::borrow::Cow::Owned(u.to_string())),
            Field::Bool(b) => Ok(std::borrow::Cow::Borrowed(if *b {
                "true"
            } else {
                "false"
            })),
            Field::Json(_) | Field::Float(_) | Field::Other(_) => {
                Err(wrong_type(column, "a category label", self))
            }
        }
    }
}

fn out_of_range(column: &str, field: &Field<'_>) -> RecordError {
    RecordError::new(
        RecordErrorKind::TimestampOutOfRange,
        format!(
            "{column}: {} is outside 1900-01-01 .. 2200-01-01",
            field.describe()
        ),
    )
}

/// RFC 3339 text, or a run of digits (with an optional minus) read as epoch milliseconds.
fn parse_timestamp_text(s: &str) -> Option<i64> {
    let s = s.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok().or(Some(i64::MAX));
    }
    // Nearly every event writes its time in UTC with a `Z`: read that without chrono.
    if let Some(ms) = utc::parse_rfc3339_zulu(s) {
        return Some(ms);
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_millis())
}

/// The UTC calendar parts of a timestamp that time features use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcParts {
    /// Hour of day, 0..=23.
    pub hour: u32,
    /// Day of week, Monday = 0 .. Sunday = 6.
    pub weekday: u32,
    /// Month, January = 0 .. December = 11.
    pub month0: u32,
}

/// The UTC hour of day (0..=23) of epoch milliseconds.
pub fn utc_hour(ms: i64) -> u32 {
    utc::hour(ms)
}

/// The UTC day of week (Monday = 0 .. Sunday = 6) of epoch milliseconds.
pub fn utc_weekday(ms: i64) -> u32 {
    utc::weekday(ms)
}

/// Splits epoch milliseconds (already range-checked) into UTC parts.
pub fn utc_parts(ms: i64) -> UtcParts {
    if let Some(parts) = utc::parts(ms) {
        return parts;
    }
    let t = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    UtcParts {
        hour: t.hour(),
        weekday: t.weekday().num_days_from_monday(),
        month0: t.month0(),
    }
}

/// The text form of a partition id: JSON strings as they are, integers in decimal; anything
/// else is not a partition id.
pub fn partition_id(value: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match value {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            Some(std::borrow::Cow::Owned(n.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Past ±1e150 a number is refused as `not_finite`, whatever its spelling, so that no
    /// linear prediction overflows; up to it, it is read as it is.
    #[test]
    fn numbers_beyond_the_magnitude_bound_are_refused() {
        for ok in ["1e150", "-1e150", "0", "123.5"] {
            let x: f64 = ok.parse().unwrap();
            assert_eq!(Field::Text(ok).number("price").unwrap(), x);
            assert_eq!(Field::Json(&json!(x)).number("price").unwrap(), x);
        }
        for big in ["1e308", "-1.5e151", "1.7976931348623157e308"] {
            let x: f64 = big.parse().unwrap();
            for field in [Field::Text(big), Field::Float(x), Field::Json(&json!(x))] {
                let e = field.number("price").unwrap_err();
                assert_eq!(e.kind, RecordErrorKind::NotFinite, "{big}");
                assert!(
                    e.message.contains("price") && e.message.contains("1e150"),
                    "{e}"
                );
            }
        }
        let e = Field::Float(f64::INFINITY).number("price").unwrap_err();
        assert!(e.message.contains("not a finite number"), "{e}");
        // The largest model a bundle may hold times the largest inputs stays finite.
        let m = crate::model::linear::LinearModel {
            intercept: -MAX_MAGNITUDE,
            coefficients: vec![-MAX_MAGNITUDE; 100_000].into(),
        };
        assert!(m.is_bounded());
        assert!(m.predict(&vec![MAX_MAGNITUDE; 100_000]).is_finite());
        let over = crate::model::linear::LinearModel {
            intercept: 0.0,
            coefficients: vec![1.01e150].into(),
        };
        assert!(!over.is_bounded());
    }

    #[test]
    fn timestamps_parse_as_rfc3339_or_epoch_millis_in_utc() {
        let rfc = Field::Text("2024-03-05T14:30:00+02:00");
        let ms = rfc.timestamp_ms("ts").unwrap();
        assert_eq!(ms, 1_709_641_800_000);
        assert_eq!(Field::Text("1709641800000").timestamp_ms("ts").unwrap(), ms);
        let j = json!(1_709_641_800_000i64);
        assert_eq!(Field::Json(&j).timestamp_ms("ts").unwrap(), ms);
        let j = json!("2024-03-05T12:30:00Z");
        assert_eq!(Field::Json(&j).timestamp_ms("ts").unwrap(), ms);
        let parts = utc_parts(ms);
        assert_eq!(parts.hour, 12, "taken in UTC, not in the +02:00 offset");
        assert_eq!(parts.weekday, 1, "2024-03-05 is a Tuesday");
        assert_eq!(parts.month0, 2);
    }

    #[test]
    fn bad_and_out_of_range_timestamps_are_told_apart() {
        let e = Field::Text("yesterday").timestamp_ms("ts").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::BadTimestamp);
        let e = Field::Text("99999999999999999999")
            .timestamp_ms("ts")
            .unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::TimestampOutOfRange);
        let e = Field::Text("2500-01-01T00:00:00Z")
            .timestamp_ms("ts")
            .unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::TimestampOutOfRange);
        let j = json!(1e30);
        let e = Field::Json(&j).timestamp_ms("ts").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::TimestampOutOfRange);
        let j = json!(true);
        let e = Field::Json(&j).timestamp_ms("ts").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::WrongType);
    }

    #[test]
    fn bools_accept_true_false_and_one_zero_in_json_and_csv() {
        for (text, want) in [("true", true), ("false", false), ("1", true), ("0", false)] {
            assert_eq!(Field::Text(text).boolean("promo").unwrap(), want);
        }
        for (v, want) in [(json!(true), true), (json!(0), false), (json!(1), true)] {
            assert_eq!(Field::Json(&v).boolean("promo").unwrap(), want);
        }
        let v = json!(2);
        assert_eq!(
            Field::Json(&v).boolean("promo").unwrap_err().kind,
            RecordErrorKind::WrongType
        );
        assert!(Field::Text("yes").boolean("promo").is_err());
    }

    #[test]
    fn numbers_reject_text_in_json_and_non_finite_values() {
        let v = json!("12.5");
        assert_eq!(
            Field::Json(&v).number("price").unwrap_err().kind,
            RecordErrorKind::WrongType
        );
        assert_eq!(Field::Text(" 12.5 ").number("price").unwrap(), 12.5);
        assert_eq!(
            Field::Text("NaN").number("price").unwrap_err().kind,
            RecordErrorKind::NotFinite
        );
        assert_eq!(
            Field::Text("inf").number("price").unwrap_err().kind,
            RecordErrorKind::NotFinite
        );
    }

    #[test]
    fn typed_values_read_as_their_json_twins() {
        for (typed, json) in [
            (Field::Int(3), json!(3)),
            (Field::Int(-1_709_641_800_000), json!(-1_709_641_800_000i64)),
            (Field::UInt(u64::MAX), json!(u64::MAX)),
            (Field::Bool(true), json!(true)),
            (Field::Int(1), json!(1)),
        ] {
            let twin = Field::Json(&json);
            assert_eq!(typed.number("x"), twin.number("x"), "{json}");
            assert_eq!(typed.boolean("x"), twin.boolean("x"), "{json}");
            assert_eq!(
                typed.timestamp_ms("x").map_err(|e| e.kind),
                twin.timestamp_ms("x").map_err(|e| e.kind),
                "{json}"
            );
            assert_eq!(typed.category("x"), twin.category("x"), "{json}");
            assert!(!typed.is_missing());
        }
    }

    #[test]
    fn borrowed_json_strings_read_as_their_value_twins() {
        let long = "x".repeat(60);
        for text in [
            "",
            " ",
            "true",
            " 1 ",
            "FALSE",
            "12.5",
            "NaN",
            "1709641800000",
            "-5",
            "99999999999999999999",
            "2024-03-05T12:30:00Z",
            "2024-03-05T14:30:00+02:00",
            "2500-01-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "sunny",
            "quote \" and \\ and \n and é",
            long.as_str(),
        ] {
            let value = Value::from(text);
            let (borrowed, twin) = (Field::JsonStr(text), Field::Json(&value));
            assert_eq!(borrowed.describe(), twin.describe(), "{text:?}");
            assert_eq!(borrowed.is_missing(), twin.is_missing(), "{text:?}");
            assert_eq!(borrowed.number("x"), twin.number("x"), "{text:?}");
            assert_eq!(borrowed.boolean("x"), twin.boolean("x"), "{text:?}");
            assert_eq!(
                borrowed.timestamp_ms("x"),
                twin.timestamp_ms("x"),
                "{text:?}"
            );
            assert_eq!(borrowed.category("x"), twin.category("x"), "{text:?}");
        }
    }

    #[test]
    fn categories_and_partition_ids_read_integers_as_text() {
        let v = json!(3);
        assert_eq!(Field::Json(&v).category("c").unwrap(), "3");
        assert_eq!(partition_id(&json!(17)).unwrap(), "17");
        assert_eq!(partition_id(&json!("S1")).unwrap(), "S1");
        assert!(partition_id(&json!(1.5)).is_none());
        assert!(partition_id(&json!(null)).is_none());
    }
}
