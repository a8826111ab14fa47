//! `fhir-null-sink PORT [DELAY_MS]`: a FHIR stand-in for benchmarks that accepts every batch,
//! answering `200 OK` for each entry, so the loader's own throughput can be measured. With
//! `DELAY_MS` it answers each batch after that long, like a distant server that has capacity
//! to spare: what counts then is how many batches the loader keeps in flight. Like a real
//! server it refuses request bodies over a limit, 30,000,000 bytes (ASP.NET Core's default).
//! Not part of the deployed package.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde::de::IgnoredAny;

const MAX_BODY_BYTES: usize = 30_000_000;

#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    entry: Vec<IgnoredAny>,
}

async fn accept(State(delay): State<Duration>, body: Bytes) -> impl IntoResponse {
    let Ok(batch) = serde_json::from_slice::<Batch>(&body) else {
        return (
            StatusCode::OK,
            HeaderMap::new(),
            String::from("{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"total\":0}"),
        );
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut out = String::with_capacity(32 + batch.entry.len() * 32);
    out.push_str(r#"{"resourceType":"Bundle","type":"batch-response","entry":["#);
    for i in 0..batch.entry.len() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"response":{"status":"200 OK"}}"#);
    }
    out.push_str("]}");
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        "application/fhir+json".parse().expect("static"),
    );
    (StatusCode::OK, headers, out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let arg = |n: usize| std::env::args().nth(n).unwrap_or_default();
    let port: u16 = arg(1).parse().unwrap_or(8099);
    let delay = Duration::from_millis(arg(2).parse().unwrap_or(0));
    let app = Router::new()
        .fallback(accept)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(delay);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
