//! The NDJSON pipeline: lines → `PUT` entries → batches of at most N lines and M bytes → the
//! FHIR server, with a window of batches in flight, each sent by a task of its own (the FHIR
//! client's adaptive limiter decides how many really run, the batch budget how many bytes the
//! process holds). Results come back in file order, so a checkpoint after a result covers every
//! line before it.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio_util::task::AbortOnDropHandle;

use super::budget::MemoryBudget;
use super::fence::VersionFence;
use super::ndjson::{ParsedLine, parse_line};
use super::sender::{BatchOutcome, OutgoingEntry, RefusedEntry, send_batch};
use super::work::ImportError;
use crate::fhir::FhirClient;
use crate::storage::lines::{ChunkStream, LineReader};

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
    /// A batch is closed before its entries would pass this many bytes (a longer line goes
    /// alone).
    pub max_batch_bytes: usize,
    /// Batches in flight at once for this part.
    pub window: usize,
    /// Added to the reader's line numbers (lines already done before a resume).
    pub line_base: i64,
    /// Lines up to this number were loaded before a resume of a stream that cannot seek.
    pub skip_through_line: i64,
}

/// The batch being filled.
#[derive(Default)]
struct OpenBatch {
    entries: Vec<OutgoingEntry>,
    invalid: Vec<RefusedEntry>,
    bytes: usize,
    next_offset: u64,
    last_line: i64,
}

impl OpenBatch {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.invalid.is_empty()
    }

    /// Closes the batch; the next one starts where it ended.
    fn take(&mut self) -> OpenBatch {
        let next = OpenBatch {
            next_offset: self.next_offset,
            last_line: self.last_line,
            ..OpenBatch::default()
        };
        std::mem::replace(self, next)
    }
}

pub async fn pump_lines<S: ChunkStream>(
    fhir: &Arc<FhirClient>,
    budget: &MemoryBudget,
    fence: &Arc<VersionFence>,
    reader: &mut LineReader<S>,
    options: &PumpOptions,
    sink: &mut dyn LinesSink,
) -> Result<(), ImportError> {
    // Each batch is sent by a task of its own, so batches in flight progress while this one
    // reads lines; results still come back in file order.
    let mut in_flight: FuturesOrdered<AbortOnDropHandle<Result<LinesDone, ImportError>>> =
        FuturesOrdered::new();
    let mut batch = OpenBatch {
        last_line: options.line_base,
        ..OpenBatch::default()
    };
    let window = options.window.max(1);
    loop {
        let line = reader.next_line().await?;
        let finished = line.is_none();
        if let Some(line) = line {
            let number = options.line_base + line.number as i64;
            let parsed = if number <= options.skip_through_line {
                None
            } else if line.too_long {
                Some(ParsedLine::Invalid(format!(
                    "the line is {} bytes long; lines of up to {} MiB are read — split the resource's data (e.g. attachments) out of the line",
                    line.length,
                    crate::storage::lines::MAX_LINE_BYTES / (1024 * 1024)
                )))
            } else {
                parse_line(&line.bytes)
            };
            // The batch closes before an entry that would take it past the byte limit.
            if let Some(ParsedLine::Entry { json, .. }) = &parsed
                && !batch.entries.is_empty()
                && batch.bytes + json.len() > options.max_batch_bytes
            {
                in_flight.push_back(send(fhir, budget, fence, batch.take()).await?);
            }
            match parsed {
                Some(ParsedLine::Entry { target, json }) => {
                    batch.bytes += json.len();
                    batch.entries.push(OutgoingEntry {
                        position: number,
                        target: Some(target),
                        json,
                    });
                }
                Some(ParsedLine::Invalid(reason)) => batch.invalid.push(RefusedEntry {
                    position: number,
                    target: None,
                    status: 0,
                    diagnostics: reason,
                }),
                None => {}
            }
            batch.next_offset = line.offset + line.length + 1;
            batch.last_line = number;
        }
        if batch.entries.len() >= options.per_bundle || (finished && !batch.is_empty()) {
            in_flight.push_back(send(fhir, budget, fence, batch.take()).await?);
        }
        while in_flight.len() >= window || (finished && !in_flight.is_empty()) {
            let done = in_flight.next().await.expect("non-empty");
            let done =
                done.map_err(|e| ImportError::transient(format!("a batch task ended: {e}")))??;
            sink.lines_done(done).await?;
        }
        if finished {
            return Ok(());
        }
    }
}

/// Starts sending a closed batch once the budget has room for it.
async fn send(
    fhir: &Arc<FhirClient>,
    budget: &MemoryBudget,
    fence: &Arc<VersionFence>,
    batch: OpenBatch,
) -> Result<AbortOnDropHandle<Result<LinesDone, ImportError>>, ImportError> {
    // Counted twice: the entries, and the request body built from them.
    let held = budget.reserve(2 * batch.bytes as u64).await?;
    let fhir = fhir.clone();
    let fence = fence.clone();
    Ok(AbortOnDropHandle::new(tokio::spawn(async move {
        let _held = held;
        let outcome = if batch.entries.is_empty() {
            BatchOutcome::default()
        } else {
            fence.check().await?;
            send_batch(&fhir, batch.entries).await?
        };
        let mut refused = batch.invalid;
        refused.extend(outcome.refused);
        Ok(LinesDone {
            next_offset: batch.next_offset,
            last_line: batch.last_line,
            loaded: outcome.loaded,
            refused,
        })
    })))
}
