//! Champion and challenger: is a refit on a store's recent actuals better than the model it
//! has?
//!
//! A store's actuals, oldest first, are split in time: the newest `holdout` fraction (at
//! least one) is held out, the challenger is fitted on the rest (plus the store's history
//! rows, when a history is given) with the spec's method, by the very code `train` fits with
//! ([`crate::train::fit`]). Both the champion (the store's active model, or the fallback when
//! it has none) and the challenger are scored on the held-out actuals, and the challenger is
//! kept only when its RMSE ≤ (1 − margin) × the champion's. A kept challenger is then fitted
//! again on all the store's rows (every actual read, and the history rows): that model, its
//! row count and its in-sample RMSE go into the delta, as `train` records them.

use crate::model::bundle::PartitionModel;
use crate::model::Model;
use crate::train::fit::{fit_rows, Fitted, Method, Structure, Workspace};

use super::actuals::Actual;

/// Which model a store has now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Champion {
    /// Its own model.
    Own,
    /// None of its own: the fallback scores it.
    Fallback,
    /// Nothing can score it (an imported bundle without a fallback).
    Nothing,
}

impl Champion {
    /// How the table names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Champion::Own => "own",
            Champion::Fallback => "fallback",
            Champion::Nothing => "none",
        }
    }
}

/// Why a challenger was not kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Rejected {
    /// Fewer usable actuals than `min_actuals`.
    NotEnoughActuals {
        /// Usable actuals read.
        have: usize,
        /// `min_actuals`.
        need: usize,
    },
    /// Fewer training rows than the spec's `min_rows`, which `train` would not fit either.
    TooFewRows {
        /// Rows the challenger would be fitted on.
        have: usize,
        /// The spec's `min_rows`.
        need: u64,
    },
    /// Its held-out RMSE is not below (1 − margin) × the champion's.
    NotBetter {
        /// The RMSE it had to reach.
        needed: f64,
    },
    /// The fit failed.
    FitFailed(String),
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::NotEnoughActuals { have, need } => {
                write!(f, "not enough actuals ({have} < {need})")
            }
            Rejected::TooFewRows { have, need } => {
                write!(
                    f,
                    "too few rows to fit ({have} < the spec's min_rows {need})"
                )
            }
            Rejected::NotBetter { needed } => {
                write!(f, "not better by the margin (needed ≤ {needed:.4})")
            }
            Rejected::FitFailed(why) => write!(f, "fit failed: {why}"),
        }
    }
}

/// What was decided for one store.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The challenger goes into the delta.
    Kept {
        /// The rows of its final fit.
        rows: u64,
        /// Its in-sample RMSE on them.
        training_rmse: f64,
    },
    /// The store keeps its model.
    Rejected(Rejected),
}

/// The evaluation of one store.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The champion's kind.
    pub champion: Champion,
    /// The champion's RMSE on the held-out actuals.
    pub champion_rmse: Option<f64>,
    /// The challenger's RMSE on them.
    pub challenger_rmse: Option<f64>,
    /// Actuals held out.
    pub held_out: usize,
    /// What was decided.
    pub outcome: Outcome,
    /// The model for the delta, when kept.
    pub model: Option<PartitionModel>,
}

/// What a challenger is fitted and judged with.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The spec's method.
    pub method: Method,
    /// The encoder's indicator groups.
    pub structure: Structure,
    /// Model inputs.
    pub width: usize,
    /// The spec's `min_rows`.
    pub min_rows: u64,
    /// `[actuals] min_actuals`.
    pub min_actuals: usize,
    /// `[challenger] holdout`.
    pub holdout: f64,
    /// `[challenger] margin`.
    pub margin: f64,
}

/// A history row: inputs and target.
pub type Row = (Vec<f64>, f64);

