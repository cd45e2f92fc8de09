//! Putting a bundle file back together from its chunks.
//!
//! Chunks wait under their publish id until their manifest arrives; the manifest then takes
//! them, and the bytes are handed on only if the count, the size and the SHA-256 all match.
//! Everything `finish` does is bounded by the chunks actually held, never by the counts the
//! manifest claims ([`super::admission`] has checked those already).
//!
//! Pending chunks are bounded: each costs its bytes plus [`CHUNK_COST`] for its bookkeeping,
//! and past the budget (see [`Assembler::budget`]) the oldest unfinished publish is dropped (a
//! publisher that died mid-way leaves chunks that no manifest will ever claim). A publish that
//! alone exceeds the budget is dropped too.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use super::message::Manifest;
use super::rejection::{Reason, Rejection};

/// What one held chunk costs beyond its bytes: its map entry and its buffer's header, rounded
/// up. Counted so that a flood of one-byte chunks cannot hold 60 times its budget.
pub const CHUNK_COST: usize = 64;

/// What one pending publish costs beyond its chunks and its id.
const PUBLISH_COST: usize = 64;

/// Missing chunk indices named in a rejection; the count says how many there are in all.
const MISSING_SHOWN: usize = 5;

/// One publish's chunks so far.
#[derive(Debug, Default)]
struct Pending {
    chunks: BTreeMap<u32, Vec<u8>>,
    /// Bytes of the chunks.
    bytes: usize,
    /// What the publish costs against the budget: bytes, bookkeeping and its id.
    cost: usize,
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
    /// Pending publish ids by arrival, so the oldest is found in O(log n) however many
    /// publishes a flood of chunks opens.
    order: BTreeMap<u64, String>,
    /// The sum of the pending publishes' costs.
    cost: usize,
    budget: usize,
    seq: u64,
}

impl Assembler {
    /// An assembler for bundles of at most `max_bundle_bytes`; see [`Assembler::budget`].
    pub fn new(max_bundle_bytes: usize) -> Self {
        Assembler {
            pending: HashMap::new(),
            order: BTreeMap::new(),
            cost: 0,
            budget: Self::budget(max_bundle_bytes),
            seq: 0,
        }
    }

    /// What pending chunks may cost in all: `max_bundle_bytes` plus a sixteenth plus 64 KiB,
    /// so a bundle of `max_bundle_bytes` sent in chunks of 1 KiB or more always fits.
    pub fn budget(max_bundle_bytes: usize) -> usize {
        max_bundle_bytes
            .saturating_add(max_bundle_bytes / 16)
            .saturating_add(64 * 1024)
    }

    /// What the chunks waiting cost: their bytes plus their bookkeeping; never more than the
    /// budget.
    pub fn pending_bytes(&self) -> usize {
        self.cost
    }

    /// Publishes with chunks waiting.
    pub fn pending_publishes(&self) -> usize {
        self.pending.len()
    }

    /// Keeps one chunk; returns the publish ids dropped to stay within the budget (which may
    /// include `publish_id` itself, when it alone exceeds it).
    pub fn chunk(&mut self, publish_id: &str, index: u32, bytes: &[u8]) -> Vec<String> {
        self.seq += 1;
        let seq = self.seq;
        if !self.pending.contains_key(publish_id) {
            // The id is held twice: as the key and in the arrival order.
            let cost = PUBLISH_COST + 2 * publish_id.len();
            self.cost += cost;
            self.order.insert(seq, publish_id.to_owned());
            self.pending.insert(
                publish_id.to_owned(),
                Pending {
                    cost,
                    seq,
                    ..Pending::default()
                },
            );
        }
        let Some(p) = self.pending.get_mut(publish_id) else {
            return Vec::new();
        };
        // A repeated chunk (a producer retry) replaces the earlier copy.
        if let Some(old) = p.chunks.insert(index, bytes.to_vec()) {
            p.bytes -= old.len();
            p.cost -= old.len() + CHUNK_COST;
            self.cost -= old.len() + CHUNK_COST;
        }
        p.bytes += bytes.len();
        p.cost += bytes.len() + CHUNK_COST;
        self.cost += bytes.len() + CHUNK_COST;
        let mut dropped = Vec::new();
        while self.cost > self.budget {
            // The oldest other publish; this one only when it alone is over the budget.
            let oldest = self
                .order
                .values()
                .find(|id| id.as_str() != publish_id)
                .cloned()
                .unwrap_or_else(|| publish_id.to_owned());
            self.take(&oldest);
            dropped.push(oldest);
        }
        dropped
    }

