//! Predictions as a Parquet file: the fields of the JSON prediction record, one column each.
//!
//! | column | type |
//! |---|---|
//! | `event_id` | string, null when the event had none (a non-text id as its JSON text) |
//! | the partition column | string: the partition id (`7` for the integer 7), as in Avro |
//! | `prediction` | double |
//! | `model_version` | string |
//! | `model` | string: `partition` or `fallback` |
//!
//! Rows are buffered by row group ([`ROW_GROUP`] rows) and written with Snappy compression,
//! pandas' default, so any Parquet reader opens the file.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::scoring::ModelSource;

/// Rows per row group.
pub const ROW_GROUP: usize = 128 * 1024;

/// The columns of a prediction file other than the partition column.
const FIELDS: [&str; 4] = ["event_id", "prediction", "model_version", "model"];

/// Writes predictions to a Parquet file.
pub struct ParquetPredictions {
    path: PathBuf,
    writer: SerializedFileWriter<BufWriter<File>>,
    version: ByteArray,
    event_id: Vec<ByteArray>,
    /// 1 where the row has an `event_id`, 0 where it is null.
    event_id_defs: Vec<i16>,
    partition: Vec<ByteArray>,
    prediction: Vec<f64>,
    model: Vec<ByteArray>,
}

impl std::fmt::Debug for ParquetPredictions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetPredictions")
            .field("path", &self.path)
            .field("buffered", &self.prediction.len())
            .finish_non_exhaustive()
    }
}

/// A failure to write the file, which is the disk's or the file system's.
fn written(path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

fn text_column(name: &str, repetition: Repetition) -> Result<Arc<Type>> {
    Type::primitive_type_builder(name, PhysicalType::BYTE_ARRAY)
        .with_repetition(repetition)
        .with_logical_type(Some(LogicalType::String))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Internal(format!("the prediction schema: {e}")))
}

impl ParquetPredictions {
    /// Creates `path` for predictions of a bundle keyed by `partition_column`, made by
    /// `version`.
    pub fn create(path: &Path, partition_column: &str, version: &str) -> Result<Self> {
        if FIELDS.contains(&partition_column) {
            return Err(Error::Usage(format!(
                "{}: the partition column is named {partition_column:?}, like a column of the prediction file; write JSONL or Avro predictions instead",
                path.display()
            )));
        }
        let prediction = Type::primitive_type_builder("prediction", PhysicalType::DOUBLE)
            .with_repetition(Repetition::REQUIRED)
            .build()
            .map(Arc::new)
            .map_err(|e| Error::Internal(format!("the prediction schema: {e}")))?;
        let schema = Type::group_type_builder("prediction")
            .with_fields(vec![
                text_column("event_id", Repetition::OPTIONAL)?,
                text_column(partition_column, Repetition::REQUIRED)?,
                prediction,
                text_column("model_version", Repetition::REQUIRED)?,
                text_column("model", Repetition::REQUIRED)?,
            ])
            .build()
            .map_err(|e| Error::Internal(format!("the prediction schema: {e}")))?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("manymodel {}", env!("CARGO_PKG_VERSION")))
            .build();
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let writer =
            SerializedFileWriter::new(BufWriter::new(file), Arc::new(schema), Arc::new(properties))
                .map_err(|e| written(path, e))?;
        Ok(ParquetPredictions {
            path: path.to_owned(),
            writer,
            version: ByteArray::from(version),
            event_id: Vec::new(),
            event_id_defs: Vec::new(),
            partition: Vec::new(),
            prediction: Vec::new(),
            model: Vec::new(),
        })
    }

    /// Adds the prediction of `event`.
    pub fn write(&mut self, event: &Event, prediction: f64, source: ModelSource) -> Result<()> {
        match &event.event_id {
            None => self.event_id_defs.push(0),
            Some(id) => {
                self.event_id_defs.push(1);
                self.event_id.push(ByteArray::from(id.to_text().as_ref()));
            }
        }
        self.partition
            .push(ByteArray::from(event.partition.as_str()));
        self.prediction.push(prediction);
        self.model.push(ByteArray::from(source.as_str()));
        if self.prediction.len() >= ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered rows as a row group.
    fn flush(&mut self) -> Result<()> {
        let rows = self.prediction.len();
        if rows == 0 {
            return Ok(());
        }
        let path = self.path.clone();
        let fail = |e: parquet::errors::ParquetError| written(&path, e);
        let versions = vec![self.version.clone(); rows];
        let mut group = self.writer.next_row_group().map_err(fail)?;
        let mut index = 0;
        while let Some(mut column) = group.next_column().map_err(fail)? {
            match index {
                0 => column.typed::<ByteArrayType>().write_batch(
                    &self.event_id,
                    Some(&self.event_id_defs),
                    None,
                ),
                1 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&self.partition, None, None),
                2 => column
                    .typed::<DoubleType>()
                    .write_batch(&self.prediction, None, None),
                3 => column
                    .typed::<ByteArrayType>()
                    .write_batch(&versions, None, None),
                _ => column
                    .typed::<ByteArrayType>()
                    .write_batch(&self.model, None, None),
            }
            .map_err(fail)?;
            column.close().map_err(fail)?;
            index += 1;
        }
        group.close().map_err(fail)?;
        self.event_id.clear();
        self.event_id_defs.clear();
        self.partition.clear();
        self.prediction.clear();
        self.model.clear();
        Ok(())
    }

    /// Writes what is buffered and the footer.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        let path = self.path.clone();
        let mut out = self.writer.into_inner().map_err(|e| written(&path, e))?;
        std::io::Write::flush(&mut out).map_err(|e| Error::io(&path, e))
    }
}
