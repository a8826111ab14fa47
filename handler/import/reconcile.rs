//! The reconciliation sweep: nothing stays "loading" for ever. A queue message can be lost (a
//! host's poison queue, an emulator that lost its last seconds) and a table row can lag behind
//! the work it describes (a worker that moved the file but could not record it), so every few
//! minutes each unfinished import is looked at:
//! - an import whose result was written is closed from that result (its input moved first,
//!   when the work stopped between the two);
//! - a part not done whose row has not been written for longer than work can stay hidden
//!   (`stale_after`) gets a fresh work item, from its checkpoint (a second delivery of a live
//!   item is harmless: the part's ETag lets only one advance it); so does a file whose load on
//!   delivery died with its process;
//! - an import whose parts are all done is finished;
//! - a registration that stopped half-way is completed.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use super::Importer;
use super::report::ImportResult;
use super::state::{FileEnding, FileStatus, ImportFile, ImportPart};
use super::work::{ImportError, ImportWork, import_id};
use crate::storage::reports::report_blob;
use crate::storage::{BlobVersion, Row};

/// What one sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub requeued: usize,
    pub closed_from_result: usize,
    pub finished: usize,
    pub registered: usize,
}

impl Importer {
    /// How long a part's row may go unwritten before its work is taken for lost: the longest a
    /// message stays hidden (twice the visibility timeout) plus the longest retry delay.
    pub fn stale_after(&self) -> Duration {
        self.settings.work.visibility * 2 + ImportWork::retry_delay(u32::MAX)
    }

    /// One sweep over the unfinished imports (see the module doc).
    pub async fn reconcile(&self) -> Result<Sweep, ImportError> {
        self.reconcile_stale_after(self.stale_after()).await
    }

    /// A sweep that takes work for lost once its rows are `stale_after` old (tests: zero).
    pub async fn reconcile_stale_after(&self, stale_after: Duration) -> Result<Sweep, ImportError> {
        let mut sweep = Sweep::default();
        let stale = OffsetDateTime::now_utc() - stale_after;
        for status in [
            FileStatus::Registering,
            FileStatus::Queued,
            FileStatus::Loading,
            FileStatus::Finalizing,
        ] {
            for file in self.store.files(Some(status)).await? {
                if file.written_at.is_none_or(|at| at > stale) {
                    continue;
                }
                if let Err(e) = self.reconcile_file(&file, status, stale, &mut sweep).await {
                    warn!(message = "Cannot reconcile an import; the next sweep tries again.", import = %import_id(&file.partition_key), error = %e);
                }
            }
        }
        if sweep != Sweep::default() {
            info!(
                message = "Reconciled unfinished imports.",
                requeued = sweep.requeued,
                closed_from_result = sweep.closed_from_result,
                finished = sweep.finished,
                registered = sweep.registered
            );
        }
        Ok(sweep)
    }

    async fn reconcile_file(
        &self,
        file: &Row<ImportFile>,
        status: FileStatus,
        stale: OffsetDateTime,
        sweep: &mut Sweep,
    ) -> Result<(), ImportError> {
        let key = file.partition_key.as_str();
        let f = &file.data;
        let (container, blob, etag) = (f.container.as_str(), f.blob.as_str(), f.etag.as_str());
        let size = f.size.max(0) as u64;
        if status == FileStatus::Registering {
            self.register(container, blob, BlobVersion::new(etag, size))
                .await?;
            sweep.registered += 1;
            return Ok(());
        }
        // The work finished and wrote its result, but the rows did not keep up: close the
        // import from the result rather than load the file again (or a file that is no longer
        // there), moving the input first if it was not moved yet.
        let current = self.blobs.properties(container, blob).await?;
        let still_there =
            current.is_some_and(|c| c.etag.trim_matches('"') == etag.trim_matches('"'));
        if self.close_from_result(file, still_there).await? {
            sweep.closed_from_result += 1;
            return Ok(());
        }
        let parts = self.store.parts(key).await?;
        let work_of = |part: &Row<ImportPart>| {
            let number = part
                .row_key
                .strip_prefix("part-")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let (start, end) = (part.data.start.max(0), part.data.end.max(0));
            f.work(key, number, start as u64, end as u64)
        };
        let pending: Vec<&Row<ImportPart>> = parts.iter().filter(|p| !p.data.is_done()).collect();
        if pending.is_empty() {
            if let Some(part) = parts.first() {
                self.finish(&work_of(part)).await?;
                sweep.finished += 1;
            }
            return Ok(());
        }
        for part in pending {
            if part.written_at.is_none_or(|at| at > stale) {
                continue;
            }
            self.enqueue(&work_of(part), Duration::ZERO).await?;
            sweep.requeued += 1;
        }
        Ok(())
    }

    /// Closes an import from the result JSON its work wrote, moving the input where the
    /// result says when it is `still_there`; `false` when there is no result.
    async fn close_from_result(
        &self,
        file: &Row<ImportFile>,
        still_there: bool,
    ) -> Result<bool, ImportError> {
        let key = file.partition_key.as_str();
        let (container, blob) = (file.data.container.as_str(), file.data.blob.as_str());
        let reports = &self.settings.reports_container;
        let name = report_blob(container, blob, &import_id(key), "result.json");
        let Some((_, bytes)) = self.blobs.read_all(reports, &name).await? else {
            return Ok(false);
        };
        // A result that does not parse, or of a status that is not final, closes nothing.
        let Ok(mut result) = serde_json::from_slice::<ImportResult>(&bytes) else {
            return Ok(false);
        };
        if !result.status.is_terminal() {
            return Ok(false);
        }
        if still_there {
            let work = file.data.whole_file_work(key);
            self.move_as_reported(&work, &mut result, &name).await?;
        }
        let mut row = file.clone();
        let counts = result.counts();
        row.data.finish(
            result.status,
            FileEnding {
                outcome: result.input,
                result: format!("{reports}/{name}"),
                error_report: result.error_report,
                reason: result.reason,
                counts,
            },
        );
        self.store.upsert(&row).await?;
        Ok(true)
    }
}
