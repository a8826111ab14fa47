//! One job per kind of file, each resuming from its part row's checkpoint:
//! a Bundle by pieces sent, an NDJSON range by byte offset, a gzip file by lines done,
//! a zip by entry and line (`zip_entries`). Checkpoints are written at most once a second
//! (errors first), and with the ETag last read, so two deliveries of one work item never both
//! advance it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::OwnedSemaphorePermit;

use super::Importer;
use super::bundle::{plan_bundle, send_piece, send_transaction};
use super::bundle_text::bundle_kind;
use super::encoding::utf8_text;
use super::fence::VersionFence;
use super::pump::{LinesDone, LinesSink, PumpOptions, pump_lines};
use super::sender::{BatchOutcome, OutgoingEntry, RefusedEntry};
use super::state::{Counts, ErrorRecord, ImportFile, ImportPart, PartStatus};
use super::work::{FileKind, ImportError, ImportWork};
use crate::storage::lines::{ChunkStream, LineReader, cut_ranges};
use crate::storage::stream::{BlobChunks, ChannelChunks, Expansion, VersionSeen, gunzip_limited};
use crate::storage::{Row, TransactionOp, TransactionOutcome};

mod zip_entries;

pub use zip_entries::run_zip;

const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The part row being advanced, with the counts and error records not yet saved.
struct PartProgress<'a> {
    importer: &'a Importer,
    work: &'a ImportWork,
    row: Row<ImportPart>,
    counts: Counts,
    pending: Vec<ErrorRecord>,
    last_save: Instant,
    zip_entry: Option<(i64, String)>,
    /// The checkpoint moved since the last save: the save records when (`progressAt`).
    advanced: bool,
    /// Stops the work before its next write once the file is replaced or deleted.
    fence: Arc<VersionFence>,
}

impl<'a> PartProgress<'a> {
    fn new(importer: &'a Importer, work: &'a ImportWork, row: Row<ImportPart>) -> Self {
        PartProgress {
            counts: row.data.counts,
            importer,
            work,
            row,
            pending: Vec::new(),
            last_save: Instant::now(),
            zip_entry: None,
            advanced: false,
            fence: Arc::new(VersionFence::new(
                importer.blobs.clone(),
                &work.container,
                &work.blob,
                &work.etag,
            )),
        }
    }

    /// `chunks` read as the version this work loads only: each answer passes as a fence check.
    fn this_version(&self, chunks: BlobChunks) -> BlobChunks {
        chunks.of_version(&self.work.etag, self.fence.seen())
    }

