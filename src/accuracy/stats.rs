//! One store's recent forecast error, in constant space, and the verdict on it.
//!
//! The statistics are exponentially weighted moving averages of the error (`actual −
//! predicted`), its absolute value and its square, with span `window` (weight
//! `α = 2 / (window + 1)` on the newest actual). The first actuals are weighted `1 / n`
//! instead while that is larger, so the early figures are plain means rather than averages
//! biased toward zero.

/// What the daemon thinks of a store's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fewer than `min_actuals` actuals scored by its current model (or no training RMSE to
    /// compare with).
    Pending,
    /// Its recent RMSE is within `drift_ratio` of its training RMSE.
    Stable,
    /// Its recent RMSE is over `drift_ratio` times its training RMSE.
    Drifting,
}

impl Verdict {
    /// `pending`, `stable` or `drifting`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "pending",
            Verdict::Stable => "stable",
            Verdict::Drifting => "drifting",
        }
    }
}

/// The thresholds of `[actuals]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Weight of the newest actual, `2 / (window + 1)`.
    pub alpha: f64,
    /// No verdict before this many actuals.
    pub min_actuals: u32,
    /// Drifting above this ratio of recent to training RMSE.
    pub drift_ratio: f64,
    /// Stable again at or below this ratio.
    pub recover_ratio: f64,
}

impl Thresholds {
    /// The thresholds `[actuals]` sets.
    pub fn new(config: &crate::config::ActualsConfig) -> Self {
        Thresholds {
            alpha: 2.0 / (f64::from(config.window) + 1.0),
            min_actuals: config.min_actuals,
            drift_ratio: config.drift_ratio,
            recover_ratio: config.recover_ratio(),
        }
    }
}

/// The RMSE a least-squares model fitted on `rows` rows with `inputs` inputs is expected to
/// have on new data, from its training (in-sample) RMSE: residuals on the training rows are
/// smaller than the noise by about `sqrt((n − p) / n)`, errors on new rows larger by about
/// `sqrt((n + p) / n)`, so the expectation is `training × sqrt((n + p) / (n − p))` (1.04 for
/// 840 rows and 37 inputs, 1.37 for 121 rows). Unknown rows (0, as imported models may
/// record): the training RMSE as it is. No more rows than inputs, or no usable training RMSE:
/// nothing to judge against.
pub fn expected_rmse(training_rmse: f64, rows: u64, inputs: usize) -> Option<f64> {
    if !(training_rmse.is_finite() && training_rmse > 0.0) {
        return None;
    }
    let (n, p) = (rows as f64, inputs as f64);
    match rows {
        0 => Some(training_rmse),
        _ if n > p => Some(training_rmse * ((n + p) / (n - p)).sqrt()),
        _ => None,
    }
}

/// One store's recent error and verdict: 48 bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorStats {
    /// Moving average of `actual − predicted`.
    bias: f64,
    /// Moving average of `|actual − predicted|`.
    mae: f64,
    /// Moving average of `(actual − predicted)²`.
    mse: f64,
    /// When the current verdict was reached (ms, the actual's timestamp); 0 before any.
    verdict_at_ms: i64,
    /// Actuals scored by the current model (saturating).
    count: u32,
    /// The store is drifting (kept across a model change until the new one is judged).
    drifting: bool,
    /// A verdict other than pending was reached since the model took over.
    judged: bool,
}

/// A verdict that changed with an actual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The store started drifting.
    Started,
    /// The store stopped drifting.
    Stopped,
}

impl ErrorStats {
    /// Adds one actual's error.
    pub fn add(&mut self, error: f64, alpha: f64) {
        self.count = self.count.saturating_add(1);
        let a = alpha.max(1.0 / f64::from(self.count));
        self.bias += a * (error - self.bias);
        self.mae += a * (error.abs() - self.mae);
        self.mse += a * (error * error - self.mse);
    }

    /// Forgets the errors of a model that no longer scores the store; a drifting store stays
    /// drifting until its new model has `min_actuals` actuals that say otherwise.
    pub fn restart(&mut self) {
        *self = ErrorStats {
            drifting: self.drifting,
            verdict_at_ms: if self.drifting { self.verdict_at_ms } else { 0 },
            ..ErrorStats::default()
        };
    }

    /// Judges the store after an actual at `at_ms`, against the RMSE its model is expected to
    /// have on new data ([`expected_rmse`]).
    pub fn judge(&mut self, expected: Option<f64>, t: &Thresholds, at_ms: i64) -> Option<Change> {
        let ratio = self.ratio(expected)?;
        if self.count < t.min_actuals {
            return None;
        }
        let was_judged = std::mem::replace(&mut self.judged, true);
        if !self.drifting && ratio > t.drift_ratio {
            self.drifting = true;
            self.verdict_at_ms = at_ms;
            Some(Change::Started)
        } else if self.drifting && ratio <= t.recover_ratio {
            self.drifting = false;
            self.verdict_at_ms = at_ms;
            Some(Change::Stopped)
        } else {
            if !was_judged && !self.drifting {
                self.verdict_at_ms = at_ms;
            }
            None
        }
    }

    /// Recent RMSE over the expected RMSE; `None` without one.
    pub fn ratio(&self, expected: Option<f64>) -> Option<f64> {
        let expected = expected.filter(|e| e.is_finite() && *e > 0.0)?;
        (self.count > 0).then(|| self.rmse() / expected)
    }

    /// The current verdict.
    pub fn verdict(&self) -> Verdict {
        match (self.drifting, self.judged) {
            (true, _) => Verdict::Drifting,
            (false, true) => Verdict::Stable,
            (false, false) => Verdict::Pending,
        }
    }

