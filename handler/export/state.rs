//! Export state in the `exports` table, one partition per export: the job row (`job`) and one
//! row per work item (`w-<batch>-<include>`). Counters are never incremented in place: each
//! work item writes its own row once, and progress is the sum of those rows, so it stays exact
//! however many instances run, however often a work item is redelivered.

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::ExportKind;
use crate::clock::now_rfc3339;
use crate::storage::row::is_zero;
use crate::storage::{Row, StorageResult, TableClient, TableRow, odata_string};

pub const JOB_ROW: &str = "job";
const WORK_ROW_PREFIX: &str = "w-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    /// Paging the query for patient ids.
    Gathering,
    /// Work items (id batch × include) are fetching resources.
    Exporting,
    /// Writing the NDJSON files and the manifest.
    Composing,
    Completed,
    CompletedWithErrors,
    /// The query could not be read: nothing was exported.
    Failed,
    Terminated,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Gathering => "gathering",
            JobStatus::Exporting => "exporting",
            JobStatus::Composing => "composing",
            JobStatus::Completed => "completed",
            JobStatus::CompletedWithErrors => "completed-with-errors",
            JobStatus::Failed => "failed",
            JobStatus::Terminated => "terminated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            JobStatus::Gathering,
            JobStatus::Exporting,
            JobStatus::Composing,
            JobStatus::Completed,
            JobStatus::CompletedWithErrors,
            JobStatus::Failed,
            JobStatus::Terminated,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    pub fn is_running(self) -> bool {
        matches!(
            self,
            JobStatus::Gathering | JobStatus::Exporting | JobStatus::Composing
        )
    }
}

/// A status this version does not know reads as failed (nothing will move it on).
fn lenient_status<'de, D: Deserializer<'de>>(d: D) -> Result<JobStatus, D::Error> {
    let text = String::deserialize(d)?;
    Ok(JobStatus::parse(&text).unwrap_or(JobStatus::Failed))
}

/// The `job` row of an export.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportJob {
    /// Rows without one are patient exports.
    #[serde(default)]
    pub kind: ExportKind,
    #[serde(deserialize_with = "lenient_status")]
    pub status: JobStatus,
    /// The definition as JSON text.
    #[serde(default)]
    pub definition: String,
    /// Started (RFC 3339): the manifest's `transactionTime`.
    #[serde(default)]
    pub created: String,
    /// The request that started it, for the manifest.
    #[serde(default)]
    pub request: String,
    /// Gathering: the next page of the patient query, the id blobs written, what was seen.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gather_next: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gather_seq: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pages: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ids_found: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub references_skipped: i64,
    /// Planned: patients, id batches and work items.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub patients: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batches: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub work_items: i64,
    /// Export-all: the `_lastUpdated` windows planned, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<String>,
    /// Phases (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gathered: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<String>,
    /// Composed: resources written, duplicates dropped, files.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resources: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicates_dropped: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files: i64,
    /// Failed: why, and the FHIR server's 4xx when it refused the export's own search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused_status: i64,
}

impl TableRow for ExportJob {
    const KIND: &'static str = "export job row";
    const INT64: &'static [&'static str] = &[
        "gatherSeq",
        "pages",
        "idsFound",
        "referencesSkipped",
        "patients",
        "batches",
        "workItems",
        "resources",
        "duplicatesDropped",
        "files",
        "refusedStatus",
    ];
}

impl ExportJob {
    /// A new export, gathering; `first_page` is the patient query's first page (patient
    /// exports).
    pub fn start(
        kind: ExportKind,
        definition: String,
        request: &str,
        first_page: Option<String>,
    ) -> Self {
        ExportJob {
            kind,
            status: JobStatus::Gathering,
            definition,
            created: now_rfc3339(),
            request: request.to_string(),
            gather_next: first_page.unwrap_or_default(),
            gather_seq: 0,
            pages: 0,
            ids_found: 0,
            references_skipped: 0,
            patients: 0,
            batches: 0,
            work_items: 0,
            ranges: None,
            gathered: None,
            compose_started: None,
            finished: None,
            terminated: None,
            resources: 0,
            duplicates_dropped: 0,
            files: 0,
            error: None,
            refused_status: 0,
        }
    }

    /// Planned: `work_items` are registered and exporting.
    pub fn exporting(&mut self, work_items: usize) {
        self.status = JobStatus::Exporting;
        self.gathered = Some(now_rfc3339());
        self.work_items = work_items as i64;
    }

