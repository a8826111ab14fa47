//! `fhir-null-sink PORT [DELAY_MS]`: a FHIR stand-in for benchmarks that accepts every batch,
//! answering `200 OK` for each entry, so the loader's own throughput can be measured. With
//! `DELAY_MS` it answers each batch after that long, like a distant server that has capacity
//! to spare: what counts then is how many batches the loader keeps in flight. Like a real
//! server it refuses request bodies over a limit, 30,000,000 bytes (ASP.NET Core's default).
//! With `GROUP_MEMBERS` (`fhir-null-sink PORT DELAY_MS GROUP_MEMBERS`), a read of any Group
//! (`GET .../Group/{id}`) answers a Group of that many member Patients (`Patient/m<n>`),
//! generated as it is sent; every other GET answers an empty searchset.
//! Not part of the deployed package.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use futures::StreamExt;
use serde::Deserialize;
use serde::de::IgnoredAny;

const MAX_BODY_BYTES: usize = 30_000_000;

#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    entry: Vec<IgnoredAny>,
}

#[derive(Clone, Copy)]
struct Sink {
    delay: Duration,
    group_members: u64,
}

/// Members per chunk of a generated Group's body.
const MEMBERS_PER_CHUNK: u64 = 10_000;

async fn answer(
    State(sink): State<Sink>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    body: Bytes,
) -> axum::response::Response {
    if method != axum::http::Method::GET {
        return accept(sink.delay, body).await.into_response();
    }
    let mut segments = uri.path().rsplit('/');
    let (id, kind) = (segments.next(), segments.next());
    if kind == Some("Group") && id.is_some_and(|i| !i.is_empty()) && sink.group_members > 0 {
        return group(sink.group_members);
    }
    (
        StatusCode::OK,
        [("content-type", "application/fhir+json")],
        r#"{"resourceType":"Bundle","type":"searchset","total":0,"entry":[]}"#,
    )
        .into_response()
}

/// A Group of `members` Patients, written chunk by chunk as the client reads it.
fn group(members: u64) -> axum::response::Response {
    let chunks = members.div_ceil(MEMBERS_PER_CHUNK);
    let head = futures::stream::once(async {
        Ok::<_, std::io::Error>(Bytes::from_static(
            br#"{"resourceType":"Group","id":"big","type":"person","actual":true,"member":["#,
        ))
    });
    let body = futures::stream::iter(0..chunks).map(move |c| {
        let first = c * MEMBERS_PER_CHUNK;
        let last = (first + MEMBERS_PER_CHUNK).min(members);
        let mut out = String::with_capacity(((last - first) * 48) as usize);
        for n in first..last {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&format!(r#"{{"entity":{{"reference":"Patient/m{n}"}}}}"#));
        }
        Ok(Bytes::from(out))
    });
    let tail = futures::stream::once(async { Ok(Bytes::from_static(b"]}")) });
    let mut response =
        axum::response::Response::new(axum::body::Body::from_stream(head.chain(body).chain(tail)));
    response.headers_mut().insert(
        "content-type",
        "application/fhir+json".parse().expect("static"),
    );
    response
}

async fn accept(delay: Duration, body: Bytes) -> impl IntoResponse {
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
    let sink = Sink {
        delay: Duration::from_millis(arg(2).parse().unwrap_or(0)),
        group_members: arg(3).parse().unwrap_or(0),
    };
    let app = Router::new()
        .fallback(answer)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(sink);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
