//! One adapter per Azure Function: each maps an invocation (custom-handler payload, or a direct
//! HTTP request in `serve` mode) to the engine. Function names are the folder names under
//! `functions/` and the paths the Functions host POSTs to.

pub mod import_blob_created;
pub mod import_status;
pub mod import_worker;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::import::Importer;

pub const IMPORT_BLOB_CREATED: &str = "ImportBlobCreated";
pub const IMPORT_WORKER: &str = "ImportWorker";
pub const IMPORT_STATUS: &str = "ImportStatus";

/// Every function this handler implements, for the layout check against `functions/`.
pub const FUNCTION_NAMES: &[&str] = &[IMPORT_BLOB_CREATED, IMPORT_WORKER, IMPORT_STATUS];

#[derive(Clone)]
pub struct AppState {
    pub importer: Arc<Importer>,
}

/// The handler's routes: `/<FunctionName>` for the Functions host, plus the same HTTP
/// functions at their public paths for `serve` mode and local use.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            &format!("/{IMPORT_BLOB_CREATED}"),
            post(import_blob_created::invoke),
        )
        .route(&format!("/{IMPORT_WORKER}"), post(import_worker::invoke))
        .route(&format!("/{IMPORT_STATUS}"), post(import_status::invoke))
        .route("/imports", get(import_status::list_direct))
        .route(
            "/imports/{container}/{*blob}",
            get(import_status::file_direct),
        )
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}
