//! The zip job: an archive's entries, read in place. Bundle entries load several at once (up
//! to `FHIRBULK_BATCHES_PER_PART`, as separate Bundle files would), NDJSON entries one at a
//! time (each already keeps that many batches in flight). Outcomes are recorded in entry
//! order, so the checkpoint (entry, and line within an NDJSON entry) always means "everything
//! before this is done": a resumed try redoes the entries after it, onto the same ids.

use std::collections::BTreeSet;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::{self, BoxFuture, FutureExt};
use futures::stream::FuturesOrdered;
use zip::ZipArchive;

use super::super::state::ImportPart;
use super::{
    Claim, PartProgress, PieceSink, claim, load_bundle_bytes, load_unseekable,
    reserve_bundle_memory,
};
use crate::import::Importer;
use crate::import::budget::MemoryBudget;
use crate::import::fence::VersionFence;
use crate::import::sender::{BatchOutcome, RefusedEntry};
use crate::import::work::{FileKind, ImportError, ImportWork};
use crate::import::zip::{
    EntryInfo, EntryPlan, ZipLimits, plan_entries, read_directory, stream_entry,
};
use crate::storage::Row;
use crate::storage::stream::ChunkStream;
use crate::storage::stream::{BlobFile, Expansion};

pub async fn run_zip(
    importer: &Importer,
    work: &ImportWork,
    row: Row<ImportPart>,
    how: Claim,
) -> Result<Row<ImportPart>, ImportError> {
    let mut progress = claim(importer, work, row, how).await?;
    let loaded = load_entries(importer, work, &mut progress).await;
    progress.zip_entry = None;
    progress.end(loaded).await
}

/// Loads the entries of a zip from the part's checkpoint on.
async fn load_entries(
    importer: &Importer,
    work: &ImportWork,
    progress: &mut PartProgress<'_>,
) -> Result<(), ImportError> {
    let settings = &importer.settings;
    let (archive, directory, plans) = open_archive(importer, work).await?;
    let start_entry = progress.row.data.entry;
    // A Bundle entry holds its text and then its rewritten entries, about twice its size,
    // until sent: the entries in flight together stay within the Bundle budget's MiB at that
    // rate (a larger entry goes alone). Synthea-sized 8.5 MB Bundles go one at a time.
    let in_flight_budget = MemoryBudget::mib(settings.bundle_parse_budget_mib);
    // Entries being loaded, in entry order; their outcomes are recorded in that order.
    let mut in_order: FuturesOrdered<BoxFuture<'_, Result<EntryDone, ImportError>>> =
        FuturesOrdered::new();
    for plan in plans {
        let (index, name, kind) = match plan {
            EntryPlan::Skip => continue,
            EntryPlan::Refuse {
                index,
                name,
                reason,
            } => {
                if (index as i64) >= start_entry {
                    let done = EntryDone {
                        index,
                        name,
                        result: Err(reason),
                    };
                    in_order.push_back(future::ready(Ok(done)).boxed());
                }
                continue;
            }
            EntryPlan::Load { index, name, kind } => (index, name, kind),
        };
        if (index as i64) < start_entry {
            continue;
        }
        let limit = directory[index].uncompressed.max(1);
        // A gzip entry's declared size is the compressed one: its expansion has limits of its own.
        let gzip = (kind == FileKind::NdjsonGz).then(|| Expansion::of(settings));
        // An entry's stream starts reading at once (on a blocking thread, a few MiB ahead):
        // it is opened only when the entry's turn comes.
        let archive = archive.clone();
        if kind == FileKind::Bundle {
            let size = directory[index].uncompressed;
            let budget = in_flight_budget.clone();
            let fence = progress.fence.clone();
            in_order.push_back(
                async move {
                    let _in_flight = budget.reserve(2 * size).await?;
                    let stream = stream_entry(archive, index, gzip, limit);
                    let result = load_bundle_entry(importer, &fence, stream, size).await?;
                    Ok(EntryDone {
                        index,
                        name,
                        result,
                    })
                }
                .boxed(),
            );
            while in_order.len() >= importer.fhir_window() {
                let done = in_order.next().await.expect("non-empty")?;
                record(progress, done).await?;
            }
            continue;
        }
        // An NDJSON entry checkpoints its lines in the part row: what came before it is
        // recorded first.
        while let Some(done) = in_order.next().await {
            record(progress, done?).await?;
        }
        let stream = stream_entry(archive, index, gzip, limit);
        let resumed = (index as i64) == start_entry;
        load_ndjson_entry(importer, progress, stream, index, name, resumed).await?;
    }
    while let Some(done) = in_order.next().await {
        record(progress, done?).await?;
    }
    Ok(())
}

/// Loads NDJSON entry `index` (from the part's line checkpoint when the part `resumed` at
/// it) and records its outcome; the line checkpoint in the part row is this entry's.
async fn load_ndjson_entry<S: ChunkStream>(
    importer: &Importer,
    progress: &mut PartProgress<'_>,
    stream: S,
    index: usize,
    name: String,
    resumed: bool,
) -> Result<(), ImportError> {
    progress.zip_entry = Some((index as i64, name.clone()));
    let lines_done = if resumed { progress.row.data.line } else { 0 };
    // A resume must start here, not at a skipped entry before it.
    progress.row.data.entry = index as i64;
    let result = match load_unseekable(importer, progress, stream, lines_done, "zip entry").await {
        Ok(lines) => {
            progress.counts.lines += lines - lines_done;
            Ok(EntryTally::default())
        }
        Err(ImportError::Rejected(reason)) => Err(reason),
        Err(other) => return Err(other),
    };
    let done = EntryDone {
        index,
        name,
        result,
    };
    record(progress, done).await
}

