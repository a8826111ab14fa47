//! The `imports` table: one partition per uploaded file version (container, blob, ETag), with a
//! `file` row (status, counts, timings, outcome) and one `part-NNNNN` row per work item holding
//! its checkpoint. Entry and line errors go to the `importerrors` table under the same
//! partition, keyed by position, so writing them again (a redelivered work item) overwrites
//! instead of duplicating.

use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::storage::table::encode_key;
use crate::storage::{
    Entity, QueryPages, StorageResult, TableClient, TransactionOp, TransactionOutcome, odata_string,
};

pub const FILE_ROW: &str = "file";

/// Lifecycle of an imported file, as stored in `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// Recorded; work items are being enqueued.
    Registering,
    Queued,
    Loading,
    /// All parts done; outcome files are being written and the file moved.
    Finalizing,
    /// Every resource loaded; the file is in `<container>processed`.
    Loaded,
    /// Some entries or lines failed; the file and its error report are in `<container>err`.
    CompletedWithErrors,
    /// The file could not be read at all; it and the reason are in `<container>err`.
    Rejected,
    /// A newer upload replaced the file while it loaded: this version stopped before its
    /// next write (what it loaded before is counted); the newer one has its own import.
    Superseded,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Registering => "registering",
            FileStatus::Queued => "queued",
            FileStatus::Loading => "loading",
            FileStatus::Finalizing => "finalizing",
            FileStatus::Loaded => "loaded",
            FileStatus::CompletedWithErrors => "completed-with-errors",
            FileStatus::Rejected => "rejected",
            FileStatus::Superseded => "superseded",
        }
    }

    pub const ALL: [FileStatus; 8] = [
        FileStatus::Registering,
        FileStatus::Queued,
        FileStatus::Loading,
        FileStatus::Finalizing,
        FileStatus::Loaded,
        FileStatus::CompletedWithErrors,
        FileStatus::Rejected,
        FileStatus::Superseded,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            FileStatus::Loaded
                | FileStatus::CompletedWithErrors
                | FileStatus::Rejected
                | FileStatus::Superseded
        )
    }
}

/// Table Storage keys hold at most 1 KiB; blob names alone may be that long.
const MAX_KEY_CHARS: usize = 400;

/// The partition key of one file version. Long names keep a readable head and end in a
/// SHA-256 of the whole, so keys stay unique and within the service's limit.
pub fn file_key(container: &str, blob: &str, etag: &str) -> String {
    let key = encode_key(&format!("{container}/{blob}#{}", etag.trim_matches('"')));
    if key.len() <= MAX_KEY_CHARS {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let mut head = 200;
    while !key.is_char_boundary(head) {
        head -= 1;
    }
    format!("{}~{hex}", &key[..head])
}

pub fn part_row(part: u32) -> String {
    format!("part-{part:05}")
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// Counters kept per part and summed per file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Resources the server accepted.
    pub loaded: i64,
    /// Entries or lines that failed (each has an error record).
    pub failed: i64,
    /// `ifNoneExist` entries the server already had.
    pub present: i64,
    /// NDJSON lines read (for absolute line numbers in error reports).
    pub lines: i64,
    /// Lines or entries of a part given up on (`FHIRBULK_WORK_STALLED_SECS`) that were never
    /// sent: with the three above, every resource of the file is counted once.
    pub not_loaded: i64,
}

/// When a part's checkpoint last moved (RFC 3339), or its work first started.
pub const PROGRESS_AT: &str = "progressAt";

/// Set on a part stopped because a newer upload replaced its file (the reason).
pub const SUPERSEDED: &str = "superseded";

/// The position of the error record of a part given up on.
pub const GAVE_UP: &str = "gave-up";

impl Counts {
    pub fn read(e: &Entity) -> Self {
        Counts {
            loaded: e.i64("loaded"),
            failed: e.i64("failed"),
            present: e.i64("present"),
            lines: e.i64("lines"),
            not_loaded: e.i64("notLoaded"),
        }
    }

    pub fn write(&self, e: &mut Entity) {
        e.set_i64("loaded", self.loaded);
        e.set_i64("failed", self.failed);
        e.set_i64("present", self.present);
        e.set_i64("lines", self.lines);
        e.set_i64("notLoaded", self.not_loaded);
    }

    pub fn add(&mut self, other: Counts) {
        self.loaded += other.loaded;
        self.failed += other.failed;
        self.present += other.present;
        self.lines += other.lines;
        self.not_loaded += other.not_loaded;
    }
}

/// One failed line or entry, as stored and as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorRecord {
    pub part: u32,
    /// Orders records within the part; also the row key, so a rewrite replaces the record.
    pub position: String,
    /// Line number within the part (NDJSON), made absolute in the report.
    pub line: Option<i64>,
    /// Entry index in the Bundle.
    pub entry: Option<i64>,
    /// Name of the zip entry, for zip files.
    pub zip_entry: Option<String>,
    /// `Type/id` when known.
    pub target: Option<String>,
    /// HTTP status from the server; 0 when refused before sending.
    pub status: u16,
    pub diagnostics: String,
}

