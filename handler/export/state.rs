//! Export state in the `exports` table, one partition per export: the job row (`job`) and one
//! row per work item (`w-<batch>-<include>`). Counters are never incremented in place: each
//! work item writes its own row once, and progress is the sum of those rows, so it stays exact
//! however many instances run, however often a work item is redelivered.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::storage::{Entity, StorageResult, TableClient, odata_string};

pub const JOB_ROW: &str = "job";
const WORK_ROW_PREFIX: &str = "w-";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    pub fn of(job: &Entity) -> Option<Self> {
        job.str("status").and_then(Self::parse)
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

/// Status of a work item row.
pub const WORK_PENDING: &str = "pending";
pub const WORK_DONE: &str = "done";
pub const WORK_FAILED: &str = "failed";

/// A work row's `returns`: what types its search can return. `own-type` searches return only
/// the type they search (`type`); `any-type` ones (`_include`, `_revinclude`) may return others.
pub const RETURNS_OWN_TYPE: &str = "own-type";
pub const RETURNS_ANY_TYPE: &str = "any-type";

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
    pub fn of(rows: &[Entity]) -> Self {
        let mut p = Progress::default();
        for row in rows {
            p.items += 1;
            match row.str("status") {
                Some(WORK_DONE) => p.finished += 1,
                Some(WORK_FAILED) => {
                    p.finished += 1;
                    p.failed += 1;
                }
                _ => {}
            }
            p.resources += row.i64("resources").max(0) as u64;
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
pub fn type_counts(row: &Entity) -> impl Iterator<Item = (String, u64)> {
    let types = match row.str("types").and_then(|t| serde_json::from_str(t).ok()) {
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
pub fn may_return(row: &Entity, resource_type: &str) -> bool {
    row.str("type") == Some(resource_type) || row.str("returns") == Some(RETURNS_ANY_TYPE)
}

/// The types that finished work rows returned and no pending row may still return: those
/// whose files can be composed.
pub fn ready_types(rows: &[Entity]) -> BTreeSet<String> {
    let pending: Vec<&Entity> = rows
        .iter()
        .filter(|r| r.str("status") == Some(WORK_PENDING))
        .collect();
    rows.iter()
        .filter(|r| r.str("status") != Some(WORK_PENDING))
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

    pub async fn job(&self, id: &str) -> StorageResult<Option<Entity>> {
        self.tables.get(&self.table, id, JOB_ROW).await
    }

    pub async fn work(&self, id: &str, row: &str) -> StorageResult<Option<Entity>> {
        self.tables.get(&self.table, id, row).await
    }

    /// Inserts a row; `Ok(None)` when it already exists.
    pub async fn insert(&self, row: &Entity) -> StorageResult<Option<String>> {
        self.tables.insert_new(&self.table, row).await
    }

    /// Replaces a row if nobody changed it since it was read; `Ok(false)` if somebody did.
    pub async fn replace_if_unchanged(&self, row: &mut Entity) -> StorageResult<bool> {
        self.tables.replace_if_unchanged(&self.table, row).await
    }

    pub async fn upsert(&self, row: &Entity) -> StorageResult<String> {
        self.tables.upsert(&self.table, row).await
    }

    /// Every work row of an export.
    pub async fn work_rows(&self, id: &str) -> StorageResult<Vec<Entity>> {
        self.tables.query(&self.table, &work_filter(id, None)).await
    }

    /// Whether any work item of an export is still pending (one small query).
    pub async fn any_work_pending(&self, id: &str) -> StorageResult<bool> {
        let pending = format!("status eq '{WORK_PENDING}'");
        self.tables
            .exists(&self.table, &work_filter(id, Some(&pending)))
            .await
    }

    /// Whether a pending work item may still return resources of `resource_type`: its search
    /// is on that type, or can return any type.
    pub async fn may_still_return(&self, id: &str, resource_type: &str) -> StorageResult<bool> {
        let pending = format!(
            "status eq '{WORK_PENDING}' and ({})",
            returning(resource_type)
        );
        self.tables
            .exists(&self.table, &work_filter(id, Some(&pending)))
            .await
    }

    /// The work rows whose search may return resources of `resource_type`.
    pub async fn work_rows_returning(
        &self,
        id: &str,
        resource_type: &str,
    ) -> StorageResult<Vec<Entity>> {
        let filter = work_filter(id, Some(&returning(resource_type)));
        self.tables.query(&self.table, &filter).await
    }

    /// Every job row (one per export).
    pub async fn jobs(&self) -> StorageResult<Vec<Entity>> {
        self.tables
            .query(&self.table, &format!("RowKey eq '{JOB_ROW}'"))
            .await
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

    fn row(key: &str, status: &str, resource_type: &str, returns: &str, types: &str) -> Entity {
        let mut row = Entity::new("export", key);
        row.set_str("status", status);
        row.set_str("type", resource_type);
        row.set_str("returns", returns);
        if !types.is_empty() {
            row.set_str("types", types);
        }
        row
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
                WORK_DONE,
                "Patient",
                RETURNS_OWN_TYPE,
                r#"{"Patient":2}"#,
            ),
            row(
                "w-000001-000",
                WORK_PENDING,
                "Patient",
                RETURNS_OWN_TYPE,
                "",
            ),
            row(
                "w-000000-001",
                WORK_FAILED,
                "Observation",
                RETURNS_OWN_TYPE,
                r#"{"Observation":5}"#,
            ),
            row(
                "w-000000-002",
                WORK_DONE,
                "Condition",
                RETURNS_OWN_TYPE,
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
        with_include.push(row(
            "w-000000-003",
            WORK_PENDING,
            "Encounter",
            RETURNS_ANY_TYPE,
            "",
        ));
        assert!(
            ready_types(&with_include).is_empty(),
            "a pending _include search may still return Observations"
        );
        assert!(may_return(&with_include[4], "Observation"));
        assert!(!may_return(&rows[0], "Observation"));
    }
}
