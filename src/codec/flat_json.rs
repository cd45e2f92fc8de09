//! The fast path for the JSON events nearly every record carries: one flat object whose
//! values are strings without escapes, numbers, booleans and nulls.
//!
//! [`fill_slots`] scans such an object by hand and fills the [`Slot`]s exactly as the
//! `serde_json` path in [`crate::codec::json`] would. It never reports an error: on anything
//! else (an escape, a control character, a nested array or object, a syntax error, invalid
//! UTF-8, trailing bytes) it answers `None` and the caller decodes the record with
//! `serde_json`, so every accepted record means what it always meant and every error message
//! is still `serde_json`'s.

use serde_json::{Number, Value};

use crate::event::{slot_of, Slot};
use crate::features::FeatureEncoder;

/// Fills `slots` from `bytes` if they are a flat JSON object this scanner reads; `None` (with
/// `slots` perhaps partly filled) if the record must go the general way.
///
/// A field scoring reads ([`slot_of`]) fills its slot, the last of repeated keys winning;
/// any other field's value is checked and skipped.
pub fn fill_slots<'a>(
    bytes: &'a [u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
    slots: &mut [Slot<'a>],
) -> Option<()> {
    walk_object(bytes, |key, cursor| {
        match slot_of(key, partition_column, encoder).and_then(|i| slots.get_mut(i)) {
            Some(slot) => *slot = cursor.value()?,
            None => cursor.skip_value()?,
        }
        Some(())
    })
}

/// Walks `bytes` as one flat JSON object: for each field, `on_field` gets its key and the
/// cursor at its value, and must read that value. `None` as soon as the text is not such an
/// object (or `on_field` answers `None`); keys are handed over in the record's order, so
/// the last of repeated keys comes last.
pub(super) fn walk_object<'a>(
    bytes: &'a [u8],
    mut on_field: impl FnMut(&'a str, &mut Cursor<'a>) -> Option<()>,
) -> Option<()> {
    // Valid UTF-8 throughout, so every string between two ASCII quotes is a `&str`.
    let mut cursor = Cursor::new(bytes)?;
    cursor.ws();
    cursor.eat(b'{')?;
    cursor.ws();
    if cursor.eat(b'}').is_none() {
        loop {
            let key = cursor.string()?;
            cursor.ws();
            cursor.eat(b':')?;
            cursor.ws();
            on_field(key, &mut cursor)?;
            cursor.ws();
            match cursor.next()? {
                b',' => cursor.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    cursor.ws();
    cursor.at_end().then_some(())
}

/// A position in the record's text. Every method that reads something answers `None` when
/// the text there is not what this scanner reads.
pub(super) struct Cursor<'a> {
    /// The whole record.
    text: &'a str,
    /// The byte offset of the next unread byte.
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// The start of `bytes`, if they are valid UTF-8 throughout (so that every string
    /// between two ASCII quotes is a `&str`).
    pub(super) fn new(bytes: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        Some(Cursor { text, pos: 0 })
    }

    /// The next byte, without reading it.
    pub(super) fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Reads the next byte.
    pub(super) fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    /// Reads the next byte if it is `expected`.
    pub(super) fn eat(&mut self, expected: u8) -> Option<()> {
        (self.peek()? == expected).then(|| self.pos += 1)
    }

    /// Whether the whole record has been read.
    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    /// Skips JSON whitespace: space, tab, line feed and carriage return.
    pub(super) fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Reads a string without escapes or control characters, borrowed from the record.
    pub(super) fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let end = start + first_special(self.text.as_bytes().get(start..)?)?;
        self.pos = end;
        // Not an escape or a control character: the closing quote.
        self.eat(b'"')?;
        self.text.get(start..end)
    }

    /// Reads `word` (`true`, `false` or `null`).
    pub(super) fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        (self.text.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// Reads a number spelled as the JSON grammar allows,
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, and answers its text. What follows
    /// it (`01`, `1.5.`) is the caller's to check: only whitespace, `,` or `}` may.
    pub(super) fn number(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digit()?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digit()?;
            self.digits();
        }
        self.text.get(start..self.pos)
    }

    /// Reads one decimal digit.
    fn digit(&mut self) -> Option<()> {
        self.next()?.is_ascii_digit().then_some(())
    }

    /// Reads any number of decimal digits.
    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// Reads a value scoring may read, as the slot `serde_json` would fill with it.
    pub(super) fn value(&mut self) -> Option<Slot<'a>> {
        Some(match self.peek()? {
            b'"' => Slot::Str(self.string()?.into()),
            b'-' | b'0'..=b'9' => Slot::Json(number_value(self.number()?)?),
            b't' => self
                .literal("true")
                .map(|()| Slot::Json(Value::Bool(true)))?,
            b'f' => self
                .literal("false")
                .map(|()| Slot::Json(Value::Bool(false)))?,
            b'n' => self.literal("null").map(|()| Slot::Json(Value::Null))?,
            _ => return None,
        })
    }

    /// Reads a value no one reads: it is only checked.
    pub(super) fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => None,
        }
    }
}

