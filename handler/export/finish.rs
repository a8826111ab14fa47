//! Step 4: once no work item is pending and every type a work item returned is composed, the
//! export's errors file (one OperationOutcome per failed search), the Bulk Data style manifest
//! (`_completed_run.json`, also the body of a finished export's status) and the job row are
//! written, then the staging and state blobs go.
//!
//! The manifest is built from recorded state only (the job row, the work rows, the composed
//! types; its `finished` is the last type's composing time), so two deliveries of this step
//! write the same bytes, and the job row's ETag lets one of them finish the job.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use tracing::info;

use super::compose::{OutputFile, composed};
use super::fetch::staging_prefix;
use super::state::{ExportJob, FAILED, JobStatus, Progress, WorkRow};
use super::{ExportError, ExportKind, Exporter};
use crate::storage::Row;

pub const MANIFEST_NAME: &str = "_completed_run.json";
pub const ERRORS_NAME: &str = "errors/OperationOutcome-1.ndjson";

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
    let rows = ex.store.work_row_summaries(export).await?;
    let progress = Progress::of(&rows);
    if !progress.all_finished() {
        return Ok(()); // the last work item queues this step again
    }
    if status == JobStatus::Exporting {
        job.data.composing();
        if !ex.store.replace_if_unchanged(&mut job).await? {
            return Ok(()); // another delivery took it, or it was terminated
        }
    }
    let composed = composed(ex, export).await?;
    if progress
        .per_type
        .iter()
        .any(|(t, n)| n.as_u64().unwrap_or(0) > 0 && !composed.contains_key(t))
    {
        return Ok(()); // types still being composed: each queues this step when done
    }
    let notes = match job.data.kind {
        ExportKind::Bulk => super::bulk::BulkDefinition::parse(&job.data.definition)
            .map(|d| d.notes)
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let failed = if progress.failed > 0 {
        ex.store.work_rows_where(export, FAILED).await?
    } else {
        Vec::new()
    };
    let errors = write_errors(ex, export, &failed, &notes).await?;
    let final_status = if progress.failed > 0 {
        JobStatus::CompletedWithErrors
    } else {
        JobStatus::Completed
    };
    let outputs: Vec<&OutputFile> = composed.values().flat_map(|c| &c.files).collect();
    let written: u64 = outputs.iter().map(|o| o.count).sum();
    let duplicates: u64 = composed.values().map(|c| c.duplicates).sum();
    let malformed: u64 = composed.values().map(|c| c.malformed).sum();
    let finished = composed
        .values()
        .map(|c| c.composed.as_str())
        .max()
        .unwrap_or(job.data.compose_started.as_deref().unwrap_or_default())
        .to_string();
    job.data
        .complete(final_status, finished, written, duplicates, outputs.len());
    let manifest = Manifest::of(ex, &job, &outputs, errors.as_ref());
    let container = &ex.settings.container;
    ex.blobs
        .upload(
            container,
            &Exporter::blob_name(export, MANIFEST_NAME),
            Bytes::from(serde_json::to_vec_pretty(&manifest).expect("JSON serialises")),
        )
        .await?;
    if !ex.store.replace_if_unchanged(&mut job).await? {
        return Ok(()); // terminated while finishing (the terminate stands), or a repeat won
    }
    ex.ended.notify_waiters();
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

/// Deletes the staging blobs, the gathered ids and the composed-type records of a finished
/// export.
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

/// One OperationOutcome per failed work item, then one (informational) per note of the
/// definition, in `errors/OperationOutcome-1.ndjson`.
async fn write_errors(
    ex: &Exporter,
    export: &str,
    failed: &[Row<WorkRow>],
    notes: &[String],
) -> Result<Option<OutputFile>, ExportError> {
    if failed.is_empty() && notes.is_empty() {
        return Ok(None);
    }
    let mut text = String::new();
    for note in notes {
        let outcome =
            crate::fhir::batch_response::operation_outcome("information", "informational", note);
        text.push_str(&outcome.to_string());
        text.push('\n');
    }
    for row in failed {
        let outcome = json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "error",
                "code": if row.data.error_status == 0 { "exception" } else { "transient" },
                "diagnostics": format!(
                    "the search {} for work item {} stopped: {}; resources read before the failure are in the output",
                    row.data
                        .search
                        .as_deref()
                        .unwrap_or_default()
                        .chars()
                        .take(4_000)
                        .collect::<String>(),
                    row.row_key,
                    row.data.error.as_deref().unwrap_or_default()
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
        name,
        count: (failed.len() + notes.len()) as u64,
        size,
    }))
}

/// The Bulk Data style manifest: also the body of a finished export's status. Files are listed
/// by type (types in name order, a type's files in the order written).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest<'a> {
    pub transaction_time: &'a str,
    pub request: &'a str,
    pub requires_access_token: bool,
    pub output: Vec<ManifestFile>,
    pub error: Vec<ManifestFile>,
    /// fhir-loader's fields and ours.
    pub extension: ManifestExtension<'a>,
}

/// One file of a manifest.
#[derive(Debug, Serialize)]
pub struct ManifestFile {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub url: String,
    pub count: u64,
    pub sizebytes: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestExtension<'a> {
    pub id: &'a str,
    pub kind: ExportKind,
    pub status: JobStatus,
    pub definition: Value,
    pub patients: i64,
    pub batches: i64,
    pub work_items: i64,
    pub resources: i64,
    pub duplicates_dropped: i64,
    pub started: &'a str,
    pub planned: &'a str,
    pub compose_started: &'a str,
    pub finished: &'a str,
    pub container: &'a str,
}

impl<'a> Manifest<'a> {
    pub fn of(
        ex: &'a Exporter,
        job: &'a Row<ExportJob>,
        outputs: &[&OutputFile],
        errors: Option<&OutputFile>,
    ) -> Self {
        let file = |o: &OutputFile| ManifestFile {
            resource_type: o.resource_type.clone(),
            url: ex.blobs.url(&ex.settings.container, &o.name),
            count: o.count,
            sizebytes: o.size,
        };
        let j = &job.data;
        Manifest {
            transaction_time: &j.created,
            request: &j.request,
            requires_access_token: true,
            output: outputs.iter().map(|o| file(o)).collect(),
            error: errors.map(file).into_iter().collect(),
            extension: ManifestExtension {
                id: &job.partition_key,
                kind: j.kind,
                status: j.status,
                definition: serde_json::from_str(&j.definition).unwrap_or(Value::Null),
                patients: j.patients,
                batches: j.batches,
                work_items: j.work_items,
                resources: j.resources,
                duplicates_dropped: j.duplicates_dropped,
                started: &j.created,
                planned: j.gathered.as_deref().unwrap_or_default(),
                compose_started: j.compose_started.as_deref().unwrap_or_default(),
                finished: j.finished.as_deref().unwrap_or_default(),
                container: &ex.settings.container,
            },
        }
    }
}
