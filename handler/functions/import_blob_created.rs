//! `ImportBlobCreated` (Event Grid trigger): validates the event, records the file and queues
//! its work, or loads it here when it is small (`FHIRBULK_LOAD_ON_DELIVERY_MAX_KIB`), within
//! `FHIRBULK_LOAD_ON_DELIVERY_SECS`, well inside the 30 s Event Grid waits. A failure answers
//! 500, and Event Grid redelivers; registering again is a no-op.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::{
    AppState, IMPORT_BLOB_CREATED, delivery_response, for_each_blob_created, missing_event,
};
use crate::import::work::import_id;
use crate::import::{Importer, Registration};
use crate::protocol::invocation::InvocationRequest;
use crate::storage::blob_log_name;

/// The binding name in `functions/ImportBlobCreated/function.json`.
pub const BINDING: &str = "event";

/// Registers every BlobCreated event of a delivery; returns one log line per event.
pub async fn handle_events(importer: &Importer, payload: Value) -> Result<Vec<String>, String> {
    for_each_blob_created(payload, |blob| async move {
        let outcome = importer
            .register(&blob.container, &blob.blob, blob.version.clone())
            .await
            .map_err(|e| {
                format!(
                    "cannot register {}: {e}",
                    blob_log_name(&blob.container, &blob.blob)
                )
            })?;
        // Invocation logs name imports by id: blob names are often patient names.
        Ok(match outcome {
            Registration::Queued { file, parts } => {
                format!("queued import {} in {parts} part(s)", import_id(&file))
            }
            Registration::Loaded {
                file,
                status: Some(status),
            } => format!(
                "loaded import {} on delivery: {}",
                import_id(&file),
                status.as_str()
            ),
            Registration::Loaded { file, status: None } => format!(
                "started import {} on delivery; a queued work item goes on with it",
                import_id(&file)
            ),
            // Not acknowledged: delivered again, it takes the load over if that one died.
            Registration::LoadingElsewhere { file } => {
                return Err(format!(
                    "import {} is being loaded by another delivery of this event; deliver it again later",
                    import_id(&file)
                ));
            }
            Registration::AlreadyRegistered { file, status } => {
                format!(
                    "import {} was registered before ({status})",
                    import_id(&file)
                )
            }
            Registration::Ignored(why) => format!("ignored: {why}"),
        })
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
        IMPORT_BLOB_CREATED,
        handle_events(&state.importer, payload).await,
    )
}
