//! Property test of training's exactness: thousands of random stores (30 to 2,000 rows, gaps in
//! hours and categories, constant and collinear columns, scales from 1e-3 to 1e6), trained by
//! `manymodel train` and fitted independently by scikit-learn in one Python call.
//!
//! * Where a store is well-conditioned (its centred design, once the rank deficiencies the
//!   encoding makes are taken out, has a condition number below `WELL_CONDITIONED`), the
//!   minimum-norm coefficients must equal the reference within 1e-9 relative, for OLS and for
//!   ridge.
//! * On every store, rank-deficient or not, predictions must agree within 1e-6 relative, on
//!   the training rows and on probes off them (a row moved to another hour, or to another
//!   category, often one the store never saw), where only the minimum-norm choice decides.
//!
//! `MANYMODEL_PROPERTY_SEED` and `MANYMODEL_PROPERTY_STORES` change the seed and the number
//! of stores.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use manymodel::model::bundle::Bundle;
use manymodel::model::Model;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

const CATEGORIES: [&str; 5] = ["a", "b", "c", "d", "e"];
const WELL_CONDITIONED: f64 = 1e4;
const ALPHA: f64 = 1.5;
const DAY_MS: i64 = 86_400_000;

/// One generated row.
struct Row {
    hour: usize,
    x: [f64; 4],
    cat: usize,
    y: f64,
}

/// A random store: its rows and what makes it hard.
fn store(rng: &mut StdRng) -> Vec<Row> {
    let n = (rng.random_range(30f64.ln()..2000f64.ln())).exp() as usize;
    let first_hour = rng.random_range(0..16);
    let open = rng.random_range(1..=(24 - first_hour).min(12));
    let mut seen: Vec<usize> = (0..CATEGORIES.len())
        .filter(|_| rng.random_bool(0.6))
        .collect();
    if seen.is_empty() {
        seen.push(rng.random_range(0..CATEGORIES.len()));
    }
    let base = 10f64.powf(rng.random_range(-3.0..6.0));
    let scale: Vec<f64> = (0..3)
        .map(|_| base * 10f64.powf(rng.random_range(-1.0..1.0)))
        .collect();
    let offset: Vec<f64> = scale
        .iter()
        .map(|s| {
            if rng.random_bool(0.5) {
                s * rng.random_range(-50.0..50.0)
            } else {
                0.0
            }
        })
        .collect();
    let beta: Vec<f64> = scale
        .iter()
        .map(|s| {
            let b = rng.random_range(0.5..2.0) / s;
            if rng.random_bool(0.5) {
                b
            } else {
                -b
            }
        })
        .collect();
    let x2_constant = rng.random_bool(0.12);
    // < 12: x3 = 2·x1; < 20: x3 = x1 + x2; else independent. Collinear columns are exactly
    // collinear in floating point (a power of two; a sum on a common grid, without offsets):
    // a rounded combination leaves singular values at the cutoff, where any two
    // implementations of gelsd may decide differently.
    let x3_kind = rng.random_range(0..100);
    let offset: Vec<f64> = if x3_kind < 20 { vec![0.0; 3] } else { offset };
    let grid = 2f64.powi(scale[0].max(scale[1]).log2().floor() as i32 - 24);
    let on_grid = |v: f64| (v / grid).round() * grid;
    let flag_p = if rng.random_bool(0.1) {
        0.0
    } else {
        rng.random_range(0.1..0.5)
    };
    let effects: Vec<f64> = (0..CATEGORIES.len() + 24)
        .map(|_| rng.random_range(-10.0..10.0))
        .collect();
    let noise = Normal::new(0.0, rng.random_range(0.01..3.0)).unwrap();
    let unit = Normal::new(0.0, 1.0).unwrap();
    (0..n)
        .map(|_| {
            let hour = first_hour + rng.random_range(0..open);
            let cat = seen[rng.random_range(0..seen.len())];
            let x1 = on_grid(offset[0] + scale[0] * unit.sample(rng));
            let x2 = if x2_constant {
                on_grid(offset[1] + scale[1])
            } else {
                on_grid(offset[1] + scale[1] * unit.sample(rng))
            };
            let x3 = match x3_kind {
                0..12 => 2.0 * x1,
                12..20 => x1 + x2,
                _ => offset[2] + scale[2] * unit.sample(rng),
            };
            let flag = f64::from(u8::from(rng.random_bool(flag_p)));
            let y = 40.0
                + beta[0] * x1
                + beta[1] * x2
                + beta[2] * x3
                + 3.0 * flag
                + effects[cat]
                + effects[CATEGORIES.len() + hour]
                + noise.sample(rng);
            Row {
                hour,
                x: [x1, x2, x3, flag],
                cat,
                y,
            }
        })
        .collect()
}