/// Table storage caps a string property at 64 KiB; server diagnostics rarely need more.
const MAX_DIAGNOSTICS_CHARS: usize = 8_000;

impl ErrorRecord {
    fn to_entity(&self, file_key: &str) -> Entity {
        let mut e = Entity::new(file_key, &format!("{:05}-{}", self.part, self.position));
        e.set_i64("part", i64::from(self.part));
        if let Some(l) = self.line {
            e.set_i64("line", l);
        }
        if let Some(i) = self.entry {
            e.set_i64("entry", i);
        }
        if let Some(z) = &self.zip_entry {
            e.set_str("zipEntry", z.clone());
        }
        if let Some(t) = &self.target {
            e.set_str("target", t.clone());
        }
        e.set_i64("status", i64::from(self.status));
        e.set_str(
            "diagnostics",
            self.diagnostics
                .chars()
                .take(MAX_DIAGNOSTICS_CHARS)
                .collect::<String>(),
        );
        e
    }

    fn from_entity(e: &Entity) -> Self {
        let opt_i64 = |name: &str| e.props.contains_key(name).then(|| e.i64(name));
        ErrorRecord {
            part: e.i64("part") as u32,
            position: e
                .str("RowKey")
                .and_then(|rk| rk.split_once('-'))
                .map(|(_, p)| p.to_string())
                .unwrap_or_default(),
            line: opt_i64("line"),
            entry: opt_i64("entry"),
            zip_entry: e.str("zipEntry").map(str::to_string),
            target: e.str("target").map(str::to_string),
            status: e.i64("status") as u16,
            diagnostics: e.str("diagnostics").unwrap_or_default().to_string(),
        }
    }
}

/// Access to the two tables of the import ledger.
#[derive(Clone)]
pub struct Ledger {
    tables: TableClient,
    imports: String,
    errors: String,
}

impl Ledger {
    pub fn new(tables: TableClient, imports_table: &str) -> Self {
        Ledger {
            tables,
            imports: imports_table.to_string(),
            errors: format!("{imports_table}errors"),
        }
    }

    pub async fn ensure_tables(&self) -> StorageResult<()> {
        self.tables.create_table(&self.imports).await?;
        self.tables.create_table(&self.errors).await
    }

    pub fn tables(&self) -> &TableClient {
        &self.tables
    }

    pub fn imports_table(&self) -> &str {
        &self.imports
    }

    pub async fn file(&self, key: &str) -> StorageResult<Option<Entity>> {
        self.tables.get(&self.imports, key, FILE_ROW).await
    }

    pub async fn part(&self, key: &str, part: u32) -> StorageResult<Option<Entity>> {
        self.tables.get(&self.imports, key, &part_row(part)).await
    }

    /// The file row and one part row, read together in one query (each with its ETag).
    pub async fn file_and_part(
        &self,
        key: &str,
        part: u32,
    ) -> StorageResult<(Option<Entity>, Option<Entity>)> {
        let part_key = part_row(part);
        let filter = format!(
            "PartitionKey eq '{}' and (RowKey eq '{FILE_ROW}' or RowKey eq '{part_key}')",
            odata_string(key)
        );
        let (mut file, mut part) = (None, None);
        for row in self.tables.query(&self.imports, &filter).await? {
            match row.str("RowKey") {
                Some(FILE_ROW) => file = Some(row),
                Some(rk) if rk == part_key => part = Some(row),
                _ => {}
            }
        }
        Ok((file, part))
    }

    /// Writes rows of one file together: all or none.
    pub async fn transact(&self, ops: &[TransactionOp<'_>]) -> StorageResult<TransactionOutcome> {
        self.tables.transact(&self.imports, ops).await
    }

    pub async fn upsert(&self, row: &Entity) -> StorageResult<String> {
        self.tables.upsert(&self.imports, row).await
    }

    /// Replaces a row if it is unchanged since it was read; `Ok(false)` when someone else won.
    pub async fn replace_if_unchanged(&self, row: &mut Entity) -> StorageResult<bool> {
        self.tables.replace_if_unchanged(&self.imports, row).await
    }

    pub async fn parts(&self, key: &str) -> StorageResult<Vec<Entity>> {
        let filter = format!(
            "PartitionKey eq '{}' and RowKey ge 'part-' and RowKey lt 'part.'",
            odata_string(key)
        );
        self.tables.query(&self.imports, &filter).await
    }

    pub async fn write_errors(&self, key: &str, records: &[ErrorRecord]) -> StorageResult<()> {
        for r in records {
            self.tables.upsert(&self.errors, &r.to_entity(key)).await?;
        }
        Ok(())
    }

    /// A file's error records in position order (the table's RowKey order), a page at a time:
    /// a file with millions of bad lines is reported without holding them all.
    pub fn error_pages(&self, key: &str) -> ErrorPages<'_> {
        let filter = format!("PartitionKey eq '{}'", odata_string(key));
        ErrorPages(self.tables.query_pages(&self.errors, &filter))
    }

