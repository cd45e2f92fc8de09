//! Fitted models and the bundle that carries them.
//!
//! A partition's model is one of the kinds in [`Model`]; scoring only ever calls
//! [`Model::predict`], so the kinds can be mixed freely within one bundle.
//!
//! [`bundle`] is the versioned set of models and its Avro file (decoded directly when written
//! with our own schema, `bundle/decode.rs`); [`index`] finds a partition's model by id without
//! a second copy of the ids; [`delta`] applies a delta bundle to its base.

pub mod bundle;
pub mod delta;
pub mod index;
pub mod linear;
pub mod tree;

use linear::LinearModel;
use tree::TreeEnsemble;

/// One partition's model, of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// An intercept and one weight per model input (trained here or imported as JSON).
    Linear(LinearModel),
    /// A gradient-boosted tree ensemble (imported from XGBoost).
    Trees(Box<TreeEnsemble>),
}

impl Model {
    /// The prediction for one encoded input vector.
    #[inline]
    pub fn predict(&self, inputs: &[f64]) -> f64 {
        match self {
            Model::Linear(m) => m.predict(inputs),
            Model::Trees(m) => m.predict(inputs),
        }
    }

    /// Hints the CPU to load what [`Model::predict`] will read first ([`crate::cache`]).
    #[inline]
    pub fn prefetch(&self) {
        match self {
            Model::Linear(m) => crate::cache::prefetch(&m.coefficients[..]),
            Model::Trees(m) => crate::cache::prefetch(&**m),
        }
    }

    /// True when every number of the model is finite, and a linear model's within ±1e150
    /// ([`linear::MAX_WEIGHT`]).
    pub fn is_bounded(&self) -> bool {
        match self {
            Model::Linear(m) => m.is_bounded(),
            // A TreeEnsemble is validated when built: finite leaves and base score.
            Model::Trees(_) => true,
        }
    }

    /// Bytes the model holds outside its own struct (its weights or nodes).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Model::Linear(m) => m.heap_bytes(),
            Model::Trees(m) => m.heap_bytes(),
        }
    }

    /// `linear` or `trees`, as `inspect` shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            Model::Linear(_) => "linear",
            Model::Trees(_) => "trees",
        }
    }

    /// True when the model has a defined answer for a missing (NaN) input: trees follow each
    /// split's default direction; a linear model has no such rule.
    pub fn takes_missing(&self) -> bool {
        matches!(self, Model::Trees(_))
    }

    /// Checks the model against the number of model inputs the bundle's features give.
    pub fn check_width(&self, width: usize) -> Result<(), String> {
        match self {
            Model::Linear(m) if m.coefficients.len() != width => Err(format!(
                "has {} coefficients, the features give {width}",
                m.coefficients.len()
            )),
            Model::Trees(t) if t.inputs_read() > width => Err(format!(
                "has a split on model input {}, the features give {width}",
                t.inputs_read() - 1
            )),
            _ => Ok(()),
        }
    }
}
