//! Reading a sales history into compact typed columns, grouped by partition.
//!
//! A `.parquet` file is read by [`super::parquet`]; any other file is CSV, read here. Both hand
//! their rows, one `HistoryRow` at a time, to the same `RowParser`, so a Parquet history
//! and its CSV twin give the same columns, the same rejections and the same bundle.
//!
//! A CSV file is read once. One thread splits it into records while the caller's thread parses
//! each row's fields into typed columns: a number is an `f64`, a bool a byte, a category its
//! code, a timestamp its epoch milliseconds, and the partition an integer; no row keeps a
//! `String`. That is about 40 bytes a row for the spec `generate` writes, so the history of a
//! million stores fits in memory where its CSV text or its encoded design would not. Rows are
//! then put in partition order, one column at a time, and [`Columns::encode`] turns a row
//! into model inputs through the shared [`FeatureEncoder`] when a fit asks for it.
//!
//! The header is checked against the spec before any row is read, one-hot categories that
//! the spec leaves open are learned from the data, and a bad row is rejected with its line
//! number and the reason, never silently dropped; `strict` makes the first one fatal.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;

use csv::ByteRecord;

use super::csv_lines::Lines;

use crate::error::{Error, RecordError, RecordErrorKind, Result};
use crate::features::{missing_feature, FeatureEncoder, FeatureValue};
use crate::field::Field;
use crate::spec::{FeatureKind, TrainSpec};

/// How many rejected rows are kept as examples.
const EXAMPLES: usize = 5;
/// Records handed from the splitting thread to the parsing one at a time.
const BATCH: usize = 4096;
/// The code of a category that a spec's fixed list does not name.
const UNSEEN: u32 = u32::MAX;

/// Rows that were rejected.
#[derive(Debug, Default)]
pub struct Rejections {
    /// How many.
    pub count: u64,
    /// What the numbers of `examples` count: `line` (of a CSV file) or `row` (of a Parquet
    /// file, from 1).
    pub unit: &'static str,
    /// The first few, by file line or row.
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

/// One stored value per row.
#[derive(Debug)]
enum Column {
    /// A numeric feature.
    Number(Vec<f64>),
    /// A bool feature, 0 or 1.
    Flag(Vec<u8>),
    /// A one-hot feature: the category's position in the resolved list, or [`UNSEEN`].
    Category(Vec<u32>),
    /// A timestamp column, read once for every time feature on it.
    Time(Vec<i64>),
}

impl Column {
    fn scatter(&mut self, dest: &[u32]) {
        fn by<T: Copy + Default>(v: &mut Vec<T>, dest: &[u32]) {
            let mut out = vec![T::default(); v.len()];
            for (x, &d) in v.iter().zip(dest) {
                out[d as usize] = *x;
            }
            *v = out;
        }
        match self {
            Column::Number(v) => by(v, dest),
            Column::Flag(v) => by(v, dest),
            Column::Category(v) => by(v, dest),
            Column::Time(v) => by(v, dest),
        }
    }

    fn reserve(&mut self, n: usize) {
        match self {
            Column::Number(v) => v.reserve_exact(n),
            Column::Flag(v) => v.reserve_exact(n),
            Column::Category(v) => v.reserve_exact(n),
            Column::Time(v) => v.reserve_exact(n),
        }
    }
}

/// The usable rows of a history, in partition order, as typed columns.
#[derive(Debug)]
pub struct Columns {
    /// The target of each row.
    pub target: Vec<f64>,
    stored: Vec<Column>,
    /// The stored column each feature reads.
    source: Vec<usize>,
}

impl Columns {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.target.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.target.is_empty()
    }