    /// True while the store drifts.
    pub fn drifting(&self) -> bool {
        self.drifting
    }

    /// Actuals scored by the current model.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Recent mean absolute error.
    pub fn mae(&self) -> f64 {
        self.mae
    }

    /// Recent root mean squared error.
    pub fn rmse(&self) -> f64 {
        self.mse.max(0.0).sqrt()
    }

    /// Recent mean of `actual − predicted`: positive when the model forecasts too low.
    pub fn bias(&self) -> f64 {
        self.bias
    }

    /// When the current verdict was reached, if one was.
    pub fn verdict_at_ms(&self) -> Option<i64> {
        (self.verdict_at_ms != 0).then_some(self.verdict_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds() -> Thresholds {
        Thresholds {
            alpha: 2.0 / 51.0,
            min_actuals: 10,
            drift_ratio: 1.5,
            recover_ratio: 1.35,
        }
    }

    #[test]
    fn the_first_actuals_are_plain_means() {
        let mut s = ErrorStats::default();
        for e in [1.0, -3.0, 2.0] {
            s.add(e, 0.01);
        }
        assert!((s.bias() - 0.0).abs() < 1e-12);
        assert!((s.mae() - 2.0).abs() < 1e-12);
        assert!((s.rmse() - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.count(), 3);
    }

    #[test]
    fn a_long_run_weights_the_newest_window() {
        let mut s = ErrorStats::default();
        let alpha = 2.0 / 51.0;
        for _ in 0..1000 {
            s.add(1.0, alpha);
        }
        for _ in 0..50 {
            s.add(3.0, alpha);
        }
        // 1 - (1 - α)^50 of the weight is on the last 50 actuals.
        let w = 1.0 - (1.0 - alpha).powi(50);
        assert!((s.bias() - (3.0 * w + (1.0 - w))).abs() < 1e-9);
        assert!(w > 0.86 && w < 0.87);
    }

    #[test]
    fn no_verdict_before_min_actuals_then_stable_then_drifting_then_stable() {
        let t = thresholds();
        let mut s = ErrorStats::default();
        for i in 0..9 {
            s.add(if i % 2 == 0 { 1.0 } else { -1.0 }, t.alpha);
            assert_eq!(s.judge(Some(1.0), &t, 100 + i), None);
            assert_eq!(s.verdict(), Verdict::Pending);
        }
        s.add(1.0, t.alpha);
        assert_eq!(s.judge(Some(1.0), &t, 200), None);
        assert_eq!(s.verdict(), Verdict::Stable);
        assert_eq!(s.verdict_at_ms(), Some(200));
        let mut started = None;
        for i in 0..100 {
            s.add(4.0, t.alpha);
            if let Some(c) = s.judge(Some(1.0), &t, 300 + i) {
                started = Some((c, i));
                break;
            }
        }
        let (change, after) = started.expect("a fourfold error is drift");
        assert_eq!(change, Change::Started);
        assert!(after < 10, "flagged after {after} actuals");
        assert_eq!(s.verdict(), Verdict::Drifting);
        // A new model: the drift stands until it is judged on its own actuals.
        s.restart();
        assert_eq!(s.verdict(), Verdict::Drifting);
        assert_eq!(s.count(), 0);
        let mut stopped = None;
        for i in 0..20 {
            s.add(if i % 2 == 0 { 1.0 } else { -1.0 }, t.alpha);
            if let Some(c) = s.judge(Some(1.0), &t, 500 + i) {
                stopped = Some((c, i));
            }
        }
        assert_eq!(stopped, Some((Change::Stopped, 9)));
        assert_eq!(s.verdict(), Verdict::Stable);
        assert_eq!(s.verdict_at_ms(), Some(509));
    }

    #[test]
    fn between_the_two_ratios_nothing_changes() {
        let t = thresholds();
        let mut s = ErrorStats::default();
        for _ in 0..20 {
            s.add(2.0, t.alpha);
            s.judge(Some(1.0), &t, 1);
        }
        assert!(s.drifting());
        for _ in 0..200 {
            s.add(1.4, t.alpha);
            assert_eq!(s.judge(Some(1.0), &t, 2), None);
        }
        assert!(s.drifting(), "1.4 is above recover_ratio 1.35");
    }

    #[test]
    fn without_a_training_rmse_there_is_no_verdict() {
        let t = thresholds();
        let mut s = ErrorStats::default();
        for _ in 0..50 {
            s.add(5.0, t.alpha);
            assert_eq!(s.judge(None, &t, 1), None);
            assert_eq!(s.judge(Some(0.0), &t, 1), None);
            assert_eq!(s.judge(Some(f64::NAN), &t, 1), None);
        }
        assert_eq!(s.verdict(), Verdict::Pending);
    }

    #[test]
    fn the_expected_rmse_allows_for_the_fit() {
        assert_eq!(expected_rmse(2.0, 0, 37), Some(2.0));
        let e = expected_rmse(2.0, 840, 37).unwrap();
        assert!((e / 2.0 - (877.0f64 / 803.0).sqrt()).abs() < 1e-12);
        assert!(expected_rmse(2.0, 121, 37).unwrap() > 2.7);
        assert_eq!(expected_rmse(2.0, 37, 37), None);
        assert_eq!(expected_rmse(0.0, 840, 37), None);
        assert_eq!(expected_rmse(f64::NAN, 840, 37), None);
    }

    #[test]
    fn the_row_is_small() {
        assert!(std::mem::size_of::<ErrorStats>() <= 48);
    }
}
