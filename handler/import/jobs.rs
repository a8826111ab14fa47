//! One job per kind of file, each resuming from its part row's checkpoint:
//! a Bundle by pieces sent, an NDJSON range by byte offset, a gzip file by lines done,
//! a zip by entry and line. Checkpoints are written at most once a second (errors first),
//! and with the ETag last read, so two deliveries of one work item never both advance it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::bundle::{plan_bundle, send_piece, send_transaction};
use super::engine::Importer;
use super::ledger::{Counts, ErrorRecord};
use super::ndjson::{ChunkStream, LineReader};
use super::pump::{LinesDone, LinesSink, PumpOptions, pump_lines};
use super::sender::{OutgoingEntry, RefusedEntry};
use super::sources::{BlobChunks, BlobFile, gunzip};
use super::work::{FileKind, ImportError, ImportWork};
use super::zip::{EntryPlan, ZipLimits, plan_entries, read_directory, stream_entry};
use crate::storage::{Entity, TransactionOp, TransactionOutcome};

const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The part row being advanced, with the counts and error records not yet saved.
struct PartProgress<'a> {
    importer: &'a Importer,
    work: &'a ImportWork,
    row: Entity,
    counts: Counts,
    pending: Vec<ErrorRecord>,
    last_save: Instant,
    zip_entry: Option<(i64, String)>,
}

impl<'a> PartProgress<'a> {
    fn new(importer: &'a Importer, work: &'a ImportWork, row: Entity) -> Self {
        PartProgress {
            counts: Counts::read(&row),
            importer,
            work,
            row,
            pending: Vec::new(),
            last_save: Instant::now(),
            zip_entry: None,
        }
    }

    fn cursor(&self, name: &str) -> i64 {
        self.row.i64(name)
    }

    fn set_cursor(&mut self, name: &str, value: i64) {
        self.row.set_i64(name, value);
    }

    /// A set of piece numbers stored as `"0,1,4"`.
    fn piece_set(&self, name: &str) -> BTreeSet<usize> {
        self.row
            .str(name)
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn set_piece_set(&mut self, name: &str, set: &BTreeSet<usize>) {
        let text: Vec<String> = set.iter().map(usize::to_string).collect();
        self.row.set_str(name, text.join(","));
    }

    /// Records refused lines (`per_line`) or Bundle entries as errors.
    fn refuse(&mut self, refused: Vec<RefusedEntry>, per_line: bool) {
        self.counts.failed += refused.len() as i64;
        for r in refused {
            let position = match &self.zip_entry {
                Some((i, _)) => format!("{i:06}-{:012}", r.position.max(0)),
                None if r.position < 0 => "whole".to_string(),
                None => format!("{:012}", r.position),
            };
            self.pending.push(ErrorRecord {
                part: self.work.part,
                position,
                line: per_line.then_some(r.position),
                entry: (!per_line && r.position >= 0).then_some(r.position),
                zip_entry: self.zip_entry.as_ref().map(|(_, n)| n.clone()),
                target: r.target,
                status: r.status,
                diagnostics: r.diagnostics,
            });
        }
    }

    /// Records that the current unit (a zip entry, or the whole file) was refused for `reason`.
    fn refuse_entry(&mut self, reason: String) {
        self.refuse(
            vec![RefusedEntry {
                position: 0,
                target: None,
                status: 0,
                diagnostics: reason,
            }],
            false,
        );
    }

    async fn save(&mut self) -> Result<(), ImportError> {
        if !self.pending.is_empty() {
            self.importer
                .ledger
                .write_errors(&self.work.file, &self.pending)
                .await?;
            self.pending.clear();
        }
        self.counts.write(&mut self.row);
        // Another delivery of this work item moved the checkpoint on: leave the part to it.
        if !self
            .importer
            .ledger
            .replace_if_unchanged(&mut self.row)
            .await?
        {
            return Err(ImportError::Superseded);
        }
        self.last_save = Instant::now();
        Ok(())
    }

    async fn save_if_due(&mut self) -> Result<(), ImportError> {
        if self.last_save.elapsed() >= CHECKPOINT_EVERY {
            self.save().await?;
        }
        Ok(())
    }

    /// Marks the part done and returns its saved row.
    async fn finish(mut self) -> Result<Entity, ImportError> {
        self.row.set_str("status", "done");
        self.save().await?;
        Ok(self.row)
    }
}

/// Takes the part over: a first write with the ETag read proves no other delivery moved it.
/// `file` is the file row to mark as loading in the same transaction (the first part to start).
async fn claim<'a>(
    importer: &'a Importer,
    work: &'a ImportWork,
    row: Entity,
    file: Option<Entity>,
) -> Result<PartProgress<'a>, ImportError> {
    let mut progress = PartProgress::new(importer, work, row);
    progress.row.set_str("status", "loading");
    if let Some(file) = file {
        progress.counts.write(&mut progress.row);
        let ops = [
            TransactionOp::Replace(&file),
            TransactionOp::Replace(&progress.row),
        ];
        match importer.ledger.transact(&ops).await? {
            TransactionOutcome::Applied(etags) => {
                progress.row.etag = etags[1].clone();
                progress.last_save = Instant::now();
                return Ok(progress);
            }
            TransactionOutcome::Refused {
                index: Some(1),
                status: 404 | 412,
            } => return Err(ImportError::Superseded),
            // The file row moved on (its registration just finished): the part alone decides.
            TransactionOutcome::Refused {
                status: 404 | 412, ..
            } => {}
            TransactionOutcome::Refused { status, .. } => {
                return Err(ImportError::Transient(format!(
                    "cannot claim the part in the imports table: HTTP {status}"
                )));
            }
        }
    }
    progress.save().await?;
    Ok(progress)
}

