//! Moving an export from one step to the next: registering the planned work items (a row and
//! a queue message each), queuing a type's compose step once no pending search can return that
//! type any more, and queuing the finish step once nothing is pending. Both kinds of export
//! (patients, export-all) plan differently and schedule the same way.

use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::compose::{compose_type, composed_types};
use super::fetch::fetch_pending;
use super::state::{
    ExportJob, JobStatus, PENDING, Returns, WorkRow, parse_work_row, ready_types, work_row,
};
use super::{ExportError, ExportWork, Exporter};
use crate::storage::{Row, StorageError};

/// Work items registered at once.
const REGISTRATION_CONCURRENCY: usize = 16;
/// Types a small plan composes at once in its planning step.
const COMPOSE_IN_STEP: usize = 4;

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

/// The `fetch` step of a work row, from its key and its search; `None` for a row whose key is
/// not a work item's, or that does not record its search (written by an earlier version).
pub(crate) fn fetch_of(export: &str, row: &Row<WorkRow>) -> Option<ExportWork> {
    let (batch, include) = parse_work_row(&row.row_key)?;
    let search = row.data.search.clone().filter(|s| !s.is_empty())?;
    Some(ExportWork::Fetch {
        export: export.to_string(),
        batch,
        include,
        search,
    })
}

impl WorkItem {
    /// Its row, pending.
    fn row(&self, export: &str) -> Row<WorkRow> {
        Row::new(
            export,
            &work_row(self.batch, self.include),
            WorkRow::pending(&self.resource_type, &self.search),
        )
    }

    /// Its `fetch` message.
    fn fetch(&self, export: &str) -> ExportWork {
        ExportWork::Fetch {
            export: export.to_string(),
            batch: self.batch,
            include: self.include,
            search: self.search.clone(),
        }
    }
}

impl Exporter {
    /// Ends an export that cannot be planned (its patients or its time windows cannot be
    /// found) as failed for `why`, on its job row; `refused` is the FHIR server's 4xx when it
    /// refused the definition's own search (the status answers 400 then: the definition is to
    /// be fixed).
    pub(crate) async fn fail_planning(
        &self,
        mut job: Row<ExportJob>,
        why: &str,
        refused: Option<u16>,
    ) -> Result<(), ExportError> {
        warn!(message = "Export failed while planning.", export = %job.partition_key);
        job.data.fail(why, refused);
        self.store.replace_if_unchanged(&mut job).await?;
        Ok(())
    }

    /// Registers the work items and marks the job `exporting`. Each item's row is written
    /// before its message, so fetching starts while the rest of a large plan is registered
    /// (a message whose row is missing would be dropped). Safe to repeat with the same items:
    /// rows already there stay, a repeated message finds its row no longer pending or does the
    /// same work again. `item(n)` builds the n-th of `count` items when it is needed, so a
    /// large plan is never held whole in memory. A small plan (`fetches_in_step`) gets no
    /// messages: its searches run in this step (`fetch_in_step`).
    pub(crate) async fn register_work(
        &self,
        export: &str,
        mut job: Row<ExportJob>,
        count: usize,
        item: impl Fn(usize) -> WorkItem + Sync,
    ) -> Result<(), ExportError> {
        let in_step = count <= self.fetches_in_step();
        self.register_rows(export, count, &item, !in_step).await?;
        if !self.mark_planned(export, &mut job, count, in_step).await? {
            return Ok(()); // terminated meanwhile, or another delivery registered first
        }
        if in_step {
            self.fetch_in_step(export, &job.data, count, &item).await?;
            return self.compose_in_step(export).await;
        }
        self.schedule_ready_types(export).await
    }

