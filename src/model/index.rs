//! A bundle's lookup from partition id to its position: a hash table of `u32` positions that
//! compares ids against the bundle's own models, so no id is stored twice. About 5 bytes a
//! partition, where a `HashMap<String, usize>` holding a copy of each id costs about 60.
//!
//! Every index hashes with the one [`id_hash`] of the process, so the consumer loop hashes an
//! event's id once and uses that hash both to find its model, in whichever bundle is active,
//! and to pick its shard ([`crate::router`]), which must not change when bundles do.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use foldhash::fast::SeedableRandomState;
use hashbrown::HashTable;

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
    table: HashTable<u32>,
}

impl PartitionIndex {
    /// Indexes the ids `id_at(0..n)`; returns the first id that appears twice as the error.
    pub fn build<'a>(n: usize, id_at: impl Fn(usize) -> &'a str) -> Result<Self, String> {
        let mut table = HashTable::with_capacity(n);
        for i in 0..n {
            let id = id_at(i);
            let entry = table.entry(
                id_hash(id),
                |&j: &u32| id_at(j as usize) == id,
                |&j: &u32| id_hash(id_at(j as usize)),
            );
            match entry {
                hashbrown::hash_table::Entry::Occupied(_) => return Err(id.to_owned()),
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(i as u32);
                }
            }
        }
        Ok(PartitionIndex { table })
    }

    /// The position of `id`, whose [`id_hash`] is `hash`, looking ids up through `id_at`.
    #[inline]
    pub fn find<'a>(&self, hash: u64, id: &str, id_at: impl Fn(usize) -> &'a str) -> Option<usize> {
        self.table
            .find(hash, |&j| id_at(j as usize) == id)
            .map(|&j| j as usize)
    }

    /// Bytes it holds.
    pub fn memory_bytes(&self) -> usize {
        // A slot and a control byte per bucket.
        self.table.capacity() * (std::mem::size_of::<u32>() + 1)
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
        assert!(index.memory_bytes() < 10_000 * 8);
        let twins = ["a", "b", "a"];
        assert_eq!(PartitionIndex::build(3, |j| twins[j]).unwrap_err(), "a");
    }
}
