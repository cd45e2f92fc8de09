//! Fitting one linear model to one partition's rows, exactly and cheaply.
//!
//! Both models are solved on the centred design, as scikit-learn does, so the intercept is
//! never penalised and the solution does not depend on the features' offsets. `linear` is
//! ordinary least squares with the minimum-norm solution where the design is rank-deficient
//! (what LAPACK's `gelsd`, NumPy's `lstsq` and scikit-learn's `LinearRegression` return);
//! `ridge` is `(XᵀX + αI)⁻¹Xᵀy`.
//!
//! Two paths give the same answer:
//!
//! * **Fast** (almost every store): inputs that never vary are set aside (their minimum-norm
//!   weight is exactly 0), and in each indicator group whose inputs add up to the intercept
//!   on every row (a one-hot feature or an hour of day with no unseen value) one input is set
//!   aside too. That removes the rank deficiencies the encoding itself makes, without a
//!   decomposition. The rest is solved from its centred Gram matrix by a Cholesky
//!   factorisation of the equilibrated (unit-diagonal) matrix, refined twice against the rows
//!   themselves so the answer is as accurate as a QR solve's, and the weights of each such
//!   group are shifted by their mean, which turns the solution into the minimum-norm one: the
//!   group's all-ones vector is the null space direction.
//! * **Exact fallback**, when the Cholesky fails or the condition estimate of the
//!   equilibrated matrix is above [`FAST_CONDITION_LIMIT`] (a collinearity the encoding did not
//!   make, or a badly conditioned store): a Householder QR of the centred rows, then a
//!   one-sided Jacobi SVD of its triangle and the pseudo-inverse with `gelsd`'s default cutoff
//!   `ε·max(n, p)·σ_max`.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView2};

use super::linalg::{jacobi_svd, Cholesky, StreamingQr};
use crate::model::linear::LinearModel;
use crate::spec::ModelKind;

/// Above this condition number of the equilibrated normal matrix the fast path is not
/// trusted: refinement converges by a factor of about `κ·ε` a step, and near it the rank
/// decision could differ from `gelsd`'s.
pub const FAST_CONDITION_LIMIT: f64 = 1e10;
/// Refinement steps at most on the fast path; two are usually enough to reach round-off.
const REFINEMENTS: usize = 3;

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

    pub(super) fn shift(self) -> f64 {
        match self {
            Method::Ols => 0.0,
            Method::Ridge(alpha) => alpha,
        }
    }
}

/// A fit's hyper-parameters before they are checked: linfa's [`linfa::ParamGuard`], so a bad
/// penalty is refused before any data is read, as linfa's own models refuse theirs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodParams(Method);

impl MethodParams {
    /// The method a spec asks for, unchecked.
    pub fn from_spec(model: ModelKind, alpha: Option<f64>) -> Self {
        MethodParams(Method::from_spec(model, alpha))
    }
}

impl linfa::ParamGuard for MethodParams {
    type Checked = Method;
    type Error = FitError;

    fn check_ref(&self) -> Result<&Method, FitError> {
        match self.0 {
            Method::Ridge(alpha) if !(alpha.is_finite() && alpha > 0.0) => Err(FitError::new(
                format!("the ridge penalty alpha must be a positive number, got {alpha}"),
            )),
            _ => Ok(&self.0),
        }
    }

    fn check(self) -> Result<Method, FitError> {
        self.check_ref()?;
        Ok(self.0)
    }
}

/// Which path solved a fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Cholesky of the normal equations, refined.
    Fast,
    /// Householder QR and Jacobi SVD.
    Exact,
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
    /// The path that solved it.
    pub path: Path,
}

/// Why a fit failed (no rows, or non-finite results, which finite input should never give).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FitError(String);

impl FitError {
    /// An error saying `why`.
    pub fn new(why: impl Into<String>) -> Self {
        FitError(why.into())
    }
}

