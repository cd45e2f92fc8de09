//! Input and output formats: bytes of a Kafka record (or a file) → [`Event`], and a scored
//! event → prediction bytes.
//!
//! A [`Decoder`] is built once from `[input]` and holds everything decoding needs ahead of
//! time: for Avro, one resolution [`avro::Plan`] per writer schema, cached by registry id or
//! fingerprint and built the first time that writer is seen, so no record ever pays for
//! schema resolution. What the decoded fields mean (the key, the features) is decided in one
//! place, [`crate::event::assemble`], for every format.
//!
//! A JSON event that is one flat object of plain values, each of the kind its features read
//! (nearly every one), is decoded straight into the model's inputs (`direct_json`); one
//! that is flat without escapes is otherwise scanned by hand ([`flat_json`]); any other goes
//! through `serde_json` ([`json`]), which names every fault. All three give the same event,
//! or the same error, for the same record.
//!
//! A [`PredictionEncoder`] is built once from `[output]`; predictions carry the same fields in
//! JSON and Avro (`schemas/prediction.avsc`).
//!
//! Registry policy: a schema id the registry answers 404 for is an `unknown_schema` dead
//! letter (asked again after a minute); a registry that cannot be reached, times out or
//! answers 5xx dead-letters nothing: its records wait and the id is asked again with a
//! growing pause (up to 5 s), so good records are never lost to a registry outage. Lookups
//! run beside the consumer loop ([`lookups`]), a few at a time, while it scores the records
//! of known writers; what the registry answered is kept in a bounded cache
//! ([`schema_cache`]), so a stream of distinct random ids costs neither memory nor a stall.

pub mod avro;
pub mod container;
mod direct_json;
pub mod flat_json;
pub mod framing;
pub mod json;
pub mod lookups;
pub mod parquet;
pub mod registry;
pub mod schema_cache;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{InputConfig, OutputConfig};
use crate::error::{Error, RecordError, RecordErrorKind};
use crate::event::Event;
use crate::features::FeatureEncoder;
use crate::scoring::ModelSource;
use crate::spec::{FeatureKind, TrainSpec};
use avro::{Plan, ReaderSchema, Reads};
use framing::{Framing, WriterRef};
use lookups::{Answer, Lookups};
use registry::Registry;
use schema_cache::{Cached, SchemaCache};

/// The event schema shipped with manymodel, the default reader schema.
pub const SALES_EVENT_AVSC: &str = include_str!("../schemas/sales_event.avsc");
/// The prediction schema shipped with manymodel, the default Avro output schema.
pub const PREDICTION_AVSC: &str = include_str!("../schemas/prediction.avsc");

/// A record format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per record.
    #[default]
    Json,
    /// One Avro datum per record, framed as `framing` says.
    Avro,
}

impl Format {
    /// The config and flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
        }
    }
}

/// Reads a schema file (or the shipped default) for messages naming `what`.
fn schema_text(path: Option<&Path>, default: &str) -> Result<String, Error> {
    match path {
        None => Ok(default.to_owned()),
        Some(p) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e)),
    }
}

/// Turns input records into events.
pub struct Decoder {
    avro: Option<AvroDecoder>,
}

struct AvroDecoder {
    framing: Framing,
    reader: ReaderSchema,
    /// The plan for datums written with the reader schema itself (raw framing).
    raw: Arc<Plan>,
    /// Writer schemas by single-object fingerprint: the reader's and `[input.schemas]`.
    by_fingerprint: HashMap<u64, Known>,
    /// Writer schemas by registry id from `[input.schemas]`: never evicted.
    by_id: HashMap<u32, Known>,
    /// What the registry answered, bounded.
    cache: SchemaCache,
    /// Registry lookups under way, when a registry is configured.
    lookups: Option<Lookups>,
}

/// What [`Decoder::decode`] made of a record.
pub enum Decoded {
    /// The event, or why the record is a dead letter.
    Done(Result<Event, RecordError>),
    /// Its writer schema id is being asked of the registry: decode it again once
    /// [`Decoder::resolved`] reports that id.
    Awaiting(u32),
}

