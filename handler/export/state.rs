//! Export state in the `exports` table, one partition per export: the job row (`job`) and one
//! row per work item (`w-<batch>-<include>`). Counters are never incremented in place: each
//! work item writes its own row once, and progress is the sum of those rows, so it stays exact
//! however many instances run, however often a work item is redelivered.

use serde_json::{Map, Value};

use crate::storage::{Entity, StorageResult, TableClient};

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

/// Status of a work item row.
pub const WORK_PENDING: &str = "pending";
pub const WORK_DONE: &str = "done";
pub const WORK_FAILED: &str = "failed";

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
            if let Some(Value::Object(types)) =
                row.str("types").and_then(|t| serde_json::from_str(t).ok())
            {
                for (t, n) in types {
                    let add = n.as_u64().unwrap_or(0);
                    let total = p.per_type.get(&t).and_then(Value::as_u64).unwrap_or(0) + add;
                    p.per_type.insert(t, total.into());
                }
            }
        }
        p
    }

    pub fn all_finished(&self) -> bool {
        self.finished == self.items
    }
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
        let filter = format!(
            "PartitionKey eq '{}' and RowKey ge '{WORK_ROW_PREFIX}' and RowKey lt 'w.'",
            id.replace('\'', "''")
        );
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
        let filter = format!("PartitionKey eq '{}'", id.replace('\'', "''"));
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
