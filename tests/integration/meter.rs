//! A storage request meter: a transparent proxy in front of Azurite's blob, queue and table
//! endpoints that forwards every request unchanged and counts it by service and operation
//! ("blob GET", "table POST $batch"). Shared Key signatures cover the path and headers, not the
//! host, so the handler signs as it would for Azurite itself. Tests count what one file costs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;

use crate::standin::send_upstream;
use crate::support::Azurite;

#[derive(Clone)]
struct Endpoint {
    service: &'static str,
    upstream: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<String>>>,
}

/// Counts the storage requests made through [`StorageMeter::connection_string`].
pub struct StorageMeter {
    pub connection_string: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl StorageMeter {
    /// A meter in front of `azurite`'s three services.
    pub async fn start(azurite: &Azurite) -> StorageMeter {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut connection_string = azurite.connection_string.clone();
        for (service, key) in [
            ("blob", "BlobEndpoint"),
            ("queue", "QueueEndpoint"),
            ("table", "TableEndpoint"),
        ] {
            let upstream = endpoint(&connection_string, key);
            let origin = upstream.trim_end_matches("/devstoreaccount1").to_string();
            let app = Router::new()
                .fallback(forward)
                .layer(DefaultBodyLimit::disable())
                .with_state(Endpoint {
                    service,
                    upstream: origin.clone(),
                    client: reqwest::Client::new(),
                    seen: seen.clone(),
                });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            connection_string = connection_string.replace(
                &format!("{key}={upstream}"),
                &format!("{key}=http://{addr}/devstoreaccount1"),
            );
        }
        StorageMeter {
            connection_string,
            seen,
        }
    }

    /// Forgets what was counted so far.
    pub fn reset(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// The requests counted since the last reset, by operation.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for op in self.seen.lock().unwrap().iter() {
            *counts.entry(op.clone()).or_default() += 1;
        }
        counts
    }
}

fn endpoint(connection_string: &str, key: &str) -> String {
    connection_string
        .split(';')
        .find_map(|part| part.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in the connection string"))
        .to_string()
}

/// The operation a request is: service, method, and the `comp` or `$batch` that names it.
fn operation(service: &str, method: &Method, uri: &Uri) -> String {
    let comp = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("comp="))
        .map(|c| format!(" comp={c}"))
        .unwrap_or_default();
    let batch = if uri.path().ends_with("$batch") {
        " $batch"
    } else {
        ""
    };
    format!("{service} {method}{comp}{batch}")
}

async fn forward(
    State(e): State<Endpoint>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    e.seen
        .lock()
        .unwrap()
        .push(operation(e.service, &method, &uri));
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{path}", e.upstream);
    let upstream = match send_upstream(&e.client, method, &url, &headers, body).await {
        Ok(r) => r,
        Err(bad_gateway) => return bad_gateway,
    };
    let mut response = Response::builder().status(upstream.status().as_u16());
    for (name, value) in upstream.headers() {
        // Content-Length too: a HEAD's is the blob's size, which its (empty) body is not.
        if name != "transfer-encoding" && name != "connection" {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    let bytes = upstream.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}
