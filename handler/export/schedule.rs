//! Moving an export from one step to the next: registering the planned work items (a row and
//! a queue message each) and queuing the compose step once every work item is finished. Both
//! kinds of export (patients, export-all) plan differently and schedule the same way.

use futures::{StreamExt, TryStreamExt};
use tracing::info;

use super::state::{JobStatus, Progress, WORK_PENDING, work_row};
use super::{ExportError, ExportWork, Exporter};
use crate::import::ledger::now_rfc3339;
use crate::storage::{Entity, StorageError};

/// Rows inserted and messages sent at once while registering.
const REGISTRATION_CONCURRENCY: usize = 16;

/// One planned search: it becomes the row `w-<batch>-<include>` and a `fetch` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    pub batch: u32,
    pub include: u32,
    /// The resource type the search is on (shown in progress before any resource arrives).
    pub resource_type: String,
    /// The search, relative to the FHIR base URL.
    pub search: String,
}

impl Exporter {
    /// Registers the work items (rows first, then messages) and marks the job `exporting`.
    /// Safe to repeat with the same items: rows already there stay, a repeated message finds
    /// its row no longer pending or does the same work again. `item(n)` builds the n-th of
    /// `count` items when it is needed, so a large plan is never held whole in memory.
    pub(crate) async fn register_work(
        &self,
        export: &str,
        mut job: Entity,
        count: usize,
        item: impl Fn(usize) -> WorkItem + Sync,
    ) -> Result<(), ExportError> {
        let item = &item;
        futures::stream::iter(0..count)
            .map(|n| async move {
                let item = item(n);
                let mut row = Entity::new(export, &work_row(item.batch, item.include));
                row.set_str("status", WORK_PENDING);
                row.set_str("type", item.resource_type);
                self.store.insert(&row).await.map(|_| ())
            })
            .buffer_unordered(REGISTRATION_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        futures::stream::iter(0..count)
            .map(|n| async move {
                let item = item(n);
                self.enqueue(&ExportWork::Fetch {
                    export: export.to_string(),
                    batch: item.batch,
                    include: item.include,
                    search: item.search,
                })
                .await
            })
            .buffer_unordered(REGISTRATION_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        job.set_str("status", JobStatus::Exporting.as_str());
        job.set_str("gathered", now_rfc3339());
        job.set_i64("workItems", count as i64);
        if !self.store.replace_if_unchanged(&mut job).await? {
            return Ok(()); // terminated meanwhile, or another delivery registered first
        }
        info!(message = "Export planned.", export, work_items = count);
        // Work items that finished before the job said "exporting" could not start the
        // compose step; and with no work item there is nothing else to start it.
        self.schedule_compose_if_finished(export).await
    }

    /// Queues the compose step when every work item is finished. Called after each work item
    /// and after planning; the last work item to finish always sees all the others finished
    /// (each looks after its own write), and planning covers items finished before it.
    pub(crate) async fn schedule_compose_if_finished(
        &self,
        export: &str,
    ) -> Result<(), ExportError> {
        let rows = self.store.work_rows(export).await?;
        if !Progress::of(&rows).all_finished() {
            return Ok(());
        }
        if let Some((_, JobStatus::Exporting | JobStatus::Composing)) = self.job(export).await? {
            self.enqueue(&ExportWork::Compose {
                export: export.to_string(),
            })
            .await?;
        }
        Ok(())
    }

    pub(crate) async fn enqueue(&self, work: &ExportWork) -> Result<(), StorageError> {
        let text = serde_json::to_string(work).expect("work items serialise");
        self.queue.send(&text, std::time::Duration::ZERO).await
    }
}
