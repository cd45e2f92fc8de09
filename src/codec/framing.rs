//! How an Avro datum is framed in a Kafka record: which writer schema it names, and where the
//! datum starts. Owns the three framings' headers, reading and writing; never decodes a datum.

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::error::{RecordError, RecordErrorKind};

/// The framing of Avro records on Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Confluent's wire format: magic byte 0, the 4-byte big-endian schema id of the writer
    /// schema in the registry, then the datum.
    #[default]
    Confluent,
    /// Avro single-object encoding: C3 01, the 8-byte little-endian CRC-64-AVRO (Rabin)
    /// fingerprint of the writer schema, then the datum.
    SingleObject,
    /// The bare datum, written with the reader schema itself.
    Raw,
}

impl Framing {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Framing::Confluent => "confluent",
            Framing::SingleObject => "single_object",
            Framing::Raw => "raw",
        }
    }
}

/// The writer schema a framed record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriterRef {
    /// A schema registry id.
    Id(u32),
    /// A CRC-64-AVRO fingerprint.
    Fingerprint(u64),
    /// The reader schema (raw framing).
    Reader,
}

/// Splits a record into the writer schema it names and its datum.
pub fn split(framing: Framing, bytes: &[u8]) -> Result<(WriterRef, &[u8]), RecordError> {
    let short = |need: usize| {
        RecordError::new(
            RecordErrorKind::InvalidAvro,
            format!(
                "a record of {} bytes is too short for {} framing ({need} header bytes)",
                bytes.len(),
                framing.as_str()
            ),
        )
    };
    match framing {
        Framing::Raw => Ok((WriterRef::Reader, bytes)),
        Framing::Confluent => {
            match bytes.first() {
                None => return Err(short(5)),
                Some(0) => {}
                Some(b) => {
                    return Err(RecordError::new(
                        RecordErrorKind::WrongMagicByte,
                        format!("the record starts with byte {b:#04x}, not Confluent's magic byte 0: is the producer writing Avro with a Confluent serializer?"),
                    ))
                }
            }
            let id = bytes.get(1..5).ok_or_else(|| short(5))?;
            let id = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
            Ok((WriterRef::Id(id), &bytes[5..]))
        }
        Framing::SingleObject => {
            let magic = bytes.get(..2).ok_or_else(|| short(10))?;
            if magic != [0xC3, 0x01] {
                return Err(RecordError::new(
                    RecordErrorKind::WrongMagicByte,
                    format!(
                        "the record starts with {:#04x} {:#04x}, not the single-object marker C3 01",
                        magic[0], magic[1]
                    ),
                ));
            }
            let fp = bytes.get(2..10).ok_or_else(|| short(10))?;
            let mut le = [0; 8];
            le.copy_from_slice(fp);
            Ok((WriterRef::Fingerprint(u64::from_le_bytes(le)), &bytes[10..]))
        }
    }
}

/// The CRC-64-AVRO fingerprint of a schema's parsing canonical form.
pub fn fingerprint(schema: &Schema) -> u64 {
    let fp = schema.fingerprint::<Rabin>();
    let mut le = [0; 8];
    le.copy_from_slice(&fp.bytes[..8]);
    u64::from_le_bytes(le)
}

/// Appends the header of `framing` for a writer schema with this id and fingerprint.
pub fn write_header(buf: &mut Vec<u8>, framing: Framing, id: u32, fingerprint: u64) {
    match framing {
        Framing::Raw => {}
        Framing::Confluent => {
            buf.push(0);
            buf.extend_from_slice(&id.to_be_bytes());
        }
        Framing::SingleObject => {
            buf.extend_from_slice(&[0xC3, 0x01]);
            buf.extend_from_slice(&fingerprint.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_wrong_magic_is_named() {
        let mut buf = Vec::new();
        write_header(&mut buf, Framing::Confluent, 7, 0);
        buf.push(42);
        assert_eq!(
            split(Framing::Confluent, &buf).unwrap(),
            (WriterRef::Id(7), &[42u8][..])
        );
        let mut buf = Vec::new();
        write_header(&mut buf, Framing::SingleObject, 0, 0x0102_0304_0506_0708);
        assert_eq!(
            split(Framing::SingleObject, &buf).unwrap().0,
            WriterRef::Fingerprint(0x0102_0304_0506_0708)
        );
        let e = split(Framing::Confluent, b"{\"a\":1}").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::WrongMagicByte);
        let e = split(Framing::SingleObject, b"\x00\x01abcdefgh").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::WrongMagicByte);
        let e = split(Framing::Confluent, b"\x00\x01").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::InvalidAvro);
    }

    #[test]
    fn the_fingerprint_is_the_one_apache_avro_writes() {
        use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
        let s = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[{"name":"a","type":"long"}]}"#,
        )
        .unwrap();
        let header = RabinFingerprintHeader::from_schema(&s).build_header();
        let mut mine = Vec::new();
        write_header(&mut mine, Framing::SingleObject, 0, fingerprint(&s));
        assert_eq!(header, mine);
    }
}
