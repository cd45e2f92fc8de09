//! Registry lookups off the consumer loop, a few at a time.
//!
//! A record whose writer schema id is not cached does not wait on the loop for the registry:
//! its id is asked here in a task of its own, and the record waits aside
//! ([`crate::awaiting`]) while the loop goes on scoring the records behind it. At most
//! [`MAX_CONCURRENT`] ids are asked at once; the others queue, each id once however many
//! records carry it. A registry that cannot be reached is asked again with a growing pause
//! (up to 5 s) until it answers or the daemon stops: a lookup ends only with an answer.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::registry::{Fetch, Registry};

/// Ids asked of the registry at once.
pub const MAX_CONCURRENT: usize = 8;

/// The registry's final answer about one id.
pub enum Answer {
    /// The schema's text.
    Found(String),
    /// The registry does not have it (or it is not Avro).
    NotFound(String),
}

/// Lookups under way and queued.
pub struct Lookups {
    registry: Registry,
    /// Ids asked or queued: a second record with one of them joins the wait.
    pending: HashSet<u32>,
    /// Ids waiting for a free slot, in the order first seen.
    queued: VecDeque<u32>,
    /// The lookups under way.
    tasks: JoinSet<Option<(u32, Answer)>>,
    /// Ends every wait for an unreachable registry.
    stop: CancellationToken,
}

impl Lookups {
    /// Lookups against `registry`, given up when `stop` is cancelled.
    pub fn new(registry: Registry, stop: CancellationToken) -> Self {
        Lookups {
            registry,
            pending: HashSet::new(),
            queued: VecDeque::new(),
            tasks: JoinSet::new(),
            stop,
        }
    }

    /// The registry asked.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Asks for `id` unless it is asked already.
    pub fn ask(&mut self, id: u32) {
        if self.pending.insert(id) {
            self.queued.push_back(id);
            self.start_queued();
        }
    }

    /// True while any id is asked or queued.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ids asked or queued.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next answer. Pending forever when nothing is asked, or once stopped.
    pub async fn next(&mut self) -> (u32, Answer) {
        loop {
            match self.tasks.join_next().await {
                Some(Ok(Some((id, answer)))) => {
                    self.pending.remove(&id);
                    self.start_queued();
                    return (id, answer);
                }
                // Stopped (or a task panicked, which a lookup does not): nothing more comes.
                Some(_) | None => std::future::pending::<()>().await,
            }
        }
    }

    fn start_queued(&mut self) {
        while self.tasks.len() < MAX_CONCURRENT {
            let Some(id) = self.queued.pop_front() else {
                return;
            };
            let (registry, stop) = (self.registry.clone(), self.stop.clone());
            self.tasks.spawn(lookup(registry, id, stop));
        }
    }
}

/// Asks `registry` for `id` until it answers; `None` if `stop` comes first.
async fn lookup(registry: Registry, id: u32, stop: CancellationToken) -> Option<(u32, Answer)> {
    let mut pause = Duration::from_millis(200);
    loop {
        match registry.schema_by_id(id).await {
            Fetch::Found(text) => return Some((id, Answer::Found(text))),
            Fetch::NotFound(why) => return Some((id, Answer::NotFound(why))),
            Fetch::Unavailable(why) => {
                tracing::warn!(id, error = %why, retry_in = ?pause, "schema registry unavailable: waiting, not dead-lettering");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}
