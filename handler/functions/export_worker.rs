//! `ExportWorker` (queue trigger on the export queue): runs one step of an export (gather,
//! fetch or compose). A transient failure answers 500 so the host delivers the message again;
//! every step is safe to run twice.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::warn;

use super::{AppState, WorkOutcome};
use crate::export::{ExportWork, Exporter};
use crate::protocol::invocation::{InvocationRequest, InvocationResponse};

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
    match handle_message(&state.exporter, message, attempt).await {
        WorkOutcome::Done => Json(InvocationResponse::default()).into_response(),
        WorkOutcome::Invalid(why) => {
            warn!(message = "Invalid export queue message dropped.", reason = %why);
            Json(InvocationResponse::default().log(why)).into_response()
        }
        WorkOutcome::Retry(why) => (StatusCode::INTERNAL_SERVER_ERROR, why).into_response(),
    }
}
