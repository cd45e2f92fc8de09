//! The versions a daemon holds and which one is active: the state that `publish`,
//! `control activate` and `control rollback` change.
//!
//! Validated bundles are kept, newest last, up to `keep` of them, so a command can activate
//! or roll back to any of them without the bundle being sent again; the active version and
//! the one a rollback would return to are never evicted. Deltas are stored materialised (the
//! full bundle under the delta's version), so activating one never needs its base again.
//!
//! A version can also be held *on the topic*: known from its manifest, counted against `keep`
//! and evicted by the same rules, but its chunks not fetched yet. A restarting daemon holds
//! the versions it does not need at once that way ([`super::replay`]); the reader fetches one
//! ([`Versions::fill`]) before a command makes it active.

use std::sync::Arc;

use super::rejection::{Reason, Rejection};
use crate::model::bundle::Bundle;
use crate::model::delta;

/// Activations remembered for rollbacks.
const MAX_ACTIVATIONS: usize = 1000;

#[derive(Debug)]
struct Stored {
    version: String,
    /// The bundle, or `None` while it is held on the topic only.
    bundle: Option<Arc<Bundle>>,
    sha256: String,
}

/// The held versions and the activation history.
#[derive(Debug)]
pub struct Versions {
    keep: usize,
    stored: Vec<Stored>,
    /// Versions in the order they were activated; the last is active.
    activations: Vec<String>,
    /// The local bundle's version while a restart replays the control topic: held and active
    /// before the topic's first record, as on the daemon that ran before, but a bundle the
    /// topic publishes under the same version with other content replaces it (the control
    /// topic's word wins over the local file). Cleared when the replay ends.
    provisional: Option<String>,
}

impl Versions {
    /// Holds at most `keep` bundles (at least 2).
    pub fn new(keep: usize) -> Self {
        Versions {
            keep: keep.max(2),
            stored: Vec::new(),
            activations: Vec::new(),
            provisional: None,
        }
    }

    /// Holds and activates the local bundle (`[model] bundle`) before a restart replays the
    /// control topic; see `provisional`.
    pub fn add_local(
        &mut self,
        bundle: Bundle,
        sha256: &str,
    ) -> Result<Option<Arc<Bundle>>, Rejection> {
        let version = bundle.version.clone();
        let added = self.add(bundle, sha256, true)?;
        self.provisional = Some(version);
        Ok(added)
    }

    /// The local bundle's version while the replay runs, if it is still held that way.
    pub fn provisional(&self) -> Option<&str> {
        self.provisional.as_deref()
    }

    /// The replay has ended: the local bundle, if still held, is held as any other version.
    pub fn settle(&mut self) {
        self.provisional = None;
    }

    /// A version published on the topic with other content than the local bundle held under
    /// the same name during the replay takes its place: the local one is dropped.
    fn yield_local(&mut self, version: &str, sha256: &str) {
        if self.provisional.as_deref() == Some(version)
            && self.find(version).is_some_and(|s| s.sha256 != sha256)
        {
            self.stored.retain(|s| s.version != version);
            self.provisional = None;
        }
    }

    /// The active bundle (`None` also while the active version is held on the topic only,
    /// which happens only during a restart's replay).
    pub fn active(&self) -> Option<&Arc<Bundle>> {
        self.activations.last().and_then(|v| self.get(v))
    }

    /// The active version's name, whether or not its bundle has been fetched.
    pub fn active_version(&self) -> Option<&str> {
        self.activations.last().map(String::as_str)
    }

    /// A held bundle by version, if its chunks have been read.
    pub fn get(&self, version: &str) -> Option<&Arc<Bundle>> {
        self.find(version).and_then(|s| s.bundle.as_ref())
    }

    fn find(&self, version: &str) -> Option<&Stored> {
        self.stored.iter().find(|s| s.version == version)
    }

    /// True when `version` is held on the topic only: known, but not fetched yet.
    pub fn on_topic(&self, version: &str) -> bool {
        self.find(version).is_some_and(|s| s.bundle.is_none())
    }

    /// The versions held, oldest first.
    pub fn held(&self) -> Vec<&str> {
        self.stored.iter().map(|s| s.version.as_str()).collect()
    }

    /// The version a rollback would return to, if there is one.
    pub fn rollback_target(&self) -> Option<&str> {
        let current = self.activations.last();
        self.activations
            .iter()
            .rev()
            .skip(1)
            .find(|v| Some(*v) != current)
            .map(String::as_str)
    }

