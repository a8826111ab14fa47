//! The import engine, `Importer`'s work: registering a created blob (fast, idempotent: rows
//! in the imports table + work items), running one work item to its end, and finalising a file
//! once all its parts are done (reports written, file moved to `<container>processed` or
//! `<container>err`).

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{debug, info, warn};

use super::Importer;
use super::jobs::{self, Claim};
use super::report::{ImportResult, error_outcome};
use super::state::{
    Counts, ErrorPages, ErrorRecord, FILE_ROW, FileEnding, FileStatus, ImportFile, ImportPart,
    PartEnd, file_key, part_row,
};
use super::work::{FileKind, ImportError, ImportWork, Transient, import_id};
use crate::config::ImportSettings;
use crate::storage::lines::cut_ranges;
use crate::storage::reports::report_blob;
use crate::storage::{BlobVersion, Entity, MoveOutcome, Row, TransactionOp, TransactionOutcome};

const REGISTRATION_CONCURRENCY: usize = 16;
/// Rows one entity group transaction may hold.
const TRANSACTION_ROWS: usize = 100;

/// How `record_rows` found the file.
enum Recorded {
    /// Its rows were inserted now.
    Now,
    /// A registration had stopped half-way; its rows are complete now.
    Unfinished,
    /// It was registered before (`file` is the row found).
    Before,
}

/// What registering a blob did.
#[derive(Debug, PartialEq, Eq)]
pub enum Registration {
    Queued {
        file: String,
        parts: u32,
    },
    /// A small file loaded by the delivery of its event (`FHIRBULK_LOAD_ON_DELIVERY_MAX_KIB`):
    /// how it ended, or `None` when its work went on as a queued work item (a retry after a
    /// transient failure, or a load that outlasted `FHIRBULK_LOAD_ON_DELIVERY_SECS`).
    Loaded {
        file: String,
        status: Option<FileStatus>,
    },
    /// Another delivery of the event is loading the file (`Loaded`) now: this one must be
    /// delivered again later, in case that one dies.
    LoadingElsewhere {
        file: String,
    },
    /// The same file version was registered before (a redelivered event): nothing to do.
    AlreadyRegistered {
        file: String,
        status: String,
    },
    Ignored(String),
}

impl Importer {
    /// Records a created blob and queues its work. Safe to call again for the same blob.
    /// `version` is the ETag and size the event (or the watcher's listing) reported; without
    /// one the blob's properties are read.
    pub async fn register(
        &self,
        container: &str,
        blob: &str,
        version: Option<BlobVersion>,
    ) -> Result<Registration, ImportError> {
        let Some(kind) = self.kind_for(container, blob) else {
            return Ok(Registration::Ignored(format!(
                "{container} is not an import container"
            )));
        };
        let props = match version {
            Some(v) => v,
            None => match self.blobs.properties(container, blob).await? {
                Some(entry) => BlobVersion {
                    etag: entry.etag,
                    size: entry.size,
                },
                None => {
                    return Ok(Registration::Ignored(format!(
                        "{container}/{blob} no longer exists (already imported and moved?)"
                    )));
                }
            },
        };
        let key = file_key(container, blob, &props.etag);
        let ranges = match kind {
            FileKind::Ndjson => cut_ranges(props.size, self.settings.ndjson_range_bytes),
            _ => vec![(0, props.size)],
        };
        let mut file = Row::new(
            &key,
            FILE_ROW,
            ImportFile::registering(container, blob, &props, kind, ranges.len()),
        );
        let mut parts: Vec<Row<ImportPart>> = ranges
            .iter()
            .enumerate()
            .map(|(i, (start, end))| {
                let part = ImportPart::pending(*start as i64, *end as i64);
                Row::new(&key, &part_row(i as u32), part)
            })
            .collect();
        let on_delivery =
            ranges.len() == 1 && props.size <= self.settings.load_on_delivery_max_bytes;
        if on_delivery {
            // Recorded as taken by this delivery, which loads it: no work item, no claim.
            file.data.start_loading();
            file.data.on_delivery = true;
            parts[0].data.start_loading();
        }
        match self.record_rows(&mut file, &mut parts).await? {
            Recorded::Before => return self.registered_before(file).await,
            Recorded::Now if on_delivery => {
                let part = parts.swap_remove(0);
                return self.load_on_delivery(file, part).await;
            }
            Recorded::Now | Recorded::Unfinished => {}
        }
        self.queue_parts(&file, &ranges).await?;
        // With the ETag from the insert: a worker that already moved the file on wins.
        file.data.status = FileStatus::Queued;
        self.store.replace_if_unchanged(&mut file).await?;
        info!(
            message = "Import registered.",
            import = %import_id(&key),
            container,
            kind = kind.as_str(),
            parts = ranges.len()
        );
        debug!(message = "Import registered for a blob.", import = %import_id(&key), container, blob);
        Ok(Registration::Queued {
            file: key,
            parts: ranges.len() as u32,
        })
    }