    /// Writes row `row`'s model inputs into `out` (`encoder.width()` long, overwritten) and
    /// returns a bit per indicator feature (in [`FeatureEncoder::indicator_groups`] order, the
    /// first 64) that is set when the row set one of its inputs.
    #[inline]
    pub fn encode(&self, encoder: &FeatureEncoder, row: usize, out: &mut [f64]) -> u64 {
        out.fill(0.0);
        let mut set = 0u64;
        let mut group = 0;
        for (f, &s) in self.source.iter().enumerate() {
            let value = match &self.stored[s] {
                Column::Number(v) => FeatureValue::Number(v[row]),
                Column::Flag(v) => FeatureValue::Number(f64::from(v[row])),
                Column::Category(v) => {
                    let code = v[row];
                    if code != UNSEEN && group < 64 {
                        set |= 1 << group;
                    }
                    group += 1;
                    FeatureValue::Category((code != UNSEEN).then_some(code as usize))
                }
                Column::Time(v) => {
                    if group < 64 {
                        set |= 1 << group;
                    }
                    group += 1;
                    FeatureValue::Time(v[row])
                }
            };
            encoder.place(f, value, out);
        }
        set
    }
}

/// A history, read and grouped by partition.
#[derive(Debug)]
pub struct History {
    /// The spec with every one-hot category list resolved.
    pub spec: TrainSpec,
    /// The encoder built from `spec`.
    pub encoder: FeatureEncoder,
    /// The partition ids, sorted; a partition's number is its position here.
    pub ids: Vec<String>,
    /// Partition `k`'s rows are `offsets[k]..offsets[k + 1]` of `columns`.
    pub offsets: Vec<usize>,
    /// The rows.
    pub columns: Columns,
    /// Rows that were encoded and will be used.
    pub rows_used: u64,
    /// Rows that were not.
    pub rejected: Rejections,
}

impl History {
    /// The rows of partition `k`.
    pub fn rows(&self, k: usize) -> std::ops::Range<usize> {
        self.offsets[k]..self.offsets[k + 1]
    }

    /// The number of the partition named `id`.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.ids.binary_search_by(|p| p.as_str().cmp(id)).ok()
    }
}

/// How the parsing thread reads one feature's cell.
enum Plan {
    Number {
        cell: usize,
        column: String,
    },
    Flag {
        cell: usize,
        column: String,
    },
    Category {
        cell: usize,
        column: String,
        codes: Categories,
    },
    /// A timestamp cell; `first` for the first feature reading it, which stores it.
    Time {
        cell: usize,
        column: String,
        first: bool,
    },
}

/// The categories of one one-hot feature: fixed by the spec, or learned in first-seen order.
struct Categories {
    fixed: bool,
    codes: HashMap<Box<str>, u32>,
}

/// A value of one row before it is known that the whole row is good.
#[derive(Clone, Copy)]
enum Cell {
    Number(f64),
    Flag(u8),
    Category(u32),
    Time(i64),
    /// A feature on an already-stored timestamp.
    Shared,
}

