//! `ImportWorker` (queue trigger on the import queue): loads one part of one file. A transient
//! failure answers 500 so the host makes the message visible again; the engine closes the part
//! with an explained error after `FHIRBULK_MAX_WORK_ATTEMPTS` deliveries.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{AppState, WorkOutcome};
use crate::import::{ImportWork, Importer};
use crate::protocol::invocation::InvocationRequest;

/// The binding name in `functions/ImportWorker/function.json`.
pub const BINDING: &str = "work";

pub async fn handle_message(importer: &Importer, message: Value, attempt: u32) -> WorkOutcome {
    WorkOutcome::of_message(
        message,
        "an import work item",
        |work: ImportWork| async move { importer.run(&work, attempt).await },
    )
    .await
}

pub async fn invoke(
    State(state): State<AppState>,
    Json(request): Json<InvocationRequest>,
) -> Response {
    let attempt = request.dequeue_count();
    let message = request.binding(BINDING).unwrap_or(Value::Null);
    handle_message(&state.importer, message, attempt)
        .await
        .into_invocation_response("import")
}
