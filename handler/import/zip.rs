//! Zip archives: the checks made before anything is loaded (entry names, nested archives,
//! uncompressed size and compression ratio), and streaming one entry at a time out of the
//! archive read in place (a `BlobFile`: ranged reads, no copy on disk), so memory stays at a
//! few chunks whatever the archive holds.

use std::io::{self, Read, Seek};

use zip::result::ZipError;

use super::work::FileKind;
use crate::storage::stream::{ChannelChunks, Expansion, spawn_producer};

/// What the archive may hold.
#[derive(Clone, Copy, Debug)]
pub struct ZipLimits {
    pub max_entries: usize,
    pub max_uncompressed: u64,
    pub max_ratio: u64,
}

/// One entry of the central directory, as the checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub name: String,
    pub compressed: u64,
    pub uncompressed: u64,
    pub is_dir: bool,
    /// The entry's own name is a safe relative path (no absolute path, no `..`).
    pub safe_name: bool,
    /// How many entries of the archive have this name (1 for a name used once).
    pub same_name: usize,
}

/// What to do with one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPlan {
    Load {
        index: usize,
        name: String,
        kind: FileKind,
    },
    Refuse {
        index: usize,
        name: String,
        reason: String,
    },
    /// Directories and operating-system litter (`__MACOSX/`, `.DS_Store`).
    Skip,
}

/// Checks the archive as a whole (`Err` rejects it) and decides each entry.
pub fn plan_entries(entries: &[EntryInfo], limits: ZipLimits) -> Result<Vec<EntryPlan>, String> {
    if entries.len() > limits.max_entries {
        return Err(format!(
            "the archive has {} entries; the limit is {} (FHIRBULK_ZIP_MAX_ENTRIES)",
            entries.len(),
            limits.max_entries
        ));
    }
    let total: u64 = entries.iter().map(|e| e.uncompressed).sum();
    if total > limits.max_uncompressed {
        return Err(format!(
            "the archive expands to {} MiB; the limit is {} MiB (FHIRBULK_ZIP_MAX_UNCOMPRESSED_MIB)",
            total / (1024 * 1024),
            limits.max_uncompressed / (1024 * 1024)
        ));
    }
    let compressed: u64 = entries.iter().map(|e| e.compressed).sum();
    if compressed > 0 && total / compressed > limits.max_ratio {
        return Err(format!(
            "the archive's compression ratio is {}:1; the limit is {}:1 (FHIRBULK_ZIP_MAX_RATIO) — a zip bomb is likely",
            total / compressed,
            limits.max_ratio
        ));
    }
    Ok(entries
        .iter()
        .enumerate()
        .map(|(index, e)| plan_entry(index, e, limits))
        .collect())
}

fn plan_entry(index: usize, e: &EntryInfo, limits: ZipLimits) -> EntryPlan {
    let lower = e.name.to_ascii_lowercase();
    let base = lower.rsplit('/').next().unwrap_or(&lower);
    if e.is_dir || lower.starts_with("__macosx/") || base == ".ds_store" {
        return EntryPlan::Skip;
    }
    let refuse = |reason: String| EntryPlan::Refuse {
        index,
        name: e.name.clone(),
        reason,
    };
    if e.same_name > 1 {
        return refuse(format!(
            "the archive holds {} entries named {:?}: entry names must be unique, so none of them is loaded (rename them and upload the archive again)",
            e.same_name, e.name
        ));
    }
    if !e.safe_name {
        return refuse(
            "the entry's path is absolute or has a '..' segment, which could climb out of the archive; refused"
                .into(),
        );
    }
    if e.compressed > 0 && e.uncompressed / e.compressed > limits.max_ratio {
        return refuse(format!(
            "the entry's compression ratio is {}:1; the limit is {}:1",
            e.uncompressed / e.compressed,
            limits.max_ratio
        ));
    }
    let kind = if lower.ends_with(".ndjson") || lower.ends_with(".jsonl") {
        FileKind::Ndjson
    } else if lower.ends_with(".ndjson.gz") {
        FileKind::NdjsonGz
    } else if lower.ends_with(".json") {
        FileKind::Bundle
    } else if [
        ".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".bz2", ".xz", ".jar",
    ]
    .iter()
    .any(|ext| lower.ends_with(ext))
    {
        return refuse("nested archives are not opened; upload the inner archive itself".into());
    } else {
        return refuse("not a .json Bundle or .ndjson/.ndjson.gz file".into());
    };
    EntryPlan::Load {
        index,
        name: e.name.clone(),
        kind,
    }
}

/// A zip error as an `io::Error`: the reader's own errors (storage unreachable, the blob gone)
/// keep their kind; anything else means the archive cannot be read (`InvalidData`, final).
fn unreadable(e: ZipError, what: impl FnOnce() -> String) -> io::Error {
    match e {
        ZipError::Io(e) if e.kind() != io::ErrorKind::UnexpectedEof => e,
        other => io::Error::new(io::ErrorKind::InvalidData, format!("{}: {other}", what())),
    }
}