/// Judges one store: `actuals` oldest first, `history` its extra training rows,
/// `champion` the model that scores it now.
pub fn evaluate(
    partition: &str,
    actuals: &[Actual],
    history: &[Row],
    champion: Option<(&Model, Champion)>,
    rules: &Rules,
) -> Evaluation {
    let kind = champion.map_or(Champion::Nothing, |(_, k)| k);
    let rejected = |why: Rejected, champion_rmse, challenger_rmse, held_out| Evaluation {
        champion: kind,
        champion_rmse,
        challenger_rmse,
        held_out,
        outcome: Outcome::Rejected(why),
        model: None,
    };
    let n = actuals.len();
    if n < rules.min_actuals || n < 2 {
        let why = Rejected::NotEnoughActuals {
            have: n,
            need: rules.min_actuals.max(2),
        };
        return rejected(why, None, None, 0);
    }
    let held_out = ((n as f64 * rules.holdout).ceil() as usize).clamp(1, n - 1);
    let (fit_on, judge_on) = actuals.split_at(n - held_out);
    let champion_rmse = champion.map(|(m, _)| rmse(judge_on, |x| m.predict(x)));
    let training = fit_on.len() + history.len();
    if (training as u64) < rules.min_rows {
        let why = Rejected::TooFewRows {
            have: training,
            need: rules.min_rows,
        };
        return rejected(why, champion_rmse, None, held_out);
    }
    let challenger = match fit(history, fit_on, rules) {
        Ok(f) => f,
        Err(e) => return rejected(Rejected::FitFailed(e), champion_rmse, None, held_out),
    };
    let challenger_rmse = rmse(judge_on, |x| challenger.model.predict(x));
    if let Some(c) = champion_rmse.filter(|c| c.is_finite()) {
        let needed = (1.0 - rules.margin) * c;
        // A challenger that cannot score (NaN) is never kept.
        let better = challenger_rmse
            .partial_cmp(&needed)
            .is_some_and(|o| o.is_le());
        if !better {
            let why = Rejected::NotBetter { needed };
            return rejected(why, champion_rmse, Some(challenger_rmse), held_out);
        }
    } else if !challenger_rmse.is_finite() {
        let why =
            Rejected::FitFailed("the challenger's held-out predictions are not finite".into());
        return rejected(why, champion_rmse, Some(challenger_rmse), held_out);
    }
    // Kept: fitted again on every row the store has.
    let last = match fit(history, actuals, rules) {
        Ok(f) => f,
        Err(e) => {
            return rejected(
                Rejected::FitFailed(e),
                champion_rmse,
                Some(challenger_rmse),
                held_out,
            )
        }
    };
    let rows = (history.len() + n) as u64;
    Evaluation {
        champion: kind,
        champion_rmse,
        challenger_rmse: Some(challenger_rmse),
        held_out,
        outcome: Outcome::Kept {
            rows,
            training_rmse: last.rmse,
        },
        model: Some(PartitionModel {
            partition: partition.into(),
            rows,
            rmse: last.rmse,
            model: Model::Linear(last.model),
        }),
    }
}

/// Root mean squared error of `predict` on `rows`.
fn rmse(rows: &[Actual], predict: impl Fn(&[f64]) -> f64) -> f64 {
    let sse: f64 = rows
        .iter()
        .map(|a| (predict(&a.inputs) - a.target).powi(2))
        .sum();
    (sse / rows.len().max(1) as f64).sqrt()
}

