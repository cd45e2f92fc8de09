//! The bundle: one versioned set of fitted models, and its file format.
//!
//! A bundle file is an Avro object container (schema `schemas/bundle.avsc`, embedded here so
//! the two cannot drift) holding one `Bundle` datum, so any Avro library can read or write it.
//! Loading validates everything serving relies on (the spec, coefficient counts, tree shapes,
//! finite numbers, unique partition ids) and builds the lookup index once; a [`Bundle`] that
//! exists is a bundle that can score.
//!
//! Format 2 lets each partition (and the fallback) hold a linear model or a tree ensemble, and
//! lets an imported bundle have no fallback; format-1 files (linear only) still load.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;

use apache_avro::{Reader, Schema, Writer};
use serde::{Deserialize, Serialize};

use crate::error::{BundleError, Error, Result};
use crate::features::FeatureEncoder;
use crate::model::index::PartitionIndex;
use crate::model::linear::LinearModel;
use crate::model::tree::{Objective, TreeArrays, TreeEnsemble};
use crate::model::Model;
use crate::spec::{FeatureKind, FeatureSpec, ModelKind, TrainSpec};

/// The Avro schema of a bundle, as shipped in `schemas/bundle.avsc`.
pub const BUNDLE_SCHEMA: &str = include_str!("../../schemas/bundle.avsc");

/// The layout revision this code writes.
pub const FORMAT: i32 = 2;

/// The oldest layout revision this code reads.
pub const OLDEST_FORMAT: i32 = 1;

/// The partition id recorded for the fallback model.
pub const FALLBACK_ID: &str = "*";

fn schema() -> Result<&'static Schema> {
    static SCHEMA: OnceLock<std::result::Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Schema::parse_str(BUNDLE_SCHEMA).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Internal(format!("schemas/bundle.avsc does not parse: {e}")))
}

/// One partition's model and how it was fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionModel {
    /// The partition id, or `*` for the fallback; up to 23 bytes it is kept inline, in the
    /// same cache line as the rest of the entry, so looking a store up reads no other memory.
    pub partition: smol_str::SmolStr,
    /// Training rows.
    pub rows: u64,
    /// In-sample root mean squared error.
    pub rmse: f64,
    /// The fitted or imported model.
    pub model: Model,
}

/// A loaded, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The version stamped on every prediction this bundle makes.
    pub version: String,
    /// For a delta bundle, the version it builds on.
    pub base_version: Option<String>,
    /// Creation time, epoch milliseconds UTC.
    pub created_at_ms: i64,
    /// The spec the models were trained with, one-hot categories resolved.
    pub spec: TrainSpec,
    /// History rows used and rejected by the training run.
    pub rows_used: u64,
    /// History rows rejected as bad.
    pub rows_rejected: u64,
    /// The model for partitions without one of their own. When the bundle has none
    /// ([`Bundle::has_fallback`] is false) this is a placeholder that must not score.
    pub fallback: PartitionModel,
    has_fallback: bool,
    /// Per-partition models, sorted by id.
    pub partitions: Vec<PartitionModel>,
    index: PartitionIndex,
    encoder: FeatureEncoder,
}

