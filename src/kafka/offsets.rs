//! Which input offsets are safe to commit, and how much is in flight.
//!
//! Per Kafka partition the tracker keeps the offsets read but not yet finished, in read order.
//! An offset is finished when its prediction (or dead letter) is acknowledged by the broker;
//! acknowledgements arrive out of order (stores are scored in parallel), and the committable
//! position is the end of the contiguous finished prefix. Nothing past an unfinished offset is
//! ever committed, which is the at-least-once guarantee.
//!
//! Each assignment of a Kafka partition gets a fresh [`PartitionOffsets`]; an [`Ack`] holds the
//! one it was issued by, so acknowledgements that arrive after a revoke land on the old,
//! revoked state and can never move a commit this instance no longer owns. The revoked flag
//! is also what tells actors and the producer to drop work of a Kafka partition that moved.
//!
//! Commits and revokes take the tracker's commit lock, so a periodic commit computed before a
//! revoke can never land after it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::kafka::position::{ReadPosition, Verdict};

/// Counters shared by every assignment, read by backpressure and the stall watchdog.
#[derive(Debug, Default)]
struct Totals {
    /// Acks alive: events read and neither finished nor given up.
    in_flight: AtomicUsize,
    /// Offsets finished since start: the watchdog's measure of progress.
    finished: AtomicU64,
    /// Kafka partitions revoked since start: exactly-once mode aborts its open transaction
    /// when this moves.
    revocations: AtomicU64,
}

