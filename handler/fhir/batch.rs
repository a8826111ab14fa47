//! Settling a batch of entries with the FHIR server: every entry ends loaded, or refused with
//! the server's reason; an `Err` means the server is unavailable (or kept throttling past the
//! patience) and the work is to be tried again later, from its checkpoint.
//!
//! - Entries the server throttled inside a 2xx batch-response (429/503) are sent again alone,
//!   at the server's pace, as retries (`Retries::after_throttle`: the batch also counted as
//!   throttling for the limiter). Entries it failed (408/500/502/504) are sent again up to the
//!   retries a failing request has, then refused: the server answered the batch, so it is up.
//! - A batch refused as a whole (4xx) is halved until the entries at fault are found.
//! - A batch failing with 500 is halved too, as long as something gets through: when neither
//!   half loads and no other batch of the process was answered meanwhile, the server is down
//!   (not the content) and the batch is the work item's error. So one poison resource fails
//!   alone, with the server's diagnostics, in seconds, and an outage is still retried.
//!
//! Entries that loaded are never sent again.

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::{debug, warn};

use super::batch_response::{BatchReply, diagnostics, read_batch_response};
use super::retry::{RetryDecision, RetryPolicy, decide, is_backpressure};
use super::{BatchSend, FhirClient, FhirError};

/// One entry of a batch, serialised (`{"resource": ..., "request": ...}`).
pub trait BatchEntry: Send {
    fn json(&self) -> &str;
}

/// What became of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    Loaded,
    Refused { status: u16, diagnostics: String },
}

/// Where batches go: the FHIR client, or a scripted server in tests.
#[async_trait]
pub trait BatchEndpoint: Sync {
    /// One batch POST with the request-level retries `send` calls for.
    async fn post_batch(&self, body: Bytes, send: BatchSend) -> Result<BatchReply, FhirError>;
    /// Batch POSTs answered 2xx so far (by anyone in the process).
    fn batches_answered(&self) -> u64;
    fn retry_policy(&self) -> &RetryPolicy;
}

#[async_trait]
impl BatchEndpoint for FhirClient {
    async fn post_batch(&self, body: Bytes, send: BatchSend) -> Result<BatchReply, FhirError> {
        FhirClient::post_batch(self, body, send).await
    }

    fn batches_answered(&self) -> u64 {
        FhirClient::batches_answered(self)
    }

    fn retry_policy(&self) -> &RetryPolicy {
        FhirClient::retry_policy(self)
    }
}

type Outcomes<E> = Vec<(E, Settled)>;

/// A group the server failed as a whole with 500, with that error.
type FailedGroup<E> = (Vec<E>, FhirError);

/// Sends `entries` as one batch (or more, when it must be halved) and settles every one.
/// Outcomes come in no particular order.
pub async fn settle<E: BatchEntry>(
    endpoint: &dyn BatchEndpoint,
    entries: Vec<E>,
) -> Result<Outcomes<E>, FhirError> {
    let mut out = Vec::with_capacity(entries.len());
    if let Some((group, error)) = send_group(endpoint, entries, BatchSend::First, &mut out).await? {
        isolate(endpoint, group, error, &mut out).await?;
    }
    Ok(out)
}

