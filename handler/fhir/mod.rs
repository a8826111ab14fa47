//! The FHIR HTTP client used by import and export: bearer auth, retry decisions with
//! `Retry-After`, a retry budget, and adaptive concurrency shared by every request of the process.

pub mod auth;
pub mod batch_response;
pub mod limiter;
pub mod retry;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

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
use retry::{Backoff, RetryBudget, RetryDecision, decide, is_backpressure, is_retriable_error};

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
    backoff: Backoff,
    max_retries: u32,
    budget: RetryBudget,
    limiter: Arc<AdaptiveLimiter>,
    processing_logic: Option<String>,
    audience: String,
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
            backoff: Backoff::new(settings.retry_base, settings.retry_max),
            max_retries: settings.max_retries,
            budget: RetryBudget::new(settings.retry_budget_percent),
            limiter: AdaptiveLimiter::new(settings.min_concurrency, settings.max_concurrency),
            processing_logic: settings.bundle_processing_logic.clone(),
            audience: settings.audience.clone(),
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

    /// POSTs a serialised batch or transaction Bundle to the base URL; returns its
    /// batch-response (or transaction-response) as read.
    pub async fn post_batch(&self, body: Bytes) -> Result<BatchReply, FhirError> {
        self.send(Method::POST, self.base.clone(), Some(body)).await
    }

    /// The retry schedule, for callers that retry parts of a reply (throttled batch entries).
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The most requests the limiter lets run at once (`FHIRBULK_FHIR_MAX_CONCURRENCY`).
    pub fn max_concurrency(&self) -> usize {
        self.limiter.max()
    }

    /// GETs a search or read URL (absolute, on this server).
    pub async fn get(&self, url: &Url) -> Result<Value, FhirError> {
        self.send(Method::GET, url.clone(), None).await
    }

    /// GETs a URL and returns the reply's bytes unparsed (export copies resources as text).
    pub async fn get_bytes(&self, url: &Url) -> Result<Bytes, FhirError> {
        self.send_raw(Method::GET, url.clone(), None).await
    }

    /// Sends a request and reads its JSON reply as `T`; an empty reply is `T::default()`
    /// (`Value::Null` for a plain JSON value).
    async fn send<T: DeserializeOwned + Default>(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
    ) -> Result<T, FhirError> {
        let method_name = method_name(&method);
        let path = url.path().to_string();
        let bytes = self.send_raw(method, url, body).await?;
        if bytes.is_empty() {
            return Ok(T::default());
        }
        serde_json::from_slice(&bytes).map_err(|e| FhirError::InvalidResponse {
            method: method_name,
            path,
            message: e.to_string(),
        })
    }

    async fn send_raw(
        &self,
        method: Method,
        url: Url,
        body: Option<Bytes>,
    ) -> Result<Bytes, FhirError> {
        let method_name = method_name(&method);
        let path = url.path().to_string();
        let mut attempt = 0u32;
        let mut refreshed_token = false;
        self.budget.deposit();
        loop {
            let permit = self.limiter.acquire().await;
            let token = self
                .tokens
                .bearer()
                .await
                .map_err(|e| FhirError::Auth(e.to_string()))?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header("Accept", "application/fhir+json");
            if let Some(body) = &body {
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
            let started = Instant::now();
            let (status, delay_hint, failure) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !refreshed_token {
                        refreshed_token = true;
                        self.tokens.invalidate().await;
                        continue;
                    }
                    let server_delay =
                        retry::server_delay(resp.headers(), SystemTime::now(), self.backoff.max());
                    match decide(status.as_u16()) {
                        RetryDecision::Successful => {
                            let bytes = resp.bytes().await.map_err(|e| FhirError::Transport {
                                method: method_name,
                                path: path.clone(),
                                message: e.to_string(),
                            })?;
                            self.limiter.record(Signal::Healthy(started.elapsed()));
                            return Ok(bytes);
                        }
                        decision => {
                            let text = resp.text().await.unwrap_or_default();
                            let outcome: Option<Value> = serde_json::from_str(&text).ok();
                            let diag = outcome
                                .as_ref()
                                .map(diagnostics)
                                .filter(|d| !d.is_empty())
                                .unwrap_or_else(|| text.chars().take(300).collect());
                            let err = FhirError::Status {
                                method: method_name,
                                path: path.clone(),
                                status: status.as_u16(),
                                diagnostics: diag,
                                outcome,
                            };
                            if decision == RetryDecision::DontRetry {
                                self.limiter.record(Signal::Neutral);
                                return Err(err);
                            }
                            let signal = if is_backpressure(status.as_u16())
                                || matches!(status.as_u16(), 408 | 504)
                            {
                                Signal::Backpressure
                            } else {
                                Signal::Neutral
                            };
                            self.limiter.record(signal);
                            (Some(status.as_u16()), server_delay, err)
                        }
                    }
                }
                Err(e) => {
                    let err = FhirError::Transport {
                        method: method_name,
                        path: path.clone(),
                        message: e.to_string(),
                    };
                    if !is_retriable_error(&e) {
                        return Err(err);
                    }
                    self.limiter.record(Signal::Backpressure);
                    (None, None, err)
                }
            };
            drop(permit);
            if attempt >= self.max_retries {
                return Err(failure);
            }
            if !self.budget.withdraw() {
                warn!(
                    message = "FHIR retry budget spent; giving up on this request.",
                    method = method_name,
                    path = %path
                );
                return Err(failure);
            }
            let delay = self.backoff.next_delay(attempt, delay_hint);
            warn!(
                message = "Retrying FHIR request.",
                method = method_name,
                path = %path,
                status = status.unwrap_or(0),
                attempt = attempt + 1,
                delay_ms = delay.as_millis() as u64
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
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
