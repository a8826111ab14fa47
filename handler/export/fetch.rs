//! Step 2: one work item (a batch of patient ids × one include search, or one time range of
//! an export-all) pages through its results and stages them in
//! `<export>/_work/<batch>-<include>.ndjson`. The blob is written as staged blocks committed at
//! the end: a run that dies leaves nothing visible, and a second run writes the same blob
//! again, so running a work item twice neither duplicates nor loses. Each block is one gzip
//! member of about 1 MiB of staged lines (the staging is written once and read back once by
//! the compose step; compressed, both move about a tenth of the bytes through storage: 9.7x
//! on Synthea resources at the fast level), uploaded while the next pages are read.
//! A FHIR failure that outlives its retries is recorded on the work row (the export then
//! completes with errors and the manifest points at the OperationOutcomes).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Map, Value};
use tracing::warn;

use super::page::stage_page;
use super::schedule::WorkItem;
use super::split;
use super::state::{ExportJob, WorkRow, WorkStatus, work_row};
use super::uploads::BlockUploads;
use super::{ExportError, ExportKind, Exporter};
use crate::clock::now_rfc3339;
use crate::storage::Row;
use crate::storage::{BlobStore, block_id};

/// Staged output is sent in blocks of about this size.
pub const BLOCK_BYTES: usize = 1024 * 1024;
/// Staged blocks of one work item uploaded while its next pages are read.
const UPLOADS_IN_FLIGHT: usize = 2;
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
    let Some((job, status)) = ex.job(export).await? else {
        return Ok(()); // purged
    };
    if !status.is_running() {
        return Ok(());
    }
    let key = work_row(batch, include);
    let Some(row) = ex.store.work(export, &key).await? else {
        return Ok(());
    };
    if !row.data.is_pending() {
        // A repeat of a finished item: the first delivery may have died before scheduling.
        return ex.after_work_item(export, &row).await;
    }
    let item = WorkItem {
        batch,
        include,
        resource_type: row.data.resource_type.clone(),
        search: search.to_string(),
    };
    let Some(row) = fetch_pending(ex, export, &job.data, row, &item, attempt).await? else {
        return Ok(());
    };
    ex.after_work_item(export, &row).await
}

/// Runs a pending work item whose row is `row`: pages its search into its staging blob and
/// closes its row, which it returns (`None` when the export was terminated meanwhile). What
/// its end makes ready is the caller's to schedule.
pub(crate) async fn fetch_pending(
    ex: &Exporter,
    export: &str,
    job: &ExportJob,
    mut row: Row<WorkRow>,
    item: &WorkItem,
    attempt: u32,
) -> Result<Option<Row<WorkRow>>, ExportError> {
    let (batch, include, search) = (item.batch, item.include, item.search.as_str());
    let container = &ex.settings.container;
    let blob = staging_blob(export, batch, include);
    let mut staging = Staging::new(&ex.blobs, container, &blob);
    let cuttable = ex.id_search(job, item);
    let split_pages = cuttable.as_ref().map(|_| ex.settings.split_pages);
    let Some(fetched) = fetch_pages(ex, export, search, attempt, split_pages, &mut staging).await?
    else {
        return Ok(None); // terminated or purged: stop, write nothing
    };
    if let (Some(parts), Some(id_search)) = (fetched.cut_into, &cuttable) {
        return cut(ex, export, row, item, id_search, parts).await.map(Some);
    }
    let staged_bytes = staging.commit().await?;
    if let Some(f) = &fetched.failure {
        warn!(
            message = "Export work item failed; the export will complete with errors.",
            export,
            batch,
            include,
            status = f.status
        );
    }
    fetched.record(&mut row.data, staged_bytes);
    ex.store.upsert(&row).await?;
    Ok(Some(row))
}

