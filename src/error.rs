//! The error types of the library.
//!
//! Two families: [`Error`] is what stops a command (a bad spec, a missing file, a broker that
//! cannot be reached) and maps to a process exit code; [`RecordError`] is what is wrong with one
//! input record, which never stops anything: training rejects the row, serving dead-letters the
//! event. Every message names its input and, where one exists, what the user can do about it.

use std::path::PathBuf;

/// An error that ends a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something that cannot work as given: a spec naming no valid feature, a
    /// column missing from a file's header, an empty file. Exit code 2.
    #[error("{0}")]
    Usage(String),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A bundle file is not a valid manymodel bundle.
    #[error("bundle {path}: {reason}")]
    Bundle {
        /// The bundle file (or `<control topic>` for bundles read from Kafka).
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A configuration file is invalid.
    #[error("{path}: {reason}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong, as the TOML parser or the validator said it.
        reason: String,
    },

    /// A record was rejected and `--strict` asked for that to be fatal.
    #[error("{location}: {error} (rerun without --strict to skip bad rows)")]
    Strict {
        /// File and line of the record.
        location: String,
        /// What was wrong with it.
        error: RecordError,
    },

    /// A Parquet input cannot be read as asked. Exit code 2.
    #[error(transparent)]
    Parquet(#[from] ParquetFileError),

    /// Kafka could not be set up or reached.
    #[error("kafka: {0}")]
    Kafka(String),

    /// An HTTP endpoint (a daemon's `/partitions`) could not be asked or answered badly.
    #[error("http: {0}")]
    Http(String),

    /// Something that should not happen did; the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The process exit code for this error: 2 for mistakes in what the user gave, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config { .. } | Error::Strict { .. } => 2,
            Error::Parquet(_) => 2,
            Error::Bundle { .. } => 2,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 2,
            _ => 1,
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<rdkafka::error::KafkaError> for Error {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        Error::Kafka(e.to_string())
    }
}

/// Why a Parquet file (a history or events) cannot be read as asked. Each names the file and,
/// where there is one, the column and the row.
#[derive(Debug, thiserror::Error)]
pub enum ParquetFileError {
    /// The footer cannot be read: not Parquet, or cut short.
    #[error("{}: not a Parquet file that can be read ({reason}); check that it was written completely (pyarrow.parquet.read_metadata reads the footer)", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What the Parquet reader said.
        reason: String,
    },
    /// Columns the command needs are not in the file.
    #[error("{}: there is no column {missing} (it has: {available}); name the columns as the spec does", path.display())]
    MissingColumns {
        /// The file.
        path: PathBuf,
        /// The columns missing, comma-separated.
        missing: String,
        /// The file's top-level columns, comma-separated.
        available: String,
    },
    /// A column's type cannot hold what the command reads from it.
    #[error("{}: column {column} has type {found}; expected {expected}: {fix}", path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The column.
        column: String,
        /// Its type, as pyarrow names it.
        found: String,
        /// What its use accepts.
        expected: &'static str,
        /// What the user can do.
        fix: String,
    },
    /// A column's data cannot be decoded.
    #[error("{}: column {column}, from row {row}: {reason}; the file is damaged: write it again", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The column being decoded.
        column: String,
        /// The first row (from 1) of the batch being decoded.
        row: u64,
        /// What the Parquet reader said.
        reason: String,
    },
}

/// Why bytes or parts are not a bundle that can serve.
///
/// Each variant is one reason a bundle from the control topic is rejected for (see
/// `control::rejection`), so the reason follows from where the error was made, never from
/// the wording of its message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not an Avro object container of `schemas/bundle.avsc` holding exactly one bundle.
    #[error("{0}")]
    Schema(String),
    /// A coefficient, a leaf value or a split threshold is NaN or infinite.
    #[error("{0}")]
    NotFinite(String),
    /// The spec and the models do not fit together: coefficient counts, duplicate partitions,
    /// an unusable spec, unknown kinds, malformed trees, a delta on the wrong base.
    #[error("{0}")]
    Spec(String),
}

