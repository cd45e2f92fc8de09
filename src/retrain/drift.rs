//! Which stores are drifting: the drift records the daemons write, read from the drift topic
//! or from a daemon's `GET /partitions`.
//!
//! A drift record (the value on the drift topic, keyed by store id, and each object of
//! `/partitions`):
//!
//! ```text
//! {"partition":"S017","kind":"partition","model_version":"v1","actuals":57,"mae":9.8,
//!  "rmse":12.3,"bias":8.1,"training_rmse":3.9,"expected_rmse":4.1,"ratio":3.0,"verdict":"drifting",
//!  "verdict_at_ms":1764650000000,"last_actual_ms":1764650012345}
//! ```
//!
//! The latest record per store is its state. Only `partition`, `verdict` and
//! `verdict_at_ms` are needed here; the statistics are optional, so that a daemon may add or
//! leave out one without breaking retrain. A record that is not such an object is logged and
//! skipped, never fatal.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::topic::{self, TopicConsumer};
use crate::error::{Error, Result};

/// What a daemon concluded about a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Too few actuals for a verdict yet (in `/partitions`, never on the drift topic).
    Pending,
    /// Its model's errors on actuals are well above its training error.
    Drifting,
    /// They are not (any more).
    Stable,
}

/// Which model scored the store's actuals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoredBy {
    /// Its own model.
    Partition,
    /// The fallback: it has no model of its own.
    Fallback,
}

/// One drift record, as the daemons write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftRecord {
    /// The store id.
    pub partition: String,
    /// Its own model or the fallback.
    #[serde(default)]
    pub kind: Option<ScoredBy>,
    /// The bundle version that scored the actuals.
    #[serde(default)]
    pub model_version: Option<String>,
    /// Actuals scored.
    #[serde(default)]
    pub actuals: Option<u64>,
    /// Mean absolute error on them.
    #[serde(default)]
    pub mae: Option<f64>,
    /// Root mean squared error on them.
    #[serde(default)]
    pub rmse: Option<f64>,
    /// Mean of actual − prediction.
    #[serde(default)]
    pub bias: Option<f64>,
    /// The model's in-sample RMSE from training.
    #[serde(default)]
    pub training_rmse: Option<f64>,
    /// The RMSE the model is expected to have on new data (its training RMSE allowing for
    /// its rows and inputs).
    #[serde(default)]
    pub expected_rmse: Option<f64>,
    /// `rmse / expected_rmse`.
    #[serde(default)]
    pub ratio: Option<f64>,
    /// Drifting or stable.
    pub verdict: Verdict,
    /// The timestamp of the actual that changed the verdict: the store's behaviour changed
    /// around then. Always set on a drifting store's record; null while pending.
    #[serde(default)]
    pub verdict_at_ms: Option<i64>,
    /// The timestamp of the latest actual scored.
    #[serde(default)]
    pub last_actual_ms: Option<i64>,
}

impl DriftRecord {
    /// Parses a record's value; the error says what is wrong with it.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let record: DriftRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if record.partition.trim().is_empty() {
            return Err("\"partition\" is empty".into());
        }
        if record.verdict == Verdict::Drifting && record.verdict_at_ms.is_none() {
            return Err("a drifting store's record needs \"verdict_at_ms\" (since when)".into());
        }
        Ok(record)
    }
}

/// A store that drifts, since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drifting {
    /// The store id.
    pub partition: String,
    /// When its verdict turned to drifting.
    pub verdict_at_ms: i64,
}

/// The latest drift record per store, as records arrive.
#[derive(Debug, Default)]
pub struct DriftState {
    /// Per store: the latest record and its Kafka record timestamp and offset (for order).
    latest: HashMap<String, (i64, i64, DriftRecord)>,
    /// Records skipped as malformed.
    pub skipped: u64,
}

impl DriftState {
    /// Takes in one drift record read from Kafka; a malformed one is logged and skipped.
    pub fn record(&mut self, m: &BorrowedMessage<'_>) {
        let at = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
        let parsed = DriftRecord::parse(m.payload().unwrap_or_default()).and_then(|r| {
            match m.key().map(std::str::from_utf8) {
                Some(Ok(key)) if key != r.partition => Err(format!(
                    "its key {key:?} is not its partition {:?}",
                    r.partition
                )),
                Some(Err(_)) => Err("its key is not UTF-8".into()),
                _ => Ok(r),
            }
        });
        match parsed {
            Ok(r) => {
                let ts = m.timestamp().to_millis().unwrap_or(0);
                self.put(ts, m.offset(), r);
            }
            Err(why) => {
                self.skipped += 1;
                tracing::warn!(at, error = %why, "drift record skipped: not a drift record");
            }
        }
    }

