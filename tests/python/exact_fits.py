"""Independent reference for tests/exact_fits.rs: every store of a history fitted by
LAPACK's gelsd (NumPy's lstsq on the centred design, with its default cutoff
eps*max(n, p)*s_max), by scikit-learn's LinearRegression given that same cutoff, and, for
ridge, by LAPACK's gelsy on the augmented centred design; the encoding is re-implemented here from
the documented spec semantics, not taken from manymodel.

scikit-learn's LinearRegression passes its `tol` (default 1e-6) to SciPy's lstsq as the
cutoff on dense input: it drops singular values below 1e-6*s_max, real effects of stores whose
inputs differ in scale by a million. It is called here with gelsd's default instead. Columns
that never vary are centred to exact zeros for the NumPy reference (subtracting a rounded mean
leaves noise that a cutoff of eps*n*s_max can keep); scikit-learn centres them itself.

usage: exact_fits.py HISTORY.csv ALPHA OUT.json
The history has columns store, ts, x1, x2, x3, flag, cat, y; the inputs are x1, x2, x3, flag,
cat one-hot (categories sorted) and the UTC hour of ts one-hot (24).
Writes {store: {coef, intercept, sk_coef, sk_intercept, rank, cond, gap, ridge_coef,
ridge_intercept}}.
"""
import json
import sys

import numpy as np
import pandas as pd
import scipy.linalg
from sklearn.linear_model import LinearRegression


def main():
    path, alpha, out_path = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    df = pd.read_csv(path, dtype={"store": str, "cat": str}, float_precision="round_trip")
    cats = sorted(df["cat"].unique())
    hours = pd.to_datetime(df["ts"], utc=True).dt.hour.to_numpy()
    n = len(df)
    x = np.zeros((n, 4 + len(cats) + 24))
    x[:, 0] = df["x1"].to_numpy()
    x[:, 1] = df["x2"].to_numpy()
    x[:, 2] = df["x3"].to_numpy()
    x[:, 3] = df["flag"].to_numpy()
    code = {c: i for i, c in enumerate(cats)}
    x[np.arange(n), 4 + df["cat"].map(code).to_numpy()] = 1.0
    x[np.arange(n), 4 + len(cats) + hours] = 1.0
    y = df["y"].to_numpy()
    out = {}
    for store, idx in df.groupby("store", sort=False).indices.items():
        xs, ys = x[idx], y[idx]
        eps_n = np.finfo(float).eps * max(xs.shape)
        sk = LinearRegression(tol=eps_n).fit(xs, ys)
        xc = xs - xs.mean(axis=0)
        xc[:, xs.min(axis=0) == xs.max(axis=0)] = 0.0
        yc = ys - ys.mean()
        w_ols = np.linalg.lstsq(xc, yc, rcond=None)[0]
        s = np.linalg.svd(xc, compute_uv=False)
        kept = s > eps_n * s[0]
        # Ridge on the centred design, as the least-squares problem [X; √α I] w ≈ [y; 0],
        # solved by LAPACK's gelsy (QR with column pivoting): unlike an SVD of X it keeps its
        # accuracy when the inputs' scales differ by orders of magnitude.
        p = xc.shape[1]
        aug = np.vstack([xc, np.sqrt(alpha) * np.eye(p)])
        w = scipy.linalg.lstsq(aug, np.concatenate([yc, np.zeros(p)]), lapack_driver="gelsy")[0]
        # The reduced design: without constant columns and without one varying column of each
        # indicator group (every row sets one input of each), the rank deficiencies that the
        # encoding itself makes. Its condition number is what "well-conditioned" means.
        varying = xs.min(axis=0) != xs.max(axis=0)
        keep = varying.copy()
        for lo, hi in ((4, 4 + len(cats)), (4 + len(cats), x.shape[1])):
            members = np.flatnonzero(varying[lo:hi]) + lo
            if len(members):
                keep[members[-1]] = False
        sr = np.linalg.svd(xc[:, keep], compute_uv=False) if keep.any() else np.ones(1)
        reduced_cond = float(sr[0] / sr[-1]) if sr[-1] > eps_n * sr[0] else 1e300
        out[store] = {
            "reduced_cond": reduced_cond,
            "coef": w_ols.tolist(),
            "intercept": float(ys.mean() - xs.mean(axis=0) @ w_ols),
            "sk_coef": sk.coef_.tolist(),
            "sk_intercept": float(sk.intercept_),
            "rank": int(kept.sum()),
            "cond": float(s[0] / s[kept][-1]),
            "gap": float(s[~kept].max() / s[0]) if (~kept).any() else 0.0,
            "ridge_coef": w.tolist(),
            "ridge_intercept": float(ys.mean() - xs.mean(axis=0) @ w),
        }
    with open(out_path, "w") as f:
        json.dump({"categories": cats, "stores": out}, f)


if __name__ == "__main__":
    main()
