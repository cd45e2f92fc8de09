//! A fixed set of names (the columns an encoder reads, one feature's categories), each with
//! a position, found without SipHash and without comparing with every name.
//!
//! Every decoded event looks up each of its keys among the encoder's columns and each one-hot
//! value among its categories. These sets are small and fixed once an encoder is built, so
//! they are kept in a hash table (hashbrown's, as the bundle's index) hashed cheaply: a name's
//! fingerprint is its length and two overlapping 8-byte reads of it (which together hold
//! every byte of a name of up to 16 bytes), one multiplication makes its hash, and names are
//! told apart by fingerprint, then, only past 16 bytes, by their text.

use hashbrown::{hash_table, HashTable};

/// Names and their positions, in a hash table built once.
#[derive(Debug, Clone, Default)]
pub(super) struct NameIndex {
    table: HashTable<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    fingerprint: Fingerprint,
    name: Box<str>,
    position: usize,
}

/// A name's length and two reads covering its first and last (up to) eight bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: usize,
    head: u64,
    tail: u64,
}

/// Names up to this long are told apart by their fingerprint alone.
const WHOLE_IN_FINGERPRINT: usize = 16;

impl Fingerprint {
    #[inline]
    fn of(name: &str) -> Self {
        let b = name.as_bytes();
        let len = b.len();
        let u64_at = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(word)
        };
        let u32_at = |i: usize| {
            let mut word = [0u8; 4];
            word.copy_from_slice(&b[i..i + 4]);
            u64::from(u32::from_le_bytes(word))
        };
        let (head, tail) = if len >= 8 {
            (u64_at(0), u64_at(len - 8))
        } else if len >= 4 {
            (u32_at(0), u32_at(len - 4))
        } else if len > 0 {
            (
                u64::from(b[0]) | u64::from(b[len / 2]) << 8,
                u64::from(b[len - 1]),
            )
        } else {
            (0, 0)
        };
        Fingerprint { len, head, tail }
    }

    #[inline]
    fn hash(self) -> u64 {
        (self.head ^ self.tail.rotate_left(29) ^ (self.len as u64).rotate_left(53))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl NameIndex {
    /// The index of `names` with their positions; a name given twice keeps its last
    /// position, as inserting into a map would.
    pub(super) fn new<'a>(names: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let mut table = HashTable::new();
        for (name, position) in names {
            let fingerprint = Fingerprint::of(name);
            match table.entry(
                fingerprint.hash(),
                |e: &Entry| e.is(fingerprint, name),
                |e: &Entry| e.fingerprint.hash(),
            ) {
                hash_table::Entry::Occupied(mut e) => e.get_mut().position = position,
                hash_table::Entry::Vacant(v) => {
                    v.insert(Entry {
                        fingerprint,
                        name: name.into(),
                        position,
                    });
                }
            }
        }
        NameIndex { table }
    }

    /// The position of `name`, if it is one of the names.
    #[inline]
    pub(super) fn get(&self, name: &str) -> Option<usize> {
        let fingerprint = Fingerprint::of(name);
        self.table
            .find(fingerprint.hash(), |e| e.is(fingerprint, name))
            .map(|e| e.position)
    }
}

impl Entry {
    /// Whether this entry is `name`, whose fingerprint is `fingerprint`.
    #[inline]
    fn is(&self, fingerprint: Fingerprint, name: &str) -> bool {
        self.fingerprint == fingerprint
            && (fingerprint.len <= WHOLE_IN_FINGERPRINT || *self.name == *name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_name_and_nothing_else() {
        let names = [
            "ts",
            "price",
            "promo",
            "temperature",
            "temperature_max",
            "temperature_min",
            "",
            "é",
            "weather",
            "store_id_long_name",
            // Alike in their first and last eight bytes: told apart by their text.
            "abcdefgh12ijklmnop",
            "abcdefgh21ijklmnop",
        ];
        let index = NameIndex::new(names.iter().enumerate().map(|(i, n)| (*n, i)));
        for (i, n) in names.iter().enumerate() {
            assert_eq!(index.get(n), Some(i), "{n:?}");
        }
        for n in [
            "t",
            "tss",
            "Price",
            "temperature_mid",
            "temperatur",
            "temperature_maxx",
            "e",
            "weather\0",
            "store_id_long_namf",
            "abcdefgh11ijklmnop",
        ] {
            assert_eq!(index.get(n), None, "{n:?}");
        }
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = NameIndex::default();
        assert_eq!(index.get(""), None);
        assert_eq!(index.get("price"), None);
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_position_as_a_map_would() {
        let index = NameIndex::new([("a", 0), ("b", 1), ("a", 2)]);
        assert_eq!(index.get("a"), Some(2));
        assert_eq!(index.get("b"), Some(1));
        let mut map = std::collections::HashMap::new();
        for (n, i) in [("a", 0), ("b", 1), ("a", 2)] {
            map.insert(n, i);
        }
        assert_eq!(index.get("a"), map.get("a").copied());
    }

    #[test]
    fn agrees_with_a_map_over_many_generated_names() {
        let names: Vec<String> = (0..500)
            .map(|i| format!("{}{}", "category_".repeat(i % 3), i * 7919 % 1000))
            .collect();
        let index = NameIndex::new(names.iter().enumerate().map(|(i, n)| (n.as_str(), i)));
        let map: std::collections::HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        for i in 0..2000 {
            let probe = format!("{}{}", "category_".repeat(i % 4), i);
            assert_eq!(
                index.get(&probe),
                map.get(probe.as_str()).copied(),
                "{probe}"
            );
        }
    }
}