impl Bundle {
    /// Assembles and validates a bundle from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        version: String,
        base_version: Option<String>,
        created_at_ms: i64,
        spec: TrainSpec,
        rows_used: u64,
        rows_rejected: u64,
        fallback: PartitionModel,
        partitions: Vec<PartitionModel>,
    ) -> std::result::Result<Self, BundleError> {
        Self::assemble(
            version,
            base_version,
            created_at_ms,
            spec,
            (rows_used, rows_rejected),
            Some(fallback),
            partitions,
        )
    }

    /// Assembles and validates a bundle that may lack a fallback (an imported one): then
    /// partitions without a model of their own are dead-lettered whatever the policy.
    pub fn assemble(
        version: String,
        base_version: Option<String>,
        created_at_ms: i64,
        spec: TrainSpec,
        (rows_used, rows_rejected): (u64, u64),
        fallback: Option<PartitionModel>,
        mut partitions: Vec<PartitionModel>,
    ) -> std::result::Result<Self, BundleError> {
        if version.trim().is_empty() {
            return Err(BundleError::Spec("the version is empty".into()));
        }
        spec.validate().map_err(BundleError::Spec)?;
        let mut encoder = FeatureEncoder::new(&spec.features).map_err(BundleError::Spec)?;
        partitions.sort_by(|a, b| a.partition.cmp(&b.partition));
        let width = encoder.width();
        for m in fallback.iter().chain(&partitions) {
            m.model
                .check_width(width)
                .map_err(|e| BundleError::Spec(format!("partition {:?} {e}", m.partition)))?;
            if !m.model.is_bounded() {
                return Err(BundleError::NotFinite(format!(
                    "partition {:?} has a coefficient or intercept that is not finite or beyond ±1e150",
                    m.partition
                )));
            }
        }
        // Missing inputs become NaN only when every model that may score has a rule for them.
        if fallback
            .iter()
            .chain(&partitions)
            .all(|m| m.model.takes_missing())
        {
            encoder = encoder.missing_as_nan();
        }
        let has_fallback = fallback.is_some();
        let fallback = fallback.unwrap_or_else(|| PartitionModel {
            partition: FALLBACK_ID.into(),
            rows: 0,
            rmse: f64::NAN,
            model: Model::Linear(LinearModel {
                intercept: f64::NAN,
                coefficients: vec![0.0; width].into(),
            }),
        });
        if partitions.len() > u32::MAX as usize {
            return Err(BundleError::Spec(format!(
                "{} partitions: a bundle holds at most {}",
                partitions.len(),
                u32::MAX
            )));
        }
        let index = PartitionIndex::build(partitions.len(), |i| &partitions[i].partition)
            .map_err(|id| BundleError::Spec(format!("partition {id:?} appears twice")))?;
        Ok(Bundle {
            version,
            base_version,
            created_at_ms,
            spec,
            rows_used,
            rows_rejected,
            fallback,
            has_fallback,
            partitions,
            index,
            encoder,
        })
    }

    /// False for an imported bundle without a fallback model: partitions without a model of
    /// their own cannot be scored.
    pub fn has_fallback(&self) -> bool {
        self.has_fallback
    }

    /// The fallback model, if the bundle has one.
    pub fn fallback_model(&self) -> Option<&PartitionModel> {
        self.has_fallback.then_some(&self.fallback)
    }

    /// Every model that can score: the fallback (if any), then the partitions' own.
    pub fn models(&self) -> impl Iterator<Item = &PartitionModel> {
        self.fallback_model().into_iter().chain(&self.partitions)
    }

    /// The encoder for this bundle's features.
    pub fn encoder(&self) -> &FeatureEncoder {
        &self.encoder
    }

    /// Where the partition's own model sits in `partitions`, if it has one.
    pub fn partition_index(&self, id: &str) -> Option<usize> {
        self.partition_index_hashed(crate::model::index::id_hash(id), id)
    }

    /// Starts loading what looking up an id hashing to `hash` reads first.
    #[inline]
    pub fn prefetch_partition(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// [`Bundle::partition_index`] of an id whose [`crate::model::index::id_hash`] the caller
    /// has already computed.
    #[inline]
    pub fn partition_index_hashed(&self, hash: u64, id: &str) -> Option<usize> {
        self.index.find(hash, id, |i| &self.partitions[i].partition)
    }

    /// The partition's own model, if it has one.
    pub fn partition(&self, id: &str) -> Option<&PartitionModel> {
        self.partition_index(id).map(|i| &self.partitions[i])
    }

    /// Bytes the bundle's partitions hold, counted: each model's struct, id and weights, and
    /// the index. What the allocator adds on top is not counted.
    pub fn memory_bytes(&self) -> usize {
        let models: usize = self
            .partitions
            .iter()
            .map(|m| {
                // An id past 23 bytes sits in an `Arc<str>`: its bytes and two counts.
                let id = if m.partition.is_heap_allocated() {
                    m.partition.len() + 16
                } else {
                    0
                };
                id + m.model.heap_bytes()
            })
            .sum();
        self.partitions.capacity() * std::mem::size_of::<PartitionModel>()
            + models
            + self.index.memory_bytes()
    }

    /// Moves a large bundle's index, entries and weights into huge pages
    /// ([`crate::memory::into_huge_pages`]) and logs how that went; a bundle under
    /// [`Bundle::HUGE_PAGES_FROM`] bytes is left as it is (its pages' translations fit the
    /// processor's table anyway). Call it where the bundle is loaded, off the consumer loop.
    pub fn into_huge_pages(&self) {
        let bytes = self.memory_bytes();
        if bytes < Self::HUGE_PAGES_FROM {
            return;
        }
        let started = std::time::Instant::now();
        let (moved, kept) = crate::memory::into_huge_pages(self.memory_ranges());
        tracing::debug!(
            version = %self.version,
            mib = bytes >> 20,
            huge_pages = moved,
            small_pages_kept = kept,
            ms = started.elapsed().as_millis() as u64,
            "bundle moved into huge pages"
        );
    }

    /// Where what scoring reads lies in memory (address and length): the index, the entries
    /// and each linear store's weights.
    fn memory_ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let entries = (
            self.partitions.as_ptr() as usize,
            std::mem::size_of_val(&self.partitions[..]),
        );
        let weights = self.partitions.iter().filter_map(|m| match &m.model {
            crate::model::Model::Linear(l) => Some((
                l.coefficients.as_ptr() as usize,
                std::mem::size_of_val(&l.coefficients[..]),
            )),
            crate::model::Model::Trees(_) => None,
        });
        [entries, self.index.memory_range()]
            .into_iter()
            .chain(weights)
    }

    /// The size from which [`Bundle::into_huge_pages`] moves a bundle: about 80,000 linear
    /// stores of 37 inputs.
    pub const HUGE_PAGES_FROM: usize = 32 << 20;

    /// Writes the bundle as an Avro object container file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = self.write_avro(std::io::BufWriter::with_capacity(1 << 20, file))?;
        out.flush().map_err(|e| Error::io(path, e))
    }

    /// The bundle as Avro object container bytes.
    pub fn to_avro(&self) -> Result<Vec<u8>> {
        self.write_avro(Vec::new())
    }

    /// Encodes the bundle into `out`, and hands `out` back.
    fn write_avro<W: std::io::Write>(&self, out: W) -> Result<W> {
        let record = BundleRecord::from(self);
        let mut writer = Writer::with_codec(
            schema()?,
            out,
            // The fastest deflate level: a bundle of thousands of tree ensembles is hundreds of
            // megabytes of node arrays, and the default level spends minutes on them for a
            // few percent of size.
            apache_avro::Codec::Deflate(apache_avro::DeflateSettings::new(
                miniz_oxide::deflate::CompressionLevel::BestSpeed,
            )),
        );
        writer
            .append_ser(record)
            .map_err(|e| Error::Internal(format!("encoding bundle {}: {e}", self.version)))?;
        writer
            .into_inner()
            .map_err(|e| Error::Internal(format!("encoding bundle {}: {e}", self.version)))
    }

    /// Reads and validates a bundle file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_avro(&bytes).map_err(|e| Error::Bundle {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Decodes and validates bundle bytes; the error says what is wrong.
    pub fn from_avro(bytes: &[u8]) -> std::result::Result<Self, BundleError> {
        let reader_schema = schema().map_err(|e| BundleError::Schema(e.to_string()))?;
        // Decode with the file's own (writer) schema, then resolve to ours: older layouts
        // gain the new fields' defaults. (Handing our schema to the reader would let it parse
        // the writer schema with our definitions of the named types.)
        // apache-avro panics on some malformed header schemas; check the header first.
        let writer_schema = crate::codec::container::writer_schema(bytes)
            .map_err(|e| schema_error(NOT_AVRO, &e))?;
        if writer_schema != *reader_schema {
            return Self::from_avro_generic(bytes);
        }
        // Written with our own schema (every bundle this version writes): decoded directly.
        let limit = bytes
            .len()
            .saturating_mul(32)
            .clamp(MIN_DATUM_LIMIT, MAX_DATUM_LIMIT);
        let container = crate::codec::container::read_limited(bytes, limit)
            .map_err(|e| schema_error(NOT_AVRO, &e))?;
        match container.blocks.as_slice() {
            [(1, datum)] => decode::bundle_record(datum)
                .map_err(|e| schema_error("corrupt Avro data", &e))?
                .into_bundle(),
            _ => Err(BundleError::Schema(format!(
                "holds {} datums; a bundle file holds exactly one Bundle datum",
                container.blocks.iter().map(|(n, _)| n).sum::<u64>()
            ))),
        }
    }

    /// Decodes bundle bytes through apache-avro's `Value`s, resolving an older writer schema
    /// to ours.
    fn from_avro_generic(bytes: &[u8]) -> std::result::Result<Self, BundleError> {
        let reader_schema = schema().map_err(|e| BundleError::Schema(e.to_string()))?;
        let reader = Reader::new(bytes).map_err(|e| schema_error(NOT_AVRO, &e))?;
        // Files written by this version need no resolution (it copies the whole datum).
        let same_schema = reader.writer_schema() == reader_schema;
        let mut datum = None;
        for value in reader {
            let value = value.map_err(|e| schema_error("corrupt Avro data", &e))?;
            if datum.replace(value).is_some() {
                return Err(BundleError::Schema(
                    "holds more than one Bundle datum".into(),
                ));
            }
        }
        let mut value = datum.ok_or_else(|| BundleError::Schema("holds no Bundle datum".into()))?;
        const NOT_OURS: &str = "does not match schemas/bundle.avsc";
        if !same_schema {
            value = value
                .resolve(reader_schema)
                .map_err(|e| schema_error(NOT_OURS, &e))?;
        }
        let record: BundleRecord =
            apache_avro::from_value(&value).map_err(|e| schema_error(NOT_OURS, &e))?;
        record.into_bundle()
    }
}

