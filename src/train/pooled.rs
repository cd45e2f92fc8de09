//! The fallback model, fitted on every store's rows without holding them together.
//!
//! Each store's centred cross-products are pooled with Chan's update (the pooled matrix is the
//! sum of the stores' plus `n_a·n_b/n · δδᵀ` for the difference `δ` of their means), which is
//! as accurate as centring all rows on the pooled mean, and the pooled normal equations are
//! solved like one store's. Only when they are badly conditioned are the rows read again,
//! into a streaming QR.

use super::fit::{
    minimum_norm, model_from, set_aside_columns, solve_exact, FitError, Fitted, Method, Normal,
    Path, Structure, Workspace,
};
use super::linalg::StreamingQr;

/// Pooled moments of many stores' rows: count, means (target last), ranges, and the upper
/// triangle of the centred cross-products of `[x | y]`.
#[derive(Debug, Clone)]
pub struct Pooled {
    rows: usize,
    width: usize,
    mean: Vec<f64>,
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Bit `g`: every row so far set one input of indicator group `g`.
    exact: u64,
    cross: Vec<f64>,
}

impl Pooled {
    /// Nothing pooled yet, for inputs of `width`.
    pub fn new(width: usize) -> Self {
        let m = width + 1;
        Pooled {
            rows: 0,
            width,
            mean: vec![0.0; m],
            lo: vec![f64::INFINITY; width],
            hi: vec![f64::NEG_INFINITY; width],
            exact: u64::MAX,
            cross: vec![0.0; m * m],
        }
    }

    /// Pools a store that [`super::fit::prepare`] (or a fit) left in `ws`.
    pub fn add(&mut self, ws: &Workspace, rows: usize, exact: u64) {
        let mut other = Pooled::new(self.width);
        let (p, m) = (self.width, self.width + 1);
        other.rows = rows;
        other.mean.copy_from_slice(&ws.mean[..m]);
        other.lo.copy_from_slice(&ws.lo[..p]);
        other.hi.copy_from_slice(&ws.hi[..p]);
        other.exact = exact;
        // The workspace's matrix covers its varying inputs and the target; the rest are 0.
        let ma = ws.active.len() + 1;
        let index = |k: usize| if k + 1 == ma { p } else { ws.active[k] };
        for a in 0..ma {
            for b in a..ma {
                let (i, j) = (index(a), index(b));
                let (i, j) = (i.min(j), i.max(j));
                other.cross[i * m + j] = ws.gram[a * ma + b];
            }
        }
        self.merge(&other);
    }

    /// Pools another set of rows into this one.
    pub fn merge(&mut self, other: &Pooled) {
        if other.rows == 0 {
            return;
        }
        if self.rows == 0 {
            *self = other.clone();
            return;
        }
        let m = self.width + 1;
        let (na, nb) = (self.rows as f64, other.rows as f64);
        let n = na + nb;
        let delta: Vec<f64> = (0..m).map(|i| other.mean[i] - self.mean[i]).collect();
        let f = na * nb / n;
        for i in 0..m {
            for j in i..m {
                self.cross[i * m + j] += other.cross[i * m + j] + f * delta[i] * delta[j];
            }
            self.mean[i] += delta[i] * nb / n;
        }
        for j in 0..self.width {
            self.lo[j] = self.lo[j].min(other.lo[j]);
            self.hi[j] = self.hi[j].max(other.hi[j]);
        }
        self.rows += other.rows;
        self.exact &= other.exact;
    }

    /// The number of rows pooled.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Fits the pooled rows. `rows` replays every row (inputs, target) to `sink`, and is only
    /// called when the pooled normal equations are too badly conditioned to trust.
    pub fn fit(
        &self,
        structure: &Structure,
        method: Method,
        rows: impl Fn(&mut dyn FnMut(&[f64], f64)),
    ) -> Result<Fitted, FitError> {
        let (n, p, m) = (self.rows, self.width, self.width + 1);
        if n == 0 {
            return Err(FitError::new("no rows to fit"));
        }
        let aside = match method {
            Method::Ols => set_aside_columns(structure, self.exact, &self.lo, &self.hi),
            Method::Ridge(_) => Vec::new(),
        };
        let mut active: Vec<usize> = (0..p)
            .filter(|&j| self.lo[j] != self.hi[j] && !aside.contains(&j))
            .collect();
        let qb = active.len();
        active.extend(aside);
        let qa = active.len();
        let ma = qa + 1;
        let index = |k: usize| if k == qa { p } else { active[k] };
        let mut gram = vec![0.0; ma * ma];
        for a in 0..ma {
            for b in a..ma {
                let (i, j) = (index(a), index(b));
                gram[a * ma + b] = self.cross[i.min(j) * m + i.max(j)];
            }
        }
        let mut normal = Normal::default();
        let mut w = Vec::new();
        let (weights, rank, path) = if qa == 0 {
            (Vec::new(), 0, Path::Fast)
        } else if normal.solve(&gram, ma, qb, method.shift(), &mut w) {
            w.resize(qa, 0.0);
            if method == Method::Ols {
                minimum_norm(&mut w, &active, structure, self.exact, &self.lo, &self.hi);
            }
            (w, qb, Path::Fast)
        } else {
            let mut qr = StreamingQr::new(ma);
            let mut centred = vec![0.0; ma];
            rows(&mut |x, y| {
                for (c, &j) in centred.iter_mut().zip(&active) {
                    *c = x[j] - self.mean[j];
                }
                centred[qa] = y - self.mean[p];
                qr.push(&centred);
            });
            let (w, rank) = solve_exact(&qr.finish(), qa, n.max(p), method);
            (w, rank, Path::Exact)
        };
        // SSE = yᵀy − 2wᵀXᵀy + wᵀXᵀXw on the centred pooled matrix.
        let at = |a: usize, b: usize| gram[a.min(b) * ma + a.max(b)];
        let mut sse = at(qa, qa);
        for a in 0..qa {
            sse -= 2.0 * weights[a] * at(a, qa);
            for b in 0..qa {
                sse += weights[a] * at(a, b) * weights[b];
            }
        }
        let model = model_from(&weights, &active, p, &self.mean, self.mean[p], rank)?;
        Ok(Fitted {
            model,
            rmse: (sse.max(0.0) / n as f64).sqrt(),
            rank,
            path,
        })
    }
}
