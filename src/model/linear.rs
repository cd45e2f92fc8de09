//! A fitted linear model: an intercept and one coefficient per model input.
//!
//! Models are plain data, as in linfa: the bundle stores them and serving reads them, and
//! scoring is one dot product with no allocation.

use std::sync::Arc;

/// A linear model over the inputs of a [`crate::features::FeatureEncoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    /// The constant term.
    pub intercept: f64,
    /// One weight per model input, in the encoder's order. Shared: a bundle that keeps a
    /// store's model from another (a delta, a held version) shares its weights.
    pub coefficients: Arc<[f64]>,
}

/// The largest magnitude of a coefficient or an intercept: with inputs bounded as
/// [`crate::field::MAX_MAGNITUDE`] says, every prediction is finite.
pub const MAX_WEIGHT: f64 = crate::field::MAX_MAGNITUDE;

impl LinearModel {
    /// Bytes held by the weights (with the count of their shared allocation).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&self.coefficients[..]) + 2 * std::mem::size_of::<usize>()
    }

    /// The prediction for one encoded input vector.
    #[inline]
    pub fn predict(&self, inputs: &[f64]) -> f64 {
        self.intercept
            + self
                .coefficients
                .iter()
                .zip(inputs)
                .map(|(w, x)| w * x)
                .sum::<f64>()
    }

    /// True when the intercept and every coefficient are finite and within ±[`MAX_WEIGHT`].
    pub fn is_bounded(&self) -> bool {
        let bounded = |w: &f64| w.abs() <= MAX_WEIGHT;
        bounded(&self.intercept) && self.coefficients.iter().all(bounded)
    }
}
