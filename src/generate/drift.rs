//! Drift: from a chosen event on, a share of the stores, chosen by the seed, changes behaviour,
//! so that a model fitted on the history goes stale for them and only for them.
//!
//! A drifted store's base level moves by 4–8 × its noise sd, up or down, and its price
//! elasticity is scaled in the same direction: ×0.5–0.8 (prices hurt less) when the base rises,
//! ×1.25–1.6 when it falls. Prices are positive, so the two never cancel: at every event the truth
//! moves by at least 4 noise sd, and the old model's RMSE on the store's actuals is at least
//! √17 ≈ 4.1 × its noise sd. Base and elasticity are coefficients of `train.toml`'s features, so
//! a model refitted on post-drift data is back at the noise floor. The noise and every other
//! effect stay as they were.
//!
//! The choices come from an RNG of their own, seeded from the seed, so the inputs of every event
//! are the same with or without drift; and they are nested: with one seed, the stores that drift
//! at a smaller fraction drift, the same way, at every larger one.
//!
//! This module never writes anything; `generate` writes what [`DriftPlan`] says.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::error::{Error, Result};

/// Mixed into the seed for the drift RNG ("drift" in ASCII), keeping its draws apart from the
/// stores' and the events'.
const DRIFT_STREAM: u64 = 0x0064_7269_6674;

/// Which stores drift, and from which event.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Drift {
    /// The share of stores that drift, 0..=1: round(fraction × stores) of them. 0 (the
    /// default) leaves every store as it is.
    pub fraction: f64,
    /// The global index (from 0, counted across all stores) of the first event under the new
    /// behaviour; earlier events, and the history, keep the old one.
    pub after: usize,
}

impl Drift {
    /// No store drifts.
    pub const NONE: Drift = Drift {
        fraction: 0.0,
        after: 0,
    };

    /// Refuses a fraction outside 0..=1.
    pub fn validate(&self) -> Result<()> {
        check_fraction(self.fraction)
    }
}

fn check_fraction(fraction: f64) -> Result<()> {
    if (0.0..=1.0).contains(&fraction) {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--drift takes a fraction of the stores between 0 and 1, got {fraction}"
        )))
    }
}

/// The ground truth of a generated population's drift, for whoever measures accuracy: which
/// stores drift and how noisy every store is. `generate` writes it as `drift.json` (with
/// `drift_after` added); [`drift_plan`] gives the same facts without files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftPlan {
    /// The seed the stores and the choice come from.
    pub seed: u64,
    /// The share of stores asked to drift.
    pub fraction: f64,
    /// The ids of the stores that drift, sorted.
    pub drifted: Vec<String>,
    /// Every store's noise standard deviation, by id: the RMSE floor of a correct model, the
    /// same before and after drift.
    pub noise_sd: BTreeMap<String, f64>,
}

/// What `generate` with `stores` stores, `seed` and `--drift fraction` drifts, without generating
/// anything else.
pub fn drift_plan(stores: usize, seed: u64, fraction: f64) -> Result<DriftPlan> {
    check_fraction(fraction)?;
    let population = super::stores(stores, &mut StdRng::seed_from_u64(seed));
    let regimes = Regimes::new(&population, seed, Drift { fraction, after: 0 });
    Ok(regimes.plan(&population, seed, fraction))
}

/// The drift report as `generate` writes it: the plan with `drift_after`.
#[derive(Serialize)]
struct Report<'a> {
    seed: u64,
    fraction: f64,
    drift_after: usize,
    drifted: &'a [String],
    noise_sd: &'a BTreeMap<String, f64>,
}

impl DriftPlan {
    /// `drift.json`: `{"seed", "fraction", "drift_after", "drifted", "noise_sd"}`.
    pub fn to_json(&self, drift_after: usize) -> String {
        serde_json::to_string(&Report {
            seed: self.seed,
            fraction: self.fraction,
            drift_after,
            drifted: &self.drifted,
            noise_sd: &self.noise_sd,
        })
        .expect("numbers, strings and a map of them serialise")
    }
}

/// The behaviour in force for each store at each event.
pub(super) struct Regimes {
    /// The first event under the new behaviour.
    after: usize,
    /// By store index: the behaviour after drift, for the stores that drift.
    drifted: Vec<Option<Store>>,
}

impl Regimes {
    /// Chooses round(fraction × stores) stores and their new behaviour, from the drift RNG.
    pub(super) fn new(stores: &[Store], seed: u64, drift: Drift) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ DRIFT_STREAM);
        let count = (drift.fraction * stores.len() as f64).round() as usize;
        let mut order: Vec<usize> = (0..stores.len()).collect();
        order.shuffle(&mut rng);
        let mut drifted: Vec<Option<Store>> = (0..stores.len()).map(|_| None).collect();
        // Drawn in shuffled order, so the first `count` stores' new behaviour does not depend on
        // `count`: the nesting promised above.
        for &i in order.iter().take(count.min(stores.len())) {
            drifted[i] = Some(shifted(&stores[i], &mut rng));
        }
        Regimes {
            after: drift.after,
            drifted,
        }
    }

    /// The behaviour that made event number `event` of store number `store`.
    pub(super) fn in_force<'a>(
        &'a self,
        stores: &'a [Store],
        store: usize,
        event: usize,
    ) -> &'a Store {
        match &self.drifted[store] {
            Some(new) if event >= self.after => new,
            _ => &stores[store],
        }
    }

    /// The ground truth for tests and reports.
    pub(super) fn plan(&self, stores: &[Store], seed: u64, fraction: f64) -> DriftPlan {
        let mut drifted: Vec<String> = self
            .drifted
            .iter()
            .flatten()
            .map(|s| s.id.clone())
            .collect();
        drifted.sort();
        DriftPlan {
            seed,
            fraction,
            drifted,
            noise_sd: stores.iter().map(|s| (s.id.clone(), s.noise)).collect(),
        }
    }
}