    /// Holds a version on the topic only, from its admitted manifest: the same checks and
    /// the same activation and eviction as [`Versions::add`], without the bundle.
    pub fn add_on_topic(
        &mut self,
        version: &str,
        base_version: Option<&str>,
        sha256: &str,
        activate: bool,
    ) -> Result<(), Rejection> {
        self.yield_local(version, sha256);
        if let Some(known) = self.find(version) {
            if known.sha256 != sha256 {
                return Err(duplicate(version));
            }
            if activate {
                self.activate(version)?;
            }
            return Ok(());
        }
        if let Some(base) = base_version {
            let found = match activate {
                true => self.activations.last().is_some_and(|a| a == base),
                false => self.find(base).is_some(),
            };
            if !found {
                return Err(self.base_mismatch(version, base));
            }
        }
        self.stored.push(Stored {
            version: version.to_owned(),
            bundle: None,
            sha256: sha256.to_owned(),
        });
        if activate {
            self.activate(version)?;
        }
        self.evict();
        Ok(())
    }

    /// Puts the fetched bundle (a delta already applied to its base) in place of a version
    /// held on the topic; false if that version is no longer held that way.
    pub fn fill(&mut self, bundle: Arc<Bundle>) -> bool {
        match self
            .stored
            .iter_mut()
            .find(|s| s.version == bundle.version && s.bundle.is_none())
        {
            Some(s) => {
                s.bundle = Some(bundle);
                true
            }
            None => false,
        }
    }

    /// Drops a held version's bundle from memory, keeping the version held on the topic (the
    /// reader can fetch it again); never the active one. False if nothing was dropped.
    pub fn release(&mut self, version: &str) -> bool {
        if self.active_version() == Some(version) {
            return false;
        }
        match self.stored.iter_mut().find(|s| s.version == version) {
            Some(s) => s.bundle.take().is_some(),
            None => false,
        }
    }

    /// Forgets a version held on the topic that turned out not to load (its chunks are gone,
    /// or it fails validation): it is no longer held and leaves the activation history, as if
    /// it had been refused at its publish, which is what a daemon reading it then did.
    pub fn forget(&mut self, version: &str) {
        self.stored
            .retain(|s| s.version != version || s.bundle.is_some());
        if !self.stored.iter().any(|s| s.version == version) {
            self.activations.retain(|v| v != version);
        }
    }

    /// The held versions whose bundles are in memory, other than the active one.
    pub fn loaded_inactive(&self) -> Vec<String> {
        let active = self.active_version();
        self.stored
            .iter()
            .filter(|s| s.bundle.is_some() && Some(s.version.as_str()) != active)
            .map(|s| s.version.clone())
            .collect()
    }

    fn base_mismatch(&self, version: &str, base_version: &str) -> Rejection {
        let active = self.activations.last().map_or("none", String::as_str);
        Rejection::new(
            Reason::BaseMismatch,
            format!("delta {version} builds on {base_version}, but the active version is {active}"),
        )
    }

    /// Adds a validated bundle (a delta is applied to its base first) and activates it when
    /// asked. Returns the newly active bundle, if the active one changed.
    pub fn add(
        &mut self,
        bundle: Bundle,
        sha256: &str,
        activate: bool,
    ) -> Result<Option<Arc<Bundle>>, Rejection> {
        self.yield_local(&bundle.version, sha256);
        let on_topic = match self.find(&bundle.version) {
            Some(known) if known.sha256 != sha256 => return Err(duplicate(&bundle.version)),
            // The same bundle again (a republish): only the activation may be new.
            Some(known) if known.bundle.is_some() || !activate => {
                return match activate {
                    true => self.activate(&bundle.version),
                    false => Ok(None),
                }
            }
            // Held on the topic only, and to be made active: the bytes just validated fill
            // it in (activating it bare would leave the daemon serving the old version while
            // its state says the new one).
            Some(_) => true,
            None => false,
        };
        let full = match bundle.base_version.clone() {
            None => bundle,
            Some(base_version) => {
                let base = if activate {
                    self.active().filter(|a| a.version == base_version)
                } else {
                    self.get(&base_version)
                };
                let Some(base) = base else {
                    return Err(self.base_mismatch(&bundle.version, &base_version));
                };
                delta::apply(base, &bundle)?
            }
        };
        let version = full.version.clone();
        if on_topic {
            self.fill(Arc::new(full));
        } else {
            self.stored.push(Stored {
                version: version.clone(),
                bundle: Some(Arc::new(full)),
                sha256: sha256.to_owned(),
            });
        }
        let changed = if activate {
            self.activate(&version)?
        } else {
            None
        };
        self.evict();
        Ok(changed)
    }

    /// Makes a held version active; `None` when it already is, or when it is held on the
    /// topic only (the reader fills it in first when that matters).
    pub fn activate(&mut self, version: &str) -> Result<Option<Arc<Bundle>>, Rejection> {
        let Some(stored) = self.find(version) else {
            return Err(Rejection::new(
                Reason::UnknownVersion,
                format!(
                    "cannot activate {version}: it is not among the versions held ({}); publish it again",
                    self.held().join(", ")
                ),
            ));
        };
        if self.activations.last().map(String::as_str) == Some(version) {
            return Ok(None);
        }
        let bundle = stored.bundle.clone();
        self.activations.push(version.to_owned());
        if self.activations.len() > MAX_ACTIVATIONS {
            self.activations.remove(0);
        }
        Ok(bundle)
    }

