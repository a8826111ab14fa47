//! Step 3: once every work item is finished, merge the staged blobs into the export's files:
//! `<Type>-<n>.ndjson`, each resource once (the same resource found by two include searches or
//! two batches is written the first time only), a new file before one would pass the size
//! limit. Then the manifest (`_completed_run.json`), the job row, and the staging blobs go.
//!
//! Composing is deterministic (staged blobs in name order, files as staged blocks committed at
//! the end), so a compose step that dies is simply run again and writes the same files.
//! Duplicates are found with a set of `Type/id`; for very large exports the ids are split by
//! hash over several passes so that the set stays bounded.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::info;

use super::fetch::{BLOCK_BYTES, staging_prefix};
use super::state::{JobStatus, Progress, WORK_FAILED};
use super::{ExportError, Exporter};
use crate::import::ledger::now_rfc3339;
use crate::import::ndjson::{ChunkStream, LineReader};
use crate::import::sources::BLOB_CHUNK_BYTES;
use crate::storage::{BlobEntry, BlobStore, Entity, StorageError, block_id};

/// Ids held in the duplicate set at once; more resources mean more passes over the staging.
const IDS_PER_PASS: u64 = 2_000_000;
/// Staged ranges read ahead of the one being composed.
const READ_AHEAD: usize = 4;
/// Output blocks uploaded at once while composing.
const UPLOADS_IN_FLIGHT: usize = 4;
pub const MANIFEST_NAME: &str = "_completed_run.json";
pub const ERRORS_NAME: &str = "errors/OperationOutcome-1.ndjson";

/// One output file of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputFile {
    pub resource_type: String,
    pub name: String,
    pub url: String,
    pub count: u64,
    pub size: u64,
}

pub async fn run(ex: &Exporter, export: &str) -> Result<(), ExportError> {
    let Some((mut job, status)) = ex.job(export).await? else {
        return Ok(());
    };
    match status {
        JobStatus::Exporting | JobStatus::Composing => {}
        JobStatus::Completed | JobStatus::CompletedWithErrors => {
            // A repeat after the job row was written: only the clean-up may be left.
            return clean_up(ex, export).await;
        }
        _ => return Ok(()),
    }
    let rows = ex.store.work_rows(export).await?;
    let progress = Progress::of(&rows);
    if !progress.all_finished() {
        return Ok(());
    }
    if status == JobStatus::Exporting {
        job.set_str("status", JobStatus::Composing.as_str());
        job.set_str("composeStarted", now_rfc3339());
        if !ex.store.replace_if_unchanged(&mut job).await? {
            return Ok(()); // another delivery took it, or it was terminated
        }
    }
    let container = &ex.settings.container;
    let mut staged = ex
        .blobs
        .list(container, Some(&staging_prefix(export)))
        .await?;
    staged.sort_by(|a, b| a.name.cmp(&b.name));
    let passes = progress.resources.div_ceil(IDS_PER_PASS).max(1);
    let mut writer = OutputWriter::new(&ex.blobs, container, export, ex.settings.max_file_bytes);
    let mut duplicates = 0u64;
    let mut malformed = 0u64;
    for pass in 0..passes {
        let mut seen: HashSet<Box<str>> = HashSet::new();
        let chunks = StagedChunks::new(&ex.blobs, container, &staged);
        let mut lines = LineReader::new(chunks, 0, u64::MAX, false);
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| ExportError::Transient(format!("cannot read the staged output: {e}")))?
        {
            let Some((kind, id, json)) = super::page::split_staged(&line.bytes) else {
                malformed += 1;
                continue;
            };
            if passes > 1 && shard(kind, id, passes) != pass {
                continue;
            }
            if !seen.insert(format!("{kind}/{id}").into_boxed_str()) {
                duplicates += 1;
                continue;
            }
            writer.push(kind, json).await?;
        }
    }
    let outputs = writer.finish().await?;
    let errors = write_errors(ex, export, &rows).await?;
    let final_status = if progress.failed > 0 {
        JobStatus::CompletedWithErrors
    } else {
        JobStatus::Completed
    };
    let written: u64 = outputs.iter().map(|o| o.count).sum();
    job.set_str("status", final_status.as_str());
    job.set_str("finished", now_rfc3339());
    job.set_i64("resources", written as i64);
    job.set_i64("duplicatesDropped", duplicates as i64);
    job.set_i64("files", outputs.len() as i64);
    let manifest = manifest(ex, &job, &outputs, errors.as_ref());
    ex.blobs
        .upload(
            container,
            &Exporter::blob_name(export, MANIFEST_NAME),
            Bytes::from(serde_json::to_vec_pretty(&manifest).expect("JSON serialises")),
        )
        .await?;
    if !ex.store.replace_if_unchanged(&mut job).await? {
        return Ok(()); // terminated while composing: the terminate stands
    }
    info!(
        message = "Export completed.",
        export,
        status = final_status.as_str(),
        files = outputs.len(),
        resources = written,
        duplicates_dropped = duplicates,
        malformed_staged_lines = malformed
    );
    clean_up(ex, export).await
}

