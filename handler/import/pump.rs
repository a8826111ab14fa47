//! The NDJSON pipeline: lines → `PUT` entries → batches of N → the FHIR server, with a window
//! of batches in flight (the FHIR client's adaptive limiter decides how many really run).
//! Results come back in file order, so a checkpoint after a result covers every line before it.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesOrdered;

use super::ndjson::{ChunkStream, LineReader, ParsedLine, parse_line};
use super::sender::{BatchOutcome, OutgoingEntry, RefusedEntry, send_batch};
use super::work::ImportError;
use crate::fhir::FhirClient;

/// What a finished batch covers, handed to the job in file order.
pub struct LinesDone {
    /// Byte offset just past the last line of the batch (the next line's start).
    pub next_offset: u64,
    /// Number (within the reader, plus the base) of the last line of the batch.
    pub last_line: i64,
    pub loaded: i64,
    /// Lines the server refused plus lines that were not valid resources.
    pub refused: Vec<RefusedEntry>,
}

/// Receives progress in file order; a job writes its checkpoint here.
#[async_trait]
pub trait LinesSink: Send {
    async fn lines_done(&mut self, done: LinesDone) -> Result<(), ImportError>;
}

pub struct PumpOptions {
    pub per_bundle: usize,
    /// Batches in flight at once for this part.
    pub window: usize,
    /// Added to the reader's line numbers (lines already done before a resume).
    pub line_base: i64,
    /// Lines up to this number were loaded before a resume of a stream that cannot seek.
    pub skip_through_line: i64,
}

pub async fn pump_lines<S: ChunkStream>(
    fhir: &FhirClient,
    reader: &mut LineReader<S>,
    options: &PumpOptions,
    sink: &mut dyn LinesSink,
) -> Result<(), ImportError> {
    let mut in_flight = FuturesOrdered::new();
    let mut entries: Vec<OutgoingEntry> = Vec::with_capacity(options.per_bundle);
    let mut invalid: Vec<RefusedEntry> = Vec::new();
    let mut last_offset = 0u64;
    let mut last_line = options.line_base;
    loop {
        let line = reader.next_line().await?;
        let finished = line.is_none();
        if let Some(line) = line {
            let number = options.line_base + line.number as i64;
            last_offset = line.offset + line.bytes.len() as u64 + 1;
            last_line = number;
            if number > options.skip_through_line {
                let parsed = if line.too_long {
                    Some(ParsedLine::Invalid(format!(
                        "the line is longer than {} bytes",
                        super::ndjson::MAX_LINE_BYTES
                    )))
                } else {
                    parse_line(&line.bytes)
                };
                match parsed {
                    Some(ParsedLine::Entry { target, json }) => entries.push(OutgoingEntry {
                        position: number,
                        target: Some(target),
                        json,
                    }),
                    Some(ParsedLine::Invalid(reason)) => invalid.push(RefusedEntry {
                        position: number,
                        target: None,
                        status: 0,
                        diagnostics: reason,
                    }),
                    None => {}
                }
            }
        }
        if entries.len() >= options.per_bundle
            || (finished && (!entries.is_empty() || !invalid.is_empty()))
        {
            let batch = std::mem::take(&mut entries);
            let bad = std::mem::take(&mut invalid);
            let (next_offset, line_no) = (last_offset, last_line);
            in_flight.push_back(async move {
                let outcome = if batch.is_empty() {
                    BatchOutcome::default()
                } else {
                    send_batch(fhir, batch).await?
                };
                let mut refused = bad;
                refused.extend(outcome.refused);
                Ok::<_, ImportError>(LinesDone {
                    next_offset,
                    last_line: line_no,
                    loaded: outcome.loaded,
                    refused,
                })
            });
        }
        while in_flight.len() >= options.window.max(1) || (finished && !in_flight.is_empty()) {
            let done = in_flight.next().await.expect("non-empty")?;
            sink.lines_done(done).await?;
        }
        if finished {
            return Ok(());
        }
    }
}