/// Fits `history` then `actuals` as `train` fits one store.
fn fit(history: &[Row], actuals: &[Actual], rules: &Rules) -> Result<Fitted, String> {
    let width = rules.width;
    let n = history.len() + actuals.len();
    let mut ws = Workspace::default();
    ws.x.reserve(n * width);
    ws.y.reserve(n);
    let rows = history
        .iter()
        .map(|(x, y)| (x.as_slice(), *y))
        .chain(actuals.iter().map(|a| (a.inputs.as_slice(), a.target)));
    // Bit g: every row set one input of indicator group g (see `fit_rows`).
    let groups = rules.structure.groups.len().min(64);
    let mut exact = match groups {
        64 => u64::MAX,
        g => (1u64 << g) - 1,
    };
    for (x, y) in rows {
        if x.len() != width {
            return Err(format!("a row has {} inputs, the spec {width}", x.len()));
        }
        for (g, range) in rules.structure.groups.iter().take(64).enumerate() {
            if !x[range.clone()].iter().any(|v| *v != 0.0) {
                exact &= !(1u64 << g);
            }
        }
        ws.x.extend_from_slice(x);
        ws.y.push(y);
    }
    fit_rows(&mut ws, n, width, &rules.structure, exact, rules.method).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::linear::LinearModel;

    fn rules() -> Rules {
        Rules {
            method: Method::Ols,
            structure: Structure::default(),
            width: 1,
            min_rows: 5,
            min_actuals: 20,
            holdout: 0.25,
            margin: 0.05,
        }
    }

    /// `y = a + b·x` with a little deterministic noise.
    fn actuals(n: usize, a: f64, b: f64) -> Vec<Actual> {
        (0..n)
            .map(|i| {
                let x = (i % 7) as f64;
                Actual {
                    ts_ms: i as i64,
                    offset: (0, i as i64),
                    inputs: vec![x],
                    target: a + b * x + if i % 2 == 0 { 0.5 } else { -0.5 },
                }
            })
            .collect()
    }

    fn line(a: f64, b: f64) -> Model {
        Model::Linear(LinearModel {
            intercept: a,
            coefficients: vec![b].into(),
        })
    }

    #[test]
    fn a_shifted_store_gets_its_challenger_refitted_on_all_rows() {
        let champion = line(10.0, 2.0);
        let e = evaluate(
            "S1",
            &actuals(40, 60.0, 2.0),
            &[],
            Some((&champion, Champion::Own)),
            &rules(),
        );
        assert_eq!(e.held_out, 10);
        assert!(e.champion_rmse.unwrap() > 49.0);
        assert!(e.challenger_rmse.unwrap() < 1.0);
        let m = e.model.expect("kept");
        assert_eq!(m.rows, 40);
        assert!(matches!(e.outcome, Outcome::Kept { rows: 40, .. }));
        let Model::Linear(l) = m.model else {
            panic!("linear")
        };
        assert!((l.intercept - 60.0).abs() < 0.5, "{}", l.intercept);
    }

    #[test]
    fn a_store_its_model_still_fits_keeps_it() {
        let champion = line(60.0, 2.0);
        let e = evaluate(
            "S1",
            &actuals(40, 60.0, 2.0),
            &[],
            Some((&champion, Champion::Own)),
            &rules(),
        );
        assert!(
            matches!(e.outcome, Outcome::Rejected(Rejected::NotBetter { .. })),
            "{e:?}"
        );
        assert!(e.model.is_none());
    }

    #[test]
    fn too_few_actuals_or_rows_are_rejected_before_any_fit() {
        let e = evaluate("S1", &actuals(10, 1.0, 1.0), &[], None, &rules());
        assert_eq!(
            e.outcome,
            Outcome::Rejected(Rejected::NotEnoughActuals { have: 10, need: 20 })
        );
        let strict = Rules {
            min_rows: 100,
            ..rules()
        };
        let e = evaluate("S1", &actuals(40, 1.0, 1.0), &[], None, &strict);
        assert_eq!(
            e.outcome,
            Outcome::Rejected(Rejected::TooFewRows {
                have: 30,
                need: 100
            })
        );
        // History rows count towards the fit, never the holdout.
        let history: Vec<Row> = (0..80).map(|i| (vec![(i % 7) as f64], 1.0)).collect();
        let e = evaluate("S1", &actuals(40, 1.0, 1.0), &history, None, &strict);
        assert!(
            matches!(e.outcome, Outcome::Kept { rows: 120, .. }),
            "{e:?}"
        );
        assert_eq!(e.champion, Champion::Nothing);
    }
}