/// Entries at or after `from` that were to be loaded or refused (a part given up on).
pub(super) async fn entries_left(
    importer: &Importer,
    work: &ImportWork,
    from: i64,
) -> Result<i64, ImportError> {
    let (_, _, plans) = open_archive(importer, work).await?;
    Ok(plans
        .iter()
        .filter(|plan| match plan {
            EntryPlan::Load { index, .. } | EntryPlan::Refuse { index, .. } => {
                *index as i64 >= from
            }
            EntryPlan::Skip => false,
        })
        .count() as i64)
}

/// Reads the archive's directory in place (ranged reads of the blob, no copy on disk) and
/// decides what to do with each entry. `Rejected` when it is not a zip or breaks a limit.
async fn open_archive(
    importer: &Importer,
    work: &ImportWork,
) -> Result<(ZipArchive<BlobFile>, Vec<EntryInfo>, Vec<EntryPlan>), ImportError> {
    let settings = &importer.settings;
    let file = BlobFile::new(
        importer.blobs.clone(),
        &work.container,
        &work.blob,
        work.end,
    );
    let (archive, directory) = tokio::task::spawn_blocking(move || read_directory(file))
        .await
        .map_err(|e| ImportError::transient(e.to_string()))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => ImportError::Rejected(e.to_string()),
            _ => ImportError::from(e),
        })?;
    let limits = ZipLimits {
        max_entries: settings.zip_max_entries,
        max_uncompressed: settings.zip_max_uncompressed_bytes,
        max_ratio: settings.zip_max_ratio,
    };
    let plans = plan_entries(&directory, limits).map_err(ImportError::Rejected)?;
    Ok((archive, directory, plans))
}

/// An entry finished: what it loaded, or why it was refused.
struct EntryDone {
    index: usize,
    name: String,
    result: Result<EntryTally, String>,
}

/// What one Bundle entry loaded and refused.
#[derive(Default)]
struct EntryTally {
    loaded: i64,
    present: i64,
    refused: Vec<RefusedEntry>,
}

#[async_trait]
impl PieceSink for EntryTally {
    fn pieces_done(&self) -> BTreeSet<usize> {
        BTreeSet::new()
    }

    fn planned(&mut self, present: i64, refused: Vec<RefusedEntry>) {
        self.present += present;
        self.refused.extend(refused);
    }

    async fn piece_done(
        &mut self,
        _: &BTreeSet<usize>,
        outcome: BatchOutcome,
    ) -> Result<(), ImportError> {
        self.loaded += outcome.loaded;
        self.refused.extend(outcome.refused);
        Ok(())
    }
}

/// Reads and loads one Bundle entry. `Ok(Err(reason))`: the entry is refused, the archive goes
/// on; `Err`: the work item's error (the archive's blob could not be read, the server stayed
/// unavailable).
async fn load_bundle_entry<S: ChunkStream>(
    importer: &Importer,
    fence: &VersionFence,
    stream: S,
    size: u64,
) -> Result<Result<EntryTally, String>, ImportError> {
    let reservation = reserve_bundle_memory(importer, size).await?;
    let limit = importer.settings.max_bundle_file_bytes;
    let bytes = match collect_limited(stream, size.min(limit), limit).await {
        Ok(bytes) => bytes,
        Err(ImportError::Rejected(reason)) => return Ok(Err(reason)),
        Err(other) => return Err(other),
    };
    let mut tally = EntryTally::default();
    match load_bundle_bytes(importer, fence, &mut tally, bytes.into(), reservation).await {
        Ok(()) => Ok(Ok(tally)),
        Err(ImportError::Rejected(reason)) => Ok(Err(reason)),
        Err(other) => Err(other),
    }
}

/// Records a finished entry in the part row and moves the checkpoint past it (the row is
/// written at most once a second: an archive of a thousand small Bundles is not a thousand
/// writes).
async fn record(progress: &mut PartProgress<'_>, done: EntryDone) -> Result<(), ImportError> {
    progress.zip_entry = Some((done.index as i64, done.name));
    match done.result {
        Ok(tally) => {
            progress.counts.loaded += tally.loaded;
            progress.counts.present += tally.present;
            progress.refuse(tally.refused, false);
        }
        Err(reason) => progress.refuse_entry(reason),
    }
    progress.row.data.entry = done.index as i64 + 1;
    progress.row.data.line = 0;
    progress.advanced = true;
    progress.save_if_due().await
}

/// Reads a zip entry whole (`expected` bytes, as its directory says), up to `limit` bytes.
/// An entry over the limit or with undecodable data is `Rejected` (the entry is refused, the
/// archive goes on); an error reading the archive's blob is the work item's
/// (`From<io::Error>`: transient unless the blob is gone).
async fn collect_limited<S: ChunkStream>(
    mut stream: S,
    expected: u64,
    limit: u64,
) -> Result<Vec<u8>, ImportError> {
    use std::io::ErrorKind;
    // Sized once: a buffer grown by doubling holds up to twice the entry while it is planned.
    let mut out = Vec::with_capacity(expected as usize);
    loop {
        match stream.next_chunk().await {
            Ok(Some(c)) => {
                out.extend_from_slice(&c);
                if out.len() as u64 > limit {
                    return Err(ImportError::Rejected(format!(
                        "the Bundle entry is larger than {} MiB (FHIRBULK_MAX_BUNDLE_FILE_MIB)",
                        limit / (1024 * 1024)
                    )));
                }
            }
            Ok(None) => return Ok(out),
            Err(e) if matches!(e.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) => {
                return Err(ImportError::Rejected(format!(
                    "the entry cannot be read: {e}"
                )));
            }
            Err(e) => return Err(ImportError::from(e)),
        }
    }
}
