//! Hot reload: bundles and commands on the control topic, and the active bundle they decide.
//!
//! ```text
//!  manymodel publish ──▶ chunks…, manifest ─┐
//!  manymodel control ──▶ activate | rollback ┤ control topic (1 Kafka partition)
//!                                            ▼
//!  every daemon: reader thread ─ admission ─▶ assembly ─▶ validate ─▶ versions ─watch─▶ consumer loop
//!                (whole topic,    (claims in   (count,     (schema,    (held bundles,   (swaps between
//!                 no group)        limits,      sha256)     spec,       activations,     two records)
//!                                  signature)               trial)      deltas)
//! ```
//!
//! Admission, assembly, validation and versions form the Kafka-free [`state::ControlState`];
//! the reader only feeds it records, and logs and counts what it decides.
//!
//! With a chunks topic beside the control topic, chunks live there and each manifest says at
//! which offsets; a restart reads the control topic's manifests and commands, asks
//! [`replay::ReplayPlan`] which publishes it can still hold, and fetches only the active
//! version's chunks; the others are held on the topic (manifest only) and fetched when a
//! command needs them, and while the daemon runs only the active bundle stays in memory.
//! [`local::LocalBundle`] is the `[model] bundle` file, served until the topic can be read.
//!
//! The consumer loop decodes each record with the bundle active when it read it, and the
//! record's job carries that bundle to its partition actor, which scores with it and stamps
//! its version. So a swap takes effect at one record boundary, every prediction carries the
//! version that made it, and per store the versions follow the order of activations.

pub mod admission;
pub mod assembly;
pub mod local;
pub mod message;
pub mod publish;
pub mod reader;
pub mod rejection;
pub mod replay;
pub mod signing;
pub mod state;
pub mod validate;
pub mod versions;

use std::sync::Arc;

use tokio::sync::watch;

use crate::model::bundle::Bundle;

/// The active bundle as the consumer loop sees it: `None` until one is active.
pub type ActiveBundle = watch::Receiver<Option<Arc<Bundle>>>;

/// An active bundle that never changes (no control topic: the demo's first run, `bench`).
pub fn fixed(bundle: Arc<Bundle>) -> ActiveBundle {
    let (_, rx) = watch::channel(Some(bundle));
    rx
}