/// Reads `path` under `spec`; `on_rows` hears how many rows have been read so far. A file
/// named `*.parquet` is read as Parquet, anything else as CSV.
pub fn read(
    path: &Path,
    spec: &TrainSpec,
    strict: bool,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<History> {
    if crate::codec::parquet::is_parquet(path) {
        return super::parquet::read(path, spec, strict, on_rows);
    }
    read_csv(path, spec, strict, on_rows)
}

fn read_csv(
    path: &Path,
    spec: &TrainSpec,
    strict: bool,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<History> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(Lines::new(file));
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
    let mut parser = RowParser::new(spec, |name| column_index[name], "line");
    // One thread splits records, this one parses them; batches go back to be refilled.
    // A batch, its rows, and the error that ended it with the line it names.
    type Split = (Vec<ByteRecord>, usize, Option<(csv::Error, u64)>);
    let (full_tx, full_rx) = mpsc::sync_channel::<Split>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<ByteRecord>>();
    for _ in 0..3 {
        let _ = empty_tx.send(vec![ByteRecord::new(); BATCH]);
    }
    let parsed: Result<()> = std::thread::scope(|scope| {
        // Owned by this closure, so an early return drops them and the splitting thread,
        // blocked on a full channel, ends instead of keeping the scope open.
        let (full_rx, empty_tx) = (full_rx, empty_tx);
        scope.spawn(move || {
            while let Ok(mut batch) = empty_rx.recv() {
                let mut n = 0;
                let mut failure = None;
                while n < batch.len() {
                    match reader.read_byte_record(&mut batch[n]) {
                        Ok(true) => {
                            if let Some(mut at) = batch[n].position().cloned() {
                                at.set_line(reader.get_mut().line_at(at.byte()));
                                batch[n].set_position(Some(at));
                            }
                            n += 1;
                        }
                        Ok(false) => break,
                        Err(e) => {
                            let line = e
                                .position()
                                .map_or(0, |p| reader.get_mut().line_at(p.byte()));
                            failure = Some((e, line));
                            break;
                        }
                    }
                }
                let done = n < batch.len() && failure.is_none();
                let fatal = failure.as_ref().is_some_and(|(e, _)| e.is_io_error());
                if full_tx.send((batch, n, failure)).is_err() || done || fatal {
                    return;
                }
            }
        });
        let mut read = 0u64;
        let mut reserved = false;
        while let Ok((batch, n, failure)) = full_rx.recv() {
            if !reserved && n > 0 {
                // Size the columns from the first batch's bytes per row, so that they never
                // grow by doubling (which would leave up to half of them unused).
                reserved = true;
                let first = batch[0].position().map_or(0, |p| p.byte());
                let last = batch[n - 1].position().map_or(0, |p| p.byte());
                if n > 1 && last > first {
                    let per_row = (last - first) as f64 / (n - 1) as f64;
                    let rows = (file_len as f64 / per_row * 1.02) as usize + BATCH;
                    parser.reserve(rows);
                }
            }
            for record in &batch[..n] {
                let line = record.position().map(|p| p.line()).unwrap_or(0);
                parser.row(record, line, strict, path)?;
            }
            read += n as u64;
            on_rows(read);
            if let Some((e, line)) = failure {
                if e.is_io_error() {
                    return Err(Error::Usage(format!("{}: {e}", path.display())));
                }
                let err =
                    RecordError::new(RecordErrorKind::WrongType, format!("unreadable row: {e}"));
                if strict {
                    return Err(Error::Strict {
                        location: format!("{} line {line}", path.display()),
                        error: err,
                    });
                }
                parser.unreadable(line, err);
            }
            // After the last batch the splitting thread is gone and nobody takes it back;
            // batches it sent before are still queued, so keep receiving.
            let _ = empty_tx.send(batch);
        }
        drop(empty_tx);
        Ok(())
    });
    parsed?;
    parser.finish(path, "has a header but no rows")
}

/// One row of a history as [`RowParser`] reads it, whatever the file's format.
pub(crate) trait HistoryRow {
    /// The field in cell `i` (a position [`RowParser::new`]'s `cell_of` gave): `Ok(None)` when
    /// the row is too short to have it; an empty text cell for a value that is absent (a null);
    /// an error when the cell cannot be read at all (text that is not UTF-8).
    fn cell(&self, i: usize) -> std::result::Result<Option<Field<'_>>, RecordError>;
}

impl HistoryRow for ByteRecord {
    fn cell(&self, i: usize) -> std::result::Result<Option<Field<'_>>, RecordError> {
        self.get(i).map(|b| text(b).map(Field::Text)).transpose()
    }
}

/// The parsing side of [`read`]: typed columns growing one good row at a time.
pub(crate) struct RowParser<'s> {
    plans: Vec<Plan>,
    stored: Vec<Column>,
    target: Vec<f64>,
    /// Each row's partition, in first-seen numbering.
    partition: Vec<u32>,
    ids: HashMap<Box<str>, u32>,
    cells: Vec<Cell>,
    /// The last text of each timestamp cell and its value: history is often written one
    /// timestamp at a time for every store.
    last_time: HashMap<usize, (Vec<u8>, i64)>,
    spec: &'s TrainSpec,
    pcell: usize,
    tcell: usize,
    rejected: Rejections,
}

