//! `manymodel predict`: offline batch scoring of a file of events through the serving code
//! ([`crate::codec`] and [`score`]), one prediction per scorable event.
//!
//! `--format json` (the default) reads JSONL and writes JSONL; `--format avro` reads an Avro
//! object container file (its writer schema resolved against `--schema`, or read as written)
//! and writes one of predictions (`schemas/prediction.avsc`). A file named `*.parquet` is
//! Parquet whatever `--format` says, on either side: events are read by column name
//! ([`crate::codec::parquet`], each value as its JSON twin) and predictions written with the
//! columns of [`crate::prediction::parquet`]; the other side keeps `--format`.
//!
//! A record that cannot be scored is reported on stderr with its line, record or row number
//! and reason, and counted; it never stops the run.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use crate::codec::avro::{Plan, ReaderSchema};
use crate::codec::container::{self, ContainerWriter};
use crate::codec::framing::Framing;
use crate::codec::json::decode_json;
use crate::codec::parquet::{is_parquet, ParquetFile, Use};
use crate::codec::{Format, PredictionEncoder, PREDICTION_AVSC};
use crate::error::{Error, RecordError, Result};
use crate::event::{assemble, slot_count, Event, Slot};
use crate::model::bundle::Bundle;
use crate::prediction::parquet::ParquetPredictions;
use crate::prediction::write_json;
use crate::scoring::ModelSource;
use crate::scoring::{score, UnknownPartition};

/// What `predict` was asked to do.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The bundle file.
    pub bundle: PathBuf,
    /// The events: one JSON event per line, an Avro container file, or a Parquet file
    /// (`*.parquet`).
    pub input: PathBuf,
    /// Where the predictions go: in `format`, or Parquet when named `*.parquet`.
    pub output: PathBuf,
    /// What to do with partitions that have no model.
    pub unknown_partition: UnknownPartition,
    /// The format of input and output, where neither is a `*.parquet` file.
    pub format: Format,
    /// Avro: the reader schema the file's writer schema is resolved against; `None` reads
    /// the file as written.
    pub schema: Option<PathBuf>,
}

/// Rejected records described one by one; the rest are only counted.
const SHOWN_REJECTIONS: u64 = 10;

/// Counts of a predict run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PredictReport {
    /// Predictions written.
    pub predicted: u64,
    /// Of which by the fallback model.
    pub fallback: u64,
    /// Records that could not be scored.
    pub rejected: u64,
    /// What the input's records are: `lines`, `records` (Avro) or `rows` (Parquet).
    pub unit: &'static str,
}

/// Runs offline scoring; rejected records are described on `errors`.
pub fn run(opts: &PredictOptions, errors: &mut dyn Write) -> Result<PredictReport> {
    let bundle = Bundle::read(&opts.bundle)?;
    if crate::model::delta::is_delta(&bundle) {
        return Err(Error::Usage(format!(
            "{} is a delta of {}: it holds only the partitions it replaces; score with a full bundle (or publish the delta to a daemon serving its base)",
            opts.bundle.display(),
            bundle.base_version.as_deref().unwrap_or("?")
        )));
    }
    let parquet_input = is_parquet(&opts.input);
    if parquet_input && opts.schema.is_some() {
        return Err(Error::Usage(format!(
            "--schema is for Avro input; {} is Parquet, read by column name",
            opts.input.display()
        )));
    }
    let (unit, what) = match (parquet_input, opts.format) {
        (true, _) => ("rows", "a Parquet file of events"),
        (false, Format::Json) => ("lines", "a JSONL file of events"),
        (false, Format::Avro) => ("records", "an Avro container file of events"),
    };
    let mut tally = Tally {
        report: PredictReport {
            unit,
            ..PredictReport::default()
        },
        errors,
        input: &opts.input,
    };
    // A missing input is reported before the output is created, as it always was.
    std::fs::metadata(&opts.input).map_err(|e| Error::io(&opts.input, e))?;
    let mut sink = Sink::open(&bundle, opts)?;
    match (parquet_input, opts.format) {
        (true, _) => predict_parquet(&bundle, opts, &mut tally, &mut sink)?,
        (false, Format::Json) => predict_json(&bundle, opts, &mut tally, &mut sink)?,
        (false, Format::Avro) => predict_avro(&bundle, opts, &mut tally, &mut sink)?,
    }
    sink.finish(&opts.output)?;
    let report = tally.report;
    if report.rejected > SHOWN_REJECTIONS {
        let _ = writeln!(
            tally.errors,
            "... and {} more rejected {unit}",
            report.rejected - SHOWN_REJECTIONS
        );
    }
    if report.predicted == 0 {
        return Err(Error::Usage(if report.rejected == 0 {
            format!(
                "{} holds no events: it needs to be {what}",
                opts.input.display()
            )
        } else {
            format!(
                "none of the {} {unit} of {} could be scored; is it {what} with {:?} and the features?",
                report.rejected,
                opts.input.display(),
                bundle.spec.partition_column
            )
        }));
    }
    Ok(report)
}

