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
    ///
    /// The dot product keeps four running sums, one per input position modulo four, so that
    /// its additions overlap instead of each waiting for the one before: for 37 inputs a
    /// chain of about 10 additions instead of 37. The terms are those of one running sum in
    /// another order, so a prediction may differ from it in the last bits only.
    #[inline]
    pub fn predict(&self, inputs: &[f64]) -> f64 {
        let n = self.coefficients.len().min(inputs.len());
        let (weights, inputs) = (&self.coefficients[..n], &inputs[..n]);
        let mut sums = [0.0f64; 4];
        let mut w4 = weights.chunks_exact(4);
        let mut x4 = inputs.chunks_exact(4);
        for (w, x) in (&mut w4).zip(&mut x4) {
            for lane in 0..4 {
                sums[lane] += w[lane] * x[lane];
            }
        }
        let tail: f64 = w4
            .remainder()
            .iter()
            .zip(x4.remainder())
            .map(|(w, x)| w * x)
            .sum();
        self.intercept + ((sums[0] + sums[1]) + (sums[2] + sums[3]) + tail)
    }

    /// True when the intercept and every coefficient are finite and within ±[`MAX_WEIGHT`].
    pub fn is_bounded(&self) -> bool {
        let bounded = |w: &f64| w.abs() <= MAX_WEIGHT;
        bounded(&self.intercept) && self.coefficients.iter().all(bounded)
    }
}
