//! Starting an export from a query definition dropped into the trigger container (an
//! export-all when the definition names `_type`, else a patient export): the export id
//! is derived from the file (name and version), so a repeated event starts nothing new. The
//! file then moves to `<trigger>-processed`, or, when the definition is invalid, to
//! `<trigger>-err`; the start answer (or an OperationOutcome saying why) goes to the reports
//! container (`<trigger>/<blob>/<export id>/result.json`, `error.json`).

use bytes::Bytes;
use serde_json::Value;

use super::all::is_export_all;
use super::control::{self, Links};
use super::{ExportError, ExportKind, Exporter};
use crate::storage::blob_log_name;
use crate::storage::reports::report_blob;

/// What became of a trigger file (a line for the invocation log).
pub async fn start_from_blob(
    ex: &Exporter,
    container: &str,
    blob: &str,
) -> Result<String, ExportError> {
    if container != ex.settings.trigger_container {
        return Ok(format!(
            "ignored: {container} is not the export trigger container"
        ));
    }
    let Some((props, body)) = ex.blobs.read_all(container, blob).await? else {
        return Ok(format!(
            "{container}/{blob} no longer exists (already started and moved?)"
        ));
    };
    let id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("{container}/{blob}#{}", props.etag).as_bytes(),
    )
    .simple()
    .to_string();
    let text = String::from_utf8_lossy(&body);
    let kind = if is_export_all(&text) {
        ExportKind::All
    } else {
        ExportKind::Patients
    };
    let reply = control::start(
        ex,
        kind,
        &text,
        &Links::default(),
        &format!("{container}/{blob}"),
        Some(id.clone()),
    )
    .await;
    let (target, note, line) = match reply.status {
        202 => (
            ex.settings.trigger_processed_container(),
            "result.json",
            format!(
                "export {} started from {}",
                reply.body["id"].as_str().unwrap_or_default(),
                blob_log_name(container, blob)
            ),
        ),
        400 => (
            ex.settings.trigger_err_container(),
            "error.json",
            format!(
                "{} is not a valid query definition",
                blob_log_name(container, blob)
            ),
        ),
        _ => {
            // At the concurrency cap, or storage unavailable: leave the file and try again.
            let why = reply
                .body
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| reply.body.to_string());
            return Err(ExportError::transient(format!(
                "cannot start the export of {} yet: {why}",
                blob_log_name(container, blob)
            )));
        }
    };
    ex.blobs
        .upload(
            &ex.settings.reports_container,
            &report_blob(container, blob, &id, note),
            Bytes::from(serde_json::to_vec_pretty(&reply.body).expect("JSON serialises")),
        )
        .await?;
    ex.blobs
        .move_blob(container, blob, &target, blob, Some(&props.etag))
        .await?;
    Ok(line)
}