/// Deletes the staging blobs and the gathered ids of a finished export.
async fn clean_up(ex: &Exporter, export: &str) -> Result<(), ExportError> {
    let container = &ex.settings.container;
    ex.blobs
        .delete_prefix(container, &staging_prefix(export))
        .await?;
    ex.blobs
        .delete_prefix(container, &Exporter::blob_name(export, "_state/"))
        .await?;
    Ok(())
}

fn shard(kind: &str, id: &str, passes: u64) -> u64 {
    // A fixed hasher: every pass (and every re-run) must put an id in the same shard.
    let mut h = std::hash::DefaultHasher::new();
    kind.hash(&mut h);
    id.hash(&mut h);
    h.finish() % passes
}

/// One OperationOutcome per failed work item, in `errors/OperationOutcome-1.ndjson`.
async fn write_errors(
    ex: &Exporter,
    export: &str,
    rows: &[Entity],
) -> Result<Option<OutputFile>, ExportError> {
    let failed: Vec<&Entity> = rows
        .iter()
        .filter(|r| r.str("status") == Some(WORK_FAILED))
        .collect();
    if failed.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for row in &failed {
        let outcome = json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": if row.i64("errorStatus") == 0 { "exception" } else { "transient" },
                "diagnostics": format!(
                    "the search {} for work item {} stopped: {}; resources read before the failure are in the output",
                    row.str("search").unwrap_or_default(),
                    row.str("RowKey").unwrap_or_default(),
                    row.str("error").unwrap_or_default()
                ),
            }],
        });
        text.push_str(&outcome.to_string());
        text.push('\n');
    }
    let name = Exporter::blob_name(export, ERRORS_NAME);
    let size = text.len() as u64;
    ex.blobs
        .upload(&ex.settings.container, &name, Bytes::from(text))
        .await?;
    Ok(Some(OutputFile {
        resource_type: "OperationOutcome".into(),
        url: ex.blobs.url(&ex.settings.container, &name),
        name,
        count: failed.len() as u64,
        size,
    }))
}

/// The Bulk Data style manifest: also the body of a finished export's status.
pub fn manifest(
    ex: &Exporter,
    job: &Entity,
    outputs: &[OutputFile],
    errors: Option<&OutputFile>,
) -> Value {
    let file = |o: &OutputFile| json!({"type": o.resource_type, "url": o.url, "count": o.count, "sizebytes": o.size});
    let definition: Value = job
        .str("definition")
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    json!({
        "transactionTime": job.str("created").unwrap_or_default(),
        "request": job.str("request").unwrap_or_default(),
        "requiresAccessToken": true,
        "output": outputs.iter().map(file).collect::<Vec<_>>(),
        "error": errors.map(file).into_iter().collect::<Vec<_>>(),
        "extension": {
            "id": job.str("PartitionKey").unwrap_or_default(),
            "kind": super::ExportKind::of(job).as_str(),
            "status": job.str("status").unwrap_or_default(),
            "definition": definition,
            "patients": job.i64("patients"),
            "batches": job.i64("batches"),
            "workItems": job.i64("workItems"),
            "resources": job.i64("resources"),
            "duplicatesDropped": job.i64("duplicatesDropped"),
            "started": job.str("created").unwrap_or_default(),
            "planned": job.str("gathered").unwrap_or_default(),
            "composeStarted": job.str("composeStarted").unwrap_or_default(),
            "finished": job.str("finished").unwrap_or_default(),
            "container": ex.settings.container,
        }
    })
}

/// The files of one resource type being written.
struct TypeFile {
    index: u32,
    blocks: Vec<Vec<u8>>,
    buffer: Vec<u8>,
    bytes: u64,
    count: u64,
}

/// Writes resources into `<export>/<Type>-<n>.ndjson` files, rolling over by size.
struct OutputWriter<'a> {
    blobs: &'a BlobStore,
    container: &'a str,
    export: &'a str,
    max_file_bytes: u64,
    open: BTreeMap<String, TypeFile>,
    done: Vec<OutputFile>,
    uploads: Uploads,
}

impl<'a> OutputWriter<'a> {
    fn new(blobs: &'a BlobStore, container: &'a str, export: &'a str, max_file_bytes: u64) -> Self {
        OutputWriter {
            blobs,
            container,
            export,
            max_file_bytes,
            open: BTreeMap::new(),
            done: Vec::new(),
            uploads: Uploads::default(),
        }
    }

    /// `<export>/<Type>-<n>.ndjson`.
    fn file_name(export: &str, kind: &str, index: u32) -> String {
        Exporter::blob_name(export, &format!("{kind}-{index}.ndjson"))
    }