/// A cell as text, or the row's `unreadable row` error when it is not UTF-8.
pub(crate) fn text(bytes: &[u8]) -> std::result::Result<&str, RecordError> {
    std::str::from_utf8(bytes).map_err(|e| {
        RecordError::new(
            RecordErrorKind::WrongType,
            format!("unreadable row: invalid UTF-8 ({e})"),
        )
    })
}

/// The partition id a field names: text trimmed, an integer in decimal (written into
/// `digits`, so that no row allocates), anything else a wrong type.
fn partition_text<'a>(
    field: &Field<'a>,
    digits: &'a mut [u8; 24],
    column: &str,
) -> std::result::Result<&'a str, RecordError> {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut digits[..]);
    let written = match field {
        Field::Text(s) => return Ok(s.trim()),
        Field::Int(i) => write!(cursor, "{i}"),
        Field::UInt(u) => write!(cursor, "{u}"),
        other => {
            return Err(RecordError::new(
                RecordErrorKind::WrongType,
                format!(
                    "{column}: a partition id must be text or an integer, got {}",
                    other.describe()
                ),
            ))
        }
    };
    let len = cursor.position() as usize;
    match written {
        Ok(()) => text(&digits[..len]),
        Err(e) => Err(RecordError::new(RecordErrorKind::WrongType, e.to_string())),
    }
}

impl<'s> RowParser<'s> {
    /// A parser for rows whose cells `cell_of` numbers by column name (every column of
    /// `spec.columns()` has one); `unit` names what a rejected row's number counts.
    pub(crate) fn new(
        spec: &'s TrainSpec,
        cell_of: impl Fn(&str) -> usize,
        unit: &'static str,
    ) -> Self {
        let mut plans = Vec::with_capacity(spec.features.len());
        let mut stored = Vec::new();
        let mut time_columns: HashMap<&str, usize> = HashMap::new();
        for f in &spec.features {
            let cell = cell_of(f.column.as_str());
            let column = f.column.clone();
            let plan = match f.kind {
                FeatureKind::Numeric => {
                    stored.push(Column::Number(Vec::new()));
                    Plan::Number { cell, column }
                }
                FeatureKind::Bool => {
                    stored.push(Column::Flag(Vec::new()));
                    Plan::Flag { cell, column }
                }
                FeatureKind::OneHot => {
                    stored.push(Column::Category(Vec::new()));
                    let codes = match &f.categories {
                        Some(list) => Categories {
                            fixed: true,
                            codes: (0u32..)
                                .zip(list)
                                .map(|(i, c)| (c.as_str().into(), i))
                                .collect(),
                        },
                        None => Categories {
                            fixed: false,
                            codes: HashMap::new(),
                        },
                    };
                    Plan::Category {
                        cell,
                        column,
                        codes,
                    }
                }
                FeatureKind::HourOfDay | FeatureKind::DayOfWeek | FeatureKind::Month => {
                    if time_columns.contains_key(f.column.as_str()) {
                        plans.push(Plan::Time {
                            cell,
                            column,
                            first: false,
                        });
                        continue;
                    }
                    time_columns.insert(&f.column, stored.len());
                    stored.push(Column::Time(Vec::new()));
                    Plan::Time {
                        cell,
                        column,
                        first: true,
                    }
                }
            };
            plans.push(plan);
        }
        RowParser {
            plans,
            stored,
            target: Vec::new(),
            partition: Vec::new(),
            ids: HashMap::new(),
            cells: Vec::new(),
            last_time: HashMap::new(),
            spec,
            pcell: cell_of(spec.partition_column.as_str()),
            tcell: cell_of(spec.target.as_str()),
            rejected: Rejections {
                unit,
                ..Rejections::default()
            },
        }
    }