    /// A redelivered event of a file registered before. Nothing to do, unless another delivery
    /// took the file to load it on delivery and has not finished: while that load may still
    /// be running (`FHIRBULK_LOAD_ON_DELIVERY_SECS`, twice over), this delivery is to be
    /// repeated; after, that delivery died with its process (or handed the load on), and a
    /// work item takes over from the checkpoint (the part's ETag lets only one advance it).
    async fn registered_before(
        &self,
        mut file: Row<ImportFile>,
    ) -> Result<Registration, ImportError> {
        let key = file.partition_key.clone();
        let f = &file.data;
        if !f.on_delivery || f.status.is_terminal() {
            return Ok(Registration::AlreadyRegistered {
                file: key,
                status: f.status.as_str().to_string(),
            });
        }
        let may_run_until = f
            .started_at()
            .map(|at| at + self.settings.load_on_delivery_deadline * 2);
        if may_run_until.is_some_and(|until| until > OffsetDateTime::now_utc()) {
            return Ok(Registration::LoadingElsewhere { file: key });
        }
        let work = f.whole_file_work(&key);
        self.hand_on(&work, &mut file).await?;
        info!(message = "Load on delivery taken over by a work item.", import = %import_id(&key));
        Ok(Registration::Queued {
            file: key,
            parts: 1,
        })
    }

    /// Hands a file loaded on delivery on to a queued work item, which goes on from the
    /// checkpoint, and records that it was: a further delivery of the event finds the file an
    /// ordinary queued one (a file row moved on meanwhile keeps what it says).
    async fn hand_on(
        &self,
        work: &ImportWork,
        file: &mut Row<ImportFile>,
    ) -> Result<(), ImportError> {
        self.enqueue(work, Duration::ZERO).await?;
        file.data.on_delivery = false;
        self.store.replace_if_unchanged(file).await?;
        Ok(())
    }

    /// Queues `work`, to be delivered after `delay`.
    pub(super) async fn enqueue(
        &self,
        work: &ImportWork,
        delay: Duration,
    ) -> Result<(), ImportError> {
        let text = serde_json::to_string(work).expect("work items serialise");
        self.queue.send(&text, delay).await?;
        Ok(())
    }

    /// Loads a file whose rows were just recorded as taken by this delivery, with no work item
    /// (a small file costs no queue requests and no claim). A load that outlasts
    /// `FHIRBULK_LOAD_ON_DELIVERY_SECS` (Event Grid waits 30 s for an answer) is handed on to
    /// a work item, which goes on from the checkpoint. If this process dies during the load,
    /// the sweep queues the part once its row is stale, as for any lost work item.
    async fn load_on_delivery(
        &self,
        file: Row<ImportFile>,
        part: Row<ImportPart>,
    ) -> Result<Registration, ImportError> {
        let delivered = OffsetDateTime::now_utc();
        let key = file.partition_key.clone();
        let work = file.data.whole_file_work(&key);
        info!(
            message = "Import registered; loading it on delivery.",
            import = %import_id(&key),
            container = %work.container,
            kind = work.kind.as_str()
        );
        let deadline = self.settings.load_on_delivery_deadline;
        let loaded = match tokio::time::timeout(deadline, self.load(&work, part, Claim::Held)).await
        {
            Ok(loaded) => loaded,
            Err(_) => {
                let mut file = file;
                self.hand_on(&work, &mut file).await?;
                info!(message = "Load on delivery handed on to a work item.", import = %import_id(&key), secs = deadline.as_secs());
                return Ok(Registration::Loaded {
                    file: key,
                    status: None,
                });
            }
        };
        let status = self.after_load(&work, loaded, file, delivered).await?;
        Ok(Registration::Loaded { file: key, status })
    }

