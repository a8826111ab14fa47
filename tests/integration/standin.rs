//! A fault-injecting stand-in placed in front of the real FHIR server: it forwards every
//! request and, as told, answers 429 with Retry-After, turns some batch entries into 429s,
//! or slows replies. It records what it saw so tests can check what was (re)sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

#[derive(Default)]
pub struct Faults {
    /// Answer this many bundle POSTs with 429 and `Retry-After: retry_after_secs`.
    pub throttle_posts: usize,
    pub retry_after_secs: u64,
    /// In the first N batch responses, turn every k-th entry's status into 429.
    pub entry_429_batches: usize,
    pub entry_429_every: usize,
    /// Delay every bundle POST.
    pub delay: Duration,
    /// Answer every GET whose path and query contain this text with 503 (an outage that
    /// outlasts all retries).
    pub fail_gets_containing: Option<String>,
    /// Answer every bundle POST whose body contains this text with 500, as a server does for
    /// content it cannot handle.
    pub fail_posts_containing: Option<String>,
    /// A mix of faults over bundle POSTs, by their number modulo 20: 0-2 answered 429 with
    /// `Retry-After: 1` (15 %), 3-4 answered 503 (10 %), 5 cut off mid-response after the
    /// server took it (5 %), 6-7 delayed 2 s (10 %).
    pub mix: bool,
}

impl Faults {
    /// Only a delay before every bundle POST is answered: a server that is slow but has room.
    pub fn slow(delay: Duration) -> Faults {
        Faults {
            delay,
            ..Default::default()
        }
    }
}

#[derive(Default)]
pub struct Seen {
    /// Times at which bundle POSTs arrived.
    pub post_times: Vec<Instant>,
    /// How many times each `PUT Type/id` entry was sent.
    pub entry_sends: HashMap<String, usize>,
    /// Entries whose status the stand-in changed to 429.
    pub throttled_entries: Vec<String>,
    /// Bundle POSTs being answered now, and the most there were at once.
    pub posts_in_flight: usize,
    pub most_posts_in_flight: usize,
    /// The largest bundle POST body, in bytes.
    pub largest_post_bytes: usize,
    /// Bundle POSTs seen, for the fault mix.
    pub posts: usize,
}

/// Counts a bundle POST as in flight until it is answered, however it is answered.
struct InFlight(Arc<Inner>);

impl InFlight {
    fn start(inner: &Arc<Inner>) -> Self {
        let mut seen = inner.seen.lock().unwrap();
        seen.posts_in_flight += 1;
        seen.most_posts_in_flight = seen.most_posts_in_flight.max(seen.posts_in_flight);
        InFlight(inner.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.seen.lock().unwrap().posts_in_flight -= 1;
    }
}

struct Inner {
    upstream: String,
    /// This stand-in's own base URL: links in replies are rewritten to point here.
    own: Mutex<String>,
    client: reqwest::Client,
    faults: Mutex<Faults>,
    seen: Mutex<Seen>,
}

#[derive(Clone)]
pub struct StandIn(Arc<Inner>);

impl StandIn {
    pub async fn start(upstream: &str, faults: Faults) -> (StandIn, String) {
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_string(),
            own: Mutex::new(String::new()),
            client: reqwest::Client::new(),
            faults: Mutex::new(faults),
            seen: Mutex::new(Seen::default()),
        });
        // Bodies of any size reach `forward`, so the tests see what the loader sent.
        let app = Router::new()
            .fallback(forward)
            .layer(DefaultBodyLimit::disable())
            .with_state(StandIn(inner.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let own = format!("http://{addr}/fhir");
        *inner.own.lock().unwrap() = own.clone();
        (StandIn(inner), own)
    }

    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.0.seen.lock().unwrap())
    }

    /// Starts counting the most bundle POSTs at once afresh (for the next file of a test).
    pub fn reset_most_posts_in_flight(&self) {
        let mut seen = self.0.seen.lock().unwrap();
        seen.most_posts_in_flight = seen.posts_in_flight;
    }
}

