//! What `/healthz` and `/readyz` report, gathered from the loops that know it.
//!
//! `/healthz` asks "is the process alive and are its loops turning": the consumer loop beats
//! at least once a second even when no record arrives, and the stall watchdog
//! ([`crate::watchdog`]) has not found work waiting with nothing progressing. `/readyz` asks "should traffic count on
//! this instance": a bundle is active, the consumer is subscribed (it has an assignment or is
//! waiting for one) and a broker is reachable. Both answer with a JSON body saying why.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;

use serde_json::json;

use crate::clock::now_ms;

/// The consumer loop counts as stuck when it has not beaten for this long.
const LOOP_STALE_MS: i64 = 30_000;

/// After the last consumer error for a batch that cannot be decoded, `/readyz` stays 503 this
/// long (librdkafka tries the fetch again every few seconds while the batch is there).
const UNDECODABLE_MS: i64 = 30_000;

/// Shared health state.
#[derive(Debug)]
pub struct Health {
    /// Last consumer-loop beat, epoch ms.
    loop_beat_ms: AtomicI64,
    /// The active bundle's version.
    bundle: Mutex<Option<String>>,
    /// The consumer subscribed to the input topic.
    subscribed: AtomicBool,
    /// A broker answered recently.
    broker_up: AtomicBool,
    /// Why the broker is thought down, as librdkafka's error callback said it.
    broker_error: Mutex<Option<String>>,
    /// The brokers and their connection states, from librdkafka's statistics, while none is up.
    broker_states: Mutex<Option<String>>,
    /// Where the pipeline is stuck, while the stall watchdog says it is.
    stalled: Mutex<Option<String>>,
    /// The consumer lag summed over the input's Kafka partitions, from the last statistics.
    lag: AtomicI64,
    /// The last input batch librdkafka could not decode: its error, and when, epoch ms.
    undecodable: Mutex<Option<(String, i64)>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            loop_beat_ms: AtomicI64::new(now_ms()),
            bundle: Mutex::new(None),
            subscribed: AtomicBool::new(false),
            broker_up: AtomicBool::new(true),
            broker_error: Mutex::new(None),
            broker_states: Mutex::new(None),
            stalled: Mutex::new(None),
            lag: AtomicI64::new(0),
            undecodable: Mutex::new(None),
        }
    }
}

