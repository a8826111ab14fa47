//! `ImportWorker` (queue trigger on the import queue): loads one part of one file. A transient
//! failure queues the part again as a fresh message (so the host's dequeue count never sends
//! it to the poison queue); the engine closes it with a record of what was not loaded once it
//! has made no progress for `FHIRBULK_WORK_STALLED_SECS`. Only a failure to record even that
//! (storage unavailable) answers 500, for the host to deliver the message again.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{AppState, WorkOutcome};
use crate::import::{ImportWork, Importer};
use crate::protocol::invocation::InvocationRequest;

/// The binding name in `functions/ImportWorker/function.json`.
pub const BINDING: &str = "work";

pub async fn handle_message(importer: &Importer, message: Value) -> WorkOutcome {
    WorkOutcome::of_message(
        message,
        "an import work item",
        |work: ImportWork| async move { importer.run(&work).await },
    )
    .await
}

pub async fn invoke(
    State(state): State<AppState>,
    Json(request): Json<InvocationRequest>,
) -> Response {
    let message = request.binding(BINDING).unwrap_or(Value::Null);
    handle_message(&state.importer, message)
        .await
        .into_invocation_response("import")
}
