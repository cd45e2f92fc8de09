//! Every tracked store's accuracy in one compact table: a hash map from the store id to a
//! 64-byte row ([`ErrorStats`], the time of its latest actual, the version and kind of the
//! model that scored it). No task, queue or buffer per store.
//!
//! Stores with a model of their own always get a row; stores scored by the fallback only up
//! to `max_fallback_stores`, so unknown ids cannot grow the table without bound.

use std::collections::HashMap;
use std::sync::Arc;

use super::report::{PartitionsPage, Sort, StoreReport};
use super::stats::{expected_rmse, Change, ErrorStats, Thresholds};
use crate::model::bundle::Bundle;
use crate::scoring::{model_for, ModelSource};

/// The RMSE store `id`'s model in `bundle` (its own, or the fallback) is expected to have on
/// new data: its training RMSE allowing for its rows and inputs ([`expected_rmse`]).
pub fn expected_for(bundle: &Bundle, id: &str) -> Option<f64> {
    let (model, _) = model_for(bundle, id);
    expected_rmse(model.rmse, model.rows, bundle.encoder().width())
}

/// One store's row.
#[derive(Debug, Clone, Copy)]
struct Row {
    stats: ErrorStats,
    last_actual_ms: i64,
    /// Index into [`AccuracyTable::versions`].
    version: u32,
    source: ModelSource,
}

/// What one actual did to the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    /// The store's ratio of recent to training RMSE, once it has `min_actuals`.
    pub ratio: Option<f64>,
    /// Its verdict changed.
    pub change: Option<Change>,
}

/// The per-store accuracy table.
#[derive(Debug)]
pub struct AccuracyTable {
    rows: HashMap<Box<str>, Row>,
    /// Bundle versions rows refer to, interned (a daemon sees few).
    versions: Vec<Arc<str>>,
    thresholds: Thresholds,
    max_fallback: usize,
    fallback_rows: usize,
    drifting: usize,
}

impl AccuracyTable {
    /// An empty table.
    pub fn new(thresholds: Thresholds, max_fallback: usize) -> Self {
        AccuracyTable {
            rows: HashMap::new(),
            versions: Vec::new(),
            thresholds,
            max_fallback,
            fallback_rows: 0,
            drifting: 0,
        }
    }

    /// Records that a model (of kind `source`, in bundle `version`, expected to err by
    /// `expected` RMSE on new data, see [`expected_for`]) forecast store `id` with `error`
    /// (actual − predicted) for an actual at `at_ms`. `None`: the store is scored by the
    /// fallback and the table holds `max_fallback_stores` of those already.
    pub fn observe(
        &mut self,
        id: &str,
        expected: Option<f64>,
        source: ModelSource,
        version: &str,
        error: f64,
        at_ms: i64,
    ) -> Option<Observed> {
        let version = self.intern(version);
        let row = match self.rows.get_mut(id) {
            Some(row) => row,
            None => {
                if source == ModelSource::Fallback {
                    if self.fallback_rows >= self.max_fallback {
                        return None;
                    }
                    self.fallback_rows += 1;
                }
                self.rows.entry(id.into()).or_insert(Row {
                    stats: ErrorStats::default(),
                    last_actual_ms: at_ms,
                    version,
                    source,
                })
            }
        };
        if row.source != source {
            // The store gained or lost a model of its own: a new model, judged afresh.
            row.stats.restart();
            match source {
                ModelSource::Fallback => self.fallback_rows += 1,
                ModelSource::Partition => self.fallback_rows = self.fallback_rows.saturating_sub(1),
            }
            row.source = source;
        }
        row.version = version;
        row.last_actual_ms = at_ms;
        row.stats.add(error, self.thresholds.alpha);
        let change = row.stats.judge(expected, &self.thresholds, at_ms);
        match change {
            Some(Change::Started) => self.drifting += 1,
            Some(Change::Stopped) => self.drifting = self.drifting.saturating_sub(1),
            None => {}
        }
        let ratio = (row.stats.count() >= self.thresholds.min_actuals)
            .then(|| row.stats.ratio(expected))
            .flatten();
        Some(Observed { ratio, change })
    }

    /// A new bundle is active: stores whose model it replaced start their statistics over
    /// (a drifting one stays drifting until its new model is judged). Stores whose model is
    /// unchanged, as in a delta's untouched stores, keep theirs.
    pub fn bundle_changed(&mut self, old: &Bundle, new: &Bundle) {
        let version = self.intern(&new.version);
        for (id, row) in &mut self.rows {
            let (before, was) = model_for(old, id);
            let (after, is) = model_for(new, id);
            let same = was == is && before.model == after.model && before.rmse == after.rmse;
            if !same {
                // Its statistics are the new model's from now on: so is its version.
                row.stats.restart();
                row.version = version;
            }
        }
    }

    /// Stores with a row.
    pub fn tracked(&self) -> usize {
        self.rows.len()
    }

    /// Stores drifting now.
    pub fn drifting(&self) -> usize {
        self.drifting
    }

    /// One store's report, judged against `bundle` (the active one) for its training RMSE.
    pub fn report(&self, id: &str, bundle: &Bundle) -> Option<StoreReport> {
        let (key, row) = self.rows.get_key_value(id)?;
        Some(self.report_row(key, row, bundle))
    }

