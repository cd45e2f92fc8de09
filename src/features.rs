//! The one feature encoder, shared by training and serving.
//!
//! A [`FeatureEncoder`] is built from a spec whose one-hot categories are resolved and turns a
//! record (looked up by column name) into the model's input vector. Training calls it on CSV
//! rows, serving on JSON events: there is no second encoder that could drift from this one.

mod name_index;

use crate::error::{RecordError, RecordErrorKind};
use crate::field::{utc_hour, utc_parts, utc_weekday, Field};
use crate::spec::{FeatureKind, FeatureSpec};
use name_index::NameIndex;

/// One feature, ready to encode.
#[derive(Debug, Clone)]
struct Encoding {
    column: String,
    /// The position of `column` in [`FeatureEncoder::columns`].
    column_at: usize,
    kind: FeatureKind,
    /// One-hot categories and their input slot, relative to `offset`.
    categories: NameIndex,
    /// Where this feature's inputs start in the input vector.
    offset: usize,
}

/// Turns records into model inputs.
#[derive(Debug, Clone)]
pub struct FeatureEncoder {
    encodings: Vec<Encoding>,
    names: Vec<String>,
    /// The distinct input columns, in first-use order.
    columns: Vec<String>,
    /// The position of each of `columns`, looked up for every key of every decoded event.
    column_index: NameIndex,
    /// How the features that read each of `columns` take its value.
    column_reads: Vec<ColumnRead>,
    /// Whether a missing value is encoded (as NaN) instead of refused; see
    /// [`FeatureEncoder::missing_as_nan`].
    missing_as_nan: bool,
}

impl FeatureEncoder {
    /// Builds the encoder; every `one_hot` feature must have its categories resolved.
    pub fn new(features: &[FeatureSpec]) -> Result<Self, String> {
        let mut encodings = Vec::with_capacity(features.len());
        let mut names = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        for f in features {
            let offset = names.len();
            let mut categories = NameIndex::default();
            match f.kind {
                FeatureKind::Numeric | FeatureKind::Bool => names.push(f.column.clone()),
                FeatureKind::OneHot => {
                    let cats = f.categories.as_ref().ok_or_else(|| {
                        format!("one_hot feature {:?} has no categories", f.column)
                    })?;
                    categories =
                        NameIndex::new(cats.iter().enumerate().map(|(i, c)| (c.as_str(), i)));
                    names.extend(cats.iter().map(|c| format!("{}={}", f.column, c)));
                }
                FeatureKind::HourOfDay => {
                    names.extend((0..24).map(|h| format!("{}.hour_of_day={h}", f.column)))
                }
                FeatureKind::DayOfWeek => {
                    names.extend((0..7).map(|d| format!("{}.day_of_week={d}", f.column)))
                }
                FeatureKind::Month => {
                    names.extend((1..=12).map(|m| format!("{}.month={m}", f.column)))
                }
            }
            let column_at = match columns.iter().position(|c| *c == f.column) {
                Some(at) => at,
                None => {
                    columns.push(f.column.clone());
                    columns.len() - 1
                }
            };
            encodings.push(Encoding {
                column: f.column.clone(),
                column_at,
                kind: f.kind,
                categories,
                offset,
            });
        }
        let column_index = NameIndex::new(columns.iter().enumerate().map(|(i, c)| (c.as_str(), i)));
        let mut column_reads: Vec<Option<ColumnRead>> = vec![None; columns.len()];
        for e in &encodings {
            let read = ColumnRead::of(e.kind);
            let slot = &mut column_reads[e.column_at];
            *slot = Some(match *slot {
                Some(before) if before != read => ColumnRead::Mixed,
                _ => read,
            });
        }
        Ok(FeatureEncoder {
            encodings,
            names,
            columns,
            column_index,
            column_reads: column_reads.into_iter().flatten().collect(),
            missing_as_nan: false,
        })
    }