/// The structure of a design that the fast path uses: the indicator groups of the encoder
/// (see [`crate::features::FeatureEncoder::indicator_groups`]).
#[derive(Debug, Clone, Default)]
pub struct Structure {
    /// Ranges of inputs of which a row sets at most one.
    pub groups: Vec<Range<usize>>,
}

/// Buffers for fitting one store after another without allocating: the caller fills `x`
/// and `y` with the store's encoded rows.
#[derive(Debug, Default)]
pub struct Workspace {
    /// Inputs, row-major `rows × width`.
    pub x: Vec<f64>,
    /// Targets.
    pub y: Vec<f64>,
    pub(super) mean: Vec<f64>,
    pub(super) lo: Vec<f64>,
    pub(super) hi: Vec<f64>,
    /// Varying inputs: those kept for the fast solve first, then the ones set aside.
    pub(super) active: Vec<usize>,
    /// How many of `active`, at its end, are set aside for the fast OLS solve.
    aside: usize,
    /// Centred varying inputs, `rows × active`, then the centred target as the last column.
    xc: Vec<f64>,
    /// Upper triangle of `[xc]ᵀ[xc]`, `(active + 1)²`.
    pub(super) gram: Vec<f64>,
    normal: Normal,
    w: Vec<f64>,
    residual: Vec<f64>,
}

/// Fits `y ≈ intercept + x·w` to `rows × width` inputs `x`, knowing nothing of their
/// structure (rank deficiencies go through the exact path).
pub fn fit(
    x: ArrayView2<'_, f64>,
    y: ArrayView1<'_, f64>,
    method: Method,
) -> Result<Fitted, FitError> {
    let (n, p) = x.dim();
    let mut ws = Workspace::default();
    ws.x.extend(x.iter());
    ws.y.extend(y.iter());
    fit_rows(&mut ws, n, p, &Structure::default(), 0, method)
}

/// Fits the `rows` rows in `ws.x` and `ws.y`. `exact` has bit `g` set when every row set one
/// input of `structure.groups[g]`.
pub fn fit_rows(
    ws: &mut Workspace,
    rows: usize,
    width: usize,
    structure: &Structure,
    exact: u64,
    method: Method,
) -> Result<Fitted, FitError> {
    let (n, p) = (rows, width);
    if n == 0 {
        return Err(FitError("no rows to fit".into()));
    }
    prepare(ws, n, p, structure, exact, method);
    let qa = ws.active.len();
    let qb = qa - ws.aside;
    let y_mean = ws.mean[p];
    let fast = qa > 0 && solve_fast(ws, n, qb, method);
    let (weights, rank, path) = if qa == 0 {
        (vec![0.0; qa], 0, Path::Fast)
    } else if fast {
        let mut w = ws.w.clone();
        w.resize(qa, 0.0);
        if method == Method::Ols {
            minimum_norm(&mut w, &ws.active, structure, exact, &ws.lo, &ws.hi);
        }
        (w, qb, Path::Fast)
    } else {
        let m = qa + 1;
        let mut qr = StreamingQr::new(m);
        for row in ws.xc.chunks_exact(m) {
            qr.push(row);
        }
        let (w, rank) = solve_exact(&qr.finish(), qa, n.max(p), method);
        (w, rank, Path::Exact)
    };
    let sse = residual_sum(&ws.xc, qa, &weights, &mut ws.residual);
    let model = model_from(&weights, &ws.active, p, &ws.mean, y_mean, rank)?;
    Ok(Fitted {
        model,
        rmse: (sse / n as f64).sqrt(),
        rank,
        path,
    })
}

/// The model of weights solved for the `active` inputs of `p` (the others weigh 0), with the
/// intercept that the centring took out: the target's mean less the weighted input means.
pub(super) fn model_from(
    weights: &[f64],
    active: &[usize],
    p: usize,
    means: &[f64],
    y_mean: f64,
    rank: usize,
) -> Result<LinearModel, FitError> {
    let mut coefficients = vec![0.0; p];
    for (w, &j) in weights.iter().zip(active) {
        coefficients[j] = *w;
    }
    let intercept = y_mean
        - coefficients
            .iter()
            .zip(means)
            .map(|(w, m)| w * m)
            .sum::<f64>();
    let model = LinearModel {
        intercept,
        coefficients: coefficients.into(),
    };
    if !model.is_bounded() {
        return Err(FitError(format!(
            "the fit gave coefficients that are not finite or beyond ±1e150 (rank {rank} of {p}): a feature is nearly constant, or its values are tiny"
        )));
    }
    Ok(model)
}