mod decode;

/// What a file that is no bundle container is told.
const NOT_AVRO: &str = "not an Avro object container with a bundle schema";

/// A schema-level error: what went wrong, and the detail.
fn schema_error(what: &str, e: &dyn std::fmt::Display) -> BundleError {
    BundleError::Schema(format!("{what}: {e}"))
}

/// The least a bundle's datum may decompress to before it is refused, bytes.
const MIN_DATUM_LIMIT: usize = 256 << 20;
/// The most a bundle's datum may decompress to (a million 37-input stores take about 340 MB).
const MAX_DATUM_LIMIT: usize = 4 << 30;

/// The Avro datum, field for field as in `schemas/bundle.avsc`. Read with the partitions in a
/// `Vec`; written with [`PartitionRecords`], which turns each model into its record only as
/// it is encoded, so writing a bundle never holds a second copy of its models.
#[derive(Debug, Serialize, Deserialize)]
struct BundleRecord<P = Vec<ModelRecord>> {
    format: i32,
    version: String,
    base_version: Option<String>,
    created_at: i64,
    spec: SpecRecord,
    feature_names: Vec<String>,
    rows_used: i64,
    rows_rejected: i64,
    fallback: Option<ModelRecord>,
    partitions: P,
}

/// A bundle's partitions, encoded one record at a time.
struct PartitionRecords<'a>(&'a [PartitionModel]);