/// Where predictions go: a JSONL file, an Avro container file, or a Parquet file.
enum Sink {
    Json {
        out: BufWriter<std::fs::File>,
        buf: Vec<u8>,
    },
    Avro {
        out: ContainerWriter,
        encoder: PredictionEncoder,
    },
    Parquet(Box<ParquetPredictions>),
}

impl Sink {
    /// Opens the output of `opts`: Parquet when named `*.parquet`, else in `opts.format`.
    fn open(bundle: &Bundle, opts: &PredictOptions) -> Result<Sink> {
        let column = &bundle.spec.partition_column;
        if is_parquet(&opts.output) {
            return Ok(Sink::Parquet(Box::new(ParquetPredictions::create(
                &opts.output,
                column,
                &bundle.version,
            )?)));
        }
        Ok(match opts.format {
            Format::Json => {
                let output =
                    std::fs::File::create(&opts.output).map_err(|e| Error::io(&opts.output, e))?;
                Sink::Json {
                    out: BufWriter::new(output),
                    buf: Vec::with_capacity(256),
                }
            }
            Format::Avro => {
                let schema = apache_avro::Schema::parse_str(PREDICTION_AVSC)
                    .map_err(|e| Error::Internal(format!("schemas/prediction.avsc: {e}")))?;
                let encoder = PredictionEncoder::avro(schema.clone(), Framing::Raw, 0, column)
                    .map_err(|e| Error::Usage(format!("schemas/prediction.avsc: {e}")))?;
                Sink::Avro {
                    out: ContainerWriter::new(&schema),
                    encoder,
                }
            }
        })
    }

    /// Writes one prediction.
    fn write(
        &mut self,
        bundle: &Bundle,
        event: &Event,
        value: f64,
        source: ModelSource,
        path: &std::path::Path,
    ) -> Result<()> {
        let column = &bundle.spec.partition_column;
        match self {
            Sink::Json { out, buf } => {
                buf.clear();
                write_json(buf, column, event, value, &bundle.version, source);
                buf.push(b'\n');
                out.write_all(buf).map_err(|e| Error::io(path, e))
            }
            Sink::Avro { out, encoder } => {
                encoder.write(out.datum(), column, event, value, &bundle.version, source);
                out.end_datum();
                Ok(())
            }
            Sink::Parquet(out) => out.write(event, value, source),
        }
    }

    /// Finishes the file at `path`.
    fn finish(self, path: &std::path::Path) -> Result<()> {
        match self {
            Sink::Json { mut out, .. } => out.flush().map_err(|e| Error::io(path, e)),
            Sink::Avro { out, .. } => {
                std::fs::write(path, out.finish()).map_err(|e| Error::io(path, e))
            }
            Sink::Parquet(out) => out.finish(),
        }
    }
}

/// Counts and reports records.
struct Tally<'a> {
    report: PredictReport,
    errors: &'a mut dyn Write,
    input: &'a std::path::Path,
}

impl Tally<'_> {
    /// Scores a decoded record; `Some` with what to write when it scored.
    fn score(
        &mut self,
        bundle: &Bundle,
        policy: UnknownPartition,
        decoded: std::result::Result<Event, RecordError>,
        location: impl FnOnce() -> String,
    ) -> Option<(Event, f64, ModelSource)> {
        match decoded.and_then(|ev| score(bundle, &ev, policy).map(|s| (ev, s))) {
            Ok((event, (value, source))) => {
                self.report.predicted += 1;
                self.report.fallback += u64::from(source == ModelSource::Fallback);
                Some((event, value, source))
            }
            Err(e) => {
                self.report.rejected += 1;
                if self.report.rejected <= SHOWN_REJECTIONS {
                    let _ = writeln!(
                        self.errors,
                        "{} {}: {} ({})",
                        self.input.display(),
                        location(),
                        e,
                        e.kind.as_str()
                    );
                }
                None
            }
        }
    }
}

