//! `manymodel predict`: offline batch scoring of a file of events through the serving code
//! ([`crate::codec`] and [`score`]), one prediction per scorable event.
//!
//! `--format json` (the default) reads JSONL and writes JSONL; `--format avro` reads an Avro
//! object container file (its writer schema resolved against `--schema`, or read as written)
//! and writes one of predictions (`schemas/prediction.avsc`).
//!
//! A record that cannot be scored is reported on stderr with its line or record number and
//! reason, and counted; it never stops the run.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use crate::codec::avro::{Plan, ReaderSchema};
use crate::codec::container::{self, ContainerWriter};
use crate::codec::framing::Framing;
use crate::codec::json::decode_json;
use crate::codec::{Format, PredictionEncoder, PREDICTION_AVSC};
use crate::error::{Error, RecordError, Result};
use crate::event::Event;
use crate::model::bundle::Bundle;
use crate::prediction::write_json;
use crate::scoring::ModelSource;
use crate::scoring::{score, UnknownPartition};

/// What `predict` was asked to do.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The bundle file.
    pub bundle: PathBuf,
    /// The events: one JSON event per line, or an Avro container file.
    pub input: PathBuf,
    /// Where the predictions go, in the same format.
    pub output: PathBuf,
    /// What to do with partitions that have no model.
    pub unknown_partition: UnknownPartition,
    /// The format of input and output.
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
    let mut tally = Tally {
        report: PredictReport::default(),
        errors,
        input: &opts.input,
    };
    match opts.format {
        Format::Json => predict_json(&bundle, opts, &mut tally)?,
        Format::Avro => predict_avro(&bundle, opts, &mut tally)?,
    }
    let report = tally.report;
    let unit = match opts.format {
        Format::Json => "lines",
        Format::Avro => "records",
    };
    if report.rejected > SHOWN_REJECTIONS {
        let _ = writeln!(
            tally.errors,
            "... and {} more rejected {unit}",
            report.rejected - SHOWN_REJECTIONS
        );
    }
    if report.predicted == 0 {
        let what = match opts.format {
            Format::Json => "a JSONL file of events",
            Format::Avro => "an Avro container file of events",
        };
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

fn predict_json(bundle: &Bundle, opts: &PredictOptions, tally: &mut Tally<'_>) -> Result<()> {
    let input = std::fs::File::open(&opts.input).map_err(|e| Error::io(&opts.input, e))?;
    let output = std::fs::File::create(&opts.output).map_err(|e| Error::io(&opts.output, e))?;
    let mut out = BufWriter::new(output);
    let mut buf = Vec::with_capacity(256);
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
            buf.clear();
            write_json(&mut buf, column, &event, value, &bundle.version, source);
            buf.push(b'\n');
            out.write_all(&buf)
                .map_err(|e| Error::io(&opts.output, e))?;
        }
    }
    out.flush().map_err(|e| Error::io(&opts.output, e))
}

fn predict_avro(bundle: &Bundle, opts: &PredictOptions, tally: &mut Tally<'_>) -> Result<()> {
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
    let schema = apache_avro::Schema::parse_str(PREDICTION_AVSC)
        .map_err(|e| Error::Internal(format!("schemas/prediction.avsc: {e}")))?;
    let encoder = PredictionEncoder::avro(schema.clone(), Framing::Raw, 0, column)
        .map_err(|e| Error::Usage(format!("schemas/prediction.avsc: {e}")))?;
    let mut out = ContainerWriter::new(&schema);
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
                encoder.write(out.datum(), column, &event, value, &bundle.version, source);
                out.end_datum();
            }
        }
    }
    std::fs::write(&opts.output, out.finish()).map_err(|e| Error::io(&opts.output, e))
}