impl Serialize for PartitionRecords<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ModelRecord::from))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SpecRecord {
    partition_column: String,
    target: String,
    model: String,
    alpha: Option<f64>,
    min_rows: i64,
    features: Vec<FeatureRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FeatureRecord {
    column: String,
    kind: String,
    categories: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ModelRecord {
    partition: String,
    rows: i64,
    rmse: f64,
    intercept: f64,
    coefficients: Vec<f64>,
    #[serde(default)]
    trees: Option<TreesRecord>,
}

/// A tree ensemble's node arrays, packed little-endian into Avro `bytes` (see the schema).
#[derive(Debug, Serialize, Deserialize)]
struct TreesRecord {
    objective: String,
    base_score: f64,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    roots: Vec<u8>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    split_feature: Vec<u8>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    threshold: Vec<u8>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    left_child: Vec<u8>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    right_child: Vec<u8>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    default_left: Vec<u8>,
    #[serde(with = "apache_avro::serde_avro_bytes")]
    leaf_value: Vec<u8>,
}

fn pack<T: Copy, const N: usize>(values: &[T], to_le: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to_le(v)).collect()
}

fn unpack<T, const N: usize>(
    bytes: &[u8],
    field: &str,
    from_le: impl Fn([u8; N]) -> T,
) -> std::result::Result<Vec<T>, String> {
    if bytes.len() % N != 0 {
        return Err(format!(
            "trees.{field} holds {} bytes, not a whole number of {N}-byte values",
            bytes.len()
        ));
    }
    Ok(bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from_le(a)
        })
        .collect())
}