    /// Writes the rows of `count` items, each followed by its `fetch` message when `queue`.
    pub(crate) async fn register_rows(
        &self,
        export: &str,
        count: usize,
        item: &(impl Fn(usize) -> WorkItem + Sync),
        queue: bool,
    ) -> Result<(), ExportError> {
        futures::stream::iter(0..count)
            .map(|n| async move {
                let item = item(n);
                let row = item.row(export);
                self.store.insert(&row).await?;
                if !queue {
                    return Ok(());
                }
                self.enqueue(&item.fetch(export)).await
            })
            .buffer_unordered(REGISTRATION_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Marks the job `exporting` with `count` work items registered; `false` when it changed
    /// meanwhile (terminated, or another delivery registered first).
    pub(crate) async fn mark_planned(
        &self,
        export: &str,
        job: &mut Row<ExportJob>,
        count: usize,
        in_step: bool,
    ) -> Result<bool, ExportError> {
        job.data.exporting(count);
        if !self.store.replace_if_unchanged(job).await? {
            return Ok(false);
        }
        info!(
            message = "Export planned.",
            export,
            work_items = count,
            in_step
        );
        Ok(true)
    }

    /// Plans of at most this many searches (`FHIRBULK_EXPORT_SEARCHES_IN_STEP`, 32) run them
    /// in the planning step, as many at once as the FHIR client allows: a search queued costs
    /// three queue requests, two row reads and a hop through the queue, which for a small
    /// export are most of its time. Larger plans go on the queue, shared by every instance.
    pub(crate) fn fetches_in_step(&self) -> usize {
        self.settings.searches_in_step
    }

    /// Runs the searches of a small plan (see `fetches_in_step`); one that fails transiently
    /// is queued to be tried again like any other. Should this step die meanwhile, its repeat
    /// queues the searches still pending (`queue_pending`).
    async fn fetch_in_step(
        &self,
        export: &str,
        job: &ExportJob,
        count: usize,
        item: &(impl Fn(usize) -> WorkItem + Sync),
    ) -> Result<(), ExportError> {
        futures::stream::iter(0..count)
            .map(|n| async move {
                let item = item(n);
                let row = item.row(export);
                let fetched = fetch_pending(self, export, job, row, &item, 1).await;
                match fetched {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        warn!(message = "Export search failed in its planning step; it is queued to be tried again.", export, batch = item.batch, include = item.include, error = %e);
                        self.enqueue(&item.fetch(export)).await
                    }
                }
            })
            .buffer_unordered(self.fhir.max_concurrency())
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// After a small plan's searches ran in its step: composes the types they made ready and,
    /// when no search is left pending, finishes the export, in this step too (each a hop
    /// through the queue otherwise). A step that fails is queued, to be tried again like any
    /// other; searches queued after failing schedule what they make ready themselves.
    async fn compose_in_step(&self, export: &str) -> Result<(), ExportError> {
        let (ready, nothing_pending) = self.ready_steps(export).await?;
        futures::stream::iter(ready)
            .map(|resource_type| async move {
                if let Err(e) = compose_type(self, export, &resource_type).await {
                    warn!(message = "Export compose step failed in its planning step; it is queued to be tried again.", export, resource_type = %resource_type, error = %e);
                    self.enqueue_compose_type(export, &resource_type).await?;
                }
                Ok::<(), ExportError>(())
            })
            .buffer_unordered(COMPOSE_IN_STEP)
            .try_collect::<Vec<()>>()
            .await?;
        if !nothing_pending {
            return Ok(());
        }
        if let Err(e) = super::finish::run(self, export).await {
            warn!(message = "Export finish step failed in its planning step; it is queued to be tried again.", export, error = %e);
            self.enqueue_finish(export).await?;
        }
        Ok(())
    }

    /// A repeated planning step of an export already planned: the first delivery may have
    /// died while it ran a small plan's searches (`fetch_in_step`), so those still pending are
    /// queued (a search queued twice finds its row no longer pending, or does the same work
    /// again); then the types ready by now are scheduled.
    pub(crate) async fn queue_pending(
        &self,
        export: &str,
        job: &ExportJob,
    ) -> Result<(), ExportError> {
        if job.work_items.max(0) as usize <= self.fetches_in_step() {
            let pending = self.store.work_rows_where(export, PENDING).await?;
            for row in &pending {
                if let Some(fetch) = fetch_of(export, row) {
                    self.enqueue(&fetch).await?;
                }
            }
        }
        self.schedule_ready_types(export).await
    }

    /// Called once a work item's row is finished (and again by a repeated delivery): queues
    /// the compose step of each type no pending item can return any more, and the finish
    /// step when no item is pending. An item whose search returns only its own type checks
    /// that type with one small query; an item that can return any type (`_include`) may
    /// have been the last one holding up types it did not return itself, so it looks at all
    /// of them. Items that finished while the plan was still being registered are covered by
    /// the registration, which ends with the same look at all types.
    pub(crate) async fn after_work_item(
        &self,
        export: &str,
        row: &Row<WorkRow>,
    ) -> Result<(), ExportError> {
        if !matches!(
            self.job(export).await?,
            Some((_, JobStatus::Exporting | JobStatus::Composing))
        ) {
            return Ok(());
        }
        if row.data.returns == Returns::AnyType {
            return self.schedule_ready_types(export).await;
        }
        let resource_type = &row.data.resource_type;
        if !resource_type.is_empty() && !self.store.may_still_return(export, resource_type).await? {
            self.enqueue_compose_type(export, resource_type).await?;
        }
        self.finish_when_nothing_pending(export).await
    }

    /// Queues the compose step of every type that finished items returned, no pending item
    /// can return any more, and is not composed yet; then the finish step if nothing is
    /// pending. Reads every work row: for the end of registration and `_include` searches.
    pub(crate) async fn schedule_ready_types(&self, export: &str) -> Result<(), ExportError> {
        let (ready, nothing_pending) = self.ready_steps(export).await?;
        for resource_type in ready {
            self.enqueue_compose_type(export, &resource_type).await?;
        }
        if nothing_pending {
            self.enqueue_finish(export).await?;
        }
        Ok(())
    }

    /// The types ready to compose (finished items returned them, no pending item can return
    /// them any more, not composed yet), and whether no item is pending (the finish step is
    /// due). Reads every work row.
    async fn ready_steps(&self, export: &str) -> Result<(Vec<String>, bool), ExportError> {
        let rows = self.store.work_row_summaries(export).await?;
        let composed = composed_types(self, export).await?;
        let ready = ready_types(&rows)
            .into_iter()
            .filter(|t| !composed.contains(t))
            .collect();
        Ok((ready, !rows.iter().any(|r| r.data.is_pending())))
    }

    /// Queues the finish step when no work item is pending.
    pub(crate) async fn finish_when_nothing_pending(
        &self,
        export: &str,
    ) -> Result<(), ExportError> {
        if !self.store.any_work_pending(export).await? {
            self.enqueue_finish(export).await?;
        }
        Ok(())
    }

    async fn enqueue_compose_type(
        &self,
        export: &str,
        resource_type: &str,
    ) -> Result<(), StorageError> {
        self.enqueue(&ExportWork::ComposeType {
            export: export.to_string(),
            resource_type: resource_type.to_string(),
        })
        .await
    }

    async fn enqueue_finish(&self, export: &str) -> Result<(), StorageError> {
        self.enqueue(&ExportWork::Finish {
            export: export.to_string(),
        })
        .await
    }

    pub(crate) async fn enqueue(&self, work: &ExportWork) -> Result<(), StorageError> {
        let text = serde_json::to_string(work).expect("work items serialise");
        self.queue.send(&text, std::time::Duration::ZERO).await
    }
}
