//! UBJSON (Universal Binary JSON, as XGBoost writes with `save_model("model.ubj")`) decoded
//! into a [`serde_json::Value`], so one reader handles both of XGBoost's formats.
//!
//! Covers the whole draft-12 value set, including optimized containers (`$` type and `#`
//! count), which XGBoost uses for its per-node arrays. Numbers are big-endian.

use serde_json::{Map, Number, Value};

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 64;

/// Decodes one UBJSON document; trailing bytes are an error.
pub fn decode(bytes: &[u8]) -> Result<Value, String> {
    let mut r = Reader { bytes, pos: 0 };
    let v = r.value(None, 0)?;
    if r.pos != bytes.len() {
        return Err(format!(
            "not UBJSON: {} bytes left after the document",
            bytes.len() - r.pos
        ));
    }
    Ok(v)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("not UBJSON: truncated at byte {}", self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// An integer of the given marker.
    fn int(&mut self, marker: u8) -> Result<i64, String> {
        Ok(match marker {
            b'i' => i64::from(i8::from_be_bytes(self.array()?)),
            b'U' => i64::from(self.byte()?),
            b'I' => i64::from(i16::from_be_bytes(self.array()?)),
            b'l' => i64::from(i32::from_be_bytes(self.array()?)),
            b'L' => i64::from_be_bytes(self.array()?),
            m => {
                return Err(format!(
                    "not UBJSON: {:?} is not an integer type",
                    m as char
                ))
            }
        })
    }

    fn length(&mut self) -> Result<usize, String> {
        let marker = self.byte()?;
        let n = self.int(marker)?;
        usize::try_from(n)
            .ok()
            // No sane document counts more items than it has bytes; this bounds allocation.
            .filter(|&n| n <= self.bytes.len())
            .ok_or_else(|| format!("not UBJSON: bad length {n} at byte {}", self.pos))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.length()?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| format!("not UBJSON: a string is not UTF-8 at byte {}", self.pos))
    }

    /// A value whose type marker is `typed` (inside an optimized container) or read here.
    fn value(&mut self, typed: Option<u8>, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err("not UBJSON: nested too deeply".into());
        }
        let marker = match typed {
            Some(m) => m,
            None => loop {
                match self.byte()? {
                    b'N' => continue,
                    m => break m,
                }
            },
        };
        Ok(match marker {
            b'Z' => Value::Null,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' | b'U' | b'I' | b'l' | b'L' => Value::from(self.int(marker)?),
            b'd' => number(f64::from(f32::from_be_bytes(self.array()?))),
            b'D' => number(f64::from_be_bytes(self.array()?)),
            b'C' => Value::String((self.byte()? as char).to_string()),
            b'S' => Value::String(self.string()?),
            b'H' => {
                let s = self.string()?;
                s.parse::<f64>()
                    .map(number)
                    .map_err(|_| format!("not UBJSON: high-precision number {s:?}"))?
            }
            b'[' => Value::Array(self.container(b']', depth, |r, t, d| r.value(t, d))?),
            b'{' => {
                let pairs = self.container(b'}', depth, |r, t, d| {
                    let k = r.string()?;
                    Ok((k, r.value(t, d)?))
                })?;
                Value::Object(pairs.into_iter().collect::<Map<String, Value>>())
            }
            m => {
                return Err(format!(
                    "not UBJSON: unknown marker {:?} at byte {}",
                    m as char,
                    self.pos - 1
                ))
            }
        })
    }

    /// The items of an array or object, with the optional `$type` and `#count` header.
    fn container<T>(
        &mut self,
        end: u8,
        depth: usize,
        mut item: impl FnMut(&mut Self, Option<u8>, usize) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut typed = None;
        if self.bytes.get(self.pos) == Some(&b'$') {
            self.pos += 1;
            typed = Some(self.byte()?);
        }
        if self.bytes.get(self.pos) == Some(&b'#') {
            self.pos += 1;
            let n = self.length()?;
            let mut out = Vec::with_capacity(n.min(1 << 20));
            for _ in 0..n {
                out.push(item(self, typed, depth + 1)?);
            }
            return Ok(out);
        }
        if typed.is_some() {
            return Err("not UBJSON: a typed container without a count".into());
        }
        let mut out = Vec::new();
        loop {
            while self.bytes.get(self.pos) == Some(&b'N') {
                self.pos += 1;
            }
            if self.bytes.get(self.pos) == Some(&end) {
                self.pos += 1;
                return Ok(out);
            }
            out.push(item(self, None, depth + 1)?);
        }
    }
}

fn number(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xgboost_style_documents_decode() {
        // {"a": [$d#U2 1.5 -2.0], "b": "x", "c": [i1 T Z]}
        let mut doc = vec![b'{', b'U', 1, b'a', b'[', b'$', b'd', b'#', b'U', 2];
        doc.extend(1.5f32.to_be_bytes());
        doc.extend((-2.0f32).to_be_bytes());
        doc.extend([b'U', 1, b'b', b'S', b'U', 1, b'x']);
        doc.extend([b'U', 1, b'c', b'[', b'i', 1, b'T', b'Z', b']', b'}']);
        let v = decode(&doc).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": [1.5, -2.0], "b": "x", "c": [1, true, null]})
        );
        assert!(decode(&doc[..doc.len() - 1]).is_err());
        assert!(decode(b"{\"a\": 1}").is_err());
    }
}