/// Opens the archive and reads its central directory (blocking: run it on a blocking thread).
/// The archive is returned for [`stream_entry`]; its clones share the directory.
pub fn read_directory<R: Read + Seek + Clone>(
    reader: R,
) -> io::Result<(zip::ZipArchive<R>, Vec<EntryInfo>)> {
    let mut archive = zip::ZipArchive::new(reader)
        .map_err(|e| unreadable(e, || "the file is not a readable zip archive".into()))?;
    // The zip reader keeps one entry per name: entries sharing a name are counted from the
    // directory itself, so that none is skipped without a word.
    let mut names = central_directory_names(
        &mut archive.clone().into_inner(),
        archive.central_directory_start(),
    )?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| unreadable(e, || format!("entry {i} of the archive is unreadable")))?;
        out.push(EntryInfo {
            name: entry.name().to_string(),
            compressed: entry.compressed_size(),
            uncompressed: entry.size(),
            is_dir: entry.is_dir(),
            safe_name: entry.enclosed_name().is_some()
                && !entry
                    .name()
                    .split(['/', '\\'])
                    .any(|segment| segment == ".."),
            same_name: 1,
        });
    }
    // Each name the reader kept once stands for all its entries: the others are added after
    // the archive's own (refused with it; they are never read).
    for info in &mut out {
        info.same_name = names.remove(&info.name).unwrap_or(1);
    }
    let extra: Vec<EntryInfo> = out
        .iter()
        .filter(|i| i.same_name > 1)
        .flat_map(|i| std::iter::repeat_n(i.clone(), i.same_name - 1))
        .collect();
    out.extend(extra);
    Ok((archive, out))
}

/// How many central-directory records carry each name, read from the records themselves
/// (signature, fixed fields, then name, extra field and comment).
fn central_directory_names<R: Read + Seek>(
    reader: &mut R,
    start: u64,
) -> io::Result<std::collections::HashMap<String, usize>> {
    const SIGNATURE: u32 = 0x0201_4b50;
    let mut names = std::collections::HashMap::new();
    reader.seek(io::SeekFrom::Start(start))?;
    let mut fixed = [0u8; 46];
    loop {
        if reader.read_exact(&mut fixed).is_err()
            || u32::from_le_bytes(fixed[0..4].try_into().expect("4 bytes")) != SIGNATURE
        {
            return Ok(names);
        }
        let field = |at: usize| u64::from(u16::from_le_bytes([fixed[at], fixed[at + 1]]));
        let mut name = vec![0u8; field(28) as usize];
        reader.read_exact(&mut name)?;
        reader.seek(io::SeekFrom::Current((field(30) + field(32)) as i64))?;
        *names
            .entry(String::from_utf8_lossy(&name).into_owned())
            .or_insert(0) += 1;
    }
}