impl BundleError {
    /// The same error, its sentence prefixed with `context` (e.g. `partition "A": `).
    pub fn within(self, context: &str) -> Self {
        match self {
            BundleError::Schema(m) => BundleError::Schema(format!("{context}{m}")),
            BundleError::NotFinite(m) => BundleError::NotFinite(format!("{context}{m}")),
            BundleError::Spec(m) => BundleError::Spec(format!("{context}{m}")),
        }
    }
}

/// The kind of a [`RecordError`], a short stable name used as the `error-kind` header of a dead
/// letter and as the `reason` label of the dead-letter counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordErrorKind {
    /// The payload is not JSON, or not a JSON object.
    InvalidJson,
    /// The record is bigger than the configured limit.
    Oversize,
    /// The partition column is absent.
    MissingKey,
    /// The partition column is null or empty.
    EmptyKey,
    /// The partition id is longer than `[pipeline] max_key_bytes`.
    OversizeKey,
    /// A feature column is absent or null.
    MissingFeature,
    /// A field has a type its feature cannot read (text where a number belongs, ...).
    WrongType,
    /// A number is NaN or infinite.
    NotFinite,
    /// A timestamp is not RFC 3339 text or epoch milliseconds.
    BadTimestamp,
    /// A timestamp outside 1900-01-01 .. 2200-01-01.
    TimestampOutOfRange,
    /// The partition has no model and `unknown_partition = "dlq"`.
    UnknownPartition,
    /// An Avro record does not start with its framing's magic bytes (0 for Confluent framing,
    /// C3 01 for single-object encoding).
    WrongMagicByte,
    /// An Avro record names a writer schema (a registry id or a fingerprint) that neither the
    /// schema registry nor `[input.schemas]` knows.
    UnknownSchema,
    /// The writer schema of an Avro record cannot be resolved against the reader schema by
    /// Avro's rules (a reader field without a default that the writer lacks, a type that does
    /// not promote).
    IncompatibleSchema,
    /// The Avro payload is truncated, has bytes left over, or is not Avro at all.
    InvalidAvro,
}

impl RecordErrorKind {
    /// The stable name, e.g. `missing_feature`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordErrorKind::InvalidJson => "invalid_json",
            RecordErrorKind::Oversize => "oversize",
            RecordErrorKind::MissingKey => "missing_key",
            RecordErrorKind::EmptyKey => "empty_key",
            RecordErrorKind::OversizeKey => "oversize_key",
            RecordErrorKind::MissingFeature => "missing_feature",
            RecordErrorKind::WrongType => "wrong_type",
            RecordErrorKind::NotFinite => "not_finite",
            RecordErrorKind::BadTimestamp => "bad_timestamp",
            RecordErrorKind::TimestampOutOfRange => "timestamp_out_of_range",
            RecordErrorKind::UnknownPartition => "unknown_partition",
            RecordErrorKind::WrongMagicByte => "wrong_magic_byte",
            RecordErrorKind::UnknownSchema => "unknown_schema",
            RecordErrorKind::IncompatibleSchema => "incompatible_schema",
            RecordErrorKind::InvalidAvro => "invalid_avro",
        }
    }

    /// Every kind, for describing metrics up front.
    pub const ALL: [RecordErrorKind; 15] = [
        RecordErrorKind::InvalidJson,
        RecordErrorKind::Oversize,
        RecordErrorKind::MissingKey,
        RecordErrorKind::EmptyKey,
        RecordErrorKind::OversizeKey,
        RecordErrorKind::MissingFeature,
        RecordErrorKind::WrongType,
        RecordErrorKind::NotFinite,
        RecordErrorKind::BadTimestamp,
        RecordErrorKind::TimestampOutOfRange,
        RecordErrorKind::UnknownPartition,
        RecordErrorKind::WrongMagicByte,
        RecordErrorKind::UnknownSchema,
        RecordErrorKind::IncompatibleSchema,
        RecordErrorKind::InvalidAvro,
    ];
}

/// What is wrong with one record (a history row or an event).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RecordError {
    /// The class of problem, for headers and metrics.
    pub kind: RecordErrorKind,
    /// A sentence naming the field and the value at fault.
    pub message: String,
}

impl RecordError {
    /// A new record error.
    pub fn new(kind: RecordErrorKind, message: impl Into<String>) -> Self {
        RecordError {
            kind,
            message: message.into(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