/// A value alone on its cache line (128 bytes: x86 processors fetch lines in pairs).
#[derive(Debug)]
#[repr(align(128))]
struct OwnLine<T>(T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// The offsets of one assignment of one Kafka partition.
#[derive(Debug)]
pub struct PartitionOffsets {
    partition: i32,
    /// Which assignment this is: numbered from 1 by the tracker, never reused.
    generation: u64,
    state: Mutex<State>,
    /// Set when the Kafka partition was revoked from this instance: its remaining work is
    /// dropped, and nothing of it is committed any more.
    ///
    /// This and `in_producer` each have a cache line of their own: for every event the
    /// consumer loop and the delivery thread lock `state`, a partition actor reads `revoked`
    /// and the actor and the delivery thread move `in_producer`. Sharing one line would pass
    /// it between three cores per event, and `revoked`, written only at a revoke, would miss
    /// the cache each time.
    revoked: OwnLine<AtomicBool>,
    /// Outputs of this assignment handed to the producer and not yet acknowledged or failed;
    /// a revoke waits for them.
    in_producer: OwnLine<AtomicUsize>,
    /// Outputs the broker refused and that are being retried; while any is, the Kafka
    /// partition stays paused.
    failing: AtomicUsize,
    totals: Arc<Totals>,
}

#[derive(Debug, Default)]
struct State {
    /// Offsets read, in order, with whether each is finished.
    pending: VecDeque<(i64, bool)>,
    /// The next offset to commit (one past the finished prefix), once anything finished.
    committable: Option<i64>,
    /// The last position committed.
    committed: Option<i64>,
    /// What reading expects next: where it goes on after a pause, and whether the broker
    /// skipped records after a seek.
    position: ReadPosition,
}

impl PartitionOffsets {
    fn new(partition: i32, generation: u64, totals: Arc<Totals>) -> Self {
        PartitionOffsets {
            partition,
            generation,
            state: Mutex::new(State::default()),
            revoked: OwnLine(AtomicBool::new(false)),
            in_producer: OwnLine(AtomicUsize::new(0)),
            failing: AtomicUsize::new(0),
            totals,
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

    /// Which assignment of the Kafka partition this is (a revoke and a new assignment give a
    /// new one; unlike an address, never reused).
    pub fn generation(&self) -> u64 {
        self.generation
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
        drop(s);
        self.totals.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// Offsets read and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.lock().pending.len()
    }

    /// The oldest offset read and not yet finished.
    pub fn oldest_unfinished(&self) -> Option<i64> {
        self.lock().pending.front().map(|(o, _)| *o)
    }

    /// True once this assignment was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Outputs refused by the broker and being retried.
    pub fn failing(&self) -> usize {
        self.failing.load(Ordering::Relaxed)
    }

    /// One past the last offset read in this assignment, once anything was read (or, at
    /// the start of an assignment, where reading starts).
    pub fn next_read(&self) -> Option<i64> {
        self.lock().position.next()
    }

    /// The consumer was sought to `next` to go on reading there.
    pub fn sought(&self, next: i64) {
        self.lock().position = ReadPosition::sought(next);
    }

    /// A seek that showed no record for `patience`: (next, where to seek now). See
    /// [`ReadPosition::stuck`].
    pub fn stuck(&self, patience: Duration) -> Option<(i64, i64)> {
        self.lock().position.stuck(patience)
    }

    /// Outputs handed to the producer and not yet settled.
    pub fn in_producer(&self) -> usize {
        self.in_producer.load(Ordering::Acquire)
    }
}

/// A claim on one read offset, finished once its output is acknowledged. Dropping it
/// unfinished gives the offset up: it is never committed by this assignment.
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

    /// True once the Kafka partition was revoked: the work is another instance's now.
    pub fn is_revoked(&self) -> bool {
        self.offsets.is_revoked()
    }

    /// The output is handed to the producer; [`Ack::settled`] must follow.
    pub fn sent(&self) {
        self.offsets.in_producer.fetch_add(1, Ordering::AcqRel);
    }

    /// The producer is done with the output, delivered or not.
    pub fn settled(&self) {
        self.offsets.in_producer.fetch_sub(1, Ordering::AcqRel);
    }

    /// The broker refused the output and it will be retried: the Kafka partition pauses.
    pub fn failing(&self) {
        self.offsets.failing.fetch_add(1, Ordering::AcqRel);
    }

    /// A retried output was acknowledged at last.
    pub fn recovered(&self) {
        self.offsets.failing.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        self.offsets
            .totals
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`OffsetTracker::admit`] makes of a record read.
#[derive(Debug)]
pub enum Admission {
    /// A record not read before in this assignment: handle it and finish the ack.
    Read(Ack),
    /// Read already in this assignment (after a seek back): drop it.
    Repeat,
    /// The broker skipped records after a seek: drop this record, and seek the Kafka
    /// partition to `at` so that reading goes on at `next`.
    Skipped {
        /// The first offset not read yet.
        next: i64,
        /// Where to seek.
        at: i64,
    },
}

/// All Kafka partitions of the input topic this instance owns.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Mutex<HashMap<i32, Arc<PartitionOffsets>>>,
    totals: Arc<Totals>,
    /// The last assignment's generation.
    generations: AtomicU64,
    /// Held while computing and sending a commit, and while retiring a revoked partition.
    commit_lock: Mutex<()>,
}

impl OffsetTracker {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Arc<PartitionOffsets>>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(&self, partition: i32) -> Arc<PartitionOffsets> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::new(PartitionOffsets::new(
            partition,
            generation,
            self.totals.clone(),
        ))
    }

    /// Starts tracking a newly assigned Kafka partition, with fresh state; `start` is the
    /// group's committed offset, where reading begins, when there is one.
    pub fn assign(&self, partition: i32, start: Option<i64>) {
        let fresh = self.fresh(partition);
        if let Some(start) = start {
            fresh.sought(start);
        }
        if let Some(old) = self.lock().insert(partition, fresh) {
            old.revoked.store(true, Ordering::Release);
        }
    }

    /// Marks a Kafka partition revoked, so its queued work is dropped and its producer
    /// outputs can be waited for; [`OffsetTracker::revoke`] retires it.
    pub fn revoking(&self, partition: i32) -> Option<Arc<PartitionOffsets>> {
        let offsets = self.lock().get(&partition).cloned()?;
        offsets.revoked.store(true, Ordering::Release);
        Some(offsets)
    }

    /// Stops tracking a revoked Kafka partition and returns the position still to commit for
    /// it, if any. Acknowledgements for it that arrive later change nothing. The caller holds
    /// the commit lock ([`OffsetTracker::commit_guard`]) while it commits the position.
    pub fn revoke(&self, partition: i32) -> Option<i64> {
        let offsets = self.lock().remove(&partition)?;
        self.totals.revocations.fetch_add(1, Ordering::AcqRel);
        offsets.revoked.store(true, Ordering::Release);
        let s = offsets.lock();
        match (s.committable, s.committed) {
            (Some(c), Some(done)) if c <= done => None,
            (c, _) => c,
        }
    }

    /// The commit lock: hold it from taking positions until their commit returned.
    pub fn commit_guard(&self) -> MutexGuard<'_, ()> {
        self.commit_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Judges a record read at `offset` ([`ReadPosition::admit`]) and registers it when it
    /// is new: the returned [`Ack`] finishes it.
    pub fn admit(&self, partition: i32, offset: i64) -> Admission {
        let offsets = {
            let mut map = self.lock();
            match map.get(&partition) {
                Some(o) => o.clone(),
                None => {
                    let o = self.fresh(partition);
                    map.insert(partition, o.clone());
                    o
                }
            }
        };
        let mut s = offsets.lock();
        match s.position.admit(offset) {
            Verdict::Read => {}
            Verdict::Repeat => return Admission::Repeat,
            Verdict::Skipped { next, at } => return Admission::Skipped { next, at },
        }
        s.pending.push_back((offset, false));
        drop(s);
        self.totals.in_flight.fetch_add(1, Ordering::Relaxed);
        Admission::Read(Ack { offsets, offset })
    }

    /// Registers a read offset as new, whatever the position says; the returned [`Ack`]
    /// finishes it.
    #[cfg(test)]
    pub fn begin(&self, partition: i32, offset: i64) -> Ack {
        match self.admit(partition, offset) {
            Admission::Read(ack) => ack,
            other => panic!("offset {offset} was not admitted: {other:?}"),
        }
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
                if p.is_revoked() {
                    return None;
                }
                let mut s = p.lock();
                let c = s.committable?;
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

    /// Events read and not yet finished or given up, over all assignments.
    pub fn in_flight(&self) -> usize {
        self.totals.in_flight.load(Ordering::Relaxed)
    }

    /// Offsets finished since start; it moves whenever the pipeline makes progress.
    pub fn finished(&self) -> u64 {
        self.totals.finished.load(Ordering::Relaxed)
    }

    /// Kafka partitions revoked since start.
    pub fn revocations(&self) -> u64 {
        self.totals.revocations.load(Ordering::Acquire)
    }

    /// The owned assignments, by Kafka partition.
    pub fn owned(&self) -> Vec<Arc<PartitionOffsets>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_unstable_by_key(|p| p.partition);
        v
    }

    /// Whether `partition` is owned now.
    pub fn owns(&self, partition: i32) -> bool {
        self.lock().contains_key(&partition)
    }

    /// Forgets every assignment (after an aborted transaction): outstanding acks are given
    /// up and the owned Kafka partitions start over with fresh state.
    pub fn reset(&self) {
        let mut map = self.lock();
        for (p, old) in map.iter_mut() {
            old.revoked.store(true, Ordering::Release);
            *old = self.fresh(*p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_finished_prefix_is_committable() {
        let t = OffsetTracker::default();
        t.assign(0, None);
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
        t.assign(3, None);
        let a = t.begin(3, 100);
        let b = t.begin(3, 101);
        a.finish();
        assert_eq!(t.revoke(3), Some(101));
        b.finish();
        assert!(t.take_committable().is_empty());
        // Reassigned later: fresh state, the old ack did nothing to it.
        t.assign(3, None);
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
