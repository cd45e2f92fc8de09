//! What the schema registry answered, kept within a fixed size.
//!
//! Writer schemas arrive by Confluent id, and ids are whatever a producer (or an attacker)
//! writes into the record's first five bytes, so nothing here may grow with the number of
//! distinct ids seen. Answers are held in two bounded tables, each evicting its oldest entry
//! when full: resolved ids (a plan, or a permanent "cannot be read") and ids the registry does
//! not have, believed for a TTL. An evicted id is simply asked again. The ids of
//! `[input.schemas]` live elsewhere ([`crate::codec`]) and are never evicted.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::Known;
use crate::error::RecordError;

/// Resolved writer schemas kept: more than any fleet has writer versions in use at once.
pub const MAX_RESOLVED: usize = 1024;
/// Ids the registry said it does not have, kept: each costs an id, an instant and a message.
pub const MAX_UNKNOWN: usize = 10_000;
/// How long a registry's "no such id" is believed before it is asked again.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(60);

/// The bounded cache of registry answers.
pub struct SchemaCache {
    /// Resolved ids: a plan, or why the schema cannot be read.
    resolved: HashMap<u32, Known>,
    /// `resolved`'s ids, oldest first.
    resolved_order: VecDeque<u32>,
    /// Ids the registry does not have, with why and until when that is believed.
    unknown: HashMap<u32, (RecordError, Instant)>,
    /// `unknown`'s ids, oldest first.
    unknown_order: VecDeque<u32>,
    max_resolved: usize,
    max_unknown: usize,
    ttl: Duration,
}

/// What the cache knows about one id.
pub enum Cached {
    /// A plan, or why the schema cannot be read.
    Resolved(Known),
    /// The registry does not have it (answered less than the TTL ago).
    Unknown(RecordError),
    /// Nothing: ask the registry.
    Miss,
}

impl Default for SchemaCache {
    fn default() -> Self {
        Self::with_limits(MAX_RESOLVED, MAX_UNKNOWN, UNKNOWN_TTL)
    }
}

impl SchemaCache {
    /// A cache of at most `max_resolved` resolved and `max_unknown` unknown ids, believing
    /// an unknown id for `ttl`.
    pub fn with_limits(max_resolved: usize, max_unknown: usize, ttl: Duration) -> Self {
        SchemaCache {
            resolved: HashMap::new(),
            resolved_order: VecDeque::new(),
            unknown: HashMap::new(),
            unknown_order: VecDeque::new(),
            max_resolved: max_resolved.max(1),
            max_unknown: max_unknown.max(1),
            ttl,
        }
    }

    /// What is known about `id` now.
    pub fn get(&self, id: u32) -> Cached {
        if let Some(k) = self.resolved.get(&id) {
            return Cached::Resolved(k.clone());
        }
        match self.unknown.get(&id) {
            Some((e, until)) if Instant::now() < *until => Cached::Unknown(e.clone()),
            _ => Cached::Miss,
        }
    }

    /// Remembers a resolved id, evicting the oldest one when full.
    pub fn resolved(&mut self, id: u32, known: Known) {
        self.forget_unknown(id);
        if self.resolved.insert(id, known).is_none() {
            self.resolved_order.push_back(id);
        }
        while self.resolved.len() > self.max_resolved {
            let Some(old) = self.resolved_order.pop_front() else {
                break;
            };
            self.resolved.remove(&old);
        }
    }

    /// Remembers that the registry does not have `id`, evicting the oldest such id when full.
    pub fn unknown(&mut self, id: u32, why: RecordError) {
        let until = Instant::now() + self.ttl;
        if self.unknown.insert(id, (why, until)).is_none() {
            self.unknown_order.push_back(id);
        }
        while self.unknown.len() > self.max_unknown {
            let Some(old) = self.unknown_order.pop_front() else {
                break;
            };
            self.unknown.remove(&old);
        }
    }

    fn forget_unknown(&mut self, id: u32) {
        if self.unknown.remove(&id).is_some() {
            self.unknown_order.retain(|i| *i != id);
        }
    }

    /// Resolved ids held.
    pub fn resolved_len(&self) -> usize {
        self.resolved.len()
    }

    /// Unknown ids held (expired ones included until evicted or asked again).
    pub fn unknown_len(&self) -> usize {
        self.unknown.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RecordErrorKind;

    fn why(id: u32) -> RecordError {
        RecordError::new(RecordErrorKind::UnknownSchema, format!("no id {id}"))
    }

    #[test]
    fn a_stream_of_distinct_unknown_ids_never_holds_more_than_the_limit() {
        let mut cache = SchemaCache::with_limits(4, 100, UNKNOWN_TTL);
        for id in 0..100_000 {
            cache.unknown(id, why(id));
            assert!(cache.unknown_len() <= 100);
        }
        assert!(matches!(cache.get(99_999), Cached::Unknown(_)));
        assert!(
            matches!(cache.get(0), Cached::Miss),
            "the oldest were evicted"
        );
        assert_eq!(cache.unknown_order.len(), 100);
    }

    #[test]
    fn resolved_ids_are_bounded_and_an_unknown_id_expires_after_its_ttl() {
        let mut cache = SchemaCache::with_limits(2, 10, Duration::from_millis(0));
        for id in 0..5 {
            cache.resolved(id, Known::Unusable(why(id)));
        }
        assert_eq!(cache.resolved_len(), 2);
        assert!(matches!(cache.get(4), Cached::Resolved(_)));
        assert!(matches!(cache.get(0), Cached::Miss));
        cache.unknown(7, why(7));
        assert!(
            matches!(cache.get(7), Cached::Miss),
            "a zero TTL believes nothing"
        );
        cache.resolved(7, Known::Unusable(why(7)));
        assert_eq!(cache.unknown_len(), 0, "a resolved id is no longer unknown");
    }
}