    pub fn composing(&mut self) {
        self.status = JobStatus::Composing;
        self.compose_started = Some(now_rfc3339());
    }

    /// Ended with its files written.
    pub fn complete(
        &mut self,
        status: JobStatus,
        finished: String,
        resources: u64,
        duplicates: u64,
        files: usize,
    ) {
        self.status = status;
        self.finished = Some(finished);
        self.resources = resources as i64;
        self.duplicates_dropped = duplicates as i64;
        self.files = files as i64;
    }

    /// Ended without files: `why`, and the server's 4xx when it refused the export's search.
    pub fn fail(&mut self, why: &str, refused: Option<u16>) {
        self.status = JobStatus::Failed;
        self.error = Some(why.to_string());
        if let Some(status) = refused {
            self.refused_status = i64::from(status);
        }
        self.finished = Some(now_rfc3339());
    }

    pub fn terminate(&mut self) {
        self.status = JobStatus::Terminated;
        self.terminated = Some(now_rfc3339());
    }
}

/// Where a work item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkStatus {
    Pending,
    Done,
    Failed,
}

/// What types a work item's search can return: `own-type` searches return only the type they
/// search; `any-type` ones (`_include`, `_revinclude`) may return others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Returns {
    #[default]
    OwnType,
    AnyType,
}

/// A `w-<batch>-<include>` row: one search of an export.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkRow {
    pub status: WorkStatus,
    /// The type searched.
    #[serde(rename = "type", default)]
    pub resource_type: String,
    #[serde(default)]
    pub returns: Returns,
    /// Finished: what it fetched, staged and skipped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resources: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pages: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub staged_bytes: i64,
    /// Resources per type fetched, as a JSON object's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Failed: the server's status (0: no answer) and the reason (stored, never logged:
    /// server diagnostics can quote resource content).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub error_status: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Cut into this many searches of fewer patients when its first page showed it long
    /// (`export::split`); it then fetched nothing itself.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub split_into: i64,
    /// The relative search (stored from the start: a lost fetch step is queued again with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
}

impl TableRow for WorkRow {
    const KIND: &'static str = "export work row";
    const INT64: &'static [&'static str] = &[
        "resources",
        "pages",
        "skipped",
        "stagedBytes",
        "errorStatus",
        "splitInto",
    ];
}

impl WorkRow {
    pub fn pending(resource_type: &str, search: &str) -> Self {
        WorkRow {
            status: WorkStatus::Pending,
            resource_type: resource_type.to_string(),
            returns: if returns_other_types(search) {
                Returns::AnyType
            } else {
                Returns::OwnType
            },
            resources: 0,
            pages: 0,
            skipped: 0,
            staged_bytes: 0,
            types: None,
            finished: None,
            error_status: 0,
            error: None,
            split_into: 0,
            // Kept so that the sweep can queue a lost fetch step again (`export::reconcile`).
            search: Some(search.to_string()),
        }
    }

    pub fn is_pending(&self) -> bool {
        self.status == WorkStatus::Pending
    }
}

pub fn work_row(batch: u32, include: u32) -> String {
    format!("{WORK_ROW_PREFIX}{batch:06}-{include:03}")
}

/// The (batch, include) of a work row key.
pub fn parse_work_row(key: &str) -> Option<(u32, u32)> {
    let (batch, include) = key.strip_prefix(WORK_ROW_PREFIX)?.split_once('-')?;
    Some((batch.parse().ok()?, include.parse().ok()?))
}

/// The properties of a work row but its search and error texts (`work_row_summaries`).
const WORK_SUMMARY: &str = "PartitionKey,RowKey,Timestamp,status,type,returns,resources,pages,skipped,stagedBytes,types,finished,errorStatus,splitInto";

/// The filters of work rows still pending and of those that failed (as `WorkStatus` is stored).
pub const PENDING: &str = "status eq 'pending'";
pub const FAILED: &str = "status eq 'failed'";

/// How a work row's `returns` is stored, for table filters.
const RETURNS_ANY_TYPE: &str = "any-type";

/// Whether a relative search can return resources of other types than the one it searches.
pub fn returns_other_types(search: &str) -> bool {
    search
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default()
        .split('&')
        .any(|p| p.starts_with("_include") || p.starts_with("_revinclude"))
}

