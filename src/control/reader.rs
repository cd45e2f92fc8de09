//! The control-topic reader: one per daemon, outside the consumer group.
//!
//! Every instance reads the whole control topic from its beginning, so every instance holds
//! the same versions and converges on the same active one. Start-up first replays the topic up
//! to its end (the bootstrap) without swapping through history, then publishes the outcome;
//! from then on each change is published as it happens.
//!
//! It runs on a thread of its own: assembling and validating a bundle of 100,000 partitions
//! takes real CPU time, and none of it may happen on the runtime that scores events. The one
//! thing it shares with the scoring path is a `watch` channel holding the active bundle; the
//! consumer loop swaps it in between two records.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::rejection::Rejection;
use super::signing::TrustedKeys;
use super::state::{ControlState, Outcome};
use super::ActiveBundle;
use crate::kafka::client_log::ClientLog;
use crate::model::bundle::Bundle;

/// How long to wait between attempts to reach a control topic that is not there yet.
const RETRY: Duration = Duration::from_secs(2);

/// What the reader needs.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// The control topic.
    pub topic: String,
    /// Extra librdkafka properties (consumer ones are used).
    pub librdkafka_options: std::collections::BTreeMap<String, String>,
    /// Keys whose signatures are accepted; empty accepts unsigned bundles.
    pub trusted: TrustedKeys,
    /// Bundles held for `activate` and `rollback`.
    pub keep_versions: usize,
    /// The largest bundle file accepted, and the budget for chunks waiting for a manifest.
    pub max_bundle_bytes: usize,
    /// What a bundle must fit to be served with the configured input and output formats.
    pub formats: crate::codec::FormatCheck,
}

/// The local bundle file, if the config names one, with its SHA-256.
pub struct LocalBundle {
    /// The bundle.
    pub bundle: Bundle,
    /// The file's SHA-256, hex.
    pub sha256: String,
}

/// Starts the reader; the receiver holds the active bundle (`None` until there is one).
pub fn start(
    options: ControlOptions,
    local: Option<LocalBundle>,
    cancel: CancellationToken,
) -> (ActiveBundle, std::thread::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let handle = std::thread::Builder::new()
        .name("control-reader".into())
        .spawn(move || ControlReader::new(options, tx).run(local, cancel));
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the control-topic reader thread");
            std::thread::spawn(|| {})
        }
    };
    (rx, handle)
}

/// The control consumer's context: librdkafka's messages, rate-limited; reaching the end of
/// the topic is how the bootstrap ends, not an error.
#[derive(Default)]
struct ControlContext {
    log: ClientLog,
}

impl rdkafka::ClientContext for ControlContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            self.log.error("control", &error, reason);
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log("control", level, fac, message);
    }
}

impl ConsumerContext for ControlContext {}

struct ControlReader {
    options: ControlOptions,
    tx: watch::Sender<Option<Arc<Bundle>>>,
    state: ControlState,
    log: ClientLog,
    /// False while replaying the topic at start-up.
    live: bool,
}

impl ControlReader {
    fn new(options: ControlOptions, tx: watch::Sender<Option<Arc<Bundle>>>) -> Self {
        let admission = Admission {
            max_bundle_bytes: options.max_bundle_bytes,
            trusted: options.trusted.clone(),
        };
        ControlReader {
            state: ControlState::new(admission, options.formats.clone(), options.keep_versions),
            options,
            tx,
            log: ClientLog::default(),
            live: false,
        }
    }

    fn run(mut self, local: Option<LocalBundle>, cancel: CancellationToken) {
        let local_created = local
            .as_ref()
            .map(|l| (l.bundle.version.clone(), l.bundle.created_at_ms));
        if let Some(l) = local {
            // Serve the local file at once; the control topic may still replace it.
            match self.state.versions_mut().add(l.bundle, &l.sha256, true) {
                Ok(Some(b)) => {
                    tracing::info!(version = %b.version, "local bundle loaded; reading the control topic for newer versions");
                    self.tx.send_replace(Some(b));
                }
                Ok(None) => {}
                Err(r) => tracing::error!(rejection = %r, "local bundle refused"),
            }
        }
        let Some(consumer) = self.connect(&cancel) else {
            return;
        };
        let started = Instant::now();
        let mut at_end: HashSet<i32> = HashSet::new();
        let partitions = consumer.assignment().map(|a| a.count()).unwrap_or_default();
        while !cancel.is_cancelled() {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => self.handle(&m),
                Some(Err(KafkaError::PartitionEOF(p)))
                    if !self.live && at_end.insert(p) && at_end.len() >= partitions =>
                {
                    self.finish_bootstrap(local_created.as_ref(), started.elapsed());
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => self.log.error("control", &e, "reading the control topic"),
            }
        }
    }