    /// Returns to the version active before the current one; `None` when that version is
    /// held on the topic only (the reader fills it in first when that matters).
    pub fn rollback(&mut self) -> Result<Option<Arc<Bundle>>, Rejection> {
        // Skip entries whose version is the current one again (v1, v2, v1 → rollback → v2).
        let Some(previous) = self.rollback_target().map(str::to_owned) else {
            return Err(Rejection::new(
                Reason::NoPrevious,
                "rollback: no version was active before the current one",
            ));
        };
        let Some(bundle) = self.find(&previous).map(|s| s.bundle.clone()) else {
            return Err(Rejection::new(
                Reason::UnknownVersion,
                format!("rollback to {previous}: that version is no longer held; publish it again"),
            ));
        };
        self.activations.pop();
        while self.activations.last() != Some(&previous) {
            self.activations.pop();
        }
        Ok(bundle)
    }

    /// Drops the oldest bundles beyond `keep`, never the active one or the rollback target.
    fn evict(&mut self) {
        while self.stored.len() > self.keep {
            let protected: Vec<&String> = self.activations.iter().rev().take(2).collect();
            let Some(i) = self
                .stored
                .iter()
                .position(|s| !protected.contains(&&s.version))
            else {
                return;
            };
            self.stored.remove(i);
        }
    }
}