/// Progress summed over the work rows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    pub items: u64,
    pub finished: u64,
    pub failed: u64,
    pub resources: u64,
    /// Resources fetched per type (before duplicates across searches are dropped).
    pub per_type: Map<String, Value>,
}

impl Progress {
    pub fn of(rows: &[Row<WorkRow>]) -> Self {
        let mut p = Progress::default();
        for row in rows {
            let row = &row.data;
            p.items += 1;
            match row.status {
                WorkStatus::Done => p.finished += 1,
                WorkStatus::Failed => {
                    p.finished += 1;
                    p.failed += 1;
                }
                WorkStatus::Pending => {}
            }
            p.resources += row.resources.max(0) as u64;
            for (t, n) in type_counts(row) {
                let total = p.per_type.get(&t).and_then(Value::as_u64).unwrap_or(0) + n;
                p.per_type.insert(t, total.into());
            }
        }
        p
    }

    pub fn all_finished(&self) -> bool {
        self.finished == self.items
    }
}

/// The OData filter for an export's work rows, narrowed by `condition`.
fn work_filter(id: &str, condition: Option<&str>) -> String {
    let mut filter = format!(
        "PartitionKey eq '{}' and RowKey ge '{WORK_ROW_PREFIX}' and RowKey lt 'w.'",
        odata_string(id)
    );
    if let Some(condition) = condition {
        filter.push_str(" and ");
        filter.push_str(condition);
    }
    filter
}

/// The condition for work rows that may return `resource_type`.
fn returning(resource_type: &str) -> String {
    format!(
        "type eq '{}' or returns eq '{RETURNS_ANY_TYPE}'",
        odata_string(resource_type)
    )
}

