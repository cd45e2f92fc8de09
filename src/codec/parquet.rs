//! Parquet input: the columns a command reads, found by name; what each Parquet type means to
//! a feature; and a reader that streams them, row group by row group, in batches.
//!
//! Only the top-level columns asked for are read, [`BATCH`] rows at a time, each value looked
//! at where its decoded page holds it: nothing is copied into rows, so reading costs the
//! columns the caller fills and a page per column, whatever the file's size. A value means what
//! its twin means elsewhere, by going through [`crate::field`]: for training
//! ([`Value::field`]) what the same value means in a CSV cell, with a null read as an empty
//! cell; for scoring ([`Value::slot`]) what it means in a JSON event, with a null read as JSON
//! `null`.
//!
//! | Parquet (pyarrow) type | reads as |
//! |---|---|
//! | `bool` | a bool |
//! | `int8` .. `int64`, `uint8` .. `uint64` | an integer, as the JSON integer: a number, 0/1 for a bool, epoch milliseconds for a timestamp, its decimal text for a category or a partition id |
//! | `float`, `double` | a number (a `float` as the decimal it prints as, as its CSV cell holds it); NaN is `not_finite` |
//! | `string`, `large_string`, `dictionary<string>`, enum, JSON | text, as a CSV cell |
//! | `timestamp[s/ms/us/ns]` with a time zone, `INT96` | the instant, in epoch milliseconds (floored), so time features take its UTC parts, as for RFC 3339 text |
//! | `timestamp` without a time zone | its wall-clock time read as UTC, as an epoch-milliseconds integer is |
//! | `date32` | midnight UTC of the day |
//!
//! Which types a use accepts is checked once per column, before any row is read
//! ([`ParquetFile::columns`]): a `binary` price or a `double` partition id is refused with the file, the
//! column, its type and what to do, rather than rejecting every row. Binary without a string
//! annotation, decimals, times of day, float16, lists, structs and maps are not read.
//!
//! This module never decides what a row means: training's [`crate::train::history`] and
//! scoring's [`crate::event::assemble`] do, as for every other format.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use parquet::basic::{ConvertedType, LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::{ByteArray, Int96};
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::schema::types::ColumnDescriptor;
use serde_json::Value as Json;

use crate::error::{Error, ParquetFileError, RecordError};
use crate::event::Slot;
use crate::field::Field;
use crate::spec::FeatureKind;

/// Rows read from each column at a time.
pub const BATCH: usize = 4096;

/// Milliseconds in a day, for dates.
const DAY_MS: i64 = 86_400_000;

/// True for a file named `*.parquet` (any case): the one way a command tells Parquet from its
/// other formats.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// The unit of a Parquet timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds (also what pyarrow writes for seconds).
    Millis,
    /// Microseconds.
    Micros,
    /// Nanoseconds.
    Nanos,
}

/// What a Parquet column holds, as manymodel reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `bool`.
    Bool,
    /// An integer of `bits` bits that fits an `i64`: signed of 8 to 64 bits, unsigned of 8 to
    /// 32.
    Int {
        /// 8, 16, 32 or 64.
        bits: u8,
        /// False for the unsigned types.
        signed: bool,
    },
    /// `uint64`.
    UInt64,
    /// A 32-bit float.
    Float,
    /// A 64-bit float.
    Double,
    /// UTF-8 text: string, large string, dictionary of strings, enum, JSON.
    Text,
    /// A timestamp: `unit`s since the epoch; `utc` when it is an instant (the column has a
    /// time zone), false for a wall-clock time.
    Timestamp {
        /// The unit of the stored integers.
        unit: Unit,
        /// isAdjustedToUTC: the column has a time zone.
        utc: bool,
    },
    /// The legacy INT96 timestamp (Spark, Impala; pyarrow on request): an instant.
    Int96,
    /// `date32`: days since the epoch.
    Date,
}

