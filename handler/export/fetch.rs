//! Step 2: one work item (a batch of patient ids × one include search, or one time range of
//! an export-all) pages through its results and stages them in
//! `<export>/_work/<batch>-<include>.ndjson`. The blob is written as staged blocks committed at
//! the end: a run that dies leaves nothing visible, and a second run writes the same blob
//! again, so running a work item twice neither duplicates nor loses.
//! A FHIR failure that outlives its retries is recorded on the work row (the export then
//! completes with errors and the manifest points at the OperationOutcomes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use tracing::warn;

use super::page::stage_page;
use super::state::{WORK_DONE, WORK_FAILED, WORK_PENDING, work_row};
use super::{ExportError, Exporter};
use crate::import::ledger::now_rfc3339;
use crate::storage::block_id;

/// Staged output is sent in blocks of about this size.
pub const BLOCK_BYTES: usize = 1024 * 1024;
/// How often a running work item looks whether its export was terminated.
const TERMINATION_CHECK_EVERY: Duration = Duration::from_secs(5);

pub fn staging_prefix(export: &str) -> String {
    Exporter::blob_name(export, "_work/")
}

pub fn staging_blob(export: &str, batch: u32, include: u32) -> String {
    format!("{}{batch:06}-{include:03}.ndjson", staging_prefix(export))
}

/// What went wrong with a work item, for its OperationOutcome.
struct Failure {
    status: u16,
    message: String,
}

pub async fn run(
    ex: &Exporter,
    export: &str,
    batch: u32,
    include: u32,
    search: &str,
    attempt: u32,
) -> Result<(), ExportError> {
    let Some((_, status)) = ex.job(export).await? else {
        return Ok(()); // purged
    };
    if !status.is_running() {
        return Ok(());
    }
    let key = work_row(batch, include);
    let Some(mut row) = ex.store.work(export, &key).await? else {
        return Ok(());
    };
    if row.str("status") != Some(WORK_PENDING) {
        // A repeat of a finished item: the first delivery may have died before scheduling.
        return ex.after_work_item(export, &row).await;
    }
    let container = &ex.settings.container;
    let blob = staging_blob(export, batch, include);
    let mut next = Some(ex.search_url(search));
    let mut blocks = Vec::new();
    let mut staged_bytes = 0u64;
    let mut buffer = String::new();
    let mut types: BTreeMap<String, u64> = BTreeMap::new();
    let mut pages = 0i64;
    let mut skipped = 0i64;
    let mut failure = None;
    let mut last_check = Instant::now();
    while let Some(link) = next.take() {
        let url = match ex.same_server_url(&link) {
            Ok(u) => u,
            Err(message) => {
                failure = Some(Failure { status: 0, message });
                break;
            }
        };
        let bytes = match ex.fhir.get_bytes(&url).await {
            Ok(b) => b,
            Err(e) if e.is_transient() && attempt < ex.settings.work.max_attempts => {
                return Err(ExportError::Transient(e.summary()));
            }
            Err(e) => {
                failure = Some(Failure {
                    status: e.status().unwrap_or(0),
                    message: e.to_string(),
                });
                break;
            }
        };
        let lines = match stage_page(&bytes) {
            Ok(l) => l,
            Err(why) => {
                failure = Some(Failure {
                    status: 0,
                    message: format!("GET {}: {why}", url.path()),
                });
                break;
            }
        };
        pages += 1;
        skipped += lines.skipped as i64;
        for (t, n) in lines.counts {
            *types.entry(t).or_default() += n;
        }
        buffer.push_str(&lines.text);
        if buffer.len() >= BLOCK_BYTES {
            let id = block_id(blocks.len());
            staged_bytes += buffer.len() as u64;
            let chunk = Bytes::from(std::mem::take(&mut buffer));
            ex.blobs.stage_block(container, &blob, &id, chunk).await?;
            blocks.push(id);
        }
        next = lines.next;
        if next.is_some() && last_check.elapsed() >= TERMINATION_CHECK_EVERY {
            last_check = Instant::now();
            match ex.job(export).await? {
                Some((_, s)) if s.is_running() => {}
                _ => return Ok(()), // terminated or purged: stop, write nothing
            }
        }
    }
    if !buffer.is_empty() {
        let id = block_id(blocks.len());
        staged_bytes += buffer.len() as u64;
        ex.blobs
            .stage_block(container, &blob, &id, Bytes::from(buffer))
            .await?;
        blocks.push(id);
    }
    ex.blobs.commit_blocks(container, &blob, blocks).await?;
    let resources: u64 = types.values().sum();
    let types: Map<String, Value> = types.into_iter().map(|(t, n)| (t, n.into())).collect();
    row.set_str(
        "status",
        if failure.is_some() {
            WORK_FAILED
        } else {
            WORK_DONE
        },
    );
    row.set_i64("resources", resources as i64);
    row.set_i64("pages", pages);
    row.set_i64("skipped", skipped);
    row.set_i64("stagedBytes", staged_bytes as i64);
    row.set_str("types", Value::Object(types).to_string());
    row.set_str("finished", now_rfc3339());
    if let Some(f) = &failure {
        warn!(
            message = "Export work item failed; the export will complete with errors.",
            export,
            batch,
            include,
            status = f.status
        );
        row.set_i64("errorStatus", f.status as i64);
        // Stored, not logged: server diagnostics can quote resource content.
        row.set_str("error", truncate(&f.message, 16_000));
        row.set_str("search", truncate(search, 4_000));
    }
    row.etag.clear();
    ex.store.upsert(&row).await?;
    ex.after_work_item(export, &row).await
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}
