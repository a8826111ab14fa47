//! Step 3, once per resource type: as soon as no pending search can return a type any more,
//! its staged resources are merged into `<Type>-<n>.ndjson`, each resource once (the same
//! resource found by two include searches or two batches is written the first time only), a
//! new file before one would pass the size limit. Types are composed in parallel, and while
//! the searches for other types still run; what a type's step wrote is recorded in
//! `_state/composed/<Type>.json`, which the finish step turns into the manifest.
//!
//! Composing is deterministic (staged blobs in name order, files as staged blocks committed at
//! the end), so a compose step that dies, or runs twice, writes the same files.
//! Duplicates are found with a set of id hashes; for very large types the ids are split by
//! hash over several passes so that the set stays bounded.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use super::fetch::{BLOCK_BYTES, staging_blob};
use super::state::{JobStatus, WorkRow, parse_work_row, type_counts};
use super::uploads::BlockUploads;
use super::{ExportError, Exporter};
use crate::clock::now_rfc3339;
use crate::storage::lines::{ChunkStream, LineReader};
use crate::storage::stream::{BlobChunks, gunzip};
use crate::storage::{BlobEntry, BlobStore, Row, block_id};

/// Ids held in one type's duplicate set at once (16 bytes each); more resources of a type mean
/// more passes over its staging. Several types may be composed at once.
const IDS_PER_PASS: u64 = 1_000_000;
/// Output blocks uploaded at once while composing.
const UPLOADS_IN_FLIGHT: usize = 4;

/// One output file of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Blob name in the export container.
    pub name: String,
    pub count: u64,
    pub size: u64,
}

/// What composing one type wrote: `_state/composed/<Type>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposedType {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub files: Vec<OutputFile>,
    #[serde(rename = "duplicatesDropped")]
    pub duplicates: u64,
    #[serde(rename = "malformedStagedLines")]
    pub malformed: u64,
    pub composed: String,
}

pub fn composed_prefix(export: &str) -> String {
    Exporter::blob_name(export, "_state/composed/")
}

fn composed_blob(export: &str, resource_type: &str) -> String {
    format!("{}{resource_type}.json", composed_prefix(export))
}