    /// Makes room for `rows` rows, so that the columns never grow by doubling.
    pub(crate) fn reserve(&mut self, rows: usize) {
        self.target.reserve_exact(rows);
        self.partition.reserve_exact(rows);
        for c in &mut self.stored {
            c.reserve(rows);
        }
    }

    /// Reads one row, number `at` in the file (its line, or its row from 1): stores it, or
    /// rejects it (fatally under `strict`).
    pub(crate) fn row(
        &mut self,
        row: &impl HistoryRow,
        at: u64,
        strict: bool,
        path: &Path,
    ) -> Result<()> {
        // Categories are learned from every row, as a reader of the whole file would list
        // them, even from rows rejected for another cell.
        for plan in &mut self.plans {
            if let Plan::Category {
                cell,
                codes,
                column,
            } = plan
            {
                if !codes.fixed {
                    if let Ok(Some(field)) = row.cell(*cell) {
                        if !field.is_missing() {
                            if let Ok(label) = field.category(column) {
                                if !codes.codes.contains_key(label.as_ref()) {
                                    let next = codes.codes.len() as u32;
                                    codes.codes.insert(label.as_ref().into(), next);
                                }
                            }
                        }
                    }
                }
            }
        }
        match self.parse(row) {
            Ok((partition, target)) => {
                self.partition.push(partition);
                self.target.push(target);
                for (i, cell) in self.cells.iter().enumerate() {
                    match (&mut self.stored[i], *cell) {
                        (Column::Number(v), Cell::Number(x)) => v.push(x),
                        (Column::Flag(v), Cell::Flag(x)) => v.push(x),
                        (Column::Category(v), Cell::Category(x)) => v.push(x),
                        (Column::Time(v), Cell::Time(x)) => v.push(x),
                        _ => {}
                    }
                }
                Ok(())
            }
            Err(err) => {
                if strict {
                    return Err(Error::Strict {
                        location: format!("{} {} {at}", path.display(), self.rejected.unit),
                        error: err,
                    });
                }
                self.rejected.add(at, err);
                Ok(())
            }
        }
    }

    /// Records a row that could not even be split into cells (a CSV record the CSV reader
    /// refused).
    fn unreadable(&mut self, at: u64, err: RecordError) {
        self.rejected.add(at, err);
    }

    /// Parses one row into `self.cells` (one per stored column), returning its partition and
    /// target; checks cells in the order [`FeatureEncoder::encode`] does, so the first
    /// problem reported is the same.
    fn parse(&mut self, row: &impl HistoryRow) -> std::result::Result<(u32, f64), RecordError> {
        let spec = self.spec;
        let mut digits = [0u8; 24];
        let id = match row.cell(self.pcell)? {
            None => {
                return Err(RecordError::new(
                    RecordErrorKind::MissingKey,
                    format!("{} is missing (short row)", spec.partition_column),
                ))
            }
            Some(field) => partition_text(&field, &mut digits, &spec.partition_column)?,
        };
        if id.is_empty() {
            return Err(RecordError::new(
                RecordErrorKind::EmptyKey,
                format!("{} is empty", spec.partition_column),
            ));
        }
        let target = match row.cell(self.tcell)? {
            Some(field) if !field.is_missing() => field.number(&spec.target)?,
            _ => {
                return Err(RecordError::new(
                    RecordErrorKind::MissingFeature,
                    format!("target {} is missing", spec.target),
                ))
            }
        };
        self.cells.clear();
        for plan in &self.plans {
            let (cell, column) = match plan {
                Plan::Number { cell, column }
                | Plan::Flag { cell, column }
                | Plan::Category { cell, column, .. }
                | Plan::Time { cell, column, .. } => (*cell, column),
            };
            let field = row.cell(cell)?.unwrap_or(Field::Text(""));
            if field.is_missing() {
                return Err(missing_feature(column));
            }
            self.cells.push(match plan {
                Plan::Number { .. } => Cell::Number(field.number(column)?),
                Plan::Flag { .. } => Cell::Flag(u8::from(field.boolean(column)?)),
                Plan::Category { codes, .. } => {
                    let label = field.category(column)?;
                    Cell::Category(codes.codes.get(label.as_ref()).copied().unwrap_or(UNSEEN))
                }
                Plan::Time { first, .. } => {
                    let ms = match field {
                        // Text is parsed once per run of equal cells.
                        Field::Text(raw) => match self.last_time.get(&cell) {
                            Some((bytes, ms)) if bytes.as_slice() == raw.as_bytes() => *ms,
                            _ => {
                                let ms = field.timestamp_ms(column)?;
                                let slot = self.last_time.entry(cell).or_default();
                                slot.0.clear();
                                slot.0.extend_from_slice(raw.as_bytes());
                                slot.1 = ms;
                                ms
                            }
                        },
                        _ => field.timestamp_ms(column)?,
                    };
                    if *first {
                        Cell::Time(ms)
                    } else {
                        Cell::Shared
                    }
                }
            });
        }
        // Only now is the row known good: give it a partition number.
        let next = self.ids.len() as u32;
        let partition = match self.ids.get(id) {
            Some(&p) => p,
            None => {
                self.ids.insert(id.into(), next);
                next
            }
        };
        // Shared time cells were pushed in feature order; drop them so cells line up with
        // stored columns.
        self.cells.retain(|c| !matches!(c, Cell::Shared));
        Ok((partition, target))
    }