/// The model inputs of a row, in the order of the bundle's input names.
fn encode(hour: usize, x: &[f64; 4], cat: usize) -> Vec<f64> {
    let mut v = vec![0.0; 4 + CATEGORIES.len() + 24];
    v[..4].copy_from_slice(x);
    v[4 + cat] = 1.0;
    v[4 + CATEGORIES.len() + hour] = 1.0;
    v
}

fn predict(intercept: f64, coef: &[f64], x: &[f64]) -> f64 {
    intercept + coef.iter().zip(x).map(|(w, x)| w * x).sum::<f64>()
}

/// The worst coefficient error, each weight's error measured by what it does to predictions
/// (times its input's spread) and relative to the store's largest such effect: independent of
/// the inputs' units, and blind to none of the weights. (Weights of inputs whose spread is a
/// millionth of another's differ by orders of magnitude; a reference computed in floating
/// point is only accurate to ε·κ relative to the largest of them.)
fn coefficient_error(ours: &[f64], reference: &[f64], spread: &[f64]) -> f64 {
    let effect = reference
        .iter()
        .zip(spread)
        .map(|(w, s)| (w * s).abs())
        .fold(0.0, f64::max);
    ours.iter()
        .zip(reference)
        .zip(spread)
        .map(|((a, b), s)| {
            if *s == 0.0 {
                // A column that never varies has weight exactly 0 here.
                return if *a == 0.0 { 0.0 } else { f64::INFINITY };
            }
            (a - b).abs() * s / effect.max(f64::MIN_POSITIVE)
        })
        .fold(0.0, f64::max)
}

#[derive(Default, Debug)]
struct Tally {
    label: &'static str,
    stores: usize,
    well_conditioned: usize,
    rank_deficient: usize,
    worst_coefficient: f64,
    worst_intercept: f64,
    worst_prediction: f64,
    predictions: usize,
}