/// Centres the rows in `ws` and sums their cross-products (see [`Workspace`]); after it
/// the workspace describes the store for [`super::pooled::Pooled::add`].
pub(super) fn prepare(
    ws: &mut Workspace,
    n: usize,
    p: usize,
    structure: &Structure,
    exact: u64,
    method: Method,
) {
    centre(ws, n, p, structure, exact, method);
    gram(&ws.xc, ws.active.len() + 1, n, &mut ws.gram);
}

/// Means and ranges of inputs and target, the varying inputs in solve order, and their
/// centred copy with the centred target as a last column.
fn centre(
    ws: &mut Workspace,
    n: usize,
    p: usize,
    structure: &Structure,
    exact: u64,
    method: Method,
) {
    let Workspace {
        x,
        y,
        mean,
        lo,
        hi,
        active,
        aside: set_aside,
        xc,
        ..
    } = ws;
    mean.clear();
    mean.resize(p + 1, 0.0);
    lo.clear();
    lo.extend_from_slice(&x[..p]);
    hi.clear();
    hi.extend_from_slice(&x[..p]);
    for row in x.chunks_exact(p).take(n) {
        for j in 0..p {
            mean[j] += row[j];
            lo[j] = lo[j].min(row[j]);
            hi[j] = hi[j].max(row[j]);
        }
    }
    mean[p] = y[..n].iter().sum::<f64>() / n as f64;
    for m in &mut mean[..p] {
        *m /= n as f64;
    }
    // An input that never varies is exactly zero once centred: it is left out, and its
    // minimum-norm weight is 0 (rounding would otherwise leave a tiny nonzero column).
    active.clear();
    let aside = match method {
        Method::Ols => set_aside_columns(structure, exact, lo, hi),
        Method::Ridge(_) => Vec::new(),
    };
    active.extend((0..p).filter(|&j| lo[j] != hi[j] && !aside.contains(&j)));
    *set_aside = aside.len();
    active.extend(aside);
    let m = active.len() + 1;
    xc.clear();
    xc.resize(n * m, 0.0);
    for (i, out) in xc.chunks_exact_mut(m).enumerate() {
        let row = &x[i * p..(i + 1) * p];
        for (o, &j) in out.iter_mut().zip(active.iter()) {
            *o = row[j] - mean[j];
        }
        out[m - 1] = y[i] - mean[p];
    }
}

/// The inputs set aside for the fast OLS solve: the last varying input of each group whose
/// inputs add up to the intercept on every row.
pub(super) fn set_aside_columns(
    structure: &Structure,
    exact: u64,
    lo: &[f64],
    hi: &[f64],
) -> Vec<usize> {
    let mut out = Vec::new();
    for (g, range) in structure.groups.iter().enumerate() {
        if g < 64 && exact & (1 << g) != 0 {
            if let Some(j) = range.clone().rev().find(|&j| lo[j] != hi[j]) {
                out.push(j);
            }
        }
    }
    out
}

/// Subtracts, within each exact group, the mean of its varying inputs' weights: the
/// solution then has no component along the group's all-ones null vector.
pub(super) fn minimum_norm(
    w: &mut [f64],
    active: &[usize],
    structure: &Structure,
    exact: u64,
    lo: &[f64],
    hi: &[f64],
) {
    for (g, range) in structure.groups.iter().enumerate() {
        if g >= 64 || exact & (1 << g) == 0 {
            continue;
        }
        let members: Vec<usize> = (0..active.len())
            .filter(|&k| range.contains(&active[k]) && lo[active[k]] != hi[active[k]])
            .collect();
        if members.is_empty() {
            continue;
        }
        let mean = members.iter().map(|&k| w[k]).sum::<f64>() / members.len() as f64;
        for k in members {
            w[k] -= mean;
        }
    }
}

