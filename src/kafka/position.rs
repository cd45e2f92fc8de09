//! Where reading of one Kafka partition stands, so that no record is skipped or read twice
//! because of a seek.
//!
//! The daemon moves the consumer itself: it seeks a Kafka partition resumed after a pause to one
//! past its last record read, and an assignment starts at the group's committed offset. A
//! broker answers a fetch that starts inside a record batch with that batch (Apache Kafka, and
//! librdkafka drops the records before the offset asked for) or with the *next* batch (tansu
//! 0.6.0): records the daemon never read would then be followed by later ones, and a commit of
//! the later ones would give the skipped ones up for good.
//!
//! So after each seek the first record read must be at or before the offset sought. When it is
//! past it, the records in between were skipped by the broker, not by the topic: the record is
//! dropped unread, and the Kafka partition is sought again further back (1, 2, 4, ... offsets
//! before), until a fetch starts at a batch boundary. Records read again that way are dropped
//! as repeats. A gap that the topic really has (compaction, transaction markers, aborted
//! records under `read_committed`) shows up while reading on from a record, or after a seek as
//! far back as offset 0, and is legal.
//!
//! This module only decides; [`crate::kafka::offsets`] holds it per assignment and the consumer
//! loop seeks.

use std::time::{Duration, Instant};

/// What the reading of one assignment of a Kafka partition expects next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadPosition {
    /// Nothing known: the first record is taken as it comes (a fresh group starts at the
    /// beginning of the log, which is a batch boundary).
    #[default]
    Unknown,
    /// Reading runs on from a record this assignment read; `next` is one past it.
    Reading {
        /// One past the last record read.
        next: i64,
    },
    /// The consumer was sought to `at` to go on at `next` (`at <= next`).
    Sought {
        /// The first offset not read yet.
        next: i64,
        /// Where the consumer was sought.
        at: i64,
        /// When.
        since: Instant,
    },
}

/// What to do with a record read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A record not read before: handle it.
    Read,
    /// Read already in this assignment: drop it.
    Repeat,
    /// The broker skipped records after a seek: drop this record and seek to `at`.
    Skipped {
        /// The first offset not read yet.
        next: i64,
        /// Where to seek now.
        at: i64,
    },
}

impl ReadPosition {
    /// The position after seeking to `next` to go on reading there.
    pub fn sought(next: i64) -> Self {
        ReadPosition::Sought {
            next,
            at: next,
            since: Instant::now(),
        }
    }

    /// One past the last record read, once anything was read or sought.
    pub fn next(&self) -> Option<i64> {
        match *self {
            ReadPosition::Unknown => None,
            ReadPosition::Reading { next } | ReadPosition::Sought { next, .. } => Some(next),
        }
    }

    /// Judges the record at `offset` and moves the position.
    pub fn admit(&mut self, offset: i64) -> Verdict {
        match *self {
            ReadPosition::Unknown => {
                *self = ReadPosition::Reading { next: offset + 1 };
                Verdict::Read
            }
            ReadPosition::Reading { next } if offset < next => Verdict::Repeat,
            ReadPosition::Reading { .. } => {
                *self = ReadPosition::Reading { next: offset + 1 };
                Verdict::Read
            }
            ReadPosition::Sought { next, .. } if offset < next => {
                // A fetch from at or before `next`: whatever follows is read in order.
                *self = ReadPosition::Reading { next };
                Verdict::Repeat
            }
            ReadPosition::Sought { next, at, .. } if offset == next || at <= 0 => {
                *self = ReadPosition::Reading { next: offset + 1 };
                Verdict::Read
            }
            ReadPosition::Sought { next, at, .. } => {
                let at = Self::further_back(next, at);
                *self = ReadPosition::Sought {
                    next,
                    at,
                    since: Instant::now(),
                };
                Verdict::Skipped { next, at }
            }
        }
    }