impl Health {
    /// The consumer loop is turning.
    pub fn beat(&self) {
        self.loop_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// A bundle became active.
    pub fn bundle_active(&self, version: &str) {
        if let Ok(mut b) = self.bundle.lock() {
            *b = Some(version.to_owned());
        }
    }

    /// The consumer subscribed.
    pub fn subscribed(&self) {
        self.subscribed.store(true, Ordering::Relaxed);
    }

    /// librdkafka reported that every broker is down, and why.
    pub fn brokers_down(&self, reason: &str) {
        self.broker_up.store(false, Ordering::Relaxed);
        if let Ok(mut e) = self.broker_error.lock() {
            *e = Some(reason.to_owned());
        }
    }

    /// librdkafka's statistics: `None` while a broker connection is up, else each broker's
    /// state (`127.0.0.1:9092/1: CONNECT`).
    pub fn broker_states(&self, down: Option<String>) {
        let up = down.is_none();
        self.broker_up.store(up, Ordering::Relaxed);
        if let Ok(mut s) = self.broker_states.lock() {
            *s = down;
        }
        if up {
            if let Ok(mut e) = self.broker_error.lock() {
                *e = None;
            }
        }
    }

    /// The consumer lag summed over the input's Kafka partitions.
    pub fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// The last consumer lag reported.
    pub fn lag(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// The watchdog's verdict: where the pipeline is stuck, or `None` when it progresses.
    pub fn set_stalled(&self, reason: Option<String>) {
        crate::metrics::stalled(reason.is_some());
        if let Ok(mut s) = self.stalled.lock() {
            *s = reason;
        }
    }

    /// librdkafka could not decode an input batch (corrupt, or a codec it lacks): `error`
    /// names it.
    pub fn undecodable_batch(&self, error: &str) {
        if let Ok(mut u) = self.undecodable.lock() {
            *u = Some((error.to_owned(), now_ms()));
        }
    }

    /// `/healthz`: status code and body.
    pub fn healthz(&self) -> (u16, String) {
        let age = now_ms() - self.loop_beat_ms.load(Ordering::Relaxed);
        let stalled = self.stalled.lock().ok().and_then(|s| s.clone());
        let turning = age < LOOP_STALE_MS;
        let ok = turning && stalled.is_none();
        let reason = if !turning {
            Some(format!("the consumer loop has not turned for {age} ms"))
        } else {
            stalled.map(|s| format!("stalled: {s}"))
        };
        let body = json!({
            "status": if ok { "ok" } else if turning { "stalled" } else { "stuck" },
            "consumer_loop_last_beat_ms_ago": age,
            "reason": reason,
        });
        (if ok { 200 } else { 503 }, body.to_string())
    }

    /// `/readyz`: status code and body.
    pub fn readyz(&self) -> (u16, String) {
        let bundle = self.bundle.lock().ok().and_then(|b| b.clone());
        let subscribed = self.subscribed.load(Ordering::Relaxed);
        let broker_up = self.broker_up.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        if bundle.is_none() {
            reasons.push("no bundle is active".to_owned());
        }
        if !subscribed {
            reasons.push("the consumer has not subscribed yet".to_owned());
        }
        if !broker_up {
            let why = self.broker_error.lock().ok().and_then(|e| e.clone());
            let states = self.broker_states.lock().ok().and_then(|s| s.clone());
            reasons.push(format!(
                "no broker is reachable{}{}",
                why.map(|w| format!(": {w}")).unwrap_or_default(),
                states.map(|s| format!(" ({s})")).unwrap_or_default()
            ));
        }
        let undecodable = self.undecodable.lock().ok().and_then(|u| u.clone());
        if let Some((error, at)) = undecodable {
            let ago = now_ms() - at;
            if ago < UNDECODABLE_MS {
                reasons.push(format!(
                    "an input batch cannot be decoded ({error}, {ago} ms ago); move the group's offset past it to go on"
                ));
            }
        }
        let ready = reasons.is_empty();
        let body = json!({
            "status": if ready { "ready" } else { "not ready" },
            "bundle_version": bundle,
            "consumer_subscribed": subscribed,
            "broker_reachable": broker_up,
            "reasons": reasons,
        });
        (if ready { 200 } else { 503 }, body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_batch_makes_it_unready_with_librdkafkas_message() {
        let h = Health::default();
        h.bundle_active("v1");
        h.subscribed();
        assert_eq!(h.readyz().0, 200);
        h.undecodable_batch("Decompression (codec 0x4) of message at 1234 failed");
        let (code, body) = h.readyz();
        assert_eq!(code, 503);
        assert!(body.contains("message at 1234"), "{body}");
    }

    #[test]
    fn readyz_names_librdkafkas_reason_and_each_brokers_state_until_one_is_up() {
        let h = Health::default();
        h.bundle_active("v1");
        h.subscribed();
        assert_eq!(h.readyz().0, 200);
        h.brokers_down("1/1 brokers are down");
        h.broker_states(Some("127.0.0.1:9092/1: CONNECT".into()));
        let (code, body) = h.readyz();
        assert_eq!(code, 503);
        assert!(
            body.contains(
                "no broker is reachable: 1/1 brokers are down (127.0.0.1:9092/1: CONNECT)"
            ),
            "{body}"
        );
        // The error callback speaks again between two statistics: the states stay.
        h.brokers_down("2/2 brokers are down");
        assert!(h
            .readyz()
            .1
            .contains("2/2 brokers are down (127.0.0.1:9092/1: CONNECT)"));
        h.broker_states(None);
        assert_eq!(h.readyz().0, 200);
    }
}
