//! Why a bundle or a control record was not applied.
//!
//! A rejection never stops the daemon: it keeps serving the active version, logs the reason
//! with the version and the control record's position, and counts it in
//! `manymodel_bundle_rejections_total{reason}`.

use std::fmt;

use crate::error::BundleError;

/// The longest detail a rejection keeps, in bytes: details quote what a record claims, and a
/// hostile record may claim a megabyte of text.
const MAX_DETAIL_BYTES: usize = 512;

/// The reason label of a rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The control record is neither a chunk nor a control message.
    Garbage,
    /// A record claims what no bundle published within the limits can: more chunks than
    /// bytes, a chunk index past `[model] max_bundle_bytes`, an empty chunk, a digest that is
    /// not 64 hex digits, a publish id or version longer than 256 bytes. Refused before
    /// anything is done in proportion to the claim.
    Implausible,
    /// Chunks are missing, repeated past the count, or out of range.
    Incomplete,
    /// The bundle is larger than `[model] max_bundle_bytes`.
    Oversize,
    /// The chunks do not add up to the manifest's size and SHA-256.
    Checksum,
    /// Trusted keys are configured and the bundle carries no signature.
    Unsigned,
    /// The signature does not verify under any trusted key.
    Signature,
    /// The bytes are not a bundle of `schemas/bundle.avsc`.
    Schema,
    /// The spec or the models are inconsistent (coefficient counts, duplicates, an unusable
    /// spec, a spec the input format cannot feed).
    Spec,
    /// The spec does not fit the configured formats: with Avro input, a column it reads (or
    /// its partition column) is not in the reader schema or has a type it cannot read; with
    /// Avro output, the prediction schema has no field for its partition column.
    Format,
    /// A coefficient is NaN or infinite.
    NotFinite,
    /// Scoring a trial event failed or gave a non-finite prediction.
    TrialScoring,
    /// A delta whose base is not the version it must apply to.
    BaseMismatch,
    /// A version that is already known, with different content.
    DuplicateVersion,
    /// `activate` names a version the daemon does not hold.
    UnknownVersion,
    /// `rollback` with nothing to go back to.
    NoPrevious,
}

impl Reason {
    /// Every reason, so each counter can exist from the start, at zero.
    pub const ALL: [Reason; 16] = [
        Reason::Garbage,
        Reason::Implausible,
        Reason::Incomplete,
        Reason::Oversize,
        Reason::Checksum,
        Reason::Unsigned,
        Reason::Signature,
        Reason::Schema,
        Reason::Spec,
        Reason::Format,
        Reason::NotFinite,
        Reason::TrialScoring,
        Reason::BaseMismatch,
        Reason::DuplicateVersion,
        Reason::UnknownVersion,
        Reason::NoPrevious,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Garbage => "garbage",
            Reason::Implausible => "implausible",
            Reason::Incomplete => "incomplete",
            Reason::Oversize => "oversize",
            Reason::Checksum => "checksum",
            Reason::Unsigned => "unsigned",
            Reason::Signature => "signature",
            Reason::Schema => "schema",
            Reason::Spec => "spec",
            Reason::Format => "format",
            Reason::NotFinite => "not_finite",
            Reason::TrialScoring => "trial_scoring",
            Reason::BaseMismatch => "base_mismatch",
            Reason::DuplicateVersion => "duplicate_version",
            Reason::UnknownVersion => "unknown_version",
            Reason::NoPrevious => "no_previous",
        }
    }
}

/// A rejected bundle or command, with what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The label.
    pub reason: Reason,
    /// The sentence for the log.
    pub detail: String,
}

impl Rejection {
    /// A rejection for `reason`.
    /// A rejection for `reason`; the detail is cut to 512 bytes.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL_BYTES {
            detail = format!("{}…", clipped(&detail, MAX_DETAIL_BYTES));
        }
        Rejection { reason, detail }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn clipped(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl From<BundleError> for Rejection {
    /// Each kind of bundle error is one reason, so the reason cannot drift from its cause.
    fn from(e: BundleError) -> Self {
        let reason = match &e {
            BundleError::Schema(_) => Reason::Schema,
            BundleError::NotFinite(_) => Reason::NotFinite,
            BundleError::Spec(_) => Reason::Spec,
        };
        Rejection::new(reason, e.to_string())
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.detail, self.reason.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bundle_error_becomes_its_own_reason() {
        let cases = [
            (BundleError::Schema("s".into()), Reason::Schema),
            (BundleError::NotFinite("n".into()), Reason::NotFinite),
            (BundleError::Spec("p".into()), Reason::Spec),
        ];
        for (error, reason) in cases {
            assert_eq!(Rejection::from(error).reason, reason);
        }
    }

    #[test]
    fn a_long_detail_is_cut_on_a_character_boundary() {
        let r = Rejection::new(Reason::Garbage, "é".repeat(10_000));
        assert!(r.detail.len() <= MAX_DETAIL_BYTES + "…".len());
        assert!(r.detail.ends_with('…'));
        assert_eq!(clipped("abc", 10), "abc");
        assert_eq!(clipped("éé", 3), "é");
    }

    #[test]
    fn every_reason_has_its_own_label() {
        let labels: std::collections::HashSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
