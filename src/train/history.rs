//! Reading a sales history CSV into per-partition design matrices.
//!
//! The header is checked against the spec before any row is read, one-hot categories that
//! the spec leaves open are learned from the data, and each row is encoded by the shared
//! [`FeatureEncoder`]. A bad row is rejected with its line number and the reason, never
//! silently dropped; `strict` makes the first one fatal.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::features::FeatureEncoder;
use crate::field::Field;
use crate::spec::{FeatureKind, TrainSpec};

/// How many rejected rows are kept as examples.
const EXAMPLES: usize = 5;

/// The rows of one partition, encoded.
#[derive(Debug, Default)]
pub struct PartitionRows {
    /// Model inputs, row-major, `rows × width`.
    pub x: Vec<f64>,
    /// Targets.
    pub y: Vec<f64>,
}

impl PartitionRows {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }
}

/// Rows that were rejected.
#[derive(Debug, Default)]
pub struct Rejections {
    /// How many.
    pub count: u64,
    /// The first few, by file line.
    pub examples: Vec<(u64, RecordError)>,
    /// How many of each kind.
    pub by_kind: HashMap<&'static str, u64>,
}

impl Rejections {
    fn add(&mut self, line: u64, err: RecordError) {
        self.count += 1;
        *self.by_kind.entry(err.kind.as_str()).or_default() += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push((line, err));
        }
    }
}

/// A history, encoded and grouped by partition.
#[derive(Debug)]
pub struct History {
    /// The spec with every one-hot category list resolved.
    pub spec: TrainSpec,
    /// The encoder built from `spec`.
    pub encoder: FeatureEncoder,
    /// Rows per partition id.
    pub partitions: HashMap<String, PartitionRows>,
    /// Rows that were encoded and will be used.
    pub rows_used: u64,
    /// Rows that were not.
    pub rejected: Rejections,
}

/// Reads `path` under `spec`.
pub fn read(path: &Path, spec: &TrainSpec, strict: bool) -> Result<History> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let headers = reader
        .headers()
        .map_err(|e| Error::Usage(format!("{}: cannot read the header: {e}", path.display())))?
        .clone();
    if headers.is_empty() || (headers.len() == 1 && headers[0].trim().is_empty()) {
        return Err(Error::Usage(format!(
            "{} is empty: it needs a header naming {} and rows below it",
            path.display(),
            spec.columns().join(", ")
        )));
    }
    let column_index: HashMap<&str, usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.trim(), i))
        .collect();
    let missing: Vec<&str> = spec
        .columns()
        .into_iter()
        .filter(|c| !column_index.contains_key(c))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "{}: the header has no column {} (it has: {})",
            path.display(),
            missing.join(", "),
            headers.iter().collect::<Vec<_>>().join(", ")
        )));
    }

    let mut rejected = Rejections::default();
    let mut records = Vec::new();
    for result in reader.records() {
        match result {
            Ok(r) => records.push(r),
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                let err =
                    RecordError::new(RecordErrorKind::WrongType, format!("unreadable row: {e}"));
                if strict {
                    return Err(Error::Strict {
                        location: format!("{} line {line}", path.display()),
                        error: err,
                    });
                }
                rejected.add(line, err);
            }
        }
    }
    if records.is_empty() && rejected.count == 0 {
        return Err(Error::Usage(format!(
            "{} has a header but no rows",
            path.display()
        )));
    }

    let spec = resolve_categories(spec, &records, &column_index);
    let encoder = FeatureEncoder::new(&spec.features).map_err(Error::Internal)?;
    let pcol = column_index[spec.partition_column.as_str()];
    let tcol = column_index[spec.target.as_str()];

    // Encode in parallel, keep file order for the rejections.
    let encoded: Vec<EncodedRow> = records
        .par_iter()
        .map_init(Vec::new, |buf: &mut Vec<f64>, record| {
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            encode_row(record, &encoder, &column_index, pcol, tcol, &spec, buf)
                .map(|(id, y)| (id, buf.clone(), y))
                .map_err(|e| (line, e))
        })
        .collect();
    drop(records);

    let mut partitions: HashMap<String, PartitionRows> = HashMap::new();
    let mut rows_used = 0;
    for row in encoded {
        match row {
            Ok((id, x, y)) => {
                let p = partitions.entry(id).or_default();
                p.x.extend_from_slice(&x);
                p.y.push(y);
                rows_used += 1;
            }
            Err((line, err)) => {
                if strict {
                    return Err(Error::Strict {
                        location: format!("{} line {line}", path.display()),
                        error: err,
                    });
                }
                rejected.add(line, err);
            }
        }
    }
    if rows_used == 0 {
        let first = rejected
            .examples
            .first()
            .map(|(l, e)| format!("; line {l}: {e}"))
            .unwrap_or_default();
        return Err(Error::Usage(format!(
            "{}: none of its {} rows is usable{first}",
            path.display(),
            rejected.count
        )));
    }
    Ok(History {
        spec,
        encoder,
        partitions,
        rows_used,
        rejected,
    })
}

/// A row's partition id, inputs and target, or its line and what is wrong with it.
type EncodedRow = std::result::Result<(String, Vec<f64>, f64), (u64, RecordError)>;

fn encode_row(
    record: &csv::StringRecord,
    encoder: &FeatureEncoder,
    column_index: &HashMap<&str, usize>,
    pcol: usize,
    tcol: usize,
    spec: &TrainSpec,
    buf: &mut Vec<f64>,
) -> std::result::Result<(String, f64), RecordError> {
    let id = match record.get(pcol) {
        None => {
            return Err(RecordError::new(
                RecordErrorKind::MissingKey,
                format!("{} is missing (short row)", spec.partition_column),
            ))
        }
        Some(s) if s.trim().is_empty() => {
            return Err(RecordError::new(
                RecordErrorKind::EmptyKey,
                format!("{} is empty", spec.partition_column),
            ))
        }
        Some(s) => s.trim().to_owned(),
    };
    let target = match record.get(tcol) {
        Some(s) if !s.trim().is_empty() => Field::Text(s).number(&spec.target)?,
        _ => {
            return Err(RecordError::new(
                RecordErrorKind::MissingFeature,
                format!("target {} is missing", spec.target),
            ))
        }
    };
    encoder.encode(
        |c| {
            column_index
                .get(c)
                .and_then(|&i| record.get(i))
                .map(Field::Text)
        },
        buf,
    )?;
    Ok((id, target))
}

/// The spec with each open one-hot category list learned from the data, sorted.
fn resolve_categories(
    spec: &TrainSpec,
    records: &[csv::StringRecord],
    column_index: &HashMap<&str, usize>,
) -> TrainSpec {
    let mut spec = spec.clone();
    for f in &mut spec.features {
        if f.kind == FeatureKind::OneHot && f.categories.is_none() {
            let i = column_index[f.column.as_str()];
            let seen: BTreeSet<&str> = records
                .iter()
                .filter_map(|r| r.get(i))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            f.categories = Some(seen.into_iter().map(str::to_owned).collect());
        }
    }
    spec
}
