//! `ExportBlobCreated` (Event Grid trigger on the export trigger container): a query definition
//! dropped there starts an export, exactly as `POST /$alt-export` would.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{
    AppState, EXPORT_BLOB_CREATED, delivery_response, for_each_blob_created, missing_event,
};
use crate::export::Exporter;
use crate::export::trigger::start_from_blob;
use crate::protocol::invocation::InvocationRequest;

/// The binding name in `functions/ExportBlobCreated/function.json`.
pub const BINDING: &str = "event";

/// Starts an export per BlobCreated event of a delivery; returns one log line per event, or
/// the reason to have the delivery retried.
pub async fn handle_events(exporter: &Exporter, payload: Value) -> Result<Vec<String>, String> {
    for_each_blob_created(payload, |blob| async move {
        start_from_blob(exporter, &blob.container, &blob.blob)
            .await
            .map_err(|e| e.to_string())
    })
    .await
}

pub async fn invoke(
    State(state): State<AppState>,
    Json(request): Json<InvocationRequest>,
) -> Response {
    let Some(payload) = request.binding(BINDING) else {
        return missing_event(BINDING);
    };
    delivery_response(
        EXPORT_BLOB_CREATED,
        handle_events(&state.exporter, payload).await,
    )
}