    /// An encoder for models that take missing inputs (tree ensembles): a missing or null
    /// numeric or bool feature becomes NaN, and a missing one-hot or time feature sets none of
    /// its inputs (as `pandas.get_dummies` encodes a missing value), instead of refusing the
    /// record with `missing_feature`.
    pub fn missing_as_nan(mut self) -> Self {
        self.missing_as_nan = true;
        self
    }

    /// True when missing values are encoded rather than refused.
    pub fn takes_missing(&self) -> bool {
        self.missing_as_nan
    }

    /// The number of model inputs.
    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// The name of each model input, e.g. `price`, `region=north`, `ts.hour_of_day=17`.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The distinct columns the features read, in first-use order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The position of column `name` in [`FeatureEncoder::columns`], if a feature reads it.
    #[inline]
    pub fn column_position(&self, name: &str) -> Option<usize> {
        self.column_index.get(name)
    }

    /// How the features take the value of the column at `at` in [`FeatureEncoder::columns`].
    #[inline]
    pub fn column_read(&self, at: usize) -> ColumnRead {
        self.column_reads
            .get(at)
            .copied()
            .unwrap_or(ColumnRead::Mixed)
    }

    /// Encodes a record whose columns were each read already as their features take them
    /// (`values`, by position in [`FeatureEncoder::columns`]) into `out` (cleared first), as
    /// [`FeatureEncoder::encode_columns`] encodes the same values. `None` if a column is
    /// absent, for the caller to encode the record the general way, which decides what a
    /// missing value means.
    pub fn encode_read(&self, values: &[ColumnValue<'_>], out: &mut Vec<f64>) -> Option<()> {
        out.clear();
        out.resize(self.names.len(), 0.0);
        for (i, e) in self.encodings.iter().enumerate() {
            let value = match *values.get(e.column_at)? {
                ColumnValue::Absent => return None,
                ColumnValue::Number(x) => FeatureValue::Number(x),
                ColumnValue::Category(label) => FeatureValue::Category(e.categories.get(label)),
                ColumnValue::Time(ms) => FeatureValue::Time(ms),
            };
            self.place(i, value, out);
        }
        Some(())
    }

    /// Encodes one record into `out` (cleared first). `get` looks a column up; `None` or a
    /// missing value (empty cell, JSON null) is a missing feature.
    pub fn encode<'a>(
        &self,
        get: impl Fn(&str) -> Option<Field<'a>>,
        out: &mut Vec<f64>,
    ) -> Result<(), RecordError> {
        self.encode_columns(|at| get(&self.columns[at]), out)
    }