/// `store` after drift: base and elasticity moved in the same direction (see the module's
/// first lines), everything else kept.
fn shifted(store: &Store, rng: &mut StdRng) -> Store {
    let up = rng.random_bool(0.5);
    let by = rng.random_range(4.0..8.0) * store.noise;
    let scale = if up {
        rng.random_range(0.5..0.8)
    } else {
        rng.random_range(1.25..1.6)
    };
    Store {
        base: store.base + if up { by } else { -by },
        elasticity: store.elasticity * scale,
        ..store.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn population(n: usize, seed: u64) -> Vec<Store> {
        super::super::stores(n, &mut StdRng::seed_from_u64(seed))
    }

    #[test]
    fn round_fraction_times_stores_drift_and_the_same_seed_chooses_the_same_ones() {
        let stores = population(50, 7);
        for (fraction, count) in [(0.0, 0), (0.05, 3), (0.1, 5), (0.5, 25), (1.0, 50)] {
            let a =
                Regimes::new(&stores, 7, Drift { fraction, after: 0 }).plan(&stores, 7, fraction);
            let b =
                Regimes::new(&stores, 7, Drift { fraction, after: 0 }).plan(&stores, 7, fraction);
            assert_eq!(a.drifted.len(), count, "{fraction}");
            assert_eq!(a, b);
        }
        let other = Regimes::new(
            &stores,
            8,
            Drift {
                fraction: 0.5,
                after: 0,
            },
        );
        assert_ne!(
            other.plan(&stores, 8, 0.5).drifted,
            Regimes::new(
                &stores,
                7,
                Drift {
                    fraction: 0.5,
                    after: 0
                }
            )
            .plan(&stores, 7, 0.5)
            .drifted,
            "another seed chooses other stores"
        );
    }

    #[test]
    fn a_larger_fraction_drifts_the_smaller_ones_stores_the_same_way() {
        let stores = population(200, 3);
        let small = Regimes::new(
            &stores,
            3,
            Drift {
                fraction: 0.1,
                after: 0,
            },
        );
        let large = Regimes::new(
            &stores,
            3,
            Drift {
                fraction: 0.4,
                after: 0,
            },
        );
        for (i, s) in small.drifted.iter().enumerate() {
            if let Some(s) = s {
                let l = large.drifted[i].as_ref().expect("still drifts");
                assert_eq!((s.base, s.elasticity), (l.base, l.elasticity));
            }
        }
    }

    #[test]
    fn every_drifted_store_moves_at_least_four_noise_sd_at_any_price() {
        let stores = population(500, 11);
        let regimes = Regimes::new(
            &stores,
            11,
            Drift {
                fraction: 1.0,
                after: 0,
            },
        );
        for (old, new) in stores.iter().zip(regimes.drifted.iter().flatten()) {
            assert_eq!(new.noise, old.noise);
            assert_eq!(new.promo_lift, old.promo_lift);
            for price in [0.01, 1.0, old.list_price, 50.0] {
                let moved =
                    (new.base + new.elasticity * price) - (old.base + old.elasticity * price);
                assert!(
                    moved.abs() >= 4.0 * old.noise,
                    "{} at {price}: {moved}",
                    old.id
                );
            }
        }
    }

    #[test]
    fn events_before_after_and_stable_stores_keep_the_old_behaviour() {
        let stores = population(20, 5);
        let regimes = Regimes::new(
            &stores,
            5,
            Drift {
                fraction: 0.5,
                after: 100,
            },
        );
        for (i, new) in regimes.drifted.iter().enumerate() {
            let before = regimes.in_force(&stores, i, 99);
            let after = regimes.in_force(&stores, i, 100);
            assert_eq!(before.base, stores[i].base);
            match new {
                Some(new) => assert_eq!(after.base, new.base),
                None => assert_eq!(after.base, stores[i].base),
            }
        }
    }

    #[test]
    fn the_plan_lists_every_stores_noise_and_the_report_adds_drift_after() {
        let plan = drift_plan(12, 42, 0.25).unwrap();
        assert_eq!(plan.drifted.len(), 3);
        assert_eq!(plan.noise_sd.len(), 12);
        assert!(plan.noise_sd.values().all(|sd| (3.0..9.0).contains(sd)));
        let json: serde_json::Value = serde_json::from_str(&plan.to_json(500)).unwrap();
        assert_eq!(json["drift_after"], 500);
        assert_eq!(json["seed"], 42);
        // serde_json parses a float to within an ulp, not always exactly.
        let back: DriftPlan = serde_json::from_str(&plan.to_json(500)).unwrap();
        assert_eq!(back.drifted, plan.drifted);
        for (id, sd) in &back.noise_sd {
            assert!((sd - plan.noise_sd[id]).abs() < 1e-12, "{id}");
        }
        assert!(drift_plan(12, 42, 1.5).is_err());
        assert!(drift_plan(12, 42, f64::NAN).is_err());
    }
}
