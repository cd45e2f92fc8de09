//! JSON events: one object per record (or per line of a JSONL file).
//!
//! Only the fields scoring reads are materialised (the partition column, `event_id` and the
//! feature columns); every other field is skipped without allocating. Keys are matched to
//! their slot as they are read, without being copied, and a string value stays borrowed from
//! the record unless it has escapes. The usual event, a flat object of plain values of the
//! kinds its features read, is decoded straight into the model's inputs
//! (`super::direct_json`); another flat object without escapes is scanned by hand
//! ([`super::flat_json`]); `serde_json` reads everything else and names every fault. What the
//! fields mean is decided in [`crate::event::assemble`], never here (the direct path only
//! takes what it would accept, and the differential test below holds it to that).

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{direct_json, flat_json};
use crate::error::{RecordError, RecordErrorKind};
use crate::event::{assemble, slot_count, slot_of, Event, Slot};
use crate::features::FeatureEncoder;

/// Events with up to this many slots keep them on the stack.
const INLINE_SLOTS: usize = 16;

/// Decodes one JSON event: an object holding the partition column and the features.
///
/// The usual event is decoded straight into inputs (`direct_json`); another flat object
/// without escapes is scanned by hand ([`flat_json`]); anything else goes through
/// `serde_json`, which also names what is wrong with a record that is not JSON.
pub fn decode_json(
    bytes: &[u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
) -> Result<Event, RecordError> {
    decode_json_into(bytes, partition_column, encoder, Vec::new())
}

/// [`decode_json`] writing the event's inputs into `inputs`, a recycled buffer
/// ([`crate::spares`]).
pub fn decode_json_into(
    bytes: &[u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
    inputs: Vec<f64>,
) -> Result<Event, RecordError> {
    let inputs = match direct_json::decode(bytes, partition_column, encoder, inputs) {
        Ok(event) => return Ok(event),
        Err(inputs) => inputs,
    };
    let mut inputs = Some(inputs);
    with_slots(slot_count(encoder), |slots| {
        flat_json::fill_slots(bytes, partition_column, encoder, slots)?;
        let inputs = inputs.take().unwrap_or_default();
        Some(assemble(slots, partition_column, encoder, inputs))
    })
    .unwrap_or_else(|| {
        let inputs = inputs.take().unwrap_or_default();
        decode_with_serde(bytes, partition_column, encoder, inputs)
    })
}

/// Decodes one JSON event with `serde_json`: any JSON, and the error message of any fault.
fn decode_with_serde(
    bytes: &[u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
    inputs: Vec<f64>,
) -> Result<Event, RecordError> {
    with_slots(slot_count(encoder), |slots| {
        fill_slots_with_serde(bytes, partition_column, encoder, slots)?;
        assemble(slots, partition_column, encoder, inputs)
    })
}

/// Runs `f` on `count` empty slots, kept on the stack when there are few.
fn with_slots<'de, R>(count: usize, f: impl FnOnce(&mut [Slot<'de>]) -> R) -> R {
    let mut inline: [Slot<'de>; INLINE_SLOTS];
    let mut heap: Vec<Slot<'de>>;
    let slots: &mut [Slot<'de>] = if count <= INLINE_SLOTS {
        inline = Default::default();
        &mut inline[..count]
    } else {
        heap = vec![Slot::Absent; count];
        &mut heap
    };
    f(slots)
}

/// Fills `slots` with the fields scoring reads, parsing `bytes` with `serde_json`.
fn fill_slots_with_serde<'de>(
    bytes: &'de [u8],
    partition_column: &str,
    encoder: &FeatureEncoder,
    slots: &mut [Slot<'de>],
) -> Result<(), RecordError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wanted = Wanted {
        partition_column,
        encoder,
        slots,
    };
    de.deserialize_map(wanted)
        .and_then(|()| de.end())
        .map_err(|e| {
            RecordError::new(
                RecordErrorKind::InvalidJson,
                format!("not a JSON event object: {e}"),
            )
        })
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
        Ok(Slot::Json(flat_json::float(x)))
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

/// Test helpers shared with the other codecs' and the prediction's tests.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::{FeatureKind, FeatureSpec};

    /// An encoder of one numeric feature, `price`.
    pub(crate) fn encoder() -> FeatureEncoder {
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
        assert!(e.partition_was_number);
        assert_eq!(e.event_id, Some(crate::event::EventId::from("ev-1")));
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
        assemble(&mut slots, "store_id", encoder, Vec::new())
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
                // Into a recycled buffer still holding another event's inputs: the same.
                let dirty = vec![7.0; checked % 50];
                let again = decode_json_into(event.as_bytes(), "store_id", &encoder, dirty);
                assert_eq!(again, got, "{event}");
                checked += 1;
            }
        }
    }

    /// A seeded xorshift generator: the same cases on every run.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }

        pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }

        fn digits(&mut self, len: usize) -> String {
            (0..len)
                .map(|_| char::from(b'0' + self.below(10) as u8))
                .collect()
        }
    }

    /// A JSON value as bytes, and whether it is one the flat scanner must read itself.
    struct Generated {
        bytes: Vec<u8>,
        plain: bool,
    }

    fn plain(text: impl Into<String>) -> Generated {
        Generated {
            bytes: text.into().into_bytes(),
            plain: true,
        }
    }

    fn unusual(bytes: impl Into<Vec<u8>>) -> Generated {
        Generated {
            bytes: bytes.into(),
            plain: false,
        }
    }

    fn plain_string(rng: &mut Rng) -> Generated {
        const TEXTS: &[&str] = &[
            "",
            " ",
            "s-0042",
            "S1",
            "7",
            "sunny",
            "rainy",
            "é",
            "日本語",
            "🙂",
            "true",
            "null",
            "12.5",
            "a/b",
            "del\u{7f}",
            "2025-03-01T12:00:00Z",
            "2024-03-05T14:30:00.25+02:00",
            "2025-02-30T00:00:00Z",
            "1709641800000",
        ];
        if rng.chance(30) {
            let len = rng.below(12);
            let word: String = (0..len)
                .map(|_| char::from(rng.pick(b"abcxyz0189-_ .:/")))
                .collect();
            return plain(format!("\"{word}\""));
        }
        plain(format!("\"{}\"", rng.pick(TEXTS)))
    }

    fn unusual_string(rng: &mut Rng) -> Generated {
        const ESCAPED: &[&str] = &[
            r#""rain\n""#,
            r#""\u00e9""#,
            r#""a\"b""#,
            r#""\\""#,
            r#""\/""#,
            r#""S\u0031""#,
            r#""sunn\u0079""#,
            r#""\ud83d\ude42""#,
            r#""\ud800""#,
            r#""\x""#,
            r#""\""#,
            "\"a\tb\"",
            "\"\u{0}\"",
            "\"unterminated",
        ];
        const INVALID_UTF8: &[&[u8]] =
            &[b"\"\xff\"", b"\"\xc3\"", b"\"\xed\xa0\x80\"", b"\"a\x80b\""];
        if rng.chance(25) {
            unusual(rng.pick(INVALID_UTF8))
        } else {
            unusual(rng.pick(ESCAPED))
        }
    }

    /// A number spelled as JSON allows; one out of range of `f64` (which serde_json names
    /// when a wanted field has it) is not plain.
    fn number(rng: &mut Rng) -> Generated {
        let text = number_text(rng);
        Generated {
            plain: serde_json::from_str::<Value>(&text).is_ok(),
            bytes: text.into_bytes(),
        }
    }

    /// Edge cases, random integers, and decimals with up to 44 digits and any exponent.
    fn number_text(rng: &mut Rng) -> String {
        const EDGES: &[&str] = &[
            "0",
            "-0",
            "1",
            "-1",
            "7",
            "-3",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "2.5",
            "-0.0",
            "0.1",
            "9.5",
            "1e300",
            "1e999",
            "-1e999",
            "5e-324",
            "1e-400",
            "1.7976931348623157e308",
            "0e99999999999",
            "1E22",
            "1e23",
            "1709641800000",
            "1.0",
            "0.30000000000000004",
        ];
        match rng.below(4) {
            0 => rng.pick(EDGES).to_owned(),
            1 if rng.chance(50) => rng.next().to_string(),
            1 => (rng.next() as i64).to_string(),
            _ => {
                let mut text = String::new();
                if rng.chance(40) {
                    text.push('-');
                }
                if rng.chance(30) {
                    text.push('0');
                } else {
                    text.push(char::from(b'1' + rng.below(9) as u8));
                    let len = rng.below(22);
                    text += &rng.digits(len);
                }
                if rng.chance(70) {
                    let len = 1 + rng.below(22);
                    text = format!("{text}.{}", rng.digits(len));
                }
                if rng.chance(30) {
                    text.push(rng.pick(&['e', 'E']));
                    text += rng.pick(&["", "+", "-"]);
                    let power = match rng.below(10) {
                        0 => 300 + rng.below(100),
                        1 => rng.next() as usize,
                        _ => rng.below(30),
                    };
                    let zeros = "0".repeat(rng.below(3));
                    text += &format!("{zeros}{power}");
                }
                text
            }
        }
    }

    fn unusual_value(rng: &mut Rng) -> Generated {
        const VALUES: &[&str] = &[
            "[]",
            "{}",
            "[1,\"x\"]",
            r#"{"a":[]}"#,
            r#"[{"store_id":"x"}]"#,
            "01",
            "-01",
            "00",
            ".5",
            "1.",
            "+1",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e",
            "1e+",
            "-",
            "1.e5",
            "0x10",
            "1.5.2",
            "tru",
            "nul",
            "True",
            "'x'",
            "",
            "1 2",
            "truex",
            "--1",
        ];
        if rng.chance(40) {
            unusual_string(rng)
        } else {
            unusual(rng.pick(VALUES))
        }
    }

    fn any_value(rng: &mut Rng) -> Generated {
        match rng.below(10) {
            0..=2 => plain_string(rng),
            3..=5 => number(rng),
            6 => plain(rng.pick(&["true", "false", "null"])),
            _ if rng.chance(50) => unusual_value(rng),
            _ => number(rng),
        }
    }

    /// A value of the kind `key`'s feature reads, most of the time.
    fn fitting_value(rng: &mut Rng, key: &str) -> Generated {
        if rng.chance(6) {
            return any_value(rng);
        }
        match key {
            "store_id" if rng.chance(30) => plain(rng.below(1000).to_string()),
            "store_id" | "event_id" => plain(format!("\"s-{:04}\"", rng.below(10_000))),
            "promo" => plain(rng.pick(&["true", "false", "0", "1"])),
            "weather" => plain(rng.pick(&[r#""sunny""#, r#""rainy""#, r#""é""#, r#""fog""#])),
            "ts" if rng.chance(20) => plain(format!("{}", 1_700_000_000_000 + rng.below(1 << 30))),
            "ts" => plain(format!(
                "\"2025-{:02}-{:02}T{:02}:{:02}:00Z\"",
                1 + rng.below(12),
                1 + rng.below(28),
                rng.below(24),
                rng.below(60)
            )),
            _ => number(rng),
        }
    }

    fn whitespace(rng: &mut Rng) -> &'static str {
        if rng.chance(70) {
            ""
        } else {
            rng.pick(&[" ", "\t", "\n", "\r", "  ", " \n\t", "\r\n"])
        }
    }

    /// A flat object of random fields (or mostly the ones a good event has), sometimes
    /// corrupted; and whether the flat scanner must read it itself.
    fn generated_event(rng: &mut Rng, wanted: &[&str]) -> Generated {
        const OTHER_KEYS: &[&str] = &["extra", "", "é", "store_id ", "Price", "expected_sales"];
        const ESCAPED_KEYS: &[&str] = &[r#"pr\u0069ce"#, r#"store\u005fid"#, r#"a\nb"#];
        let mut fields: Vec<(String, Generated)> = Vec::new();
        if rng.chance(70) {
            for &key in wanted {
                if rng.chance(96) {
                    fields.push((key.to_owned(), fitting_value(rng, key)));
                }
            }
        }
        for _ in 0..rng.below(if fields.is_empty() { 8 } else { 4 }) {
            let key = match rng.below(10) {
                0..=4 => rng.pick(wanted),
                5..=8 => rng.pick(OTHER_KEYS),
                _ => rng.pick(ESCAPED_KEYS),
            };
            let value = fitting_value(rng, key);
            let at = rng.below(fields.len() + 1);
            fields.insert(at, (key.to_owned(), value));
        }
        let mut plain = true;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(whitespace(rng).as_bytes());
        bytes.push(b'{');
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            plain &= value.plain && !key.contains('\\');
            for part in [
                whitespace(rng).as_bytes(),
                format!("\"{key}\"").as_bytes(),
                whitespace(rng).as_bytes(),
                b":",
                whitespace(rng).as_bytes(),
                &value.bytes,
                whitespace(rng).as_bytes(),
            ] {
                bytes.extend_from_slice(part);
            }
        }
        if fields.is_empty() {
            bytes.extend_from_slice(whitespace(rng).as_bytes());
        }
        bytes.push(b'}');
        bytes.extend_from_slice(whitespace(rng).as_bytes());
        if rng.chance(25) {
            corrupt(rng, &mut bytes);
            plain = false;
        }
        Generated { bytes, plain }
    }

    /// Breaks `bytes` the ways records arrive broken (or, now and then, leaves them good).
    fn corrupt(rng: &mut Rng, bytes: &mut Vec<u8>) {
        const BYTES: &[u8] = b",}{\"\\:x0 []\x00\x1f\xff\xc3\x80";
        let at = rng.below(bytes.len() + 1);
        match rng.below(7) {
            0 => bytes.truncate(at),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 => bytes.insert(at, rng.pick(BYTES)),
            3 if at < bytes.len() => bytes[at] = rng.pick(BYTES),
            4 => {
                let tail: &[u8] = rng.pick(&[b",", b"}", b"x", b" {}", b"\x00", b"\xff"]);
                bytes.extend_from_slice(tail);
            }
            5 => {
                let close = bytes.iter().rposition(|&b| b == b'}').unwrap_or(0);
                let comma = bytes.iter().position(|&b| b == b',').unwrap_or(close);
                bytes.insert(if rng.chance(50) { close } else { comma }, b',');
            }
            _ => {
                let head: &[u8] = rng.pick(&[b"\xef\xbb\xbf", b"[", b"x", b"{"]);
                bytes.splice(0..0, head.iter().copied());
            }
        }
    }

    /// Runs `cases` generated records through the flat scanner and through serde_json.
    fn differential(encoder: &FeatureEncoder, wanted: &[&str], seed: u64, cases: usize) {
        let mut rng = Rng(seed);
        let (mut handled, mut plain, mut good, mut direct) = (0, 0, 0, 0);
        for _ in 0..cases {
            let case = generated_event(&mut rng, wanted);
            let bytes = &case.bytes[..];
            let shown = String::from_utf8_lossy(bytes);
            let new = decode_json(bytes, "store_id", encoder);
            let old = decode_with_serde(bytes, "store_id", encoder, Vec::new());
            assert_eq!(new, old, "{shown}");
            // Debug tells -0.0 from 0.0, which `==` does not.
            assert_eq!(format!("{new:?}"), format!("{old:?}"), "{shown}");

            let mut fast = vec![Slot::Absent; slot_count(encoder)];
            let scanned = flat_json::fill_slots(bytes, "store_id", encoder, &mut fast);
            if scanned.is_some() {
                let mut slow = vec![Slot::Absent; slot_count(encoder)];
                let parsed = fill_slots_with_serde(bytes, "store_id", encoder, &mut slow);
                assert_eq!(parsed, Ok(()), "{shown}");
                assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{shown}");
                handled += 1;
            }
            if case.plain {
                assert!(scanned.is_some(), "the flat scanner passed over {shown}");
                plain += 1;
            }
            good += usize::from(new.is_ok());
            if direct_json::takes(bytes, "store_id", encoder) {
                assert!(
                    new.is_ok(),
                    "the direct path took a refused record: {shown}"
                );
                direct += 1;
            }
        }
        // The generator makes every kind of record in numbers, good events among them.
        assert!(plain > cases / 4, "{plain} plain of {cases}");
        assert!(handled >= plain, "{handled} handled of {cases}");
        assert!(good > cases / 20, "{good} good events of {cases}");
        // The direct path reads most good events (not those with a bool spelled 1, a
        // number as text, a null...) when the encoder is narrow enough for it.
        if encoder.columns().len() <= 16 {
            assert!(direct > good / 10, "{direct} taken directly of {good} good");
        } else {
            assert_eq!(direct, 0, "too wide for the direct path");
        }
        assert!(cases - handled > cases / 5, "{handled} handled of {cases}");
    }

    #[test]
    fn the_flat_scanner_decodes_every_generated_record_as_serde_json_does() {
        let f = |column: &str, kind, categories: Option<&[&str]>| FeatureSpec {
            column: column.into(),
            kind,
            categories: categories.map(|c| c.iter().map(|&c| c.into()).collect()),
        };
        let mut features = vec![
            f("price", FeatureKind::Numeric, None),
            f("temperature", FeatureKind::Numeric, None),
            f("promo", FeatureKind::Bool, None),
            f(
                "weather",
                FeatureKind::OneHot,
                Some(&["sunny", "rainy", "é"]),
            ),
            f("ts", FeatureKind::HourOfDay, None),
            f("ts", FeatureKind::DayOfWeek, None),
            f("ts", FeatureKind::Month, None),
        ];
        let mut wanted = vec![
            "store_id",
            "event_id",
            "price",
            "temperature",
            "promo",
            "weather",
            "ts",
        ];
        let encoder = FeatureEncoder::new(&features).unwrap();
        differential(&encoder, &wanted, 0x9e37_79b9_7f4a_7c15, 20_000);

        // More slots than fit on the stack.
        let wide: Vec<String> = (0..12).map(|i| format!("f{i}")).collect();
        for column in &wide {
            features.push(f(column, FeatureKind::Numeric, None));
            wanted.push(column);
        }
        let encoder = FeatureEncoder::new(&features).unwrap();
        assert!(slot_count(&encoder) > INLINE_SLOTS);
        differential(&encoder, &wanted, 0x2545_f491_4f6c_dd1d, 5_000);
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
