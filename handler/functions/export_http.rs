//! The export's HTTP functions, each a thin adapter from a host invocation (or a direct request
//! in `serve` mode) to `export::control`:
//! `ExportStart` (POST `$alt-export`), `ExportAllStart` (POST `$alt-export-all`),
//! `ExportStatus` (GET `$alt-export/{id}`), `ExportTerminate` (POST
//! `$alt-export/{id}/terminate`), `ExportManage` (GET
//! `$alt-export-manage/{id}`, fhir-loader's terminate), `ExportPurge` (DELETE
//! `$alt-export/{id}`) and `ExportList` (GET `$alt-export-status`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::export::ExportKind;
use crate::export::control::{self, Links};
use crate::protocol::invocation::{HttpRequestData, InvocationRequest};

/// The binding names in each export HTTP function's `function.json`.
pub const REQUEST_BINDING: &str = "req";
pub const RESPONSE_BINDING: &str = "res";

pub(super) fn request_of(invocation: &InvocationRequest) -> HttpRequestData {
    invocation
        .binding(REQUEST_BINDING)
        .map(|v| HttpRequestData::from_binding(&v))
        .unwrap_or_default()
}

/// Links for a direct request: under the public base URL, with the request's key.
pub(super) fn direct_links(state: &AppState, uri: &Uri) -> Links {
    Links::new(&state.http.public_base, &format!("http://localhost{uri}"))
}

pub(super) fn id_param(req: &HttpRequestData) -> String {
    req.params.get("id").cloned().unwrap_or_default()
}

async fn start_from_host(
    state: &AppState,
    kind: ExportKind,
    invocation: &InvocationRequest,
) -> Response {
    let req = request_of(invocation);
    let links = Links::new(&state.http.public_base, &req.url);
    let body = req.body.unwrap_or_default();
    let request = strip_query(&req.url);
    control::start(&state.exporter, kind, &body, &links, &request, None)
        .await
        .into_invocation(RESPONSE_BINDING)
}

async fn start_from_request(
    state: &AppState,
    kind: ExportKind,
    uri: &Uri,
    body: &[u8],
) -> Response {
    let links = direct_links(state, uri);
    let request = format!("{}{}", links.base, uri.path());
    let body = String::from_utf8_lossy(body);
    control::start(&state.exporter, kind, &body, &links, &request, None)
        .await
        .into_response()
}

pub async fn start_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    start_from_host(&state, ExportKind::Patients, &invocation).await
}

pub async fn start_direct(State(state): State<AppState>, uri: Uri, body: Bytes) -> Response {
    start_from_request(&state, ExportKind::Patients, &uri, &body).await
}

pub async fn start_all_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    start_from_host(&state, ExportKind::All, &invocation).await
}

pub async fn start_all_direct(State(state): State<AppState>, uri: Uri, body: Bytes) -> Response {
    start_from_request(&state, ExportKind::All, &uri, &body).await
}

pub async fn status_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    let id = id_param(&request_of(&invocation));
    control::status_after_hold(&state.exporter, &id, control::STATUS_HOLD)
        .await
        .into_invocation(RESPONSE_BINDING)
}

pub async fn status_direct(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    control::status_after_hold(&state.exporter, &id, control::STATUS_HOLD)
        .await
        .into_response()
}

pub async fn terminate_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    let id = id_param(&request_of(&invocation));
    control::terminate(&state.exporter, &id)
        .await
        .into_invocation(RESPONSE_BINDING)
}

pub async fn terminate_direct(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    control::terminate(&state.exporter, &id)
        .await
        .into_response()
}

pub async fn manage_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    let req = request_of(&invocation);
    let action = req.query.get("action").cloned();
    control::manage(&state.exporter, &id_param(&req), action.as_deref())
        .await
        .into_invocation(RESPONSE_BINDING)
}

pub async fn manage_direct(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let action = query.get("action").map(String::as_str);
    control::manage(&state.exporter, &id, action)
        .await
        .into_response()
}

pub async fn purge_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    let id = id_param(&request_of(&invocation));
    control::purge(&state.exporter, &id)
        .await
        .into_invocation(RESPONSE_BINDING)
}

pub async fn purge_direct(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    control::purge(&state.exporter, &id).await.into_response()
}

pub async fn list_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    let links = Links::new(&state.http.public_base, &request_of(&invocation).url);
    control::list(&state.exporter, &links)
        .await
        .into_invocation(RESPONSE_BINDING)
}

pub async fn list_direct(State(state): State<AppState>, uri: Uri) -> Response {
    control::list(&state.exporter, &direct_links(&state, &uri))
        .await
        .into_response()
}

/// The request URL without its query (which may carry the function key).
fn strip_query(url: &str) -> String {
    url.split('?').next().unwrap_or_default().to_string()
}