    /// Takes in one record with its order `(timestamp, offset)`: the later one wins.
    pub fn put(&mut self, ts: i64, offset: i64, r: DriftRecord) {
        match self.latest.get(&r.partition) {
            Some((t, o, _)) if (*t, *o) > (ts, offset) => {}
            _ => {
                self.latest.insert(r.partition.clone(), (ts, offset, r));
            }
        }
    }

    /// The stores whose latest verdict is drifting, sorted by id.
    pub fn drifting(&self) -> Vec<Drifting> {
        let mut out: Vec<Drifting> = self
            .latest
            .values()
            .filter(|(_, _, r)| r.verdict == Verdict::Drifting)
            .map(|(_, _, r)| Drifting {
                partition: r.partition.clone(),
                // `parse` refuses a drifting record that does not say since when.
                verdict_at_ms: r.verdict_at_ms.unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.partition.cmp(&b.partition));
        out
    }
}

/// The drift topic, read to its end and then, for `--watch`, followed.
pub struct DriftTopic {
    consumer: TopicConsumer,
    topic: String,
    /// What has been read so far.
    pub state: DriftState,
}

impl DriftTopic {
    /// Reads `topic` from its beginning to its end now.
    pub fn read(
        connection: &crate::kafka::connection::Connection,
        topic: &str,
        patience: Duration,
        cancel: &CancellationToken,
    ) -> Result<Self> {
        let consumer = topic::consumer(connection)?;
        let stretches = topic::stretches(&consumer, topic, None)?;
        let mut state = DriftState::default();
        topic::read(&consumer, topic, &stretches, patience, cancel, |m| {
            state.record(m)
        })?;
        tracing::info!(
            topic,
            stores = state.latest.len(),
            drifting = state.drifting().len(),
            skipped = state.skipped,
            "drift topic read"
        );
        // Followed from where the reading ended.
        let mut list = rdkafka::TopicPartitionList::new();
        for s in &stretches {
            list.add_partition_offset(topic, s.partition, rdkafka::Offset::Offset(s.end))
                .map_err(|e| Error::Kafka(format!("{topic}/{}: {e}", s.partition)))?;
        }
        rdkafka::consumer::Consumer::assign(&consumer, &list)
            .map_err(|e| Error::Kafka(format!("following {topic}: {e}")))?;
        Ok(DriftTopic {
            consumer,
            topic: topic.to_owned(),
            state,
        })
    }

    /// Takes in the records that arrive within `wait`; the number taken in.
    pub fn follow(&mut self, wait: Duration) -> usize {
        let mut n = 0;
        let mut timeout = wait;
        loop {
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => {
                    self.state.record(&m);
                    n += 1;
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "reading the drift topic")
                }
                None => return n,
            }
            // Drain what is already there without waiting again.
            timeout = Duration::ZERO;
        }
    }
}

/// A daemon's `/partitions` endpoint.
#[derive(Debug, Clone)]
pub struct PartitionsUrl {
    /// `host:port`.
    authority: String,
    /// The URL's path, without a trailing slash.
    prefix: String,
    /// As configured, for messages.
    url: String,
}

/// How long one request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_ANSWER: u64 = 64 << 20;

/// The body of `GET /partitions`.
#[derive(Debug, Deserialize)]
struct PartitionsAnswer {
    partitions: Vec<serde_json::Value>,
}

