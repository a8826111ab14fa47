//! Step 1: page the query for patient ids, then plan the work items.
//!
//! Progress is checkpointed at most every few seconds: the ids found since the last checkpoint
//! go to `<export>/_state/ids-<n>.txt`, then the job row records the next page to read (with its
//! ETag, so a duplicate delivery or a terminate in between stops this one). A redelivered step
//! resumes at the recorded page. Planning reads the id files back, de-duplicates, batches and
//! registers work rows and messages; repeating it is harmless (rows exist, messages duplicate
//! no-ops).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tracing::{info, warn};

use super::patients::{batch_ids, dedupe, next_link, patient_ids};
use super::state::{JobStatus, WORK_PENDING, work_row};
use super::{ExportError, ExportWork, Exporter};
use crate::import::ledger::now_rfc3339;
use crate::storage::Entity;

const CHECKPOINT_EVERY: Duration = Duration::from_secs(3);
/// Deliveries after which a gather step for an export with no job row is dropped (the start
/// request queues the step just before writing the row, and fails if it cannot).
const MISSING_JOB_ATTEMPTS: u32 = 3;
const REGISTRATION_CONCURRENCY: usize = 16;

pub(crate) fn ids_blob(export: &str, seq: i64) -> String {
    Exporter::blob_name(export, &format!("_state/ids-{seq:06}.txt"))
}

pub async fn run(ex: &Exporter, export: &str, attempt: u32) -> Result<(), ExportError> {
    let Some((mut job, status)) = ex.job(export).await? else {
        if attempt < MISSING_JOB_ATTEMPTS {
            return Err(ExportError::Transient(format!(
                "export {export} is not recorded yet"
            )));
        }
        warn!(
            message = "Gather step for an unknown export dropped.",
            export
        );
        return Ok(());
    };
    if status != JobStatus::Gathering {
        return Ok(());
    }
    let definition = match ex.definition(&job) {
        Ok(d) => d,
        Err(e) => return fail(ex, job, &format!("the stored definition is invalid: {e}")).await,
    };
    let mut next = job.str("gatherNext").unwrap_or_default().to_string();
    let mut found = Vec::new();
    let mut pages = 0i64;
    let mut skipped = 0i64;
    let mut last_checkpoint = Instant::now();
    while !next.is_empty() {
        let url = match ex.same_server_url(&next) {
            Ok(u) => u,
            Err(e) => return fail(ex, job, &e).await,
        };
        let page = match ex.fhir.get(&url).await {
            Ok(p) => p,
            Err(e) if e.is_transient() && attempt < ex.settings.work.max_attempts => {
                return Err(ExportError::Transient(e.summary()));
            }
            Err(e) => {
                let why = format!("the query could not be read: {e}");
                return fail(ex, job, &why).await;
            }
        };
        skipped += patient_ids(
            &page,
            &definition.patient_reference_field,
            ex.fhir.base(),
            &mut found,
        ) as i64;
        pages += 1;
        next = next_link(&page).unwrap_or_default().to_string();
        if next.is_empty() || last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            let seq = job.i64("gatherSeq");
            let text = found.join("\n");
            ex.blobs
                .upload(
                    &ex.settings.container,
                    &ids_blob(export, seq),
                    Bytes::from(text),
                )
                .await?;
            job.set_i64("gatherSeq", seq + 1);
            job.set_i64("pages", job.i64("pages") + pages);
            job.set_i64("idsFound", job.i64("idsFound") + found.len() as i64);
            job.set_i64("referencesSkipped", job.i64("referencesSkipped") + skipped);
            job.set_str("gatherNext", next.clone());
            if !ex.store.replace_if_unchanged(&mut job).await? {
                // Terminated, or another delivery of this step moved on: leave it to that one.
                return Ok(());
            }
            found.clear();
            pages = 0;
            skipped = 0;
            last_checkpoint = Instant::now();
        }
    }
    plan(ex, export, job, &definition).await
}

/// Batches the gathered ids and registers one work item per batch × include.
async fn plan(
    ex: &Exporter,
    export: &str,
    mut job: Entity,
    definition: &super::definition::ExportDefinition,
) -> Result<(), ExportError> {
    let mut all = Vec::new();
    for seq in 0..job.i64("gatherSeq") {
        if let Some((_, bytes)) = ex
            .blobs
            .read_all(&ex.settings.container, &ids_blob(export, seq))
            .await?
        {
            let text = String::from_utf8_lossy(&bytes);
            all.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string));
        }
    }
    let ids = dedupe(all);
    let batches = batch_ids(
        &ids,
        &definition.include,
        ex.url_overhead(),
        ex.settings.max_url_length,
    );
    let mut items = Vec::new();
    for (b, range) in batches.iter().enumerate() {
        for (i, include) in definition.include.iter().enumerate() {
            items.push((
                b as u32,
                i as u32,
                include.resource_type.clone(),
                range.clone(),
            ));
        }
    }
    let rows: Vec<Entity> = items
        .iter()
        .map(|(b, i, kind, _)| {
            let mut row = Entity::new(export, &work_row(*b, *i));
            row.set_str("status", WORK_PENDING);
            row.set_str("type", kind.clone());
            row
        })
        .collect();
    futures::stream::iter(rows)
        .map(|row| async move { ex.store.insert(&row).await.map(|_| ()) })
        .buffer_unordered(REGISTRATION_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let messages: Vec<ExportWork> = items
        .iter()
        .map(|(b, i, _, range)| ExportWork::Fetch {
            export: export.to_string(),
            batch: *b,
            include: *i,
            ids: ids[range.clone()].to_vec(),
        })
        .collect();
    futures::stream::iter(messages)
        .map(|work| async move { ex.enqueue(&work).await })
        .buffer_unordered(REGISTRATION_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    job.set_str("status", JobStatus::Exporting.as_str());
    job.set_str("gathered", now_rfc3339());
    job.set_i64("patients", ids.len() as i64);
    job.set_i64("batches", batches.len() as i64);
    job.set_i64("workItems", items.len() as i64);
    if !ex.store.replace_if_unchanged(&mut job).await? {
        return Ok(());
    }
    info!(
        message = "Export planned.",
        export,
        patients = ids.len(),
        batches = batches.len(),
        work_items = items.len()
    );
    // Work items that finished before the job said "exporting" could not start the compose
    // step; and with no patients there is no work item to start it.
    ex.schedule_compose_if_finished(export).await
}

/// Ends an export whose patients cannot be found, with the reason on the job row.
async fn fail(ex: &Exporter, mut job: Entity, why: &str) -> Result<(), ExportError> {
    let export = job.str("PartitionKey").unwrap_or_default().to_string();
    warn!(message = "Export failed while gathering patients.", export = %export);
    job.set_str("status", JobStatus::Failed.as_str());
    job.set_str("error", why);
    job.set_str("finished", now_rfc3339());
    ex.store.replace_if_unchanged(&mut job).await?;
    Ok(())
}