impl From<&PartitionModel> for ModelRecord {
    fn from(m: &PartitionModel) -> Self {
        let (intercept, coefficients, trees) = match &m.model {
            Model::Linear(l) => (l.intercept, l.coefficients.to_vec(), None),
            Model::Trees(t) => {
                let a = t.to_arrays();
                let trees = TreesRecord {
                    objective: a.objective.as_str().to_owned(),
                    base_score: a.base_score,
                    roots: pack(&a.roots, i32::to_le_bytes),
                    split_feature: pack(&a.split_feature, i32::to_le_bytes),
                    threshold: pack(&a.threshold, f32::to_le_bytes),
                    left_child: pack(&a.left_child, i32::to_le_bytes),
                    right_child: pack(&a.right_child, i32::to_le_bytes),
                    default_left: a.default_left.iter().map(|&b| u8::from(b)).collect(),
                    leaf_value: pack(&a.leaf_value, f64::to_le_bytes),
                };
                (0.0, Vec::new(), Some(trees))
            }
        };
        ModelRecord {
            partition: m.partition.to_string(),
            rows: m.rows as i64,
            rmse: m.rmse,
            intercept,
            coefficients,
            trees,
        }
    }
}

impl TryFrom<ModelRecord> for PartitionModel {
    type Error = BundleError;

    fn try_from(r: ModelRecord) -> std::result::Result<Self, BundleError> {
        let model = match r.trees {
            None => Model::Linear(LinearModel {
                intercept: r.intercept,
                coefficients: r.coefficients.into(),
            }),
            Some(t) => {
                let objective = Objective::parse(&t.objective).ok_or_else(|| {
                    BundleError::Spec(format!(
                        "partition {:?} has the unknown objective {:?}",
                        r.partition, t.objective
                    ))
                })?;
                let context = format!("partition {:?}: ", r.partition);
                let within = |e: String| BundleError::Spec(format!("{context}{e}"));
                let arrays = TreeArrays {
                    objective,
                    base_score: t.base_score,
                    roots: unpack(&t.roots, "roots", i32::from_le_bytes).map_err(within)?,
                    split_feature: unpack(&t.split_feature, "split_feature", i32::from_le_bytes)
                        .map_err(within)?,
                    threshold: unpack(&t.threshold, "threshold", f32::from_le_bytes)
                        .map_err(within)?,
                    left_child: unpack(&t.left_child, "left_child", i32::from_le_bytes)
                        .map_err(within)?,
                    right_child: unpack(&t.right_child, "right_child", i32::from_le_bytes)
                        .map_err(within)?,
                    default_left: t.default_left.iter().map(|&b| b != 0).collect(),
                    leaf_value: unpack(&t.leaf_value, "leaf_value", f64::from_le_bytes)
                        .map_err(within)?,
                };
                Model::Trees(Box::new(
                    TreeEnsemble::new(&arrays).map_err(|e| e.within(&context))?,
                ))
            }
        };
        Ok(PartitionModel {
            partition: r.partition.into(),
            rows: r.rows.max(0) as u64,
            rmse: r.rmse,
            model,
        })
    }
}

impl<'a> From<&'a Bundle> for BundleRecord<PartitionRecords<'a>> {
    fn from(b: &'a Bundle) -> Self {
        BundleRecord {
            format: FORMAT,
            version: b.version.clone(),
            base_version: b.base_version.clone(),
            created_at: b.created_at_ms,
            spec: SpecRecord {
                partition_column: b.spec.partition_column.clone(),
                target: b.spec.target.clone(),
                model: b.spec.model.as_str().to_owned(),
                alpha: b.spec.alpha,
                min_rows: b.spec.min_rows as i64,
                features: b
                    .spec
                    .features
                    .iter()
                    .map(|f| FeatureRecord {
                        column: f.column.clone(),
                        kind: f.kind.as_str().to_owned(),
                        categories: f.categories.clone().unwrap_or_default(),
                    })
                    .collect(),
            },
            feature_names: b.encoder.names().to_vec(),
            rows_used: b.rows_used as i64,
            rows_rejected: b.rows_rejected as i64,
            fallback: b.has_fallback.then(|| ModelRecord::from(&b.fallback)),
            partitions: PartitionRecords(&b.partitions),
        }
    }
}

