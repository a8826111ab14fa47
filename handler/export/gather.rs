//! Step 1 of a patient export: page the query for patient ids, then plan the work items (an
//! export-all plans its time windows instead: see `windows`).
//!
//! Progress is checkpointed at most every few seconds: the ids found since the last checkpoint
//! go to `<export>/_state/ids-<n>.txt`, then the job row records the next page to read (with its
//! ETag, so a duplicate delivery or a terminate in between stops this one). A redelivered step
//! resumes at the recorded page. Planning reads the id files back, de-duplicates, batches and
//! registers work rows and messages; repeating it is harmless (rows exist, messages duplicate
//! no-ops).

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use super::definition::{ExportDefinition, Include};
use super::members::{self, ReadError};
use super::patients::{batch_ids, dedupe, ids_per_batch, next_link, patient_ids};
use super::schedule::WorkItem;
use super::state::ExportJob;
use super::state::JobStatus;
use super::{ExportError, ExportKind, Exporter};
use crate::storage::Row;

const CHECKPOINT_EVERY: Duration = Duration::from_secs(3);
/// Cohorts of up to this many chunks (`FHIRBULK_EXPORT_IDS_PER_CHUNK`) are planned in memory
/// (de-duplicated whole, and a small plan runs in the planning step); larger ones one ids blob
/// at a time (`plan_streamed`).
const PLAN_IN_MEMORY_CHUNKS: i64 = 4;
/// Deliveries after which a gather step for an export with no job row is dropped (the start
/// request queues the step just before writing the row, and fails if it cannot).
const MISSING_JOB_ATTEMPTS: u32 = 3;
/// How long a gather step waits for its job row, which the start request writes just after
/// queuing the step, before leaving it to a later delivery.
const JOB_ROW_WAIT: Duration = Duration::from_secs(2);

pub(crate) fn ids_blob(export: &str, seq: i64) -> String {
    Exporter::blob_name(export, &format!("_state/ids-{seq:06}.txt"))
}

