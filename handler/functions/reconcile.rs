//! `Reconcile` (timer trigger, every 5 minutes; in `serve`, every
//! `FHIRBULK_SWEEP_INTERVAL_SECS`): the reconciliation sweep over unfinished imports and running exports (`import::reconcile`, `export::reconcile`), so
//! that a lost queue message or a row that fell behind never leaves work "loading" for ever.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use super::AppState;
use crate::export::Exporter;
use crate::import::Importer;
use crate::protocol::invocation::InvocationResponse;

/// The binding name in `functions/Reconcile/function.json`.
pub const BINDING: &str = "timer";

/// One sweep over imports and exports, as a log line (`Err` when a table could not be read).
/// It also samples each work queue's backlog for the operations workbook.
pub async fn sweep(importer: &Importer, exporter: &Exporter) -> Result<String, String> {
    for queue in [&importer.queue, &exporter.queue] {
        match queue.approximate_count().await {
            // Charted (telemetry::CHARTED_EVENTS).
            Ok(messages) => info!(message = "Work backlog.", queue = queue.name(), messages),
            Err(e) => {
                warn!(message = "Cannot read a work queue's backlog.", queue = queue.name(), error = %e)
            }
        }
    }
    let imports = importer.reconcile().await.map_err(|e| e.to_string())?;
    let exports = exporter.reconcile().await.map_err(|e| e.to_string())?;
    Ok(format!(
        "requeued {} parts, closed {} imports from their results, finished {}, completed {} registrations; queued {} export steps again",
        imports.requeued, imports.closed_from_result, imports.finished, imports.registered, exports
    ))
}

pub async fn invoke(State(state): State<AppState>) -> Response {
    match sweep(&state.importer, &state.exporter).await {
        Ok(line) => Json(InvocationResponse::default().log(line)).into_response(),
        // The next timer run tries again.
        Err(why) => (StatusCode::INTERNAL_SERVER_ERROR, why).into_response(),
    }
}
