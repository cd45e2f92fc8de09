//! What the control records read so far decide: the chunks waiting for their manifest, the
//! versions held and the active one.
//!
//! No Kafka here: the reader hands in each record's key, a lookup of its headers and its
//! payload, and logs and counts what comes out. So the whole path a hostile record can take
//! is driven by tests with any records at all, no broker needed.
//!
//! A record goes through [`super::admission`] (its claims and signature, O(1)), then
//! [`super::assembly`] (bounded by the chunks held), [`super::validate`] and
//! [`super::versions`]. A rejection at any step leaves the active bundle as it was.

use std::sync::Arc;
use std::time::Instant;

use super::admission::Admission;
use super::assembly::Assembler;
use super::message::{parse, ControlMessage, ControlRecord, Manifest};
use super::rejection::{clipped, Reason, Rejection};
use super::validate::validate;
use super::versions::Versions;
use crate::codec::FormatCheck;
use crate::model::bundle::Bundle;

/// The longest record key or version quoted with a rejection, in bytes.
const SHOWN_NAME_BYTES: usize = 64;

/// What one control record did.
#[derive(Debug)]
pub enum Outcome {
    /// A chunk was kept; to stay within the budget, the chunks of these publishes were
    /// dropped.
    Chunk {
        /// The publish ids dropped.
        dropped: Vec<String>,
    },
    /// Applied, and the active bundle is what it was (a bundle held for later, a command
    /// naming the active version).
    Unchanged,
    /// The active bundle is now this one.
    Activated(Arc<Bundle>),
    /// Refused; the active bundle is what it was.
    Rejected {
        /// The version the record names, cut to 64 bytes, if it names one.
        version: Option<String>,
        /// Why.
        rejection: Rejection,
    },
}

/// The reader's state, record by record.
#[derive(Debug)]
pub struct ControlState {
    admission: Admission,
    formats: FormatCheck,
    assembler: Assembler,
    versions: Versions,
}

impl ControlState {
    /// Empty state: no chunks, no versions.
    pub fn new(admission: Admission, formats: FormatCheck, keep_versions: usize) -> Self {
        ControlState {
            assembler: Assembler::new(admission.max_bundle_bytes),
            versions: Versions::new(keep_versions),
            admission,
            formats,
        }
    }

    /// The versions held and the active one.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// The versions, to add a local bundle or settle the bootstrap.
    pub fn versions_mut(&mut self) -> &mut Versions {
        &mut self.versions
    }

    /// Checks a manifest's claims and signature (O(1)), before its chunks are fetched.
    pub fn admit_manifest(&self, manifest: &Manifest) -> Result<(), Rejection> {
        self.admission.manifest(manifest).map(|_| ())
    }

    /// What the chunks waiting for a manifest cost (see [`Assembler::pending_bytes`]).
    pub fn pending_bytes(&self) -> usize {
        self.assembler.pending_bytes()
    }

    /// Applies one control record: its key, a lookup of its headers by name, its payload.
    pub fn record<'a>(
        &mut self,
        key: Option<&'a [u8]>,
        header: impl Fn(&str) -> Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
    ) -> Outcome {
        let record = match parse(key, header, payload) {
            Ok(r) => r,
            Err(e) => return rejected(None, Rejection::new(Reason::Garbage, e)),
        };
        let result = match record {
            ControlRecord::Chunk {
                publish_id,
                index,
                version,
                bytes,
            } => {
                return match self.admission.chunk(publish_id, index, bytes) {
                    Ok(()) => Outcome::Chunk {
                        dropped: self.assembler.chunk(publish_id, index, bytes),
                    },
                    Err(r) => rejected(Some(version), r),
                };
            }
            ControlRecord::Message(ControlMessage::Manifest(manifest)) => self
                .manifest(&manifest)
                .map_err(|r| (Some(manifest.version), r)),
            ControlRecord::Message(ControlMessage::Activate { version }) => self
                .admission
                .command_version(&version)
                .and_then(|()| self.versions.activate(&version))
                .map_err(|r| (Some(version), r)),
            ControlRecord::Message(ControlMessage::Rollback) => {
                self.versions.rollback().map_err(|r| (None, r))
            }
        };
        match result {
            Ok(Some(active)) => Outcome::Activated(active),
            Ok(None) => Outcome::Unchanged,
            Err((version, r)) => rejected(version.as_deref(), r),
        }
    }

    /// Holds a manifest's version on the topic only (see [`Versions::add_on_topic`]): a
    /// restart's replay does this for the versions it need not fetch at once. The manifest's
    /// claims and signature are checked as for any manifest.
    pub fn hold_on_topic(&mut self, manifest: &Manifest) -> Outcome {
        let held = self.admission.manifest(manifest).and_then(|_| {
            self.versions.add_on_topic(
                &manifest.version,
                manifest.base_version.as_deref(),
                &manifest.sha256.to_ascii_lowercase(),
                manifest.activate,
            )
        });
        match held {
            Ok(()) => Outcome::Unchanged,
            Err(r) => rejected(Some(&manifest.version), r),
        }
    }

    /// Builds the bundle of a version held on the topic, once its chunks have been handed in
    /// as records: checked and validated as at its publish, a delta applied to `base`. The
    /// caller puts it in place with [`Versions::fill`].
    pub fn load(
        &mut self,
        manifest: &Manifest,
        base: Option<&Bundle>,
    ) -> Result<Arc<Bundle>, Rejection> {
        self.admission.manifest(manifest)?;
        let file = self.assembler.finish(manifest)?;
        let bundle = validate(&file, manifest, &self.formats)?;
        Ok(Arc::new(match (base, &bundle.base_version) {
            (_, None) => bundle,
            (Some(base), Some(_)) => crate::model::delta::apply(base, &bundle)?,
            (None, Some(b)) => {
                return Err(Rejection::new(
                    Reason::BaseMismatch,
                    format!("delta {} builds on {b}, which is no longer on the control topic; publish it again", bundle.version),
                ))
            }
        }))
    }

    fn manifest(&mut self, manifest: &Manifest) -> Result<Option<Arc<Bundle>>, Rejection> {
        let started = Instant::now();
        // A refused manifest leaves the chunks of its publish id alone: ids are visible on the
        // topic, and a forged manifest must not take a genuine publish's chunks with it.
        self.admission.manifest(manifest)?;
        let file = self.assembler.finish(manifest)?;
        let bundle = validate(&file, manifest, &self.formats)?;
        let partitions = bundle.partitions.len();
        let changed = self.versions.add(
            bundle,
            &manifest.sha256.to_ascii_lowercase(),
            manifest.activate,
        )?;
        tracing::info!(
            version = %manifest.version,
            base = ?manifest.base_version,
            partitions,
            bytes = manifest.size,
            load_ms = started.elapsed().as_millis() as u64,
            activate = manifest.activate,
            "bundle validated"
        );
        Ok(changed)
    }
}

fn rejected(version: Option<&str>, rejection: Rejection) -> Outcome {
    Outcome::Rejected {
        version: version.map(|v| clipped(v, SHOWN_NAME_BYTES).to_owned()),
        rejection,
    }
}
