//! The stall watchdog: work is waiting, yet nothing has been acknowledged for a while.
//!
//! A daemon can be alive (its loop turns, `/healthz` would say ok) and still make no progress:
//! an output topic that refuses writes, a broker that accepts connections but never
//! acknowledges, an actor wedged on something. The consumer loop asks the watchdog once a
//! second; when events wait (consumer lag, events in flight, parked work) and no offset has
//! been finished for `[pipeline] stall_timeout_secs`, the watchdog marks the daemon unhealthy
//! and logs where the work is stuck. The first acknowledgement clears it.

use std::time::{Duration, Instant};

use crate::health::Health;

/// Tracks progress between checks.
#[derive(Debug)]
pub struct StallWatchdog {
    timeout: Duration,
    /// Offsets finished at the last sign of progress.
    last_finished: u64,
    /// When progress was last seen (or nothing was waiting).
    since: Instant,
    stalled: bool,
}

impl StallWatchdog {
    /// A watchdog that reports a stall after `timeout` without progress.
    pub fn new(timeout: Duration) -> Self {
        StallWatchdog {
            timeout,
            last_finished: 0,
            since: Instant::now(),
            stalled: false,
        }
    }

    /// One check: `finished` is the count of offsets finished so far, `waiting` whether any
    /// work waits; `describe` says where, and is called only when the daemon is stalled.
    pub fn check(
        &mut self,
        finished: u64,
        waiting: bool,
        health: &Health,
        describe: impl FnOnce() -> String,
    ) {
        if finished != self.last_finished || !waiting {
            self.last_finished = finished;
            self.since = Instant::now();
            if self.stalled {
                self.stalled = false;
                health.set_stalled(None);
                tracing::info!("progressing again: the stall is over");
            }
            return;
        }
        let idle = self.since.elapsed();
        if idle < self.timeout {
            return;
        }
        let place = describe();
        if !self.stalled {
            tracing::warn!(
                seconds_without_progress = idle.as_secs(),
                stuck = %place,
                "stalled: events are waiting and none has been acknowledged"
            );
        }
        self.stalled = true;
        health.set_stalled(Some(format!(
            "no event acknowledged for {} s while work waits; {place}",
            idle.as_secs()
        )));
    }

    /// True while stalled.
    pub fn is_stalled(&self) -> bool {
        self.stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_without_progress_past_the_timeout_is_a_stall_and_progress_clears_it() {
        let health = Health::default();
        let mut w = StallWatchdog::new(Duration::ZERO);
        w.check(0, false, &health, || unreachable!("nothing waits"));
        assert!(!w.is_stalled());
        w.check(0, true, &health, || "Kafka partition 0: 3 in flight".into());
        assert!(w.is_stalled());
        let (code, body) = health.healthz();
        assert_eq!(code, 503);
        assert!(body.contains("stalled") && body.contains("Kafka partition 0"));
        w.check(1, true, &health, || unreachable!("it progressed"));
        assert!(!w.is_stalled());
        assert_eq!(health.healthz().0, 200);
    }
}