/// Sends a request a stand-in received on to `url` with its headers (but `Host` and
/// `Content-Length`, which are the new request's own); a request that cannot be sent is a 502.
pub async fn send_upstream(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<reqwest::Response, Response> {
    let mut req = client.request(method, url).body(body);
    for (name, value) in headers.iter() {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    req.send()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
}

async fn forward(
    State(s): State<StandIn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = s.0;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let rest = path.strip_prefix("/fhir").unwrap_or(path);
    let is_bundle_post = method == Method::POST && (rest.is_empty() || rest == "/");
    let mut entry_targets = Vec::new();
    if method == Method::GET {
        let fail = s.faults.lock().unwrap().fail_gets_containing.clone();
        if fail.is_some_and(|text| path.contains(&text)) {
            return (StatusCode::SERVICE_UNAVAILABLE, "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"transient\",\"diagnostics\":\"down for maintenance\"}]}").into_response();
        }
    }
    let _in_flight = is_bundle_post.then(|| InFlight::start(&s));
    let mut cut_off = false;
    if is_bundle_post {
        let (poison, mix) = {
            let f = s.faults.lock().unwrap();
            (f.fail_posts_containing.clone(), f.mix)
        };
        if poison.is_some_and(|text| String::from_utf8_lossy(&body).contains(&text)) {
            return (StatusCode::INTERNAL_SERVER_ERROR, "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"fatal\",\"code\":\"exception\",\"diagnostics\":\"the server cannot process this content\"}]}").into_response();
        }
        if mix {
            let n = {
                let mut seen = s.seen.lock().unwrap();
                seen.posts += 1;
                seen.posts % 20
            };
            match n {
                0..=2 => {
                    return (StatusCode::TOO_MANY_REQUESTS, [("Retry-After", "1")], "{}")
                        .into_response();
                }
                3 | 4 => return (StatusCode::SERVICE_UNAVAILABLE, "{}").into_response(),
                5 => cut_off = true,
                6 | 7 => tokio::time::sleep(Duration::from_secs(2)).await,
                _ => {}
            }
        }
        let delay = s.faults.lock().unwrap().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let throttle = {
            let mut f = s.faults.lock().unwrap();
            let mut seen = s.seen.lock().unwrap();
            seen.post_times.push(Instant::now());
            seen.largest_post_bytes = seen.largest_post_bytes.max(body.len());
            drop(seen);
            if f.throttle_posts > 0 {
                f.throttle_posts -= 1;
                Some(f.retry_after_secs)
            } else {
                None
            }
        };
        if let Some(secs) = throttle {
            return (StatusCode::TOO_MANY_REQUESTS, [("Retry-After", secs.to_string())], "{\"resourceType\":\"OperationOutcome\",\"issue\":[{\"severity\":\"error\",\"code\":\"throttled\",\"diagnostics\":\"slow down\"}]}").into_response();
        }
        if let Ok(bundle) = serde_json::from_slice::<Value>(&body) {
            let mut seen = s.seen.lock().unwrap();
            for e in bundle["entry"].as_array().into_iter().flatten() {
                let target = e["request"]["url"].as_str().unwrap_or("").to_string();
                *seen.entry_sends.entry(target.clone()).or_default() += 1;
                entry_targets.push(target);
            }
        }
    }
    let url = format!("{}{}", s.upstream, rest);
    let upstream = match send_upstream(&s.client, method.clone(), &url, &headers, body).await {
        Ok(r) => r,
        Err(bad_gateway) => return bad_gateway,
    };
    let status = StatusCode::from_u16(upstream.status().as_u16()).unwrap();
    let bytes = upstream.bytes().await.unwrap_or_default();
    if !is_bundle_post {
        // Search pages link to the server's own base URL: point them here instead.
        let own = s.own.lock().unwrap().clone();
        let text = String::from_utf8_lossy(&bytes).replace(&s.upstream, &own);
        return (status, [("Content-Type", "application/fhir+json")], text).into_response();
    }
    // Per-entry 429s: report them as throttled although the server took them; the loader
    // must re-send exactly these (PUT by id makes the re-send harmless).
    let mut f = s.faults.lock().unwrap();
    if f.entry_429_batches > 0
        && f.entry_429_every > 0
        && let Ok(mut reply) = serde_json::from_slice::<Value>(&bytes)
    {
        f.entry_429_batches -= 1;
        let every = f.entry_429_every;
        let mut seen = s.seen.lock().unwrap();
        if let Some(entries) = reply["entry"].as_array_mut() {
            for (i, e) in entries.iter_mut().enumerate() {
                if i % every == 0 {
                    e["response"]["status"] = Value::String("429 Too Many Requests".into());
                    seen.throttled_entries
                        .push(entry_targets.get(i).cloned().unwrap_or_default());
                }
            }
        }
        return (
            status,
            [("Content-Type", "application/fhir+json")],
            reply.to_string(),
        )
            .into_response();
    }
    if cut_off {
        // The server took the batch; the reply breaks off half-way.
        let half = bytes.slice(..bytes.len() / 2);
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(half),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut off",
            )),
        ];
        return (
            status,
            [("Content-Type", "application/fhir+json")],
            axum::body::Body::from_stream(futures::stream::iter(chunks)),
        )
            .into_response();
    }
    (status, [("Content-Type", "application/fhir+json")], bytes).into_response()
}