/// The job row, waiting up to `JOB_ROW_WAIT` for it to appear.
async fn job_when_recorded(
    ex: &Exporter,
    export: &str,
) -> Result<Option<(Row<ExportJob>, JobStatus)>, ExportError> {
    let deadline = Instant::now() + JOB_ROW_WAIT;
    loop {
        if let Some(found) = ex.job(export).await? {
            return Ok(Some(found));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(ex: &Exporter, export: &str, attempt: u32) -> Result<(), ExportError> {
    let Some((mut job, status)) = job_when_recorded(ex, export).await? else {
        if attempt < MISSING_JOB_ATTEMPTS {
            return Err(ExportError::transient(format!(
                "export {export} is not recorded yet"
            )));
        }
        warn!(
            message = "Gather step for an unknown export dropped.",
            export
        );
        return Ok(());
    };
    match status {
        JobStatus::Gathering => {}
        // A repeat after planning: the first delivery may have died while it ran a small
        // plan's searches, or between marking the job `exporting` and queuing the types that
        // were ready by then.
        JobStatus::Exporting => return ex.queue_pending(export, &job.data).await,
        _ => return Ok(()),
    }
    if job.data.kind == ExportKind::All {
        return match ex.all_definition(&job.data) {
            Ok(d) => super::windows::plan(ex, export, job, &d, attempt).await,
            Err(e) => {
                ex.fail_planning(job, &format!("the stored definition is invalid: {e}"), None)
                    .await
            }
        };
    }
    if job.data.kind == ExportKind::Bulk {
        match super::bulk::BulkDefinition::parse(&job.data.definition) {
            Ok(d) if d.patient_query.is_none() => return d.plan_system(ex, export, job).await,
            Ok(_) => {} // Patient or Group level: its patients are gathered below
            Err(e) => {
                return ex
                    .fail_planning(job, &format!("the stored definition is invalid: {e}"), None)
                    .await;
            }
        }
    }
    let definition = match ex.definition(&job.data) {
        Ok(d) => d,
        Err(e) => {
            return ex
                .fail_planning(job, &format!("the stored definition is invalid: {e}"), None)
                .await;
        }
    };
    if members::is_group_read(&definition.query) && !job.data.gather_next.is_empty() {
        if !read_group(ex, export, &mut job, attempt).await? {
            return Ok(());
        }
        return plan(ex, export, job, &definition).await;
    }
    let mut next = job.data.gather_next.clone();
    let mut gathered = Gathered::default();
    let mut last_checkpoint = Instant::now();
    while !next.is_empty() {
        let url = match ex.same_server_url(&next) {
            Ok(u) => u,
            Err(e) => return ex.fail_planning(job, &e, None).await,
        };
        let page = match ex.fhir.get(&url).await {
            Ok(p) => p,
            Err(e) if e.is_transient() && attempt < ex.settings.work.max_attempts => {
                return Err(ExportError::from(e));
            }
            Err(e) => {
                let why = format!("the query could not be read: {e}");
                let refused = e.status().filter(|s| (400..500).contains(s));
                return ex.fail_planning(job, &why, refused).await;
            }
        };
        gathered.skipped += patient_ids(
            &page,
            &definition.patient_reference_field,
            ex.fhir.base(),
            &mut gathered.ids,
        ) as i64;
        gathered.pages += 1;
        next = next_link(&page).unwrap_or_default().to_string();
        if next.is_empty()
            || last_checkpoint.elapsed() >= CHECKPOINT_EVERY
            || gathered.ids.len() >= ex.settings.ids_per_chunk
        {
            if !gathered.checkpoint(ex, export, &mut job, &next).await? {
                // Terminated, or another delivery of this step moved on: leave it to that one.
                return Ok(());
            }
            last_checkpoint = Instant::now();
        }
    }
    plan(ex, export, job, &definition).await
}

/// Reads the Group the export's query names, its members streamed to ids blobs (a Group can
/// hold millions), and records them on the job row; `false` when the job ended (failed, or
/// moved on meanwhile).
async fn read_group(
    ex: &Exporter,
    export: &str,
    job: &mut Row<ExportJob>,
    attempt: u32,
) -> Result<bool, ExportError> {
    let url = match ex.same_server_url(&job.data.gather_next) {
        Ok(u) => u,
        Err(e) => {
            ex.fail_planning(job.clone(), &e, None).await?;
            return Ok(false);
        }
    };
    let (why, refused) = match members::gather(ex, export, &url).await {
        Ok(found) => {
            let j = &mut job.data;
            j.gather_seq = found.blobs;
            j.pages = 1;
            j.ids_found = found.ids;
            j.references_skipped = found.skipped;
            j.gather_next = String::new();
            return Ok(ex.store.replace_if_unchanged(job).await?);
        }
        Err(ReadError::Fhir(e)) if e.is_transient() && attempt < ex.settings.work.max_attempts => {
            return Err(ExportError::from(e));
        }
        Err(ReadError::Fhir(e)) => (
            format!("the query could not be read: {e}"),
            e.status().filter(|s| (400..500).contains(s)),
        ),
        Err(ReadError::Retry(e)) => return Err(e),
        Err(ReadError::Invalid(why)) => (why, None),
    };
    ex.fail_planning(job.clone(), &why, refused).await?;
    Ok(false)
}

/// Patient ids found since the last checkpoint, and the pages and references they took.
#[derive(Default)]
struct Gathered {
    ids: Vec<String>,
    pages: i64,
    /// References that named no patient of this server.
    skipped: i64,
}

impl Gathered {
    /// Saves the ids as the job's next ids blob and moves its checkpoint on to `next`, then
    /// starts afresh; `false` when the job row moved on meanwhile.
    async fn checkpoint(
        &mut self,
        ex: &Exporter,
        export: &str,
        job: &mut Row<ExportJob>,
        next: &str,
    ) -> Result<bool, ExportError> {
        let seq = job.data.gather_seq;
        let text = self.ids.join("\n");
        ex.blobs
            .upload(
                &ex.settings.container,
                &ids_blob(export, seq),
                Bytes::from(text),
            )
            .await?;
        let j = &mut job.data;
        j.gather_seq = seq + 1;
        j.pages += self.pages;
        j.ids_found += self.ids.len() as i64;
        j.references_skipped += self.skipped;
        j.gather_next = next.to_string();
        if !ex.store.replace_if_unchanged(job).await? {
            return Ok(false);
        }
        *self = Gathered::default();
        Ok(true)
    }
}

/// Batches the gathered ids and registers one work item per batch × include.
async fn plan(
    ex: &Exporter,
    export: &str,
    mut job: Row<ExportJob>,
    definition: &ExportDefinition,
) -> Result<(), ExportError> {
    if job.data.ids_found > PLAN_IN_MEMORY_CHUNKS * ex.settings.ids_per_chunk as i64 {
        return plan_streamed(ex, export, job, definition).await;
    }
    let mut all = Vec::new();
    for seq in 0..job.data.gather_seq {
        all.extend(read_ids(ex, export, seq).await?);
    }
    let ids = dedupe(all);
    let includes = &definition.include;
    let max_ids = ids_per_batch_of(ex, ids.len(), includes.len());
    let planned = Batched::new(ex, ids, includes, max_ids, 0);
    info!(
        message = "Export patients gathered.",
        export,
        patients = planned.ids.len(),
        batches = planned.batches.len()
    );
    job.data.patients = planned.ids.len() as i64;
    job.data.batches = planned.batches.len() as i64;
    ex.register_work(export, job, planned.items(), |n| planned.item(n))
        .await
}

/// Plans a large cohort one ids blob at a time, so that memory holds one blob's ids (a
/// checkpoint's, at most `FHIRBULK_EXPORT_IDS_PER_CHUNK`), not the cohort: each blob's ids are
/// de-duplicated and batched, and its work items registered and queued, batch numbers
/// following on from the blob before. An id listed in two blobs is searched twice; compose
/// writes each resource once. A repeat registers the same items (the blobs do not change).
async fn plan_streamed(
    ex: &Exporter,
    export: &str,
    mut job: Row<ExportJob>,
    definition: &ExportDefinition,
) -> Result<(), ExportError> {
    let includes = &definition.include;
    let max_ids = ids_per_batch_of(ex, job.data.ids_found.max(0) as usize, includes.len());
    let (mut patients, mut batches_before) = (0usize, 0usize);
    for seq in 0..job.data.gather_seq {
        let ids = dedupe(read_ids(ex, export, seq).await?);
        let planned = Batched::new(ex, ids, includes, max_ids, batches_before);
        ex.register_rows(export, planned.items(), &|n| planned.item(n), true)
            .await?;
        patients += planned.ids.len();
        batches_before += planned.batches.len();
    }
    info!(
        message = "Export patients gathered.",
        export,
        patients,
        batches = batches_before
    );
    job.data.patients = patients as i64;
    job.data.batches = batches_before as i64;
    if ex
        .mark_planned(export, &mut job, batches_before * includes.len(), false)
        .await?
    {
        ex.schedule_ready_types(export).await?;
    }
    Ok(())
}

/// The ids in ids blob `seq` of an export (none when it is missing).
async fn read_ids(ex: &Exporter, export: &str, seq: i64) -> Result<Vec<String>, ExportError> {
    let found = ex
        .blobs
        .read_all(&ex.settings.container, &ids_blob(export, seq))
        .await?;
    Ok(found
        .map(|(_, bytes)| {
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

/// The most ids a search names for a cohort of `patients` (`patients::ids_per_batch`).
fn ids_per_batch_of(ex: &Exporter, patients: usize, includes: usize) -> usize {
    ids_per_batch(
        patients,
        includes,
        ex.settings.ids_per_search,
        ex.fhir.max_concurrency(),
    )
}

/// Ids cut into batches, each include searched once per batch: the work items of a plan (or
/// of one chunk of it, numbered on from `first_batch`).
struct Batched<'a> {
    ids: Vec<String>,
    batches: Vec<std::ops::Range<usize>>,
    includes: &'a [Include],
    first_batch: usize,
}

impl<'a> Batched<'a> {
    fn new(
        ex: &Exporter,
        ids: Vec<String>,
        includes: &'a [Include],
        max_ids: usize,
        first_batch: usize,
    ) -> Self {
        let batches = batch_ids(
            &ids,
            includes,
            ex.url_overhead(),
            ex.settings.max_url_length,
            max_ids,
        );
        Batched {
            ids,
            batches,
            includes,
            first_batch,
        }
    }

    fn items(&self) -> usize {
        self.batches.len() * self.includes.len()
    }

    /// The n-th work item: batch `n / includes`, include `n % includes`.
    fn item(&self, n: usize) -> WorkItem {
        let (batch, include) = (n / self.includes.len(), n % self.includes.len());
        WorkItem {
            batch: (self.first_batch + batch) as u32,
            include: include as u32,
            resource_type: self.includes[include].resource_type.clone(),
            search: self.includes[include].for_ids(&self.ids[self.batches[batch].clone()]),
        }
    }
}