/// The fast path on the first `qb` varying inputs: weights in `ws.w`, or false when the
/// exact path must decide.
fn solve_fast(ws: &mut Workspace, n: usize, qb: usize, method: Method) -> bool {
    let m = ws.active.len() + 1;
    let _ = n;
    let shift = method.shift();
    let Workspace {
        xc,
        gram,
        normal,
        w,
        residual,
        ..
    } = ws;
    if !normal.solve(gram, m, qb, shift, w) {
        return false;
    }
    // Refine against the rows: r = y − Xw, step = (XᵀX + αI)⁻¹ (Xᵀr − αw).
    for _ in 0..REFINEMENTS {
        residual.clear();
        residual.extend(xc.chunks_exact(m).map(|row| {
            row[m - 1]
                - row[..qb]
                    .iter()
                    .zip(w.iter())
                    .map(|(x, w)| x * w)
                    .sum::<f64>()
        }));
        let step = &mut normal.step;
        step.clear();
        step.resize(qb, 0.0);
        for (row, r) in xc.chunks_exact(m).zip(residual.iter()) {
            for (s, x) in step.iter_mut().zip(&row[..qb]) {
                *s += x * r;
            }
        }
        for (s, w) in step.iter_mut().zip(w.iter()) {
            *s -= shift * w;
        }
        normal.apply_inverse();
        let mut big = 0.0f64;
        let mut moved = 0.0f64;
        for ((wi, d), s) in w.iter_mut().zip(&normal.step).zip(&normal.scale) {
            *wi += d;
            big = big.max(wi.abs() * s);
            moved = moved.max(d.abs() * s);
        }
        if moved <= f64::EPSILON * big {
            break;
        }
    }
    w.iter().all(|v| v.is_finite())
}

/// The normal equations of the first `qb` inputs, equilibrated and factored.
#[derive(Debug, Default)]
pub(super) struct Normal {
    chol: Cholesky,
    scale: Vec<f64>,
    a: Vec<f64>,
    /// A right-hand side for [`Normal::apply_inverse`], and its result.
    step: Vec<f64>,
}

impl Normal {
    /// Factors `gram[..qb, ..qb] + shift·I` (upper triangle of an `m × m` matrix whose last
    /// column is `Xᵀy`) and solves for `w`; false when it is not positive definite or its
    /// equilibrated condition estimate is above [`FAST_CONDITION_LIMIT`].
    pub(super) fn solve(
        &mut self,
        gram: &[f64],
        m: usize,
        qb: usize,
        shift: f64,
        w: &mut Vec<f64>,
    ) -> bool {
        // Equilibrate: the Cholesky's accuracy then depends on the correlations alone, not on
        // the inputs' units, and the condition estimate means the same for every store.
        let Normal {
            chol,
            scale,
            a,
            step,
        } = self;
        scale.clear();
        scale.extend((0..qb).map(|i| (gram[i * m + i] + shift).sqrt()));
        if scale
            .iter()
            .any(|s| s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !s.is_finite())
        {
            return false;
        }
        a.clear();
        a.resize(qb * qb, 0.0);
        for i in 0..qb {
            for j in i..qb {
                let v =
                    (gram[i * m + j] + if i == j { shift } else { 0.0 }) / (scale[i] * scale[j]);
                a[i * qb + j] = v;
                a[j * qb + i] = v;
            }
        }
        let norm_inf = (0..qb)
            .map(|i| a[i * qb..(i + 1) * qb].iter().map(|v| v.abs()).sum::<f64>())
            .fold(0.0, f64::max);
        if !Cholesky::factor(a, qb, chol) || chol.condition(norm_inf, step) > FAST_CONDITION_LIMIT {
            return false;
        }
        step.clear();
        step.extend((0..qb).map(|i| gram[i * m + m - 1]));
        self.apply_inverse();
        w.clear();
        w.extend_from_slice(&self.step);
        w.iter().all(|v| v.is_finite())
    }