    /// Creates the consumer and assigns every Kafka partition of the control topic from its
    /// beginning, retrying until the topic exists or the daemon stops.
    fn connect(&self, cancel: &CancellationToken) -> Option<BaseConsumer<ControlContext>> {
        let topic = &self.options.topic;
        let mut warned = None::<Instant>;
        while !cancel.is_cancelled() {
            match self.try_connect() {
                Ok(c) => return Some(c),
                Err(e) => {
                    if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(topic, error = %e, "control topic not readable yet; retrying (create it with 1 Kafka partition)");
                        warned = Some(Instant::now());
                    }
                    std::thread::sleep(RETRY);
                }
            }
        }
        None
    }

    fn try_connect(&self) -> Result<BaseConsumer<ControlContext>, String> {
        let topic = &self.options.topic;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.options.brokers)
            // Never joins a group (partitions are assigned by hand) and never commits: every
            // start reads the topic from the beginning.
            .set(
                "group.id",
                format!("manymodel-control-{}", std::process::id()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            // The topic is quiet: answer fetches at once rather than holding them open, so a
            // publish is seen within a poll.
            .set("fetch.wait.max.ms", "50")
            .set("auto.offset.reset", "earliest");
        for (k, v) in &self.options.librdkafka_options {
            if !k.starts_with("group.")
                && !k.starts_with("enable.")
                && !k.starts_with("partition.assignment")
            {
                config.set(k, v);
            }
        }
        let consumer: BaseConsumer<ControlContext> = config
            .create_with_context(ControlContext::default())
            .map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let t = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| format!("no metadata for {topic}"))?;
        if let Some(e) = t.error() {
            return Err(format!("{e:?}"));
        }
        if t.partitions().is_empty() {
            return Err(format!("{topic} has no Kafka partitions"));
        }
        let mut list = TopicPartitionList::new();
        for p in t.partitions() {
            list.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        consumer.assign(&list).map_err(|e| e.to_string())?;
        Ok(consumer)
    }

    /// The replay reached the end of every Kafka partition: settle on a version.
    fn finish_bootstrap(&mut self, local: Option<&(String, i64)>, took: Duration) {
        self.live = true;
        // The local file wins only when it is newer than what the control topic activated.
        let versions = self.state.versions_mut();
        if let (Some((version, created)), Some(active)) = (local, versions.active()) {
            if active.version != *version && *created > active.created_at_ms {
                tracing::info!(local = %version, control = %active.version, "the local bundle is newer than the control topic's active version; keeping it");
                if let Err(r) = versions.activate(version) {
                    tracing::warn!(rejection = %r, "cannot reactivate the local bundle");
                }
            }
        }
        let active = versions.active().cloned();
        tracing::info!(
            topic = %self.options.topic,
            held = ?self.state.versions().held(),
            active = ?active.as_ref().map(|b| b.version.as_str()),
            seconds = took.as_secs_f64(),
            "control topic replayed"
        );
        self.publish(active);
    }

    /// Hands `active` to the consumer loop when it differs from what it has.
    fn publish(&self, active: Option<Arc<Bundle>>) {
        let Some(active) = active else { return };
        let same = self
            .tx
            .borrow()
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, &active));
        if !same {
            self.tx.send_replace(Some(active));
        }
    }

    fn handle(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) {
        let headers = m.headers();
        let header = |name: &str| {
            headers.and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
        };
        let at = || format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
        match self.state.record(m.key(), header, m.payload()) {
            Outcome::Chunk { dropped } => {
                for publish_id in dropped {
                    tracing::warn!(at = %at(), %publish_id, "dropped the chunks of an unfinished publish to stay within max_bundle_bytes");
                }
            }
            Outcome::Unchanged => {}
            Outcome::Activated(active) => {
                if self.live {
                    tracing::info!(at = %at(), version = %active.version, "activating");
                    self.publish(Some(active));
                }
            }
            Outcome::Rejected { version, rejection } => {
                self.reject(&at(), version.as_deref(), rejection)
            }
        }
    }

    fn reject(&self, at: &str, version: Option<&str>, r: Rejection) {
        tracing::warn!(
            at,
            version,
            reason = r.reason.as_str(),
            detail = %r.detail,
            active = ?self.state.versions().active().map(|b| b.version.as_str()),
            "control record rejected; still serving the active version"
        );
        crate::metrics::bundle_rejected(r.reason.as_str());
    }
}
