//! Sending at a steady rate, for the tools that load Kafka (`generate --brokers`, the
//! benchmark's loader, the tests).
//!
//! A [`Pacer`] says when the n-th event is due and sleeps only when the sender is at least a
//! [`TICK`] ahead of that schedule, so the events due within a tick go together and the sender
//! wakes up once a tick, not once an event: at 100,000 events a second a sleep before every
//! event costs the machine more than sending does, and takes that CPU from the pipeline being
//! loaded.

use std::time::{Duration, Instant};

/// How far ahead of its schedule a sender must be before it sleeps.
pub const TICK: Duration = Duration::from_millis(1);

/// A steady rate, counted from when the pacer was made.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    /// Events per second.
    rate: u64,
    started: Instant,
}

impl Pacer {
    /// Starts the clock for `rate` events per second (at least 1).
    pub fn new(rate: u64) -> Self {
        Pacer {
            rate: rate.max(1),
            started: Instant::now(),
        }
    }

    /// When event `n` (from 0) is due, after the start.
    pub fn due(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / self.rate as f64)
    }

    /// Returns once event `n` may be sent: at once unless the sender is at least a [`TICK`]
    /// ahead of the schedule, else after sleeping until `n` is due, having called `idle` (for
    /// a producer: serve its delivery reports) just before.
    pub fn wait(&self, n: u64, idle: impl FnOnce()) {
        if let Some(ahead) = self.due(n).checked_sub(self.started.elapsed()) {
            if ahead >= TICK {
                idle();
                std::thread::sleep(ahead);
            }
        }
    }
}

/// How many events a paced producer sends at most between two servings of its delivery
/// reports, when it is behind its schedule and never sleeps.
pub const SERVE_EVERY: u64 = 1024;

impl Pacer {
    /// [`Pacer::wait`] for a producer: `serve` (serving its delivery reports) runs before
    /// each sleep and before every [`SERVE_EVERY`]-th event, so a sender that cannot keep up
    /// and never sleeps does not fill the producer's queue with unserved reports.
    pub fn wait_serving(&self, n: u64, mut serve: impl FnMut()) {
        if n % SERVE_EVERY == 0 {
            serve();
        }
        self.wait(n, serve);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 400 events at 2,000 a second take the 199.5 ms their schedule spans, less at most the
    /// tick within which the last is sent early, and the sender sleeps about once a tick, not
    /// once an event.
    #[test]
    fn keeps_to_the_rate_and_sleeps_once_a_tick() {
        let pacer = Pacer::new(2_000);
        let mut sleeps = 0;
        for n in 0..400 {
            pacer.wait(n, || sleeps += 1);
        }
        let took = pacer.started.elapsed();
        assert!(took + TICK >= pacer.due(399), "took only {took:?}");
        // A sleep ends when its event is due and the next starts only for an event due a
        // tick later: at most one per tick of the schedule (200 of them), however busy the
        // machine, where a sleep per event would be 400.
        assert!(
            sleeps <= 201,
            "{sleeps} sleeps for 400 events over 200 ticks"
        );
    }

    /// A sender behind its schedule never sleeps.
    #[test]
    fn a_late_sender_does_not_sleep() {
        let pacer = Pacer::new(1_000);
        std::thread::sleep(Duration::from_millis(20));
        let mut sleeps = 0;
        for n in 0..10 {
            pacer.wait(n, || sleeps += 1);
        }
        assert_eq!(sleeps, 0);
    }

    /// A producer behind its schedule never sleeps, yet serves its delivery reports before
    /// every [`SERVE_EVERY`]-th event.
    #[test]
    fn a_late_producer_still_serves_its_reports() {
        // A billion a second: every event is due by the time it is sent.
        let late = Pacer::new(1_000_000_000);
        std::thread::sleep(Duration::from_millis(20));
        let mut served = Vec::new();
        for n in 0..20 {
            let event = n * SERVE_EVERY / 4;
            late.wait_serving(event, || served.push(event));
        }
        let every = SERVE_EVERY;
        assert_eq!(served, [0, every, 2 * every, 3 * every, 4 * every]);
    }
}