/// Streams entry `index` of `archive` (a clone per entry) on a blocking thread. Reading stops
/// with an error if the entry yields more than `limit` bytes (a directory can lie about
/// sizes). `.ndjson.gz` entries are decompressed on the way.
pub fn stream_entry<R: Read + Seek + Send + 'static>(
    mut archive: zip::ZipArchive<R>,
    index: usize,
    gzip: Option<Expansion>,
    limit: u64,
) -> ChannelChunks {
    spawn_producer(move |out| {
        let entry = archive
            .by_index(index)
            .map_err(|e| unreadable(e, || format!("entry {index} of the archive is unreadable")))?;
        match gzip {
            // A gzip entry's expansion is held to the limits of a gzip file.
            Some(limits) => out.pump_expansion(entry, limits),
            None => out.pump(entry, limit),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ZipLimits = ZipLimits {
        max_entries: 10,
        max_uncompressed: 1_000_000,
        max_ratio: 100,
    };

    fn info(name: &str, compressed: u64, uncompressed: u64) -> EntryInfo {
        EntryInfo {
            name: name.into(),
            compressed,
            uncompressed,
            is_dir: name.ends_with('/'),
            safe_name: !name.starts_with('/') && !name.contains(".."),
            same_name: 1,
        }
    }

    #[test]
    fn entries_are_routed_by_extension_and_unsafe_ones_refused() {
        let plans = plan_entries(
            &[
                info("data/Patient.ndjson", 100, 1000),
                info("bundles/b1.json", 100, 900),
                info("Obs.ndjson.gz", 100, 100),
                info("../../etc/passwd.json", 10, 10),
                info("/abs/x.ndjson", 10, 10),
                info("inner.zip", 10, 10),
                info("notes.txt", 10, 10),
                info("data/", 0, 0),
                info("__MACOSX/._Patient.ndjson", 10, 10),
            ],
            LIMITS,
        )
        .unwrap();
        let kinds: Vec<_> = plans
            .iter()
            .map(|p| match p {
                EntryPlan::Load { kind, .. } => format!("load {}", kind.as_str()),
                EntryPlan::Refuse { reason, .. } => {
                    format!("refuse {}", reason.split(' ').nth(1).unwrap_or(""))
                }
                EntryPlan::Skip => "skip".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "load ndjson",
                "load bundle",
                "load ndjson-gz",
                "refuse entry's",
                "refuse entry's",
                "refuse archives",
                "refuse a",
                "skip",
                "skip"
            ]
        );
    }

    #[test]
    fn bombs_and_oversized_archives_are_rejected_whole() {
        let e = plan_entries(&[info("a.ndjson", 10, 2_000_000)], LIMITS).unwrap_err();
        assert!(e.contains("expands to"), "{e}");
        let e = plan_entries(&[info("a.ndjson", 10, 5_000)], LIMITS).unwrap_err();
        assert!(e.contains("ratio"), "{e}");
        let many: Vec<_> = (0..11).map(|i| info(&format!("{i}.json"), 1, 1)).collect();
        assert!(
            plan_entries(&many, LIMITS)
                .unwrap_err()
                .contains("11 entries")
        );
    }

    #[test]
    fn one_compressed_entry_over_the_ratio_is_refused_alone() {
        let plans = plan_entries(
            &[
                info("a.ndjson", 1000, 1000),
                info("b.ndjson", 10, 5_000),
                info("c.ndjson", 99_000, 99_000),
            ],
            LIMITS,
        )
        .unwrap();
        assert!(matches!(plans[0], EntryPlan::Load { .. }));
        assert!(matches!(&plans[1], EntryPlan::Refuse { reason, .. } if reason.contains("ratio")));
    }

    /// Entries sharing a name (which the zip reader collapses into one) are each refused,
    /// with the reason: none is skipped without a word.
    #[test]
    fn entries_with_the_same_name_are_all_refused() {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        for name in ["dup/a.json", "dup/b.json", "c.ndjson"] {
            w.start_file(name, opts).unwrap();
            w.write_all(b"{}").unwrap();
        }
        let mut bytes = w.finish().unwrap().into_inner();
        // The writer refuses a second name: rename b to a in the local and central headers.
        for at in (0..bytes.len() - 10).rev() {
            if &bytes[at..at + 10] == b"dup/b.json" {
                bytes[at + 4] = b'a';
            }
        }
        let (_, entries) = read_directory(io::Cursor::new(bytes)).unwrap();
        assert_eq!(entries.len(), 3, "{entries:?}");
        let plans = plan_entries(&entries, LIMITS).unwrap();
        let refused: Vec<_> = plans
            .iter()
            .filter_map(|p| match p {
                EntryPlan::Refuse { name, reason, .. } => Some((name.clone(), reason.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), 2, "{plans:?}");
        assert!(
            refused
                .iter()
                .all(|(n, r)| n == "dup/a.json" && r.contains("2 entries named"))
        );
        assert!(matches!(&plans[1], EntryPlan::Load { name, .. } if name == "c.ndjson"));
    }

    #[tokio::test]
    async fn entries_stream_from_a_real_archive() {
        use crate::storage::stream::ChunkStream;
        use std::io::Write;
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        w.start_file("x/Patient.ndjson", opts).unwrap();
        w.write_all(b"{\"resourceType\":\"Patient\",\"id\":\"1\"}\n")
            .unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let (archive, dir_entries) = read_directory(io::Cursor::new(bytes)).unwrap();
        assert_eq!(dir_entries[0].name, "x/Patient.ndjson");
        assert!(dir_entries[0].safe_name);
        let mut s = stream_entry(archive.clone(), 0, None, 1 << 20);
        let chunk = s.next_chunk().await.unwrap().unwrap();
        assert!(chunk.starts_with(b"{\"resourceType\""));
        let mut s = stream_entry(archive, 0, None, 5);
        assert!(
            s.next_chunk().await.is_err(),
            "the byte limit is enforced while reading"
        );
        // Not an archive: final (InvalidData), with the reason.
        let e = read_directory(io::Cursor::new(b"{\"resourceType\":\"Patient\"}".to_vec()))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("not a readable zip archive"), "{e}");
        // The reader's own failure keeps its kind (storage unreachable: worth a retry).
        #[derive(Clone)]
        struct Unreachable;
        impl Read for Unreachable {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("connection refused"))
            }
        }
        impl Seek for Unreachable {
            fn seek(&mut self, _: io::SeekFrom) -> io::Result<u64> {
                Ok(1000)
            }
        }
        let e = read_directory(Unreachable).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::Other, "{e}");
    }
}