/// What is known about one writer schema.
#[derive(Clone)]
pub enum Known {
    /// How to read its datums with the reader schema.
    Plan(Arc<Plan>),
    /// It cannot be resolved against the reader schema (or is not an Avro schema).
    Unusable(RecordError),
}

fn known(writer: &Schema, reader: &ReaderSchema, name: &str) -> Known {
    match Plan::new(writer, reader) {
        Ok(p) => Known::Plan(Arc::new(p)),
        Err(e) => Known::Unusable(RecordError::new(
            RecordErrorKind::IncompatibleSchema,
            format!("{name} cannot be read with the reader schema: {e}"),
        )),
    }
}

impl Decoder {
    /// The decoder `[input]` asks for; `stop` ends any wait for the schema registry.
    pub fn new(input: &InputConfig, stop: CancellationToken) -> Result<Self, Error> {
        if input.format == Format::Json {
            return Ok(Decoder { avro: None });
        }
        let text = schema_text(input.schema.as_deref(), SALES_EVENT_AVSC)?;
        let where_ = |p: Option<&Path>| {
            p.map(|p| p.display().to_string())
                .unwrap_or_else(|| "schemas/sales_event.avsc".into())
        };
        let reader = ReaderSchema::parse(&text)
            .map_err(|e| Error::Usage(format!("{}: {e}", where_(input.schema.as_deref()))))?;
        let raw = Plan::new(reader.schema(), &reader)
            .map_err(|e| Error::Usage(format!("{}: {e}", where_(input.schema.as_deref()))))?;
        let mut by_fingerprint = HashMap::new();
        by_fingerprint.insert(
            framing::fingerprint(reader.schema()),
            Known::Plan(Arc::new(
                Plan::new(reader.schema(), &reader).map_err(Error::Usage)?,
            )),
        );
        let mut by_id = HashMap::new();
        for (id, path) in &input.schemas {
            let id: u32 = id.parse().map_err(|_| {
                Error::Usage(format!(
                    "[input.schemas] key {id:?} is not a schema id (a 32-bit number)"
                ))
            })?;
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let writer = avro::parse_schema(&text).map_err(|e| {
                Error::Usage(format!("{}: not an Avro schema: {e}", path.display()))
            })?;
            let k = known(
                &writer,
                &reader,
                &format!("{} (schema id {id})", path.display()),
            );
            by_fingerprint.insert(framing::fingerprint(&writer), k.clone());
            by_id.insert(id, k);
        }
        let registry = input
            .registry_url
            .as_deref()
            .map(Registry::new)
            .transpose()
            .map_err(Error::Usage)?;
        Ok(Decoder {
            avro: Some(AvroDecoder {
                framing: input.framing,
                reader,
                raw: Arc::new(raw),
                by_fingerprint,
                by_id,
                cache: SchemaCache::default(),
                lookups: registry.map(|r| Lookups::new(r, stop)),
            }),
        })
    }

    /// The reader schema, for Avro input.
    pub fn reader_schema(&self) -> Option<&ReaderSchema> {
        self.avro.as_ref().map(|a| &a.reader)
    }

    /// Decodes one record, without waiting: a record whose writer schema id must be asked of
    /// the registry is [`Decoded::Awaiting`] that id, and the lookup is under way.
    pub fn decode(
        &mut self,
        bytes: &[u8],
        partition_column: &str,
        encoder: &FeatureEncoder,
    ) -> Decoded {
        self.decode_into(bytes, partition_column, encoder, Vec::new())
    }

