//! The standard Bulk Data functions, thin adapters from a host invocation (or a direct request
//! in `serve` mode) to `export::bulk::operation`: `BulkExport` (`[base]/$export`),
//! `BulkExportPatient` (`Patient/$export`), `BulkExportGroup` (`Group/{id}/$export`), each by
//! GET or POST; `BulkExportStatus` (GET and DELETE `$export-status/{id}`); `BulkExportFile`
//! (GET `$export-file/{id}/{*file}`); and `Metadata` (GET `metadata`, the CapabilityStatement
//! a client reads first).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::export_http::{RESPONSE_BINDING, direct_links, id_param, request_of};
use crate::export::bulk::Level;
use crate::export::bulk::operation::{self, Download};
use crate::export::bulk::request::KickOff;
use crate::export::control::{Links, Reply};
use crate::protocol::invocation::{
    HttpRequestData, HttpResponseData, InvocationRequest, InvocationResponse,
};

/// The media type of the files.
const NDJSON: &str = "application/fhir+ndjson";

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A direct request's kick-off, its URL as the client saw it (under the public base).
fn direct_kick_off(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> KickOff {
    let query = uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    KickOff {
        method: method.as_str().to_string(),
        url: format!("{}{uri}", state.http.public_base),
        query,
        accept: header_text(headers, header::ACCEPT),
        prefer: header_text(headers, header::HeaderName::from_static("prefer")),
        body: Some(String::from_utf8_lossy(body).into_owned()),
    }
}

fn host_kick_off(req: &HttpRequestData) -> KickOff {
    KickOff {
        method: req.method.clone(),
        url: req.url.clone(),
        query: req
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        accept: req.headers.get("accept").cloned(),
        prefer: req.headers.get("prefer").cloned(),
        body: req.body.clone(),
    }
}

async fn kick_off_direct(
    state: AppState,
    level: Level,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = direct_kick_off(&state, &method, &uri, &headers, &body);
    operation::kick_off(
        &state.exporter,
        level,
        &request,
        &direct_links(&state, &uri),
    )
    .await
    .into_response()
}

async fn kick_off_invoke(
    state: AppState,
    level: Level,
    invocation: &InvocationRequest,
) -> Response {
    let req = request_of(invocation);
    let links = Links::new(&state.http.public_base, &req.url);
    operation::kick_off(&state.exporter, level, &host_kick_off(&req), &links)
        .await
        .into_invocation(RESPONSE_BINDING)
}

pub async fn system_direct(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    kick_off_direct(state, Level::System, method, uri, headers, body).await
}

pub async fn patient_direct(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    kick_off_direct(state, Level::Patient, method, uri, headers, body).await
}

pub async fn group_direct(
    State(state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    kick_off_direct(state, Level::Group(id), method, uri, headers, body).await
}

pub async fn system_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    kick_off_invoke(state, Level::System, &invocation).await
}

pub async fn patient_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    kick_off_invoke(state, Level::Patient, &invocation).await
}

pub async fn group_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    let id = id_param(&request_of(&invocation));
    kick_off_invoke(state, Level::Group(id), &invocation).await
}

pub async fn status_direct(
    State(state): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
) -> Response {
    status_or_cancel(&state, &id, method.as_str(), &direct_links(&state, &uri))
        .await
        .into_response()
}

pub async fn status_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    let req = request_of(&invocation);
    let id = id_param(&req);
    let links = Links::new(&state.http.public_base, &req.url);
    status_or_cancel(&state, &id, &req.method, &links)
        .await
        .into_invocation(RESPONSE_BINDING)
}

async fn status_or_cancel(state: &AppState, id: &str, method: &str, links: &Links) -> Reply {
    if method.eq_ignore_ascii_case("DELETE") {
        operation::cancel(&state.exporter, id).await
    } else {
        operation::status(&state.exporter, id, links).await
    }
}

/// Streams a file from its blob (memory: the transport's buffers).
pub async fn file_direct(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let accept = header_text(&headers, header::ACCEPT);
    let ex = &state.exporter;
    let Download { blob, size } = match operation::file(ex, &id, &name, accept.as_deref()).await {
        Ok(d) => d,
        Err(reply) => return reply.into_response(),
    };
    let body = match ex
        .blobs
        .stream_range(&ex.settings.container, &blob, 0, size, None)
        .await
    {
        Ok(b) => b,
        Err(e) => return Reply::unavailable("export files", e).into_response(),
    };
    // Fused: the gzip layer may poll again after the end.
    let chunks = futures::StreamExt::fuse(futures::stream::unfold(body, |mut body| async move {
        match body.next_bytes().await {
            Ok(Some(bytes)) => Some((Ok::<_, std::io::Error>(bytes), body)),
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), body)),
        }
    }));
    let mut response = Response::new(Body::from_stream(chunks));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(NDJSON),
    );
    response
}

/// Under the host, a file is the body of one invocation answer: read whole (files roll over at
/// `FHIRBULK_EXPORT_MAX_FILE_MIB`; keep it small on a Functions plan).
pub async fn file_invoke(
    State(state): State<AppState>,
    Json(invocation): Json<InvocationRequest>,
) -> Response {
    let req = request_of(&invocation);
    let id = id_param(&req);
    let name = req.params.get("file").cloned().unwrap_or_default();
    let ex = &state.exporter;
    let download = match operation::file(
        ex,
        &id,
        &name,
        req.headers.get("accept").map(String::as_str),
    )
    .await
    {
        Ok(d) => d,
        Err(reply) => return reply.into_invocation(RESPONSE_BINDING),
    };
    // Its size is known from the check: one read, no second properties request.
    let bytes = match ex
        .blobs
        .read_range(&ex.settings.container, &download.blob, 0, download.size)
        .await
    {
        Ok(bytes) => bytes,
        Err(e) => return Reply::unavailable("export files", e).into_invocation(RESPONSE_BINDING),
    };
    let data = HttpResponseData {
        status: 200,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        headers: [("Content-Type".to_string(), NDJSON.to_string())].into(),
    };
    Json(InvocationResponse::default().http(RESPONSE_BINDING, data)).into_response()
}

async fn metadata(state: &AppState) -> Reply {
    match state.exporter.capabilities().await {
        Ok(caps) => Reply::new(200, caps.for_loader(&state.http.public_base)),
        Err(e) => operation::capabilities_unavailable(&e),
    }
}

pub async fn metadata_direct(State(state): State<AppState>) -> Response {
    metadata(&state).await.into_response()
}

pub async fn metadata_invoke(
    State(state): State<AppState>,
    Json(_): Json<InvocationRequest>,
) -> Response {
    metadata(&state).await.into_invocation(RESPONSE_BINDING)
}
