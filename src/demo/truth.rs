//! Predictions against the generator's noise-free truth: each event carries its
//! `expected_sales`, made by the behaviour its store had at that event (for a store that
//! shifted, the new behaviour from the drift on), so the error of a prediction is exactly how
//! wrong its model was, without the noise.

use std::collections::HashMap;

/// What the generator knows about one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Its place in the stream, from 0 (the drift starts at an index).
    pub index: usize,
    /// Its store.
    pub store: String,
    /// Its noise-free sales.
    pub sales: f64,
}

/// Every event's truth, by event id.
#[derive(Debug, Default)]
pub struct Truth {
    by_id: HashMap<String, Expected>,
}

impl Truth {
    /// The truth of `events`, one JSON object per line; lines without an `event_id`,
    /// `store_id` and `expected_sales` are left out.
    pub fn parse(events: &str) -> Truth {
        let by_id = events
            .lines()
            .enumerate()
            .filter_map(|(index, line)| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                let expected = Expected {
                    index,
                    store: v.get("store_id")?.as_str()?.to_owned(),
                    sales: v.get("expected_sales")?.as_f64()?,
                };
                Some((v.get("event_id")?.as_str()?.to_owned(), expected))
            })
            .collect();
        Truth { by_id }
    }

    /// The truth of one event.
    pub fn get(&self, event_id: &str) -> Option<&Expected> {
        self.by_id.get(event_id)
    }
}

/// Running absolute and squared errors.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Errors {
    /// Predictions counted.
    pub n: usize,
    abs: f64,
    sq: f64,
}

impl Errors {
    /// Counts one prediction's error.
    pub fn add(&mut self, error: f64) {
        self.n += 1;
        self.abs += error.abs();
        self.sq += error * error;
    }

    /// Mean absolute error; NaN before any prediction.
    pub fn mae(&self) -> f64 {
        self.abs / self.n as f64
    }

    /// Root mean squared error; NaN before any prediction.
    pub fn rmse(&self) -> f64 {
        (self.sq / self.n as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_found_by_id_with_their_place_in_the_stream() {
        let truth = Truth::parse(
            "{\"event_id\":\"ev-0\",\"store_id\":\"S1\",\"expected_sales\":10.5}\nnot json\n{\"event_id\":\"ev-2\",\"store_id\":\"S2\",\"expected_sales\":3}\n",
        );
        let ev2 = truth.get("ev-2").unwrap();
        assert_eq!((ev2.index, ev2.store.as_str(), ev2.sales), (2, "S2", 3.0));
        assert!(truth.get("ev-1").is_none());
    }

    #[test]
    fn errors_are_plain_means() {
        let mut e = Errors::default();
        for x in [3.0, -4.0] {
            e.add(x);
        }
        assert_eq!(e.n, 2);
        assert_eq!(e.mae(), 3.5);
        assert_eq!(e.rmse(), 12.5f64.sqrt());
    }
}