    /// `step ← (XᵀX + αI)⁻¹ step` with the factors of the last [`Normal::solve`].
    fn apply_inverse(&mut self) {
        for (s, d) in self.step.iter_mut().zip(&self.scale) {
            *s /= d;
        }
        self.chol.solve(&mut self.step);
        for (s, d) in self.step.iter_mut().zip(&self.scale) {
            *s /= d;
        }
    }
}

/// Adds the upper triangle of `Σ rowᵀrow` over `n` rows of width `m` into a fresh `gram`.
fn gram(xc: &[f64], m: usize, n: usize, gram: &mut Vec<f64>) {
    gram.clear();
    gram.resize(m * m, 0.0);
    let mut rows = xc[..n * m].chunks_exact(2 * m);
    // Two rows at a time halve the passes over the triangle.
    for pair in &mut rows {
        let (a, b) = pair.split_at(m);
        for i in 0..m {
            let (ai, bi) = (a[i], b[i]);
            let out = &mut gram[i * m + i..(i + 1) * m];
            for ((g, x), y) in out.iter_mut().zip(&a[i..]).zip(&b[i..]) {
                *g += ai * x + bi * y;
            }
        }
    }
    for a in rows.remainder().chunks_exact(m) {
        for i in 0..m {
            let ai = a[i];
            let out = &mut gram[i * m + i..(i + 1) * m];
            for (g, x) in out.iter_mut().zip(&a[i..]) {
                *g += ai * x;
            }
        }
    }
}

/// The exact path on the triangle `r` (`(q+1)²`, the target last) of the centred rows:
/// weights and rank. OLS keeps singular values above `ε·max(n, p)·σ_max`, as `gelsd` does.
pub(super) fn solve_exact(
    r: &[f64],
    q: usize,
    n_max_p: usize,
    method: Method,
) -> (Vec<f64>, usize) {
    let m = q + 1;
    let mut rx = vec![0.0; q * q];
    let mut c = vec![0.0; q];
    for i in 0..q {
        rx[i * q..(i + 1) * q].copy_from_slice(&r[i * m..i * m + q]);
        c[i] = r[i * m + q];
    }
    let (av, v) = jacobi_svd(&rx, q);
    let sigma: Vec<f64> = (0..q)
        .map(|j| (0..q).map(|i| av[i * q + j].powi(2)).sum::<f64>().sqrt())
        .collect();
    let s_max = sigma.iter().cloned().fold(0.0, f64::max);
    let cutoff = s_max * f64::EPSILON * n_max_p as f64;
    let mut w = vec![0.0; q];
    let mut rank = 0;
    for j in 0..q {
        let s = sigma[j];
        let factor = match method {
            Method::Ols if s > cutoff => {
                rank += 1;
                1.0 / (s * s)
            }
            Method::Ols => continue,
            Method::Ridge(alpha) => {
                if s > cutoff {
                    rank += 1;
                }
                1.0 / (s * s + alpha)
            }
        };
        // (AV)_jᵀc = σ_j u_jᵀc, so this adds v_j σ_j u_jᵀc/σ_j² (OLS) or /(σ_j²+α) (ridge).
        let proj: f64 = (0..q).map(|i| av[i * q + j] * c[i]).sum::<f64>() * factor;
        for i in 0..q {
            w[i] += v[i * q + j] * proj;
        }
    }
    (w, rank)
}

