//! The version a refit builds on: the control topic's active version, found the way a
//! restarting daemon finds it, or a bundle file named instead.
//!
//! The control topic is replayed once, through [`crate::control::reader::replay_active`]: the
//! same restart plan, the same admission checks (with the daemons' `trusted_keys` and
//! `max_bundle_bytes`), deltas applied to their bases up the chain. So the bundle found is
//! the full bundle the daemons score with, under the active version's name, even when that
//! version is itself a delta.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::RetrainConfig;
use crate::control::reader::{replay_active, ControlOptions};
use crate::control::signing::TrustedKeys;
use crate::error::{Error, Result};
use crate::model::bundle::Bundle;
use crate::model::delta;

/// Where the active bundle was found, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Replayed from the control topic.
    ControlTopic(String),
    /// A bundle file given instead.
    File(std::path::PathBuf),
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::ControlTopic(t) => write!(f, "the active version on {t}"),
            Found::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The bundle to build on: `file` when given, else the control topic's active version.
pub fn active_bundle(
    config: &RetrainConfig,
    file: Option<&Path>,
    cancel: &CancellationToken,
) -> Result<(Arc<Bundle>, Found)> {
    if let Some(path) = file {
        let bundle = Bundle::read(path)?;
        if delta::is_delta(&bundle) {
            return Err(Error::Usage(format!(
                "{} is a delta of {}; name the full bundle the daemons serve (or leave the bundle out to replay the control topic)",
                path.display(),
                bundle.base_version.as_deref().unwrap_or("?")
            )));
        }
        return Ok((Arc::new(bundle), Found::File(path.to_owned())));
    }
    let topic = &config.kafka.control_topic;
    let options = ControlOptions {
        brokers: config.kafka.brokers.clone(),
        topic: topic.clone(),
        librdkafka_options: config.kafka.librdkafka_options.clone(),
        trusted: TrustedKeys::load(&config.model.trusted_keys, Path::new("."))
            .map_err(|e| Error::Usage(format!("[model] trusted_keys: {e}")))?,
        keep_versions: 2,
        max_bundle_bytes: config.model.max_bundle_bytes,
        formats: Default::default(),
    };
    // The replay stops at `cancel` or after `replay_timeout_secs`, whichever comes first.
    let deadline = cancel.child_token();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let timer = {
        let deadline = deadline.clone();
        let timeout = Duration::from_secs(config.model.replay_timeout_secs);
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                deadline.cancel();
            }
        })
    };
    let replayed = replay_active(options, &deadline);
    drop(done);
    let _ = timer.join();
    match replayed {
        Ok(Some(bundle)) => Ok((bundle, Found::ControlTopic(topic.clone()))),
        Ok(None) => Err(Error::Usage(format!(
            "the control topic {topic} on {} has no active version: publish a bundle first (manymodel publish), or name one with --bundle",
            config.kafka.brokers
        ))),
        Err(e) if deadline.is_cancelled() && !cancel.is_cancelled() => Err(Error::Kafka(format!(
            "replaying the control topic {topic} on {} took more than [model] replay_timeout_secs = {}: {e}",
            config.kafka.brokers, config.model.replay_timeout_secs
        ))),
        Err(e) => Err(Error::Kafka(format!(
            "replaying the control topic {topic} on {}: {e} (does it exist? [kafka] control_topic names the daemons' control topic)",
            config.kafka.brokers
        ))),
    }
}