pub async fn run_bundle(
    importer: &Importer,
    work: &ImportWork,
    row: Entity,
    file: Option<Entity>,
) -> Result<Entity, ImportError> {
    let settings = &importer.settings;
    let size = work.end;
    if size > settings.max_bundle_file_bytes {
        return Err(ImportError::Rejected(format!(
            "the Bundle file is {} MiB; the limit is {} MiB (FHIRBULK_MAX_BUNDLE_FILE_MIB) — split it or upload it as NDJSON",
            size / (1024 * 1024),
            settings.max_bundle_file_bytes / (1024 * 1024)
        )));
    }
    let mut progress = claim(importer, work, row, file).await?;
    let reservation = reserve_bundle_memory(importer, size).await?;
    let bytes = BlobChunks::new(importer.blobs.clone(), &work.container, &work.blob, 0, size)
        .read_to_end()
        .await?;
    load_bundle_bytes(importer, &mut progress, bytes, reservation, "piece").await?;
    progress.finish().await
}

/// Loads one Bundle's bytes, resuming after the pieces recorded under `cursor`.
/// A Bundle is read whole and holds about twice its size in memory while it is planned (its
/// text, and the rewritten entries), so reading and planning are limited to
/// `FHIRBULK_BUNDLE_PARSE_BUDGET_MIB` of Bundle bytes at once (a larger Bundle goes alone).
async fn reserve_bundle_memory(
    importer: &Importer,
    size: u64,
) -> Result<tokio::sync::SemaphorePermit<'_>, ImportError> {
    let wanted = ((size >> 20) as u32 + 1).min(importer.settings.bundle_parse_budget_mib.max(1));
    importer
        .bundle_parse_budget
        .acquire_many(wanted)
        .await
        .map_err(|e| ImportError::Transient(e.to_string()))
}

/// Plans a Bundle under its memory reservation (released, with the raw bytes, once the
/// entries are serialised), then sends its pieces.
async fn load_bundle_bytes(
    importer: &Importer,
    progress: &mut PartProgress<'_>,
    bytes: bytes::Bytes,
    reservation: tokio::sync::SemaphorePermit<'_>,
    cursor: &str,
) -> Result<(), ImportError> {
    let settings = &importer.settings;
    let plan = plan_bundle(
        &bytes,
        settings.transaction_mode,
        settings.max_bundle_entries,
        &importer.resolver,
    )
    .await;
    drop(bytes);
    drop(reservation);
    let plan = plan?;
    // The pieces already loaded, exactly (they may finish out of order).
    let mut done = progress.piece_set(cursor);
    if done.is_empty() {
        progress.counts.present += plan.already_present;
        progress.refuse(plan.refused, false);
    }
    if let Some(body) = plan.whole_transaction {
        if done.is_empty() {
            let result = send_transaction(&importer.fhir, body, plan.entry_count).await?;
            progress.counts.loaded += result.loaded;
            progress.refuse(result.refused, false);
        }
        progress.set_piece_set(cursor, &BTreeSet::from([0]));
        return progress.save().await;
    }
    // A piece goes out as soon as the earlier pieces it references are loaded, up to the
    // part's window at once.
    let mut pieces: Vec<Option<Vec<OutgoingEntry>>> = plan
        .pieces
        .into_iter()
        .enumerate()
        .map(|(i, p)| (!done.contains(&i)).then_some(p))
        .collect();
    let mut in_flight = FuturesUnordered::new();
    loop {
        for (i, slot) in pieces.iter_mut().enumerate() {
            if in_flight.len() >= importer.fhir_window() {
                break;
            }
            if slot.is_some() && plan.piece_deps[i].iter().all(|d| done.contains(d)) {
                let piece = slot.take().expect("checked");
                in_flight.push(async move { (i, send_piece(&importer.fhir, piece).await) });
            }
        }
        let Some((i, result)) = in_flight.next().await else {
            break;
        };
        let result = result?;
        done.insert(i);
        progress.counts.loaded += result.loaded;
        progress.refuse(result.refused, false);
        progress.set_piece_set(cursor, &done);
        progress.save_if_due().await?;
    }
    Ok(())
}