/// Cuts a long search into `parts` work items of fewer patients, registered and queued before
/// its own row is closed (so the export never looks finished in between); its row records the
/// cut and no resources.
async fn cut(
    ex: &Exporter,
    export: &str,
    mut row: Row<WorkRow>,
    parent: &WorkItem,
    id_search: &split::IdSearch,
    parts: usize,
) -> Result<Row<WorkRow>, ExportError> {
    let searches = id_search.parts(parts);
    let part = |n: usize| WorkItem {
        batch: split::child_batch(parent.batch, n),
        include: parent.include,
        resource_type: parent.resource_type.clone(),
        search: searches[n].clone(),
    };
    ex.register_rows(export, searches.len(), &part, true)
        .await?;
    Fetched::default().record(&mut row.data, 0);
    row.data.split_into = searches.len() as i64;
    ex.store.upsert(&row).await?;
    Ok(row)
}

impl Exporter {
    /// The ids a patient export's search names, when it may be cut (`export::split`): a search
    /// of several patients, not itself a part, with cutting on.
    fn id_search(&self, job: &ExportJob, item: &WorkItem) -> Option<split::IdSearch> {
        if self.settings.split_pages == 0
            || split::is_part(item.batch)
            || !item.search.contains(',')
            || job.kind == ExportKind::All
        {
            return None;
        }
        // A system-level $export has no patient definition: its searches name no patients.
        let definition = self.definition(job).ok()?;
        let template = &definition.include.get(item.include as usize)?.search;
        split::IdSearch::of(template, &item.search).filter(|s| s.ids() > 1)
    }
}

/// What a search's pages gave.
#[derive(Default)]
struct Fetched {
    /// Resources staged, by type.
    types: BTreeMap<String, u64>,
    pages: i64,
    /// Lines left out (no resource, or not JSON).
    skipped: i64,
    /// What ended the search early, when something did.
    failure: Option<Failure>,
    /// The search is long: cut it into this many (its first page is dropped).
    cut_into: Option<usize>,
}

impl Fetched {
    /// Closes the work item with what was fetched: done, or failed with the error stored
    /// (not logged: server diagnostics can quote resource content).
    fn record(self, w: &mut WorkRow, staged_bytes: u64) {
        let resources: u64 = self.types.values().sum();
        let types: Map<String, Value> =
            self.types.into_iter().map(|(t, n)| (t, n.into())).collect();
        w.status = if self.failure.is_some() {
            WorkStatus::Failed
        } else {
            WorkStatus::Done
        };
        w.resources = resources as i64;
        w.pages = self.pages;
        w.skipped = self.skipped;
        w.staged_bytes = staged_bytes as i64;
        w.types = Some(Value::Object(types).to_string());
        w.finished = Some(now_rfc3339());
        if let Some(f) = &self.failure {
            w.error_status = i64::from(f.status);
            w.error = Some(truncate(&f.message, 16_000));
        }
    }
}

/// Follows `search` page by page into `staging`. A transient failure before the last attempt
/// is an `Err` (the step is delivered again); any other failure ends the search with what it
/// staged. `None` when the export was terminated or purged meanwhile.
/// With `split_pages`, a first page showing more pages than that ends it with `cut_into`.
async fn fetch_pages(
    ex: &Exporter,
    export: &str,
    search: &str,
    attempt: u32,
    split_pages: Option<usize>,
    staging: &mut Staging<'_>,
) -> Result<Option<Fetched>, ExportError> {
    let mut fetched = Fetched::default();
    let mut next = Some(ex.search_url(search));
    let mut buffer = String::new();
    let mut last_check = Instant::now();
    while let Some(link) = next.take() {
        let url = match ex.same_server_url(&link) {
            Ok(u) => u,
            Err(message) => {
                fetched.failure = Some(Failure { status: 0, message });
                break;
            }
        };
        let bytes = match ex.fhir.get_bytes(&url).await {
            Ok(b) => b,
            Err(e) if e.is_transient() && attempt < ex.settings.work.max_attempts => {
                return Err(ExportError::from(e));
            }
            Err(e) => {
                fetched.failure = Some(Failure {
                    status: e.status().unwrap_or(0),
                    message: e.to_string(),
                });
                break;
            }
        };
        let lines = match stage_page(&bytes) {
            Ok(l) => l,
            Err(why) => {
                fetched.failure = Some(Failure {
                    status: 0,
                    message: format!("GET {}: {why}", url.path()),
                });
                break;
            }
        };
        fetched.pages += 1;
        if let Some(split_pages) = split_pages
            && fetched.pages == 1
            && lines.next.is_some()
        {
            let pages = split::pages(lines.total, lines.entries).unwrap_or(0);
            let parts = split::parts_wanted(pages, split_pages);
            if parts > 1 {
                fetched.cut_into = Some(parts);
                return Ok(Some(fetched));
            }
        }
        fetched.skipped += lines.skipped as i64;
        for (t, n) in lines.counts {
            *fetched.types.entry(t).or_default() += n;
        }
        buffer.push_str(&lines.text);
        if buffer.len() >= BLOCK_BYTES {
            staging.push(std::mem::take(&mut buffer)).await?;
        }
        next = lines.next;
        if next.is_some() && last_check.elapsed() >= TERMINATION_CHECK_EVERY {
            last_check = Instant::now();
            match ex.job(export).await? {
                Some((_, s)) if s.is_running() => {}
                _ => return Ok(None),
            }
        }
    }
    staging.last = buffer;
    Ok(Some(fetched))
}

