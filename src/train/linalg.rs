//! The dense linear algebra one store's fit needs, in f64, on matrices of a few dozen columns.
//!
//! Three kernels: a Cholesky factorisation with a condition estimate (the fast path, on the
//! normal equations), a Householder QR that takes rows in blocks (the accurate path, on the
//! design itself), and a one-sided Jacobi SVD (the minimum-norm and ridge solutions on the
//! QR's triangle). They are written here rather than taken from a crate because the problems
//! are tiny and many: what matters is no allocation per call and a decomposition whose accuracy
//! we can state (Jacobi's SVD is accurate to a few ulps of each singular value; an iterative
//! bidiagonal SVD with a convergence tolerance is not), not blocked kernels for large matrices.
//! Nothing here reads data or knows what a store is.
//!
//! Matrices are row-major `Vec<f64>`/slices with an explicit dimension.

/// The Cholesky factor `R` (upper, `RᵀR = A`) of a symmetric positive definite `q × q` matrix.
#[derive(Debug, Clone, Default)]
pub struct Cholesky {
    q: usize,
    r: Vec<f64>,
}

impl Cholesky {
    /// Factors `a` (row-major `q × q`, only the upper triangle read). `None` when a pivot is not
    /// positive, i.e. the matrix is not numerically positive definite.
    pub fn factor(a: &[f64], q: usize, into: &mut Cholesky) -> bool {
        into.q = q;
        into.r.clear();
        into.r.extend_from_slice(&a[..q * q]);
        let r = &mut into.r;
        for k in 0..q {
            let mut d = r[k * q + k];
            for i in 0..k {
                d -= r[i * q + k] * r[i * q + k];
            }
            if d.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !d.is_finite() {
                return false;
            }
            let d = d.sqrt();
            r[k * q + k] = d;
            for j in k + 1..q {
                let mut s = r[k * q + j];
                for i in 0..k {
                    s -= r[i * q + k] * r[i * q + j];
                }
                r[k * q + j] = s / d;
            }
            for i in k + 1..q {
                r[i * q + k] = 0.0;
            }
        }
        true
    }

    /// Solves `A x = b` in place.
    pub fn solve(&self, b: &mut [f64]) {
        let (q, r) = (self.q, &self.r);
        // Rᵀ z = b
        for i in 0..q {
            let mut s = b[i];
            for k in 0..i {
                s -= r[k * q + i] * b[k];
            }
            b[i] = s / r[i * q + i];
        }
        // R x = z
        for i in (0..q).rev() {
            let mut s = b[i];
            for k in i + 1..q {
                s -= r[i * q + k] * b[k];
            }
            b[i] = s / r[i * q + i];
        }
    }

    /// An estimate of the 2-norm condition number of `A` (LINPACK's: a right-hand side chosen
    /// to make `Rᵀz = e` grow, then one more solve); never more than a small factor low.
    pub fn condition(&self, a_norm: f64, work: &mut Vec<f64>) -> f64 {
        let (q, r) = (self.q, &self.r);
        if q == 0 {
            return 1.0;
        }
        work.clear();
        work.resize(q, 0.0);
        let z = work;
        for i in 0..q {
            let mut s = 0.0;
            for k in 0..i {
                s -= r[k * q + i] * z[k];
            }
            // Pick the sign of e_i that makes |z_i| larger.
            let e = if s >= 0.0 { 1.0 } else { -1.0 };
            z[i] = (e + s) / r[i * q + i];
        }
        let zn = norm(z);
        self.solve_upper_then(z);
        let yn = norm(z);
        // y = A⁻¹e, so ‖A⁻¹‖ ≥ ‖y‖/‖e‖; and y = R⁻¹z, so ‖A⁻¹‖ = ‖R⁻¹‖² ≥ (‖y‖/‖z‖)².
        // Both are lower bounds; the right-hand side was chosen to make them tight.
        let by_e = yn / (q as f64).sqrt();
        let by_z = (yn / zn.max(f64::MIN_POSITIVE)).powi(2);
        a_norm * by_e.max(by_z)
    }

    /// Solves `R x = z` in place (the second half of [`Cholesky::solve`]).
    fn solve_upper_then(&self, z: &mut [f64]) {
        let (q, r) = (self.q, &self.r);
        for i in (0..q).rev() {
            let mut s = z[i];
            for k in i + 1..q {
                s -= r[i * q + k] * z[k];
            }
            z[i] = s / r[i * q + i];
        }
    }
}

fn norm(v: &[f64]) -> f64 {
    let scale = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if scale == 0.0 {
        return 0.0;
    }
    scale * v.iter().map(|x| (x / scale).powi(2)).sum::<f64>().sqrt()
}

/// The triangle `R` of a tall matrix fed to it in row blocks (a "tall-skinny" QR): each block
/// is stacked under the current `R` and reduced by Householder reflections, so memory is one
/// block, whatever the number of rows. `Q` is never formed.
#[derive(Debug, Clone)]
pub struct StreamingQr {
    cols: usize,
    /// Row-major stack: the first `cols` rows hold `R`, the rest the pending block.
    stack: Vec<f64>,
    rows: usize,
    block: usize,
}

impl StreamingQr {
    /// An empty factorisation of a matrix with `cols` columns.
    pub fn new(cols: usize) -> Self {
        let block = (4 * cols).max(64);
        StreamingQr {
            cols,
            stack: vec![0.0; (cols + block) * cols],
            rows: cols,
            block,
        }
    }