impl ColumnType {
    /// The type of a column, or the name of a type manymodel does not read.
    pub fn of(column: &ColumnDescriptor) -> Result<ColumnType, String> {
        let physical = column.physical_type();
        let t = match (column.logical_type_ref(), physical) {
            (Some(LogicalType::String | LogicalType::Enum | LogicalType::Json), _) => {
                ColumnType::Text
            }
            (Some(LogicalType::Integer(int)), PhysicalType::INT32 | PhysicalType::INT64) => {
                match (int.bit_width, int.is_signed) {
                    (64, false) => ColumnType::UInt64,
                    (bits @ (8 | 16 | 32 | 64), signed) => ColumnType::Int {
                        bits: bits as u8,
                        signed,
                    },
                    (bits, _) => return Err(format!("int of {bits} bits")),
                }
            }
            (Some(LogicalType::Timestamp(t)), PhysicalType::INT64) => ColumnType::Timestamp {
                unit: match t.unit {
                    TimeUnit::MILLIS => Unit::Millis,
                    TimeUnit::MICROS => Unit::Micros,
                    TimeUnit::NANOS => Unit::Nanos,
                },
                utc: t.is_adjusted_to_u_t_c,
            },
            (Some(LogicalType::Date), PhysicalType::INT32) => ColumnType::Date,
            (Some(LogicalType::Decimal(d)), _) => {
                return Err(format!("decimal({}, {})", d.precision, d.scale))
            }
            (Some(LogicalType::Time(_)), _) => return Err("time of day".into()),
            (Some(LogicalType::Float16), _) => return Err("float16".into()),
            (Some(LogicalType::Uuid), _) => return Err("uuid".into()),
            (Some(LogicalType::Unknown), _) => return Err("null (no values)".into()),
            (Some(other), _) => return Err(format!("{other:?}").to_lowercase()),
            // Files that only carry the older "converted" annotations.
            (None, _) => match (column.converted_type(), physical) {
                (ConvertedType::UTF8 | ConvertedType::ENUM | ConvertedType::JSON, _) => {
                    ColumnType::Text
                }
                (ConvertedType::INT_8, _) => ColumnType::Int {
                    bits: 8,
                    signed: true,
                },
                (ConvertedType::INT_16, _) => ColumnType::Int {
                    bits: 16,
                    signed: true,
                },
                (ConvertedType::INT_32, _) => ColumnType::Int {
                    bits: 32,
                    signed: true,
                },
                (ConvertedType::INT_64, _) => ColumnType::Int {
                    bits: 64,
                    signed: true,
                },
                (ConvertedType::UINT_8, _) => ColumnType::Int {
                    bits: 8,
                    signed: false,
                },
                (ConvertedType::UINT_16, _) => ColumnType::Int {
                    bits: 16,
                    signed: false,
                },
                (ConvertedType::UINT_32, _) => ColumnType::Int {
                    bits: 32,
                    signed: false,
                },
                (ConvertedType::UINT_64, _) => ColumnType::UInt64,
                (ConvertedType::TIMESTAMP_MILLIS, PhysicalType::INT64) => ColumnType::Timestamp {
                    unit: Unit::Millis,
                    utc: true,
                },
                (ConvertedType::TIMESTAMP_MICROS, PhysicalType::INT64) => ColumnType::Timestamp {
                    unit: Unit::Micros,
                    utc: true,
                },
                (ConvertedType::DATE, PhysicalType::INT32) => ColumnType::Date,
                (ConvertedType::DECIMAL, _) => {
                    return Err(format!(
                        "decimal({}, {})",
                        column.type_precision(),
                        column.type_scale()
                    ))
                }
                (ConvertedType::NONE, PhysicalType::BOOLEAN) => ColumnType::Bool,
                (ConvertedType::NONE, PhysicalType::INT32) => ColumnType::Int {
                    bits: 32,
                    signed: true,
                },
                (ConvertedType::NONE, PhysicalType::INT64) => ColumnType::Int {
                    bits: 64,
                    signed: true,
                },
                (ConvertedType::NONE, PhysicalType::INT96) => ColumnType::Int96,
                (ConvertedType::NONE, PhysicalType::FLOAT) => ColumnType::Float,
                (ConvertedType::NONE, PhysicalType::DOUBLE) => ColumnType::Double,
                (ConvertedType::NONE, PhysicalType::BYTE_ARRAY) => return Err("binary".into()),
                (ConvertedType::NONE, PhysicalType::FIXED_LEN_BYTE_ARRAY) => {
                    return Err(format!("fixed_size_binary[{}]", column.type_length()))
                }
                (converted, _) => return Err(converted.to_string().to_lowercase()),
            },
        };
        // A valid file pairs each annotation with its physical type; anything else is refused.
        let fits = match t {
            ColumnType::Bool => physical == PhysicalType::BOOLEAN,
            ColumnType::Int { bits: 64, .. } | ColumnType::UInt64 => {
                physical == PhysicalType::INT64
            }
            ColumnType::Int { .. } | ColumnType::Date => physical == PhysicalType::INT32,
            ColumnType::Float => physical == PhysicalType::FLOAT,
            ColumnType::Double => physical == PhysicalType::DOUBLE,
            ColumnType::Text => physical == PhysicalType::BYTE_ARRAY,
            ColumnType::Timestamp { .. } => physical == PhysicalType::INT64,
            ColumnType::Int96 => physical == PhysicalType::INT96,
        };
        if fits {
            Ok(t)
        } else {
            Err(format!("{} stored as {physical}", t.name()))
        }
    }

