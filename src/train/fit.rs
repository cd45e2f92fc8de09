//! Fitting one linear model to one partition's rows.
//!
//! Both models are solved on the centred design, as scikit-learn does, so the intercept is
//! never penalised and the solution does not depend on the features' offsets:
//!
//! * `linear` is ordinary least squares. Where the centred design has full column rank the fit
//!   is linfa-linear's `LinearRegression`. Where it does not (a feature that never varies in
//!   that store, a category it never saw, one-hot groups that add up to the intercept) there are
//!   many least-squares solutions; we take the minimum-norm one through the singular value
//!   decomposition, the solution LAPACK's `gelsd` and scikit-learn's `LinearRegression` give,
//!   so predictions agree with theirs on any input and no store is dropped for being singular.
//! * `ridge` is `(XᵀX + αI)⁻¹Xᵀy`, computed through the same decomposition.

use linfa::traits::Fit;
use linfa::Dataset;
use linfa_linalg::qr::QRInto;
use linfa_linalg::svd::SVDInto;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};

use crate::model::linear::LinearModel;
use crate::spec::ModelKind;

/// How to fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Ordinary least squares, minimum-norm where rank-deficient.
    Ols,
    /// Ridge with this penalty.
    Ridge(f64),
}

impl Method {
    /// The method a spec asks for.
    pub fn from_spec(model: ModelKind, alpha: Option<f64>) -> Self {
        match model {
            // Imported never comes from a spec file (it cannot be deserialized).
            ModelKind::Linear | ModelKind::Imported => Method::Ols,
            ModelKind::Ridge => Method::Ridge(alpha.unwrap_or(1.0)),
        }
    }
}

/// A fitted model with its in-sample error.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// The model.
    pub model: LinearModel,
    /// In-sample root mean squared error.
    pub rmse: f64,
    /// The numerical rank of the centred design.
    pub rank: usize,
}

/// Why a fit failed (only non-finite results, which finite input should never give).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FitError(String);

/// Fits `y ≈ intercept + x·w` to `rows × width` inputs `x`.
pub fn fit(
    x: ArrayView2<'_, f64>,
    y: ArrayView1<'_, f64>,
    method: Method,
) -> Result<Fitted, FitError> {
    let (n, p) = x.dim();
    if n == 0 {
        return Err(FitError("no rows to fit".into()));
    }
    let y_mean = y.sum() / n as f64;
    let x_mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(p));
    let (weights, rank) = if p == 0 {
        (Array1::zeros(0), 0)
    } else {
        let centred: Array2<f64> = &x - &x_mean;
        let constant: Vec<bool> = centred
            .columns()
            .into_iter()
            .map(|c| c.iter().all(|v| *v == 0.0))
            .collect();
        let yc: Array1<f64> = &y - y_mean;
        let (mut w, rank) = solve_centred(x, y, centred, yc.view(), method)?;
        // An input that never varies in this partition (an hour it never opened, a category it
        // never saw) has weight exactly 0 in the minimum-norm solution; clear the round-off.
        for (wj, c) in w.iter_mut().zip(constant) {
            if c {
                *wj = 0.0;
            }
        }
        (w, rank)
    };
    let intercept = y_mean - x_mean.dot(&weights);
    let model = LinearModel {
        intercept,
        coefficients: weights.to_vec(),
    };
    if !model.is_finite() {
        return Err(FitError(format!(
            "the fit gave non-finite coefficients (rank {rank} of {p})"
        )));
    }
    let sse: f64 = x
        .outer_iter()
        .zip(y)
        .map(|(row, t)| {
            let e = model.predict(row.as_slice().unwrap_or(&row.to_vec())) - t;
            e * e
        })
        .sum();
    Ok(Fitted {
        model,
        rmse: (sse / n as f64).sqrt(),
        rank,
    })
}