/// Sends a group until every entry is settled; returns it when the server fails it as a whole
/// with 500 (for `isolate` to find out whether its content or the server is at fault).
fn send_group<'a, E: BatchEntry>(
    endpoint: &'a dyn BatchEndpoint,
    mut pending: Vec<E>,
    mut send: BatchSend,
    out: &'a mut Outcomes<E>,
) -> BoxFuture<'a, Result<Option<FailedGroup<E>>, FhirError>> {
    async move {
        let policy = endpoint.retry_policy();
        let mut retries = policy.start(policy.max_retries);
        while !pending.is_empty() {
            let body = Bytes::from(batch_bundle_json(pending.iter().map(|e| e.json())));
            let reply = match endpoint.post_batch(body, send).await {
                Ok(reply) => reply,
                Err(error) if error.status() == Some(500) => return Ok(Some((pending, error))),
                Err(error) if error.is_transient() => return Err(error),
                Err(error) => {
                    refuse_as_a_whole(endpoint, pending, error, out).await?;
                    return Ok(None);
                }
            };
            let results = read_batch_response(reply, pending.len());
            let mut again = Vec::new();
            let mut throttled = false;
            for (entry, result) in pending.into_iter().zip(results) {
                if result.is_success() {
                    out.push((entry, Settled::Loaded));
                } else if decide(result.status) == RetryDecision::Retry {
                    throttled |= is_backpressure(result.status);
                    again.push((entry, refused(result.status, result.outcome.as_ref())));
                } else {
                    out.push((entry, refused(result.status, result.outcome.as_ref())));
                }
            }
            if again.is_empty() {
                return Ok(None);
            }
            let wait = if throttled {
                retries.after_throttle(None)
            } else {
                retries.after_failure(None)
            };
            match wait {
                Some(delay) => {
                    warn!(
                        message = "Sending batch entries again.",
                        entries = again.len(),
                        throttled,
                        delay_ms = delay.as_millis() as u64
                    );
                    tokio::time::sleep(delay).await;
                    pending = again.into_iter().map(|(entry, _)| entry).collect();
                    send = BatchSend::Resend;
                }
                None if throttled => {
                    return Err(FhirError::Status {
                        method: "POST",
                        path: String::new(),
                        status: 429,
                        diagnostics: format!(
                            "{} batch entries were still throttled after {} s",
                            again.len(),
                            policy.throttle_patience.as_secs()
                        ),
                        outcome: None,
                    });
                }
                // The server answered the batch, so it is up: these entries are its refusals.
                None => {
                    out.extend(again);
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }
    .boxed()
}

/// A group the server refused as a whole (4xx, an unreadable reply): halved until the
/// entries at fault are alone.
async fn refuse_as_a_whole<E: BatchEntry>(
    endpoint: &dyn BatchEndpoint,
    mut group: Vec<E>,
    error: FhirError,
    out: &mut Outcomes<E>,
) -> Result<(), FhirError> {
    if group.len() == 1 {
        out.push((group.remove(0), refused_whole(&error)));
        return Ok(());
    }
    debug!(
        message = "Batch refused as a whole; halving it.",
        entries = group.len(),
        status = error.status().unwrap_or(0)
    );
    let second = group.split_off(group.len() / 2);
    for half in [group, second] {
        if let Some((failed, error)) = send_group(endpoint, half, BatchSend::Isolating, out).await?
        {
            isolate(endpoint, failed, error, out).await?;
        }
    }
    Ok(())
}

/// A group that failed with 500: both halves are sent; if nothing got through meanwhile
/// (neither half, nor any other batch of the process), the server is down and the error is
/// returned; otherwise the halves that failed hold the entries at fault, and are halved again
/// down to single entries, refused with the server's diagnostics.
fn isolate<'a, E: BatchEntry>(
    endpoint: &'a dyn BatchEndpoint,
    mut group: Vec<E>,
    error: FhirError,
    out: &'a mut Outcomes<E>,
) -> BoxFuture<'a, Result<(), FhirError>> {
    async move {
        if group.len() == 1 {
            // A batch of one entry: nothing to compare it with, so an outage is assumed.
            return Err(error);
        }
        warn!(
            message =
                "A batch keeps failing with HTTP 500; halving it to find the entries at fault.",
            entries = group.len()
        );
        let answered = endpoint.batches_answered();
        let second = group.split_off(group.len() / 2);
        let mut failed = Vec::new();
        for half in [group, second] {
            if let Some(f) = send_group(endpoint, half, BatchSend::Isolating, out).await? {
                failed.push(f);
            }
        }
        if endpoint.batches_answered() == answered
            && let Some((_, error)) = failed.pop()
        {
            return Err(error);
        }
        for (group, error) in failed {
            if group.len() == 1 {
                out.extend(group.into_iter().map(|e| (e, refused_whole(&error))));
            } else {
                isolate(endpoint, group, error, out).await?;
            }
        }
        Ok(())
    }
    .boxed()
}

fn refused(status: u16, outcome: Option<&serde_json::Value>) -> Settled {
    Settled::Refused {
        status,
        diagnostics: outcome
            .map(diagnostics)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| format!("the server answered {status} for this entry")),
    }
}

fn refused_whole(error: &FhirError) -> Settled {
    Settled::Refused {
        status: error.status().unwrap_or(0),
        diagnostics: match error {
            FhirError::Status { diagnostics, .. } if !diagnostics.is_empty() => diagnostics.clone(),
            other => other.to_string(),
        },
    }
}

/// A batch Bundle from serialised entries, without re-parsing them.
pub fn batch_bundle_json<'a>(entries: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::from(r#"{"resourceType":"Bundle","type":"batch","entry":["#);
    for (i, e) in entries.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(e);
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests;
