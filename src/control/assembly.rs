//! Putting a bundle file back together from its chunks.
//!
//! Chunks wait under their publish id until their manifest arrives; the manifest then takes
//! them, and the bytes are handed on only if the count, the size and the SHA-256 all match.
//! Pending chunks are bounded: past `max_bytes` the oldest unfinished publish is dropped (a
//! publisher that died mid-way leaves chunks that no manifest will ever claim).

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use super::message::Manifest;
use super::rejection::{Reason, Rejection};

/// One publish's chunks so far.
#[derive(Debug, Default)]
struct Pending {
    chunks: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
    /// Arrival order, to drop the oldest first.
    seq: u64,
}

/// A complete, checksummed bundle file.
#[derive(Debug)]
pub struct Assembled {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Its SHA-256.
    pub digest: [u8; 32],
}

/// Chunks waiting for their manifest.
#[derive(Debug)]
pub struct Assembler {
    pending: HashMap<String, Pending>,
    bytes: usize,
    max_bytes: usize,
    seq: u64,
}

impl Assembler {
    /// An assembler holding at most `max_bytes` of pending chunks.
    pub fn new(max_bytes: usize) -> Self {
        Assembler {
            pending: HashMap::new(),
            bytes: 0,
            max_bytes,
            seq: 0,
        }
    }

    /// Bytes of chunks waiting.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps one chunk; returns the publish ids dropped to stay within the budget.
    pub fn chunk(&mut self, publish_id: &str, index: u32, bytes: &[u8]) -> Vec<String> {
        self.seq += 1;
        let seq = self.seq;
        let p = self.pending.entry(publish_id.to_owned()).or_default();
        if p.chunks.is_empty() {
            p.seq = seq;
        }
        // A repeated chunk (a producer retry) replaces the earlier copy.
        if let Some(old) = p.chunks.insert(index, bytes.to_vec()) {
            p.bytes -= old.len();
            self.bytes -= old.len();
        }
        p.bytes += bytes.len();
        self.bytes += bytes.len();
        let mut dropped = Vec::new();
        while self.bytes > self.max_bytes {
            let Some(oldest) = self
                .pending
                .iter()
                .filter(|(id, _)| id.as_str() != publish_id)
                .min_by_key(|(_, p)| p.seq)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some(p) = self.pending.remove(&oldest) {
                self.bytes -= p.bytes;
            }
            dropped.push(oldest);
        }
        dropped
    }

    /// Takes the chunks of `manifest`'s publish and checks them against it.
    pub fn finish(&mut self, manifest: &Manifest) -> Result<Assembled, Rejection> {
        let p = self
            .pending
            .remove(&manifest.publish_id)
            .unwrap_or_default();
        self.bytes -= p.bytes;
        if manifest.size > self.max_bytes as u64 {
            return Err(Rejection::new(
                Reason::Oversize,
                format!(
                    "{} bytes is more than [model] max_bundle_bytes = {}",
                    manifest.size, self.max_bytes
                ),
            ));
        }
        let missing: Vec<u32> = (0..manifest.chunks)
            .filter(|i| !p.chunks.contains_key(i))
            .collect();
        if !missing.is_empty() {
            let shown: Vec<String> = missing.iter().take(5).map(u32::to_string).collect();
            return Err(Rejection::new(
                Reason::Incomplete,
                format!(
                    "{} of {} chunks missing (e.g. chunk {})",
                    missing.len(),
                    manifest.chunks,
                    shown.join(", ")
                ),
            ));
        }
        if p.chunks.len() as u64 != u64::from(manifest.chunks) {
            return Err(Rejection::new(
                Reason::Incomplete,
                format!(
                    "{} chunks arrived, the manifest counts {}",
                    p.chunks.len(),
                    manifest.chunks
                ),
            ));
        }
        if p.bytes as u64 != manifest.size {
            return Err(Rejection::new(
                Reason::Checksum,
                format!(
                    "the chunks hold {} bytes, the manifest says {}",
                    p.bytes, manifest.size
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(p.bytes);
        for chunk in p.chunks.into_values() {
            bytes.extend_from_slice(&chunk);
        }
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if !hex::encode(digest).eq_ignore_ascii_case(manifest.sha256.trim()) {
            return Err(Rejection::new(
                Reason::Checksum,
                format!(
                    "SHA-256 of the chunks is {}, the manifest says {}",
                    hex::encode(digest),
                    manifest.sha256
                ),
            ));
        }
        Ok(Assembled { bytes, digest })
    }
}

/// The SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(id: &str, data: &[u8], chunks: u32) -> Manifest {
        Manifest {
            publish_id: id.into(),
            version: "v1".into(),
            base_version: None,
            size: data.len() as u64,
            chunks,
            sha256: sha256_hex(data),
            signature: None,
            signer: None,
            activate: true,
            published_at_ms: 0,
        }
    }

    #[test]
    fn chunks_in_any_order_reassemble() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut a = Assembler::new(1 << 20);
        for (i, c) in data.chunks(300).enumerate().rev() {
            a.chunk("p", i as u32, c);
        }
        let got = a.finish(&manifest("p", &data, 4)).unwrap();
        assert_eq!(got.bytes, data);
        assert_eq!(a.pending_bytes(), 0);
    }

    #[test]
    fn a_missing_chunk_or_a_wrong_digest_is_rejected() {
        let data = vec![1u8; 1000];
        let mut a = Assembler::new(1 << 20);
        a.chunk("p", 0, &data[..500]);
        let r = a.finish(&manifest("p", &data, 2)).unwrap_err();
        assert_eq!(r.reason, Reason::Incomplete);

        a.chunk("q", 0, &data[..500]);
        a.chunk("q", 1, &[2u8; 500]);
        let r = a.finish(&manifest("q", &data, 2)).unwrap_err();
        assert_eq!(r.reason, Reason::Checksum);
        assert_eq!(a.pending_bytes(), 0);
    }

    #[test]
    fn abandoned_publishes_are_dropped_oldest_first() {
        let mut a = Assembler::new(1000);
        a.chunk("old", 0, &[0; 600]);
        let dropped = a.chunk("new", 0, &[0; 600]);
        assert_eq!(dropped, vec!["old".to_string()]);
        assert_eq!(a.pending_bytes(), 600);
    }
}