impl BundleRecord {
    fn into_bundle(self) -> std::result::Result<Bundle, BundleError> {
        if !(OLDEST_FORMAT..=FORMAT).contains(&self.format) {
            return Err(BundleError::Spec(format!(
                "bundle format {} is not supported by this manymodel (it reads formats {OLDEST_FORMAT} to {FORMAT})",
                self.format
            )));
        }
        let model = ModelKind::parse(&self.spec.model).ok_or_else(|| {
            BundleError::Spec(format!("unknown model kind {:?}", self.spec.model))
        })?;
        let mut features = Vec::with_capacity(self.spec.features.len());
        for f in self.spec.features {
            let kind = FeatureKind::parse(&f.kind).ok_or_else(|| {
                BundleError::Spec(format!(
                    "feature {:?} has unknown kind {:?}",
                    f.column, f.kind
                ))
            })?;
            let categories = (kind == FeatureKind::OneHot).then_some(f.categories);
            features.push(FeatureSpec {
                column: f.column,
                kind,
                categories,
            });
        }
        let spec = TrainSpec {
            partition_column: self.spec.partition_column,
            target: self.spec.target,
            model,
            alpha: self.spec.alpha,
            min_rows: self.spec.min_rows.max(0) as u64,
            features,
        };
        let fallback = self.fallback.map(PartitionModel::try_from).transpose()?;
        let partitions = self
            .partitions
            .into_iter()
            .map(PartitionModel::try_from)
            .collect::<std::result::Result<Vec<_>, BundleError>>()?;
        let bundle = Bundle::assemble(
            self.version,
            self.base_version,
            self.created_at,
            spec,
            (
                self.rows_used.max(0) as u64,
                self.rows_rejected.max(0) as u64,
            ),
            fallback,
            partitions,
        )?;
        if bundle.encoder.names() != self.feature_names.as_slice() {
            return Err(BundleError::Spec(
                "feature_names do not match what the spec's features encode to".into(),
            ));
        }
        Ok(bundle)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What scoring reads of a bundle, moved into huge pages (whether or not the kernel
    /// does it), scores as before: the ranges name the entries, the index and every store's
    /// weights.
    #[test]
    fn a_bundle_moved_into_huge_pages_scores_as_before() {
        let bundle = crate::local::widen(&sample("v1"), 20_000).expect("widened");
        let inputs = [2.5, 1.0, 0.0];
        let score = |b: &Bundle| -> Vec<u64> {
            ["S00001", "S10000", "S20000", "nobody"]
                .iter()
                .map(|id| {
                    let m = b.partition(id).unwrap_or(&b.fallback);
                    m.model.predict(&inputs).to_bits()
                })
                .collect()
        };
        let before = score(&bundle);
        assert_eq!(bundle.memory_ranges().count(), 20_000 + 2);
        let (moved, kept) = crate::memory::into_huge_pages(bundle.memory_ranges());
        assert!(moved + kept >= 1);
        assert_eq!(score(&bundle), before);
        // Under the size that pays, it is left alone.
        assert!(bundle.memory_bytes() < Bundle::HUGE_PAGES_FROM);
        bundle.into_huge_pages();
        assert_eq!(score(&bundle), before);
    }

    /// A small valid bundle: numeric price, one-hot region; stores A and B.
    pub(crate) fn sample(version: &str) -> Bundle {
        let spec = TrainSpec::parse(
            r#"
            partition_column = "store_id"
            target = "sales"
            [[features]]
            column = "price"
            kind = "numeric"
            [[features]]
            column = "region"
            kind = "one_hot"
            categories = ["north", "south"]
            "#,
        )
        .unwrap();
        let model = |id: &str, b: f64| PartitionModel {
            partition: id.into(),
            rows: 40,
            rmse: 1.5,
            model: Model::Linear(LinearModel {
                intercept: b,
                coefficients: vec![-2.0, 1.0, 3.0].into(),
            }),
        };
        Bundle::new(
            version.into(),
            None,
            1_700_000_000_000,
            spec,
            80,
            2,
            model(FALLBACK_ID, 50.0),
            vec![model("B", 70.0), model("A", 60.0)],
        )
        .unwrap()
    }

    #[test]
    fn a_bundle_survives_the_avro_round_trip() {
        let b = sample("v1");
        let bytes = b.to_avro().unwrap();
        let back = Bundle::from_avro(&bytes).unwrap();
        assert_eq!(back.version, "v1");
        assert_eq!(back.spec, b.spec);
        assert_eq!(back.partitions, b.partitions);
        assert_eq!(back.fallback, b.fallback);
        assert_eq!(back.created_at_ms, b.created_at_ms);
        assert_eq!(back.partition("A").unwrap().model.predict(&[0.0; 3]), 60.0);
        assert!(back.partition("Z").is_none());
    }

    #[test]
    fn truncated_or_foreign_bytes_are_refused_with_a_reason() {
        let bytes = sample("v1").to_avro().unwrap();
        assert!(Bundle::from_avro(&bytes[..bytes.len() / 2]).is_err());
        assert!(Bundle::from_avro(b"not avro at all").is_err());
        assert!(Bundle::from_avro(&[]).is_err());
    }

    #[test]
    fn format_1_bundles_still_load() {
        let bytes = include_bytes!("../../tests/fixtures/bundle-format1.avro");
        let b = Bundle::from_avro(bytes).unwrap();
        assert_eq!(b.version, "format1-fixture");
        assert!(b.has_fallback());
        assert_eq!(b.fallback.model.kind(), "linear");
        assert_eq!(b.partitions.len(), 3);
        assert!(!b.encoder().takes_missing());
        let back = Bundle::from_avro(&b.to_avro().unwrap()).unwrap();
        assert_eq!(back.partitions, b.partitions);
    }

    #[test]
    fn the_direct_decoder_reads_what_apache_avro_reads_and_refuses_damage_without_panicking() {
        let mut linear = sample("v1");
        linear.base_version = None;
        let mut parts = linear.partitions.clone();
        parts[0].model = trees(1.5);
        let mixed = Bundle::new(
            "v2".into(),
            Some("v1".into()),
            7,
            linear.spec.clone(),
            3,
            1,
            linear.fallback.clone(),
            parts,
        )
        .unwrap();
        for b in [&linear, &mixed] {
            let bytes = b.to_avro().unwrap();
            let direct = Bundle::from_avro(&bytes).unwrap();
            let generic = Bundle::from_avro_generic(&bytes).unwrap();
            assert_eq!(direct.partitions, generic.partitions);
            assert_eq!(direct.fallback, generic.fallback);
            assert_eq!(direct.spec, generic.spec);
            assert_eq!(
                (&direct.version, &direct.base_version, direct.created_at_ms),
                (
                    &generic.version,
                    &generic.base_version,
                    generic.created_at_ms
                )
            );
            // Cut short or with a byte changed: an error (or, rarely, a bundle), never a panic.
            for cut in (0..bytes.len()).step_by(7) {
                let _ = Bundle::from_avro(&bytes[..cut]);
            }
            for at in (0..bytes.len()).step_by(3) {
                let mut bad = bytes.clone();
                bad[at] ^= 0x5a;
                let _ = Bundle::from_avro(&bad);
            }
            // The datum itself, damaged past the codec.
            let datum = crate::codec::container::read(&bytes).unwrap().blocks[0]
                .1
                .clone();
            assert!(super::decode::bundle_record(&datum).is_ok());
            for cut in 0..datum.len() {
                assert!(super::decode::bundle_record(&datum[..cut]).is_err());
            }
            for at in 0..datum.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut bad = datum.clone();
                    bad[at] ^= flip;
                    if let Ok(r) = super::decode::bundle_record(&bad) {
                        let _ = r.into_bundle();
                    }
                }
            }
        }
    }

