//! `ImportStatus` (HTTP GET `imports/{container}/{blob...}` and `imports?status=`): what became
//! of an uploaded file — status, counts, timings, where it and its error report went.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;

use super::AppState;
use crate::import::Importer;
use crate::import::state::{FileStatus, FileView};
use crate::protocol::invocation::{HttpRequestData, InvocationRequest};
use crate::protocol::reply::Reply;

/// The binding names in `functions/ImportStatus/function.json`.
pub const REQUEST_BINDING: &str = "req";
pub const RESPONSE_BINDING: &str = "res";

/// What `Reply::unavailable` names.
const STATE: &str = "the imports table";

/// The newest import of `container/blob`.
pub async fn file_status(importer: &Importer, container: &str, blob: &str) -> Reply {
    let rows = match importer.store.files(None).await {
        Ok(rows) => rows,
        Err(e) => return Reply::unavailable(STATE, e),
    };
    let Some(file) = rows
        .iter()
        .find(|r| r.data.container == container && r.data.blob == blob)
    else {
        return Reply::outcome(
            404,
            "not-found",
            &format!(
                "no import of {container}/{blob} is recorded; upload it to the {container} container"
            ),
        );
    };
    let parts = importer
        .store
        .parts(&file.partition_key)
        .await
        .unwrap_or_default();
    Reply::new(200, json!(FileView::of(file, &parts)))
}

/// Recent imports, newest first, optionally only those with `status`.
pub async fn list(importer: &Importer, status: Option<&str>) -> Reply {
    let status = match status.map(|s| (s, FileStatus::parse(s))) {
        None => None,
        Some((_, Some(known))) => Some(known),
        Some((unknown, None)) => {
            let known: Vec<&str> = FileStatus::ALL.iter().map(|s| s.as_str()).collect();
            return Reply::outcome(
                400,
                "invalid",
                &format!(
                    "status={unknown:?} is not an import status; use one of {}",
                    known.join(", ")
                ),
            );
        }
    };
    match importer.store.files(status).await {
        Ok(rows) => {
            let items: Vec<FileView> = rows.iter().map(|r| FileView::of(r, &[])).collect();
            Reply::new(200, json!({ "count": items.len(), "imports": items }))
        }
        Err(e) => Reply::unavailable(STATE, e),
    }
}

pub async fn invoke(
    State(state): State<AppState>,
    Json(request): Json<InvocationRequest>,
) -> Response {
    let req = request
        .binding(REQUEST_BINDING)
        .map(|v| HttpRequestData::from_binding(&v))
        .unwrap_or_default();
    // Route `imports/{*path}`: empty lists imports; `container/blob` (blob may hold `/`) is one file.
    let path = req
        .params
        .get("path")
        .map(|p| p.trim_matches('/'))
        .unwrap_or("");
    let reply = match path.split_once('/') {
        Some((container, blob)) if !blob.is_empty() => {
            file_status(&state.importer, container, blob).await
        }
        _ => list(&state.importer, req.query.get("status").map(String::as_str)).await,
    };
    reply.into_invocation(RESPONSE_BINDING)
}

pub async fn file_direct(
    State(state): State<AppState>,
    Path((container, blob)): Path<(String, String)>,
) -> Response {
    file_status(&state.importer, &container, &blob)
        .await
        .into_response()
}

pub async fn list_direct(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list(&state.importer, q.get("status").map(String::as_str))
        .await
        .into_response()
}