    /// [`FeatureEncoder::encode`] for a record whose fields are found by their column's
    /// position in [`FeatureEncoder::columns`] rather than by name, as decoders hold them.
    pub fn encode_columns<'a>(
        &self,
        get: impl Fn(usize) -> Option<Field<'a>>,
        out: &mut Vec<f64>,
    ) -> Result<(), RecordError> {
        out.clear();
        out.resize(self.names.len(), 0.0);
        // Several time features usually read one timestamp column: parse it once.
        let mut parsed: Option<(usize, i64)> = None;
        for (i, e) in self.encodings.iter().enumerate() {
            let field = match get(e.column_at) {
                Some(f) if !f.is_missing() => f,
                _ if self.missing_as_nan => {
                    if matches!(e.kind, FeatureKind::Numeric | FeatureKind::Bool) {
                        out[e.offset] = f64::NAN;
                    }
                    continue;
                }
                _ => return Err(missing_feature(&e.column)),
            };
            let value = match e.kind {
                FeatureKind::Numeric => FeatureValue::Number(field.number(&e.column)?),
                FeatureKind::Bool => {
                    FeatureValue::Number(f64::from(u8::from(field.boolean(&e.column)?)))
                }
                FeatureKind::OneHot => {
                    FeatureValue::Category(e.categories.get(field.category(&e.column)?.as_ref()))
                }
                FeatureKind::HourOfDay | FeatureKind::DayOfWeek | FeatureKind::Month => {
                    FeatureValue::Time(match parsed {
                        Some((column_at, ms)) if column_at == e.column_at => ms,
                        _ => {
                            let ms = field.timestamp_ms(&e.column)?;
                            parsed = Some((e.column_at, ms));
                            ms
                        }
                    })
                }
            };
            self.place(i, value, out);
        }
        Ok(())
    }

    /// The number of features (spec entries), which [`FeatureEncoder::place`] numbers from 0.
    pub fn features(&self) -> usize {
        self.encodings.len()
    }

    /// Writes feature `feature`'s inputs for `value` into `out`, a full input vector whose
    /// slots for this feature are zero. This is the one place a value becomes inputs: records
    /// go through it via [`FeatureEncoder::encode`], and training's column store directly.
    #[inline]
    pub fn place(&self, feature: usize, value: FeatureValue, out: &mut [f64]) {
        let e = &self.encodings[feature];
        match value {
            FeatureValue::Number(x) => out[e.offset] = x,
            // A category never seen in training sets no input: the model scores it as the
            // baseline, as scikit-learn's handle_unknown="ignore" does.
            FeatureValue::Category(None) => {}
            FeatureValue::Category(Some(i)) => out[e.offset + i] = 1.0,
            FeatureValue::Time(ms) => {
                // Only the part this feature reads: the month needs the calendar, the
                // others do not.
                let slot = match e.kind {
                    FeatureKind::HourOfDay => utc_hour(ms),
                    FeatureKind::DayOfWeek => utc_weekday(ms),
                    _ => utc_parts(ms).month0,
                };
                out[e.offset + slot as usize] = 1.0;
            }
        }
    }

    /// The inputs of each indicator feature (one-hot and time features), of which a record
    /// sets at most one. Where a store's rows each set exactly one, the group adds up to the
    /// intercept: training uses this to find the rank deficiency without a decomposition.
    pub fn indicator_groups(&self) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        for (i, e) in self.encodings.iter().enumerate() {
            if !matches!(e.kind, FeatureKind::Numeric | FeatureKind::Bool) {
                let end = self
                    .encodings
                    .get(i + 1)
                    .map_or(self.names.len(), |next| next.offset);
                out.push(e.offset..end);
            }
        }
        out
    }
}

/// A feature's value once read from its field, before it becomes model inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureValue {
    /// A numeric value, or a bool as 1 or 0.
    Number(f64),
    /// A one-hot category's position in the resolved list; `None` for one never seen.
    Category(Option<usize>),
    /// A timestamp in epoch milliseconds, already range-checked.
    Time(i64),
}

/// How the features that read one column take its value. A column read by features of one
/// kind can be read straight into that form ([`ColumnValue`]) as a record is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRead {
    /// Numeric features: a number.
    Number,
    /// Bool features: a bool, as 1 or 0.
    Bool,
    /// One-hot features: a category label.
    Category,
    /// Time features (hour of day, day of week, month): a timestamp.
    Time,
    /// Features of more than one of these kinds.
    Mixed,
}

impl ColumnRead {
    fn of(kind: FeatureKind) -> Self {
        match kind {
            FeatureKind::Numeric => ColumnRead::Number,
            FeatureKind::Bool => ColumnRead::Bool,
            FeatureKind::OneHot => ColumnRead::Category,
            FeatureKind::HourOfDay | FeatureKind::DayOfWeek | FeatureKind::Month => {
                ColumnRead::Time
            }
        }
    }
}

/// A column's value, read as its features take it ([`ColumnRead`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ColumnValue<'a> {
    /// Not read (yet).
    #[default]
    Absent,
    /// A number within the bound of [`crate::field::MAX_MAGNITUDE`], or a bool as 1 or 0.
    Number(f64),
    /// A category label.
    Category(&'a str),
    /// A timestamp in epoch milliseconds, already range-checked.
    Time(i64),
}