    /// The pieces of a Bundle already sent (`piece`, stored as `"0,1,4"`).
    fn pieces(&self) -> BTreeSet<usize> {
        self.row
            .data
            .piece
            .split(',')
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn set_pieces(&mut self, set: &BTreeSet<usize>) {
        let text: Vec<String> = set.iter().map(usize::to_string).collect();
        self.row.data.piece = text.join(",");
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

    async fn write_pending_errors(&mut self) -> Result<(), ImportError> {
        if !self.pending.is_empty() {
            self.importer
                .store
                .write_errors(&self.work.file, &self.pending)
                .await?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes the pending error records and brings the row up to date (counts, when the
    /// checkpoint last moved), without writing it.
    async fn flush(&mut self) -> Result<(), ImportError> {
        self.write_pending_errors().await?;
        self.row.data.counts = self.counts;
        self.stamp_progress();
        Ok(())
    }

    async fn save(&mut self) -> Result<(), ImportError> {
        self.flush().await?;
        // Another delivery of this work item moved the checkpoint on: leave the part to it.
        if !self
            .importer
            .store
            .replace_if_unchanged(&mut self.row)
            .await?
        {
            return Err(ImportError::Superseded);
        }
        self.last_save = Instant::now();
        Ok(())
    }

    /// Records when the checkpoint last moved (`progressAt`), if it moved since the last save.
    fn stamp_progress(&mut self) {
        if std::mem::take(&mut self.advanced) {
            self.row.data.stamp_progress();
        }
    }

    async fn save_if_due(&mut self) -> Result<(), ImportError> {
        if self.last_save.elapsed() >= CHECKPOINT_EVERY {
            self.save().await?;
        }
        Ok(())
    }

    /// Ends the work on the part: done when `loaded` is `Ok`. Otherwise what was counted and
    /// recorded since the last checkpoint is saved first (best effort), then the error is
    /// handed on: a part ended for a reason (rejected, deleted, replaced) or tried again later
    /// counts every resource that reached the server. Not when another delivery owns the part.
    async fn end(
        mut self,
        loaded: Result<(), ImportError>,
    ) -> Result<Row<ImportPart>, ImportError> {
        match loaded {
            Ok(()) => self.finish().await,
            Err(ImportError::Superseded) => Err(ImportError::Superseded),
            Err(stopped) => {
                if let Err(e) = self.save().await {
                    tracing::debug!(message = "Progress not saved after a stop.", import = %self.work.file_id(), error = %e);
                }
                Err(stopped)
            }
        }
    }

    /// Marks the part done and returns its row. The row of a file's only part is not written
    /// here but with the file row, when the file is finished (`Importer::finalize_if_complete`);
    /// its error records are.
    async fn finish(mut self) -> Result<Row<ImportPart>, ImportError> {
        self.row.data.status = PartStatus::Done;
        if !self.work.is_whole_file() {
            self.save().await?;
            return Ok(self.row);
        }
        self.flush().await?;
        Ok(self.row)
    }
}

/// How a delivery comes to own the part row it loads.
pub enum Claim {
    /// By a first write with the ETag read, which proves no other delivery moved it; `file` is
    /// the file row to mark as loading in the same transaction (the first part to start).
    Take { file: Option<Box<Row<ImportFile>>> },
    /// It owns it already: the registration inserted the row claimed (a file loaded by the
    /// delivery of its event), with the ETag the row carries.
    Held,
}

/// Takes the part over (see [`Claim`]).
async fn claim<'a>(
    importer: &'a Importer,
    work: &'a ImportWork,
    row: Row<ImportPart>,
    how: Claim,
) -> Result<PartProgress<'a>, ImportError> {
    let mut progress = PartProgress::new(importer, work, row);
    let file = match how {
        Claim::Held => return Ok(progress),
        Claim::Take { file } => file.map(|f| *f),
    };
    progress.row.data.status = PartStatus::Loading;
    // The clock of `FHIRBULK_WORK_STALLED_SECS` starts when the part's work first starts.
    progress.advanced = progress.row.data.progress_at.is_none();
    if let Some(file) = file {
        progress.row.data.counts = progress.counts;
        progress.stamp_progress();
        let (file, part) = (file.to_entity(), progress.row.to_entity());
        let ops = [TransactionOp::Replace(&file), TransactionOp::Replace(&part)];
        match importer.store.transact(&ops).await? {
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
                return Err(ImportError::transient(format!(
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
    row: Row<ImportPart>,
    how: Claim,
) -> Result<Row<ImportPart>, ImportError> {
    let settings = &importer.settings;
    let size = work.end;
    if size > settings.max_bundle_file_bytes {
        return Err(ImportError::Rejected(format!(
            "the Bundle file is {} MiB; the limit is {} MiB (FHIRBULK_MAX_BUNDLE_FILE_MIB) — split it or upload it as NDJSON",
            size / (1024 * 1024),
            settings.max_bundle_file_bytes / (1024 * 1024)
        )));
    }
    let mut progress = claim(importer, work, row, how).await?;
    let loaded = async {
        let reservation = reserve_bundle_memory(importer, size).await?;
        let bytes = progress
            .this_version(whole_file(importer, work))
            .read_to_end()
            .await?;
        let fence = progress.fence.clone();
        load_bundle_bytes(importer, &fence, &mut progress, bytes, reservation).await
    }
    .await;
    progress.end(loaded).await
}

/// A Bundle is read whole and holds about twice its size in memory while it is planned (its
/// text, and the rewritten entries), so reading and planning are limited to
/// `FHIRBULK_BUNDLE_PARSE_BUDGET_MIB` of Bundle bytes at once (a larger Bundle goes alone).
async fn reserve_bundle_memory(
    importer: &Importer,
    size: u64,
) -> Result<OwnedSemaphorePermit, ImportError> {
    importer.bundle_parse_budget.reserve(size).await
}

/// Where the outcome of a Bundle's pieces goes: a Bundle file's part row (checkpointed as
/// pieces finish, so a resumed try skips the pieces loaded) or a zip entry's tally (an entry
/// is redone whole on a resume).
#[async_trait]
trait PieceSink: Send {
    /// The pieces an earlier try loaded.
    fn pieces_done(&self) -> BTreeSet<usize>;
    /// What planning found: entries refused, entries already present. Called only when no
    /// piece was loaded before, so a resumed try does not count them twice.
    fn planned(&mut self, present: i64, refused: Vec<RefusedEntry>);
    /// Piece `done` was sent with `outcome`; `all` holds every piece loaded so far.
    async fn piece_done(
        &mut self,
        all: &BTreeSet<usize>,
        outcome: BatchOutcome,
    ) -> Result<(), ImportError>;
}

/// A Bundle file's part row: the pieces loaded are the `piece` cursor, saved at most once a
/// second.
#[async_trait]
impl PieceSink for PartProgress<'_> {
    fn pieces_done(&self) -> BTreeSet<usize> {
        self.pieces()
    }

    fn planned(&mut self, present: i64, refused: Vec<RefusedEntry>) {
        self.counts.present += present;
        self.refuse(refused, false);
    }

    async fn piece_done(
        &mut self,
        all: &BTreeSet<usize>,
        outcome: BatchOutcome,
    ) -> Result<(), ImportError> {
        self.counts.loaded += outcome.loaded;
        self.refuse(outcome.refused, false);
        self.set_pieces(all);
        self.advanced = true;
        self.save_if_due().await
    }
}

/// Plans a Bundle under its memory reservation (released, with the raw bytes, once the
/// entries are serialised), then sends its pieces, skipping those `sink` has as done.
async fn load_bundle_bytes(
    importer: &Importer,
    fence: &VersionFence,
    sink: &mut dyn PieceSink,
    bytes: bytes::Bytes,
    reservation: OwnedSemaphorePermit,
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
    let mut done = sink.pieces_done();
    if done.is_empty() {
        sink.planned(plan.already_present, plan.refused);
    }
    if let Some(body) = plan.whole_transaction {
        if done.is_empty() {
            fence.check().await?;
            let result = send_transaction(&importer.fhir, body, plan.entry_count).await?;
            return sink.piece_done(&BTreeSet::from([0]), result).await;
        }
        return Ok(());
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
                let sent = async move {
                    fence.check().await?;
                    send_piece(&importer.fhir, piece).await
                };
                in_flight.push(async move { (i, sent.await) });
            }
        }
        let Some((i, result)) = in_flight.next().await else {
            break;
        };
        let result = result?;
        done.insert(i);
        sink.piece_done(&done, result).await?;
    }
    Ok(())
}

#[async_trait]
impl LinesSink for PartProgress<'_> {
    async fn lines_done(&mut self, done: LinesDone) -> Result<(), ImportError> {
        self.counts.loaded += done.loaded;
        self.refuse(done.refused, true);
        self.row.data.offset = done.next_offset as i64;
        self.row.data.line = done.last_line;
        self.advanced = true;
        self.save_if_due().await
    }
}

fn pump_options(
    importer: &Importer,
    window: usize,
    line_base: i64,
    skip_through_line: i64,
) -> PumpOptions {
    PumpOptions {
        per_bundle: importer.settings.ndjson_resources_per_bundle,
        max_batch_bytes: importer.settings.max_batch_bytes,
        window,
        line_base,
        skip_through_line,
    }
}

pub async fn run_ndjson_range(
    importer: &Importer,
    work: &ImportWork,
    row: Row<ImportPart>,
    how: Claim,
) -> Result<Row<ImportPart>, ImportError> {
    let mut progress = claim(importer, work, row, how).await?;
    let loaded = async {
        let version = Some(progress.fence.seen());
        let (mut reader, parts) = range_reader(importer, work, &progress.row.data, version).await?;
        let line_base = progress.row.data.line;
        pump_lines(
            &importer.fhir,
            &importer.batch_budget,
            &progress.fence.clone(),
            &mut reader,
            &pump_options(importer, importer.part_window(parts), line_base, 0),
            &mut progress,
        )
        .await?;
        progress.counts.lines = line_base + reader.lines_read() as i64;
        Ok(())
    }
    .await;
    progress.end(loaded).await
}

/// The lines of an NDJSON range from its part row's checkpoint, and how many ranges the file
/// has. With `version`, only the work's version of the file is read (`BlobChunks::of_version`).
async fn range_reader(
    importer: &Importer,
    work: &ImportWork,
    row: &ImportPart,
    version: Option<VersionSeen>,
) -> Result<(LineReader<BlobChunks>, usize), ImportError> {
    let size = match work.size {
        0 => importer
            .blobs
            .properties(&work.container, &work.blob)
            .await?
            .map(|p| p.size)
            .unwrap_or(0),
        known => known,
    };
    let parts = cut_ranges(size, importer.settings.ndjson_range_bytes).len();
    let resume_at = row.offset as u64;
    let reader_start = if resume_at > 0 {
        resume_at
    } else {
        work.start.saturating_sub(1)
    };
    let mut chunks = BlobChunks::new(
        importer.blobs.clone(),
        &work.container,
        &work.blob,
        reader_start,
        size,
    )
    .planned_to(work.end);
    if let Some(seen) = version {
        chunks = chunks.of_version(&work.etag, seen);
    }
    let reader = LineReader::new(
        chunks,
        reader_start,
        work.end,
        resume_at == 0 && work.start > 0,
    );
    Ok((reader, parts))
}

/// What a part given up on had not loaded: the resources after its checkpoint, counted by
/// reading on without sending (a Bundle's from its entry count).
pub struct Unloaded {
    pub count: i64,
    /// All lines of the part (NDJSON), when they were read to count.
    pub lines: Option<i64>,
    /// The first line not loaded, numbered within the part.
    pub first_line: Option<i64>,
    /// What was not loaded, for the error record ("12,000 lines from this line on").
    pub description: String,
}

pub async fn unloaded(
    importer: &Importer,
    work: &ImportWork,
    row: &ImportPart,
) -> Result<Unloaded, ImportError> {
    let counts = row.counts;
    let lines_done = row.line;
    let from_lines = |count: i64, lines: i64| Unloaded {
        count,
        lines: Some(lines),
        first_line: Some(lines_done + 1),
        description: format!("{count} lines with resources, from this line on,"),
    };
    match work.kind {
        FileKind::Ndjson => {
            let (mut reader, _) = range_reader(importer, work, row, None).await?;
            let count = count_lines(&mut reader, 0).await?;
            Ok(from_lines(count, lines_done + reader.lines_read() as i64))
        }
        FileKind::NdjsonGz => {
            let mut reader = LineReader::new(
                gzip_lines(importer, whole_file(importer, work)),
                0,
                u64::MAX,
                false,
            );
            let count = count_lines(&mut reader, lines_done).await?;
            Ok(from_lines(count, reader.lines_read() as i64))
        }
        FileKind::Bundle => {
            let bytes = whole_file(importer, work).read_to_end().await?;
            let entries = utf8_text(&bytes, "the file")
                .ok()
                .and_then(|text| bundle_kind(text).ok())
                .map_or(0, |(_, entries)| entries as i64);
            let count = (entries - counts.loaded - counts.failed - counts.present).max(0);
            Ok(Unloaded {
                count,
                lines: None,
                first_line: None,
                description: format!("{count} of the Bundle's {entries} entries were"),
            })
        }
        FileKind::Zip => {
            let left = zip_entries::entries_left(importer, work, row.entry).await?;
            Ok(Unloaded {
                count: left,
                lines: None,
                first_line: None,
                description: format!(
                    "{left} zip entries, from entry {} of the archive on, were",
                    row.entry
                ),
            })
        }
    }
}

/// The whole file of a work item (a Bundle, a gzip or zip file: one part), read as it is taken.
fn whole_file(importer: &Importer, work: &ImportWork) -> BlobChunks {
    BlobChunks::new(
        importer.blobs.clone(),
        &work.container,
        &work.blob,
        0,
        work.end,
    )
}

/// The decompressed bytes of a `.ndjson.gz` file, its expansion held to the zip limits.
fn gzip_lines(importer: &Importer, file: BlobChunks) -> ChannelChunks {
    gunzip_limited(file, Expansion::of(&importer.settings))
}

/// Non-blank lines after line `skip` of a reader.
async fn count_lines<S: ChunkStream>(
    reader: &mut LineReader<S>,
    skip: i64,
) -> Result<i64, ImportError> {
    let mut count = 0;
    while let Some(line) = reader.next_line().await? {
        if line.number as i64 > skip {
            count += 1;
        }
    }
    Ok(count)
}

pub async fn run_ndjson_gz(
    importer: &Importer,
    work: &ImportWork,
    row: Row<ImportPart>,
    how: Claim,
) -> Result<Row<ImportPart>, ImportError> {
    let mut progress = claim(importer, work, row, how).await?;
    let lines_done = progress.row.data.line;
    let gzip = gzip_lines(importer, progress.this_version(whole_file(importer, work)));
    let loaded = load_unseekable(importer, &mut progress, gzip, lines_done, "gzip")
        .await
        .map(|lines| progress.counts.lines = lines);
    progress.end(loaded).await
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
        &importer.batch_budget,
        &progress.fence.clone(),
        &mut reader,
        &pump_options(importer, importer.part_window(1), 0, lines_done),
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
