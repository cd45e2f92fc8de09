//! librdkafka's own logs and errors, rate-limited.
//!
//! With a broker down, librdkafka reports every failed connection attempt, several a second
//! per client. One line per kind of message every ten seconds (with how many were held back)
//! says the same without burying everything else in the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;

/// How long a kind of message stays quiet after it was logged.
const QUIET: Duration = Duration::from_secs(10);

/// A rate limiter for one client's librdkafka messages.
#[derive(Debug, Default)]
pub struct ClientLog {
    /// Per kind: when it was last logged and how many were held back since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl ClientLog {
    /// Returns how many were held back when `kind` is due for logging, `None` while quiet.
    fn due(&self, kind: &str) -> Option<u64> {
        let mut seen = self.seen.lock().ok()?;
        match seen.get_mut(kind) {
            Some((at, held)) if at.elapsed() < QUIET => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = Instant::now();
                *held = 0;
                Some(n)
            }
            None => {
                seen.insert(kind.to_owned(), (Instant::now(), 0));
                Some(0)
            }
        }
    }

    /// A client error.
    pub fn error(&self, client: &str, error: &rdkafka::error::KafkaError, reason: &str) {
        let kind = format!("error:{:?}", error.rdkafka_error_code());
        if let Some(held) = self.due(&kind) {
            tracing::warn!(client, %error, reason, held_back = held, "librdkafka error");
        }
    }

    /// A librdkafka log line.
    pub fn log(&self, client: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if (level as i32) > (RDKafkaLogLevel::Warning as i32) {
            tracing::debug!(client, fac, message, "librdkafka");
            return;
        }
        if let Some(held) = self.due(fac) {
            tracing::warn!(client, fac, message, held_back = held, "librdkafka");
        }
    }
}