#[allow(clippy::too_many_arguments)]
fn check(
    tally: &mut Tally,
    id: &str,
    rows: &[Row],
    ours: (&[f64], f64),
    reference: (&[f64], f64),
    well_conditioned: bool,
    full_rank: bool,
) {
    let p = ours.0.len();
    let mut spread = vec![0.0; p];
    let encoded: Vec<Vec<f64>> = rows.iter().map(|r| encode(r.hour, &r.x, r.cat)).collect();
    let mean: Vec<f64> = (0..p)
        .map(|j| encoded.iter().map(|x| x[j]).sum::<f64>() / rows.len() as f64)
        .collect();
    for (j, s) in spread.iter_mut().enumerate() {
        *s = encoded
            .iter()
            .map(|x| (x[j] - mean[j]).powi(2))
            .sum::<f64>()
            .sqrt();
    }
    let y_spread = {
        let m = rows.iter().map(|r| r.y).sum::<f64>() / rows.len() as f64;
        (rows.iter().map(|r| (r.y - m).powi(2)).sum::<f64>() / rows.len() as f64).sqrt()
    };
    tally.stores += 1;
    if !full_rank {
        tally.rank_deficient += 1;
    }
    if well_conditioned {
        tally.well_conditioned += 1;
        let e = coefficient_error(ours.0, reference.0, &spread);
        assert!(
            e <= 1e-9,
            "{} store {id}: coefficients differ by {e:e} relative\n ours {:?}\n reference {:?}",
            tally.label,
            ours.0,
            reference.0
        );
        tally.worst_coefficient = tally.worst_coefficient.max(e);
        // The intercept is ȳ − μ·w: it is known to the precision of the terms it adds up.
        let mean_y = rows.iter().map(|r| r.y).sum::<f64>() / rows.len() as f64;
        let size = mean_y.abs()
            + mean
                .iter()
                .zip(reference.0)
                .map(|(m, w)| (m * w).abs())
                .sum::<f64>();
        let e = (ours.1 - reference.1).abs() / size.max(f64::MIN_POSITIVE);
        assert!(
            e <= 1e-9,
            "{} store {id}: intercepts {} and {} ({e:e} of {size})",
            tally.label,
            ours.1,
            reference.1
        );
        tally.worst_intercept = tally.worst_intercept.max(e);
    }
    // Predictions on the rows, and off them: another hour, another category.
    for (i, r) in rows.iter().enumerate().take(300) {
        let probes = [
            encoded[i].clone(),
            encode((r.hour + 5 + i % 7) % 24, &r.x, r.cat),
            encode(r.hour, &r.x, (r.cat + 1 + i % 4) % CATEGORIES.len()),
        ];
        for x in &probes {
            let a = predict(ours.1, ours.0, x);
            let b = predict(reference.1, reference.0, x);
            let e = (a - b).abs() / b.abs().max(y_spread).max(1e-300);
            assert!(
                e <= 1e-6,
                "{} store {id}: prediction {a} vs reference {b} on {x:?} ({e:e} relative)\n ours {:?} {}\n reference {:?} {}",
                tally.label, ours.0, ours.1, reference.0, reference.1
            );
            tally.worst_prediction = tally.worst_prediction.max(e);
            tally.predictions += 1;
        }
    }
}

fn write_history(path: &Path, stores: &[(String, Vec<Row>)]) {
    let mut text = String::from("store,ts,x1,x2,x3,flag,cat,y\n");
    let start = 1_736_121_600_000i64; // 2025-01-06T00:00:00Z
    for (k, (id, rows)) in stores.iter().enumerate() {
        for (i, r) in rows.iter().enumerate() {
            let day = ((k * 7 + i) % 60) as i64;
            let ms = start + day * DAY_MS + r.hour as i64 * 3_600_000;
            let ts = chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            writeln!(
                text,
                "{id},{ts},{},{},{},{},{},{}",
                r.x[0], r.x[1], r.x[2], r.x[3] as u8, CATEGORIES[r.cat], r.y
            )
            .unwrap();
        }
    }
    std::fs::write(path, text).unwrap();
}

const SPEC: &str = r#"partition_column = "store"
target = "y"
model = "linear"
min_rows = 30
[[features]]
column = "x1"
kind = "numeric"
[[features]]
column = "x2"
kind = "numeric"
[[features]]
column = "x3"
kind = "numeric"
[[features]]
column = "flag"
kind = "bool"
[[features]]
column = "cat"
kind = "one_hot"
[[features]]
column = "ts"
kind = "hour_of_day"
"#;

fn train(dir: &Path, spec: &str, name: &str) -> Bundle {
    let spec_path = dir.join(format!("{name}.toml"));
    std::fs::write(&spec_path, spec).unwrap();
    let bundle = dir.join(format!("{name}.avro"));
    common::run_ok(&[
        "train",
        "--spec",
        spec_path.to_str().unwrap(),
        "--input",
        dir.join("history.csv").to_str().unwrap(),
        "--output",
        bundle.to_str().unwrap(),
    ]);
    Bundle::read(&bundle).unwrap()
}

#[derive(serde::Deserialize)]
struct Reference {
    reduced_cond: f64,
    coef: Vec<f64>,
    intercept: f64,
    sk_coef: Vec<f64>,
    sk_intercept: f64,
    rank: usize,
    gap: f64,
    ridge_coef: Vec<f64>,
    ridge_intercept: f64,
}

#[derive(serde::Deserialize)]
struct References {
    categories: Vec<String>,
    stores: HashMap<String, Reference>,
}

