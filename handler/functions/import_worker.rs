//! `ImportWorker` (queue trigger on the import queue): loads one part of one file. A transient
//! failure answers 500 so the host makes the message visible again; the engine closes the part
//! with an explained error after `FHIRBULK_MAX_WORK_ATTEMPTS` deliveries.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{AppState, WorkOutcome};
use crate::import::{ImportError, ImportWork, Importer};
use crate::protocol::invocation::InvocationRequest;

/// The binding name in `functions/ImportWorker/function.json`.
pub const BINDING: &str = "work";

pub async fn handle_message(importer: &Importer, message: Value, attempt: u32) -> WorkOutcome {
    let work: ImportWork = match serde_json::from_value(message) {
        Ok(w) => w,
        Err(e) => return WorkOutcome::Invalid(format!("not an import work item: {e}")),
    };
    match importer.run(&work, attempt).await {
        Ok(()) => WorkOutcome::Done,
        Err(ImportError::Transient(why)) => WorkOutcome::Retry(why),
        Err(other) => WorkOutcome::Retry(other.to_string()),
    }
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