fn duplicate(version: &str) -> Rejection {
    Rejection::new(
        Reason::DuplicateVersion,
        format!(
            "version {version} is already held with other content; every bundle needs its own version"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bundle::PartitionModel;
    use crate::model::linear::LinearModel;
    use crate::model::Model;
    use crate::spec::TrainSpec;

    fn bundle(version: &str, base: Option<&str>, stores: &[&str]) -> Bundle {
        let spec = TrainSpec::parse(
            "partition_column = \"store_id\"\ntarget = \"sales\"\n[[features]]\ncolumn = \"price\"\nkind = \"numeric\"\n",
        )
        .unwrap();
        let model = |id: &str| PartitionModel {
            partition: id.into(),
            rows: 1,
            rmse: 0.0,
            model: Model::Linear(LinearModel {
                intercept: version.len() as f64,
                coefficients: vec![1.0].into(),
            }),
        };
        Bundle::new(
            version.into(),
            base.map(Into::into),
            0,
            spec,
            1,
            0,
            model("*"),
            stores.iter().map(|s| model(s)).collect(),
        )
        .unwrap()
    }

    fn active(v: &Versions) -> &str {
        v.active().map(|b| b.version.as_str()).unwrap_or("none")
    }

    /// The local bundle held before a replay is a version like any other (a rollback returns
    /// to it), but while the replay runs the topic's bundle of the same version with other
    /// content takes its place; once the replay has ended, the same conflict is refused.
    #[test]
    fn the_local_bundle_is_held_first_and_gives_way_to_the_topics_own_version() {
        let mut v = Versions::new(3);
        v.add_local(bundle("v1", None, &["a"]), "local").unwrap();
        v.add(bundle("v2", None, &["a"]), "2", true).unwrap();
        v.rollback().unwrap();
        assert_eq!(active(&v), "v1");
        assert_eq!(v.provisional(), Some("v1"));

        // The topic publishes its own v1, with two stores: it replaces the local file's.
        let changed = v
            .add(bundle("v1", None, &["a", "b"]), "topic", true)
            .unwrap();
        assert!(changed.is_none(), "v1 was already the active version");
        assert_eq!(v.active().unwrap().partitions.len(), 2);
        assert_eq!(v.provisional(), None);

        // Held on the topic only, the same way.
        let mut v = Versions::new(3);
        v.add_local(bundle("v1", None, &["a"]), "local").unwrap();
        v.add_on_topic("v1", None, "topic", true).unwrap();
        assert!(v.on_topic("v1"), "the topic's v1, to be fetched");

        // After the replay the local bundle is a held version like any other.
        let mut v = Versions::new(3);
        v.add_local(bundle("v1", None, &["a"]), "local").unwrap();
        v.settle();
        let dup = v
            .add(bundle("v1", None, &["a"]), "topic", true)
            .unwrap_err();
        assert_eq!(dup.reason, Reason::DuplicateVersion);
        assert_eq!(active(&v), "v1");
    }

    #[test]
    fn activations_rollbacks_and_deltas_follow_the_rules() {
        let mut v = Versions::new(3);
        assert_eq!(v.rollback().unwrap_err().reason, Reason::NoPrevious);
        v.add(bundle("v1", None, &["a", "b"]), "1", true).unwrap();
        v.add(bundle("v2", None, &["a", "b"]), "2", true).unwrap();
        assert_eq!(active(&v), "v2");

        // A delta must build on the active version; it then holds every partition.
        let wrong = v
            .add(bundle("d1", Some("v1"), &["a"]), "d", true)
            .unwrap_err();
        assert_eq!(wrong.reason, Reason::BaseMismatch);
        v.add(bundle("d2", Some("v2"), &["c"]), "d2", true).unwrap();
        assert_eq!(active(&v), "d2");
        assert_eq!(v.active().unwrap().partitions.len(), 3);

        // Same version, other bytes: refused; same bytes again: harmless.
        let dup = v
            .add(bundle("v2", None, &["a"]), "other", false)
            .unwrap_err();
        assert_eq!(dup.reason, Reason::DuplicateVersion);
        assert!(v
            .add(bundle("v2", None, &["a"]), "2", false)
            .unwrap()
            .is_none());

        assert_eq!(v.rollback().unwrap().unwrap().version, "v2");
        assert_eq!(v.rollback().unwrap().unwrap().version, "v1");
        assert_eq!(v.activate("d2").unwrap().unwrap().version, "d2");
        assert!(v.activate("d2").unwrap().is_none(), "already active");
        assert_eq!(v.activate("v9").unwrap_err().reason, Reason::UnknownVersion);

        // Holding 3: the oldest that is neither active nor the rollback target goes.
        v.add(bundle("v3", None, &["a"]), "3", false).unwrap();
        assert_eq!(v.held().len(), 3);
        assert!(v.get("d2").is_some() && v.get("v1").is_some());
    }

    #[test]
    fn a_version_held_on_the_topic_counts_activates_by_name_and_is_filled_in_later() {
        let mut v = Versions::new(2);
        v.add_on_topic("v1", None, "1", true).unwrap();
        assert!(v.on_topic("v1") && v.active().is_none());
        assert_eq!(v.active_version(), Some("v1"));
        v.add(bundle("v2", None, &["a"]), "2", true).unwrap();
        assert_eq!(v.rollback_target(), Some("v1"));
        // Same checks as a bundle: other bytes under a held name, a delta on a non-active base.
        let dup = v.add_on_topic("v1", None, "x", false).unwrap_err();
        assert_eq!(dup.reason, Reason::DuplicateVersion);
        let wrong = v.add_on_topic("d", Some("v1"), "d", true).unwrap_err();
        assert_eq!(wrong.reason, Reason::BaseMismatch);
        // A rollback to it while it is not filled in changes the history, not the bundle.
        assert!(v.rollback().unwrap().is_none());
        assert_eq!(v.active_version(), Some("v1"));
        assert!(v.fill(Arc::new(bundle("v1", None, &["a"]))));
        assert!(!v.fill(Arc::new(bundle("v1", None, &["a"]))), "filled once");
        assert_eq!(active(&v), "v1");
        // One that does not load is forgotten, activations included.
        v.add_on_topic("bad", None, "b", true).unwrap();
        v.forget("bad");
        assert_eq!(v.active_version(), Some("v1"));
        assert!(!v.held().contains(&"bad"));
        // Released from memory, it is held on the topic again; the active one stays.
        v.add(bundle("v5", None, &["a"]), "5", false).unwrap();
        assert_eq!(v.loaded_inactive(), ["v5"]);
        assert!(v.release("v5") && v.on_topic("v5"));
        assert!(!v.release("v1"), "the active version stays in memory");
        assert!(v.loaded_inactive().is_empty());
        // Evicted like any other: a third version pushes out the oldest unprotected one.
        v.add_on_topic("v3", None, "3", false).unwrap();
        v.add_on_topic("v4", None, "4", false).unwrap();
        assert_eq!(v.held().len(), 2);
    }

    #[test]
    fn a_republished_version_held_on_the_topic_is_filled_in_and_made_active() {
        let mut v = Versions::new(4);
        v.add(bundle("v1", None, &["a"]), "1", true).unwrap();
        v.add(bundle("v2", None, &["a"]), "2", true).unwrap();
        assert!(v.release("v1") && v.on_topic("v1"));
        // Published again without activation: still held on the topic only.
        assert!(v
            .add(bundle("v1", None, &["a"]), "1", false)
            .unwrap()
            .is_none());
        assert!(v.on_topic("v1"));
        // Published again to be active: the bundle just validated is the one served.
        let now = v.add(bundle("v1", None, &["a"]), "1", true).unwrap();
        assert_eq!(now.expect("the active bundle changed").version, "v1");
        assert_eq!(active(&v), "v1");
        assert!(!v.on_topic("v1"));
        assert_eq!(v.held().len(), 2);
    }
}
