//! The records of the control topic.
//!
//! A bundle travels as its chunks followed by one manifest; commands travel alone:
//!
//! ```text
//!  chunk 0 .. chunk n-1   header manymodel-control = chunk, manymodel-publish-id, manymodel-chunk = i
//!                         key = version, value = bytes i·chunk_size .. of the bundle file
//!  manifest               {"kind":"manifest","version":..,"base_version":..,"size":..,"chunks":n,
//!                          "sha256":..,"signature":..,"signer":..,"activate":true,"publish_id":..}
//!  activate               {"kind":"activate","version":"v7"}
//!  rollback               {"kind":"rollback"}
//! ```
//!
//! When the control topic has a chunks topic beside it (`<control topic>-chunks`), `publish`
//! writes the chunks there instead, and the manifest says where they are (`chunks_at`: topic,
//! Kafka partition, first and last offset). The control topic then holds only manifests and
//! commands, a few hundred bytes per publish, and a restarting daemon reads it whole but
//! fetches by offset only the chunks of the versions it will hold
//! ([`crate::control::replay`]).
//!
//! The manifest comes last, so when it arrives every chunk it counts has either arrived or is
//! missing for good: a truncated publish is rejected at once instead of waited for. The publish
//! id ties a manifest to its own chunks, so a version republished after a crash mid-publish
//! never mixes chunks of two attempts.

use rdkafka::message::{Header, OwnedHeaders};
use serde::{Deserialize, Serialize};

/// The header that marks a chunk record.
pub const KIND_HEADER: &str = "manymodel-control";
/// The header naming the publish a chunk belongs to.
pub const PUBLISH_HEADER: &str = "manymodel-publish-id";
/// The header holding a chunk's index, counted from 0, as decimal text.
pub const CHUNK_HEADER: &str = "manymodel-chunk";

/// A bundle's manifest: what its chunks must add up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Ties the manifest to the chunks of the same publish.
    pub publish_id: String,
    /// The bundle's version, as recorded inside the bundle.
    pub version: String,
    /// For a delta bundle, the version it builds on.
    #[serde(default)]
    pub base_version: Option<String>,
    /// The bundle file's size in bytes.
    pub size: u64,
    /// How many chunks carry it.
    pub chunks: u32,
    /// SHA-256 of the bundle file, lowercase hex.
    pub sha256: String,
    /// Ed25519 signature of the digest (see [`crate::control::signing`]), hex.
    #[serde(default)]
    pub signature: Option<String>,
    /// The public key that signed, hex; informative, the daemon tries its trusted keys.
    #[serde(default)]
    pub signer: Option<String>,
    /// Make the bundle active as soon as it is validated; otherwise it is only kept, for a
    /// later `control activate`.
    #[serde(default = "yes")]
    pub activate: bool,
    /// When it was published, epoch milliseconds.
    #[serde(default)]
    pub published_at_ms: i64,
    /// Where the chunks are, when they are not in the control topic itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks_at: Option<ChunkLocation>,
}

/// Where a publish's chunks are: a range of offsets of one Kafka partition. The range may
/// hold records of other publishes too (publishes running at once); only the chunks of the
/// manifest's publish id count. Not signed: a forged location can only point at bytes whose
/// SHA-256 does not match, which is refused like any corrupt bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkLocation {
    /// The chunks topic.
    pub topic: String,
    /// Its Kafka partition.
    pub partition: i32,
    /// The offset of the first record of the range.
    pub first_offset: i64,
    /// The offset of the last record of the range.
    pub last_offset: i64,
}

fn yes() -> bool {
    true
}

impl Manifest {
    /// The SHA-256 the manifest claims, if `sha256` is exactly 64 hex digits.
    pub fn digest(&self) -> Option<[u8; 32]> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut digest).ok()?;
        Some(digest)
    }
}

/// A record of the control topic that is not a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    /// A bundle's chunks are complete.
    Manifest(Manifest),
    /// Make a version the daemon already holds the active one.
    Activate {
        /// The version to activate.
        version: String,
    },
    /// Go back to the version that was active before the current one.
    Rollback,
}