    fn trees(leaf: f64) -> Model {
        Model::Trees(Box::new(
            TreeEnsemble::new(&TreeArrays {
                objective: Objective::Poisson,
                base_score: 2.0,
                roots: vec![0],
                split_feature: vec![0, -1, -1],
                threshold: vec![3.5, 0.0, 0.0],
                left_child: vec![1, -1, -1],
                right_child: vec![2, -1, -1],
                default_left: vec![true, false, false],
                leaf_value: vec![0.0, leaf, -leaf],
            })
            .unwrap(),
        ))
    }

    #[test]
    fn mixed_bundles_and_bundles_without_fallback_round_trip() {
        let b = sample("v1");
        let mut parts = b.partitions.clone();
        parts[0].model = trees(0.5);
        parts[0].rmse = f64::NAN;
        let mixed = Bundle::new(
            "v2".into(),
            None,
            0,
            b.spec.clone(),
            0,
            0,
            b.fallback.clone(),
            parts.clone(),
        )
        .unwrap();
        assert!(
            !mixed.encoder().takes_missing(),
            "a linear model cannot take NaN"
        );
        let back = Bundle::from_avro(&mixed.to_avro().unwrap()).unwrap();
        assert_eq!(back.partition("A").unwrap().model, trees(0.5));
        assert_eq!(back.partition("B").unwrap().model, b.partitions[1].model);

        parts[1].model = trees(0.25);
        let mut spec = b.spec.clone();
        spec.model = ModelKind::Imported;
        let only_trees = Bundle::assemble("v3".into(), None, 0, spec, (0, 0), None, parts).unwrap();
        assert!(!only_trees.has_fallback());
        assert!(only_trees.encoder().takes_missing());
        let back = Bundle::from_avro(&only_trees.to_avro().unwrap()).unwrap();
        assert!(!back.has_fallback());
        assert_eq!(back.spec.model, ModelKind::Imported);
        let x = back
            .partition("B")
            .unwrap()
            .model
            .predict(&[f64::NAN, 0.0, 0.0]);
        assert!((x - (2.0f32.ln() as f64 + 0.25).exp()).abs() < 1e-12);
    }

