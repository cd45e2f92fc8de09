//! `manymodel predict`: offline batch scoring of a JSONL file through the serving code
//! ([`decode_json`] and [`score`]), one prediction line per scorable event.
//!
//! A line that cannot be scored is reported on stderr with its line number and reason, and
//! counted; it never stops the run.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::event::decode_json;
use crate::model::bundle::{Bundle, ModelSource};
use crate::prediction::write_json;
use crate::scoring::{score, UnknownPartition};

/// What `predict` was asked to do.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// The bundle file.
    pub bundle: PathBuf,
    /// One JSON event per line.
    pub input: PathBuf,
    /// Where the predictions go, one JSON record per line.
    pub output: PathBuf,
    /// What to do with partitions that have no model.
    pub unknown_partition: UnknownPartition,
}

/// Rejected lines described one by one; the rest are only counted.
const SHOWN_REJECTIONS: u64 = 10;

/// Counts of a predict run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PredictReport {
    /// Predictions written.
    pub predicted: u64,
    /// Of which by the fallback model.
    pub fallback: u64,
    /// Lines that could not be scored.
    pub rejected: u64,
}

/// Runs offline scoring; rejected lines are described on `errors`.
pub fn run(opts: &PredictOptions, errors: &mut dyn Write) -> Result<PredictReport> {
    let bundle = Bundle::read(&opts.bundle)?;
    if crate::model::delta::is_delta(&bundle) {
        return Err(Error::Usage(format!(
            "{} is a delta of {}: it holds only the partitions it replaces; score with a full bundle (or publish the delta to a daemon serving its base)",
            opts.bundle.display(),
            bundle.base_version.as_deref().unwrap_or("?")
        )));
    }
    let input = std::fs::File::open(&opts.input).map_err(|e| Error::io(&opts.input, e))?;
    let output = std::fs::File::create(&opts.output).map_err(|e| Error::io(&opts.output, e))?;
    let mut out = BufWriter::new(output);
    let mut report = PredictReport::default();
    let mut buf = Vec::with_capacity(256);
    for (i, line) in std::io::BufReader::new(input).split(b'\n').enumerate() {
        let line = line.map_err(|e| Error::io(&opts.input, e))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let scored = decode_json(line, &bundle.spec.partition_column, bundle.encoder())
            .and_then(|ev| score(&bundle, &ev, opts.unknown_partition).map(|s| (ev, s)));
        match scored {
            Ok((event, (value, source))) => {
                buf.clear();
                write_json(
                    &mut buf,
                    &bundle.spec.partition_column,
                    &event,
                    value,
                    &bundle.version,
                    source,
                );
                buf.push(b'\n');
                out.write_all(&buf)
                    .map_err(|e| Error::io(&opts.output, e))?;
                report.predicted += 1;
                report.fallback += u64::from(source == ModelSource::Fallback);
            }
            Err(e) => {
                report.rejected += 1;
                if report.rejected <= SHOWN_REJECTIONS {
                    let _ = writeln!(
                        errors,
                        "{} line {}: {} ({})",
                        opts.input.display(),
                        i + 1,
                        e,
                        e.kind.as_str()
                    );
                }
            }
        }
    }
    out.flush().map_err(|e| Error::io(&opts.output, e))?;
    if report.rejected > SHOWN_REJECTIONS {
        let _ = writeln!(
            errors,
            "... and {} more rejected lines",
            report.rejected - SHOWN_REJECTIONS
        );
    }
    if report.predicted == 0 {
        return Err(Error::Usage(if report.rejected == 0 {
            format!(
                "{} holds no events: it needs one JSON event per line",
                opts.input.display()
            )
        } else {
            format!(
                "none of the {} lines of {} could be scored; is it a JSONL file of events with {:?} and the features?",
                report.rejected,
                opts.input.display(),
                bundle.spec.partition_column
            )
        }));
    }
    Ok(report)
}