/// The weights of the centred problem, and the design's numerical rank.
fn solve_centred(
    x: ArrayView2<'_, f64>,
    y: ArrayView1<'_, f64>,
    centred: Array2<f64>,
    yc: ArrayView1<'_, f64>,
    method: Method,
) -> Result<(Array1<f64>, usize), FitError> {
    let (n, p) = centred.dim();
    if centred.iter().all(|v| *v == 0.0) {
        // Nothing varies: the intercept alone is the least-squares fit.
        return Ok((Array1::zeros(p), 0));
    }
    // Reduce the tall problem to a square one first: the QR factors of [X | y] give R and Qᵀy,
    // with ‖Xw − y‖² = ‖Rw − Qᵀy‖² + const, so both have the same (minimum-norm) solutions and
    // the decomposition below works on p × p instead of n × p.
    let (reduced, rhs) = if n > p + 1 {
        let mut aug = Array2::zeros((n, p + 1));
        aug.slice_mut(s![.., ..p]).assign(&centred);
        aug.column_mut(p).assign(&yc);
        let r = aug
            .qr_into()
            .map_err(|e| FitError(format!("QR decomposition failed: {e}")))?
            .into_r();
        (
            r.slice(s![..p, ..p]).to_owned(),
            r.slice(s![..p, p]).to_owned(),
        )
    } else {
        (centred, yc.to_owned())
    };
    let (u, s, vt) = reduced
        .svd_into(true, true)
        .map_err(|e| FitError(format!("singular value decomposition failed: {e}")))?;
    let (u, vt) = match (u, vt) {
        (Some(u), Some(vt)) => (u, vt),
        _ => {
            return Err(FitError(
                "singular value decomposition gave no vectors".into(),
            ))
        }
    };
    let s_max = s.iter().cloned().fold(0.0, f64::max);
    // The cutoff numpy's lstsq and LAPACK's gelsd use by default.
    let cutoff = s_max * f64::EPSILON * n.max(p) as f64;
    let rank = s.iter().filter(|v| **v > cutoff).count();

    if method == Method::Ols && rank == p && n > p {
        // Full rank: the least-squares solution is unique, and linfa-linear finds it.
        let data = Dataset::new(x.to_owned(), y.to_owned());
        if let Ok(fitted) = linfa_linear::LinearRegression::new().fit(&data) {
            let w = fitted.params().clone();
            if w.iter().all(|v| v.is_finite()) {
                return Ok((w, rank));
            }
        }
    }
    // w = V · diag(f(σ)) · Uᵀ y, with f(σ) = 1/σ (OLS, σ above the cutoff) or σ/(σ²+α) (ridge).
    let uty = u.t().dot(&rhs);
    let scaled: Array1<f64> = s
        .iter()
        .zip(uty.iter())
        .map(|(&sigma, &c)| match method {
            Method::Ols if sigma > cutoff => c / sigma,
            Method::Ols => 0.0,
            Method::Ridge(alpha) => c * sigma / (sigma * sigma + alpha),
        })
        .collect();
    Ok((vt.t().dot(&scaled), rank))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn full_rank_ols_recovers_exact_coefficients() {
        let x = array![[1.0, 2.0], [2.0, 1.0], [3.0, 5.0], [4.0, 3.0], [5.0, 8.0]];
        let y: Array1<f64> = x
            .outer_iter()
            .map(|r| 3.0 + 2.0 * r[0] - 1.5 * r[1])
            .collect();
        let f = fit(x.view(), y.view(), Method::Ols).unwrap();
        assert_eq!(f.rank, 2);
        assert!(close(f.model.intercept, 3.0));
        assert!(close(f.model.coefficients[0], 2.0));
        assert!(close(f.model.coefficients[1], -1.5));
        assert!(f.rmse < 1e-9);
    }

    #[test]
    fn a_constant_feature_gets_zero_weight_like_lstsq() {
        // Column 1 never varies in this store: the minimum-norm solution gives it weight 0.
        let x = array![[1.0, 7.0], [2.0, 7.0], [3.0, 7.0], [4.0, 7.0]];
        let y = array![2.0, 4.1, 5.9, 8.0];
        let f = fit(x.view(), y.view(), Method::Ols).unwrap();
        assert_eq!(f.rank, 1);
        assert_eq!(f.model.coefficients[1], 0.0, "exactly zero, not round-off");
        assert!(close(f.model.coefficients[0], 1.98));
        assert!(close(f.model.predict(&[5.0, 7.0]), 5.0 + 1.98 * 2.5));
    }

    #[test]
    fn one_hot_groups_that_sum_to_the_intercept_take_the_minimum_norm_split() {
        // Two categories, both seen: columns sum to one, so the design is rank-deficient.
        // The minimum-norm centred solution splits the effect symmetrically: w = (-d/2, d/2).
        let x = array![[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]];
        let y = array![10.0, 10.0, 14.0, 14.0];
        let f = fit(x.view(), y.view(), Method::Ols).unwrap();
        assert_eq!(f.rank, 1);
        assert!(close(f.model.coefficients[0], -2.0));
        assert!(close(f.model.coefficients[1], 2.0));
        assert!(close(f.model.intercept, 12.0));
        // An input with neither category (unseen in training) scores the mean.
        assert!(close(f.model.predict(&[0.0, 0.0]), 12.0));
    }

    #[test]
    fn more_inputs_than_rows_still_fits() {
        let x = array![[1.0, 2.0, 3.0], [2.0, 0.5, 1.0]];
        let y = array![1.0, 2.0];
        let f = fit(x.view(), y.view(), Method::Ols).unwrap();
        assert!(f.rmse < 1e-9);
    }

    #[test]
    fn ridge_matches_the_closed_form() {
        let x = array![[1.0], [2.0], [3.0], [4.0]];
        let y = array![1.0, 3.0, 2.0, 5.0];
        // Centred x = (-1.5, -0.5, 0.5, 1.5): Σx² = 5; Σxy = 5.5; w = 5.5 / (5 + 1).
        let f = fit(x.view(), y.view(), Method::Ridge(1.0)).unwrap();
        assert!(close(f.model.coefficients[0], 5.5 / 6.0));
        assert!(close(f.model.intercept, 2.75 - 2.5 * 5.5 / 6.0));
    }

    #[test]
    fn a_single_row_fits_its_value() {
        let x = array![[4.0, 1.0]];
        let y = array![9.0];
        let f = fit(x.view(), y.view(), Method::Ols).unwrap();
        assert!(close(f.model.predict(&[4.0, 1.0]), 9.0));
    }
}
