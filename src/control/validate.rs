//! Everything an assembled bundle from the control topic must pass before it may score: the
//! Avro schema, the spec and the models, the spec against the input and output formats, and a
//! trial scoring.
//!
//! Earlier steps own the rest: [`super::admission`] checks the manifest's claims and its
//! signature (over the digest it claims) before any chunk is touched, and
//! [`super::assembly`] checks that the chunks are complete and hash to that digest.

use serde_json::{Map, Value};

use super::assembly::Assembled;
use super::message::Manifest;
use super::rejection::{Reason, Rejection};
use crate::codec::json::decode_json;
use crate::codec::FormatCheck;
use crate::model::bundle::Bundle;
use crate::spec::FeatureKind;

/// Decodes and checks an assembled bundle file.
pub fn validate(
    file: &Assembled,
    manifest: &Manifest,
    formats: &FormatCheck,
) -> Result<Bundle, Rejection> {
    let bundle = Bundle::from_avro(&file.bytes)?;
    if bundle.version != manifest.version || bundle.base_version != manifest.base_version {
        return Err(Rejection::new(
            Reason::Spec,
            format!(
                "the manifest announces version {} (base {:?}), the bundle holds {} (base {:?})",
                manifest.version, manifest.base_version, bundle.version, bundle.base_version
            ),
        ));
    }
    if let Some(why) = formats.check(&bundle.spec) {
        return Err(Rejection::new(Reason::Format, why));
    }
    trial(&bundle)?;
    Ok(bundle)
}

/// Scores a synthetic event, built from the bundle's own spec, through the serving decoder
/// with every model the bundle holds: all must give a finite prediction.
pub fn trial(bundle: &Bundle) -> Result<(), Rejection> {
    let spec = &bundle.spec;
    let mut event = Map::new();
    let id = bundle
        .partitions
        .first()
        .map(|m| m.partition.clone())
        .unwrap_or_else(|| "trial".into());
    event.insert(spec.partition_column.clone(), Value::String(id.to_string()));
    for f in &spec.features {
        let value = match f.kind {
            FeatureKind::Numeric => Value::from(1.0),
            FeatureKind::Bool => Value::Bool(true),
            FeatureKind::OneHot => Value::String(
                f.categories
                    .as_ref()
                    .and_then(|c| c.first())
                    .cloned()
                    .unwrap_or_default(),
            ),
            FeatureKind::HourOfDay | FeatureKind::DayOfWeek | FeatureKind::Month => {
                Value::String("2026-01-05T12:00:00Z".into())
            }
        };
        event.insert(f.column.clone(), value);
    }
    let bytes = serde_json::to_vec(&Value::Object(event))
        .map_err(|e| Rejection::new(Reason::TrialScoring, e.to_string()))?;
    let decoded = decode_json(&bytes, &spec.partition_column, bundle.encoder())
        .map_err(|e| Rejection::new(Reason::TrialScoring, format!("the trial event: {e}")))?;
    for m in bundle.models() {
        let p = m.model.predict(&decoded.inputs);
        if !p.is_finite() {
            return Err(Rejection::new(
                Reason::TrialScoring,
                format!(
                    "partition {:?} predicts {p} for the trial event",
                    m.partition
                ),
            ));
        }
    }
    Ok(())
}
