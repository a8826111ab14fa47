//! One adapter per Azure Function: each maps an invocation (custom-handler payload, or a direct
//! HTTP request in `serve` mode) to the engine. Function names are the folder names under
//! `functions/` and the paths the Functions host POSTs to.

pub mod bulk_http;
pub mod export_blob_created;
pub mod export_http;
pub mod export_worker;
pub mod import_blob_created;
pub mod import_status;
pub mod import_worker;
pub mod reconcile;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{info, warn};

use crate::config::HttpSettings;
use crate::export::Exporter;
use crate::import::Importer;
use crate::protocol::event_grid::{BlobCreated, GridEvent, parse_events};
use crate::protocol::invocation::InvocationResponse;

pub const IMPORT_BLOB_CREATED: &str = "ImportBlobCreated";
pub const IMPORT_WORKER: &str = "ImportWorker";
pub const IMPORT_STATUS: &str = "ImportStatus";
pub const EXPORT_START: &str = "ExportStart";
pub const EXPORT_ALL_START: &str = "ExportAllStart";
pub const EXPORT_STATUS: &str = "ExportStatus";
pub const EXPORT_TERMINATE: &str = "ExportTerminate";
pub const EXPORT_MANAGE: &str = "ExportManage";
pub const EXPORT_PURGE: &str = "ExportPurge";
pub const EXPORT_LIST: &str = "ExportList";
pub const EXPORT_WORKER: &str = "ExportWorker";
pub const EXPORT_BLOB_CREATED: &str = "ExportBlobCreated";
pub const RECONCILE: &str = "Reconcile";
pub const BULK_EXPORT: &str = "BulkExport";
pub const BULK_EXPORT_PATIENT: &str = "BulkExportPatient";
pub const BULK_EXPORT_GROUP: &str = "BulkExportGroup";
pub const BULK_EXPORT_STATUS: &str = "BulkExportStatus";
pub const BULK_EXPORT_FILE: &str = "BulkExportFile";
pub const METADATA: &str = "Metadata";

/// Every function this handler implements, for the layout check against `functions/`.
pub const FUNCTION_NAMES: &[&str] = &[
    IMPORT_BLOB_CREATED,
    IMPORT_WORKER,
    IMPORT_STATUS,
    EXPORT_START,
    EXPORT_ALL_START,
    EXPORT_STATUS,
    EXPORT_TERMINATE,
    EXPORT_MANAGE,
    EXPORT_PURGE,
    EXPORT_LIST,
    EXPORT_WORKER,
    EXPORT_BLOB_CREATED,
    RECONCILE,
    BULK_EXPORT,
    BULK_EXPORT_PATIENT,
    BULK_EXPORT_GROUP,
    BULK_EXPORT_STATUS,
    BULK_EXPORT_FILE,
    METADATA,
];

/// How a queue message ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WorkOutcome {
    Done,
    /// Try again later (leave the message on the queue).
    Retry(String),
    /// Not a work item: delete it, it can never succeed.
    Invalid(String),
}

impl WorkOutcome {
    /// Decodes a queue message as a `W` work item and runs it: a message that is no work item
    /// is `Invalid` (dropped: it can never succeed), a failed run is retried.
    pub async fn of_message<W, F, Fut, E>(message: Value, what: &str, run: F) -> Self
    where
        W: DeserializeOwned,
        F: FnOnce(W) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let work: W = match serde_json::from_value(message) {
            Ok(w) => w,
            Err(e) => return WorkOutcome::Invalid(format!("not {what}: {e}")),
        };
        match run(work).await {
            Ok(()) => WorkOutcome::Done,
            Err(e) => WorkOutcome::Retry(e.to_string()),
        }
    }

    /// The answer to the host's queue-trigger invocation: 500 makes the host deliver again.
    pub fn into_invocation_response(self, queue: &str) -> Response {
        match self {
            WorkOutcome::Done => Json(InvocationResponse::default()).into_response(),
            WorkOutcome::Invalid(why) => {
                warn!(message = "Invalid queue message dropped.", queue, reason = %why);
                Json(InvocationResponse::default().log(why)).into_response()
            }
            WorkOutcome::Retry(why) => (StatusCode::INTERNAL_SERVER_ERROR, why).into_response(),
        }
    }
}

/// The answer to an Event Grid delivery: its log lines, or 500 so that Event Grid redelivers.
pub fn delivery_response(function: &str, handled: Result<Vec<String>, String>) -> Response {
    match handled {
        Ok(logs) => {
            for l in &logs {
                info!(message = "BlobCreated handled.", function, outcome = %l);
            }
            Json(InvocationResponse {
                logs,
                ..Default::default()
            })
            .into_response()
        }
        Err(why) => {
            warn!(message = "BlobCreated failed; Event Grid will redeliver.", function, reason = %why);
            (StatusCode::INTERNAL_SERVER_ERROR, why).into_response()
        }
    }
}

/// Runs `on_blob` for each BlobCreated event of a delivery and returns one log line per event.
/// A payload that is no event is acknowledged (a redelivery would not help); an `Err` from
/// `on_blob` asks for the delivery again.
pub async fn for_each_blob_created<F, Fut>(
    payload: Value,
    mut on_blob: F,
) -> Result<Vec<String>, String>
where
    F: FnMut(BlobCreated) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let events = match parse_events(payload) {
        Ok(events) => events,
        Err(e) => {
            return Ok(vec![format!(
                "invalid event acknowledged without work: {e}"
            )]);
        }
    };
    let mut logs = Vec::with_capacity(events.len());
    for event in events {
        logs.push(match event {
            GridEvent::BlobCreated(blob) => on_blob(blob).await?,
            GridEvent::SubscriptionValidation { .. } => {
                "subscription validation is answered by the Event Grid extension".into()
            }
            GridEvent::Other { event_type } => format!("ignored event type {event_type}"),
        });
    }
    Ok(logs)
}

