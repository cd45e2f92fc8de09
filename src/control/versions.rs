//! The versions a daemon holds and which one is active: the state that `publish`,
//! `control activate` and `control rollback` change.
//!
//! Validated bundles are kept, newest last, up to `keep` of them, so a command can activate
//! or roll back to any of them without the bundle being sent again; the active version and
//! the one a rollback would return to are never evicted. Deltas are stored materialised (the
//! full bundle under the delta's version), so activating one never needs its base again.

use std::sync::Arc;

use super::rejection::{Reason, Rejection};
use crate::model::bundle::Bundle;
use crate::model::delta;

/// Activations remembered for rollbacks.
const MAX_ACTIVATIONS: usize = 1000;

#[derive(Debug)]
struct Stored {
    bundle: Arc<Bundle>,
    sha256: String,
}

/// The held versions and the activation history.
#[derive(Debug)]
pub struct Versions {
    keep: usize,
    stored: Vec<Stored>,
    /// Versions in the order they were activated; the last is active.
    activations: Vec<String>,
}

impl Versions {
    /// Holds at most `keep` bundles (at least 2).
    pub fn new(keep: usize) -> Self {
        Versions {
            keep: keep.max(2),
            stored: Vec::new(),
            activations: Vec::new(),
        }
    }

    /// The active bundle.
    pub fn active(&self) -> Option<&Arc<Bundle>> {
        self.activations.last().and_then(|v| self.get(v))
    }

    /// A held bundle by version.
    pub fn get(&self, version: &str) -> Option<&Arc<Bundle>> {
        self.stored
            .iter()
            .find(|s| s.bundle.version == version)
            .map(|s| &s.bundle)
    }

    /// The versions held, oldest first.
    pub fn held(&self) -> Vec<&str> {
        self.stored
            .iter()
            .map(|s| s.bundle.version.as_str())
            .collect()
    }

    /// Adds a validated bundle (a delta is applied to its base first) and activates it when
    /// asked. Returns the newly active bundle, if the active one changed.
    pub fn add(
        &mut self,
        bundle: Bundle,
        sha256: &str,
        activate: bool,
    ) -> Result<Option<Arc<Bundle>>, Rejection> {
        if let Some(known) = self
            .stored
            .iter()
            .find(|s| s.bundle.version == bundle.version)
        {
            if known.sha256 != sha256 {
                return Err(Rejection::new(
                    Reason::DuplicateVersion,
                    format!(
                        "version {} is already held with other content; every bundle needs its own version",
                        bundle.version
                    ),
                ));
            }
            // The same bundle again (a republish): only the activation may be new.
            return if activate {
                self.activate(&bundle.version)
            } else {
                Ok(None)
            };
        }
        let full = match bundle.base_version.clone() {
            None => bundle,
            Some(base_version) => {
                let base = if activate {
                    self.active().filter(|a| a.version == base_version)
                } else {
                    self.get(&base_version)
                };
                let Some(base) = base else {
                    let active = self.active().map(|a| a.version.as_str()).unwrap_or("none");
                    return Err(Rejection::new(
                        Reason::BaseMismatch,
                        format!(
                            "delta {} builds on {base_version}, but the active version is {active}",
                            bundle.version
                        ),
                    ));
                };
                delta::apply(base, &bundle)?
            }
        };
        let version = full.version.clone();
        self.stored.push(Stored {
            bundle: Arc::new(full),
            sha256: sha256.to_owned(),
        });
        let changed = if activate {
            self.activate(&version)?
        } else {
            None
        };
        self.evict();
        Ok(changed)
    }

    /// Makes a held version active; `None` when it already is.
    pub fn activate(&mut self, version: &str) -> Result<Option<Arc<Bundle>>, Rejection> {
        let Some(bundle) = self.get(version).cloned() else {
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
        self.activations.push(version.to_owned());
        if self.activations.len() > MAX_ACTIVATIONS {
            self.activations.remove(0);
        }
        Ok(Some(bundle))
    }

    /// Returns to the version active before the current one.
    pub fn rollback(&mut self) -> Result<Arc<Bundle>, Rejection> {
        // Skip entries whose version is the current one again (v1, v2, v1 → rollback → v2).
        let current = self.activations.last().cloned();
        let previous = self
            .activations
            .iter()
            .rev()
            .skip(1)
            .find(|v| Some(*v) != current.as_ref())
            .cloned();
        let Some(previous) = previous else {
            return Err(Rejection::new(
                Reason::NoPrevious,
                "rollback: no version was active before the current one",
            ));
        };
        let Some(bundle) = self.get(&previous).cloned() else {
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
                .position(|s| !protected.contains(&&s.bundle.version))
            else {
                return;
            };
            self.stored.remove(i);
        }
    }
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
                coefficients: vec![1.0],
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

        assert_eq!(v.rollback().unwrap().version, "v2");
        assert_eq!(v.rollback().unwrap().version, "v1");
        assert_eq!(v.activate("d2").unwrap().unwrap().version, "d2");
        assert!(v.activate("d2").unwrap().is_none(), "already active");
        assert_eq!(v.activate("v9").unwrap_err().reason, Reason::UnknownVersion);

        // Holding 3: the oldest that is neither active nor the rollback target goes.
        v.add(bundle("v3", None, &["a"]), "3", false).unwrap();
        assert_eq!(v.held().len(), 3);
        assert!(v.get("d2").is_some() && v.get("v1").is_some());
    }
}
