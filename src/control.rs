//! Hot reload: bundles and commands on the control topic, and the active bundle they decide.
//!
//! ```text
//!  manymodel publish ──▶ chunks…, manifest ─┐
//!  manymodel control ──▶ activate | rollback ┤ control topic (1 Kafka partition)
//!                                            ▼
//!  every daemon: reader thread ── assembly ─▶ validate ─▶ versions ──watch──▶ consumer loop
//!                (whole topic,     (count,     (signature,   (held bundles,     (swaps between
//!                 no group)         sha256)     schema, spec,  activations,       two records)
//!                                               trial score)   deltas applied)
//! ```
//!
//! The consumer loop decodes each record with the bundle active when it read it, and the
//! record's job carries that bundle to its partition actor, which scores with it and stamps
//! its version. So a swap takes effect at one record boundary, every prediction carries the
//! version that made it, and per store the versions follow the order of activations.

pub mod assembly;
pub mod message;
pub mod publish;
pub mod reader;
pub mod rejection;
pub mod signing;
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
