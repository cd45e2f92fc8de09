//! Decoding a bundle datum written with this version's schema straight from its Avro binary
//! encoding into the bundle's records, without apache-avro's generic `Value` tree.
//!
//! The generic path builds a `Value` for every number of every model: for a million stores
//! that is about 40 million values, gigabytes of memory and seconds of CPU, on the control
//! thread of a daemon that is swapping bundles. This decoder follows `schemas/bundle.avsc`
//! field by field instead (Avro's binary encoding: zig-zag varints, little-endian doubles,
//! length-prefixed strings and bytes, arrays in counted blocks, unions by branch index), and
//! is used only when the file's writer schema is exactly ours; files written with any other
//! schema go through apache-avro and schema resolution as before.
//!
//! Every length is checked against the bytes left before anything is allocated for it, so a
//! hostile datum costs no more memory than its own size.

use super::{BundleRecord, FeatureRecord, ModelRecord, SpecRecord, TreesRecord};

/// A cursor over one datum's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

type Result<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(format!(
                "the datum ends at byte {} where {n} more bytes were expected",
                self.b.len()
            ));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn long(&mut self) -> Result<i64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.take(1)?[0];
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(format!(
            "a varint at byte {} is longer than 64 bits",
            self.pos
        ))
    }

    fn int(&mut self) -> Result<i32> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("{v} does not fit an Avro int"))
    }

    fn double(&mut self) -> Result<f64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    fn len(&mut self) -> Result<usize> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| format!("a negative length {n}"))?;
        if n > self.left() {
            return Err(format!(
                "a length of {n} bytes at byte {} runs past the end of the datum",
                self.pos
            ));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let at = self.pos;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| format!("the string at byte {at} is not UTF-8"))
    }

    /// A union of null and something: true when the branch is the something.
    fn present(&mut self) -> Result<bool> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            i => Err(format!("union branch {i} at byte {}", self.pos)),
        }
    }

    /// An array: `item` once per element, across its blocks. Each element takes at least
    /// `min_item_bytes`, which bounds what is reserved for a block by the bytes left.
    fn array<T>(
        &mut self,
        min_item_bytes: usize,
        mut item: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(out);
            }
            if count < 0 {
                count = count
                    .checked_neg()
                    .ok_or("an array block of i64::MIN items")?;
                self.long()?; // the block's size in bytes
            }
            let count = usize::try_from(count).map_err(|_| "an array block too large")?;
            if count.saturating_mul(min_item_bytes.max(1)) > self.left() {
                return Err(format!(
                    "an array block of {count} items at byte {} runs past the end of the datum",
                    self.pos
                ));
            }
            out.reserve(count);
            for _ in 0..count {
                out.push(item(self)?);
            }
        }
    }
}

/// Decodes one `Bundle` datum written with `schemas/bundle.avsc`; the whole datum must be used.
pub(super) fn bundle_record(datum: &[u8]) -> Result<BundleRecord> {
    let mut c = Cursor { b: datum, pos: 0 };
    let record = BundleRecord {
        format: c.int()?,
        version: c.string()?,
        base_version: if c.present()? {
            Some(c.string()?)
        } else {
            None
        },
        created_at: c.long()?,
        spec: spec(&mut c)?,
        feature_names: c.array(1, Cursor::string)?,
        rows_used: c.long()?,
        rows_rejected: c.long()?,
        fallback: if c.present()? {
            Some(model(&mut c)?)
        } else {
            None
        },
        // partition (≥1 byte), rows (1), rmse (8), intercept (8), coefficients (1), trees (1)
        partitions: c.array(20, model)?,
    };
    if c.left() != 0 {
        return Err(format!("{} bytes follow the Bundle datum", c.left()));
    }
    Ok(record)
}

fn spec(c: &mut Cursor<'_>) -> Result<SpecRecord> {
    Ok(SpecRecord {
        partition_column: c.string()?,
        target: c.string()?,
        model: c.string()?,
        alpha: if c.present()? {
            Some(c.double()?)
        } else {
            None
        },
        min_rows: c.long()?,
        features: c.array(3, |c| {
            Ok(FeatureRecord {
                column: c.string()?,
                kind: c.string()?,
                categories: c.array(1, Cursor::string)?,
            })
        })?,
    })
}

fn model(c: &mut Cursor<'_>) -> Result<ModelRecord> {
    Ok(ModelRecord {
        partition: c.string()?,
        rows: c.long()?,
        rmse: c.double()?,
        intercept: c.double()?,
        coefficients: c.array(8, Cursor::double)?,
        trees: if c.present()? {
            Some(TreesRecord {
                objective: c.string()?,
                base_score: c.double()?,
                roots: c.bytes()?,
                split_feature: c.bytes()?,
                threshold: c.bytes()?,
                left_child: c.bytes()?,
                right_child: c.bytes()?,
                default_left: c.bytes()?,
                leaf_value: c.bytes()?,
            })
        } else {
            None
        },
    })
}
