//! Reading a `batch-response` Bundle: one outcome per request entry, in order. HTTP 200 for the
//! batch says nothing about its entries; each entry carries its own status (`"201"` from
//! Microsoft's server, `"201 Created"` from HAPI and others — both are read).

use serde::Deserialize;
use serde_json::Value;

/// A `batch-response` as read: per entry only what the loader looks at (status and
/// outcome), not a JSON tree of everything the server sent back.
#[derive(Debug, Default, Deserialize)]
pub struct BatchReply {
    #[serde(default)]
    entry: Vec<ReplyEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct ReplyEntry {
    #[serde(default)]
    response: Option<ReplyResponse>,
}

/// Values are kept as JSON values: a server that sends a number where a string belongs spoils
/// that entry, not the whole reply.
#[derive(Debug, Default, Deserialize)]
struct ReplyResponse {
    #[serde(default)]
    status: Option<Value>,
    #[serde(default)]
    outcome: Option<Value>,
}

impl BatchReply {
    /// Whether the server throttled any entry (429 or 503 inside a 2xx batch-response): the
    /// batch as a whole is then a "slow down" for the adaptive limiter.
    pub fn has_throttled_entries(&self) -> bool {
        self.entry.iter().any(|e| {
            e.response
                .as_ref()
                .and_then(|r| r.status.as_ref())
                .and_then(Value::as_str)
                .and_then(parse_status)
                .is_some_and(super::retry::is_backpressure)
        })
    }
}

/// What the server answered for one entry of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryOutcome {
    pub status: u16,
    /// `response.outcome` (an OperationOutcome) when the server gave one.
    pub outcome: Option<Value>,
}

impl EntryOutcome {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The numeric part of an entry status: `"201"`, `"201 Created"`, `"HTTP/1.1 201 Created"`.
pub fn parse_status(raw: &str) -> Option<u16> {
    let raw = raw.trim();
    let raw = raw
        .strip_prefix("HTTP/")
        .map(|rest| rest.split_once(' ').map(|(_, s)| s).unwrap_or(""))
        .unwrap_or(raw);
    let digits = &raw[..raw.bytes().take_while(u8::is_ascii_digit).count()];
    match digits.parse::<u16>() {
        Ok(code) if (100..600).contains(&code) && digits.len() == 3 => Some(code),
        _ => None,
    }
}

/// One outcome per request entry. A response with a different number of entries, or an entry
/// without a readable status, is reported as an error for that entry (status 0), never as success.
pub fn read_batch_response(reply: BatchReply, expected: usize) -> Vec<EntryOutcome> {
    let mut entries = reply.entry.into_iter();
    (0..expected)
        .map(|_| {
            let Some(resp) = entries.next().and_then(|e| e.response) else {
                return unreadable("the batch-response has no entry for this request");
            };
            match resp
                .status
                .as_ref()
                .and_then(Value::as_str)
                .and_then(parse_status)
            {
                Some(status) => EntryOutcome {
                    status,
                    outcome: resp.outcome,
                },
                None => unreadable("the batch-response entry has no readable status"),
            }
        })
        .collect()
}

fn unreadable(reason: &str) -> EntryOutcome {
    EntryOutcome {
        status: 0,
        outcome: Some(operation_outcome("error", "exception", reason)),
    }
}

/// An OperationOutcome with a single issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    })
}

/// The human-readable text of an OperationOutcome's issues, joined.
pub fn diagnostics(outcome: &Value) -> String {
    outcome
        .get("issue")
        .and_then(Value::as_array)
        .map(|issues| {
            issues
                .iter()
                .filter_map(|i| {
                    i.get("diagnostics")
                        .and_then(Value::as_str)
                        .or_else(|| i.pointer("/details/text").and_then(Value::as_str))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_in_every_style() {
        assert_eq!(parse_status("201"), Some(201));
        assert_eq!(parse_status("201 Created"), Some(201));
        assert_eq!(parse_status("HTTP/1.1 429 Too Many Requests"), Some(429));
        assert_eq!(parse_status(" 400 "), Some(400));
        assert_eq!(parse_status("Created"), None);
        assert_eq!(parse_status("2010"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn outcomes_follow_request_order_and_missing_entries_fail() {
        let resp = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "201 Created", "location": "Patient/a/_history/1"}},
            {"response": {"status": "429", "outcome": operation_outcome("error", "throttled", "slow down")}},
            {"response": {}}
        ]});
        let reply: BatchReply = serde_json::from_value(resp).unwrap();
        let out = read_batch_response(reply, 4);
        assert_eq!(out.len(), 4);
        assert!(out[0].is_success());
        assert_eq!(out[1].status, 429);
        assert_eq!(diagnostics(out[1].outcome.as_ref().unwrap()), "slow down");
        assert_eq!(out[2].status, 0);
        assert_eq!(out[3].status, 0);
        assert!(!out[3].is_success());
    }
}
