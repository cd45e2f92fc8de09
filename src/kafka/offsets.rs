//! Which input offsets are safe to commit.
//!
//! Per Kafka partition the tracker keeps the offsets read but not yet finished, in read order.
//! An offset is finished when its prediction (or dead letter) is acknowledged by the broker;
//! acknowledgements arrive out of order (stores are scored in parallel), and the committable
//! position is the end of the contiguous finished prefix. Nothing past an unfinished offset is
//! ever committed, which is the at-least-once guarantee.
//!
//! Each assignment of a Kafka partition gets a fresh [`PartitionOffsets`]; an [`Ack`] holds the
//! one it was issued by, so acknowledgements that arrive after a revoke land on the old,
//! revoked state and can never move a commit this instance no longer owns.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// The offsets of one assignment of one Kafka partition.
#[derive(Debug)]
pub struct PartitionOffsets {
    partition: i32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Offsets read, in order, with whether each is finished.
    pending: VecDeque<(i64, bool)>,
    /// The next offset to commit (one past the finished prefix), once anything finished.
    committable: Option<i64>,
    /// The last position committed.
    committed: Option<i64>,
    /// Set when the Kafka partition was revoked from this instance.
    revoked: bool,
}

impl PartitionOffsets {
    fn new(partition: i32) -> Self {
        PartitionOffsets {
            partition,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of plain counters;
        // the data is still the best we have.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Kafka partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Marks `offset` finished and advances the committable position.
    fn finish(&self, offset: i64) {
        let mut s = self.lock();
        if let Ok(i) = s.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            s.pending[i].1 = true;
        }
        while let Some(&(o, true)) = s.pending.front() {
            s.pending.pop_front();
            s.committable = Some(o + 1);
        }
    }

    /// Offsets read and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.lock().pending.len()
    }
}

/// A claim on one read offset, finished once its output is acknowledged.
#[derive(Debug)]
pub struct Ack {
    offsets: Arc<PartitionOffsets>,
    offset: i64,
}

impl Ack {
    /// Marks the offset finished.
    pub fn finish(self) {
        self.offsets.finish(self.offset);
    }

    /// The Kafka partition of the offset.
    pub fn partition(&self) -> i32 {
        self.offsets.partition
    }

    /// The offset.
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

/// All Kafka partitions of the input topic this instance owns.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Mutex<HashMap<i32, Arc<PartitionOffsets>>>,
}

impl OffsetTracker {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Arc<PartitionOffsets>>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking a newly assigned Kafka partition, with fresh state.
    pub fn assign(&self, partition: i32) {
        self.lock()
            .insert(partition, Arc::new(PartitionOffsets::new(partition)));
    }

    /// Stops tracking a revoked Kafka partition and returns the position still to commit for
    /// it, if any. Acknowledgements for it that arrive later change nothing.
    pub fn revoke(&self, partition: i32) -> Option<i64> {
        let offsets = self.lock().remove(&partition)?;
        let mut s = offsets.lock();
        s.revoked = true;
        match (s.committable, s.committed) {
            (Some(c), Some(done)) if c <= done => None,
            (c, _) => c,
        }
    }

    /// Registers a read offset; the returned [`Ack`] finishes it.
    pub fn begin(&self, partition: i32, offset: i64) -> Ack {
        let offsets = self
            .lock()
            .entry(partition)
            .or_insert_with(|| Arc::new(PartitionOffsets::new(partition)))
            .clone();
        offsets.lock().pending.push_back((offset, false));
        Ack { offsets, offset }
    }

    /// The positions that moved since they were last taken, as (Kafka partition, offset).
    /// They are recorded as committed: the caller commits them.
    pub fn take_committable(&self) -> Vec<(i32, i64)> {
        self.take(true)
    }

    /// The committable positions of owned Kafka partitions, recorded as committed; with
    /// `only_moved`, just those that changed since they were last taken.
    fn take(&self, only_moved: bool) -> Vec<(i32, i64)> {
        let partitions: Vec<Arc<PartitionOffsets>> = self.lock().values().cloned().collect();
        let mut out: Vec<(i32, i64)> = partitions
            .iter()
            .filter_map(|p| {
                let mut s = p.lock();
                let c = s.committable.filter(|_| !s.revoked)?;
                if only_moved && s.committed == Some(c) {
                    return None;
                }
                s.committed = Some(c);
                Some((p.partition, c))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Marks `positions` as not committed after a failed commit, so the next
    /// [`take_committable`](Self::take_committable) offers them again.
    pub fn retry(&self, positions: &[(i32, i64)]) {
        let map = self.lock();
        for (p, o) in positions {
            if let Some(offsets) = map.get(p) {
                let mut s = offsets.lock();
                if s.committed == Some(*o) {
                    s.committed = None;
                }
            }
        }
    }

    /// Every owned Kafka partition's committable position, whether or not it moved: for the
    /// final, synchronous commit.
    pub fn all_committable(&self) -> Vec<(i32, i64)> {
        self.take(false)
    }

    /// Events read and not yet finished, over all owned Kafka partitions.
    pub fn in_flight(&self) -> usize {
        self.lock().values().map(|p| p.in_flight()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_finished_prefix_is_committable() {
        let t = OffsetTracker::default();
        t.assign(0);
        let a: Vec<Ack> = (10..15).map(|o| t.begin(0, o)).collect();
        let mut a = a.into_iter();
        let (a10, a11, a12, a13, a14) = (
            a.next().unwrap(),
            a.next().unwrap(),
            a.next().unwrap(),
            a.next().unwrap(),
            a.next().unwrap(),
        );
        a12.finish();
        a14.finish();
        assert!(t.take_committable().is_empty(), "10 is not finished");
        a10.finish();
        assert_eq!(t.take_committable(), vec![(0, 11)]);
        assert!(t.take_committable().is_empty(), "nothing moved");
        a11.finish();
        assert_eq!(t.take_committable(), vec![(0, 13)]);
        a13.finish();
        assert_eq!(t.take_committable(), vec![(0, 15)]);
        assert_eq!(
            t.all_committable(),
            vec![(0, 15)],
            "the final commit repeats it"
        );
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn acks_after_a_revoke_never_move_a_commit() {
        let t = OffsetTracker::default();
        t.assign(3);
        let a = t.begin(3, 100);
        let b = t.begin(3, 101);
        a.finish();
        assert_eq!(t.revoke(3), Some(101));
        b.finish();
        assert!(t.take_committable().is_empty());
        // Reassigned later: fresh state, the old ack did nothing to it.
        t.assign(3);
        let c = t.begin(3, 101);
        c.finish();
        assert_eq!(t.take_committable(), vec![(3, 102)]);
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let t = OffsetTracker::default();
        let a = t.begin(1, 5);
        let b = t.begin(1, 9);
        b.finish();
        a.finish();
        assert_eq!(t.take_committable(), vec![(1, 10)]);
    }
}