    /// The type's name as pyarrow prints it, for messages.
    pub fn name(self) -> String {
        match self {
            ColumnType::Bool => "bool".into(),
            ColumnType::Int { bits, signed: true } => format!("int{bits}"),
            ColumnType::Int {
                bits,
                signed: false,
            } => format!("uint{bits}"),
            ColumnType::UInt64 => "uint64".into(),
            ColumnType::Float => "float".into(),
            ColumnType::Double => "double".into(),
            ColumnType::Text => "string".into(),
            ColumnType::Timestamp { unit, utc } => {
                let unit = match unit {
                    Unit::Millis => "ms",
                    Unit::Micros => "us",
                    Unit::Nanos => "ns",
                };
                if utc {
                    format!("timestamp[{unit}, UTC]")
                } else {
                    format!("timestamp[{unit}] without time zone")
                }
            }
            ColumnType::Int96 => "timestamp (INT96)".into(),
            ColumnType::Date => "date32".into(),
        }
    }
}

/// What a command reads a column as; each use accepts the types whose values its twin in CSV
/// or JSON can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// The partition column, or `event_id`: text or an integer.
    Id,
    /// The target or a `numeric` feature.
    Number,
    /// A `bool` feature: a bool, 0/1 integers or floats, or `true`/`false` text.
    Flag,
    /// A `one_hot` feature: text, an integer or a bool.
    Category,
    /// A time feature: a timestamp, a date, epoch-millisecond integers or RFC 3339 text.
    Time,
}

impl Use {
    /// How a feature of `kind` reads its column.
    pub fn of_feature(kind: FeatureKind) -> Use {
        match kind {
            FeatureKind::Numeric => Use::Number,
            FeatureKind::Bool => Use::Flag,
            FeatureKind::OneHot => Use::Category,
            FeatureKind::HourOfDay | FeatureKind::DayOfWeek | FeatureKind::Month => Use::Time,
        }
    }

    /// Whether a column of type `t` can hold values of this use.
    pub fn accepts(self, t: ColumnType) -> bool {
        use ColumnType as T;
        let integer = matches!(t, T::Int { .. } | T::UInt64);
        match self {
            Use::Id => integer || t == T::Text,
            Use::Number => integer || matches!(t, T::Float | T::Double),
            Use::Flag => integer || matches!(t, T::Bool | T::Float | T::Double | T::Text),
            Use::Category => integer || matches!(t, T::Bool | T::Text),
            Use::Time => integer || matches!(t, T::Timestamp { .. } | T::Int96 | T::Date | T::Text),
        }
    }

    /// What this use expects, for messages.
    pub fn expected(self) -> &'static str {
        match self {
            Use::Id => "text or an integer (a string or int column)",
            Use::Number => "a number (an int, float or double column)",
            Use::Flag => {
                "a bool (a bool column, or int or float 0/1, or a string of true/false)"
            }
            Use::Category => "a category label (a string, int or bool column)",
            Use::Time => "a timestamp (a timestamp or date column, int epoch milliseconds, or a string of RFC 3339 text)",
        }
    }

    /// How to make a column fit this use, for messages.
    fn fix(self, column: &str) -> String {
        match self {
            Use::Number => format!(
                "convert it before writing the file, e.g. df[{column:?}] = pd.to_numeric(df[{column:?}])"
            ),
            Use::Time => format!(
                "convert it before writing the file, e.g. df[{column:?}] = pd.to_datetime(df[{column:?}], utc=True)"
            ),
            Use::Id | Use::Flag | Use::Category => format!(
                "convert it before writing the file, e.g. df[{column:?}] = df[{column:?}].astype(str)"
            ),
        }
    }
}

/// A column found in a file, ready to read.
#[derive(Debug, Clone)]
pub struct FoundColumn {
    /// Its name.
    pub name: String,
    /// Its position among the file's leaf columns.
    leaf: usize,
    /// What it holds.
    pub ty: ColumnType,
    /// Whether it may hold nulls.
    nullable: bool,
}

/// A Parquet file open for reading.
pub struct ParquetFile {
    path: PathBuf,
    reader: SerializedFileReader<File>,
}

impl std::fmt::Debug for ParquetFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Runs a call into the parquet crate, which may panic on a damaged file, turning a panic into
/// an error.
fn guarded<T>(call: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(call))
        .unwrap_or_else(|_| Err("the Parquet reader failed on it".to_owned()))
}

