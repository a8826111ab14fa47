//! Sending batch entries to the FHIR server and settling each one: loaded, failed with the
//! server's reason, or (429/503 for that entry) sent again alone after a pause. Entries that
//! succeeded are never sent again. A batch the server refuses as a whole (4xx) is halved until
//! the entries at fault are isolated, so one bad resource does not fail its neighbours.

use bytes::Bytes;
use tracing::{debug, warn};

use super::ndjson::batch_bundle_json;
use crate::fhir::batch_response::{diagnostics, read_batch_response};
use crate::fhir::retry::{RetryDecision, decide};
use crate::fhir::{FhirClient, FhirError};

/// One entry to send: where it came from, what it writes, its serialised JSON.
#[derive(Clone, Debug)]
pub struct OutgoingEntry {
    /// Position within the part (NDJSON line number or Bundle entry index).
    pub position: i64,
    pub target: Option<String>,
    pub json: String,
}

/// An entry the server would not take.
#[derive(Clone, Debug, PartialEq)]
pub struct RefusedEntry {
    pub position: i64,
    pub target: Option<String>,
    pub status: u16,
    pub diagnostics: String,
}

#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub loaded: i64,
    pub refused: Vec<RefusedEntry>,
}

/// Sends `entries` as one batch (or more, when it must be halved) and settles every entry.
/// `Err` means the server stayed unavailable or kept throttling: retry the work later.
pub async fn send_batch(
    fhir: &FhirClient,
    entries: Vec<OutgoingEntry>,
) -> Result<BatchOutcome, FhirError> {
    let mut outcome = BatchOutcome::default();
    let mut stack = vec![entries];
    while let Some(mut pending) = stack.pop() {
        let mut round = 0u32;
        while !pending.is_empty() {
            let body = Bytes::from(batch_bundle_json(pending.iter().map(|e| e.json.as_str())));
            let reply = match fhir.post_batch(body).await {
                Ok(reply) => reply,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) if pending.len() > 1 => {
                    debug!(
                        message = "Batch refused as a whole; halving it.",
                        entries = pending.len(),
                        status = e.status().unwrap_or(0)
                    );
                    let second = pending.split_off(pending.len() / 2);
                    stack.push(second);
                    stack.push(pending);
                    break;
                }
                Err(e) => {
                    let only = pending.pop().expect("one entry");
                    outcome.refused.push(RefusedEntry {
                        position: only.position,
                        target: only.target,
                        status: e.status().unwrap_or(0),
                        diagnostics: match &e {
                            FhirError::Status { diagnostics, .. } => diagnostics.clone(),
                            other => other.to_string(),
                        },
                    });
                    break;
                }
            };
            let results = read_batch_response(reply, pending.len());
            let mut throttled = Vec::new();
            for (entry, result) in pending.into_iter().zip(results) {
                if result.is_success() {
                    outcome.loaded += 1;
                } else if decide(result.status) == RetryDecision::Retry {
                    throttled.push((entry, result));
                } else {
                    outcome.refused.push(RefusedEntry {
                        position: entry.position,
                        target: entry.target,
                        status: result.status,
                        diagnostics: result
                            .outcome
                            .as_ref()
                            .map(diagnostics)
                            .filter(|d| !d.is_empty())
                            .unwrap_or_else(|| {
                                format!("the server answered {} for this entry", result.status)
                            }),
                    });
                }
            }
            if throttled.is_empty() {
                break;
            }
            if round >= fhir.max_retries() {
                let (_, last) = &throttled[0];
                return Err(FhirError::Status {
                    method: "POST",
                    path: fhir.base().path().to_string(),
                    status: last.status,
                    diagnostics: format!(
                        "{} batch entries were still answered {} after {} tries",
                        throttled.len(),
                        last.status,
                        round + 1
                    ),
                    outcome: None,
                });
            }
            let delay = fhir.backoff().delay(round);
            warn!(
                message = "Re-sending throttled batch entries.",
                entries = throttled.len(),
                status = throttled[0].1.status,
                delay_ms = delay.as_millis() as u64
            );
            tokio::time::sleep(delay).await;
            round += 1;
            pending = throttled.into_iter().map(|(e, _)| e).collect();
        }
    }
    Ok(outcome)
}
