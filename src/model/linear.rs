//! A fitted linear model: an intercept and one coefficient per model input.
//!
//! Models are plain data, as in linfa: the bundle stores them and serving reads them, and
//! scoring is one dot product with no allocation.

/// A linear model over the inputs of a [`crate::features::FeatureEncoder`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    /// The constant term.
    pub intercept: f64,
    /// One weight per model input, in the encoder's order.
    pub coefficients: Vec<f64>,
}

impl LinearModel {
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

    /// True when the intercept and every coefficient are finite.
    pub fn is_finite(&self) -> bool {
        self.intercept.is_finite() && self.coefficients.iter().all(|c| c.is_finite())
    }
}
