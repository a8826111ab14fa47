//! `ExportWorker` (queue trigger on the export queue): runs one step of an export (gather,
//! fetch or compose). A transient failure answers 500 so the host delivers the message again;
//! every step is safe to run twice.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;
use tracing::warn;

use super::{AppState, WorkOutcome};
use crate::export::{ExportWork, Exporter};
use crate::protocol::invocation::InvocationRequest;

/// The binding name in `functions/ExportWorker/function.json`.
pub const BINDING: &str = "work";

pub async fn handle_message(exporter: &Exporter, message: Value, attempt: u32) -> WorkOutcome {
    let work: ExportWork = match serde_json::from_value(message) {
        Ok(w) => w,
        Err(e) => return WorkOutcome::Invalid(format!("not an export work item: {e}")),
    };
    match exporter.run(&work, attempt).await {
        Ok(()) => WorkOutcome::Done,
        Err(e) => {
            warn!(message = "Export step will be retried.", export = %work.export(), attempt, reason = %e);
            WorkOutcome::Retry(e.to_string())
        }
    }
}

pub async fn invoke(
    State(state): State<AppState>,
    Json(request): Json<InvocationRequest>,
) -> Response {
    let attempt = request.dequeue_count();
    let message = request.binding(BINDING).unwrap_or(Value::Null);
    handle_message(&state.exporter, message, attempt)
        .await
        .into_invocation_response("export")
}
