//! Import state, typed: the `imports` table has one partition per uploaded file version
//! (container, blob, ETag), with a `file` row ([`ImportFile`]: status, counts, timings,
//! outcome) and one `part-NNNNN` row per work item ([`ImportPart`], holding its checkpoint);
//! each is converted to and from its entity by `storage::row`. Entry and line errors go to the `importerrors` table under the same
//! partition, keyed by position, so writing them again (a redelivered work item) overwrites
//! instead of duplicating.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::work::{FileKind, ImportWork};
use crate::clock::now_rfc3339;
use crate::storage::row::is_zero;
use crate::storage::table::encode_key;
use crate::storage::{
    QueryPages, Row, StorageResult, TableClient, TableRow, TransactionOp, TransactionOutcome,
    odata_string,
};

pub const FILE_ROW: &str = "file";

/// Lifecycle of an imported file, as stored in `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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

/// Counters kept per part and summed per file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
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

/// The position of the error record of a part given up on.
pub const GAVE_UP: &str = "gave-up";

/// The counters' properties, stored as `Edm.Int64`.
const COUNT_PROPERTIES: [&str; 5] = ["loaded", "failed", "present", "lines", "notLoaded"];

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.loaded += other.loaded;
        self.failed += other.failed;
        self.present += other.present;
        self.lines += other.lines;
        self.not_loaded += other.not_loaded;
    }
}

/// What happened to a file's resources, as the result JSON and the import status say it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ResourceCounts {
    pub loaded: i64,
    pub failed: i64,
    pub already_present: i64,
    pub not_loaded: i64,
}

impl From<Counts> for ResourceCounts {
    fn from(c: Counts) -> Self {
        ResourceCounts {
            loaded: c.loaded,
            failed: c.failed,
            already_present: c.present,
            not_loaded: c.not_loaded,
        }
    }
}

/// The `file` row of an import: one per file version.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportFile {
    pub container: String,
    pub blob: String,
    pub etag: String,
    pub kind: FileKind,
    pub status: FileStatus,
    /// Work items (part rows) of the file.
    #[serde(default)]
    pub parts: i64,
    #[serde(default)]
    pub size: i64,
    /// When it was registered, started and finished (RFC 3339).
    #[serde(default)]
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Where the input went (`bundlesprocessed/x.json`), or why it did not move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// `reports/...` blob of the result JSON, and of the error report when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_report: Option<String>,
    /// Why the file was rejected or superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Loaded by the delivery of its event, with no work item (a small file), unless that
    /// load was handed on or taken over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_delivery: bool,
    /// Summed over the parts once they are all done.
    #[serde(flatten)]
    pub counts: Counts,
}

impl TableRow for ImportFile {
    const KIND: &'static str = "import file row";
    const INT64: &'static [&'static str] = &[
        "parts",
        "size",
        COUNT_PROPERTIES[0],
        COUNT_PROPERTIES[1],
        COUNT_PROPERTIES[2],
        COUNT_PROPERTIES[3],
        COUNT_PROPERTIES[4],
    ];
}

impl ImportFile {
    /// A file version being registered, in `parts` work items.
    pub fn registering(
        container: &str,
        blob: &str,
        version: &crate::storage::BlobVersion,
        kind: FileKind,
        parts: usize,
    ) -> Self {
        ImportFile {
            container: container.to_string(),
            blob: blob.to_string(),
            etag: version.etag.clone(),
            kind,
            status: FileStatus::Registering,
            parts: parts as i64,
            size: version.size as i64,
            created: now_rfc3339(),
            started: None,
            finished: None,
            outcome: None,
            result: None,
            error_report: None,
            reason: None,
            on_delivery: false,
            counts: Counts::default(),
        }
    }

    /// The work item of part `part` (`[start, end)`) of this file, whose row key is `key`.
    pub fn work(&self, key: &str, part: u32, start: u64, end: u64) -> ImportWork {
        ImportWork {
            file: key.to_string(),
            container: self.container.clone(),
            blob: self.blob.clone(),
            etag: self.etag.clone(),
            kind: self.kind,
            part,
            start,
            end,
            size: self.size.max(0) as u64,
            retry: 0,
        }
    }

    /// The work item of the whole file (its only part), whose row key is `key`.
    pub fn whole_file_work(&self, key: &str) -> ImportWork {
        self.work(key, 0, 0, self.size.max(0) as u64)
    }