/// The error for a feature whose value is absent.
pub fn missing_feature(column: &str) -> RecordError {
    RecordError::new(
        RecordErrorKind::MissingFeature,
        format!("feature {column:?} is missing"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn spec() -> Vec<FeatureSpec> {
        vec![
            FeatureSpec {
                column: "price".into(),
                kind: FeatureKind::Numeric,
                categories: None,
            },
            FeatureSpec {
                column: "promo".into(),
                kind: FeatureKind::Bool,
                categories: None,
            },
            FeatureSpec {
                column: "region".into(),
                kind: FeatureKind::OneHot,
                categories: Some(vec!["north".into(), "south".into()]),
            },
            FeatureSpec {
                column: "ts".into(),
                kind: FeatureKind::HourOfDay,
                categories: None,
            },
            FeatureSpec {
                column: "ts".into(),
                kind: FeatureKind::DayOfWeek,
                categories: None,
            },
            FeatureSpec {
                column: "ts".into(),
                kind: FeatureKind::Month,
                categories: None,
            },
        ]
    }

    #[test]
    fn csv_rows_and_json_events_encode_to_the_same_inputs() {
        let enc = FeatureEncoder::new(&spec()).unwrap();
        assert_eq!(enc.width(), 1 + 1 + 2 + 24 + 7 + 12);
        let csv: HashMap<&str, &str> = [
            ("price", "9.5"),
            ("promo", "1"),
            ("region", "south"),
            ("ts", "2024-03-05T12:30:00Z"),
        ]
        .into();
        let mut a = Vec::new();
        enc.encode(|c| csv.get(c).map(|s| Field::Text(s)), &mut a)
            .unwrap();
        let ev =
            json!({"price": 9.5, "promo": true, "region": "south", "ts": 1_709_641_800_000i64});
        let mut b = Vec::new();
        enc.encode(|c| ev.get(c).map(Field::Json), &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..4], &[9.5, 1.0, 0.0, 1.0]);
        assert_eq!(a[4 + 12], 1.0, "hour 12");
        assert_eq!(a[4 + 24 + 1], 1.0, "Tuesday");
        assert_eq!(a[4 + 24 + 7 + 2], 1.0, "March");
        assert_eq!(a.iter().sum::<f64>(), 9.5 + 1.0 + 1.0 + 3.0);
        assert_eq!(enc.names()[2], "region=north");
        assert_eq!(enc.names()[4 + 17], "ts.hour_of_day=17");
    }

    #[test]
    fn unseen_categories_set_no_input_and_missing_features_are_errors() {
        let enc = FeatureEncoder::new(&spec()).unwrap();
        let ev = json!({"price": 1, "promo": 0, "region": "east", "ts": "2024-01-01T00:00:00Z"});
        let mut out = Vec::new();
        enc.encode(|c| ev.get(c).map(Field::Json), &mut out)
            .unwrap();
        assert_eq!(&out[2..4], &[0.0, 0.0]);
        let ev = json!({"price": 1, "promo": null, "region": "east", "ts": 0});
        let err = enc
            .encode(|c| ev.get(c).map(Field::Json), &mut out)
            .unwrap_err();
        assert_eq!(err.kind, RecordErrorKind::MissingFeature);
        assert!(err.message.contains("promo"));
    }

    #[test]
    fn an_encoder_for_trees_encodes_missing_values_as_nan() {
        let enc = FeatureEncoder::new(&spec()).unwrap().missing_as_nan();
        let ev = json!({"price": null, "region": "north"});
        let mut out = Vec::new();
        enc.encode(|c| ev.get(c).map(Field::Json), &mut out)
            .unwrap();
        assert!(
            out[0].is_nan() && out[1].is_nan(),
            "price null, promo absent"
        );
        assert_eq!(&out[2..4], &[1.0, 0.0]);
        assert!(
            out[4..].iter().all(|&x| x == 0.0),
            "no timestamp: no slot set"
        );
        let ev = json!({"price": "x", "promo": 1, "region": "north", "ts": 0});
        let err = enc
            .encode(|c| ev.get(c).map(Field::Json), &mut out)
            .unwrap_err();
        assert_eq!(
            err.kind,
            RecordErrorKind::WrongType,
            "bad values are still bad"
        );
    }
}