fn linear_of(bundle: &Bundle, id: &str) -> (Vec<f64>, f64) {
    match &bundle.partition(id).expect("every store is fitted").model {
        Model::Linear(m) => (m.coefficients.to_vec(), m.intercept),
        Model::Trees(_) => panic!("a linear bundle"),
    }
}

#[test]
fn ols_and_ridge_equal_a_gelsd_reference_on_thousands_of_random_stores() {
    let seed: u64 = std::env::var("MANYMODEL_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18);
    let count: usize = std::env::var("MANYMODEL_PROPERTY_STORES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1200);
    let python = common::python_with(
        "sklearn, numpy, pandas",
        &["scikit-learn", "numpy", "pandas"],
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stores: Vec<(String, Vec<Row>)> = (0..count)
        .map(|k| (format!("S{k:05}"), store(&mut rng)))
        .collect();
    // Every category appears somewhere, so the learned list is a..e.
    for (c, (_, rows)) in stores.iter_mut().enumerate().take(CATEGORIES.len()) {
        rows[0].cat = c;
    }
    let dir = tempfile::tempdir().unwrap();
    write_history(&dir.path().join("history.csv"), &stores);
    if std::env::var_os("MANYMODEL_PROPERTY_KEEP").is_some() {
        eprintln!("keeping {}", dir.keep().display());
        return;
    }

    let ols = train(dir.path(), SPEC, "ols");
    let ridge = train(
        dir.path(),
        &SPEC.replace(
            "model = \"linear\"",
            &format!("model = \"ridge\"\nalpha = {ALPHA}"),
        ),
        "ridge",
    );
    let expected: Vec<String> = ["x1", "x2", "x3", "flag"]
        .iter()
        .map(|s| s.to_string())
        .chain(CATEGORIES.iter().map(|c| format!("cat={c}")))
        .chain((0..24).map(|h| format!("ts.hour_of_day={h}")))
        .collect();
    assert_eq!(ols.encoder().names(), expected.as_slice());

    let out = dir.path().join("reference.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/exact_fits.py");
    let status = Command::new(&python)
        .arg(script)
        .arg(dir.path().join("history.csv"))
        .arg(ALPHA.to_string())
        .arg(&out)
        .status()
        .expect("python runs");
    assert!(status.success());
    let refs: References = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(refs.categories, CATEGORIES);

    let mut linear = Tally {
        label: "linear",
        ..Tally::default()
    };
    let mut sklearn = Tally {
        label: "linear vs scikit-learn",
        ..Tally::default()
    };
    let mut ridged = Tally {
        label: "ridge",
        ..Tally::default()
    };
    for (id, rows) in &stores {
        let r = &refs.stores[id];
        // Well-conditioned: rank-deficient only through the encoding (constant inputs,
        // indicator groups adding up to the intercept), and the rest within WELL_CONDITIONED.
        let well = r.reduced_cond <= WELL_CONDITIONED && r.gap < 1e-13;
        let full_rank = r.rank == expected.len();
        let (w, b) = linear_of(&ols, id);
        check(
            &mut linear,
            id,
            rows,
            (&w, b),
            (&r.coef, r.intercept),
            well,
            full_rank,
        );
        // scikit-learn centres a column that never varies to rounding noise, which its
        // cutoff can keep; compare it where no numeric column is constant.
        let constant = rows.iter().all(|row| row.x[1] == rows[0].x[1])
            || rows.iter().all(|row| row.x[0] == rows[0].x[0]);
        if !constant {
            check(
                &mut sklearn,
                id,
                rows,
                (&w, b),
                (&r.sk_coef, r.sk_intercept),
                well,
                full_rank,
            );
        }
        let (w, b) = linear_of(&ridge, id);
        check(
            &mut ridged,
            id,
            rows,
            (&w, b),
            (&r.ridge_coef, r.ridge_intercept),
            well,
            full_rank,
        );
    }
    eprintln!("seed {seed}: linear {linear:?}");
    eprintln!("seed {seed}: {sklearn:?}");
    eprintln!("seed {seed}: ridge {ridged:?}");
    assert_eq!(linear.stores, count);
    assert!(
        linear.well_conditioned * 2 > count,
        "most stores are well-conditioned: {linear:?}"
    );
}
