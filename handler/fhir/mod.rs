//! The FHIR HTTP client used by import and export: bearer auth, retry decisions with
//! `Retry-After`, a retry budget, and adaptive concurrency shared by every request of the process.

pub mod auth;
pub mod batch;
pub mod batch_response;
pub mod limiter;
pub mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::warn;
use url::Url;

use crate::config::FhirSettings;
use auth::TokenSource;
use batch_response::{BatchReply, diagnostics};
use limiter::{AdaptiveLimiter, Signal};
use retry::{
    Backoff, RetryBudget, RetryDecision, RetryPolicy, decide, is_backpressure, is_retriable_error,
};

/// A FHIR request that did not succeed, after any retries it was due.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error("FHIR server answered HTTP {status} to {method} {path}: {diagnostics}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        diagnostics: String,
        outcome: Option<Value>,
    },
    #[error("FHIR server unreachable for {method} {path}: {message}")]
    Transport {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("FHIR server sent an unreadable reply to {method} {path}: {message}")]
    InvalidResponse {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("cannot get a token for the FHIR server: {0}")]
    Auth(String),
}

/// A GET reply from `get_streamed`.
pub enum Streamed {
    /// Its body is still to be read.
    Body(reqwest::Response),
    /// Read whole (the first try failed and a retry succeeded).
    Whole(Bytes),
}

impl FhirError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            FhirError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error without the server's diagnostics, which can quote resource content (patient
    /// data): safe for logs and for reasons that outlive the request.
    pub fn summary(&self) -> String {
        match self {
            FhirError::Status {
                method,
                path,
                status,
                ..
            } => format!("FHIR server answered HTTP {status} to {method} {path}"),
            other => other.to_string(),
        }
    }

    /// Whether trying the same work later might succeed (throttling, outages).
    pub fn is_transient(&self) -> bool {
        match self {
            FhirError::Status { status, .. } => decide(*status) == RetryDecision::Retry,
            FhirError::Transport { .. } | FhirError::Auth(_) => true,
            FhirError::InvalidResponse { .. } => false,
        }
    }
}

pub struct FhirClient {
    http: reqwest::Client,
    base: Url,
    tokens: TokenSource,
    policy: RetryPolicy,
    limiter: Arc<AdaptiveLimiter>,
    processing_logic: Option<String>,
    audience: String,
    /// Batch POSTs answered 2xx so far: evidence that the server is up when one batch keeps
    /// failing (`batch::settle`).
    batches_answered: AtomicU64,
}

/// How a batch POST is tried (`post_batch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSend {
    /// A batch sent for the first time: it fills the retry budget.
    First,
    /// Entries sent again after the server throttled them: a retry, not new traffic.
    Resend,
    /// Part of a batch the server keeps failing, being halved to find the entries at fault:
    /// failures are retried once.
    Isolating,
}

/// How one request is tried.
#[derive(Clone, Copy, Debug)]
struct Tries {
    /// Retries of failures (throttling is honoured regardless).
    max_failures: u32,
    /// Retries of a 500, which to a batch is often its content: halving finds out sooner.
    max_500s: u32,
    /// A first try fills the retry budget; a re-send is a retry.
    first: bool,
}

/// What one try of a request came to.
enum Try<T> {
    Done(T),
    /// 401 with a token that may have expired: refresh it once and try again.
    Unauthorized,
    Throttled(FhirError, Option<Duration>),
    Failed(FhirError, Option<Duration>),
    Final(FhirError),
}

