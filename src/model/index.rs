//! A bundle's lookup from partition id to its position: an open-addressing hash table of
//! 8-byte slots, each a position and 32 bits of its id's hash, that compares ids against the
//! bundle's own models, so no id is stored twice. 11 to 21 bytes a partition (at most three
//! quarters of the slots are used), where a `HashMap<String, usize>` holding a copy of each
//! id costs about 60.
//!
//! A lookup reads one slot, found from the hash alone, and the entry it names, so with a
//! million stores it costs two cache misses, and the first can be started early
//! ([`PartitionIndex::prefetch`]): an actor looking up a batch of events asks for every slot
//! first and then finds them.
//!
//! Every index hashes with the one [`id_hash`] of the process, so the consumer loop hashes an
//! event's id once and uses that hash both to find its model, in whichever bundle is active,
//! and to pick its shard ([`crate::router`]), which must not change when bundles do.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use foldhash::fast::SeedableRandomState;

/// The process's hasher of partition ids, seeded at random once: a fixed seed would let a
/// producer that knows it pile its ids into one shard or one probe sequence.
static ID_HASHER: LazyLock<SeedableRandomState> = LazyLock::new(SeedableRandomState::random);

/// The hash of a partition id, the same for the life of the process.
#[inline]
pub fn id_hash(id: &str) -> u64 {
    ID_HASHER.hash_one(id)
}

/// Positions of partitions by id; the ids themselves live in the slice it was built from.
#[derive(Debug, Clone, Default)]
pub struct PartitionIndex {
    /// Linear probing over a power-of-two number of slots; empty: no slots at all.
    slots: Box<[Slot]>,
}

/// One slot: `0` when empty, else the upper 32 bits of the id's hash above the position
/// plus one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Slot(u64);

impl Slot {
    const EMPTY: Slot = Slot(0);

    fn new(hash: u64, position: usize) -> Self {
        Slot((hash & !0xFFFF_FFFF) | (position as u64 + 1))
    }

    /// The position, if the slot holds one whose hash has the upper bits of `hash`.
    #[inline]
    fn position_if(self, hash: u64) -> Option<usize> {
        ((self.0 ^ hash) >> 32 == 0).then(|| (self.0 & 0xFFFF_FFFF) as usize - 1)
    }
}

impl PartitionIndex {
    /// Indexes the ids `id_at(0..n)`; returns the first id that appears twice as the error.
    pub fn build<'a>(n: usize, id_at: impl Fn(usize) -> &'a str) -> Result<Self, String> {
        if n == 0 {
            return Ok(PartitionIndex::default());
        }
        if n >= u32::MAX as usize {
            return Err(format!("{n} partitions are more than one index holds"));
        }
        // At most three quarters full, so a probe rarely reads past one cache line.
        let capacity = (n + n / 3 + 1).next_power_of_two();
        let mut slots = vec![Slot::EMPTY; capacity].into_boxed_slice();
        let mask = capacity - 1;
        for i in 0..n {
            let id = id_at(i);
            let hash = id_hash(id);
            let mut at = hash as usize & mask;
            loop {
                let slot = slots[at];
                if slot == Slot::EMPTY {
                    slots[at] = Slot::new(hash, i);
                    break;
                }
                if slot.position_if(hash).is_some_and(|j| id_at(j) == id) {
                    return Err(id.to_owned());
                }
                at = (at + 1) & mask;
            }
        }
        Ok(PartitionIndex { slots })
    }

    /// Starts loading the slot a lookup of an id hashing to `hash` reads first.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if let Some(slot) = self.slots.get(hash as usize & self.mask()) {
            crate::cache::prefetch(slot);
        }
    }

    /// The position of `id`, whose [`id_hash`] is `hash`, looking ids up through `id_at`.
    #[inline]
    pub fn find<'a>(&self, hash: u64, id: &str, id_at: impl Fn(usize) -> &'a str) -> Option<usize> {
        let mask = self.mask();
        let mut at = hash as usize & mask;
        // Never full, so an empty slot ends every probe.
        loop {
            let slot = *self.slots.get(at)?;
            if slot == Slot::EMPTY {
                return None;
            }
            if let Some(j) = slot.position_if(hash) {
                if id_at(j) == id {
                    return Some(j);
                }
            }
            at = (at + 1) & mask;
        }
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// Where its slots are: their address and length in bytes.
    pub fn memory_range(&self) -> (usize, usize) {
        (self.slots.as_ptr() as usize, self.memory_bytes())
    }

    /// Bytes it holds.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_id_refuses_twins_and_misses_strangers() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("S{i:05}")).collect();
        let index = PartitionIndex::build(ids.len(), |j| &ids[j]).unwrap();
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(index.find(id_hash(id), id, |j| &ids[j]), Some(i));
        }
        assert_eq!(index.find(id_hash("S10000"), "S10000", |j| &ids[j]), None);
        assert!(index.memory_bytes() <= 10_000 * 24);
        let twins = ["a", "b", "a"];
        assert_eq!(PartitionIndex::build(3, |j| twins[j]).unwrap_err(), "a");
    }

    /// Against a `HashMap`, for sizes around every fill the table can have (empty, one,
    /// just below and above a power of two): every id is found where it is, and ids of
    /// every length that are not there, the empty one included, are not.
    #[test]
    fn agrees_with_a_hash_map_at_every_size() {
        for n in [0usize, 1, 2, 3, 5, 47, 48, 49, 96, 97, 767, 768, 769, 3000] {
            let ids: Vec<String> = (0..n)
                .map(|i| "x".repeat(i % 40) + &i.to_string())
                .collect();
            let index = PartitionIndex::build(n, |j| &ids[j]).unwrap();
            let map: std::collections::HashMap<&str, usize> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            let strangers = (0..2 * n + 10).map(|i| format!("{}-{i}", "y".repeat(i % 30)));
            for id in ids.iter().cloned().chain(strangers).chain([String::new()]) {
                index.prefetch(id_hash(&id));
                assert_eq!(
                    index.find(id_hash(&id), &id, |j| &ids[j]),
                    map.get(id.as_str()).copied(),
                    "{n} ids, looking up {id:?}"
                );
            }
            if n > 0 {
                assert!(index.memory_bytes() <= n * 24, "{n} ids");
            }
        }
    }
}
