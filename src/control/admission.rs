//! Whether a control record may be looked at further: what it claims is within the limits,
//! and, when keys are trusted, a manifest is signed by one of them.
//!
//! Everything here costs O(1) in what a record claims. A manifest may claim four billion
//! chunks or a size of 2^62 bytes in a few dozen bytes of JSON; such claims are refused here,
//! before [`super::assembly`] does anything in proportion to them. With `trusted_keys` set, the
//! signature is checked over the digest the manifest claims, before its chunks are even put
//! together; assembly then refuses chunks that do not hash to that digest, so a bundle is only
//! ever built from bytes a trusted key signed.
//!
//! This module never holds state and never allocates in proportion to a claim.

use super::message::Manifest;
use super::rejection::{clipped, Reason, Rejection};
use super::signing::TrustedKeys;

/// The longest publish id, version, base version or signer accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// An Ed25519 signature is 64 bytes, 128 hex digits.
const SIGNATURE_HEX_DIGITS: usize = 128;

/// The limits a control record is checked against, and the keys a manifest must be signed by.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// `[model] max_bundle_bytes`: the largest bundle file accepted.
    pub max_bundle_bytes: usize,
    /// `[model] trusted_keys`; empty accepts unsigned bundles.
    pub trusted: TrustedKeys,
}

/// Records a chunk range may hold per chunk of its own publish.
const MAX_RANGE_PER_CHUNK: i64 = 4;
/// Records a chunk range may hold beyond that.
const MAX_RANGE_SLACK: i64 = 1024;

impl Admission {
    /// Checks a manifest's claims and its signature; returns the digest it claims.
    ///
    /// Cheapest first: lengths of its texts, then the signature (when required), then the
    /// counts. So with trusted keys an unsigned manifest is refused as `unsigned` whatever it
    /// claims.
    pub fn manifest(&self, m: &Manifest) -> Result<[u8; 32], Rejection> {
        for (what, text) in [
            ("publish id", Some(m.publish_id.as_str())),
            ("version", Some(m.version.as_str())),
            ("base version", m.base_version.as_deref()),
            ("signer", m.signer.as_deref()),
        ] {
            name(what, text.unwrap_or_default())?;
        }
        let digest = m.digest().ok_or_else(|| {
            Rejection::new(
                Reason::Implausible,
                format!("sha256 {:?} is not 64 hex digits", clipped(&m.sha256, 80)),
            )
        })?;
        if self.trusted.required() {
            let Some(signature) = m.signature.as_deref() else {
                return Err(Rejection::new(
                    Reason::Unsigned,
                    "the bundle is not signed and [model] trusted_keys requires a signature (publish with --signing-key)",
                ));
            };
            if signature.len() != SIGNATURE_HEX_DIGITS {
                return Err(Rejection::new(
                    Reason::Signature,
                    format!(
                        "the signature has {} characters, an ed25519 signature in hex has {SIGNATURE_HEX_DIGITS}",
                        signature.len()
                    ),
                ));
            }
            self.trusted
                .verify(&digest, signature)
                .map_err(|e| Rejection::new(Reason::Signature, e))?;
        }
        if m.size > self.max_bundle_bytes as u64 {
            return Err(Rejection::new(
                Reason::Oversize,
                format!(
                    "{} bytes is more than [model] max_bundle_bytes = {}",
                    m.size, self.max_bundle_bytes
                ),
            ));
        }
        // Every chunk holds at least one byte, and a non-empty file has at least one chunk.
        if u64::from(m.chunks) > m.size || (m.chunks == 0) != (m.size == 0) {
            return Err(Rejection::new(
                Reason::Implausible,
                format!(
                    "{} chunks cannot carry {} bytes (every chunk holds at least one byte)",
                    m.chunks, m.size
                ),
            ));
        }
        if let Some(at) = &m.chunks_at {
            name("chunks topic", &at.topic)?;
            // Publishes running at once interleave their chunks; a range much longer than the
            // chunk count would only make the reader fetch records for nothing.
            let span = at.last_offset.checked_sub(at.first_offset).map(|d| d + 1);
            let most = i64::from(m.chunks) * MAX_RANGE_PER_CHUNK + MAX_RANGE_SLACK;
            if at.first_offset < 0
                || at.partition < 0
                || span.is_none_or(|s| s < i64::from(m.chunks) || s > most)
            {
                return Err(Rejection::new(
                    Reason::Implausible,
                    format!(
                        "chunks at offsets {}..={} of {}/{} cannot be {} chunks",
                        at.first_offset,
                        at.last_offset,
                        clipped(&at.topic, 80),
                        at.partition,
                        m.chunks
                    ),
                ));
            }
        }
        Ok(digest)
    }

