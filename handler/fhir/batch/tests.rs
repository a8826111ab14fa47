//! `settle` against a scripted server, in paused time: what is sent again, when, and what
//! ends refused or as the work item's error.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::*;
use crate::fhir::retry::{Backoff, RetryBudget};

#[derive(Debug)]
struct Entry(String);

impl BatchEntry for Entry {
    fn json(&self) -> &str {
        &self.0
    }
}

fn entries(names: &[&str]) -> Vec<Entry> {
    names
        .iter()
        .map(|n| {
            Entry(json!({"request": {"method": "PUT", "url": format!("Basic/{n}")}}).to_string())
        })
        .collect()
}

/// A server that fails any batch holding a `poison` entry with 500 (every batch when `down`),
/// refuses any holding an `invalid` one with 400, throttles entries named `slow` in its first
/// `throttle_rounds` replies and fails entries named `flaky` with 500 inside its replies.
struct Scripted {
    down: bool,
    throttle_rounds: AtomicUsize,
    answered: AtomicU64,
    posts: Mutex<Vec<(Vec<String>, BatchSend, Instant)>>,
    policy: RetryPolicy,
}

impl Scripted {
    fn new(throttle_rounds: usize, down: bool) -> Self {
        Scripted {
            down,
            throttle_rounds: AtomicUsize::new(throttle_rounds),
            answered: AtomicU64::new(0),
            posts: Mutex::new(Vec::new()),
            policy: RetryPolicy {
                backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(60)),
                max_retries: 2,
                throttle_patience: Duration::from_secs(900),
                budget: RetryBudget::new(0),
            },
        }
    }

    fn posts(&self) -> Vec<(Vec<String>, BatchSend, Instant)> {
        self.posts.lock().unwrap().clone()
    }
}

fn status_error(status: u16) -> FhirError {
    FhirError::Status {
        method: "POST",
        path: "/fhir".into(),
        status,
        diagnostics: format!("scripted {status}"),
        outcome: None,
    }
}

#[async_trait]
impl BatchEndpoint for Scripted {
    async fn post_batch(&self, body: Bytes, send: BatchSend) -> Result<BatchReply, FhirError> {
        let bundle: Value = serde_json::from_slice(&body).unwrap();
        let names: Vec<String> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["url"].as_str().unwrap()[6..].to_string())
            .collect();
        self.posts
            .lock()
            .unwrap()
            .push((names.clone(), send, Instant::now()));
        if self.down || names.iter().any(|n| n.starts_with("poison")) {
            return Err(status_error(500));
        }
        if names.iter().any(|n| n.starts_with("invalid")) {
            return Err(status_error(400));
        }
        let throttling = self
            .throttle_rounds
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let reply = json!({"resourceType": "Bundle", "type": "batch-response",
            "entry": names.iter().map(|n| {
                let status = if throttling && n.starts_with("slow") { "429" }
                    else if n.starts_with("flaky") { "500" } else { "201 Created" };
                json!({"response": {"status": status}})
            }).collect::<Vec<_>>()});
        self.answered.fetch_add(1, Ordering::SeqCst);
        Ok(serde_json::from_value(reply).unwrap())
    }

    fn batches_answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

fn outcome_of<'a>(out: &'a Outcomes<Entry>, name: &str) -> &'a Settled {
    let url = format!("\"Basic/{name}\"");
    &out.iter().find(|(e, _)| e.0.contains(&url)).unwrap().1
}

/// Throttled entries alone go again, after the backoff, as re-sends that spend the retry
/// budget; the others are never sent twice.
#[tokio::test(start_paused = true)]
async fn throttled_entries_alone_are_sent_again_as_retries() {
    let server = Scripted::new(2, false);
    let started = Instant::now();
    let out = settle(&server, entries(&["a", "slow-b", "c"]))
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|(_, s)| *s == Settled::Loaded), "{out:?}");
    let posts = server.posts();
    let sent: Vec<_> = posts.iter().map(|(n, s, _)| (n.clone(), *s)).collect();
    assert_eq!(
        sent,
        vec![
            (
                vec!["a".into(), "slow-b".into(), "c".into()],
                BatchSend::First
            ),
            (vec!["slow-b".into()], BatchSend::Resend),
            (vec!["slow-b".into()], BatchSend::Resend),
        ]
    );
    assert!(
        posts[1].2 - started >= Duration::from_millis(500),
        "waited the backoff"
    );
    let mut left = 0;
    while server.policy.budget.withdraw() {
        left += 1;
    }
    assert_eq!(
        left, 18,
        "the two re-sends spent two of the reserve's 20 retries"
    );
}

/// One resource the server fails with 500 is found by halving and refused alone, with the
/// server's diagnostics; the other seven load.
#[tokio::test(start_paused = true)]
async fn a_poison_entry_is_isolated_and_the_rest_loads() {
    let server = Scripted::new(0, false);
    let names = ["e0", "e1", "e2", "e3", "e4", "poison-5", "e6", "e7"];
    let started = Instant::now();
    let out = settle(&server, entries(&names)).await.unwrap();
    assert_eq!(out.len(), 8);
    for name in names {
        let expected = if name.starts_with("poison") {
            Settled::Refused {
                status: 500,
                diagnostics: "scripted 500".into(),
            }
        } else {
            Settled::Loaded
        };
        assert_eq!(outcome_of(&out, name), &expected, "{name}");
    }
    assert!(server.posts().len() <= 7, "{:?}", server.posts());
    assert!(
        Instant::now() - started < Duration::from_secs(5),
        "seconds, not minutes"
    );
}

/// A server failing every batch with 500 is down, not poisoned: after the two halves, the
/// batch is the work item's error, and nothing is refused.
#[tokio::test(start_paused = true)]
async fn a_server_failing_everything_is_an_outage_not_bad_content() {
    let server = Scripted::new(0, true);
    let error = settle(&server, entries(&["a", "b", "c", "d"]))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(500));
    assert_eq!(server.posts().len(), 3, "the batch and its two halves");
}

/// A batch refused as a whole (400) is halved to the entry at fault; entries failing with 500
/// inside a batch-response are sent again, then refused (the server answered: it is up).
#[tokio::test(start_paused = true)]
async fn whole_refusals_are_halved_and_failing_entries_end_refused() {
    let server = Scripted::new(0, false);
    let out = settle(&server, entries(&["a", "invalid-b", "c", "flaky-d"]))
        .await
        .unwrap();
    assert_eq!(outcome_of(&out, "a"), &Settled::Loaded);
    assert_eq!(outcome_of(&out, "c"), &Settled::Loaded);
    assert!(matches!(
        outcome_of(&out, "invalid-b"),
        Settled::Refused { status: 400, .. }
    ));
    assert_eq!(
        outcome_of(&out, "flaky-d"),
        &Settled::Refused {
            status: 500,
            diagnostics: "the server answered 500 for this entry".into()
        }
    );
    let flaky_sends = server
        .posts()
        .iter()
        .filter(|(n, _, _)| n.contains(&"flaky-d".to_string()))
        .count();
    assert_eq!(
        flaky_sends, 4,
        "in the batch refused as a whole, then in its half and max_retries (2) more"
    );
}