/// A work item's staging blob being written: gzip members of staged lines, uploaded in the
/// background, committed at the end.
struct Staging<'a> {
    blobs: &'a BlobStore,
    container: &'a str,
    blob: &'a str,
    blocks: Vec<Vec<u8>>,
    uploads: BlockUploads,
    bytes: u64,
    /// The lines after the last block, written by `commit`.
    last: String,
}

impl<'a> Staging<'a> {
    fn new(blobs: &'a BlobStore, container: &'a str, blob: &'a str) -> Self {
        Staging {
            blobs,
            container,
            blob,
            blocks: Vec::new(),
            uploads: BlockUploads::new(UPLOADS_IN_FLIGHT),
            bytes: 0,
            last: String::new(),
        }
    }

    /// Compresses staged lines into the next block and starts its upload.
    async fn push(&mut self, lines: String) -> Result<(), ExportError> {
        let chunk = gzip_member(lines).await?;
        let id = block_id(self.blocks.len());
        self.bytes += chunk.len() as u64;
        self.uploads
            .stage(self.blobs, self.container, self.blob, id.clone(), chunk)
            .await?;
        self.blocks.push(id);
        Ok(())
    }

    /// Writes the last lines and commits the blob; returns its size. A search whose lines
    /// all fit one block (most of a small export's) is one request: the blob put whole.
    async fn commit(mut self) -> Result<u64, ExportError> {
        let last = std::mem::take(&mut self.last);
        if self.blocks.is_empty() {
            let chunk = if last.is_empty() {
                Bytes::new()
            } else {
                gzip_member(last).await?
            };
            let bytes = chunk.len() as u64;
            self.blobs.upload(self.container, self.blob, chunk).await?;
            return Ok(bytes);
        }
        if !last.is_empty() {
            self.push(last).await?;
        }
        self.uploads.finish().await?;
        self.blobs
            .commit_blocks(self.container, self.blob, self.blocks)
            .await?;
        Ok(self.bytes)
    }
}

/// Staged lines as one gzip member (fast level: the staging lives minutes), compressed on a
/// blocking thread.
async fn gzip_member(lines: String) -> Result<Bytes, ExportError> {
    tokio::task::spawn_blocking(move || {
        let mut gz = GzEncoder::new(Vec::with_capacity(lines.len() / 4), Compression::fast());
        gz.write_all(lines.as_bytes())?;
        gz.finish().map(Bytes::from)
    })
    .await
    .map_err(|e| ExportError::transient(format!("compressing staged output stopped: {e}")))?
    .map_err(|e| ExportError::transient(format!("cannot compress staged output: {e}")))
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[tokio::test]
    async fn staged_blocks_are_gzip_members_that_read_back_as_one_stream() {
        let first = "Patient\tp1\t{\"resourceType\":\"Patient\",\"id\":\"p1\"}\n".repeat(1000);
        let second = "Observation\to1\t{}\n".to_string();
        let mut blob = gzip_member(first.clone()).await.unwrap().to_vec();
        assert!(blob.len() < first.len() / 10, "repetitive JSON compresses");
        blob.extend_from_slice(&gzip_member(second.clone()).await.unwrap());
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, first + &second);
    }
}