    /// The first part to start marks the file as loading.
    pub fn start_loading(&mut self) {
        self.status = FileStatus::Loading;
        self.started = Some(now_rfc3339());
    }

    /// When its work started, if it did.
    pub fn started_at(&self) -> Option<time::OffsetDateTime> {
        let started = self.started.as_deref()?;
        time::OffsetDateTime::parse(started, &time::format_description::well_known::Rfc3339).ok()
    }

    /// Closes the file: its final status, where the input and the reports went, its totals.
    pub fn finish(&mut self, status: FileStatus, ending: FileEnding) {
        self.status = status;
        self.finished = Some(now_rfc3339());
        self.outcome = Some(ending.outcome);
        self.result = Some(ending.result);
        self.error_report = ending.error_report;
        self.reason = ending.reason;
        self.counts = ending.counts;
    }
}

/// How a file ended (`ImportFile::finish`).
pub struct FileEnding {
    pub outcome: String,
    pub result: String,
    pub error_report: Option<String>,
    pub reason: Option<String>,
    pub counts: Counts,
}

/// Where a part's work is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartStatus {
    Pending,
    Loading,
    Done,
}

/// A `part-NNNNN` row: one work item of a file, with its checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportPart {
    pub status: PartStatus,
    /// The byte range `[start, end)` the part owns.
    #[serde(default)]
    pub start: i64,
    #[serde(default)]
    pub end: i64,
    /// Checkpoint: the next byte to read (NDJSON), lines done, the next zip entry.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub line: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub entry: i64,
    /// Pieces of a large Bundle already sent, as `"0,1,4"`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub piece: String,
    /// When the checkpoint last moved, or the work first started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at: Option<String>,
    /// Why a part ended without finishing its work: one of these is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<String>,
    #[serde(default, rename = "gave-up", skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

impl TableRow for ImportPart {
    const KIND: &'static str = "import part row";
    const INT64: &'static [&'static str] = &[
        "start",
        "end",
        "offset",
        "line",
        "entry",
        COUNT_PROPERTIES[0],
        COUNT_PROPERTIES[1],
        COUNT_PROPERTIES[2],
        COUNT_PROPERTIES[3],
        COUNT_PROPERTIES[4],
    ];
}

/// Why a part ended without finishing its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartEnd {
    /// The file cannot be read (it and the reason go to `<container>err`).
    Rejected,
    /// A newer upload replaced the file.
    Superseded,
    /// The work failed for `FHIRBULK_WORK_STALLED_SECS` without progress.
    GaveUp,
}

impl PartEnd {
    /// As the position of the part's error record.
    pub fn as_str(self) -> &'static str {
        match self {
            PartEnd::Rejected => "rejected",
            PartEnd::Superseded => "superseded",
            PartEnd::GaveUp => GAVE_UP,
        }
    }
}

impl ImportPart {
    /// A part not started: it owns `[start, end)`.
    pub fn pending(start: i64, end: i64) -> Self {
        ImportPart {
            status: PartStatus::Pending,
            start,
            end,
            offset: 0,
            line: 0,
            entry: 0,
            piece: String::new(),
            progress_at: None,
            rejected: None,
            superseded: None,
            gave_up: None,
            counts: Counts::default(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.status == PartStatus::Done
    }

    /// Ends the part with its final counts and why.
    pub fn end(&mut self, how: PartEnd, reason: &str, counts: Counts) {
        self.status = PartStatus::Done;
        self.counts = counts;
        let slot = match how {
            PartEnd::Rejected => &mut self.rejected,
            PartEnd::Superseded => &mut self.superseded,
            PartEnd::GaveUp => &mut self.gave_up,
        };
        *slot = Some(reason.to_string());
    }

    /// Taken by a delivery that loads it now: the stall clock starts.
    pub fn start_loading(&mut self) {
        self.status = PartStatus::Loading;
        self.stamp_progress();
    }

    /// Records that the checkpoint moved now.
    pub fn stamp_progress(&mut self) {
        self.progress_at = Some(now_rfc3339());
    }
}

/// One failed line or entry, as stored (an `importerrors` row) and as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRecord {
    pub part: u32,
    /// Orders records within the part; also the row key, so a rewrite replaces the record.
    #[serde(skip)]
    pub position: String,
    /// Line number within the part (NDJSON), made absolute in the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<i64>,
    /// Entry index in the Bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<i64>,
    /// Name of the zip entry, for zip files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zip_entry: Option<String>,
    /// `Type/id` when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// HTTP status from the server; 0 when refused before sending.
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub diagnostics: String,
}

impl TableRow for ErrorRecord {
    const KIND: &'static str = "import error row";
    const INT64: &'static [&'static str] = &["part", "line", "entry", "status"];
}

