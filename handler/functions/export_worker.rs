//! `ExportWorker` (queue trigger on the export queue): runs one step of an export (gather,
//! fetch, compose-type or finish). A transient failure answers 500 so the host delivers the
//! message again; every step is safe to run twice.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{AppState, WorkOutcome};
use crate::export::{ExportWork, Exporter};
use crate::protocol::invocation::InvocationRequest;

/// The binding name in `functions/ExportWorker/function.json`.
pub const BINDING: &str = "work";

pub async fn handle_message(exporter: &Exporter, message: Value, attempt: u32) -> WorkOutcome {
    WorkOutcome::of_message(
        message,
        "an export work item",
        |work: ExportWork| async move { exporter.run(&work, attempt).await },
    )
    .await
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