    /// Appends one row.
    pub fn push(&mut self, row: &[f64]) {
        let c = self.cols;
        let at = self.rows * c;
        self.stack[at..at + c].copy_from_slice(&row[..c]);
        self.rows += 1;
        if self.rows == c + self.block {
            self.reduce();
        }
    }

    /// Householder reflections on the stack's columns, leaving `R` in its first rows.
    fn reduce(&mut self) {
        let (c, m) = (self.cols, self.rows);
        let a = &mut self.stack;
        let mut v = vec![0.0; m];
        for k in 0..c {
            // The column below and at the diagonal (R's rows below k are already zero).
            let mut scale = a[k * c + k].abs();
            for i in c..m {
                scale = scale.max(a[i * c + k].abs());
            }
            if scale == 0.0 {
                continue;
            }
            let mut ss = (a[k * c + k] / scale).powi(2);
            for i in c..m {
                ss += (a[i * c + k] / scale).powi(2);
            }
            // Reflect onto -sign(a_kk)·‖x‖ so that v_k = a_kk - alpha never cancels.
            let sign = if a[k * c + k] >= 0.0 { 1.0 } else { -1.0 };
            let alpha = -sign * scale * ss.sqrt();
            // v = x - alpha e_k, restricted to row k and the block rows.
            v[k] = a[k * c + k] - alpha;
            for i in c..m {
                v[i] = a[i * c + k];
            }
            let vtv = v[k] * v[k] + v[c..m].iter().map(|x| x * x).sum::<f64>();
            if vtv == 0.0 {
                continue;
            }
            for j in k..c {
                let mut s = v[k] * a[k * c + j];
                for i in c..m {
                    s += v[i] * a[i * c + j];
                }
                let f = 2.0 * s / vtv;
                a[k * c + j] -= f * v[k];
                for i in c..m {
                    a[i * c + j] -= f * v[i];
                }
            }
            a[k * c + k] = alpha;
            for i in c..m {
                a[i * c + k] = 0.0;
            }
        }
        self.rows = c;
    }

    /// The `cols × cols` upper triangle `R` with `RᵀR` = the Gram matrix of every row pushed.
    pub fn finish(mut self) -> Vec<f64> {
        if self.rows > self.cols {
            self.reduce();
        }
        self.stack.truncate(self.cols * self.cols);
        self.stack
    }
}

/// The singular value decomposition `A V = U Σ` of a square `q × q` matrix by one-sided
/// (Hestenes) Jacobi rotations: returns `AV` (whose column norms are the singular values) and
/// `V`, both row-major `q × q`.
pub fn jacobi_svd(a: &[f64], q: usize) -> (Vec<f64>, Vec<f64>) {
    let mut u = a[..q * q].to_vec();
    let mut v = vec![0.0; q * q];
    for i in 0..q {
        v[i * q + i] = 1.0;
    }
    for _sweep in 0..60 {
        let mut rotated = false;
        for i in 0..q {
            for j in i + 1..q {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for k in 0..q {
                    let (x, y) = (u[k * q + i], u[k * q + j]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma == 0.0 || gamma.abs() <= f64::EPSILON * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for m in [&mut u, &mut v] {
                    for k in 0..q {
                        let (x, y) = (m[k * q + i], m[k * q + j]);
                        m[k * q + i] = c * x - s * y;
                        m[k * q + j] = s * x + c * y;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    (u, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_and_estimates_the_condition_of_a_diagonal_matrix() {
        let a = [4.0, 0.0, 0.0, 1e-6];
        let mut c = Cholesky::default();
        assert!(Cholesky::factor(&a, 2, &mut c));
        let mut b = [8.0, 1e-6];
        c.solve(&mut b);
        assert!((b[0] - 2.0).abs() < 1e-15 && (b[1] - 1.0).abs() < 1e-12);
        let k = c.condition(4.0, &mut Vec::new());
        assert!((1e6..=4e6).contains(&k), "{k}");
    }

    #[test]
    fn cholesky_refuses_a_singular_matrix() {
        let a = [1.0, 1.0, 1.0, 1.0];
        assert!(!Cholesky::factor(&a, 2, &mut Cholesky::default()));
    }

    #[test]
    fn streaming_qr_gives_the_gram_matrix_of_every_row() {
        let rows: Vec<[f64; 3]> = (0..500)
            .map(|i| {
                let t = i as f64;
                [t.sin(), (0.3 * t).cos() * 10.0, t % 7.0]
            })
            .collect();
        let mut qr = StreamingQr::new(3);
        for r in &rows {
            qr.push(r);
        }
        let r = qr.finish();
        for i in 0..3 {
            for j in 0..3 {
                let gram: f64 = rows.iter().map(|x| x[i] * x[j]).sum();
                let rtr: f64 = (0..3).map(|k| r[k * 3 + i] * r[k * 3 + j]).sum();
                assert!((gram - rtr).abs() <= 1e-12 * gram.abs().max(1.0), "{i},{j}");
            }
        }
    }

    #[test]
    fn jacobi_svd_finds_the_singular_values_of_a_rank_one_matrix() {
        let a = [1.0, 2.0, 2.0, 4.0];
        let (av, _) = jacobi_svd(&a, 2);
        let mut s: Vec<f64> = (0..2)
            .map(|j| (av[j].powi(2) + av[2 + j].powi(2)).sqrt())
            .collect();
        s.sort_by(|a, b| b.total_cmp(a));
        assert!((s[0] - 5.0).abs() < 1e-14);
        assert!(s[1] < 1e-15);
    }
}