    /// Resolves the categories, puts the rows in partition order and builds the encoder;
    /// `no_rows` says what the file is when it has no row at all.
    pub(crate) fn finish(self, path: &Path, no_rows: &str) -> Result<History> {
        let RowParser {
            plans,
            mut stored,
            mut target,
            partition,
            ids,
            rejected,
            spec,
            ..
        } = self;
        let rows_used = target.len() as u64;
        if rows_used == 0 {
            if rejected.count == 0 {
                return Err(Error::Usage(format!("{} {no_rows}", path.display())));
            }
            let first = rejected
                .examples
                .first()
                .map(|(l, e)| format!("; {} {l}: {e}", rejected.unit))
                .unwrap_or_default();
            return Err(Error::Usage(format!(
                "{}: none of its {} rows is usable{first}",
                path.display(),
                rejected.count
            )));
        }
        if target.len() > u32::MAX as usize {
            return Err(Error::Usage(format!(
                "{}: more than {} rows; split the history",
                path.display(),
                u32::MAX
            )));
        }

        // Learned categories are listed sorted; renumber the codes to match.
        let mut spec = spec.clone();
        let mut stored_index = 0;
        for (f, plan) in spec.features.iter_mut().zip(&plans) {
            let this = stored_index;
            if !matches!(plan, Plan::Time { first: false, .. }) {
                stored_index += 1;
            }
            let Plan::Category { codes, .. } = plan else {
                continue;
            };
            if codes.fixed {
                continue;
            }
            let mut names: Vec<(&str, u32)> =
                codes.codes.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
            names.sort();
            let mut renumber = vec![UNSEEN; names.len()];
            for (position, (_, code)) in names.iter().enumerate() {
                renumber[*code as usize] = position as u32;
            }
            if let Column::Category(v) = &mut stored[this] {
                for c in v.iter_mut() {
                    *c = renumber[*c as usize];
                }
            }
            f.categories = Some(names.into_iter().map(|(n, _)| n.to_owned()).collect());
        }
        let encoder = FeatureEncoder::new(&spec.features).map_err(Error::Internal)?;

        // Partition numbers in sorted-id order, then a counting sort of the rows by them.
        let mut by_name: Vec<(Box<str>, u32)> = ids.into_iter().collect();
        by_name.sort();
        let mut rank = vec![0u32; by_name.len()];
        for (r, (_, first_seen)) in by_name.iter().enumerate() {
            rank[*first_seen as usize] = r as u32;
        }
        let mut offsets = vec![0usize; by_name.len() + 1];
        for &p in &partition {
            offsets[rank[p as usize] as usize + 1] += 1;
        }
        for k in 0..by_name.len() {
            offsets[k + 1] += offsets[k];
        }
        let mut next = offsets.clone();
        let mut dest = partition;
        let mut in_order = true;
        for (i, p) in dest.iter_mut().enumerate() {
            let k = rank[*p as usize] as usize;
            *p = next[k] as u32;
            next[k] += 1;
            in_order &= *p as usize == i;
        }
        drop(next);
        if !in_order {
            let mut t = Column::Number(std::mem::take(&mut target));
            t.scatter(&dest);
            if let Column::Number(v) = t {
                target = v;
            }
            for c in &mut stored {
                c.scatter(&dest);
            }
        }
        drop(dest);
        let source = source_of(&plans);
        Ok(History {
            spec,
            encoder,
            ids: by_name.into_iter().map(|(n, _)| n.into_string()).collect(),
            offsets,
            columns: Columns {
                target,
                stored,
                source,
            },
            rows_used,
            rejected,
        })
    }
}

