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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::local::LocalBundle;
use super::message::{ChunkLocation, ControlMessage, Manifest, KIND_HEADER, PUBLISH_HEADER};
use super::rejection::{Reason, Rejection};
use super::replay::ReplayPlan;
use super::signing::TrustedKeys;
use super::state::{ControlState, Outcome};
use super::ActiveBundle;
use crate::kafka::client_log::ClientLog;
use crate::model::bundle::Bundle;

/// How long a chunk fetch waits for the next record before it gives up.
const FETCH_PATIENCE: Duration = Duration::from_secs(30);

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
    /// Versions the restart plan did not fetch (cleared once live).
    skipped: HashSet<String>,
    /// The manifests of the versions whose chunks are in a chunks topic, by version: what it
    /// takes to fetch one (or the base of one) again. Only the active version's bundle is kept
    /// in memory; the others are held on the topic and fetched when a command needs them.
    manifests: HashMap<String, Manifest>,
    /// Reads chunks by offset from a chunks topic, made on first use.
    chunks: Option<BaseConsumer<ControlContext>>,
}

/// The longest chain of deltas fetched to bring back a version held on the topic.
const MAX_DELTA_CHAIN: usize = 64;

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
            skipped: HashSet::new(),
            manifests: HashMap::new(),
            chunks: None,
        }
    }

    fn run(mut self, mut local: Option<LocalBundle>, cancel: CancellationToken) {
        let Some(consumer) = self.connect(&cancel, &mut local) else {
            return;
        };
        let started = Instant::now();
        // Held before the topic's first record, as it was on the daemon that ran before (or
        // already, if it was served while the topic could not be read).
        if let Some(l) = local {
            self.add_local(l);
        }
        if !self.bootstrap(&consumer, &cancel) {
            return;
        }
        self.finish_bootstrap(started.elapsed(), &cancel);
        while !cancel.is_cancelled() {
            match consumer.poll(Duration::from_millis(200)) {
                None | Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Ok(m)) => self.handle(&m, &cancel),
                Some(Err(e)) => self.log.error("control", &e, "reading the control topic"),
            }
        }
    }

    /// Replays the control topic to its end; false if stopped first.
    ///
    /// First pass: manifests and commands are noted, chunks in the control topic itself are
    /// passed over. If a manifest without `chunks_at` turns up after chunks of its publish (a
    /// topic written by an older `publish`), the topic is read again from its beginning record
    /// by record, as it was always read; one with no chunk before it is refused. Otherwise the
    /// noted records are applied in order after the local bundle, if the daemon holds one,
    /// fetching by offset the chunks of only the publishes the [`ReplayPlan`] needs.
    fn bootstrap(
        &mut self,
        consumer: &BaseConsumer<ControlContext>,
        cancel: &CancellationToken,
    ) -> bool {
        let mut noted: Vec<Noted> = Vec::new();
        let mut plan = ReplayPlan::default();
        let mut passed_over = 0usize;
        // The publishes whose chunks are in the control topic itself, up to a bound.
        let mut chunked: HashSet<String> = HashSet::new();
        let mut too_many_to_tell = false;
        let mut legacy = false;
        let ended = read_to_end(consumer, cancel, |m| {
            if is_chunk(m) {
                passed_over += 1;
                match publish_id(m) {
                    Some(id) if chunked.len() < TRACKED_PUBLISHES => {
                        chunked.insert(id.to_owned());
                    }
                    Some(id) if !chunked.contains(id) => too_many_to_tell = true,
                    _ => {}
                }
                return true;
            }
            let at = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
            match serde_json::from_slice::<ControlMessage>(m.payload().unwrap_or_default()) {
                Ok(ControlMessage::Manifest(x)) if x.chunks_at.is_none() => {
                    if too_many_to_tell || chunked.contains(&x.publish_id) {
                        legacy = true;
                        return false;
                    }
                    // Chunks come before their manifest, and none of this one's did: it can
                    // never be assembled. Refused now (`incomplete`), it is no reason to
                    // replay the whole topic at every restart.
                    let outcome = self.state.record(m.key(), |_| None, m.payload());
                    self.outcome(&at, outcome);
                    return true;
                }
                Ok(message) => plan.message(&message),
                Err(_) => {
                    // Not a control record: refused (and counted) now, not kept for later.
                    let outcome = self.state.record(m.key(), |_| None, m.payload());
                    self.outcome(&at, outcome);
                    return true;
                }
            }
            noted.push(Noted {
                at,
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            });
            true
        });
        if !ended {
            return false;
        }
        if legacy {
            tracing::info!(topic = %self.options.topic, "the control topic holds chunks written by an older publish: replaying it whole");
            if let Err(e) = assign_from_beginning(consumer, &self.options.topic) {
                tracing::error!(error = %e, "cannot read the control topic again from its beginning");
                return false;
            }
            return read_to_end(consumer, cancel, |m| {
                self.handle(m, cancel);
                true
            });
        }
        if let Some(local) = self.state.versions().provisional() {
            plan.local_first(local);
        }
        let needed = plan.needed(self.options.keep_versions);
        tracing::info!(
            records = noted.len(),
            chunks_passed_over = passed_over,
            publishes_fetched = needed.fetch.len(),
            publishes_held_on_topic = needed.hold.len(),
            "control topic read; fetching the chunks of the active version"
        );
        for n in noted {
            let manifest = match serde_json::from_slice::<ControlMessage>(
                n.payload.as_deref().unwrap_or_default(),
            ) {
                Ok(ControlMessage::Manifest(m)) => Some(m),
                _ => None,
            };
            if let Some(m) = manifest {
                if needed.hold.contains(&m.publish_id) {
                    let outcome = self.state.hold_on_topic(&m);
                    self.manifests.insert(m.version.clone(), m);
                    self.outcome(&n.at, outcome);
                    continue;
                }
                if !needed.fetch.contains(&m.publish_id) {
                    self.skipped.insert(m.version.clone());
                    continue;
                }
                self.apply(
                    &n.at,
                    n.key.as_deref(),
                    n.payload.as_deref(),
                    Some(&m),
                    cancel,
                );
                continue;
            }
            self.apply(&n.at, n.key.as_deref(), n.payload.as_deref(), None, cancel);
        }
        true
    }

    /// Creates the consumer and assigns every Kafka partition of the control topic from its
    /// beginning, retrying until the topic exists or the daemon stops.
    /// While the topic cannot be read, the local bundle (if any) is served: no operator's
    /// word can be read to overrule it yet.
    fn connect(
        &mut self,
        cancel: &CancellationToken,
        local: &mut Option<LocalBundle>,
    ) -> Option<BaseConsumer<ControlContext>> {
        let topic = self.options.topic.clone();
        let topic = topic.as_str();
        let mut warned = None::<Instant>;
        while !cancel.is_cancelled() {
            match self.try_connect() {
                Ok(c) => return Some(c),
                Err(e) => {
                    if let Some(l) = local.take() {
                        tracing::info!(version = %l.bundle.version, "serving the local bundle until the control topic can be read");
                        self.add_local(l);
                        self.publish(self.state.versions().active().cloned());
                    }
                    if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(30)) {
                        tracing::warn!(topic, error = %e, "control topic not readable yet; retrying");
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
        let consumer: BaseConsumer<ControlContext> = self
            .client_config()
            .create_with_context(ControlContext::default())
            .map_err(|e| {
                format!("{e} (check the librdkafka options: [kafka.librdkafka_options])")
            })?;
        assign_from_beginning(&consumer, topic).map_err(|e| {
            format!("{e} (create the topic with 1 Kafka partition if it is missing)")
        })?;
        Ok(consumer)
    }

    /// The control consumer's configuration (the chunks consumer's too).
    fn client_config(&self) -> ClientConfig {
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
        config
    }

    /// The replay reached the end of every Kafka partition: settle on a version. The
    /// operator's last word wins: the local bundle was held and active before the topic's
    /// first record, so it is served when the topic activated nothing, or when its commands
    /// returned to it; otherwise the topic's active version is, whatever the local file holds.
    fn finish_bootstrap(&mut self, took: Duration, cancel: &CancellationToken) {
        self.live = true;
        let local = self.state.versions().provisional().map(str::to_owned);
        self.state.versions_mut().settle();
        self.skipped.clear();
        // The plan fetches the active version; but when that one was refused, the version
        // active before it may still be held on the topic only: fetch it now. One that does
        // not load is forgotten, and the one before it is tried, as a full replay would have
        // found.
        while let Some(v) = self.state.versions().active_version().map(str::to_owned) {
            if !self.state.versions().on_topic(&v) {
                break;
            }
            if let Err(r) = self.materialise(&v, cancel, 0) {
                self.reject("bootstrap", Some(&v), r);
            }
        }
        if let Some(local) = local {
            if self.state.versions().active_version() != Some(local.as_str()) {
                tracing::info!(%local, "the control topic has another active version: the local bundle is not served");
            }
        }
        self.release_inactive();
        crate::memory::return_freed();
        let active = self.state.versions().active().cloned();
        tracing::info!(
            topic = %self.options.topic,
            held = ?self.state.versions().held(),
            active = ?active.as_ref().map(|b| b.version.as_str()),
            seconds = took.as_secs_f64(),
            "control topic replayed"
        );
        self.publish(active);
    }

    /// Holds and activates the local bundle, before the topic is replayed.
    fn add_local(&mut self, l: LocalBundle) {
        match self.state.versions_mut().add_local(l.bundle, &l.sha256) {
            Ok(Some(b)) => tracing::info!(version = %b.version, "local bundle loaded"),
            Ok(None) => {}
            Err(r) => tracing::error!(rejection = %r, "local bundle refused"),
        }
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
            self.tx.send_replace(Some(active.clone()));
            // After the hand-over, so the swap does not wait for it: the move changes how the
            // bundle's memory is backed, never what the consumer loop reads from it.
            active.into_huge_pages();
        }
    }

    /// Applies one record read from the control topic.
    fn handle(&mut self, m: &rdkafka::message::BorrowedMessage<'_>, cancel: &CancellationToken) {
        let at = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
        let manifest = match is_chunk(m) {
            true => None,
            false => {
                match serde_json::from_slice::<ControlMessage>(m.payload().unwrap_or_default()) {
                    Ok(ControlMessage::Manifest(x)) if x.chunks_at.is_some() => Some(x),
                    _ => None,
                }
            }
        };
        if manifest.is_some() {
            return self.apply(&at, m.key(), m.payload(), manifest.as_ref(), cancel);
        }
        if let Some(version) = self.command_needs_fetch(m.payload()) {
            if let Err(r) = self.materialise(&version, cancel, 0) {
                // Not applied: the active version stays as it is.
                return self.reject(&at, Some(&version), r);
            }
        }
        let outcome = self
            .state
            .record(m.key(), |name| header(m, name), m.payload());
        self.outcome(&at, outcome);
        self.release_inactive();
    }

    /// The version held on the topic only that a command (`activate`, `rollback`) would make
    /// active, if it is one.
    fn command_needs_fetch(&self, payload: Option<&[u8]>) -> Option<String> {
        let versions = self.state.versions();
        let target = match serde_json::from_slice::<ControlMessage>(payload?).ok()? {
            ControlMessage::Activate { version } => version,
            ControlMessage::Rollback => versions.rollback_target()?.to_owned(),
            ControlMessage::Manifest(_) => return None,
        };
        versions.on_topic(&target).then_some(target)
    }

    /// Fetches, checks and validates a version held on the topic (a delta's bases first) and
    /// puts it in place, as if it had been read at its publish. One that does not load is
    /// forgotten: no longer held, never active, as when it was refused at its publish.
    fn materialise(
        &mut self,
        version: &str,
        cancel: &CancellationToken,
        depth: usize,
    ) -> Result<Arc<Bundle>, Rejection> {
        let loaded = self.load_held(version, cancel, depth);
        if loaded.is_err() {
            self.state.versions_mut().forget(version);
            self.manifests.remove(version);
        }
        loaded
    }

    fn load_held(
        &mut self,
        version: &str,
        cancel: &CancellationToken,
        depth: usize,
    ) -> Result<Arc<Bundle>, Rejection> {
        if let Some(b) = self.state.versions().get(version) {
            return Ok(b.clone());
        }
        let Some(manifest) = self.manifests.get(version).cloned() else {
            return Err(Rejection::new(
                Reason::UnknownVersion,
                format!("{version} is no longer on the control topic; publish it again"),
            ));
        };
        if depth >= MAX_DELTA_CHAIN {
            return Err(Rejection::new(
                Reason::BaseMismatch,
                format!(
                    "{version} is a delta more than {MAX_DELTA_CHAIN} deep; publish a full bundle"
                ),
            ));
        }
        let base = match &manifest.base_version {
            Some(b) => Some(self.materialise(b, cancel, depth + 1)?),
            None => None,
        };
        let started = Instant::now();
        if let Some(location) = &manifest.chunks_at {
            self.fetch_chunks(location, &manifest.publish_id, cancel);
        }
        let bundle = self.state.load(&manifest, base.as_deref())?;
        self.state.versions_mut().fill(bundle.clone());
        tracing::info!(
            version,
            partitions = bundle.partitions.len(),
            seconds = started.elapsed().as_secs_f64(),
            "fetched a version held on the control topic"
        );
        Ok(bundle)
    }

    /// Applies a record that is not a chunk; for a manifest whose chunks are in a chunks
    /// topic, its claims and signature are checked and its chunks fetched first.
    fn apply(
        &mut self,
        at: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        manifest: Option<&Manifest>,
        cancel: &CancellationToken,
    ) {
        if let Some(m) = manifest {
            if let (Ok(()), Some(location)) = (self.state.admit_manifest(m), &m.chunks_at) {
                // A delta held for later builds on a version that may be held on the topic.
                if let Some(base) = &m.base_version {
                    if self.state.versions().on_topic(base) {
                        if let Err(r) = self.materialise(base, cancel, 0) {
                            return self.reject(at, Some(&m.version), r);
                        }
                    }
                }
                self.fetch_chunks(location, &m.publish_id, cancel);
            }
            // A refused manifest is refused again here, at O(1), and counted.
        }
        let outcome = self.state.record(key, |_| None, payload);
        let held = !matches!(outcome, Outcome::Rejected { .. });
        if let Some(m) = manifest.filter(|m| held && m.chunks_at.is_some()) {
            self.manifests.insert(m.version.clone(), m.clone());
        }
        // Anything but a chunk may have loaded a bundle (a manifest, a command that fetched a
        // held version), or refused one after decoding it.
        let may_have_loaded = !matches!(outcome, Outcome::Chunk { .. });
        self.outcome(at, outcome);
        if self.live {
            self.release_inactive();
            if may_have_loaded {
                crate::memory::return_freed();
            }
        }
    }

    /// Keeps only the active bundle in memory: every other held version whose chunks can be
    /// fetched again is released (a full swap holds two bundles while it runs, never more).
    /// Manifests of versions no longer held (nor a base of one held) are dropped, so they do
    /// not pile up over a long-running daemon's publishes.
    fn release_inactive(&mut self) {
        for version in self.state.versions().loaded_inactive() {
            if self.manifests.contains_key(&version) && self.state.versions_mut().release(&version)
            {
                tracing::debug!(%version, "released from memory; held on the control topic");
            }
        }
        let mut needed: Vec<&str> = self.state.versions().held();
        let mut i = 0;
        while let Some(v) = needed.get(i).copied() {
            if let Some(base) = self
                .manifests
                .get(v)
                .and_then(|m| m.base_version.as_deref())
            {
                if !needed.contains(&base) {
                    needed.push(base);
                }
            }
            i += 1;
        }
        let needed: HashSet<String> = needed.into_iter().map(str::to_owned).collect();
        self.manifests.retain(|v, _| needed.contains(v));
    }

    /// Reads the chunks of `publish_id` in `location` and applies them; stops early at the
    /// end of the partition or after [`FETCH_PATIENCE`] without a record. Chunks that do not
    /// come make the manifest incomplete, which it then reports.
    fn fetch_chunks(
        &mut self,
        location: &ChunkLocation,
        publish_id: &str,
        cancel: &CancellationToken,
    ) {
        let started = Instant::now();
        if self.chunks.is_none() {
            match self
                .client_config()
                .create_with_context(ControlContext::default())
            {
                Ok(c) => self.chunks = Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the chunks consumer");
                    return;
                }
            }
        }
        let Some(consumer) = self.chunks.take() else {
            return;
        };
        let mut list = TopicPartitionList::new();
        let assigned = list
            .add_partition_offset(
                &location.topic,
                location.partition,
                Offset::Offset(location.first_offset),
            )
            .and_then(|()| consumer.assign(&list));
        if let Err(e) = assigned {
            tracing::error!(error = %e, topic = %location.topic, "cannot read the chunks topic");
            self.chunks = Some(consumer);
            return;
        }
        let (mut read, mut bytes) = (0usize, 0usize);
        let mut last_seen = Instant::now();
        while !cancel.is_cancelled() && last_seen.elapsed() < FETCH_PATIENCE {
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Ok(m)) => {
                    last_seen = Instant::now();
                    if m.offset() > location.last_offset {
                        break;
                    }
                    if header(&m, PUBLISH_HEADER) != Some(publish_id.as_bytes()) {
                        continue; // another publish's chunk, or not a chunk
                    }
                    read += 1;
                    bytes += m.payload().map_or(0, <[u8]>::len);
                    let at = format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
                    let outcome = self
                        .state
                        .record(m.key(), |name| header(&m, name), m.payload());
                    self.outcome(&at, outcome);
                    if m.offset() == location.last_offset {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    consumer
                        .context()
                        .log
                        .error("control", &e, "reading the chunks topic")
                }
            }
        }
        let _ = consumer.unassign();
        self.chunks = Some(consumer);
        tracing::debug!(
            publish_id,
            chunks = read,
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "chunks fetched"
        );
    }

    /// Logs, counts and passes on what a record did.
    fn outcome(&mut self, at: &str, outcome: Outcome) {
        match outcome {
            Outcome::Chunk { dropped } => {
                for publish_id in dropped {
                    tracing::warn!(at, %publish_id, "dropped the chunks of an unfinished publish to stay within max_bundle_bytes");
                }
            }
            Outcome::Unchanged => {}
            Outcome::Activated(active) => {
                if self.live {
                    tracing::info!(at, version = %active.version, "activating");
                    self.publish(Some(active));
                }
            }
            Outcome::Rejected { version, rejection } => {
                // A command naming a version the restart plan skipped: that version was
                // evicted by the end of the topic, as a full replay would have found.
                let skipped =
                    !self.live && version.as_ref().is_some_and(|v| self.skipped.contains(v));
                if skipped {
                    tracing::debug!(
                        at,
                        ?version,
                        "command for a version no longer held; skipped"
                    );
                } else {
                    self.reject(at, version.as_deref(), rejection)
                }
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

/// The bundle a daemon starting now would serve: the control topic replayed to its end once,
/// exactly as a restart replays it (the same plan, the same checks, a delta applied to its
/// bases), with no reader left running afterwards. `Ok(None)` when the topic has activated no
/// version that loads. For tools that build on the active version (`manymodel retrain`);
/// `cancel` stops a replay that takes too long.
pub fn replay_active(
    options: ControlOptions,
    cancel: &CancellationToken,
) -> Result<Option<Arc<Bundle>>, String> {
    let (tx, _rx) = watch::channel(None);
    let mut reader = ControlReader::new(options, tx);
    let consumer = reader.try_connect()?;
    let started = Instant::now();
    if !reader.bootstrap(&consumer, cancel) {
        return Err("stopped before the control topic was read to its end".into());
    }
    reader.finish_bootstrap(started.elapsed(), cancel);
    Ok(reader.state.versions().active().cloned())
}

/// Polls until every Kafka partition of the control topic is at its end, handing each record
/// to `each` until it answers false; false if stopped first.
fn read_to_end(
    consumer: &BaseConsumer<ControlContext>,
    cancel: &CancellationToken,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
) -> bool {
    let partitions = consumer.assignment().map(|a| a.count()).unwrap_or_default();
    let mut at_end: HashSet<i32> = HashSet::new();
    while !cancel.is_cancelled() {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                if !each(&m) {
                    return true;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                if at_end.len() >= partitions {
                    return true;
                }
            }
            Some(Err(e)) => {
                consumer
                    .context()
                    .log
                    .error("control", &e, "reading the control topic")
            }
        }
    }
    false
}

/// The value of a record's header `name`, if it has one.
fn header<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    crate::kafka::headers::value_of(m.headers(), name)
}

/// True when the record is a chunk (the test [`super::message::parse`] makes).
fn is_chunk(m: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    header(m, KIND_HEADER) == Some(b"chunk".as_slice())
}

/// The publish id a chunk record names in its header, if it names one in UTF-8.
fn publish_id<'a>(m: &'a rdkafka::message::BorrowedMessage<'_>) -> Option<&'a str> {
    header(m, PUBLISH_HEADER).and_then(|v| std::str::from_utf8(v).ok())
}

/// The most publish ids a restart remembers from the chunk records in the control topic itself.
/// Past it, any manifest without `chunks_at` is taken for an older publish's, as before.
const TRACKED_PUBLISHES: usize = 4096;

/// Assigns every Kafka partition of `topic` from its beginning.
fn assign_from_beginning(
    consumer: &BaseConsumer<ControlContext>,
    topic: &str,
) -> Result<(), String> {
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
    consumer.assign(&list).map_err(|e| e.to_string())
}

/// A manifest or command noted in the first pass of a restart.
struct Noted {
    /// Where it was read, for messages.
    at: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}
