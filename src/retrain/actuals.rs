//! The actuals of the stores being refitted, read from the actuals topic.
//!
//! An actual is a history-shaped JSON record: the spec's partition column, its feature
//! columns and its target column (other fields are ignored), keyed by store id; its time is
//! the Kafka record timestamp. It is encoded by the one [`FeatureEncoder`], built from the
//! spec's features plus one numeric feature for the target, so the inputs are exactly those
//! serving and training make; the last input is then taken off as the target.
//!
//! The topic is read once per run, from the earliest offset at or after the smallest time any
//! store needs (`offsets_for_times`) to the end it had when the run started. Records of other
//! stores are passed over by their key without being decoded.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};
use tokio_util::sync::CancellationToken;

use super::topic::{self, TopicConsumer};
use crate::codec::json::decode_json;
use crate::error::{BundleError, Error, RecordError, RecordErrorKind, Result};
use crate::features::FeatureEncoder;
use crate::spec::{FeatureKind, FeatureSpec, TrainSpec};

/// A store whose actuals are wanted, and from when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The store id.
    pub partition: String,
    /// Actuals with a timestamp before this (epoch ms) are not read.
    pub since_ms: i64,
}

/// One usable actual.
#[derive(Debug, Clone, PartialEq)]
pub struct Actual {
    /// The Kafka record timestamp, epoch ms.
    pub ts_ms: i64,
    /// Where it was read, to order actuals of the same millisecond.
    pub offset: (i32, i64),
    /// The model inputs.
    pub inputs: Vec<f64>,
    /// The target.
    pub target: f64,
}

/// What was read for one store.
#[derive(Debug, Default)]
pub struct StoreActuals {
    /// The newest `recent` usable actuals, oldest first.
    pub actuals: Vec<Actual>,
    /// Records of the store in its time range that could not be used.
    pub unusable: u64,
    /// What was wrong with the first of them, and where it was.
    pub first_error: Option<String>,
}

/// Turns an actual's JSON into inputs and target, through the serving decoder.
#[derive(Debug, Clone)]
pub struct ActualsDecoder {
    partition_column: String,
    target: String,
    /// The spec's features, then the target as a numeric feature.
    encoder: FeatureEncoder,
}

impl ActualsDecoder {
    /// A decoder for actuals of `spec` (a bundle's spec: categories resolved).
    pub fn new(spec: &TrainSpec) -> std::result::Result<Self, BundleError> {
        let mut features = spec.features.clone();
        features.push(FeatureSpec {
            column: spec.target.clone(),
            kind: FeatureKind::Numeric,
            categories: None,
        });
        let encoder = FeatureEncoder::new(&features).map_err(BundleError::Spec)?;
        Ok(ActualsDecoder {
            partition_column: spec.partition_column.clone(),
            target: spec.target.clone(),
            encoder,
        })
    }

    /// The store id, the model inputs and the target of one actual.
    pub fn decode(
        &self,
        bytes: &[u8],
    ) -> std::result::Result<(String, Vec<f64>, f64), RecordError> {
        let mut event = decode_json(bytes, &self.partition_column, &self.encoder).map_err(|e| {
            match e.kind {
                RecordErrorKind::MissingFeature if e.message.contains(&self.target) => {
                    RecordError::new(
                        e.kind,
                        format!("the target {:?} is missing: not an actual", self.target),
                    )
                }
                _ => e,
            }
        })?;
        let target = event.inputs.pop().unwrap_or(f64::NAN);
        Ok((event.partition.to_string(), event.inputs, target))
    }
}

/// Reads the actuals of `wanted` from `topic`: the newest `recent` per store at or after its
/// `since_ms`.
pub fn read(
    consumer: &TopicConsumer,
    topic: &str,
    wanted: &[Wanted],
    decoder: &ActualsDecoder,
    recent: usize,
    patience: Duration,
    cancel: &CancellationToken,
) -> Result<HashMap<String, StoreActuals>> {
    let since: HashMap<&str, i64> = wanted
        .iter()
        .map(|w| (w.partition.as_str(), w.since_ms))
        .collect();
    let mut out: HashMap<String, StoreActuals> = wanted
        .iter()
        .map(|w| (w.partition.clone(), StoreActuals::default()))
        .collect();
    let Some(earliest) = wanted.iter().map(|w| w.since_ms).min() else {
        return Ok(out);
    };
    let stretches = topic::stretches(consumer, topic, Some(earliest))?;
    let mut records = 0u64;
    let finished = topic::read(consumer, topic, &stretches, patience, cancel, |m| {
        records += 1;
        take(m, &since, decoder, recent, &mut out);
    })?;
    if !finished {
        return Err(Error::Usage(format!("stopped while reading {topic}")));
    }
    for store in out.values_mut() {
        newest(&mut store.actuals, recent);
    }
    tracing::info!(
        topic,
        stores = wanted.len(),
        since_ms = earliest,
        records,
        usable = out.values().map(|s| s.actuals.len()).sum::<usize>(),
        "actuals read"
    );
    Ok(out)
}

