//! Scoring one event with a bundle: the partition's own model, else the fallback or a dead
//! letter, as `unknown_partition` says (or always a dead letter when an imported bundle has no
//! fallback). Offline `predict` and the actuals actor call [`score`]; the consumer loop, which
//! must dead-letter a refused record before it reaches a partition actor, applies the same
//! rule through [`scores_unknown`] and [`refusal`].

use serde::{Deserialize, Serialize};

use crate::error::{RecordError, RecordErrorKind};
use crate::event::Event;
use crate::model::bundle::{Bundle, PartitionModel};

/// Which model scored an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// The partition's own model.
    Partition,
    /// The global fallback.
    Fallback,
}

impl ModelSource {
    /// `partition` or `fallback`, as prediction records spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Partition => "partition",
            ModelSource::Fallback => "fallback",
        }
    }
}

/// The model that scores partition `id`: its own, or the fallback.
pub fn model_for<'a>(bundle: &'a Bundle, id: &str) -> (&'a PartitionModel, ModelSource) {
    match bundle.partition(id) {
        Some(m) => (m, ModelSource::Partition),
        None => (&bundle.fallback, ModelSource::Fallback),
    }
}

/// What to do with an event whose partition has no model of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPartition {
    /// Score it with the global fallback model.
    #[default]
    Fallback,
    /// Send it to the dead-letter topic with reason `unknown_partition`.
    Dlq,
}

/// Scores `event`; an unknown partition under [`UnknownPartition::Dlq`] is an error.
pub fn score(
    bundle: &Bundle,
    event: &Event,
    policy: UnknownPartition,
) -> Result<(f64, ModelSource), RecordError> {
    let (model, source) = model_for(bundle, &event.partition);
    if source == ModelSource::Fallback && !scores_unknown(bundle, policy) {
        return Err(refusal(bundle, &event.partition));
    }
    Ok((model.model.predict(&event.inputs), source))
}

/// Whether a partition without a model of its own is scored (by the fallback) under
/// `policy`: then nothing needs to know before scoring whether a partition has a model.
pub fn scores_unknown(bundle: &Bundle, policy: UnknownPartition) -> bool {
    bundle.has_fallback() && policy == UnknownPartition::Fallback
}

/// The error for `partition`, which has no model of its own, when [`scores_unknown`] is false.
pub fn refusal(bundle: &Bundle, partition: &str) -> RecordError {
    if bundle.has_fallback() {
        unknown(partition)
    } else {
        no_fallback(partition)
    }
}

/// The error for a partition the bundle has no model for.
fn unknown(partition: &str) -> RecordError {
    RecordError::new(
        RecordErrorKind::UnknownPartition,
        format!("partition {partition:?} has no model and unknown_partition = \"dlq\""),
    )
}

/// The error for a partition without a model in a bundle that has no fallback.
fn no_fallback(partition: &str) -> RecordError {
    RecordError::new(
        RecordErrorKind::UnknownPartition,
        format!(
            "partition {partition:?} has no model and the bundle has no fallback (add [fallback] to the import manifest)"
        ),
    )
}