    /// File rows, newest first, optionally only those with `status`.
    pub async fn files(&self, status: Option<&str>) -> StorageResult<Vec<Entity>> {
        let mut filter = format!("RowKey eq '{FILE_ROW}'");
        if let Some(s) = status {
            filter.push_str(&format!(" and status eq '{}'", odata_string(s)));
        }
        let mut rows = self.tables.query(&self.imports, &filter).await?;
        rows.sort_by(|a, b| b.str("created").cmp(&a.str("created")));
        Ok(rows)
    }
}

/// The pages of a file's error records (`Ledger::error_pages`).
pub struct ErrorPages<'a>(QueryPages<'a>);

impl ErrorPages<'_> {
    /// The next page of records; `None` after the last.
    pub async fn next_page(&mut self) -> StorageResult<Option<Vec<ErrorRecord>>> {
        Ok(self
            .0
            .next_page()
            .await?
            .map(|rows| rows.iter().map(ErrorRecord::from_entity).collect()))
    }
}

/// The public view of a file row (what `GET /imports/...` answers).
pub fn file_view(file: &Entity, parts: &[Entity]) -> Value {
    let counts = Counts::read(file);
    let finished = file
        .str("status")
        .and_then(FileStatus::parse)
        .is_some_and(FileStatus::is_terminal);
    // A finished file has every part done; a list (no part rows read) does not say otherwise.
    let done = if finished {
        Some(file.i64("parts").max(0) as usize)
    } else if parts.is_empty() {
        None
    } else {
        Some(
            parts
                .iter()
                .filter(|p| p.str("status") == Some("done"))
                .count(),
        )
    };
    serde_json::json!({
        "id": file.str("PartitionKey").map(crate::import::work::import_id),
        "container": file.str("container"),
        "blob": file.str("blob"),
        "etag": file.str("etag"),
        "kind": file.str("kind"),
        "status": file.str("status"),
        "reason": file.str("reason"),
        "parts": { "total": file.i64("parts"), "done": done },
        "resources": {
            "loaded": counts.loaded,
            "failed": counts.failed,
            "alreadyPresent": counts.present,
            "notLoaded": counts.not_loaded,
        },
        "created": file.str("created"),
        "started": file.str("started"),
        "finished": file.str("finished"),
        "outcome": file.str("outcome"),
        "result": file.str("result"),
        "errorReport": file.str("errorReport"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_differ_per_version_and_are_table_safe() {
        let a = file_key("ndjson", "dir/Patient.ndjson", "\"0x8D1\"");
        let b = file_key("ndjson", "dir/Patient.ndjson", "\"0x8D2\"");
        assert_ne!(a, b);
        assert!(!a.contains('/') && !a.contains('#'), "{a}");
    }

    #[test]
    fn long_blob_names_get_bounded_unique_keys() {
        let long_a = format!("{}a.ndjson", "é/".repeat(400));
        let long_b = format!("{}b.ndjson", "é/".repeat(400));
        let a = file_key("ndjson", &long_a, "\"1\"");
        let b = file_key("ndjson", &long_b, "\"1\"");
        assert!(a.len() <= MAX_KEY_CHARS, "{}", a.len());
        assert_ne!(a, b);
        assert_eq!(a, file_key("ndjson", &long_a, "\"1\""));
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            FileStatus::Registering,
            FileStatus::Loaded,
            FileStatus::CompletedWithErrors,
        ] {
            assert_eq!(FileStatus::parse(s.as_str()), Some(s));
        }
        assert!(FileStatus::Rejected.is_terminal());
        assert!(!FileStatus::Loading.is_terminal());
    }

    #[test]
    fn error_records_round_trip_through_entities() {
        let r = ErrorRecord {
            part: 2,
            position: "000000000017".into(),
            line: Some(17),
            entry: None,
            zip_entry: Some("data/Patient.ndjson".into()),
            target: Some("Patient/x".into()),
            status: 422,
            diagnostics: "bad".into(),
        };
        let e = r.to_entity("k");
        assert_eq!(e.str("RowKey"), Some("00002-000000000017"));
        assert_eq!(ErrorRecord::from_entity(&e), r);
    }
}