    /// The first `limit` stores in `sort` order.
    pub fn page(&self, sort: Sort, limit: usize, bundle: &Bundle) -> PartitionsPage {
        let mut rows: Vec<(&str, &Row, f64)> = self
            .rows
            .iter()
            .map(|(id, row)| {
                let key = match sort {
                    Sort::Drift => row
                        .stats
                        .ratio(expected_for(bundle, id))
                        .unwrap_or(f64::NEG_INFINITY),
                    Sort::Rmse => row.stats.rmse(),
                    Sort::Actuals => f64::from(row.stats.count()),
                    Sort::Partition => 0.0,
                };
                (&**id, row, key)
            })
            .collect();
        let order = |a: &(&str, &Row, f64), b: &(&str, &Row, f64)| {
            b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0))
        };
        let limit = limit.min(rows.len());
        if limit > 0 && limit < rows.len() {
            rows.select_nth_unstable_by(limit - 1, order);
            rows.truncate(limit);
        }
        rows.sort_unstable_by(order);
        PartitionsPage {
            tracked: self.rows.len(),
            drifting: self.drifting,
            partitions: rows
                .into_iter()
                .take(limit)
                .map(|(id, row, _)| self.report_row(id, row, bundle))
                .collect(),
        }
    }

    /// Bytes the table holds: its buckets (allocated capacity) and the ids' text.
    pub fn memory_bytes(&self) -> usize {
        let bucket = std::mem::size_of::<(Box<str>, Row)>() + 1;
        let ids: usize = self.rows.keys().map(|k| k.len()).sum();
        self.rows.capacity() * bucket + ids
    }

    fn report_row(&self, id: &str, row: &Row, bundle: &Bundle) -> StoreReport {
        let training_rmse = model_for(bundle, id).0.rmse;
        let expected = expected_for(bundle, id);
        let s = &row.stats;
        StoreReport {
            partition: id.to_owned(),
            kind: row.source.as_str().to_owned(),
            model_version: self
                .versions
                .get(row.version as usize)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            actuals: u64::from(s.count()),
            mae: s.mae(),
            rmse: s.rmse(),
            bias: s.bias(),
            training_rmse,
            expected_rmse: expected,
            ratio: s.ratio(expected),
            verdict: s.verdict().as_str().to_owned(),
            verdict_at_ms: s.verdict_at_ms(),
            last_actual_ms: Some(row.last_actual_ms),
        }
    }

    fn intern(&mut self, version: &str) -> u32 {
        if let Some(i) = self.versions.iter().rposition(|v| &**v == version) {
            return i as u32;
        }
        self.versions.push(Arc::from(version));
        (self.versions.len() - 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bundle::PartitionModel;
    use crate::model::linear::LinearModel;
    use crate::model::Model;

    fn model(rmse: f64) -> PartitionModel {
        PartitionModel {
            partition: "x".into(),
            rows: 0,
            rmse,
            model: Model::Linear(LinearModel {
                intercept: 0.0,
                coefficients: vec![1.0].into(),
            }),
        }
    }

    fn bundle(stores: &[(&str, f64)]) -> Bundle {
        let spec = crate::spec::TrainSpec::parse(
            "partition_column = \"store_id\"\ntarget = \"sales\"\n[[features]]\ncolumn = \"price\"\nkind = \"numeric\"\n",
        )
        .unwrap();
        let of = |id: &str, rmse: f64| PartitionModel {
            partition: id.into(),
            ..model(rmse)
        };
        Bundle::new(
            "v1".into(),
            None,
            0,
            spec,
            1,
            0,
            of("*", 1.0),
            stores.iter().map(|(id, rmse)| of(id, *rmse)).collect(),
        )
        .unwrap()
    }

    fn thresholds() -> Thresholds {
        Thresholds {
            alpha: 0.1,
            min_actuals: 5,
            drift_ratio: 1.5,
            recover_ratio: 1.35,
        }
    }

    #[test]
    fn fallback_stores_are_capped_and_own_models_are_not() {
        let mut t = AccuracyTable::new(thresholds(), 2);
        let m = Some(1.0);
        for i in 0..5 {
            let id = format!("unknown-{i}");
            let got = t.observe(&id, m, ModelSource::Fallback, "v1", 1.0, 1);
            assert_eq!(got.is_some(), i < 2, "{id}");
        }
        for i in 0..5 {
            let id = format!("known-{i}");
            assert!(t
                .observe(&id, m, ModelSource::Partition, "v1", 1.0, 1)
                .is_some());
        }
        assert_eq!(t.tracked(), 7);
    }

    #[test]
    fn drifting_stores_come_first_and_are_counted() {
        let mut t = AccuracyTable::new(thresholds(), 10);
        let m = Some(1.0);
        for i in 0..20 {
            for (id, err) in [("calm", 1.0), ("wild", 5.0), ("mild", 1.2)] {
                t.observe(id, m, ModelSource::Partition, "v1", err, i);
            }
        }
        assert_eq!(t.drifting(), 1);
        let bundle = bundle(&[("calm", 1.0), ("wild", 1.0), ("mild", 1.0)]);
        let page = t.page(Sort::Drift, 2, &bundle);
        let ids: Vec<_> = page
            .partitions
            .iter()
            .map(|r| r.partition.as_str())
            .collect();
        assert_eq!(ids, ["wild", "mild"]);
        assert_eq!(page.partitions[0].verdict, "drifting");
        assert_eq!(page.tracked, 3);
        let one = t.report("calm", &bundle).expect("tracked");
        assert_eq!(one.verdict, "stable");
        assert!((one.rmse - 1.0).abs() < 1e-12);
        assert_eq!(one.model_version, "v1");
    }

    #[test]
    fn a_row_costs_well_under_200_bytes() {
        let mut t = AccuracyTable::new(thresholds(), 0);
        let m = Some(1.0);
        for i in 0..10_000 {
            t.observe(&format!("S{i:05}"), m, ModelSource::Partition, "v1", 1.0, 1);
        }
        let per_store = t.memory_bytes() / t.tracked();
        assert!(per_store < 200, "{per_store} B a store");
    }
}