    /// A seek that has shown no record for `patience` (a broker that answers a fetch from
    /// inside a batch with nothing): where to seek next, further back. The caller asks only
    /// while the Kafka partition's high watermark is past `next`.
    pub fn stuck(&mut self, patience: Duration) -> Option<(i64, i64)> {
        match *self {
            ReadPosition::Sought { next, at, since } if at > 0 && since.elapsed() >= patience => {
                let at = Self::further_back(next, at);
                *self = ReadPosition::Sought {
                    next,
                    at,
                    since: Instant::now(),
                };
                Some((next, at))
            }
            _ => None,
        }
    }

    /// Twice as far back from `next` as `at` was, and at least one offset, never below 0.
    fn further_back(next: i64, at: i64) -> i64 {
        let back = (next - at).max(1).saturating_mul(2).min(next);
        if at == next {
            (next - 1).max(0)
        } else {
            next - back
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_on_accepts_the_topics_own_gaps_and_drops_repeats() {
        let mut p = ReadPosition::Unknown;
        assert_eq!(p.admit(7), Verdict::Read);
        assert_eq!(p.admit(8), Verdict::Read);
        assert_eq!(p.admit(12), Verdict::Read, "a marker or compaction gap");
        assert_eq!(p.admit(11), Verdict::Repeat);
        assert_eq!(p.admit(12), Verdict::Repeat);
        assert_eq!(p.next(), Some(13));
    }

    #[test]
    fn a_seek_answered_from_the_next_batch_seeks_further_back_until_a_boundary() {
        // Batches of 10 from offset 0; the broker answers a fetch from inside a batch with the
        // next batch. Reading stopped after offset 4.
        let base = |o: i64| o / 10 * 10;
        let mut p = ReadPosition::sought(5);
        let mut at = 5;
        let mut seeks = 0;
        loop {
            let first = if at == base(at) { at } else { base(at) + 10 };
            match p.admit(first) {
                Verdict::Skipped { next, at: a } => {
                    assert_eq!(next, 5);
                    assert!(a < at, "further back each time");
                    at = a;
                    seeks += 1;
                }
                Verdict::Repeat => break,
                Verdict::Read => {
                    assert_eq!(first, 5);
                    break;
                }
            }
        }
        assert_eq!(at, 0, "5 - 1, 5 - 2, 5 - 4, then 0");
        assert_eq!(seeks, 4);
        // Offsets 0..=4 come again and are dropped; 5 is read.
        for o in 1..5 {
            assert_eq!(p.admit(o), Verdict::Repeat);
        }
        assert_eq!(p.admit(5), Verdict::Read);
    }

    #[test]
    fn a_seek_to_a_transaction_marker_is_a_real_gap_once_a_record_before_it_was_seen() {
        // 100 is a commit marker: seeking there gives 101; one step back gives 99, a repeat,
        // and 101 is then read.
        let mut p = ReadPosition::sought(100);
        assert_eq!(p.admit(101), Verdict::Skipped { next: 100, at: 99 });
        assert_eq!(p.admit(99), Verdict::Repeat);
        assert_eq!(p.admit(101), Verdict::Read);
    }

    #[test]
    fn a_seek_that_reached_offset_zero_accepts_what_comes() {
        let mut p = ReadPosition::sought(1);
        assert_eq!(p.admit(50), Verdict::Skipped { next: 1, at: 0 });
        assert_eq!(p.admit(50), Verdict::Read, "records before 50 are gone");
    }

    #[test]
    fn a_seek_that_shows_nothing_goes_further_back_after_patience() {
        let mut p = ReadPosition::sought(40);
        assert_eq!(p.stuck(Duration::from_secs(3600)), None);
        assert_eq!(p.stuck(Duration::ZERO), Some((40, 39)));
        assert_eq!(p.stuck(Duration::ZERO), Some((40, 38)));
        assert_eq!(p.stuck(Duration::ZERO), Some((40, 36)));
        assert_eq!(p.admit(30), Verdict::Repeat);
        assert_eq!(p.stuck(Duration::ZERO), None, "reading again");
    }
}