    /// [`Decoder::decode`] writing the event's inputs into `inputs`, a recycled buffer
    /// ([`crate::spares`]).
    pub fn decode_into(
        &mut self,
        bytes: &[u8],
        partition_column: &str,
        encoder: &FeatureEncoder,
        inputs: Vec<f64>,
    ) -> Decoded {
        let Some(a) = &mut self.avro else {
            return Decoded::Done(json::decode_json_into(
                bytes,
                partition_column,
                encoder,
                inputs,
            ));
        };
        let (writer, datum) = match framing::split(a.framing, bytes) {
            Ok(split) => split,
            Err(e) => return Decoded::Done(Err(e)),
        };
        let plan = match writer {
            WriterRef::Reader => a.raw.clone(),
            WriterRef::Fingerprint(fp) => match a.by_fingerprint.get(&fp) {
                Some(Known::Plan(p)) => p.clone(),
                Some(Known::Unusable(e)) => return Decoded::Done(Err(e.clone())),
                None => {
                    return Decoded::Done(Err(RecordError::new(
                        RecordErrorKind::UnknownSchema,
                        format!("no known writer schema has fingerprint {fp:016x} (list it in [input.schemas])"),
                    )))
                }
            },
            WriterRef::Id(id) => match a.plan_for_id(id) {
                Some(Ok(p)) => p,
                Some(Err(e)) => return Decoded::Done(Err(e)),
                None => return Decoded::Awaiting(id),
            },
        };
        Decoded::Done(plan.decode_into(datum, partition_column, encoder, inputs))
    }

    /// True while a writer schema id is being asked of the registry.
    pub fn looking_up(&self) -> bool {
        self.avro
            .as_ref()
            .and_then(|a| a.lookups.as_ref())
            .is_some_and(Lookups::busy)
    }

    /// Waits for the registry's next answer, keeps it and returns its id: the records
    /// awaiting that id can be decoded now. Pending forever while nothing is asked.
    pub async fn resolved(&mut self) -> u32 {
        let Some(a) = self.avro.as_mut() else {
            return std::future::pending().await;
        };
        let Some(lookups) = a.lookups.as_mut() else {
            return std::future::pending().await;
        };
        let (id, answer) = lookups.next().await;
        let url = lookups.registry().url();
        match answer {
            Answer::Found(text) => {
                let k = match avro::parse_schema(&text) {
                    Ok(writer) => known(&writer, &a.reader, &format!("writer schema id {id}")),
                    Err(e) => Known::Unusable(RecordError::new(
                        RecordErrorKind::UnknownSchema,
                        format!("schema id {id} from {url} is not an Avro schema: {e}"),
                    )),
                };
                tracing::info!(
                    id,
                    registry = url,
                    usable = matches!(k, Known::Plan(_)),
                    "writer schema fetched from the registry"
                );
                a.cache.resolved(id, k);
            }
            Answer::NotFound(why) => a
                .cache
                .unknown(id, RecordError::new(RecordErrorKind::UnknownSchema, why)),
        }
        crate::metrics::schema_cache(
            a.cache.resolved_len(),
            a.cache.unknown_len(),
            a.lookups.as_ref().map_or(0, Lookups::pending),
        );
        id
    }

    /// Resolved and unknown ids held in the registry cache.
    pub fn cache_sizes(&self) -> (usize, usize) {
        self.avro
            .as_ref()
            .map_or((0, 0), |a| (a.cache.resolved_len(), a.cache.unknown_len()))
    }

    /// Why this bundle's spec cannot be fed by the input format, if it cannot: with Avro
    /// input every feature column and the partition column must be fields of the reader
    /// schema with a type the feature reads.
    pub fn cannot_feed(&self, spec: &TrainSpec) -> Option<String> {
        let reader = self.reader_schema()?;
        check_reader(reader, spec)
    }
}

/// What a bundle must fit to be served with the configured formats: the Avro reader schema
/// must have every column its spec reads, and the Avro prediction schema a field for its
/// partition column. Checked before a bundle from the control topic is swapped in.
#[derive(Debug, Clone, Default)]
pub struct FormatCheck {
    reader: Option<ReaderSchema>,
    output: Option<Schema>,
}