    /// Records the file row and one part row per range. The rows go in transactions of up
    /// to 100, the file row in the first: a file row is never without its first parts, and
    /// every transaction is all-or-nothing, so a repeat finds each one whole or absent. A file
    /// registered before is `Before`, unless its registration stopped half-way (then it
    /// is `Unfinished`, and `file` the row found: parts and messages are idempotent). The rows
    /// take the ETags of their insert.
    async fn record_rows(
        &self,
        file: &mut Row<ImportFile>,
        parts: &mut [Row<ImportPart>],
    ) -> Result<Recorded, ImportError> {
        let key = file.partition_key.clone();
        let entities: Vec<Entity> = parts.iter().map(Row::to_entity).collect();
        let (first, rest) = entities.split_at(entities.len().min(TRANSACTION_ROWS - 1));
        let file_entity = file.to_entity();
        let mut ops = vec![TransactionOp::Insert(&file_entity)];
        ops.extend(first.iter().map(TransactionOp::Insert));
        match self.store.transact(&ops).await? {
            TransactionOutcome::Applied(etags) => {
                file.etag = etags[0].clone();
                for (part, etag) in parts.iter_mut().zip(&etags[1..]) {
                    part.etag = etag.clone();
                }
            }
            TransactionOutcome::Refused { status: 409, .. } => {
                let Some(found) = self.store.file(&key).await? else {
                    return Err(ImportError::transient(format!(
                        "the imports table refused import {} as a duplicate, then had no row for it",
                        import_id(&key)
                    )));
                };
                *file = found;
                if file.data.status != FileStatus::Registering {
                    return Ok(Recorded::Before);
                }
                self.insert_rest(rest).await?;
                return Ok(Recorded::Unfinished);
            }
            TransactionOutcome::Refused { status, .. } => {
                return Err(ImportError::transient(format!(
                    "cannot record import {} in the imports table: HTTP {status}",
                    import_id(&key)
                )));
            }
        }
        self.insert_rest(rest).await?;
        Ok(Recorded::Now)
    }