/// Resources per type a finished work row fetched (its `types`), types with none left out.
pub fn type_counts(row: &WorkRow) -> impl Iterator<Item = (String, u64)> {
    let types = match row
        .types
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
    {
        Some(Value::Object(types)) => types,
        _ => Map::new(),
    };
    types
        .into_iter()
        .map(|(t, n)| (t, n.as_u64().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
}

/// Whether a work row's search may return resources of `resource_type` (what
/// `ExportStore::may_still_return` asks the table).
pub fn may_return(row: &WorkRow, resource_type: &str) -> bool {
    row.resource_type == resource_type || row.returns == Returns::AnyType
}

/// The types that finished work rows returned and no pending row may still return: those
/// whose files can be composed.
pub fn ready_types(rows: &[Row<WorkRow>]) -> BTreeSet<String> {
    let pending: Vec<&WorkRow> = rows
        .iter()
        .map(|r| &r.data)
        .filter(|r| r.is_pending())
        .collect();
    rows.iter()
        .map(|r| &r.data)
        .filter(|r| !r.is_pending())
        .flat_map(type_counts)
        .map(|(t, _)| t)
        .filter(|t| !pending.iter().any(|r| may_return(r, t)))
        .collect()
}

/// Reads and writes the rows of the exports table.
#[derive(Clone)]
pub struct ExportStore {
    tables: TableClient,
    table: String,
}

impl ExportStore {
    pub fn new(tables: TableClient, table: &str) -> Self {
        ExportStore {
            tables,
            table: table.to_string(),
        }
    }

    pub async fn ensure_table(&self) -> StorageResult<()> {
        self.tables.create_table(&self.table).await
    }

    pub async fn job(&self, id: &str) -> StorageResult<Option<Row<ExportJob>>> {
        self.tables.get_row(&self.table, id, JOB_ROW).await
    }

    pub async fn work(&self, id: &str, row: &str) -> StorageResult<Option<Row<WorkRow>>> {
        self.tables.get_row(&self.table, id, row).await
    }

    /// Inserts a row; `Ok(None)` when it already exists.
    pub async fn insert<R: TableRow>(&self, row: &Row<R>) -> StorageResult<Option<String>> {
        self.tables.insert_row(&self.table, row).await
    }

    /// Replaces a row if nobody changed it since it was read (its ETag moves on); `Ok(false)`
    /// if somebody did.
    pub async fn replace_if_unchanged<R: TableRow>(&self, row: &mut Row<R>) -> StorageResult<bool> {
        self.tables.replace_row_if_unchanged(&self.table, row).await
    }

    pub async fn upsert<R: TableRow>(&self, row: &Row<R>) -> StorageResult<String> {
        self.tables.upsert_row(&self.table, row).await
    }

    /// Every work row of an export.
    pub async fn work_rows(&self, id: &str) -> StorageResult<Vec<Row<WorkRow>>> {
        self.tables
            .query_rows(&self.table, &work_filter(id, None))
            .await
    }

    /// Every work row of an export without its search and error texts: what progress,
    /// readiness and liveness need. A search names up to a URL's worth of ids, so the rows
    /// of a plan of 10,000 searches would be ~100 MB with them.
    pub async fn work_row_summaries(&self, id: &str) -> StorageResult<Vec<Row<WorkRow>>> {
        self.tables
            .query_rows_selected(&self.table, &work_filter(id, None), Some(WORK_SUMMARY))
            .await
    }

    /// The work rows with `condition` (an OData filter on their properties), whole.
    pub async fn work_rows_where(
        &self,
        id: &str,
        condition: &str,
    ) -> StorageResult<Vec<Row<WorkRow>>> {
        self.tables
            .query_rows(&self.table, &work_filter(id, Some(condition)))
            .await
    }

    /// Whether any work item of an export is still pending (one small query).
    pub async fn any_work_pending(&self, id: &str) -> StorageResult<bool> {
        self.tables
            .exists(&self.table, &work_filter(id, Some(PENDING)))
            .await
    }

    /// Whether a pending work item may still return resources of `resource_type`: its search
    /// is on that type, or can return any type.
    pub async fn may_still_return(&self, id: &str, resource_type: &str) -> StorageResult<bool> {
        let pending = format!("{PENDING} and ({})", returning(resource_type));
        self.tables
            .exists(&self.table, &work_filter(id, Some(&pending)))
            .await
    }

    /// The work rows whose search may return resources of `resource_type`.
    pub async fn work_rows_returning(
        &self,
        id: &str,
        resource_type: &str,
    ) -> StorageResult<Vec<Row<WorkRow>>> {
        let filter = work_filter(id, Some(&returning(resource_type)));
        self.tables.query_rows(&self.table, &filter).await
    }

    /// Every job row (one per export).
    pub async fn jobs(&self) -> StorageResult<Vec<Row<ExportJob>>> {
        let filter = format!("RowKey eq '{JOB_ROW}'");
        self.tables.query_rows(&self.table, &filter).await
    }

    /// Deletes every row of an export, the job row last.
    pub async fn delete_export(&self, id: &str) -> StorageResult<usize> {
        let filter = format!("PartitionKey eq '{}'", odata_string(id));
        let rows = self.tables.query(&self.table, &filter).await?;
        let mut deleted = 0;
        for row in rows.iter().filter(|r| r.str("RowKey") != Some(JOB_ROW)) {
            self.tables
                .delete(&self.table, id, row.str("RowKey").unwrap_or_default())
                .await?;
            deleted += 1;
        }
        self.tables.delete(&self.table, id, JOB_ROW).await?;
        Ok(deleted + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Entity;

    #[test]
    fn the_status_filters_name_statuses_as_they_are_stored() {
        let stored = |s: WorkStatus| {
            serde_json::to_value(s)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            PENDING,
            format!("status eq '{}'", stored(WorkStatus::Pending))
        );
        assert_eq!(
            FAILED,
            format!("status eq '{}'", stored(WorkStatus::Failed))
        );
    }

    /// A work row as the Table service returns it (every version so far wrote it so).
    fn row(
        key: &str,
        status: &str,
        resource_type: &str,
        returns: &str,
        types: &str,
    ) -> Row<WorkRow> {
        let mut row = Entity::new("export", key);
        row.set_str("status", status);
        row.set_str("type", resource_type);
        row.set_str("returns", returns);
        if !types.is_empty() {
            row.set_str("types", types);
        }
        Row::from_entity(row).unwrap()
    }

    #[test]
    fn include_searches_can_return_other_types() {
        assert!(!returns_other_types("Observation?patient=a,b&_count=50"));
        assert!(!returns_other_types("Patient"));
        assert!(returns_other_types(
            "Encounter?patient=a&_include=Encounter:subject"
        ));
        assert!(returns_other_types(
            "Patient?_id=a&_revinclude:iterate=Observation:patient"
        ));
        assert!(
            !returns_other_types("Observation?code=_include"),
            "only parameter names count"
        );
    }

    #[test]
    fn work_row_keys_round_trip() {
        assert_eq!(parse_work_row(&work_row(12, 3)), Some((12, 3)));
        assert_eq!(parse_work_row("job"), None);
        assert_eq!(parse_work_row("w-x-1"), None);
    }

    #[test]
    fn a_type_is_ready_once_no_pending_search_can_return_it() {
        let rows = [
            row(
                "w-000000-000",
                "done",
                "Patient",
                "own-type",
                r#"{"Patient":2}"#,
            ),
            row("w-000001-000", "pending", "Patient", "own-type", ""),
            row(
                "w-000000-001",
                "failed",
                "Observation",
                "own-type",
                r#"{"Observation":5}"#,
            ),
            row(
                "w-000000-002",
                "done",
                "Condition",
                "own-type",
                r#"{"Condition":0}"#,
            ),
        ];
        let ready = ready_types(&rows);
        assert_eq!(
            ready.into_iter().collect::<Vec<_>>(),
            ["Observation"],
            "Patient waits for its pending batch; a type with no resources needs no file"
        );
        let mut with_include = rows.to_vec();
        with_include.push(row("w-000000-003", "pending", "Encounter", "any-type", ""));
        assert!(
            ready_types(&with_include).is_empty(),
            "a pending _include search may still return Observations"
        );
        assert!(may_return(&with_include[4].data, "Observation"));
        assert!(!may_return(&rows[0].data, "Observation"));
    }

    /// Job and work rows written by the previous version (session 10) are read: a deployed
    /// app is updated with exports in flight. And written back in the same format.
    #[test]
    fn rows_in_the_format_of_the_previous_version_are_read_and_written() {
        let mut job = Entity::new("0123456789abcdef0123456789abcdef", JOB_ROW);
        job.set_str("kind", "patients");
        job.set_str("status", "exporting");
        job.set_str("definition", r#"{"query":"Patient"}"#);
        job.set_str("created", "2026-12-06T09:00:00Z");
        job.set_str("request", "https://x/$alt-export");
        job.set_str("gatherNext", "");
        job.set_i64("gatherSeq", 2);
        job.set_i64("idsFound", 42);
        job.set_i64("patients", 42);
        job.set_i64("workItems", 6);
        job.set_str("gathered", "2026-12-06T09:00:05Z");
        job.props
            .insert("Timestamp".into(), "2026-12-06T09:00:05.5Z".into());
        let read = Row::<ExportJob>::from_entity(job.clone()).unwrap();
        let j = &read.data;
        assert_eq!(
            (j.kind, j.status),
            (ExportKind::Patients, JobStatus::Exporting)
        );
        assert_eq!((j.gather_seq, j.ids_found, j.work_items), (2, 42, 6));
        assert_eq!(j.gathered.as_deref(), Some("2026-12-06T09:00:05Z"));
        let written = read.to_entity();
        for name in [
            "kind",
            "status",
            "definition",
            "created",
            "request",
            "gathered",
        ] {
            assert_eq!(written.props[name], job.props[name], "{name}");
        }
        for name in ["gatherSeq", "idsFound", "patients", "workItems"] {
            assert_eq!(written.props[name], job.props[name], "{name}");
            assert_eq!(written.props[&format!("{name}@odata.type")], "Edm.Int64");
        }
        // Older rows had no kind; an unknown status reads as failed.
        let mut old = Entity::new("x", JOB_ROW);
        old.set_str("status", "paused");
        let old = Row::<ExportJob>::from_entity(old).unwrap();
        assert_eq!(
            (old.data.kind, old.data.status),
            (ExportKind::Patients, JobStatus::Failed)
        );

        let mut work = Entity::new("x", &work_row(1, 0));
        work.set_str("status", "failed");
        work.set_str("type", "Observation");
        work.set_str("returns", "own-type");
        work.set_i64("resources", 7);
        work.set_i64("stagedBytes", 1 << 33);
        work.set_i64("errorStatus", 503);
        work.set_str("error", "unavailable");
        work.set_str("search", "Observation?patient=a");
        work.set_str("types", r#"{"Observation":7}"#);
        let read = Row::<WorkRow>::from_entity(work.clone()).unwrap();
        assert_eq!(read.data.status, WorkStatus::Failed);
        assert_eq!(
            (read.data.staged_bytes, read.data.error_status),
            (1 << 33, 503)
        );
        let written = read.to_entity();
        for name in [
            "status",
            "type",
            "returns",
            "resources",
            "stagedBytes",
            "errorStatus",
            "error",
            "search",
            "types",
        ] {
            assert_eq!(written.props[name], work.props[name], "{name}");
        }
    }
}