impl FormatCheck {
    /// The check for `[input]` and `[output]`.
    pub fn new(input: &InputConfig, output: &OutputConfig) -> Result<Self, Error> {
        let reader = match input.format {
            Format::Json => None,
            Format::Avro => {
                let text = schema_text(input.schema.as_deref(), SALES_EVENT_AVSC)?;
                Some(
                    ReaderSchema::parse(&text)
                        .map_err(|e| Error::Usage(format!("[input] schema: {e}")))?,
                )
            }
        };
        let output = match output.format {
            Format::Json => None,
            Format::Avro => {
                let text = schema_text(output.schema.as_deref(), PREDICTION_AVSC)?;
                Some(avro::parse_schema(&text).map_err(|e| {
                    Error::Usage(format!("[output] schema: not an Avro schema: {e}"))
                })?)
            }
        };
        Ok(FormatCheck { reader, output })
    }

    /// Why a bundle of `spec` cannot be served with these formats, if it cannot.
    pub fn check(&self, spec: &TrainSpec) -> Option<String> {
        if let Some(why) = self.reader.as_ref().and_then(|r| check_reader(r, spec)) {
            return Some(why);
        }
        let output = self.output.as_ref()?;
        OutPlan::new(output, &spec.partition_column).err().map(|e| {
            format!("the Avro prediction schema cannot hold this bundle's predictions: {e}")
        })
    }
}

/// Why `reader` cannot feed `spec`, if it cannot.
pub fn check_reader(reader: &ReaderSchema, spec: &TrainSpec) -> Option<String> {
    let mut wants = vec![(spec.partition_column.as_str(), Reads::Key)];
    for f in &spec.features {
        let reads = match f.kind {
            FeatureKind::Numeric => Reads::Number,
            FeatureKind::Bool => Reads::Bool,
            FeatureKind::OneHot => Reads::Category,
            FeatureKind::HourOfDay | FeatureKind::DayOfWeek | FeatureKind::Month => {
                Reads::Timestamp
            }
        };
        wants.push((f.column.as_str(), reads));
    }
    let problems: Vec<String> = wants
        .into_iter()
        .filter_map(|(c, r)| reader.unusable(c, r))
        .collect();
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "the Avro reader schema cannot feed this bundle: {}",
            problems.join("; ")
        ))
    }
}

impl AvroDecoder {
    /// The plan for a registry id, from `[input.schemas]` or the cache; `None` when the
    /// registry is being asked (the lookup is started here if it is not under way).
    fn plan_for_id(&mut self, id: u32) -> Option<Result<Arc<Plan>, RecordError>> {
        let cached = match self.by_id.get(&id) {
            Some(k) => Cached::Resolved(k.clone()),
            None => self.cache.get(id),
        };
        match cached {
            Cached::Resolved(Known::Plan(p)) => Some(Ok(p)),
            Cached::Resolved(Known::Unusable(e)) | Cached::Unknown(e) => Some(Err(e)),
            Cached::Miss => match &mut self.lookups {
                None => Some(Err(RecordError::new(
                    RecordErrorKind::UnknownSchema,
                    format!("schema id {id} is not in [input.schemas] and no registry_url is set"),
                ))),
                Some(lookups) => {
                    lookups.ask(id);
                    None
                }
            },
        }
    }
}

/// Writes prediction records.
#[derive(Clone)]
pub struct PredictionEncoder {
    avro: Option<Arc<AvroOutput>>,
}

struct AvroOutput {
    framing: Framing,
    id: u32,
    fingerprint: u64,
    schema: Schema,
    /// The plan for the partition column it was built for.
    plan: (String, Arc<OutPlan>),
}

impl PredictionEncoder {
    /// JSON predictions.
    pub fn json() -> Self {
        PredictionEncoder { avro: None }
    }