    async fn push(&mut self, kind: &str, json: &[u8]) -> Result<(), ExportError> {
        let size = json.len() as u64 + 1;
        let roll = self
            .open
            .get(kind)
            .is_some_and(|f| f.count > 0 && f.bytes + size > self.max_file_bytes);
        if roll {
            let file = self.open.remove(kind).expect("checked above");
            let next = file.index + 1;
            self.close(kind, file).await?;
            self.open.insert(kind.to_string(), TypeFile::new(next));
        }
        let file = self
            .open
            .entry(kind.to_string())
            .or_insert_with(|| TypeFile::new(1));
        file.buffer.extend_from_slice(json);
        file.buffer.push(b'\n');
        file.bytes += size;
        file.count += 1;
        if file.buffer.len() >= BLOCK_BYTES {
            let name = Self::file_name(self.export, kind, file.index);
            self.uploads
                .stage(self.blobs, self.container, &name, file)
                .await?;
        }
        Ok(())
    }

    async fn close(&mut self, kind: &str, mut file: TypeFile) -> Result<(), ExportError> {
        let name = Self::file_name(self.export, kind, file.index);
        self.uploads
            .stage(self.blobs, self.container, &name, &mut file)
            .await?;
        self.uploads.finish().await?;
        self.blobs
            .commit_blocks(self.container, &name, std::mem::take(&mut file.blocks))
            .await?;
        self.done.push(OutputFile {
            resource_type: kind.to_string(),
            url: self.blobs.url(self.container, &name),
            name,
            count: file.count,
            size: file.bytes,
        });
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<OutputFile>, ExportError> {
        for (kind, file) in std::mem::take(&mut self.open) {
            self.close(&kind, file).await?;
        }
        self.done.sort_by(|a, b| {
            (a.resource_type.as_str(), file_index(&a.name))
                .cmp(&(b.resource_type.as_str(), file_index(&b.name)))
        });
        Ok(self.done)
    }
}

impl TypeFile {
    fn new(index: u32) -> Self {
        TypeFile {
            index,
            blocks: Vec::new(),
            buffer: Vec::new(),
            bytes: 0,
            count: 0,
        }
    }
}

/// The staged blobs, in name order, as one stream of 1 MiB ranges read `READ_AHEAD` at a time:
/// reading the next ranges overlaps with sorting and writing the current one. Every staged
/// blob ends with a newline, so lines never span two blobs.
struct StagedChunks {
    ranges: Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>,
}

impl StagedChunks {
    fn new(blobs: &BlobStore, container: &str, staged: &[BlobEntry]) -> Self {
        let ranges: Vec<(String, u64, u64)> = staged
            .iter()
            .flat_map(|b| {
                (0..b.size)
                    .step_by(BLOB_CHUNK_BYTES as usize)
                    .map(|offset| {
                        (
                            b.name.clone(),
                            offset,
                            BLOB_CHUNK_BYTES.min(b.size - offset),
                        )
                    })
            })
            .collect();
        let (blobs, container) = (blobs.clone(), container.to_string());
        let ranges = futures::stream::iter(ranges)
            .map(move |(name, offset, len)| {
                let (blobs, container) = (blobs.clone(), container.clone());
                async move {
                    blobs
                        .read_range(&container, &name, offset, len)
                        .await
                        .map_err(|e| io::Error::other(format!("{name}: {e}")))
                }
            })
            .buffered(READ_AHEAD);
        StagedChunks {
            ranges: Box::pin(ranges),
        }
    }
}

#[async_trait]
impl ChunkStream for StagedChunks {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        self.ranges.next().await.transpose()
    }
}

/// Blocks being uploaded in the background, at most `UPLOADS_IN_FLIGHT` at once; a file's
/// blocks are committed only after every upload has finished.
#[derive(Default)]
struct Uploads {
    running: JoinSet<Result<(), StorageError>>,
}

impl Uploads {
    async fn stage(
        &mut self,
        blobs: &BlobStore,
        container: &str,
        name: &str,
        file: &mut TypeFile,
    ) -> Result<(), ExportError> {
        if file.buffer.is_empty() {
            return Ok(());
        }
        while self.running.len() >= UPLOADS_IN_FLIGHT {
            self.join_one().await?;
        }
        let id = block_id(file.blocks.len());
        let chunk = Bytes::from(std::mem::take(&mut file.buffer));
        let (blobs, container, name, block) = (
            blobs.clone(),
            container.to_string(),
            name.to_string(),
            id.clone(),
        );
        self.running
            .spawn(async move { blobs.stage_block(&container, &name, &block, chunk).await });
        file.blocks.push(id);
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), ExportError> {
        match self.running.join_next().await {
            Some(Ok(result)) => Ok(result?),
            Some(Err(e)) => Err(ExportError::Transient(format!(
                "a block upload stopped: {e}"
            ))),
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<(), ExportError> {
        while !self.running.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }
}

/// `n` of `.../<Type>-<n>.ndjson`, for ordering files numerically.
fn file_index(name: &str) -> u32 {
    name.rsplit('-')
        .next()
        .and_then(|s| s.strip_suffix(".ndjson"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_files_sort_numerically() {
        assert_eq!(shard("Patient", "a", 3), shard("Patient", "a", 3));
        assert!(shard("Patient", "a", 1) == 0);
        assert_eq!(file_index("abc/Observation-12.ndjson"), 12);
        assert!(file_index("x/Observation-2.ndjson") < file_index("x/Observation-10.ndjson"));
    }
}