/// One decoded control record.
#[derive(Debug, PartialEq, Eq)]
pub enum ControlRecord<'a> {
    /// A piece of a bundle file.
    Chunk {
        /// The publish it belongs to.
        publish_id: &'a str,
        /// Its position, from 0.
        index: u32,
        /// The bundle's version (the record key), for messages.
        version: &'a str,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// A manifest or a command.
    Message(ControlMessage),
}

/// Decodes a control record, given its key, a lookup of its headers by name and its payload;
/// the error says what is wrong with it.
pub fn parse<'a>(
    key: Option<&'a [u8]>,
    header: impl Fn(&str) -> Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
) -> Result<ControlRecord<'a>, String> {
    let payload = payload.unwrap_or_default();
    if header(KIND_HEADER) == Some(b"chunk".as_slice()) {
        let text = |name: &str| {
            header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or_else(|| format!("chunk without a {name} header"))
        };
        let publish_id = text(PUBLISH_HEADER)?;
        let index = text(CHUNK_HEADER)?
            .parse::<u32>()
            .map_err(|e| format!("chunk with a bad {CHUNK_HEADER} header: {e}"))?;
        let version = key.and_then(|k| std::str::from_utf8(k).ok()).unwrap_or("?");
        return Ok(ControlRecord::Chunk {
            publish_id,
            index,
            version,
            bytes: payload,
        });
    }
    serde_json::from_slice::<ControlMessage>(payload)
        .map(ControlRecord::Message)
        .map_err(|e| format!("neither a chunk nor a control message: {e}"))
}

/// The headers of chunk `index` of a publish.
pub fn chunk_headers(publish_id: &str, index: u32) -> OwnedHeaders {
    let index = index.to_string();
    OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: KIND_HEADER,
            value: Some("chunk"),
        })
        .insert(Header {
            key: PUBLISH_HEADER,
            value: Some(publish_id),
        })
        .insert(Header {
            key: CHUNK_HEADER,
            value: Some(index.as_str()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_as_tagged_json() {
        for m in [
            ControlMessage::Activate {
                version: "v1".into(),
            },
            ControlMessage::Rollback,
        ] {
            let text = serde_json::to_vec(&m).unwrap();
            assert_eq!(
                parse(None, |_| None, Some(&text)),
                Ok(ControlRecord::Message(m))
            );
        }
        assert_eq!(
            serde_json::to_string(&ControlMessage::Rollback).unwrap(),
            r#"{"kind":"rollback"}"#
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            br#"{"kind":"explode"}"#,
            b"[1,2]",
        ] {
            assert!(parse(None, |_| None, Some(bad)).is_err());
        }
    }

    #[test]
    fn negative_absent_or_oversized_counts_are_not_manifests() {
        let base = r#""kind":"manifest","publish_id":"p","version":"v","sha256":"00""#;
        for counts in [
            r#""size":10,"chunks":-1"#,
            r#""size":-10,"chunks":1"#,
            r#""size":10"#,
            r#""chunks":1"#,
            r#""size":10,"chunks":4294967296"#,
            r#""size":1e40,"chunks":1"#,
        ] {
            let text = format!("{{{base},{counts}}}");
            assert!(
                parse(None, |_| None, Some(text.as_bytes())).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn a_digest_is_exactly_64_hex_digits() {
        let mut m = Manifest {
            publish_id: "p".into(),
            version: "v".into(),
            base_version: None,
            size: 1,
            chunks: 1,
            sha256: "ab".repeat(32),
            signature: None,
            signer: None,
            activate: true,
            published_at_ms: 0,
            chunks_at: None,
        };
        assert_eq!(m.digest(), Some([0xab; 32]));
        for bad in [
            " ".to_owned() + &"ab".repeat(32),
            "ab".repeat(33),
            "zz".repeat(32),
        ] {
            m.sha256 = bad;
            assert_eq!(m.digest(), None);
        }
    }
}