    /// The encoder `[output]` asks for, for bundles keyed by `partition_column`. With Confluent
    /// framing the schema id is `schema_id`, or the registry's id for the schema registered
    /// under `<output topic>-value`.
    pub async fn new(
        output: &OutputConfig,
        output_topic: &str,
        partition_column: &str,
    ) -> Result<Self, Error> {
        if output.format == Format::Json {
            return Ok(Self::json());
        }
        let text = schema_text(output.schema.as_deref(), PREDICTION_AVSC)?;
        let schema = avro::parse_schema(&text)
            .map_err(|e| Error::Usage(format!("[output] schema: not an Avro schema: {e}")))?;
        OutPlan::new(&schema, partition_column)
            .map_err(|e| Error::Usage(format!("[output] schema: {e}")))?;
        let id = match (output.framing, output.schema_id, &output.registry_url) {
            (Framing::Confluent, Some(id), _) => id,
            (Framing::Confluent, None, Some(url)) => {
                let registry = Registry::new(url).map_err(Error::Usage)?;
                let canonical = schema.canonical_form();
                registry
                    .register(&format!("{output_topic}-value"), &canonical)
                    .await
                    .map_err(Error::Usage)?
            }
            (Framing::Confluent, None, None) => {
                return Err(Error::Usage(
                    "[output] framing = \"confluent\" needs schema_id or registry_url".into(),
                ))
            }
            _ => 0,
        };
        Self::avro(schema, output.framing, id, partition_column)
            .map_err(|e| Error::Usage(format!("[output] schema: {e}")))
    }

    /// Avro predictions of `schema`, framed with `framing` (and schema `id` when Confluent).
    pub fn avro(
        schema: Schema,
        framing: Framing,
        id: u32,
        partition_column: &str,
    ) -> Result<Self, String> {
        let plan = OutPlan::new(&schema, partition_column)?;
        Ok(PredictionEncoder {
            avro: Some(Arc::new(AvroOutput {
                framing,
                id,
                fingerprint: framing::fingerprint(&schema),
                schema,
                plan: (partition_column.to_owned(), Arc::new(plan)),
            })),
        })
    }

    /// Why predictions of a bundle keyed by `partition_column` cannot be written, if they
    /// cannot (the Avro output schema lacks a field for it).
    pub fn cannot_write(&self, partition_column: &str) -> Option<String> {
        let a = self.avro.as_ref()?;
        OutPlan::new(&a.schema, partition_column).err()
    }

    /// Appends the prediction record for `event` to `buf`.
    pub fn write(
        &self,
        buf: &mut Vec<u8>,
        partition_column: &str,
        event: &Event,
        prediction: f64,
        version: &str,
        source: ModelSource,
    ) {
        let Some(a) = &self.avro else {
            crate::prediction::write_json(
                buf,
                partition_column,
                event,
                prediction,
                version,
                source,
            );
            return;
        };
        framing::write_header(buf, a.framing, a.id, a.fingerprint);
        let fresh;
        let plan = if a.plan.0 == partition_column {
            &a.plan.1
        } else {
            // A bundle with another partition column (checked before it was swapped in).
            match OutPlan::new(&a.schema, partition_column) {
                Ok(p) => {
                    fresh = Arc::new(p);
                    &fresh
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the Avro prediction; writing JSON");
                    buf.clear();
                    crate::prediction::write_json(
                        buf,
                        partition_column,
                        event,
                        prediction,
                        version,
                        source,
                    );
                    return;
                }
            }
        };
        plan.write(buf, event, prediction, version, source);
    }

    /// The Avro output schema, if predictions are Avro.
    pub fn avro_schema(&self) -> Option<&Schema> {
        self.avro.as_ref().map(|a| &a.schema)
    }
}

use crate::prediction::OutPlan;