impl FhirClient {
    pub fn new(settings: &FhirSettings) -> Result<Self, FhirError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .pool_max_idle_per_host(settings.max_concurrency * 2)
            .build()
            .map_err(|e| FhirError::Transport {
                method: "INIT",
                path: String::new(),
                message: e.to_string(),
            })?;
        let tokens = TokenSource::new(&settings.auth, &settings.audience)
            .map_err(|e| FhirError::Auth(e.to_string()))?;
        Ok(FhirClient {
            http,
            base: settings.base_url.clone(),
            tokens,
            policy: RetryPolicy {
                backoff: Backoff::new(settings.retry_base, settings.retry_max),
                max_retries: settings.max_retries,
                throttle_patience: settings.throttle_patience,
                budget: RetryBudget::new(settings.retry_budget_percent),
            },
            limiter: AdaptiveLimiter::new(settings.min_concurrency, settings.max_concurrency),
            processing_logic: settings.bundle_processing_logic.clone(),
            audience: settings.audience.clone(),
            batches_answered: AtomicU64::new(0),
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The audience (resource) tokens for this server are requested for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// `Type?query` or `Type/id` relative to the base URL.
    pub fn url(&self, relative: &str) -> Url {
        let mut s = self.base.as_str().trim_end_matches('/').to_string();
        s.push('/');
        s.push_str(relative.trim_start_matches('/'));
        Url::parse(&s).unwrap_or_else(|_| self.base.clone())
    }

    /// Whether `url` is the base URL or below it (same scheme, host and port).
    pub fn is_under_base(&self, url: &Url) -> bool {
        let base = self.base.path().trim_end_matches('/');
        url.origin() == self.base.origin()
            && (url.path() == base || url.path().starts_with(&format!("{base}/")))
    }

    /// The retry schedule, limits and budget of this client's requests.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The most requests the limiter lets run at once (`FHIRBULK_FHIR_MAX_CONCURRENCY`).
    pub fn max_concurrency(&self) -> usize {
        self.limiter.max()
    }

    /// POSTs a serialised batch or transaction Bundle to the base URL; returns its
    /// batch-response (or transaction-response) as read. A reply in which the server
    /// throttled entries counts as throttling for the adaptive limiter.
    pub async fn post_batch(&self, body: Bytes, send: BatchSend) -> Result<BatchReply, FhirError> {
        let max_retries = self.policy.max_retries;
        let tries = Tries {
            max_failures: if send == BatchSend::Isolating {
                max_retries.min(1)
            } else {
                max_retries
            },
            max_500s: max_retries.min(1),
            first: send == BatchSend::First,
        };
        let reply = self
            .exchange(
                Method::POST,
                self.base.clone(),
                Some(body),
                tries,
                read_json::<BatchReply>,
                |r| r.has_throttled_entries(),
            )
            .await?;
        self.batches_answered.fetch_add(1, Ordering::Relaxed);
        Ok(reply)
    }

    /// POSTs a transaction kept whole: all or nothing, so a 500 gets every retry (it cannot be
    /// halved).
    pub async fn post_transaction(&self, body: Bytes) -> Result<BatchReply, FhirError> {
        self.exchange(
            Method::POST,
            self.base.clone(),
            Some(body),
            self.first_try(),
            read_json::<BatchReply>,
            |_| false,
        )
        .await
    }

    /// Batch POSTs the server has answered 2xx since the process started.
    pub fn batches_answered(&self) -> u64 {
        self.batches_answered.load(Ordering::Relaxed)
    }

    /// GETs a search or read URL (absolute, on this server).
    pub async fn get(&self, url: &Url) -> Result<Value, FhirError> {
        self.exchange(
            Method::GET,
            url.clone(),
            None,
            self.first_try(),
            read_json::<Value>,
            |_| false,
        )
        .await
    }

    /// GETs a URL and returns the reply's bytes unparsed (export copies resources as text).
    pub async fn get_bytes(&self, url: &Url) -> Result<Bytes, FhirError> {
        self.exchange(Method::GET, url.clone(), None, self.first_try(), Ok, |_| {
            false
        })
        .await
    }

    /// GETs a URL whose reply may be too large to hold (a Group of millions of members): the
    /// response with its body unread once the server answers 2xx at the first try. Any other
    /// first answer goes the way of `get_bytes` (retries, the error the server gave), whose
    /// reply, if a retry succeeds, is read whole.
    pub async fn get_streamed(&self, url: &Url) -> Result<Streamed, FhirError> {
        if self.is_under_base(url) {
            let first = self.request(&Method::GET, url, None).await?.send().await;
            if let Ok(resp) = first
                && resp.status().is_success()
            {
                return Ok(Streamed::Body(resp));
            }
        }
        self.get_bytes(url).await.map(Streamed::Whole)
    }

    /// A request sent for the first time, with every retry of its kind.
    fn first_try(&self) -> Tries {
        Tries {
            max_failures: self.policy.max_retries,
            max_500s: self.policy.max_retries,
            first: true,
        }
    }

    /// Sends a request until it succeeds or its retries are spent (see `retry`), and reads
    /// its 2xx reply with `read`; `throttled` tells whether a reply that was read still asks
    /// the client to slow down (a batch-response with throttled entries).
    async fn exchange<T>(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        tries: Tries,
        read: impl Fn(Bytes) -> Result<T, String>,
        throttled: impl Fn(&T) -> bool,
    ) -> Result<T, FhirError> {
        let method_name = method_name(&method);
        let path = url.path().to_string();
        // The token goes to this server's base URL and below, nowhere else: not to a search
        // that climbed out with `..`, nor to a `next` link on another host.
        if !self.is_under_base(&url) {
            return Err(FhirError::InvalidResponse {
                method: method_name,
                path,
                message: format!(
                    "refused to send a request outside the FHIR base URL {}",
                    self.base
                ),
            });
        }
        let mut retries = self.policy.start(tries.max_failures);
        let mut server_errors = 0u32;
        let mut refreshed_token = false;
        if tries.first {
            self.policy.budget.deposit();
        }
        loop {
            let permit = self.limiter.acquire().await;
            let req = self.request(&method, &url, body.as_ref()).await?;
            let outcome = self
                .try_once(req, method_name, &path, !refreshed_token, &read, &throttled)
                .await;
            drop(permit);
            let (error, wait) = match outcome {
                Try::Done(value) => return Ok(value),
                Try::Unauthorized => {
                    refreshed_token = true;
                    self.tokens.invalidate().await;
                    continue;
                }
                Try::Final(error) => return Err(error),
                Try::Throttled(error, server) => {
                    let wait = retries.after_throttle(server);
                    (error, wait)
                }
                Try::Failed(error, server) => {
                    let is_500 = error.status() == Some(500);
                    server_errors += u32::from(is_500);
                    let wait = if is_500 && server_errors > tries.max_500s {
                        None
                    } else {
                        retries.after_failure(server)
                    };
                    (error, wait)
                }
            };
            let Some(delay) = wait else {
                warn!(
                    message = "Giving up on a FHIR request; its work is tried again later.",
                    method = method_name,
                    path = %path,
                    status = error.status().unwrap_or(0)
                );
                return Err(error);
            };
            warn!(
                message = "Retrying FHIR request.",
                method = method_name,
                path = %path,
                status = error.status().unwrap_or(0),
                delay_ms = delay.as_millis() as u64
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// A request with this client's headers and token (refreshed when it is about to expire).
    async fn request(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Bytes>,
    ) -> Result<reqwest::RequestBuilder, FhirError> {
        let token = self
            .tokens
            .bearer()
            .await
            .map_err(|e| FhirError::Auth(e.to_string()))?;
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .header("Accept", "application/fhir+json");
        if let Some(body) = body {
            // return=minimal: the loader reads statuses only; echoed resources cost bandwidth.
            req = req
                .header("Content-Type", "application/fhir+json")
                .header("Prefer", "return=minimal")
                .body(body.clone());
            if let Some(logic) = &self.processing_logic {
                req = req.header("x-bundle-processing-logic", logic);
            }
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Ok(req)
    }

    /// One try: the reply read, or what kind of failure it was (the limiter is told either way).
    async fn try_once<T>(
        &self,
        req: reqwest::RequestBuilder,
        method: &'static str,
        path: &str,
        may_refresh: bool,
        read: &impl Fn(Bytes) -> Result<T, String>,
        throttled: &impl Fn(&T) -> bool,
    ) -> Try<T> {
        let transport = |e: reqwest::Error| FhirError::Transport {
            method,
            path: path.to_string(),
            message: e.to_string(),
        };
        let started = Instant::now();
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) if is_retriable_error(&e) => {
                self.limiter.record(Signal::Backpressure);
                return Try::Failed(transport(e), None);
            }
            Err(e) => return Try::Final(transport(e)),
        };
        let status = resp.status().as_u16();
        if status == StatusCode::UNAUTHORIZED.as_u16() && may_refresh {
            return Try::Unauthorized;
        }
        let server_delay =
            retry::server_delay(resp.headers(), SystemTime::now(), self.policy.backoff.max());
        match decide(status) {
            RetryDecision::Successful => {
                // A connection reset while the body arrives is a failed try like any other:
                // the request is idempotent (reads, and batches of PUT Type/id).
                let bytes = match resp.bytes().await {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        self.limiter.record(Signal::Backpressure);
                        return Try::Failed(transport(e), None);
                    }
                };
                let value = match read(bytes) {
                    Ok(value) => value,
                    Err(message) => {
                        return Try::Final(FhirError::InvalidResponse {
                            method,
                            path: path.to_string(),
                            message,
                        });
                    }
                };
                self.limiter.record(if throttled(&value) {
                    Signal::Backpressure
                } else {
                    Signal::Healthy(started.elapsed())
                });
                Try::Done(value)
            }
            decision => {
                self.refused(resp, decision, method, path, server_delay)
                    .await
            }
        }
    }

    /// A try the server answered with an error status: final, throttled or failed, by
    /// `decision`, with the server's diagnostics.
    async fn refused<T>(
        &self,
        resp: reqwest::Response,
        decision: RetryDecision,
        method: &'static str,
        path: &str,
        server_delay: Option<Duration>,
    ) -> Try<T> {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let outcome: Option<Value> = serde_json::from_str(&text).ok();
        let diagnostics = outcome
            .as_ref()
            .map(diagnostics)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| text.chars().take(300).collect());
        let error = FhirError::Status {
            method,
            path: path.to_string(),
            status,
            diagnostics,
            outcome,
        };
        if decision == RetryDecision::DontRetry {
            self.limiter.record(Signal::Neutral);
            return Try::Final(error);
        }
        if is_backpressure(status) {
            self.limiter.record(Signal::Backpressure);
            return Try::Throttled(error, server_delay);
        }
        self.limiter.record(if matches!(status, 408 | 504) {
            Signal::Backpressure
        } else {
            Signal::Neutral
        });
        Try::Failed(error, server_delay)
    }
}

/// A 2xx reply's JSON as `T`; an empty reply is `T::default()` (`Value::Null` for a value).
fn read_json<T: DeserializeOwned + Default>(bytes: Bytes) -> Result<T, String> {
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn method_name(method: &Method) -> &'static str {
    if method == Method::POST {
        "POST"
    } else {
        "GET"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_under_the_base_url() {
        let settings = crate::config::Settings::from_source(&std::collections::HashMap::from([
            ("FHIRBULK_FHIR_URL", "http://fhir.local:8080/r4"),
            (
                "FHIRBULK_STORAGE_CONNECTION_STRING",
                "UseDevelopmentStorage=true",
            ),
        ]))
        .unwrap();
        let client = FhirClient::new(&settings.fhir).unwrap();
        let under = |u: &str| client.is_under_base(&Url::parse(u).unwrap());
        assert!(under("http://fhir.local:8080/r4/Patient?name=x"));
        assert!(under("http://fhir.local:8080/r4"));
        assert!(!under("http://fhir.local:8080/r40/Patient"));
        assert!(
            !under("http://fhir.local:8080/x?a=1"),
            "a search that climbed out"
        );
        assert!(!under(client.url("Patient/../../../x?a=1").as_str()));
        assert!(!under("http://evil.example/r4/Patient"));
    }

    #[test]
    fn summaries_leave_out_server_diagnostics() {
        let e = FhirError::Status {
            method: "POST",
            path: "/fhir".into(),
            status: 422,
            diagnostics: "Patient.name 'Jane Doe' is invalid".into(),
            outcome: None,
        };
        assert_eq!(e.summary(), "FHIR server answered HTTP 422 to POST /fhir");
        assert!(
            e.to_string().contains("Jane Doe"),
            "the full error keeps them for error records"
        );
        assert!(!e.is_transient());
        let throttled = FhirError::Status {
            method: "GET",
            path: "/fhir/Patient".into(),
            status: 429,
            diagnostics: String::new(),
            outcome: None,
        };
        assert!(throttled.is_transient());
    }
}