    #[test]
    fn trees_reading_inputs_the_features_do_not_give_are_refused() {
        let b = sample("v1");
        let mut parts = b.partitions.clone();
        let Model::Trees(t) = trees(1.0) else {
            unreachable!()
        };
        let mut a = t.to_arrays();
        a.split_feature[0] = 3;
        parts[0].model = Model::Trees(Box::new(TreeEnsemble::new(&a).unwrap()));
        let err = Bundle::new(
            "v2".into(),
            None,
            0,
            b.spec.clone(),
            0,
            0,
            b.fallback,
            parts,
        )
        .unwrap_err();
        assert!(
            matches!(&err, BundleError::Spec(m) if m.contains("model input 3")),
            "{err}"
        );
    }

    #[test]
    fn bundles_with_wrong_coefficient_counts_are_refused() {
        let b = sample("v1");
        let mut bad = b.partitions.clone();
        if let Model::Linear(l) = &mut bad[0].model {
            l.coefficients = l.coefficients[1..].into();
        }
        let err = Bundle::new(
            "v2".into(),
            None,
            0,
            b.spec.clone(),
            0,
            0,
            b.fallback.clone(),
            bad,
        )
        .unwrap_err();
        assert!(
            matches!(&err, BundleError::Spec(m) if m.contains("coefficients")),
            "{err}"
        );
    }

    #[test]
    fn non_finite_values_are_their_own_kind_of_error() {
        let b = sample("v1");
        let mut bad = b.partitions.clone();
        if let Model::Linear(l) = &mut bad[0].model {
            let mut c = l.coefficients.to_vec();
            c[0] = f64::NAN;
            l.coefficients = c.into();
        }
        let err = Bundle::new(
            "v2".into(),
            None,
            0,
            b.spec.clone(),
            0,
            0,
            b.fallback.clone(),
            bad,
        )
        .unwrap_err();
        assert!(matches!(err, BundleError::NotFinite(_)), "{err}");
        let Model::Trees(t) = trees(1.0) else {
            unreachable!()
        };
        let mut a = t.to_arrays();
        let leaf = a.split_feature.iter().position(|&f| f < 0).unwrap();
        a.leaf_value[leaf] = f64::INFINITY;
        assert!(matches!(
            TreeEnsemble::new(&a),
            Err(BundleError::NotFinite(_))
        ));
    }

    #[test]
    fn bytes_that_are_not_a_bundle_file_are_a_schema_error() {
        let bytes = sample("v1").to_avro().unwrap();
        for bad in [&bytes[..bytes.len() / 2], b"not avro at all", &[]] {
            assert!(matches!(
                Bundle::from_avro(bad),
                Err(BundleError::Schema(_))
            ));
        }
    }
}