/// The offset of the first byte in `bytes` that ends or interrupts a plain string: `"`, `\`
/// or a control character, the bytes a JSON string must escape ([`crate::prediction`] writes
/// a string without them as it is).
///
/// Eight bytes at a time: with `ONES` the byte 0x01 in every lane, `(v - ONES) & !v & HIGH`
/// has the high bit set of each byte of `v` that is zero (so `v ^ ONES * b'"'` finds quotes),
/// `(v - 0x20 * ONES) & !v & HIGH` of each byte below 0x20. A borrow can only set bits above
/// the first such byte, so the lowest bit set is the first special byte.
pub(crate) fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let v = u64::from_le_bytes(chunk.try_into().ok()?);
        let special = zero_bytes(v ^ (ONES * u64::from(b'"')))
            | zero_bytes(v ^ (ONES * u64::from(b'\\')))
            | (v.wrapping_sub(ONES * 0x20) & !v & HIGH);
        if special != 0 {
            return Some(at + special.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = bytes.get(at..)?;
    let len = tail
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + len)
}

/// Powers of ten that are exact as `f64`, the same constants as the first entries of
/// `serde_json`'s own table.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The [`Value`] `serde_json` makes of `text`, a number [`Cursor::number`] read: worked out
/// here when [`exact_number`] can, else by `serde_json` itself (`None` if it finds the number
/// out of range).
pub(super) fn number_value(text: &str) -> Option<Value> {
    exact_number(text).or_else(|| serde_json::from_str(text).ok())
}

/// The [`Value`] `serde_json` makes of `text`, for the numbers nearly every event has
/// ([`exact`]); `None` for any other.
fn exact_number(text: &str) -> Option<Value> {
    Some(match exact(text)? {
        Exact::Integer {
            negative: false,
            magnitude,
        } => Value::from(magnitude),
        Exact::Integer {
            negative: true,
            magnitude,
        } => {
            // As serde_json: -0 and integers below i64::MIN are floats.
            let neg = (magnitude as i64).wrapping_neg();
            if neg >= 0 {
                float(-(magnitude as f64))
            } else {
                Value::from(neg)
            }
        }
        Exact::Float(x) => float(x),
    })
}

/// The `f64` that `serde_json`'s `as_f64` answers for the number `text`, as [`exact_number`]
/// reads it; `None` where that does not. For an integer it is the nearest double, of either
/// sign alike (-0 included), which is what `as_f64` of serde_json's integer or float is.
pub(super) fn exact_f64(text: &str) -> Option<f64> {
    Some(match exact(text)? {
        Exact::Integer {
            negative,
            magnitude,
        } => {
            let x = magnitude as f64;
            if negative {
                -x
            } else {
                x
            }
        }
        Exact::Float(x) => x,
    })
}

/// A number as [`exact`] reads it.
enum Exact {
    /// Written without a fraction or an exponent.
    Integer { negative: bool, magnitude: u64 },
    /// Anything else, already rounded as `serde_json` rounds it.
    Float(f64),
}

/// A number's value worked out as `serde_json` works it out.
///
/// `serde_json` (built without `float_roundtrip` or `arbitrary_precision`, see Cargo.lock)
/// reads every digit of a number into one `u64` significand, counts the power of ten, and
/// makes a float of them with one multiplication or division by a power of ten from its
/// table. While the significand fits a `u64` and the power of ten is within ±22 this does the
/// very same operations; for anything else (more digits, a bigger exponent) it answers `None`.
fn exact(text: &str) -> Option<Exact> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let bytes = unsigned.as_bytes();
    let mut significand: u64 = 0;
    // Minus the number of digits after the decimal point.
    let mut exponent: i32 = 0;
    let mut fraction = false;
    let mut at = 0;
    while let Some(&b) = bytes.get(at) {
        match b {
            b'0'..=b'9' => {
                significand = significand
                    .checked_mul(10)?
                    .checked_add(u64::from(b - b'0'))?;
                exponent = exponent.checked_sub(i32::from(fraction))?;
            }
            b'.' if !fraction => fraction = true,
            _ => break,
        }
        at += 1;
    }
    // Past the `e` or `E`, if there is one: the written power of ten.
    let written = match bytes.get(at) {
        None => None,
        Some(b'e' | b'E') => Some(unsigned.get(at + 1..)?.parse::<i32>().ok()?),
        Some(_) => return None,
    };
    if !fraction && written.is_none() {
        return Some(Exact::Integer {
            negative,
            magnitude: significand,
        });
    }
    let exponent = exponent.checked_add(written.unwrap_or(0))?;
    let pow = *POW10.get(exponent.unsigned_abs() as usize)?;
    let magnitude = if exponent >= 0 {
        significand as f64 * pow
    } else {
        significand as f64 / pow
    };
    Some(Exact::Float(if negative { -magnitude } else { magnitude }))
}