impl PartitionsUrl {
    /// `http://host[:port][/path]`.
    pub fn new(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            Error::Usage(format!(
                "source.partitions_url {url:?} must start with http://"
            ))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(Error::Usage(format!(
                "source.partitions_url {url:?} has no host"
            )));
        }
        Ok(PartitionsUrl {
            authority: if authority.contains(':') {
                authority.to_owned()
            } else {
                format!("{authority}:80")
            },
            prefix: path.trim_end_matches('/').to_owned(),
            url: url.to_owned(),
        })
    }

    /// The drifting stores the daemon lists, worst first, at most `limit` asked for. Objects
    /// that are not drift records are logged and skipped.
    pub fn drifting(&self, limit: usize) -> Result<Vec<Drifting>> {
        let path = format!("{}/partitions?sort=drift&limit={limit}", self.prefix);
        let (status, body) = self.get(&path)?;
        if status != 200 {
            return Err(Error::Http(format!(
                "GET {}{path} answered {status}: {}",
                self.url,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        let answer: PartitionsAnswer = serde_json::from_slice(&body).map_err(|e| {
            Error::Usage(format!(
                "GET {}{path} did not answer {{\"partitions\":[...]}}: {e}; is partitions_url a manymodel daemon's listener?",
                self.url
            ))
        })?;
        let mut state = DriftState::default();
        for (i, object) in answer.partitions.into_iter().enumerate() {
            match serde_json::from_value::<DriftRecord>(object) {
                Ok(r) if !r.partition.trim().is_empty() => state.put(0, i as i64, r),
                Ok(_) => {
                    state.skipped += 1;
                    tracing::warn!(url = %self.url, index = i, "/partitions entry skipped: empty partition");
                }
                Err(e) => {
                    state.skipped += 1;
                    tracing::warn!(url = %self.url, index = i, error = %e, "/partitions entry skipped: not a drift record");
                }
            }
        }
        Ok(state.drifting())
    }

    /// One GET, one connection; status and body.
    fn get(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let failed = |e: String| {
            Error::Http(format!(
                "GET {}{path}: {e} (is source.partitions_url a running daemon's listener?)",
                self.url
            ))
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&self.authority)
            .map_err(|e| failed(e.to_string()))?
            .next()
            .ok_or_else(|| failed(format!("{} resolves to no address", self.authority)))?;
        let mut stream =
            TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| failed(e.to_string()))?;
        stream
            .set_read_timeout(Some(HTTP_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(HTTP_TIMEOUT)))
            .map_err(|e| failed(e.to_string()))?;
        // One write: `write!` on the stream would send the request in pieces.
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.authority
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .map_err(|e| failed(e.to_string()))?;
        crate::codec::registry::parse_response(&answer)
            .ok_or_else(|| failed("the answer is not HTTP/1.1".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"partition":"S017","kind":"partition","model_version":"v1","actuals":57,"mae":9.8,"rmse":12.3,"bias":8.1,"training_rmse":3.9,"ratio":3.15,"verdict":"drifting","verdict_at_ms":1764650000000,"last_actual_ms":1764650012345}"#;

    #[test]
    fn the_contract_record_parses_and_bad_ones_say_why() {
        let r = DriftRecord::parse(RECORD.as_bytes()).unwrap();
        assert_eq!(r.partition, "S017");
        assert_eq!(r.kind, Some(ScoredBy::Partition));
        assert_eq!(r.verdict, Verdict::Drifting);
        assert_eq!(r.verdict_at_ms, Some(1_764_650_000_000));
        let minimal = r#"{"partition":"S1","verdict":"stable","verdict_at_ms":5,"ratio":null}"#;
        assert_eq!(
            DriftRecord::parse(minimal.as_bytes()).unwrap().verdict,
            Verdict::Stable
        );
        for bad in [
            "not json",
            "[1]",
            r#"{"partition":"S1","verdict":"worse","verdict_at_ms":5}"#,
            r#"{"partition":"S1","verdict":"drifting"}"#,
            r#"{"partition":"","verdict":"drifting","verdict_at_ms":5}"#,
            r#"{"partition":7,"verdict":"drifting","verdict_at_ms":5}"#,
        ] {
            assert!(DriftRecord::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_latest_record_per_store_is_its_state() {
        let mut state = DriftState::default();
        let rec = |p: &str, v: Verdict, at: i64| DriftRecord {
            verdict: v,
            verdict_at_ms: Some(at),
            partition: p.into(),
            ..DriftRecord::parse(RECORD.as_bytes()).unwrap()
        };
        state.put(10, 0, rec("A", Verdict::Drifting, 1));
        state.put(20, 1, rec("A", Verdict::Stable, 2));
        state.put(10, 2, rec("B", Verdict::Stable, 1));
        state.put(30, 3, rec("B", Verdict::Drifting, 3));
        // Out of order: an older record does not overwrite a newer one.
        state.put(5, 4, rec("B", Verdict::Stable, 0));
        assert_eq!(
            state.drifting(),
            vec![Drifting {
                partition: "B".into(),
                verdict_at_ms: 3
            }]
        );
    }

    #[test]
    fn partitions_url_is_parsed_like_the_registry_url() {
        let u = PartitionsUrl::new("http://serve-1:9898/").unwrap();
        assert_eq!(u.authority, "serve-1:9898");
        assert_eq!(u.prefix, "");
        assert_eq!(PartitionsUrl::new("http://h").unwrap().authority, "h:80");
        assert!(PartitionsUrl::new("https://h").is_err());
    }

    #[test]
    fn partitions_are_read_from_a_daemon_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The whole request head, however many reads it takes.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                head.extend_from_slice(&buf[..n]);
            }
            let request = String::from_utf8_lossy(&head).into_owned();
            let body = format!(
                r#"{{"tracked":3,"drifting":1,"partitions":[{RECORD},{{"partition":"S2","verdict":"stable","verdict_at_ms":1}},{{"oops":1}}]}}"#
            );
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            request
        });
        let url = PartitionsUrl::new(&format!("http://{addr}")).unwrap();
        let drifting = url.drifting(50).unwrap();
        assert_eq!(
            drifting,
            vec![Drifting {
                partition: "S017".into(),
                verdict_at_ms: 1_764_650_000_000
            }]
        );
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /partitions?sort=drift&limit=50 HTTP/1.1"),
            "{request}"
        );
    }
}