/// Takes in one record of the actuals topic if it is an actual of a wanted store.
fn take(
    m: &BorrowedMessage<'_>,
    since: &HashMap<&str, i64>,
    decoder: &ActualsDecoder,
    recent: usize,
    out: &mut HashMap<String, StoreActuals>,
) {
    // By key first: the other stores' records are never decoded.
    let key = match m.key().map(std::str::from_utf8) {
        Some(Ok(k)) if !since.contains_key(k) => return,
        Some(Ok(k)) => Some(k),
        // Not a store id: only its partition column can say whose it is.
        Some(Err(_)) | None => None,
    };
    let ts = m.timestamp().to_millis().unwrap_or(-1);
    let at = || format!("{}/{}@{}", m.topic(), m.partition(), m.offset());
    let decoded = decoder.decode(m.payload().unwrap_or_default());
    let (partition, result) = match (key, decoded) {
        (Some(k), Ok((p, ..))) if p != k => (
            k.to_owned(),
            Err(format!("its key {k:?} is not its partition column {p:?}")),
        ),
        (_, Ok((p, inputs, target))) => (p, Ok((inputs, target))),
        (Some(k), Err(e)) => (k.to_owned(), Err(e.to_string())),
        (None, Err(_)) => return,
    };
    let Some(&since_ms) = since.get(partition.as_str()) else {
        return;
    };
    if ts >= 0 && ts < since_ms {
        return;
    }
    let Some(store) = out.get_mut(&partition) else {
        return;
    };
    let result = result.and_then(|r| match ts {
        -1 => Err("it has no timestamp".to_owned()),
        _ => Ok(r),
    });
    match result {
        Ok((inputs, target)) => {
            store.actuals.push(Actual {
                ts_ms: ts,
                offset: (m.partition(), m.offset()),
                inputs,
                target,
            });
            // Bounded: never more than twice `recent` held per store.
            if store.actuals.len() >= 2 * recent.max(1) {
                newest(&mut store.actuals, recent);
            }
        }
        Err(why) => {
            store.unusable += 1;
            if store.first_error.is_none() {
                store.first_error = Some(format!("{}: {why}", at()));
            }
            tracing::debug!(at = %at(), partition, error = %why, "actual not usable");
        }
    }
}

/// Keeps the newest `recent` actuals, oldest first.
fn newest(actuals: &mut Vec<Actual>, recent: usize) {
    actuals.sort_by_key(|a| (a.ts_ms, a.offset));
    if actuals.len() > recent {
        actuals.drain(..actuals.len() - recent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TrainSpec {
        TrainSpec::parse(
            "partition_column = \"store_id\"\ntarget = \"sales\"\n[[features]]\ncolumn = \"price\"\nkind = \"numeric\"\n[[features]]\ncolumn = \"weather\"\nkind = \"one_hot\"\ncategories = [\"sunny\", \"rainy\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn an_actual_is_encoded_as_serving_encodes_an_event_plus_its_target() {
        let d = ActualsDecoder::new(&spec()).unwrap();
        let (p, inputs, target) = d
            .decode(br#"{"store_id":"S1","price":2.5,"weather":"rainy","sales":12.5,"extra":1}"#)
            .unwrap();
        assert_eq!(p, "S1");
        assert_eq!(inputs, vec![2.5, 0.0, 1.0]);
        assert_eq!(target, 12.5);
        let no_target = d
            .decode(br#"{"store_id":"S1","price":2.5,"weather":"rainy"}"#)
            .unwrap_err();
        assert!(no_target.message.contains("not an actual"), "{no_target}");
        assert!(d.decode(b"{").is_err());
    }

    #[test]
    fn only_the_newest_are_kept_in_time_order() {
        let a = |ts: i64| Actual {
            ts_ms: ts,
            offset: (0, ts),
            inputs: vec![],
            target: 0.0,
        };
        let mut v = vec![a(5), a(1), a(4), a(2), a(3)];
        newest(&mut v, 3);
        assert_eq!(v.iter().map(|a| a.ts_ms).collect::<Vec<_>>(), vec![3, 4, 5]);
    }
}