/// The stored column each feature reads, from the plans' order.
fn source_of(plans: &[Plan]) -> Vec<usize> {
    let mut out = Vec::with_capacity(plans.len());
    let mut stored = 0usize;
    let mut time_by_cell: HashMap<usize, usize> = HashMap::new();
    for plan in plans {
        match plan {
            Plan::Time {
                first: false, cell, ..
            } => out.push(time_by_cell[cell]),
            Plan::Time {
                first: true, cell, ..
            } => {
                time_by_cell.insert(*cell, stored);
                out.push(stored);
                stored += 1;
            }
            _ => {
                out.push(stored);
                stored += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rejected row is reported at the line an editor shows it on, whatever ends the lines
    /// (LF, CRLF, a last line without one) and with blank lines and a quoted line break before.
    #[test]
    fn rejected_rows_name_their_own_lines() {
        let spec = TrainSpec::parse(
            "partition_column = \"s\"\ntarget = \"y\"\n[[features]]\ncolumn = \"x\"\nkind = \"numeric\"\n",
        )
        .unwrap();
        let lines = [
            "s,x,y",
            "A,1,2",
            "",
            "A,bad,2",
            "\"A\nB\",1,2",
            "A,also bad,2",
            "",
            "",
            "A,3,4",
            "A,worst,2",
        ];
        let file = tempfile::NamedTempFile::new().unwrap();
        for end in ["\n", "\r\n"] {
            std::fs::write(file.path(), lines.join(end)).unwrap();
            let h = read(file.path(), &spec, false, &|_| {}).unwrap();
            let at: Vec<u64> = h.rejected.examples.iter().map(|(line, _)| *line).collect();
            // The quoted line break makes the row of line 5 two lines long.
            assert_eq!(at, [4, 7, 11], "{end:?}");
            let strict = read(file.path(), &spec, true, &|_| {}).unwrap_err();
            assert!(strict.to_string().contains(" line 4"), "{end:?}: {strict}");
        }
    }

    #[test]
    fn every_row_of_a_history_longer_than_the_batches_in_flight_is_read() {
        let spec = TrainSpec::parse(
            "partition_column = \"s\"\ntarget = \"y\"\n[[features]]\ncolumn = \"x\"\nkind = \"numeric\"\n",
        )
        .unwrap();
        let rows = 5 * BATCH + 7;
        let mut text = String::from("s,x,y\n");
        for i in 0..rows {
            text.push_str(&format!("S{},{},{}\n", i % 3, i, 2 * i));
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        for _ in 0..5 {
            let h = read(file.path(), &spec, false, &|_| {}).unwrap();
            assert_eq!(h.rows_used, rows as u64);
            assert_eq!(h.ids, ["S0", "S1", "S2"]);
            // Grouped by partition, in file order within each.
            let first: Vec<f64> = h.rows(1).take(2).map(|r| h.columns.target[r]).collect();
            assert_eq!(first, [2.0, 8.0]);
        }
    }
}
