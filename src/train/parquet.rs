//! Reading a sales history from a Parquet file into the same typed columns as a CSV history.
//!
//! The spec's columns are found by name and their types checked before any row is read
//! ([`crate::codec::parquet::Use`]); then the file is streamed, [`BATCH`] rows of each column at
//! a time, and every row goes to the `RowParser` the CSV path uses, each value as its CSV
//! twin's cell ([`crate::codec::parquet::Value::field`]). So the same history in Parquet and in
//! CSV gives the same columns, rejections and bundle; only a rejected row is named by its row
//! (from 1) instead of its line. The columns are sized once from the footer's row count, and
//! nothing per row outlives its batch: memory is the typed columns plus a page per column.
//!
//! [`BATCH`]: crate::codec::parquet::BATCH

use std::path::Path;

use super::history::{History, HistoryRow, RowParser};
use crate::codec::parquet::{Batch, ParquetFile, Use};
use crate::error::{RecordError, Result};
use crate::field::Field;
use crate::spec::TrainSpec;

/// One row of a batch; cell `i` is the `i`-th column read.
struct ParquetRow<'b> {
    batch: &'b Batch,
    row: usize,
}

impl HistoryRow for ParquetRow<'_> {
    fn cell(&self, i: usize) -> std::result::Result<Option<Field<'_>>, RecordError> {
        self.batch.value(i, self.row).field().map(Some)
    }
}

/// The columns a spec reads and how: the partition column, the target, then each feature's
/// column once (its first feature's use decides; time features share their column).
fn wanted(spec: &TrainSpec) -> Vec<(&str, Use, bool)> {
    let mut out: Vec<(&str, Use, bool)> = vec![
        (spec.partition_column.as_str(), Use::Id, false),
        (spec.target.as_str(), Use::Number, false),
    ];
    for f in &spec.features {
        if !out.iter().any(|(name, ..)| *name == f.column) {
            out.push((f.column.as_str(), Use::of_feature(f.kind), false));
        }
    }
    out
}

/// Reads the Parquet history `path` under `spec`; `on_rows` hears how many rows have been read
/// so far.
pub fn read(
    path: &Path,
    spec: &TrainSpec,
    strict: bool,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<History> {
    let file = ParquetFile::open(path)?;
    let wanted = wanted(spec);
    // A column read by two uses (a feature on the partition column, say) must suit both.
    for f in &spec.features {
        let usage = Use::of_feature(f.kind);
        if let Some((_, first, _)) = wanted.iter().find(|(name, ..)| *name == f.column) {
            if *first != usage {
                file.columns(&[(f.column.as_str(), usage, false)])?;
            }
        }
    }
    let columns: Vec<_> = file.columns(&wanted)?.into_iter().flatten().collect();
    let mut parser = RowParser::new(
        spec,
        |name| {
            wanted
                .iter()
                .position(|(n, ..)| *n == name)
                .unwrap_or(usize::MAX)
        },
        "row",
    );
    // Sized from the footer, so that the columns never grow by doubling; a damaged footer
    // announcing more rows than its bytes could hold reserves no more than that bound.
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let rows = file.rows().min(bytes.saturating_mul(64));
    parser.reserve(usize::try_from(rows).unwrap_or(0));
    file.read(&columns, |batch| {
        for row in 0..batch.rows {
            let at = batch.first_row + row as u64 + 1;
            parser.row(&ParquetRow { batch, row }, at, strict, path)?;
        }
        on_rows(batch.first_row + batch.rows as u64);
        Ok(())
    })?;
    parser.finish(path, "has no rows")
}
