//! `Reconcile` (timer trigger, every 5 minutes; in `serve`, every
//! `FHIRBULK_SWEEP_INTERVAL_SECS`): the reconciliation sweep over unfinished imports
//! (`import::reconcile`), so that a lost queue message or a row that fell behind never leaves
//! an import "loading" for ever.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::import::Importer;
use crate::protocol::invocation::InvocationResponse;

/// The binding name in `functions/Reconcile/function.json`.
pub const BINDING: &str = "timer";

/// One sweep, as a log line (`Err` when the imports table could not be read).
pub async fn sweep(importer: &Importer) -> Result<String, String> {
    importer
        .reconcile()
        .await
        .map(|s| {
            format!(
                "requeued {} parts, closed {} imports from their results, finished {}, completed {} registrations",
                s.requeued, s.closed_from_result, s.finished, s.registered
            )
        })
        .map_err(|e| e.to_string())
}

pub async fn invoke(State(state): State<AppState>) -> Response {
    match sweep(&state.importer).await {
        Ok(line) => Json(InvocationResponse::default().log(line)).into_response(),
        // The next timer run tries again.
        Err(why) => (StatusCode::INTERNAL_SERVER_ERROR, why).into_response(),
    }
}