/// The types of an export composed so far (one listing).
pub async fn composed_types(ex: &Exporter, export: &str) -> Result<BTreeSet<String>, ExportError> {
    let prefix = composed_prefix(export);
    Ok(ex
        .blobs
        .list(&ex.settings.container, Some(&prefix))
        .await?
        .into_iter()
        .filter_map(|b| {
            b.name
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect())
}

/// What every composed type of an export wrote, by type.
pub async fn composed(
    ex: &Exporter,
    export: &str,
) -> Result<BTreeMap<String, ComposedType>, ExportError> {
    let mut out = BTreeMap::new();
    for resource_type in composed_types(ex, export).await? {
        let name = composed_blob(export, &resource_type);
        if let Some((_, bytes)) = ex.blobs.read_all(&ex.settings.container, &name).await? {
            let record: ComposedType = serde_json::from_slice(&bytes).map_err(|e| {
                ExportError::transient(format!("{name} is not a composed-type record: {e}"))
            })?;
            out.insert(resource_type, record);
        }
    }
    Ok(out)
}

pub async fn run(ex: &Exporter, export: &str, resource_type: &str) -> Result<(), ExportError> {
    if compose_type(ex, export, resource_type).await? {
        ex.finish_when_nothing_pending(export).await?;
    }
    Ok(())
}

/// Composes `resource_type`'s files once no pending search can return it; `true` when it is
/// composed (now or before), so the finish step may be due.
pub(crate) async fn compose_type(
    ex: &Exporter,
    export: &str,
    resource_type: &str,
) -> Result<bool, ExportError> {
    if !matches!(
        ex.job(export).await?,
        Some((_, JobStatus::Exporting | JobStatus::Composing))
    ) {
        return Ok(false);
    }
    let container = &ex.settings.container;
    let record = composed_blob(export, resource_type);
    if ex.blobs.properties(container, &record).await?.is_some() {
        return Ok(true); // a repeat
    }
    let rows = ex.store.work_rows_returning(export, resource_type).await?;
    if rows.iter().any(|r| r.data.is_pending()) {
        return Ok(false); // not ready: the last of those items queues this step again
    }
    let (staged, resources) = staged_of_type(export, resource_type, &rows);
    let mut writer = OutputWriter::new(&ex.blobs, container, export, ex.settings.max_file_bytes);
    let (duplicates, malformed) =
        write_each_once(ex, resource_type, &staged, resources, &mut writer).await?;
    let files = writer.finish().await?;
    let composed = ComposedType {
        resource_type: resource_type.to_string(),
        files,
        duplicates,
        malformed,
        composed: now_rfc3339(),
    };
    ex.blobs
        .upload(
            container,
            &record,
            Bytes::from(serde_json::to_vec(&composed).expect("JSON serialises")),
        )
        .await?;
    info!(
        message = "Export type composed.",
        export,
        resource_type,
        files = composed.files.len(),
        duplicates_dropped = duplicates,
        malformed_staged_lines = malformed
    );
    Ok(true)
}

/// The staging blobs whose work items returned `resource_type`, in name order, and how many
/// resources of that type they hold together.
fn staged_of_type(
    export: &str,
    resource_type: &str,
    rows: &[Row<WorkRow>],
) -> (Vec<BlobEntry>, u64) {
    let mut staged = Vec::new();
    let mut resources = 0u64;
    for row in rows {
        let Some(n) = type_counts(&row.data)
            .find(|(t, _)| t == resource_type)
            .map(|(_, n)| n)
        else {
            continue;
        };
        let Some((batch, include)) = parse_work_row(&row.row_key) else {
            continue;
        };
        resources += n;
        staged.push(BlobEntry {
            name: staging_blob(export, batch, include),
            size: row.data.staged_bytes.max(0) as u64,
            etag: String::new(),
        });
    }
    staged.sort_by(|a, b| a.name.cmp(&b.name));
    (staged, resources)
}

/// Writes each resource of `resource_type` in the `staged` blobs once, in passes of at most
/// `IDS_PER_PASS` ids (an id's pass is decided by its hash, so the set of ids seen stays
/// bounded); the duplicates dropped and the malformed staged lines skipped.
async fn write_each_once(
    ex: &Exporter,
    resource_type: &str,
    staged: &[BlobEntry],
    resources: u64,
    writer: &mut OutputWriter<'_>,
) -> Result<(u64, u64), ExportError> {
    let container = &ex.settings.container;
    let passes = resources.div_ceil(IDS_PER_PASS).max(1);
    let mut duplicates = 0u64;
    let mut malformed = 0u64;
    for pass in 0..passes {
        let mut seen: HashSet<u128> = HashSet::new();
        let chunks = gunzip(StagedChunks::new(&ex.blobs, container, staged));
        let mut lines = LineReader::new(chunks, 0, u64::MAX, false);
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| ExportError::transient(format!("cannot read the staged output: {e}")))?
        {
            let Some((kind, id, json)) = super::page::split_staged(&line.bytes) else {
                malformed += 1;
                continue;
            };
            if kind != resource_type {
                continue; // another type returned by an _include search
            }
            let hash = id_hash(id);
            if passes > 1 && (hash % passes as u128) as u64 != pass {
                continue;
            }
            if !seen.insert(hash) {
                duplicates += 1;
                continue;
            }
            writer.push(kind, json).await?;
        }
    }
    Ok((duplicates, malformed))
}

/// A 128-bit hash of a resource id (the head of its SHA-256): the same in every pass, every
/// re-run and every release (the pass an id falls in decides where it is written), and 16
/// bytes per id keep large sets small.
fn id_hash(id: &str) -> u128 {
    let digest = Sha256::digest(id.as_bytes());
    u128::from_be_bytes(digest[..16].try_into().expect("SHA-256 has 32 bytes"))
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
    uploads: BlockUploads,
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
            uploads: BlockUploads::new(UPLOADS_IN_FLIGHT),
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
        if file.buffer.len() >= BLOCK_BYTES
            && let Some((id, chunk)) = file.take_block()
        {
            let name = Self::file_name(self.export, kind, file.index);
            self.uploads
                .stage(self.blobs, self.container, &name, id, chunk)
                .await?;
        }
        Ok(())
    }

    async fn close(&mut self, kind: &str, mut file: TypeFile) -> Result<(), ExportError> {
        let name = Self::file_name(self.export, kind, file.index);
        if let Some((id, chunk)) = file.take_block() {
            self.uploads
                .stage(self.blobs, self.container, &name, id, chunk)
                .await?;
        }
        self.uploads.finish().await?;
        self.blobs
            .commit_blocks(self.container, &name, std::mem::take(&mut file.blocks))
            .await?;
        self.done.push(OutputFile {
            resource_type: kind.to_string(),
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

    /// The buffered lines as the file's next block, if there are any.
    fn take_block(&mut self) -> Option<(Vec<u8>, Bytes)> {
        if self.buffer.is_empty() {
            return None;
        }
        let id = block_id(self.blocks.len());
        self.blocks.push(id.clone());
        Some((id, Bytes::from(std::mem::take(&mut self.buffer))))
    }
}

/// The staged blobs, in name order, as one stream: each blob is one streamed read, so the
/// transport reads ahead while the current bytes are sorted and written. Every staged blob is
/// whole gzip members of whole lines, so the stream is one multi-member gzip stream and lines
/// never span two blobs.
struct StagedChunks {
    blobs: BlobStore,
    container: String,
    staged: std::collections::VecDeque<BlobEntry>,
    current: Option<BlobChunks>,
}

impl StagedChunks {
    fn new(blobs: &BlobStore, container: &str, staged: &[BlobEntry]) -> Self {
        StagedChunks {
            blobs: blobs.clone(),
            container: container.to_string(),
            staged: staged.iter().cloned().collect(),
            current: None,
        }
    }
}

#[async_trait]
impl ChunkStream for StagedChunks {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(blob) = &mut self.current {
                if let Some(bytes) = blob.next_chunk().await? {
                    return Ok(Some(bytes));
                }
                self.current = None;
            }
            let Some(next) = self.staged.pop_front() else {
                return Ok(None);
            };
            self.current = Some(BlobChunks::new(
                self.blobs.clone(),
                &self.container,
                &next.name,
                0,
                next.size,
            ));
        }
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
    fn id_hashes_are_stable_and_files_sort_numerically() {
        assert_eq!(id_hash("a"), id_hash("a"));
        assert_ne!(id_hash("a"), id_hash("b"));
        assert_eq!(
            id_hash("a"),
            0xca978112_ca1bbdca_fac231b3_9a23dc4d,
            "SHA-256 of \"a\""
        );
        assert_eq!(file_index("abc/Observation-12.ndjson"), 12);
        assert!(file_index("x/Observation-2.ndjson") < file_index("x/Observation-10.ndjson"));
    }
}
