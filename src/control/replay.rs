//! Which publishes a restarting daemon must fetch: the restart plan.
//!
//! When chunks live in a chunks topic, the control topic holds only manifests and commands,
//! and a restart reads it whole first (it is small) without fetching any chunk. This module
//! then works out, from the manifests and commands alone, which versions can still be held
//! when the replay ends: the last `keep_versions` versions published, the version the
//! commands leave active and the one a rollback would return to, and the bases of the deltas
//! among them. Only the active version (and the bases it was built on, for a delta) is
//! fetched at once; the other held versions, the rollback target among them, are held *on
//! the topic* (their manifests only) and fetched when a command makes one of them active. The
//! rest are skipped. So a restart reads the active bundle once, whatever the age of the topic
//! and whatever `keep_versions` is.
//!
//! A daemon with a local bundle (`[model] bundle`) held it, active, before it read the topic's
//! first record, so the plan starts with it ([`ReplayPlan::local_first`]): a rollback or an
//! activation back to it on the topic then returns to it after a restart too.
//!
//! The plan over-approximates: [`super::versions::Versions`] still decides what is held,
//! with the same rules as a full replay. A version the plan skips could not have been held
//! at the end (it was evicted), so skipping it changes nothing a command can reach.

use std::collections::HashSet;

use super::message::{ControlMessage, Manifest};

/// What a restart reads of the chunks: publish ids.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Fetched during the replay: the active version and its bases.
    pub fetch: HashSet<String>,
    /// Held on the topic, fetched when a command needs them.
    pub hold: HashSet<String>,
}

/// The manifests and commands of a control topic, in order.
#[derive(Debug, Default)]
pub struct ReplayPlan {
    entries: Vec<Entry>,
}

#[derive(Debug)]
enum Entry {
    Manifest {
        publish_id: String,
        version: String,
        base_version: Option<String>,
        activate: bool,
    },
    Activate(String),
    Rollback,
    /// The local bundle (`[model] bundle`), held and active before the topic's first record,
    /// as on the daemon that was running: it is not on the topic, so nothing is fetched for it.
    Local(String),
}

impl ReplayPlan {
    /// Notes a manifest.
    pub fn manifest(&mut self, m: &Manifest) {
        self.entries.push(Entry::Manifest {
            publish_id: m.publish_id.clone(),
            version: m.version.clone(),
            base_version: m.base_version.clone(),
            activate: m.activate,
        });
    }

    /// Notes the local bundle's version, held and active before every record of the topic
    /// (whenever it is noted).
    pub fn local_first(&mut self, version: &str) {
        self.entries.insert(0, Entry::Local(version.to_owned()));
    }

    /// Notes a control message (a manifest or a command).
    pub fn message(&mut self, m: &ControlMessage) {
        match m {
            ControlMessage::Manifest(m) => self.manifest(m),
            ControlMessage::Activate { version } => {
                self.entries.push(Entry::Activate(version.clone()))
            }
            ControlMessage::Rollback => self.entries.push(Entry::Rollback),
        }
    }

    /// What a daemon holding `keep` versions needs: the publishes to fetch at once and the
    /// ones to hold on the topic.
    pub fn needed(&self, keep: usize) -> Needs {
        let fetch = self.publishes(&self.versions(None));
        let hold = self
            .publishes(&self.versions(Some(keep.max(2))))
            .difference(&fetch)
            .cloned()
            .collect();
        Needs { fetch, hold }
    }