#[async_trait]
impl LinesSink for PartProgress<'_> {
    async fn lines_done(&mut self, done: LinesDone) -> Result<(), ImportError> {
        self.counts.loaded += done.loaded;
        self.refuse(done.refused, true);
        self.set_cursor("offset", done.next_offset as i64);
        self.set_cursor("line", done.last_line);
        self.save_if_due().await
    }
}

fn pump_options(importer: &Importer, line_base: i64, skip_through_line: i64) -> PumpOptions {
    PumpOptions {
        per_bundle: importer.settings.ndjson_resources_per_bundle,
        window: importer.fhir_window(),
        line_base,
        skip_through_line,
    }
}

pub async fn run_ndjson_range(
    importer: &Importer,
    work: &ImportWork,
    row: Entity,
    file: Option<Entity>,
) -> Result<Entity, ImportError> {
    let mut progress = claim(importer, work, row, file).await?;
    let size = match work.size {
        0 => importer
            .blobs
            .properties(&work.container, &work.blob)
            .await?
            .map(|p| p.size)
            .unwrap_or(0),
        known => known,
    };
    let resume_at = progress.cursor("offset") as u64;
    let line_base = progress.cursor("line");
    let reader_start = if resume_at > 0 {
        resume_at
    } else {
        work.start.saturating_sub(1)
    };
    let chunks = BlobChunks::new(
        importer.blobs.clone(),
        &work.container,
        &work.blob,
        reader_start,
        size,
    )
    .planned_to(work.end);
    let mut reader = LineReader::new(
        chunks,
        reader_start,
        work.end,
        resume_at == 0 && work.start > 0,
    );
    pump_lines(
        &importer.fhir,
        &mut reader,
        &pump_options(importer, line_base, 0),
        &mut progress,
    )
    .await?;
    progress.counts.lines = line_base + reader.lines_read() as i64;
    progress.finish().await
}

pub async fn run_ndjson_gz(
    importer: &Importer,
    work: &ImportWork,
    row: Entity,
    file: Option<Entity>,
) -> Result<Entity, ImportError> {
    let mut progress = claim(importer, work, row, file).await?;
    let lines_done = progress.cursor("line");
    let chunks = BlobChunks::new(
        importer.blobs.clone(),
        &work.container,
        &work.blob,
        0,
        work.end,
    );
    progress.counts.lines =
        load_unseekable(importer, &mut progress, gunzip(chunks), lines_done, "gzip").await?;
    progress.finish().await
}

/// Loads a stream that cannot seek (gzip, a zip entry) from its start, skipping the lines a
/// previous try loaded. Returns the lines read; undecodable data is `Rejected` (see
/// `From<io::Error> for ImportError`), naming `what` was being read.
async fn load_unseekable<S: ChunkStream>(
    importer: &Importer,
    progress: &mut PartProgress<'_>,
    stream: S,
    lines_done: i64,
    what: &str,
) -> Result<i64, ImportError> {
    let mut reader = LineReader::new(stream, 0, u64::MAX, false);
    let result = pump_lines(
        &importer.fhir,
        &mut reader,
        &pump_options(importer, 0, lines_done),
        progress,
    )
    .await;
    match result {
        Err(ImportError::Rejected(reason)) => {
            Err(ImportError::Rejected(format!("the {what} {reason}")))
        }
        other => other.map(|()| reader.lines_read() as i64),
    }
}