/// `Σ (y_c − x_c·w)²` over the centred rows (target last).
fn residual_sum(xc: &[f64], q: usize, w: &[f64], scratch: &mut Vec<f64>) -> f64 {
    let m = q + 1;
    scratch.clear();
    xc.chunks_exact(m)
        .map(|row| {
            let e = row[q] - row[..q].iter().zip(w).map(|(x, w)| x * w).sum::<f64>();
            e * e
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1};

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
        assert_eq!(f.path, Path::Fast);
        assert!(close(f.model.intercept, 3.0));
        assert!(close(f.model.coefficients[0], 2.0));
        assert!(close(f.model.coefficients[1], -1.5));
        assert!(f.rmse < 1e-9);
    }

    #[test]
    fn a_bad_ridge_penalty_is_refused_before_fitting() {
        use linfa::ParamGuard;
        assert!(MethodParams::from_spec(ModelKind::Ridge, Some(-1.0))
            .check()
            .is_err());
        assert!(MethodParams::from_spec(ModelKind::Ridge, Some(f64::NAN))
            .check()
            .is_err());
        assert_eq!(
            MethodParams::from_spec(ModelKind::Ridge, Some(0.5))
                .check()
                .unwrap(),
            Method::Ridge(0.5)
        );
        assert_eq!(
            MethodParams::from_spec(ModelKind::Linear, None)
                .check()
                .unwrap(),
            Method::Ols
        );
    }

    /// linfa-linear, the user's choice of a regression library, as an independent reference
    /// on a well-conditioned store (its solver is not accurate enough on ill-conditioned or
    /// rank-deficient ones, which is why the fit is this module's own).
    #[test]
    fn a_well_conditioned_store_matches_linfa_linear() {
        use linfa::traits::Fit;
        let n = 200;
        let x = ndarray::Array2::from_shape_fn((n, 3), |(i, j)| {
            ((i * 7 + j * 13) % 17) as f64 + (i as f64 * 0.37 + j as f64).sin()
        });
        let y: Array1<f64> = x
            .outer_iter()
            .enumerate()
            .map(|(i, r)| 5.0 + 1.5 * r[0] - 0.7 * r[1] + 0.2 * r[2] + ((i * 31) % 7) as f64 * 0.1)
            .collect();
        let ours = fit(x.view(), y.view(), Method::Ols).unwrap();
        let theirs = linfa_linear::LinearRegression::new()
            .fit(&linfa::Dataset::new(x.clone(), y.clone()))
            .unwrap();
        assert!((ours.model.intercept - theirs.intercept()).abs() < 1e-8);
        for (a, b) in ours.model.coefficients.iter().zip(theirs.params()) {
            assert!((a - b).abs() < 1e-8, "{a} against linfa-linear's {b}");
        }
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
        assert_eq!(f.path, Path::Exact, "nothing told the fit about the group");
        assert!(close(f.model.coefficients[0], -2.0));
        assert!(close(f.model.coefficients[1], 2.0));
        assert!(close(f.model.intercept, 12.0));
        // An input with neither category (unseen in training) scores the mean.
        assert!(close(f.model.predict(&[0.0, 0.0]), 12.0));
    }

    #[test]
    fn a_known_indicator_group_takes_the_fast_path_to_the_same_minimum_norm_split() {
        let x = array![
            [1.0, 0.0, 0.0, 0.5],
            [0.0, 1.0, 0.0, 1.5],
            [0.0, 0.0, 1.0, 2.0],
            [1.0, 0.0, 0.0, 3.0],
            [0.0, 1.0, 0.0, 1.0],
            [0.0, 0.0, 1.0, 0.0]
        ];
        let y = array![3.0, 5.0, 4.0, 9.0, 2.0, 7.0];
        let structure = Structure {
            groups: std::iter::once(0..3).collect(),
        };
        let mut ws = Workspace::default();
        ws.x.extend(x.iter());
        ws.y.extend(y.iter());
        let fast = fit_rows(&mut ws, 6, 4, &structure, 1, Method::Ols).unwrap();
        let exact = fit(x.view(), y.view(), Method::Ols).unwrap();
        assert_eq!((fast.path, exact.path), (Path::Fast, Path::Exact));
        assert_eq!((fast.rank, exact.rank), (3, 3));
        for (a, b) in fast
            .model
            .coefficients
            .iter()
            .zip(exact.model.coefficients.iter())
        {
            assert!(close(*a, *b), "{a} vs {b}");
        }
        assert!(close(fast.model.intercept, exact.model.intercept));
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