    /// The versions held at the end of the topic: the active one and, with `held`, the one a
    /// rollback returns to and the `held` last published; and the bases of the deltas among
    /// them.
    fn versions(&self, held: Option<usize>) -> HashSet<&str> {
        let keep = held.unwrap_or(0);
        let mut published: Vec<&str> = Vec::new();
        let mut activations: Vec<&str> = Vec::new();
        for e in &self.entries {
            match e {
                Entry::Manifest {
                    version, activate, ..
                } => {
                    published.push(version);
                    if *activate && activations.last() != Some(&version.as_str()) {
                        activations.push(version);
                    }
                }
                Entry::Local(version) => {
                    published.push(version);
                    activations.push(version);
                }
                Entry::Activate(v) => {
                    if published.contains(&v.as_str()) && activations.last() != Some(&v.as_str()) {
                        activations.push(v);
                    }
                }
                Entry::Rollback => {
                    // As `Versions::rollback`: back to the last activation of another version.
                    let current = activations.last().copied();
                    let previous = activations
                        .iter()
                        .rev()
                        .skip(1)
                        .find(|v| Some(**v) != current)
                        .copied();
                    if let Some(previous) = previous {
                        activations.pop();
                        while activations.last() != Some(&previous) {
                            activations.pop();
                        }
                    }
                }
            }
        }
        let mut versions: HashSet<&str> = HashSet::new();
        let mut newest = Vec::new();
        for v in published.iter().rev() {
            if newest.len() == keep {
                break;
            }
            if !newest.contains(v) {
                newest.push(*v);
            }
        }
        versions.extend(newest);
        // The active version and the one a rollback returns to.
        let current = activations.last().copied();
        versions.extend(current);
        if held.is_some() {
            versions.extend(
                activations
                    .iter()
                    .rev()
                    .find(|v| Some(**v) != current)
                    .copied(),
            );
        }
        // Deltas are materialised on arrival: their bases must be there too.
        loop {
            let bases: Vec<&str> = self
                .entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Manifest {
                        version,
                        base_version: Some(b),
                        ..
                    } if versions.contains(version.as_str()) => Some(b.as_str()),
                    _ => None,
                })
                .filter(|b| !versions.contains(b))
                .collect();
            if bases.is_empty() {
                break;
            }
            versions.extend(bases);
        }
        versions
    }

    /// The publish ids of manifests of `versions`.
    fn publishes(&self, versions: &HashSet<&str>) -> HashSet<String> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Manifest {
                    publish_id,
                    version,
                    ..
                } if versions.contains(version.as_str()) => Some(publish_id.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(plan: &mut ReplayPlan, version: &str, base: Option<&str>, activate: bool) {
        plan.entries.push(Entry::Manifest {
            publish_id: format!("p-{version}"),
            version: version.into(),
            base_version: base.map(Into::into),
            activate,
        });
    }

    fn ids(v: &[&str]) -> HashSet<String> {
        v.iter().map(|v| format!("p-{v}")).collect()
    }

    #[test]
    fn a_hundred_publishes_fetch_the_active_version_and_hold_the_last_keep() {
        let mut plan = ReplayPlan::default();
        for i in 0..100 {
            manifest(&mut plan, &format!("v{i}"), None, true);
        }
        let needs = plan.needed(3);
        assert_eq!(needs.fetch, ids(&["v99"]), "the active version");
        assert_eq!(
            needs.hold,
            ids(&["v97", "v98"]),
            "v98 is the rollback target"
        );
    }

    #[test]
    fn an_old_version_activated_or_rolled_back_to_is_fetched_and_its_rollback_target_held() {
        let mut plan = ReplayPlan::default();
        manifest(&mut plan, "v1", None, true);
        for i in 2..50 {
            manifest(&mut plan, &format!("v{i}"), None, false);
        }
        let needs = plan.needed(2);
        assert_eq!(needs.fetch, ids(&["v1"]), "active, nothing before it");
        assert_eq!(needs.hold, ids(&["v48", "v49"]));
        plan.entries.push(Entry::Activate("v49".into()));
        plan.entries.push(Entry::Activate("v48".into()));
        plan.entries.push(Entry::Rollback);
        let needs = plan.needed(2);
        assert_eq!(needs.fetch, ids(&["v49"]), "back to v49");
        assert_eq!(needs.hold, ids(&["v1", "v48"]), "v1 before it");
    }

    /// A daemon that started on its local bundle, then had v2 published and rolled back, is
    /// back on the local bundle after a restart: nothing is fetched, and v2 is held on the
    /// topic. Activating the local version by name works the same way.
    #[test]
    fn a_rollback_to_the_local_bundle_survives_a_restart() {
        let mut plan = ReplayPlan::default();
        manifest(&mut plan, "v2", None, true);
        plan.entries.push(Entry::Rollback);
        plan.local_first("v1");
        let needs = plan.needed(3);
        assert!(needs.fetch.is_empty(), "v1 is local: {needs:?}");
        assert_eq!(needs.hold, ids(&["v2"]));

        let mut plan = ReplayPlan::default();
        manifest(&mut plan, "v2", None, true);
        plan.entries.push(Entry::Activate("v1".into()));
        plan.local_first("v1");
        assert!(plan.needed(3).fetch.is_empty());

        // Without a local bundle the rollback has nowhere to go: v2 stays active.
        let mut plan = ReplayPlan::default();
        manifest(&mut plan, "v2", None, true);
        plan.entries.push(Entry::Rollback);
        assert_eq!(plan.needed(3).fetch, ids(&["v2"]));
    }

    #[test]
    fn the_bases_of_needed_deltas_are_needed() {
        let mut plan = ReplayPlan::default();
        manifest(&mut plan, "full", None, true);
        for i in 0..10 {
            manifest(&mut plan, &format!("other{i}"), None, false);
        }
        manifest(&mut plan, "d1", Some("full"), true);
        manifest(&mut plan, "d2", Some("d1"), true);
        let needs = plan.needed(2);
        assert_eq!(needs.fetch, ids(&["full", "d1", "d2"]), "d2 and its bases");
        assert!(needs.hold.is_empty());
    }
}