impl ParquetFile {
    /// Opens `path` and reads its footer (schema and row groups).
    pub fn open(path: &Path) -> Result<ParquetFile, Error> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let reader = guarded(|| SerializedFileReader::new(file).map_err(|e| e.to_string()))
            .map_err(|reason| ParquetFileError::Unreadable {
                path: path.to_owned(),
                reason,
            })?;
        Ok(ParquetFile {
            path: path.to_owned(),
            reader,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of rows the footer announces.
    pub fn rows(&self) -> u64 {
        u64::try_from(self.reader.metadata().file_metadata().num_rows()).unwrap_or(0)
    }

    /// The names of the top-level columns.
    pub fn column_names(&self) -> Vec<&str> {
        let schema = self.reader.metadata().file_metadata().schema_descr();
        schema
            .root_schema()
            .get_fields()
            .iter()
            .map(|f| f.name())
            .collect()
    }

    /// The top-level column `name`: `None` when there is none, an error naming its type when
    /// it is one manymodel does not read.
    pub fn column(&self, name: &str) -> Option<Result<FoundColumn, String>> {
        let schema = self.reader.metadata().file_metadata().schema_descr();
        let root = schema
            .root_schema()
            .get_fields()
            .iter()
            .position(|f| f.name() == name)?;
        let field = &schema.root_schema().get_fields()[root];
        if field.is_group() {
            let what = match field.get_basic_info().logical_type_ref() {
                Some(LogicalType::List) => "list",
                Some(LogicalType::Map) => "map",
                _ => match field.get_basic_info().converted_type() {
                    ConvertedType::LIST => "list",
                    ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE => "map",
                    _ => "struct",
                },
            };
            return Some(Err(what.to_owned()));
        }
        if field.get_basic_info().repetition() == Repetition::REPEATED {
            return Some(Err("list".to_owned()));
        }
        let leaf = (0..schema.num_columns()).find(|&i| schema.get_column_root_idx(i) == root)?;
        let descr = schema.column(leaf);
        Some(ColumnType::of(&descr).map(|ty| FoundColumn {
            name: name.to_owned(),
            leaf,
            ty,
            nullable: descr.max_def_level() > 0,
        }))
    }

    /// The columns `wanted` (name and use), checked: every one must exist with a type its use
    /// accepts, except those marked optional, which are `None` when absent.
    pub fn columns(
        &self,
        wanted: &[(&str, Use, bool)],
    ) -> Result<Vec<Option<FoundColumn>>, ParquetFileError> {
        let mut missing = Vec::new();
        let mut found = Vec::with_capacity(wanted.len());
        for &(name, usage, optional) in wanted {
            match self.column(name) {
                None => {
                    if !optional && !missing.contains(&name) {
                        missing.push(name);
                    }
                    found.push(None);
                }
                Some(Err(found_type)) => {
                    return Err(ParquetFileError::WrongType {
                        path: self.path.clone(),
                        column: name.to_owned(),
                        found: found_type,
                        expected: usage.expected(),
                        fix: usage.fix(name),
                    })
                }
                Some(Ok(column)) if !usage.accepts(column.ty) => {
                    return Err(ParquetFileError::WrongType {
                        path: self.path.clone(),
                        column: name.to_owned(),
                        found: column.ty.name(),
                        expected: usage.expected(),
                        fix: usage.fix(name),
                    })
                }
                Some(Ok(column)) => found.push(Some(column)),
            }
        }
        if !missing.is_empty() {
            return Err(ParquetFileError::MissingColumns {
                path: self.path.clone(),
                missing: missing.join(", "),
                available: self.column_names().join(", "),
            });
        }
        Ok(found)
    }

    /// Reads `columns` (found in this file) in batches of at most [`BATCH`] rows, handing each
    /// to `each`, which may stop the read with an error.
    pub fn read(
        &self,
        columns: &[FoundColumn],
        mut each: impl FnMut(&Batch) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut batch = Batch {
            first_row: 0,
            rows: 0,
            columns: columns.iter().map(ColumnBatch::new).collect(),
        };
        let damaged = |column: &str, first_row: u64, reason: String| {
            Error::from(ParquetFileError::Damaged {
                path: self.path.clone(),
                column: column.to_owned(),
                row: first_row + 1,
                reason,
            })
        };
        let groups = self.reader.num_row_groups();
        for g in 0..groups {
            let first = batch.first_row;
            let (total, mut readers) = guarded(|| {
                let group = self.reader.get_row_group(g).map_err(|e| e.to_string())?;
                let total = usize::try_from(group.metadata().num_rows())
                    .map_err(|_| "a negative row count".to_owned())?;
                let readers = columns
                    .iter()
                    .map(|c| group.get_column_reader(c.leaf).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((total, readers))
            })
            .map_err(|reason| {
                damaged(
                    columns.first().map_or("", |c| c.name.as_str()),
                    first,
                    format!("row group {g}: {reason}"),
                )
            })?;
            let mut done = 0;
            while done < total {
                let want = BATCH.min(total - done);
                for (column, reader) in batch.columns.iter_mut().zip(&mut readers) {
                    let got = guarded(|| column.fill(reader, want).map_err(|e| e.to_string()))
                        .map_err(|reason| damaged(&column.name, batch.first_row, reason))?;
                    if got != want {
                        return Err(damaged(
                            &column.name,
                            batch.first_row,
                            format!(
                                "row group {g} holds {} values where its footer announces {total} rows",
                                done + got
                            ),
                        ));
                    }
                }
                batch.rows = want;
                each(&batch)?;
                batch.first_row += want as u64;
                done += want;
            }
        }
        Ok(())
    }
}

/// Up to [`BATCH`] rows of the columns being read.
#[derive(Debug)]
pub struct Batch {
    /// The file row of the batch's first row, from 0.
    pub first_row: u64,
    /// The rows in this batch.
    pub rows: usize,
    columns: Vec<ColumnBatch>,
}

impl Batch {
    /// Row `row`'s value of column `column` (positions in the list given to
    /// [`ParquetFile::read`]).
    #[inline]
    pub fn value(&self, column: usize, row: usize) -> Value<'_> {
        match self.columns.get(column) {
            Some(c) => c.value(row),
            None => Value::Null,
        }
    }
}

/// The decoded values of one column for a batch.
#[derive(Debug)]
struct ColumnBatch {
    name: String,
    ty: ColumnType,
    nullable: bool,
    values: Values,
    /// Definition levels: 1 for a value, 0 for a null (nullable columns only).
    defs: Vec<i16>,
    /// Where each row's value is in `values`, or [`NULL`] (nullable columns only).
    slots: Vec<u32>,
}

/// The slot of a null.
const NULL: u32 = u32::MAX;

/// Decoded values, as the physical type stores them.
#[derive(Debug)]
enum Values {
    Bool(Vec<bool>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    I96(Vec<Int96>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<ByteArray>),
}

impl ColumnBatch {
    fn new(c: &FoundColumn) -> ColumnBatch {
        let values = match c.ty {
            ColumnType::Bool => Values::Bool(Vec::new()),
            ColumnType::Int { bits: 64, .. } | ColumnType::UInt64 => Values::I64(Vec::new()),
            ColumnType::Timestamp { .. } => Values::I64(Vec::new()),
            ColumnType::Int { .. } | ColumnType::Date => Values::I32(Vec::new()),
            ColumnType::Int96 => Values::I96(Vec::new()),
            ColumnType::Float => Values::F32(Vec::new()),
            ColumnType::Double => Values::F64(Vec::new()),
            ColumnType::Text => Values::Bytes(Vec::new()),
        };
        ColumnBatch {
            name: c.name.clone(),
            ty: c.ty,
            nullable: c.nullable,
            values,
            defs: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Reads the next `rows` rows from `reader`; returns how many it read.
    fn fill(&mut self, reader: &mut ColumnReader, rows: usize) -> parquet::errors::Result<usize> {
        let ColumnBatch {
            nullable,
            values,
            defs,
            slots,
            ..
        } = self;
        defs.clear();
        let levels = if *nullable { Some(&mut *defs) } else { None };
        let (read, _, _) = match (reader, values) {
            (ColumnReader::BoolColumnReader(r), Values::Bool(v)) => {
                v.clear();
                r.read_records(rows, levels, None, v)?
            }
            (ColumnReader::Int32ColumnReader(r), Values::I32(v)) => {
                v.clear();
                r.read_records(rows, levels, None, v)?
            }
            (ColumnReader::Int64ColumnReader(r), Values::I64(v)) => {
                v.clear();
                r.read_records(rows, levels, None, v)?
            }
            (ColumnReader::Int96ColumnReader(r), Values::I96(v)) => {
                v.clear();
                r.read_records(rows, levels, None, v)?
            }
            (ColumnReader::FloatColumnReader(r), Values::F32(v)) => {
                v.clear();
                r.read_records(rows, levels, None, v)?
            }
            (ColumnReader::DoubleColumnReader(r), Values::F64(v)) => {
                v.clear();
                r.read_records(rows, levels, None, v)?
            }
            (ColumnReader::ByteArrayColumnReader(r), Values::Bytes(v)) => {
                v.clear();
                r.read_records(rows, levels, None, v)?
            }
            _ => {
                return Err(parquet::errors::ParquetError::General(
                    "the column's physical type changed between row groups".into(),
                ))
            }
        };
        if *nullable {
            slots.clear();
            let mut next = 0u32;
            for &d in defs.iter() {
                if d > 0 {
                    slots.push(next);
                    next += 1;
                } else {
                    slots.push(NULL);
                }
            }
        }
        Ok(read)
    }

    #[inline]
    fn value(&self, row: usize) -> Value<'_> {
        let i = if self.nullable {
            match self.slots.get(row) {
                Some(&NULL) | None => return Value::Null,
                Some(&i) => i as usize,
            }
        } else {
            row
        };
        fn at(v: Option<Value<'_>>) -> Value<'_> {
            v.unwrap_or(Value::Null)
        }
        match &self.values {
            Values::Bool(v) => at(v.get(i).map(|&b| Value::Bool(b))),
            Values::I32(v) => at(v.get(i).map(|&x| match self.ty {
                ColumnType::Date => Value::Millis(i64::from(x) * DAY_MS),
                // Unsigned types are stored in the same bits as signed ones.
                ColumnType::Int { signed: false, .. } => Value::Int(i64::from(x as u32)),
                _ => Value::Int(i64::from(x)),
            })),
            Values::I64(v) => at(v.get(i).map(|&x| match self.ty {
                ColumnType::Timestamp { unit, .. } => Value::Millis(match unit {
                    Unit::Millis => x,
                    Unit::Micros => x.div_euclid(1_000),
                    Unit::Nanos => x.div_euclid(1_000_000),
                }),
                ColumnType::UInt64 if x < 0 => Value::UInt(x as u64),
                _ => Value::Int(x),
            })),
            Values::I96(v) => at(v.get(i).map(|x| Value::Millis(x.to_millis()))),
            Values::F32(v) => at(v.get(i).map(|&x| Value::Float(x))),
            Values::F64(v) => at(v.get(i).map(|&x| Value::Double(x))),
            Values::Bytes(v) => at(v.get(i).map(|x| Value::Text(x.data()))),
        }
    }
}

/// One value of a Parquet column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A null.
    Null,
    /// A bool.
    Bool(bool),
    /// An integer that fits an `i64`.
    Int(i64),
    /// A `uint64` above `i64::MAX`.
    UInt(u64),
    /// A 32-bit float.
    Float(f32),
    /// A 64-bit float.
    Double(f64),
    /// The bytes of a text value (UTF-8 unless the file is damaged).
    Text(&'a [u8]),
    /// A timestamp or a date, in epoch milliseconds.
    Millis(i64),
}

impl<'a> Value<'a> {
    /// The value as its CSV twin's cell, for training: a null is an empty cell.
    pub fn field(&self) -> Result<Field<'a>, RecordError> {
        Ok(match *self {
            Value::Null => Field::Text(""),
            Value::Bool(b) => Field::Bool(b),
            Value::Int(i) => Field::Int(i),
            Value::UInt(u) => Field::UInt(u),
            Value::Float(x) => Field::Float(decimal(x)),
            Value::Double(x) => Field::Float(x),
            Value::Text(bytes) => Field::Text(crate::train::history::text(bytes)?),
            Value::Millis(ms) => Field::Int(ms),
        })
    }

    /// The value as its JSON twin's, for scoring: a null is JSON `null`.
    pub fn slot(&self) -> Slot<'static> {
        match *self {
            Value::Null => Slot::Json(Json::Null),
            Value::Bool(b) => Slot::Json(Json::Bool(b)),
            Value::Int(i) | Value::Millis(i) => Slot::Json(Json::from(i)),
            Value::UInt(u) => Slot::Json(Json::from(u)),
            Value::Float(x) => Slot::Float(decimal(x)),
            Value::Double(x) => Slot::Float(x),
            Value::Text(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) => Slot::Json(Json::String(s.to_owned())),
                Err(_) => Slot::Other("text that is not UTF-8"),
            },
        }
    }
}

/// A 32-bit float as the double of the shortest decimal that prints it, which is what its CSV
/// cell or JSON number holds (pandas writes `0.1` for the float32 0.1, whose exact double is
/// 0.10000000149011612).
fn decimal(x: f32) -> f64 {
    use std::io::Write as _;
    if !x.is_finite() {
        return f64::from(x);
    }
    let mut buf = [0u8; 32];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    if write!(cursor, "{x:e}").is_err() {
        return f64::from(x);
    }
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::from(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RecordErrorKind;
    use parquet::schema::parser::parse_message_type;
    use parquet::schema::types::SchemaDescriptor;
    use std::sync::Arc;

    /// The types of every column of a schema in Parquet's text form.
    fn types(message: &str) -> Vec<Result<ColumnType, String>> {
        let schema = SchemaDescriptor::new(Arc::new(parse_message_type(message).unwrap()));
        schema.columns().iter().map(|c| ColumnType::of(c)).collect()
    }

    #[test]
    fn pyarrow_types_map_to_the_column_types_their_features_read() {
        let got = types(
            "message m {
                optional boolean b;
                optional int32 i8 (INTEGER(8, true));
                optional int32 u16 (INTEGER(16, false));
                optional int32 u32 (INTEGER(32, false));
                optional int64 i64 (INTEGER(64, true));
                optional int64 u64 (INTEGER(64, false));
                optional int32 plain32;
                optional int64 plain64;
                optional float f;
                optional double d;
                optional binary s (STRING);
                optional binary e (ENUM);
                optional binary legacy (UTF8);
                optional int64 ts_ns (TIMESTAMP(NANOS, true));
                optional int64 ts_us (TIMESTAMP(MICROS, false));
                optional int64 ts_legacy (TIMESTAMP_MILLIS);
                optional int96 ts96;
                optional int32 day (DATE);
                optional int32 u8_legacy (UINT_8);
            }",
        );
        let int = |bits, signed| Ok(ColumnType::Int { bits, signed });
        assert_eq!(
            got,
            vec![
                Ok(ColumnType::Bool),
                int(8, true),
                int(16, false),
                int(32, false),
                int(64, true),
                Ok(ColumnType::UInt64),
                int(32, true),
                int(64, true),
                Ok(ColumnType::Float),
                Ok(ColumnType::Double),
                Ok(ColumnType::Text),
                Ok(ColumnType::Text),
                Ok(ColumnType::Text),
                Ok(ColumnType::Timestamp {
                    unit: Unit::Nanos,
                    utc: true
                }),
                Ok(ColumnType::Timestamp {
                    unit: Unit::Micros,
                    utc: false
                }),
                Ok(ColumnType::Timestamp {
                    unit: Unit::Millis,
                    utc: true
                }),
                Ok(ColumnType::Int96),
                Ok(ColumnType::Date),
                int(8, false),
            ]
        );
    }

    #[test]
    fn types_no_feature_reads_are_named_for_the_message() {
        let got = types(
            "message m {
                optional binary raw;
                optional int64 price (DECIMAL(10, 2));
                optional fixed_len_byte_array(16) id (UUID);
                optional int64 t (TIME(MICROS, true));
            }",
        );
        assert_eq!(
            got,
            vec![
                Err("binary".to_owned()),
                Err("decimal(10, 2)".to_owned()),
                Err("uuid".to_owned()),
                Err("time of day".to_owned()),
            ]
        );
    }

    #[test]
    fn each_use_accepts_the_types_its_csv_and_json_twins_can_hold() {
        use ColumnType as T;
        let int = T::Int {
            bits: 32,
            signed: true,
        };
        let ts = T::Timestamp {
            unit: Unit::Millis,
            utc: true,
        };
        assert!(Use::Number.accepts(int) && Use::Number.accepts(T::Float));
        assert!(!Use::Number.accepts(T::Text), "a string price is refused");
        assert!(!Use::Number.accepts(T::Bool) && !Use::Number.accepts(ts));
        assert!(Use::Id.accepts(T::Text) && Use::Id.accepts(T::UInt64));
        assert!(!Use::Id.accepts(T::Double), "a float is no partition id");
        assert!(Use::Flag.accepts(T::Bool) && Use::Flag.accepts(int));
        assert!(Use::Category.accepts(T::Bool) && !Use::Category.accepts(T::Double));
        assert!(Use::Time.accepts(ts) && Use::Time.accepts(T::Date) && Use::Time.accepts(T::Text));
        assert!(!Use::Time.accepts(T::Double));
    }

    #[test]
    fn values_read_as_their_csv_cells_and_json_values() {
        // Integers: as the CSV cell "3" and the JSON 3.
        let v = Value::Int(3);
        assert_eq!(v.field().unwrap().number("x").unwrap(), 3.0);
        assert_eq!(v.field().unwrap().category("x").unwrap(), "3");
        assert_eq!(v.slot(), Slot::Json(serde_json::json!(3)));
        assert!(Value::Int(1).field().unwrap().boolean("x").unwrap());
        let e = Value::Int(2).field().unwrap().boolean("x").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::WrongType);
        // A bool is no number, in CSV ("true") as in JSON (true).
        let e = Value::Bool(true).field().unwrap().number("x").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::WrongType);
        // A null is an empty cell: missing.
        assert!(Value::Null.field().unwrap().is_missing());
        // Text is a CSV cell: trimmed, and empty text is missing as an empty cell is.
        assert_eq!(
            Value::Text(b" north ")
                .field()
                .unwrap()
                .category("x")
                .unwrap(),
            "north"
        );
        assert!(Value::Text(b"").field().unwrap().is_missing());
        let e = Value::Text(&[0xff, 0xfe]).field().unwrap_err();
        assert!(e.message.contains("UTF-8"));
        // A float32 is the decimal it prints as, as pandas writes it to CSV.
        assert_eq!(
            Value::Float(0.1).field().unwrap().number("x").unwrap(),
            Field::Text("0.1").number("x").unwrap()
        );
        assert_eq!(decimal(3.4028235e38), 3.4028235e38);
        assert_eq!(decimal(1e-45), 1e-45);
        assert!(decimal(f32::NAN).is_nan());
        // A uint64 above i64::MAX is still a number and a label.
        let big = Value::UInt(u64::MAX);
        assert_eq!(big.field().unwrap().number("x").unwrap(), u64::MAX as f64);
        assert_eq!(
            big.field().unwrap().category("x").unwrap(),
            u64::MAX.to_string()
        );
    }

    /// A column batch of one timestamp value stored as `raw` in `ty`.
    fn millis(ty: ColumnType, raw: i64) -> Value<'static> {
        let batch = ColumnBatch {
            name: "ts".into(),
            ty,
            nullable: false,
            values: Values::I64(vec![raw]),
            defs: Vec::new(),
            slots: Vec::new(),
        };
        match batch.value(0) {
            Value::Millis(ms) => Value::Millis(ms),
            other => panic!("not a timestamp: {other:?}"),
        }
    }

    #[test]
    fn a_timestamp_in_any_unit_gives_the_utc_parts_of_its_rfc3339_twin() {
        // 2024-03-05T14:30:00.123456789+02:00 = 12:30 UTC, a Tuesday in March.
        let csv = Field::Text("2024-03-05T14:30:00.123456789+02:00")
            .timestamp_ms("ts")
            .unwrap();
        let ns = 1_709_641_800_123_456_789i64;
        for (unit, raw) in [
            (Unit::Nanos, ns),
            (Unit::Micros, ns / 1_000),
            (Unit::Millis, ns / 1_000_000),
        ] {
            let v = millis(ColumnType::Timestamp { unit, utc: true }, raw);
            let ms = v.field().unwrap().timestamp_ms("ts").unwrap();
            assert_eq!(ms, csv, "{unit:?}");
            let parts = crate::field::utc_parts(ms);
            assert_eq!((parts.hour, parts.weekday, parts.month0), (12, 1, 2));
        }
        // Before 1970 the fraction floors, as chrono's timestamp_millis does.
        let csv = Field::Text("1969-12-31T23:59:59.9995Z")
            .timestamp_ms("ts")
            .unwrap();
        let v = millis(
            ColumnType::Timestamp {
                unit: Unit::Micros,
                utc: true,
            },
            -500,
        );
        assert_eq!(v.field().unwrap().timestamp_ms("ts").unwrap(), csv);
        // Out of range as text is out of range here too.
        let v = millis(
            ColumnType::Timestamp {
                unit: Unit::Millis,
                utc: true,
            },
            8_000_000_000_000,
        );
        let e = v.field().unwrap().timestamp_ms("ts").unwrap_err();
        assert_eq!(e.kind, RecordErrorKind::TimestampOutOfRange);
    }

    #[test]
    fn a_date_is_midnight_utc_and_int96_is_an_instant() {
        let batch = ColumnBatch {
            name: "day".into(),
            ty: ColumnType::Date,
            nullable: true,
            values: Values::I32(vec![19_787]),
            defs: vec![0, 1],
            slots: vec![NULL, 0],
        };
        assert_eq!(batch.value(0), Value::Null);
        let midnight = Field::Text("2024-03-05T00:00:00Z")
            .timestamp_ms("d")
            .unwrap();
        assert_eq!(batch.value(1), Value::Millis(midnight));
        let mut x = Int96::new();
        // Julian day 2_460_375 is 2024-03-05; 12:30 in nanoseconds of the day.
        let nanos: u64 = (12 * 3600 + 30 * 60) * 1_000_000_000;
        x.set_data(nanos as u32, (nanos >> 32) as u32, 2_460_375);
        let batch = ColumnBatch {
            name: "ts".into(),
            ty: ColumnType::Int96,
            nullable: false,
            values: Values::I96(vec![x]),
            defs: Vec::new(),
            slots: Vec::new(),
        };
        let twin = Field::Text("2024-03-05T12:30:00Z")
            .timestamp_ms("ts")
            .unwrap();
        assert_eq!(batch.value(0), Value::Millis(twin));
    }
}