    /// Removes a pending publish, with its place in the order and its cost.
    fn take(&mut self, publish_id: &str) -> Option<Pending> {
        let p = self.pending.remove(publish_id)?;
        self.order.remove(&p.seq);
        self.cost -= p.cost;
        Some(p)
    }

    /// Takes the chunks of `manifest`'s publish and checks them against it. Costs time in
    /// proportion to the chunks held, whatever the manifest claims.
    pub fn finish(&mut self, manifest: &Manifest) -> Result<Assembled, Rejection> {
        let p = self.take(&manifest.publish_id).unwrap_or_default();
        let held = p.chunks.range(..manifest.chunks).count() as u64;
        let missing = u64::from(manifest.chunks) - held;
        if missing > 0 {
            // At most `held` indices are skipped before MISSING_SHOWN missing ones are found.
            let shown: Vec<String> = (0..manifest.chunks)
                .filter(|i| !p.chunks.contains_key(i))
                .take(MISSING_SHOWN)
                .map(|i| i.to_string())
                .collect();
            return Err(Rejection::new(
                Reason::Incomplete,
                format!(
                    "{missing} of {} chunks missing (e.g. chunk {})",
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
        let Some(claimed) = manifest.digest() else {
            return Err(Rejection::new(
                Reason::Implausible,
                "the manifest's sha256 is not 64 hex digits",
            ));
        };
        let mut bytes = Vec::with_capacity(p.bytes);
        for chunk in p.chunks.into_values() {
            bytes.extend_from_slice(&chunk);
        }
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if digest != claimed {
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
            chunks_at: None,
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
        assert_eq!(a.pending_publishes(), 0);
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
        let max = 1 << 20;
        let mut a = Assembler::new(max);
        let half = Assembler::budget(max) / 2 + 1;
        a.chunk("old", 0, &vec![0; half]);
        let dropped = a.chunk("new", 0, &vec![0; half]);
        assert_eq!(dropped, vec!["old".to_string()]);
        assert_eq!(a.pending_bytes(), half + CHUNK_COST + PUBLISH_COST + 2 * 3);
    }

    #[test]
    fn a_publish_that_alone_exceeds_the_budget_is_dropped() {
        let max = 1 << 16;
        let mut a = Assembler::new(max);
        let mut dropped = Vec::new();
        for i in 0..100 {
            dropped.extend(a.chunk("flood", i, &[0; 4096]));
            assert!(a.pending_bytes() <= Assembler::budget(max));
        }
        assert!(dropped.iter().any(|d| d == "flood"));
    }

    #[test]
    fn a_flood_of_one_byte_chunks_is_paid_for_by_its_bookkeeping() {
        let max = 1 << 16;
        let mut a = Assembler::new(max);
        for i in 0..50_000 {
            a.chunk(&format!("p{}", i % 1000), i, &[0]);
            assert!(a.pending_bytes() <= Assembler::budget(max));
        }
        assert!(a.pending_publishes() < 1000);
    }

    #[test]
    fn four_billion_claimed_chunks_cost_only_the_chunks_held() {
        let mut a = Assembler::new(1 << 20);
        a.chunk("p", 7, &[1; 10]);
        let started = std::time::Instant::now();
        let r = a.finish(&manifest("p", &[1; 10], u32::MAX)).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(r.reason, Reason::Incomplete);
        assert!(
            r.detail.contains("4294967294 of 4294967295"),
            "{}",
            r.detail
        );
        assert!(r.detail.contains("chunk 0, 1, 2, 3, 4)"), "{}", r.detail);
        assert_eq!(a.pending_bytes(), 0);
    }
}