fn predict_json(
    bundle: &Bundle,
    opts: &PredictOptions,
    tally: &mut Tally<'_>,
    sink: &mut Sink,
) -> Result<()> {
    let input = std::fs::File::open(&opts.input).map_err(|e| Error::io(&opts.input, e))?;
    let column = &bundle.spec.partition_column;
    for (i, line) in std::io::BufReader::new(input).split(b'\n').enumerate() {
        let line = line.map_err(|e| Error::io(&opts.input, e))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let decoded = decode_json(line, column, bundle.encoder());
        let location = || format!("line {}", i + 1);
        if let Some((event, value, source)) =
            tally.score(bundle, opts.unknown_partition, decoded, location)
        {
            sink.write(bundle, &event, value, source, &opts.output)?;
        }
    }
    Ok(())
}

fn predict_avro(
    bundle: &Bundle,
    opts: &PredictOptions,
    tally: &mut Tally<'_>,
    sink: &mut Sink,
) -> Result<()> {
    let bytes = std::fs::read(&opts.input).map_err(|e| Error::io(&opts.input, e))?;
    let usage = |e: String| Error::Usage(format!("{}: {e}", opts.input.display()));
    let file = container::read(&bytes).map_err(usage)?;
    let reader = match &opts.schema {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            ReaderSchema::parse(&text)
                .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?
        }
        None => ReaderSchema::parse(&file.schema.canonical_form()).map_err(usage)?,
    };
    if let Some(why) = crate::codec::check_reader(&reader, &bundle.spec) {
        return Err(usage(why));
    }
    let plan = Plan::new(&file.schema, &reader).map_err(|e| {
        usage(format!(
            "its writer schema cannot be read with the reader schema: {e}"
        ))
    })?;
    let column = &bundle.spec.partition_column;
    let mut n = 0u64;
    for (count, data) in &file.blocks {
        let mut rest = &data[..];
        for _ in 0..*count {
            n += 1;
            // A datum whose length cannot be told ends the block: nothing after it can be found.
            let len = match plan.datum_len(rest) {
                Ok(len) => len,
                Err(e) => {
                    tally.score(bundle, opts.unknown_partition, Err(e), || {
                        format!("record {n}")
                    });
                    break;
                }
            };
            let (datum, next) = rest.split_at(len);
            rest = next;
            let decoded = plan.decode(datum, column, bundle.encoder());
            if let Some((event, value, source)) =
                tally.score(bundle, opts.unknown_partition, decoded, || {
                    format!("record {n}")
                })
            {
                sink.write(bundle, &event, value, source, &opts.output)?;
            }
        }
    }
    Ok(())
}

/// Scores a Parquet file of events: the partition column, `event_id` when there is one and the
/// feature columns are read by name (a missing feature column is an error, except for a bundle
/// of tree ensembles, which reads it as missing in every event), each value as its JSON twin.
fn predict_parquet(
    bundle: &Bundle,
    opts: &PredictOptions,
    tally: &mut Tally<'_>,
    sink: &mut Sink,
) -> Result<()> {
    let file = ParquetFile::open(&opts.input)?;
    let encoder = bundle.encoder();
    let column = &bundle.spec.partition_column;
    let optional = encoder.takes_missing();
    let use_of = |name: &str| {
        bundle
            .spec
            .features
            .iter()
            .find(|f| f.column == name)
            .map_or(Use::Number, |f| Use::of_feature(f.kind))
    };
    // In the order of the event's slots: the key, event_id, then the encoder's columns.
    let mut wanted = vec![
        (column.as_str(), Use::Id, false),
        ("event_id", Use::Id, true),
    ];
    wanted.extend(
        encoder
            .columns()
            .iter()
            .map(|c| (c.as_str(), use_of(c), optional)),
    );
    // A column two features read differently must suit both.
    for f in &bundle.spec.features {
        file.columns(&[(f.column.as_str(), Use::of_feature(f.kind), true)])?;
    }
    let found = file.columns(&wanted)?;
    let mut slot_of = Vec::new();
    let mut columns = Vec::new();
    for (slot, c) in found.into_iter().enumerate() {
        if let Some(c) = c {
            slot_of.push(slot);
            columns.push(c);
        }
    }
    let mut slots = vec![Slot::Absent; slot_count(encoder)];
    file.read(&columns, |batch| {
        for row in 0..batch.rows {
            slots.fill(Slot::Absent);
            for (k, &slot) in slot_of.iter().enumerate() {
                slots[slot] = batch.value(k, row).slot();
            }
            let decoded = assemble(&mut slots, column, encoder, Vec::new());
            let n = batch.first_row + row as u64 + 1;
            if let Some((event, value, source)) =
                tally.score(bundle, opts.unknown_partition, decoded, || {
                    format!("row {n}")
                })
            {
                sink.write(bundle, &event, value, source, &opts.output)?;
            }
        }
        Ok(())
    })
}