/// A float as `serde_json`'s value visitor keeps it: a non-finite one (which no number's text
/// gives, here or there) as null. The serde_json path ([`super::json`]) uses it too.
pub(super) fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::json::tests::encoder;
    use crate::event::slot_count;
    use std::borrow::Cow;

    fn scan(text: &str) -> Option<Vec<Slot<'_>>> {
        let encoder = encoder();
        let mut slots = vec![Slot::Absent; slot_count(&encoder)];
        fill_slots(text.as_bytes(), "store_id", &encoder, &mut slots).map(|()| slots)
    }

    #[test]
    fn a_flat_event_fills_its_slots_borrowed_and_skips_the_rest() {
        let slots = scan(" {\"store_id\" : \"s-0042\",\t\"extra\":\"x\",\"price\":9.5} \n")
            .map(|s| format!("{s:?}"));
        assert_eq!(
            slots.as_deref(),
            Some(r#"[Str("s-0042"), Absent, Json(Number(9.5))]"#)
        );
        let text = r#"{"event_id":null,"store_id":"a","store_id":"b","price":-3,"x":true}"#;
        let slots = scan(text).unwrap();
        assert!(matches!(&slots[0], Slot::Str(Cow::Borrowed("b"))));
        assert_eq!(slots[1], Slot::Json(Value::Null));
        assert_eq!(slots[2], Slot::Json(Value::from(-3)));
        assert_eq!(scan("{}"), Some(vec![Slot::Absent; 3]));
    }

    #[test]
    fn anything_unusual_is_left_to_serde_json() {
        for text in [
            r#"{"store_id":"a\"b"}"#,
            r#"{"st\u006fre_id":"a"}"#,
            "{\"store_id\":\"a\tb\"}",
            r#"{"store_id":"a","price":[1]}"#,
            r#"{"store_id":"a","x":{}}"#,
            r#"{"price":01}"#,
            r#"{"price":.5}"#,
            r#"{"price":1.}"#,
            r#"{"price":+1}"#,
            r#"{"price":1e}"#,
            r#"{"price":-}"#,
            r#"{"price":NaN}"#,
            r#"{"price":1e999}"#,
            r#"{"price":tru}"#,
            r#"{"price":1,}"#,
            r#"{"price":1} x"#,
            r#"{"price":1"#,
            r#"{"price" 1}"#,
            r#"{,}"#,
            "{\"x\":\"\u{0}\"}",
            "",
            "[]",
        ] {
            assert_eq!(scan(text), None, "{text}");
        }
        // Invalid UTF-8 anywhere: in a value read or skipped, in a key, outside the strings,
        // a sequence cut short by the closing quote.
        let encoder = encoder();
        for invalid_utf8 in [
            &b"{\"x\":\"\xff\"}"[..],
            b"{\"store_id\":\"a\xc3\"}",
            b"{\"store_id\":\"\xe2\x82\"}",
            b"{\"\xc3\xa9\xff\":1}",
            b"{\"price\":1\xff}",
            b"\xef\xbb\xbf{\"price\":1}",
        ] {
            let mut slots = vec![Slot::Absent; 3];
            assert_eq!(
                fill_slots(invalid_utf8, "store_id", &encoder, &mut slots),
                None,
                "{invalid_utf8:?}"
            );
            assert!(serde_json::from_slice::<Value>(invalid_utf8).is_err());
        }
        // Valid multi-byte text in keys and values is read as it is.
        let slots = scan(r#"{"store_id":"Zürich-€1","straße":"ü"}"#).unwrap();
        assert_eq!(slots[0], Slot::Str("Zürich-€1".into()));
    }

    #[test]
    fn the_first_special_byte_is_found_at_every_offset() {
        let naive = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        };
        let fillers = [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xc3, 0xff];
        let specials = [b'"', b'\\', 0x00, 0x01, 0x0a, 0x1f];
        for len in 0..40 {
            for i in 0..fillers.len() {
                let mut bytes: Vec<u8> = (0..len)
                    .map(|k| fillers[(i + k * 7) % fillers.len()])
                    .collect();
                assert_eq!(first_special(&bytes), naive(&bytes), "{bytes:?}");
                for at in 0..len {
                    for later in [at, (at + 3).min(len - 1), len - 1] {
                        let saved = bytes.clone();
                        bytes[later] = specials[(later + i) % specials.len()];
                        bytes[at] = specials[(at + len) % specials.len()];
                        assert_eq!(first_special(&bytes), naive(&bytes), "{bytes:?}");
                        bytes = saved;
                    }
                }
            }
        }
    }

    #[test]
    fn numbers_are_the_values_serde_json_makes() {
        for text in [
            "0",
            "-0",
            "7",
            "-7",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "-9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "0.1",
            "-0.0",
            "9.5",
            "2.675",
            "1.7976931348623157e308",
            "5e-324",
            "1e-400",
            "0e99999999999",
            "1e22",
            "1e23",
            "1.5E-22",
            "123456789.123456789e-5",
            "0.30000000000000004",
            "12345678901234567.5",
            "9007199254740993.0",
            "-1.25e+3",
            "1e-22",
            "4.9e-23",
        ] {
            let ours = number_value(text).map(|v| format!("{v:?}"));
            let theirs = serde_json::from_str::<Value>(text)
                .ok()
                .map(|v| format!("{v:?}"));
            assert_eq!(ours, theirs, "{text}");
        }
    }
}
