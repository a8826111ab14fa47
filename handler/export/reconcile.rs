//! The reconciliation sweep for exports (as `import::reconcile` for imports): a running export
//! none of whose rows was written for longer than work can stay hidden has lost its queued
//! step (a host's poison queue, an emulator that lost its last seconds). It gets the steps it
//! needs again: the gather step while gathering; each pending search, the compose step of every
//! type ready, and the finish step once nothing is pending, while exporting or composing.
//! Every step is safe to run twice.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use super::schedule::fetch_of;
use super::state::{ExportJob, JobStatus, PENDING, WorkStatus, parse_work_row};
use super::{ExportError, ExportWork, Exporter};
use crate::storage::Row;

impl Exporter {
    /// How long an export's rows may go unwritten before its work is taken for lost: the
    /// longest a message stays hidden (twice the visibility timeout) and five minutes more.
    pub fn stale_after(&self) -> Duration {
        self.settings.work.visibility * 2 + Duration::from_secs(300)
    }

    /// One sweep over the running exports; returns how many steps were queued again.
    pub async fn reconcile(&self) -> Result<usize, ExportError> {
        self.reconcile_stale_after(self.stale_after()).await
    }

    /// A sweep that takes work for lost once every row of an export is `stale_after` old.
    pub async fn reconcile_stale_after(&self, stale_after: Duration) -> Result<usize, ExportError> {
        let stale = OffsetDateTime::now_utc() - stale_after;
        let mut queued = 0;
        for job in self.store.jobs().await? {
            let status = job.data.status;
            if !status.is_running() {
                continue;
            }
            let export = job.partition_key.clone();
            match self.requeue_lost(&export, &job, status, stale).await {
                Ok(n) => queued += n,
                Err(e) => {
                    warn!(message = "Cannot reconcile an export; the next sweep tries again.", export = %export, error = %e)
                }
            }
        }
        if queued > 0 {
            info!(message = "Reconciled running exports.", queued);
        }
        Ok(queued)
    }

    async fn requeue_lost(
        &self,
        export: &str,
        job: &Row<ExportJob>,
        status: JobStatus,
        stale: OffsetDateTime,
    ) -> Result<usize, ExportError> {
        if job.written_at.is_none_or(|at| at > stale) {
            return Ok(0);
        }
        if status == JobStatus::Gathering {
            self.enqueue(&ExportWork::Gather {
                export: export.to_string(),
            })
            .await?;
            return Ok(1);
        }
        let rows = self.store.work_row_summaries(export).await?;
        if rows
            .iter()
            .any(|r| r.written_at.is_none_or(|at| at > stale))
        {
            return Ok(0); // some of its work is alive
        }
        drop(rows);
        let mut queued = 0;
        for row in &self.store.work_rows_where(export, PENDING).await? {
            if parse_work_row(&row.row_key).is_none() {
                continue;
            }
            let Some(fetch) = fetch_of(export, row) else {
                // A row of a version that did not keep the search: end it as failed, so the
                // export completes and its errors file says what is missing.
                let mut failed = row.clone();
                failed.data.status = WorkStatus::Failed;
                failed.data.error = Some(
                    "the queued step of this search was lost, and its row (written by an earlier version) does not record the search; export again to get its resources".into(),
                );
                self.store.upsert(&failed).await?;
                continue;
            };
            self.enqueue(&fetch).await?;
            queued += 1;
        }
        // The compose steps of the types ready, and the finish step when nothing is pending.
        self.schedule_ready_types(export).await?;
        Ok(queued + 1)
    }
}