/// The answer to an Event Grid invocation without its event binding (acknowledged: a
/// redelivery would not have one either).
pub fn missing_event(binding: &str) -> Response {
    warn!(message = "Invocation without an event binding.", binding);
    let body = InvocationResponse::default().log(format!("no '{binding}' in Data; nothing done"));
    Json(body).into_response()
}

#[derive(Clone)]
pub struct AppState {
    pub importer: Arc<Importer>,
    pub exporter: Arc<Exporter>,
    pub http: Arc<HttpSettings>,
}

/// The routes the Functions host invokes: `POST /<FunctionName>` with an invocation payload
/// (the host has checked the function key), and `/health`. Listened to on loopback only.
pub fn host_router(state: AppState) -> Router {
    use bulk_http as b;
    use export_http as x;
    Router::new()
        .route(
            &format!("/{IMPORT_BLOB_CREATED}"),
            post(import_blob_created::invoke),
        )
        .route(&format!("/{IMPORT_WORKER}"), post(import_worker::invoke))
        .route(&format!("/{IMPORT_STATUS}"), post(import_status::invoke))
        .route(&format!("/{EXPORT_START}"), post(x::start_invoke))
        .route(&format!("/{EXPORT_ALL_START}"), post(x::start_all_invoke))
        .route(&format!("/{EXPORT_STATUS}"), post(x::status_invoke))
        .route(&format!("/{EXPORT_TERMINATE}"), post(x::terminate_invoke))
        .route(&format!("/{EXPORT_MANAGE}"), post(x::manage_invoke))
        .route(&format!("/{EXPORT_PURGE}"), post(x::purge_invoke))
        .route(&format!("/{EXPORT_LIST}"), post(x::list_invoke))
        .route(&format!("/{EXPORT_WORKER}"), post(export_worker::invoke))
        .route(
            &format!("/{EXPORT_BLOB_CREATED}"),
            post(export_blob_created::invoke),
        )
        .route(&format!("/{RECONCILE}"), post(reconcile::invoke))
        .route(&format!("/{BULK_EXPORT}"), post(b::system_invoke))
        .route(&format!("/{BULK_EXPORT_PATIENT}"), post(b::patient_invoke))
        .route(&format!("/{BULK_EXPORT_GROUP}"), post(b::group_invoke))
        .route(&format!("/{BULK_EXPORT_STATUS}"), post(b::status_invoke))
        .route(&format!("/{BULK_EXPORT_FILE}"), post(b::file_invoke))
        .route(&format!("/{METADATA}"), post(b::metadata_invoke))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// The HTTP functions at their public paths, for `serve`: every route but `/health` asks for
/// one of `FHIRBULK_API_KEYS` (as `?code=` or `x-functions-key`, like the Functions host).
/// The host's invocation routes are not here: nobody reaches the functions around the key.
pub fn public_router(state: AppState) -> Router {
    use bulk_http as b;
    use export_http as x;
    Router::new()
        .route("/imports", get(import_status::list_direct))
        .route(
            "/imports/{container}/{*blob}",
            get(import_status::file_direct),
        )
        .route("/$alt-export", post(x::start_direct))
        .route("/$alt-export-all", post(x::start_all_direct))
        .route("/$alt-export-manage/{id}", get(x::manage_direct))
        .route("/$alt-export-status", get(x::list_direct))
        .route(
            "/$alt-export/{id}",
            get(x::status_direct).delete(x::purge_direct),
        )
        .route("/$alt-export/{id}/terminate", post(x::terminate_direct))
        .route("/$export", get(b::system_direct).post(b::system_direct))
        .route(
            "/Patient/$export",
            get(b::patient_direct).post(b::patient_direct),
        )
        .route(
            "/Group/{id}/$export",
            get(b::group_direct).post(b::group_direct),
        )
        .route(
            "/$export-status/{id}",
            get(b::status_direct).delete(b::status_direct),
        )
        .route(
            "/$export-file/{id}/{*file}",
            get(b::file_direct).layer(tower_http::compression::CompressionLayer::new().gzip(true)),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        // A client reads the CapabilityStatement before it authenticates.
        .route("/metadata", get(b::metadata_direct))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// Lets a request through when it carries one of the keys (or when none are configured, which
/// start-up allows on a loopback address only): as `?code=`, `x-functions-key`, or a bearer
/// token (`Authorization: Bearer <key>`, what a Bulk Data client sends); otherwise 401 with
/// an OperationOutcome.
async fn require_key(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if state.http.api_keys.is_empty() {
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get("x-functions-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    let code = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
    });
    if [header, bearer, code]
        .into_iter()
        .flatten()
        .any(|key| state.http.accepts(&key))
    {
        return next.run(request).await;
    }
    crate::protocol::reply::Reply::outcome(
        401,
        "login",
        "a key is required: send one of FHIRBULK_API_KEYS as ?code=, in the x-functions-key header, or as a bearer token (Authorization: Bearer)",
    )
    .into_response()
}
