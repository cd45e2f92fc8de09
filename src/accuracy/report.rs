//! What the daemon says about one store's accuracy: an entry of `GET /partitions`, the body
//! of `GET /partitions/{id}`, and the value of a record on the drift topic.

use serde::{Deserialize, Serialize};

/// One store's accuracy, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreReport {
    /// The store (partition id).
    pub partition: String,
    /// `partition` (its own model) or `fallback`.
    pub kind: String,
    /// The bundle version whose model scored its latest actual.
    pub model_version: String,
    /// Actuals scored by its current model.
    pub actuals: u64,
    /// Recent mean absolute error.
    pub mae: f64,
    /// Recent root mean squared error.
    pub rmse: f64,
    /// Recent mean of `actual − predicted` (positive: forecasts too low).
    pub bias: f64,
    /// The model's RMSE on its training rows, from the bundle.
    pub training_rmse: f64,
    /// The RMSE the model is expected to have on new data: `training_rmse × sqrt((n + p) /
    /// (n − p))` for its `n` training rows and `p` inputs; null when it cannot be told.
    pub expected_rmse: Option<f64>,
    /// `rmse / expected_rmse`, what `drift_ratio` is compared with; null without it.
    pub ratio: Option<f64>,
    /// `pending`, `stable` or `drifting`.
    pub verdict: String,
    /// When the verdict was reached: the timestamp (ms) of the actual that decided it.
    pub verdict_at_ms: Option<i64>,
    /// The timestamp (ms) of its latest actual.
    pub last_actual_ms: Option<i64>,
}

/// The body of `GET /partitions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionsPage {
    /// Stores with statistics.
    pub tracked: usize,
    /// Of which drifting.
    pub drifting: usize,
    /// The stores asked for, in the order asked for.
    pub partitions: Vec<StoreReport>,
}

/// The order of `GET /partitions?sort=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Highest ratio of recent to training RMSE first (the default).
    Drift,
    /// Highest recent RMSE first.
    Rmse,
    /// Most actuals first.
    Actuals,
    /// By store id.
    Partition,
}

impl Sort {
    /// Parses `drift`, `rmse`, `actuals` or `partition`.
    pub fn parse(s: &str) -> Option<Sort> {
        match s {
            "drift" => Some(Sort::Drift),
            "rmse" => Some(Sort::Rmse),
            "actuals" => Some(Sort::Actuals),
            "partition" => Some(Sort::Partition),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrain::drift::{DriftRecord, Verdict};

    /// What the daemon writes is what `retrain` reads: the drift record contract.
    #[test]
    fn a_report_reads_back_as_a_drift_record() {
        let report = StoreReport {
            partition: "S017".into(),
            kind: "partition".into(),
            model_version: "v1".into(),
            actuals: 57,
            mae: 9.8,
            rmse: 12.3,
            bias: 8.1,
            training_rmse: 3.9,
            expected_rmse: Some(4.0),
            ratio: Some(3.15),
            verdict: "drifting".into(),
            verdict_at_ms: Some(1_764_650_000_000),
            last_actual_ms: Some(1_764_650_012_345),
        };
        let json = serde_json::to_vec(&report).unwrap();
        let record = DriftRecord::parse(&json).unwrap();
        assert_eq!(record.partition, "S017");
        assert_eq!(record.verdict, Verdict::Drifting);
        assert_eq!(record.verdict_at_ms, Some(1_764_650_000_000));
        assert_eq!(record.ratio, Some(3.15));
        let pending = StoreReport {
            verdict: "pending".into(),
            verdict_at_ms: None,
            ratio: None,
            ..report
        };
        let record = DriftRecord::parse(&serde_json::to_vec(&pending).unwrap()).unwrap();
        assert_eq!(record.verdict, Verdict::Pending);
    }
}