/// Table storage caps a string property at 64 KiB; server diagnostics rarely need more.
const MAX_DIAGNOSTICS_CHARS: usize = 8_000;

impl ErrorRecord {
    /// Its row: keyed by part and position, the diagnostics cut to what a property holds.
    fn to_row(&self, file_key: &str) -> Row<ErrorRecord> {
        let mut record = self.clone();
        record.diagnostics = record
            .diagnostics
            .chars()
            .take(MAX_DIAGNOSTICS_CHARS)
            .collect();
        Row::new(
            file_key,
            &format!("{:05}-{}", self.part, self.position),
            record,
        )
    }

    fn from_row(row: Row<ErrorRecord>) -> Self {
        let position = row
            .row_key
            .split_once('-')
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        ErrorRecord {
            position,
            ..row.data
        }
    }
}

/// Reads and writes the two tables of imports (`imports`, `importerrors`).
#[derive(Clone)]
pub struct ImportStore {
    tables: TableClient,
    imports: String,
    errors: String,
}

impl ImportStore {
    pub fn new(tables: TableClient, imports_table: &str) -> Self {
        ImportStore {
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

    pub async fn file(&self, key: &str) -> StorageResult<Option<Row<ImportFile>>> {
        self.tables.get_row(&self.imports, key, FILE_ROW).await
    }

    pub async fn part(&self, key: &str, part: u32) -> StorageResult<Option<Row<ImportPart>>> {
        self.tables
            .get_row(&self.imports, key, &part_row(part))
            .await
    }

    /// The file row and one part row, read together in one query (each with its ETag).
    pub async fn file_and_part(
        &self,
        key: &str,
        part: u32,
    ) -> StorageResult<(Option<Row<ImportFile>>, Option<Row<ImportPart>>)> {
        let part_key = part_row(part);
        let filter = format!(
            "PartitionKey eq '{}' and (RowKey eq '{FILE_ROW}' or RowKey eq '{part_key}')",
            odata_string(key)
        );
        let (mut file, mut part) = (None, None);
        for row in self.tables.query(&self.imports, &filter).await? {
            match row.str("RowKey") {
                Some(FILE_ROW) => file = Some(Row::from_entity(row)?),
                Some(rk) if rk == part_key => part = Some(Row::from_entity(row)?),
                _ => {}
            }
        }
        Ok((file, part))
    }

    /// Writes rows of one file together: all or none.
    pub async fn transact(&self, ops: &[TransactionOp<'_>]) -> StorageResult<TransactionOutcome> {
        self.tables.transact(&self.imports, ops).await
    }

    /// Writes a row whatever is there; returns its new ETag.
    pub async fn upsert<R: TableRow>(&self, row: &Row<R>) -> StorageResult<String> {
        self.tables.upsert_row(&self.imports, row).await
    }

    /// Replaces a row if it is unchanged since it was read (its ETag moves on); `Ok(false)`
    /// when someone else won.
    pub async fn replace_if_unchanged<R: TableRow>(&self, row: &mut Row<R>) -> StorageResult<bool> {
        self.tables
            .replace_row_if_unchanged(&self.imports, row)
            .await
    }

    pub async fn parts(&self, key: &str) -> StorageResult<Vec<Row<ImportPart>>> {
        let filter = format!(
            "PartitionKey eq '{}' and RowKey ge 'part-' and RowKey lt 'part.'",
            odata_string(key)
        );
        self.tables.query_rows(&self.imports, &filter).await
    }

    pub async fn write_errors(&self, key: &str, records: &[ErrorRecord]) -> StorageResult<()> {
        for r in records {
            self.tables.upsert_row(&self.errors, &r.to_row(key)).await?;
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
    pub async fn files(&self, status: Option<FileStatus>) -> StorageResult<Vec<Row<ImportFile>>> {
        let mut filter = format!("RowKey eq '{FILE_ROW}'");
        if let Some(s) = status {
            filter.push_str(&format!(" and status eq '{}'", s.as_str()));
        }
        let mut rows: Vec<Row<ImportFile>> = self.tables.query_rows(&self.imports, &filter).await?;
        rows.sort_by(|a, b| b.data.created.cmp(&a.data.created));
        Ok(rows)
    }
}

/// The pages of a file's error records (`ImportStore::error_pages`).
pub struct ErrorPages<'a>(QueryPages<'a>);

impl ErrorPages<'_> {
    /// The next page of records; `None` after the last.
    pub async fn next_page(&mut self) -> StorageResult<Option<Vec<ErrorRecord>>> {
        let Some(rows) = self.0.next_page().await? else {
            return Ok(None);
        };
        rows.into_iter()
            .map(|e| Row::from_entity(e).map(ErrorRecord::from_row))
            .collect::<StorageResult<Vec<_>>>()
            .map(Some)
    }
}

/// The public view of a file row (what `GET /imports/...` answers).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileView<'a> {
    /// The import id (12 hex digits), as logs name it.
    pub id: String,
    pub container: &'a str,
    pub blob: &'a str,
    pub etag: &'a str,
    pub kind: FileKind,
    pub status: FileStatus,
    pub reason: Option<&'a str>,
    pub parts: PartsView,
    pub resources: ResourceCounts,
    pub created: &'a str,
    pub started: Option<&'a str>,
    pub finished: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub result: Option<&'a str>,
    pub error_report: Option<&'a str>,
}

/// How many parts a file has, and how many are done (unknown in a list, which reads no part
/// rows, until the file is finished).
#[derive(Debug, Serialize)]
pub struct PartsView {
    pub total: i64,
    pub done: Option<usize>,
}

impl<'a> FileView<'a> {
    pub fn of(file: &'a Row<ImportFile>, parts: &[Row<ImportPart>]) -> Self {
        let f = &file.data;
        let done = if f.status.is_terminal() {
            Some(f.parts.max(0) as usize)
        } else if parts.is_empty() {
            None
        } else {
            Some(parts.iter().filter(|p| p.data.is_done()).count())
        };
        FileView {
            id: crate::import::work::import_id(&file.partition_key),
            container: &f.container,
            blob: &f.blob,
            etag: &f.etag,
            kind: f.kind,
            status: f.status,
            reason: f.reason.as_deref(),
            parts: PartsView {
                total: f.parts,
                done,
            },
            resources: f.counts.into(),
            created: &f.created,
            started: f.started.as_deref(),
            finished: f.finished.as_deref(),
            outcome: f.outcome.as_deref(),
            result: f.result.as_deref(),
            error_report: f.error_report.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Entity;

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

    /// An entity as the Table service returns it: every property a string or a number, 64-bit
    /// integers as strings with their annotation, the service's own properties beside.
    fn as_read(props: serde_json::Value) -> Entity {
        let mut e = Entity::new("ndjson%2Fa.ndjson#0x1", "x");
        for (k, v) in props.as_object().unwrap() {
            e.props.insert(k.clone(), v.clone());
        }
        e.props
            .insert("Timestamp".into(), "2026-12-06T10:00:00.1234567Z".into());
        e.props
            .insert("odata.etag".into(), "W/\"datetime'2026'\"".into());
        e.etag = "W/\"datetime'2026'\"".into();
        e
    }

    /// Rows written by the version before typed rows (session 10) are read: a deployed app is
    /// updated with imports in flight.
    #[test]
    fn rows_in_the_format_of_the_previous_version_are_read() {
        let file = as_read(serde_json::json!({
            "PartitionKey": "ndjson%2Fa.ndjson#0x1", "RowKey": "file",
            "container": "ndjson", "blob": "a.ndjson", "etag": "\"0x1\"", "kind": "ndjson-gz",
            "status": "completed-with-errors",
            "parts": "3", "parts@odata.type": "Edm.Int64",
            "size": "1099511627776", "size@odata.type": "Edm.Int64",
            "created": "2026-12-06T09:00:00Z", "started": "2026-12-06T09:00:01Z",
            "finished": "2026-12-06T09:10:00Z", "outcome": "ndjsonerr/a.ndjson",
            "result": "reports/ndjson/a.ndjson/abc/result.json",
            "errorReport": "reports/ndjson/a.ndjson/abc/errors.ndjson",
            "loaded": "10", "loaded@odata.type": "Edm.Int64",
            "failed": "2", "failed@odata.type": "Edm.Int64",
            "present": "0", "present@odata.type": "Edm.Int64",
            "lines": "12", "lines@odata.type": "Edm.Int64",
            "notLoaded": "1", "notLoaded@odata.type": "Edm.Int64",
        }));
        let row = Row::<ImportFile>::from_entity(file).unwrap();
        let f = &row.data;
        assert_eq!(f.kind, FileKind::NdjsonGz);
        assert_eq!(f.status, FileStatus::CompletedWithErrors);
        assert_eq!((f.parts, f.size), (3, 1 << 40));
        assert_eq!(
            f.counts,
            Counts {
                loaded: 10,
                failed: 2,
                present: 0,
                lines: 12,
                not_loaded: 1
            }
        );
        assert_eq!(
            f.error_report.as_deref(),
            Some("reports/ndjson/a.ndjson/abc/errors.ndjson")
        );
        assert!(row.written_at.is_some());
        // A file row just registered (no counts yet, as rows of older versions were).
        let fresh = as_read(serde_json::json!({
            "PartitionKey": "k", "RowKey": "file", "container": "bundles", "blob": "b.json",
            "etag": "0x2", "kind": "bundle", "status": "registering", "parts": 1, "size": 10,
            "created": "2026-12-06T09:00:00Z",
        }));
        let fresh = Row::<ImportFile>::from_entity(fresh).unwrap();
        assert_eq!(fresh.data.counts, Counts::default());
        assert_eq!(fresh.data.started, None);

        let part = as_read(serde_json::json!({
            "PartitionKey": "k", "RowKey": "part-00002", "status": "loading",
            "start": "67108864", "start@odata.type": "Edm.Int64",
            "end": "100663296", "end@odata.type": "Edm.Int64",
            "offset": "70000000", "offset@odata.type": "Edm.Int64",
            "line": "5000", "line@odata.type": "Edm.Int64",
            "piece": "0,1,4", "progressAt": "2026-12-06T09:05:00Z",
            "loaded": "4990", "loaded@odata.type": "Edm.Int64",
            "failed": "10", "failed@odata.type": "Edm.Int64",
        }));
        let part = Row::<ImportPart>::from_entity(part).unwrap();
        let p = &part.data;
        assert_eq!(p.status, PartStatus::Loading);
        assert_eq!(
            (p.start, p.end, p.offset, p.line, p.entry),
            (64 << 20, 96 << 20, 70_000_000, 5000, 0)
        );
        assert_eq!(p.piece, "0,1,4");
        assert_eq!(p.counts.loaded, 4990);
        assert_eq!(part.row_key, "part-00002");
        let ended = as_read(serde_json::json!({
            "PartitionKey": "k", "RowKey": "part-00000", "status": "done",
            "start": "0", "end": "10", "gave-up": "HTTP 503 for 24 h",
        }));
        let ended = Row::<ImportPart>::from_entity(ended).unwrap();
        assert!(ended.data.is_done());
        assert_eq!(ended.data.gave_up.as_deref(), Some("HTTP 503 for 24 h"));
    }

    /// And written in the same format: the properties, the Int64 annotations, nothing else.
    #[test]
    fn rows_are_written_in_the_same_format() {
        let mut part = Row::new("k", &part_row(1), ImportPart::pending(0, 1 << 40));
        part.data.end(
            PartEnd::GaveUp,
            "why",
            Counts {
                loaded: 3,
                ..Counts::default()
            },
        );
        let e = part.to_entity();
        assert_eq!(e.props["status"], "done");
        assert_eq!(e.props["end"], "1099511627776");
        assert_eq!(e.props["end@odata.type"], "Edm.Int64");
        assert_eq!(e.props["loaded"], "3");
        assert_eq!(e.props["gave-up"], "why");
        assert!(!e.props.contains_key("offset") && !e.props.contains_key("piece"));
        assert!(!e.props.contains_key("rejected") && !e.props.contains_key("progressAt"));
        let back = Row::<ImportPart>::from_entity(e).unwrap();
        assert_eq!(back.data.counts.loaded, 3);
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
        let e = r.to_row("k").to_entity();
        assert_eq!(e.str("RowKey"), Some("00002-000000000017"));
        assert_eq!(e.props["line"], "17", "as the previous version wrote it");
        assert_eq!(e.props["status"], "422");
        assert_eq!(e.props["zipEntry"], "data/Patient.ndjson");
        assert_eq!(ErrorRecord::from_row(Row::from_entity(e).unwrap()), r);
    }
}