pub async fn run_zip(
    importer: &Importer,
    work: &ImportWork,
    row: Entity,
    file: Option<Entity>,
) -> Result<Entity, ImportError> {
    let settings = &importer.settings;
    let mut progress = claim(importer, work, row, file).await?;
    // Read in place: ranged reads of the blob, no copy on disk.
    let file = BlobFile::new(
        importer.blobs.clone(),
        &work.container,
        &work.blob,
        work.end,
    );
    let (archive, directory) = tokio::task::spawn_blocking(move || read_directory(file))
        .await
        .map_err(|e| ImportError::Transient(e.to_string()))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => ImportError::Rejected(e.to_string()),
            _ => ImportError::from(e),
        })?;
    let limits = ZipLimits {
        max_entries: settings.zip_max_entries,
        max_uncompressed: settings.zip_max_uncompressed_bytes,
        max_ratio: settings.zip_max_ratio,
    };
    let plans = plan_entries(&directory, limits).map_err(ImportError::Rejected)?;
    let start_entry = progress.cursor("entry");
    for plan in plans {
        let (index, name, kind) = match plan {
            EntryPlan::Skip => continue,
            EntryPlan::Refuse {
                index,
                name,
                reason,
            } => {
                if (index as i64) >= start_entry {
                    progress.zip_entry = Some((index as i64, name));
                    progress.refuse_entry(reason);
                }
                continue;
            }
            EntryPlan::Load { index, name, kind } => (index, name, kind),
        };
        if (index as i64) < start_entry {
            continue;
        }
        progress.zip_entry = Some((index as i64, name.clone()));
        let limit = directory[index].uncompressed.max(1);
        let gzip = kind == FileKind::NdjsonGz;
        // A gzip entry's declared size is the compressed one; its own limit is the archive's.
        let limit = if gzip {
            settings.zip_max_uncompressed_bytes
        } else {
            limit
        };
        let stream = stream_entry(archive.clone(), index, gzip, limit);
        if kind == FileKind::Bundle {
            let reservation =
                reserve_bundle_memory(importer, directory[index].uncompressed).await?;
            match collect_limited(stream, settings.max_bundle_file_bytes).await {
                Ok(bytes) => {
                    let loaded = load_bundle_bytes(
                        importer,
                        &mut progress,
                        bytes.into(),
                        reservation,
                        "entryPiece",
                    );
                    match loaded.await {
                        Err(ImportError::Rejected(reason)) => progress.refuse_entry(reason),
                        other => other?,
                    }
                }
                Err(ImportError::Rejected(reason)) => progress.refuse_entry(reason),
                // The archive's blob could not be read (storage unreachable): retried.
                Err(other) => return Err(other),
            }
        } else {
            let lines_done = if (index as i64) == start_entry {
                progress.cursor("line")
            } else {
                0
            };
            match load_unseekable(importer, &mut progress, stream, lines_done, "zip entry").await {
                Ok(lines) => progress.counts.lines += lines - lines_done,
                Err(ImportError::Rejected(reason)) => progress.refuse_entry(reason),
                Err(other) => return Err(other),
            }
        }
        progress.set_cursor("entry", index as i64 + 1);
        progress.set_cursor("line", 0);
        progress.set_piece_set("entryPiece", &BTreeSet::new());
        // The row is consistent after every entry; it is written at most once a second (an
        // archive of a thousand small Bundles is not a thousand writes). A redelivery redoes
        // the entries since, and their PUTs and error records land on the same ids.
        progress.save_if_due().await?;
    }
    progress.zip_entry = None;
    progress.finish().await
}

/// Reads a zip entry whole, up to `limit` bytes. An entry over the limit or with undecodable
/// data is `Rejected` (the entry is refused, the archive goes on); an error reading the
/// archive's blob is the work item's (`From<io::Error>`: transient unless the blob is gone).
async fn collect_limited<S: ChunkStream>(
    mut stream: S,
    limit: u64,
) -> Result<Vec<u8>, ImportError> {
    use std::io::ErrorKind;
    let mut out = Vec::new();
    loop {
        match stream.next_chunk().await {
            Ok(Some(c)) => {
                out.extend_from_slice(&c);
                if out.len() as u64 > limit {
                    return Err(ImportError::Rejected(format!(
                        "the Bundle entry is larger than {} MiB (FHIRBULK_MAX_BUNDLE_FILE_MIB)",
                        limit / (1024 * 1024)
                    )));
                }
            }
            Ok(None) => return Ok(out),
            Err(e) if matches!(e.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) => {
                return Err(ImportError::Rejected(format!(
                    "the entry cannot be read: {e}"
                )));
            }
            Err(e) => return Err(ImportError::from(e)),
        }
    }
}
