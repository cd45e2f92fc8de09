//! Avro object container files (`.avro`), the file form of Avro records: `predict --format
//! avro` reads events from one and writes predictions to another.
//!
//! Only the framing of the file lives here (header, metadata, blocks, sync markers, the null
//! and deflate codecs); the datums inside are decoded by the same [`super::avro::Plan`] as
//! Kafka records, so a file and a topic decode alike.

use apache_avro::Schema;

/// The largest decompressed block accepted.
const MAX_BLOCK: usize = 256 << 20;
/// Records per written block.
const BLOCK_RECORDS: usize = 1000;

/// The blocks of a container file.
#[derive(Debug)]
pub struct Container {
    /// The writer schema from the header.
    pub schema: Schema,
    /// Each block's datums, concatenated (decompressed), with its record count.
    pub blocks: Vec<(u64, Vec<u8>)>,
}

struct Bytes<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("a length overflows")?;
        let s = self.b.get(self.pos..end).ok_or("the file is truncated")?;
        self.pos = end;
        Ok(s)
    }

    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err("a varint longer than 64 bits".into())
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("a negative length {n}"))
    }
}

/// Checks that a container file's header holds a schema apache-avro can parse without
/// panicking (see [`super::avro::parse_schema`]), before apache-avro's own reader sees it.
pub fn check_header(file: &[u8]) -> Result<(), String> {
    writer_schema(file).map(|_| ())
}

/// The writer schema in a container file's header, checked as [`check_header`] does.
pub fn writer_schema(file: &[u8]) -> Result<Schema, String> {
    read_header(file).map(|(schema, ..)| schema)
}

/// Reads a container file.
pub fn read(file: &[u8]) -> Result<Container, String> {
    read_limited(file, MAX_BLOCK)
}

/// Reads a container file whose blocks may decompress to at most `max_block` bytes each.
pub fn read_limited(file: &[u8], max_block: usize) -> Result<Container, String> {
    let (schema, codec, sync, pos) = read_header(file)?;
    let mut b = Bytes { b: file, pos };
    let mut blocks = Vec::new();
    while b.pos < file.len() {
        let count = b.long()?;
        let count = u64::try_from(count).map_err(|_| format!("a block of {count} records"))?;
        let size = b.len()?;
        let data = b.take(size)?;
        if b.take(16)? != sync {
            return Err(format!(
                "a block ending at byte {} has the wrong sync marker",
                b.pos
            ));
        }
        let data = match codec.as_str() {
            "null" => data.to_vec(),
            "deflate" => miniz_oxide::inflate::decompress_to_vec_with_limit(data, max_block)
                .map_err(|e| format!("a deflate block does not inflate: {e:?}"))?,
            other => {
                return Err(format!(
                    "codec {other:?} is not supported (write the file with codec null or deflate)"
                ))
            }
        };
        blocks.push((count, data));
    }
    Ok(Container { schema, blocks })
}

/// Schema, codec, sync marker and where the blocks start.
fn read_header(file: &[u8]) -> Result<(Schema, String, &[u8], usize), String> {
    let mut b = Bytes { b: file, pos: 0 };
    if b.take(4).ok() != Some(b"Obj\x01") {
        return Err("not an Avro object container file (no Obj\\x01 header)".into());
    }
    let mut schema = None;
    let mut codec = "null".to_owned();
    loop {
        let mut count = b.long()?;
        if count == 0 {
            break;
        }
        if count < 0 {
            count = count.checked_neg().ok_or("a bad metadata count")?;
            b.long()?;
        }
        for _ in 0..count {
            let key = b.len()?;
            let key = String::from_utf8_lossy(b.take(key)?).into_owned();
            let value = b.len()?;
            let value = b.take(value)?;
            match key.as_str() {
                "avro.schema" => schema = Some(String::from_utf8_lossy(value).into_owned()),
                "avro.codec" => codec = String::from_utf8_lossy(value).into_owned(),
                _ => {}
            }
        }
    }
    let schema = schema.ok_or("the header has no avro.schema")?;
    let schema = super::avro::parse_schema(&schema).map_err(|e| format!("its schema: {e}"))?;
    let sync = b.take(16)?;
    Ok((schema, codec, sync, b.pos))
}

/// Writes datums into a container file with the null codec.
pub struct ContainerWriter {
    out: Vec<u8>,
    sync: [u8; 16],
    block: Vec<u8>,
    count: usize,
}

impl ContainerWriter {
    /// Starts a file of records of `schema`.
    pub fn new(schema: &Schema) -> Self {
        let mut out = b"Obj\x01".to_vec();
        let text = schema.canonical_form();
        super::avro::write_long(&mut out, 2);
        super::avro::write_bytes(&mut out, b"avro.schema");
        super::avro::write_bytes(&mut out, text.as_bytes());
        super::avro::write_bytes(&mut out, b"avro.codec");
        super::avro::write_bytes(&mut out, b"null");
        super::avro::write_long(&mut out, 0);
        let seed = crate::clock::now_ms() as u64;
        let mut sync = [0u8; 16];
        for (i, s) in sync.iter_mut().enumerate() {
            *s = (seed.rotate_left(i as u32 * 5) ^ (0x9e37_79b9_7f4a_7c15u64 >> i)) as u8;
        }
        out.extend_from_slice(&sync);
        ContainerWriter {
            out,
            sync,
            block: Vec::new(),
            count: 0,
        }
    }

    /// The buffer the next datum is appended to; call [`ContainerWriter::end_datum`] after.
    pub fn datum(&mut self) -> &mut Vec<u8> {
        &mut self.block
    }

    /// Ends the datum just appended.
    pub fn end_datum(&mut self) {
        self.count += 1;
        if self.count >= BLOCK_RECORDS {
            self.flush_block();
        }
    }

    fn flush_block(&mut self) {
        if self.count == 0 {
            return;
        }
        super::avro::write_long(&mut self.out, self.count as i64);
        super::avro::write_bytes(&mut self.out, &self.block);
        self.out.extend_from_slice(&self.sync);
        self.block.clear();
        self.count = 0;
    }

    /// The file's bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush_block();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_apache_avro_writes_read_back_and_ours_read_in_apache_avro() {
        use apache_avro::types::Value as A;
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[{"name":"a","type":"long"}]}"#,
        )
        .unwrap();
        let mut w = apache_avro::Writer::with_codec(
            &schema,
            Vec::new(),
            apache_avro::Codec::Deflate(Default::default()),
        );
        for i in 0..3 {
            w.append(A::Record(vec![("a".into(), A::Long(i))])).unwrap();
        }
        let file = w.into_inner().unwrap();
        let c = read(&file).unwrap();
        assert_eq!(c.blocks.iter().map(|b| b.0).sum::<u64>(), 3);
        assert_eq!(c.blocks[0].1, vec![0, 2, 4]);

        let mut ours = ContainerWriter::new(&schema);
        ours.datum().push(6);
        ours.end_datum();
        let bytes = ours.finish();
        let back: Vec<_> = apache_avro::Reader::new(&bytes[..])
            .unwrap()
            .map(|v| v.unwrap())
            .collect();
        assert_eq!(back, vec![A::Record(vec![("a".into(), A::Long(3))])]);
        assert!(read(b"Obj\x01\x02").is_err());
    }
}