    /// Checks a chunk's claims: its publish id, its index and its size.
    pub fn chunk(&self, publish_id: &str, index: u32, bytes: &[u8]) -> Result<(), Rejection> {
        name("publish id", publish_id)?;
        if bytes.is_empty() {
            return Err(Rejection::new(
                Reason::Implausible,
                format!("chunk {index} is empty; publish never sends an empty chunk"),
            ));
        }
        if bytes.len() > self.max_bundle_bytes {
            return Err(Rejection::new(
                Reason::Oversize,
                format!(
                    "chunk {index} holds {} bytes, more than [model] max_bundle_bytes = {}",
                    bytes.len(),
                    self.max_bundle_bytes
                ),
            ));
        }
        // Chunk i starts at byte i or later of a file of at most max_bundle_bytes.
        if index as usize >= self.max_bundle_bytes {
            return Err(Rejection::new(
                Reason::Implausible,
                format!(
                    "chunk index {index} is past [model] max_bundle_bytes = {}",
                    self.max_bundle_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Checks the version an `activate` command names.
    pub fn command_version(&self, version: &str) -> Result<(), Rejection> {
        name("version", version)
    }
}

fn name(what: &str, text: &str) -> Result<(), Rejection> {
    if text.len() > MAX_NAME_BYTES {
        return Err(Rejection::new(
            Reason::Implausible,
            format!(
                "the {what} is {} bytes long, more than {MAX_NAME_BYTES} (it starts {:?})",
                text.len(),
                clipped(text, 40)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::signing::{keygen, BundleSigner};

    fn manifest(size: u64, chunks: u32) -> Manifest {
        Manifest {
            publish_id: "p".into(),
            version: "v1".into(),
            base_version: None,
            size,
            chunks,
            sha256: "ab".repeat(32),
            signature: None,
            signer: None,
            activate: true,
            published_at_ms: 0,
            chunks_at: None,
        }
    }

    fn open(max: usize) -> Admission {
        Admission {
            max_bundle_bytes: max,
            trusted: TrustedKeys::default(),
        }
    }

    fn reason(r: Result<impl std::fmt::Debug, Rejection>) -> Reason {
        r.expect_err("refused").reason
    }

    #[test]
    fn four_billion_chunks_for_ten_bytes_are_implausible() {
        let a = open(64 << 20);
        assert_eq!(
            reason(a.manifest(&manifest(10, u32::MAX))),
            Reason::Implausible
        );
        assert_eq!(reason(a.manifest(&manifest(10, 0))), Reason::Implausible);
        assert_eq!(reason(a.manifest(&manifest(0, 1))), Reason::Implausible);
        assert_eq!(a.manifest(&manifest(10, 10)), Ok([0xab; 32]));
        assert_eq!(a.manifest(&manifest(10, 1)), Ok([0xab; 32]));
    }

    #[test]
    fn a_size_past_max_bundle_bytes_is_oversize() {
        let a = open(64 << 20);
        assert_eq!(reason(a.manifest(&manifest(1 << 62, 1))), Reason::Oversize);
        assert_eq!(
            reason(a.manifest(&manifest(u64::MAX, u32::MAX))),
            Reason::Oversize
        );
    }

    #[test]
    fn long_names_and_bad_digests_are_implausible() {
        let a = open(1 << 20);
        let mut m = manifest(10, 1);
        m.version = "v".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(reason(a.manifest(&m)), Reason::Implausible);
        let mut m = manifest(10, 1);
        m.sha256 = "x".repeat(1 << 20);
        let r = a.manifest(&m).expect_err("refused");
        assert_eq!(r.reason, Reason::Implausible);
        assert!(r.detail.len() < 200, "{}", r.detail);
        assert_eq!(
            reason(a.command_version(&"v".repeat(MAX_NAME_BYTES + 1))),
            Reason::Implausible
        );
    }

    #[test]
    fn chunks_that_no_bundle_within_the_limit_has_are_refused() {
        let a = open(1000);
        assert_eq!(a.chunk("p", 3, &[1; 10]), Ok(()));
        assert_eq!(reason(a.chunk("p", 0, &[])), Reason::Implausible);
        assert_eq!(reason(a.chunk("p", 1000, &[1])), Reason::Implausible);
        assert_eq!(reason(a.chunk("p", u32::MAX, &[1])), Reason::Implausible);
        assert_eq!(reason(a.chunk("p", 0, &[1; 1001])), Reason::Oversize);
        assert_eq!(
            reason(a.chunk(&"p".repeat(MAX_NAME_BYTES + 1), 0, &[1])),
            Reason::Implausible
        );
    }

    #[test]
    fn with_trusted_keys_only_a_manifest_signed_by_one_passes_whatever_it_claims() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (secret, _) = keygen(&dir.path().join("k")).expect("key");
        let signer = BundleSigner::load(&secret).expect("loaded");
        let a = Admission {
            max_bundle_bytes: 64 << 20,
            trusted: TrustedKeys::load(&[signer.public_hex()], dir.path()).expect("trusted"),
        };
        let hostile = manifest(10, u32::MAX);
        assert_eq!(reason(a.manifest(&hostile)), Reason::Unsigned);
        let mut forged = hostile.clone();
        forged.signature = Some("00".repeat(64));
        assert_eq!(reason(a.manifest(&forged)), Reason::Signature);
        forged.signature = Some("00".repeat(1 << 16));
        assert_eq!(reason(a.manifest(&forged)), Reason::Signature);
        let mut signed = manifest(10, 2);
        signed.signature = Some(signer.sign(&[0xab; 32]));
        assert_eq!(a.manifest(&signed), Ok([0xab; 32]));
        // A trusted signature does not make impossible counts possible.
        signed.chunks = u32::MAX;
        assert_eq!(reason(a.manifest(&signed)), Reason::Implausible);
    }
}
