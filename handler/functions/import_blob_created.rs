//! `ImportBlobCreated` (Event Grid trigger): validates the event, records the file and queues
//! its work — no loading here, so the answer comes back within a second whatever the file
//! size. A failure answers 500, and Event Grid redelivers; registering again is a no-op.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::{info, warn};

use super::AppState;
use crate::import::{Importer, Registration};
use crate::protocol::event_grid::{GridEvent, parse_events};
use crate::protocol::invocation::{InvocationRequest, InvocationResponse};

/// The binding name in `functions/ImportBlobCreated/function.json`.
pub const BINDING: &str = "event";

/// Registers every BlobCreated event of a delivery; returns one log line per event.
pub async fn handle_events(importer: &Importer, payload: Value) -> Result<Vec<String>, String> {
    let events = parse_events(payload)?;
    let mut logs = Vec::new();
    for event in events {
        match event {
            GridEvent::BlobCreated(blob) => {
                let outcome = importer
                    .register(&blob.container, &blob.blob)
                    .await
                    .map_err(|e| {
                        format!("cannot register {}/{}: {e}", blob.container, blob.blob)
                    })?;
                let line = match outcome {
                    Registration::Queued { parts, .. } => {
                        format!("queued {}/{} in {parts} part(s)", blob.container, blob.blob)
                    }
                    Registration::AlreadyRegistered { status, .. } => {
                        format!(
                            "{}/{} was registered before ({status})",
                            blob.container, blob.blob
                        )
                    }
                    Registration::Ignored(why) => format!("ignored: {why}"),
                };
                logs.push(line);
            }
            GridEvent::SubscriptionValidation { .. } => {
                logs.push("subscription validation is answered by the Event Grid extension".into())
            }
            GridEvent::Other { event_type } => {
                logs.push(format!("ignored event type {event_type}"))
            }
        }
    }
    Ok(logs)
}

pub async fn invoke(
    State(state): State<AppState>,
    Json(request): Json<InvocationRequest>,
) -> Response {
    let Some(payload) = request.binding(BINDING) else {
        warn!(
            message = "Invocation without an event binding.",
            binding = BINDING
        );
        let body =
            InvocationResponse::default().log(format!("no '{BINDING}' in Data; nothing done"));
        return Json(body).into_response();
    };
    match handle_events(&state.importer, payload).await {
        Ok(logs) => {
            for l in &logs {
                info!(message = "BlobCreated handled.", outcome = %l);
            }
            Json(InvocationResponse {
                logs,
                ..Default::default()
            })
            .into_response()
        }
        Err(e) if e.starts_with("cannot register") => {
            warn!(message = "BlobCreated failed; Event Grid will redeliver.", error = %e);
            (StatusCode::INTERNAL_SERVER_ERROR, e).into_response()
        }
        Err(e) => {
            // Not an event at all: redelivery would not help. Record and acknowledge.
            warn!(message = "Invalid Event Grid payload acknowledged without work.", error = %e);
            Json(InvocationResponse::default().log(format!("invalid event: {e}"))).into_response()
        }
    }
}