    /// Inserts the part rows that did not fit the file row's transaction. Many-part files (a
    /// 10 GB NDJSON has 320 parts) are registered 16 requests at a time, so the Event Grid
    /// function still answers quickly.
    async fn insert_rest(&self, rest: &[Entity]) -> Result<(), ImportError> {
        let inserts: Vec<_> = rest
            .chunks(TRANSACTION_ROWS)
            .map(|rows| self.insert_parts(rows))
            .collect();
        futures::stream::iter(inserts)
            .buffer_unordered(REGISTRATION_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Queues one work item per range of the file.
    async fn queue_parts(
        &self,
        file: &Row<ImportFile>,
        ranges: &[(u64, u64)],
    ) -> Result<(), ImportError> {
        let items: Vec<ImportWork> = ranges
            .iter()
            .enumerate()
            .map(|(part, (start, end))| {
                file.data
                    .work(&file.partition_key, part as u32, *start, *end)
            })
            .collect();
        futures::stream::iter(items)
            .map(|work| async move { self.enqueue(&work, Duration::ZERO).await })
            .buffer_unordered(REGISTRATION_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Inserts part rows in one transaction; rows already there (a repeat) are fine.
    async fn insert_parts(&self, rows: &[Entity]) -> Result<(), ImportError> {
        let ops: Vec<TransactionOp> = rows.iter().map(TransactionOp::Insert).collect();
        match self.store.transact(&ops).await? {
            TransactionOutcome::Applied(_) | TransactionOutcome::Refused { status: 409, .. } => {
                Ok(())
            }
            TransactionOutcome::Refused { status, .. } => Err(ImportError::transient(format!(
                "cannot record parts in the imports table: HTTP {status}"
            ))),
        }
    }

    /// Runs one work item. A transient failure queues it again (`retry_later`); `Err` only
    /// when not even that could be recorded (storage unavailable): the message is then
    /// delivered again.
    pub async fn run(&self, work: &ImportWork) -> Result<(), ImportError> {
        let delivered = OffsetDateTime::now_utc();
        let (file, part) = self.store.file_and_part(&work.file, work.part).await?;
        let Some(mut file) = file else {
            warn!(message = "Work item for an unknown import; dropped.", import = %work.file_id());
            return Ok(());
        };
        if file.data.status.is_terminal() {
            return Ok(());
        }
        let Some(part) = part else {
            return Ok(());
        };
        if part.data.is_done() {
            self.finalize_if_complete(work, Some(part), None).await?;
            return Ok(());
        }
        // The first part to start marks the file as loading, in the part's claim.
        let starting = matches!(
            file.data.status,
            FileStatus::Queued | FileStatus::Registering
        );
        if starting {
            file.data.start_loading();
        }
        let claim = Claim::Take {
            file: starting.then(|| Box::new(file.clone())),
        };
        let loaded = self.load(work, part, claim).await;
        self.after_load(work, loaded, file, delivered).await?;
        Ok(())
    }

    /// Loads a part with the job of its kind, from its checkpoint.
    async fn load(
        &self,
        work: &ImportWork,
        part: Row<ImportPart>,
        claim: Claim,
    ) -> Result<Row<ImportPart>, ImportError> {
        match work.kind {
            FileKind::Bundle => jobs::run_bundle(self, work, part, claim).await,
            FileKind::Ndjson => jobs::run_ndjson_range(self, work, part, claim).await,
            FileKind::NdjsonGz => jobs::run_ndjson_gz(self, work, part, claim).await,
            FileKind::Zip => jobs::run_zip(self, work, part, claim).await,
        }
    }

    /// What follows a load: a part that cannot go on is closed with why, a transient failure
    /// is queued again, and the file is finished once its last part is done. The file's final
    /// status when this finished it.
    async fn after_load(
        &self,
        work: &ImportWork,
        loaded: Result<Row<ImportPart>, ImportError>,
        file: Row<ImportFile>,
        delivered: OffsetDateTime,
    ) -> Result<Option<FileStatus>, ImportError> {
        let finished = match loaded {
            Ok(row) => row,
            Err(ImportError::Superseded) => return Ok(None),
            Err(ImportError::Replaced(reason)) => {
                info!(message = "Import superseded by a newer upload.", import = %work.file_id());
                self.close_part(work, PartEnd::Superseded, &reason).await?
            }
            Err(ImportError::Rejected(reason) | ImportError::Gone(reason)) => {
                warn!(message = "File rejected.", import = %work.file_id(), reason = %reason);
                self.close_part(work, PartEnd::Rejected, &reason).await?
            }
            Err(ImportError::Transient(why)) => {
                return self.retry_later(work, why, delivered).await;
            }
        };
        self.finalize_if_complete(work, Some(finished), Some(file))
            .await
    }

    /// A part that failed transiently: queued again as a fresh message after a growing delay
    /// (so a host's dequeue count never sends it to the poison queue), or, once its checkpoint
    /// has not moved for `FHIRBULK_WORK_STALLED_SECS`, closed with a record of the lines or
    /// entries not loaded and why. A delivery that moved the checkpoint starts the delays anew.
    async fn retry_later(
        &self,
        work: &ImportWork,
        why: Transient,
        delivered: OffsetDateTime,
    ) -> Result<Option<FileStatus>, ImportError> {
        let part = self.store.part(&work.file, work.part).await?;
        let Some(part) = part.filter(|p| !p.data.is_done()) else {
            return Ok(None);
        };
        let progress_at = part
            .data
            .progress_at
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .unwrap_or(delivered);
        let stalled_for = OffsetDateTime::now_utc() - progress_at;
        if stalled_for >= self.settings.work.stalled_after {
            let finished = self.give_up(work, part, &why).await?;
            return self.finalize_if_complete(work, Some(finished), None).await;
        }
        let retry = if progress_at >= delivered {
            1
        } else {
            work.retry + 1
        };
        let delay = ImportWork::retry_delay(retry);
        warn!(
            message = "Import work failed; it is queued again.",
            import = %work.file_id(),
            part = work.part,
            retry,
            delay_secs = delay.as_secs(),
            status = why.http_status.unwrap_or(0),
            reason = %why
        );
        let next = ImportWork {
            retry,
            ..work.clone()
        };
        self.enqueue(&next, delay).await?;
        Ok(None)
    }

    /// Closes a part that made no progress for too long: what it had not loaded is counted
    /// as `notLoaded` and named in one error record, with the last failure's cause.
    async fn give_up(
        &self,
        work: &ImportWork,
        part: Row<ImportPart>,
        why: &Transient,
    ) -> Result<Row<ImportPart>, ImportError> {
        let left = jobs::unloaded(self, work, &part.data).await?;
        let hours = self.settings.work.stalled_after.as_secs_f64() / 3600.0;
        let record = ErrorRecord {
            part: work.part,
            position: PartEnd::GaveUp.as_str().to_string(),
            line: left.first_line,
            entry: None,
            zip_entry: None,
            target: None,
            status: why.http_status.unwrap_or(0),
            diagnostics: format!(
                "{} not loaded: the work failed for {hours:.1} h without progress (transient: {}); upload the file again to load them",
                left.description, why.reason
            ),
        };
        warn!(message = "Import part given up.", import = %work.file_id(), part = work.part, not_loaded = left.count);
        let mut counts = part.data.counts;
        counts.not_loaded += left.count;
        if let Some(lines) = left.lines {
            counts.lines = lines;
        }
        self.end_part(work, part, record, counts, PartEnd::GaveUp, &why.reason)
            .await
    }

    /// Ends a part that cannot finish normally, with one error record saying why.
    async fn close_part(
        &self,
        work: &ImportWork,
        how: PartEnd,
        reason: &str,
    ) -> Result<Row<ImportPart>, ImportError> {
        let record = ErrorRecord {
            part: work.part,
            position: how.as_str().to_string(),
            line: None,
            entry: None,
            zip_entry: None,
            target: None,
            status: 0,
            diagnostics: reason.to_string(),
        };
        let part = match self.store.part(&work.file, work.part).await? {
            Some(part) => part,
            None => Row::new(
                &work.file,
                &part_row(work.part),
                ImportPart::pending(work.start as i64, work.end as i64),
            ),
        };
        // A rejected file counts as one failure; a superseded one keeps what it counted.
        let mut counts = part.data.counts;
        if how != PartEnd::Superseded {
            counts.failed += 1;
        }
        self.end_part(work, part, record, counts, how, reason).await
    }

    /// Marks a part done with its error record, its final counts and why it ended (`how`:
    /// rejected, superseded, gave-up): the record first, so a crash between the two writes
    /// leaves the part to be ended again, never done without its record.
    async fn end_part(
        &self,
        work: &ImportWork,
        mut part: Row<ImportPart>,
        record: ErrorRecord,
        counts: Counts,
        how: PartEnd,
        reason: &str,
    ) -> Result<Row<ImportPart>, ImportError> {
        self.store.write_errors(&work.file, &[record]).await?;
        part.data.end(how, reason, counts);
        part.etag = self.store.upsert(&part).await?;
        Ok(part)
    }

    /// Finishes an import whose parts are all done (the reconciliation sweep).
    pub(super) async fn finish(&self, work: &ImportWork) -> Result<(), ImportError> {
        self.finalize_if_complete(work, None, None).await?;
        Ok(())
    }

    /// When every part is done: write the reports, move the file, close the file row (with
    /// the row of its only part, when it has one). The file's final status when this finished
    /// it. Idempotent: a repeat (redelivery, a racing worker) finds the work done or redoes it.
    /// `part` and `file` are the rows this worker already holds: a whole-file work item (every
    /// Bundle, gzip and zip, a one-range NDJSON) needs no further reads.
    ///
    /// The result JSON is written before the input moves: once moved, the file cannot be
    /// loaded again, and the sweep closes an import whose rows fell behind from its result.
    async fn finalize_if_complete(
        &self,
        work: &ImportWork,
        part: Option<Row<ImportPart>>,
        file: Option<Row<ImportFile>>,
    ) -> Result<Option<FileStatus>, ImportError> {
        let whole = work.is_whole_file();
        let parts = match (whole, part) {
            (false, _) => self.store.parts(&work.file).await?,
            (true, Some(part)) => vec![part],
            (true, None) => self.store.part(&work.file, 0).await?.into_iter().collect(),
        };
        if parts.iter().any(|p| !p.data.is_done()) {
            return Ok(None);
        }
        let file = match file {
            Some(f) if whole => Some(f),
            _ => self.store.file(&work.file).await?,
        };
        let Some(mut file) = file.filter(|f| !f.data.status.is_terminal()) else {
            return Ok(None);
        };
        let PartsSummary {
            totals,
            line_base,
            status,
            reason,
        } = PartsSummary::of(&parts);
        let source = format!("{}/{}", work.container, work.blob);
        // Reports go to the reports container under this upload's id: no uploaded name
        // can overwrite them, and each version of a file keeps its own.
        let reports = &self.settings.reports_container;
        let id = work.file_id();
        let mut error_report = None;
        if status != FileStatus::Loaded {
            let name = report_blob(&work.container, &work.blob, &id, "errors.ndjson");
            let report = ErrorReport {
                source: &source,
                per_line: work.kind != FileKind::Bundle,
                line_base: &line_base,
            };
            let chunks = report.chunks(self.store.error_pages(&work.file));
            self.blobs.upload_blocks(reports, &name, chunks).await?;
            error_report = Some(format!("{reports}/{name}"));
        }
        let result_name = report_blob(&work.container, &work.blob, &id, "result.json");
        let mut result = ImportResult {
            file: source,
            status,
            input: InputOutcome::planned(work, status).describe(),
            resources: totals.into(),
            lines_read: totals.lines,
            error_report: error_report.clone(),
            reason: reason.clone(),
        };
        self.write_result(&result_name, &result).await?;
        self.move_as_reported(work, &mut result, &result_name)
            .await?;
        file.data.finish(
            status,
            FileEnding {
                outcome: result.input,
                result: format!("{reports}/{result_name}"),
                error_report,
                reason,
                counts: totals,
            },
        );
        self.close_rows(&file, whole.then(|| &parts[0])).await?;
        info!(
            message = "Import finished.",
            import = %work.file_id(),
            container = %work.container,
            status = status.as_str(),
            loaded = totals.loaded,
            failed = totals.failed
        );
        Ok(Some(status))
    }

    /// Writes `result` as the result JSON `name` in the reports container.
    pub(super) async fn write_result(
        &self,
        name: &str,
        result: &ImportResult,
    ) -> Result<(), ImportError> {
        let body = serde_json::to_vec(result).expect("a result serialises");
        self.blobs
            .upload(&self.settings.reports_container, name, Bytes::from(body))
            .await?;
        Ok(())
    }

    /// Moves the input where `result` (written as `result_name`) says it went, and writes the
    /// result again when it went elsewhere (replaced by a newer upload, or deleted meanwhile).
    pub(super) async fn move_as_reported(
        &self,
        work: &ImportWork,
        result: &mut ImportResult,
        result_name: &str,
    ) -> Result<(), ImportError> {
        let Some(target) = target_container(&work.container, result.status) else {
            return Ok(());
        };
        let went = self.move_input(work, &target).await?.describe();
        if went != result.input {
            result.input = went;
            self.write_result(result_name, result).await?;
        }
        Ok(())
    }

    /// Writes the finished file row, in one transaction with the row of its only part (marked
    /// done by its load, and not written since). Both unconditionally: the file is finished.
    async fn close_rows(
        &self,
        file: &Row<ImportFile>,
        only_part: Option<&Row<ImportPart>>,
    ) -> Result<(), ImportError> {
        let Some(part) = only_part else {
            self.store.upsert(file).await?;
            return Ok(());
        };
        let mut rows = (file.to_entity(), part.to_entity());
        rows.0.etag.clear();
        rows.1.etag.clear();
        let ops = [
            TransactionOp::Replace(&rows.0),
            TransactionOp::Replace(&rows.1),
        ];
        match self.store.transact(&ops).await? {
            TransactionOutcome::Applied(_) => Ok(()),
            TransactionOutcome::Refused { status, .. } => Err(ImportError::transient(format!(
                "cannot record the end of import {} in the imports table: HTTP {status}",
                import_id(&file.partition_key)
            ))),
        }
    }

    /// Moves the input file once; a repeat that finds it already moved is fine. Says where
    /// the input is now, never naming a blob that is not there.
    async fn move_input(
        &self,
        work: &ImportWork,
        target_container: &str,
    ) -> Result<InputOutcome, ImportError> {
        let moved = self
            .blobs
            .move_blob(
                &work.container,
                &work.blob,
                target_container,
                &work.blob,
                Some(&work.etag),
            )
            .await?;
        Ok(match moved {
            MoveOutcome::Moved => {
                InputOutcome::MovedTo(format!("{target_container}/{}", work.blob))
            }
            MoveOutcome::SourceChanged => {
                warn!(message = "Input replaced by a newer upload; not moved.", import = %work.file_id());
                InputOutcome::Replaced
            }
            // Moved by an earlier try, or deleted by someone: the target says which.
            MoveOutcome::SourceMissing => {
                match self.blobs.properties(target_container, &work.blob).await? {
                    Some(_) => InputOutcome::MovedTo(format!("{target_container}/{}", work.blob)),
                    None => InputOutcome::Deleted,
                }
            }
        })
    }
}

/// The container an input of `container` moves to once finished with `status`: processed
/// when it loaded, err otherwise; `None` when superseded (the blob is the newer upload now:
/// nothing of this version is left to move).
fn target_container(container: &str, status: FileStatus) -> Option<String> {
    match status {
        FileStatus::Superseded => None,
        FileStatus::Loaded => Some(ImportSettings::processed_container(container)),
        _ => Some(ImportSettings::err_container(container)),
    }
}

/// Where an import's input file is once it is finished.
#[derive(Clone, Debug, PartialEq, Eq)]
enum InputOutcome {
    /// `<container>processed/<blob>` or `<container>err/<blob>`.
    MovedTo(String),
    /// A newer upload took its name; that one has its own import.
    Replaced,
    /// Someone deleted it while it loaded.
    Deleted,
}

impl InputOutcome {
    /// Where the input goes when it is finished with `status`.
    fn planned(work: &ImportWork, status: FileStatus) -> Self {
        match target_container(&work.container, status) {
            Some(target) => InputOutcome::MovedTo(format!("{target}/{}", work.blob)),
            None => InputOutcome::Replaced,
        }
    }

    fn describe(&self) -> String {
        match self {
            InputOutcome::MovedTo(path) => path.clone(),
            InputOutcome::Replaced => "replaced".into(),
            InputOutcome::Deleted => "deleted".into(),
        }
    }
}

/// A file's error report: one OperationOutcome line per error record, with line numbers
/// counted from the start of the file.
#[derive(Clone, Copy)]
struct ErrorReport<'a> {
    source: &'a str,
    per_line: bool,
    /// Lines before each part (an NDJSON file's ranges number their lines from 1).
    line_base: &'a [i64],
}

impl<'a> ErrorReport<'a> {
    /// The report's NDJSON in blocks of about 4 MiB, read a page of error rows at a time: a
    /// file with millions of bad lines is reported in bounded memory.
    fn chunks(
        self,
        pages: ErrorPages<'a>,
    ) -> impl futures::Stream<Item = std::io::Result<Bytes>> + 'a {
        const BLOCK_BYTES: usize = 4 * 1024 * 1024;
        futures::stream::try_unfold((Some(pages), false), move |(pages, sent_any)| async move {
            let Some(mut pages) = pages else {
                return Ok(None);
            };
            let mut block = String::new();
            while block.len() < BLOCK_BYTES {
                let Some(records) = pages.next_page().await.map_err(std::io::Error::other)? else {
                    // The last block; an empty one only when the report is empty.
                    if block.is_empty() && sent_any {
                        return Ok(None);
                    }
                    return Ok(Some((Bytes::from(block), (None, true))));
                };
                for r in &records {
                    block.push_str(&self.line(r));
                    block.push('\n');
                }
            }
            Ok(Some((Bytes::from(block), (Some(pages), true))))
        })
    }

    fn line(&self, r: &ErrorRecord) -> String {
        let line = r
            .line
            .filter(|_| self.per_line)
            .map(|l| l + self.line_base.get(r.part as usize).copied().unwrap_or(0));
        error_outcome(self.source, r, line).to_string()
    }
}

/// What the finished parts of a file add up to.
struct PartsSummary {
    totals: Counts,
    /// The number of lines before each part, for absolute line numbers in the error report.
    line_base: Vec<i64>,
    /// The file's final status, and why when it did not load (superseded, rejected).
    status: FileStatus,
    reason: Option<String>,
}

impl PartsSummary {
    fn of(parts: &[Row<ImportPart>]) -> Self {
        let mut totals = Counts::default();
        let mut line_base = Vec::with_capacity(parts.len());
        let (mut rejected, mut superseded) = (None, None);
        for p in parts {
            line_base.push(totals.lines);
            totals.add(p.data.counts);
            if let Some(r) = &p.data.rejected {
                rejected = Some(r.clone());
            }
            if let Some(r) = &p.data.superseded {
                superseded = Some(r.clone());
            }
        }
        let status = if superseded.is_some() {
            FileStatus::Superseded
        } else if rejected.is_some() {
            FileStatus::Rejected
        } else if totals.failed > 0 || totals.not_loaded > 0 {
            FileStatus::CompletedWithErrors
        } else {
            FileStatus::Loaded
        };
        PartsSummary {
            totals,
            line_base,
            status,
            reason: superseded.or(rejected),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(lines: i64, loaded: i64, failed: i64) -> Row<ImportPart> {
        let mut p = ImportPart::pending(0, 10);
        p.status = super::super::state::PartStatus::Done;
        p.counts = Counts {
            loaded,
            failed,
            lines,
            ..Counts::default()
        };
        Row::new("k", &part_row(0), p)
    }

    #[test]
    fn finished_parts_add_up_to_the_file_s_status() {
        let clean = PartsSummary::of(&[part(3, 3, 0), part(2, 2, 0)]);
        assert_eq!(clean.status, FileStatus::Loaded);
        assert_eq!(clean.line_base, [0, 3]);
        assert_eq!(clean.totals.loaded, 5);
        let failing = PartsSummary::of(&[part(3, 2, 1), part(2, 2, 0)]);
        assert_eq!(failing.status, FileStatus::CompletedWithErrors);
        let mut rejected = part(0, 0, 1);
        rejected.data.rejected = Some("not a Bundle".into());
        let r = PartsSummary::of(&[rejected.clone()]);
        assert_eq!(
            (r.status, r.reason.as_deref()),
            (FileStatus::Rejected, Some("not a Bundle"))
        );
        let mut superseded = part(1, 1, 0);
        superseded.data.superseded = Some("a newer upload".into());
        let s = PartsSummary::of(&[rejected, superseded]);
        assert_eq!(
            s.status,
            FileStatus::Superseded,
            "superseded wins over rejected"
        );
        assert_eq!(s.reason.as_deref(), Some("a newer upload"));
    }
}