/// The Avro datum of a JSON event under `schema` (a record of simple fields, nullable unions,
/// enums, arrays and timestamps): how the benchmark and the tests make the Avro twin of a
/// JSON event. RFC 3339 text written to a `long` becomes epoch milliseconds; absent fields
/// take `null`.
pub fn avro_twin(schema: &Schema, event: &serde_json::Value) -> Result<Vec<u8>, String> {
    use apache_avro::types::Value as A;
    use serde_json::Value as J;
    fn convert(s: &Schema, v: &J) -> Result<A, String> {
        Ok(match (s, v) {
            (Schema::Union(u), v) => {
                let null = u.variants().iter().position(|b| matches!(b, Schema::Null));
                match (v, null) {
                    (J::Null, Some(i)) => A::Union(i as u32, Box::new(A::Null)),
                    _ => {
                        let (i, b) = u
                            .variants()
                            .iter()
                            .enumerate()
                            .find(|(_, b)| !matches!(b, Schema::Null))
                            .ok_or("a union of null only")?;
                        A::Union(i as u32, Box::new(convert(b, v)?))
                    }
                }
            }
            (Schema::Null, _) => A::Null,
            (Schema::String, J::String(t)) => A::String(t.clone()),
            (Schema::Bytes, J::String(t)) => A::Bytes(t.clone().into_bytes()),
            (Schema::Enum(e), J::String(t)) => A::Enum(
                e.symbols
                    .iter()
                    .position(|x| x == t)
                    .ok_or("not a symbol")? as u32,
                t.clone(),
            ),
            (Schema::Array(a), J::Array(items)) => A::Array(
                items
                    .iter()
                    .map(|i| convert(&a.items, i))
                    .collect::<Result<_, _>>()?,
            ),
            (Schema::Long, J::String(t)) => A::Long(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| format!("{t:?}: {e}"))?
                    .timestamp_millis(),
            ),
            (Schema::String, v) => A::String(v.to_string()),
            (Schema::Boolean, J::Bool(b)) => A::Boolean(*b),
            (Schema::Double, J::Number(n)) => A::Double(n.as_f64().unwrap_or_default()),
            (Schema::Float, J::Number(n)) => A::Float(n.as_f64().unwrap_or_default() as f32),
            (Schema::Long, J::Number(n)) => A::Long(n.as_i64().ok_or("not an integer")?),
            (Schema::Int, J::Number(n)) => A::Int(
                n.as_i64()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or("not an int")?,
            ),
            (Schema::TimestampMillis, J::Number(n)) => {
                A::TimestampMillis(n.as_i64().ok_or("not an integer")?)
            }
            (Schema::TimestampMillis, J::String(t)) => A::TimestampMillis(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| format!("{t:?}: {e}"))?
                    .timestamp_millis(),
            ),
            (s, v) => return Err(format!("cannot write {v} as {s:?}")),
        })
    }
    let Schema::Record(r) = schema else {
        return Err("the schema is not a record".into());
    };
    let mut fields = Vec::with_capacity(r.fields.len());
    for f in &r.fields {
        let v = event.get(&f.name).unwrap_or(&J::Null);
        let value = convert(&f.schema, v).map_err(|e| format!("field {:?}: {e}", f.name))?;
        fields.push((f.name.clone(), value));
    }
    apache_avro::to_avro_datum(schema, A::Record(fields)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avro_input(schema: Option<&Path>) -> InputConfig {
        InputConfig {
            format: Format::Avro,
            schema: schema.map(Path::to_path_buf),
            ..InputConfig::default()
        }
    }

    #[test]
    fn the_shipped_schemas_fit_the_generated_spec_and_a_schema_without_a_feature_does_not() {
        let spec = TrainSpec::parse(crate::generate::TRAIN_TOML).unwrap();
        let output = OutputConfig {
            format: Format::Avro,
            ..OutputConfig::default()
        };
        let shipped = FormatCheck::new(&avro_input(None), &output).unwrap();
        assert_eq!(shipped.check(&spec), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("narrow.avsc");
        let narrow = SALES_EVENT_AVSC
            .replace(r#"{"name": "weather", "type": "string", "doc": "A category: sunny, cloudy or rainy."},"#, "")
            .replace(r#"{"name": "promo", "type": "boolean"},"#, r#"{"name": "promo", "type": "bytes"},"#);
        std::fs::write(&path, narrow).unwrap();
        let check = FormatCheck::new(&avro_input(Some(&path)), &OutputConfig::default()).unwrap();
        let why = check.check(&spec).unwrap();
        assert!(why.contains("\"weather\""), "{why}");
        assert!(why.contains("\"promo\"") && why.contains("bytes"), "{why}");

        let mut other = spec.clone();
        other.partition_column = "zone".into();
        let why = shipped.check(&other).unwrap();
        assert!(why.contains("zone"), "{why}");
    }
}
