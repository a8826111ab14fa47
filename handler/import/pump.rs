//! The NDJSON pipeline: lines → `PUT` entries → batches of at most N lines and M bytes → the
//! FHIR server, with a window of batches in flight, each sent by a task of its own (the FHIR
//! client's adaptive limiter decides how many really run, the batch budget how many bytes the
//! process holds). Results come back in file order, so a checkpoint after a result covers every
//! line before it.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

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

/// The bytes of batches this process holds at once (`FHIRBULK_BATCH_BUDGET_MIB`), shared by
/// every part: a batch waits for its share before it is sent, so memory stays bounded however
/// long the lines and however many parts run.
#[derive(Clone)]
pub struct BatchBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

impl BatchBudget {
    pub fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes >> 10).unwrap_or(u32::MAX).max(1);
        BatchBudget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// Waits until a batch of `bytes` of entries fits, counted twice (the entries and the
    /// request body built from them). A batch larger than the whole budget waits for all of it.
    async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ImportError> {
        let kib = u32::try_from((2 * bytes) >> 10)
            .unwrap_or(u32::MAX)
            .saturating_add(1)
            .min(self.total_kib);
        self.kib
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(|e| ImportError::Transient(format!("the batch budget is closed: {e}")))
    }
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
    budget: &BatchBudget,
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
        let mut entry = None;
        if let Some(line) = line {
            let number = options.line_base + line.number as i64;
            let next_offset = line.offset + line.bytes.len() as u64 + 1;
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
                    Some(ParsedLine::Entry { target, json }) => {
                        entry = Some((
                            OutgoingEntry {
                                position: number,
                                target: Some(target),
                                json,
                            },
                            next_offset,
                        ))
                    }
                    Some(ParsedLine::Invalid(reason)) => batch.invalid.push(RefusedEntry {
                        position: number,
                        target: None,
                        status: 0,
                        diagnostics: reason,
                    }),
                    None => {}
                }
            }
            if entry.is_none() {
                batch.next_offset = next_offset;
                batch.last_line = number;
            }
        }
        // The batch closes before an entry that would take it past the byte limit.
        let overflows = entry.as_ref().is_some_and(|(e, _)| {
            !batch.entries.is_empty() && batch.bytes + e.json.len() > options.max_batch_bytes
        });
        if overflows {
            in_flight.push_back(send(fhir, budget, batch.take()).await?);
        }
        if let Some((e, next_offset)) = entry {
            batch.bytes += e.json.len();
            batch.last_line = e.position;
            batch.next_offset = next_offset;
            batch.entries.push(e);
        }
        if batch.entries.len() >= options.per_bundle || (finished && !batch.is_empty()) {
            in_flight.push_back(send(fhir, budget, batch.take()).await?);
        }
        while in_flight.len() >= window || (finished && !in_flight.is_empty()) {
            let done = in_flight.next().await.expect("non-empty");
            let done =
                done.map_err(|e| ImportError::Transient(format!("a batch task ended: {e}")))??;
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
    budget: &BatchBudget,
    batch: OpenBatch,
) -> Result<AbortOnDropHandle<Result<LinesDone, ImportError>>, ImportError> {
    let held = budget.reserve(batch.bytes).await?;
    let fhir = fhir.clone();
    Ok(AbortOnDropHandle::new(tokio::spawn(async move {
        let _held = held;
        let outcome = if batch.entries.is_empty() {
            BatchOutcome::default()
        } else {
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
