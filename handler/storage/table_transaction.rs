//! Entity group transactions (`POST /$batch`): several writes to rows of one partition, applied
//! all together or not at all, in one request. The body is a `multipart/mixed` batch holding one
//! changeset; the answer holds one HTTP response per operation, or a single one naming the
//! operation that failed.

use std::fmt::Write as _;

use reqwest::Method;
use url::Url;

/// One write of a transaction.
#[derive(Clone, Copy, Debug)]
pub enum TransactionOp<'a> {
    /// Insert a new row (409 when it exists).
    Insert(&'a super::Entity),
    /// Replace the row if its ETag still matches (`*`, unconditionally, when it has none).
    Replace(&'a super::Entity),
}

/// What a transaction did.
#[derive(Debug, PartialEq, Eq)]
pub enum TransactionOutcome {
    /// Every operation applied; the rows' new ETags, in order.
    Applied(Vec<String>),
    /// Nothing applied: operation `index` (when the service says which) failed with `status`.
    Refused { index: Option<usize>, status: u16 },
}

/// One operation as an HTTP request inside the changeset.
pub(super) struct Part {
    pub method: Method,
    pub url: Url,
    pub if_match: Option<String>,
    pub json: Vec<u8>,
}

/// The `multipart/mixed` body and its boundary.
pub(super) fn body(parts: &[Part], id: &str) -> (String, Vec<u8>) {
    let batch = format!("batch_{id}");
    let changeset = format!("changeset_{id}");
    let mut out = String::new();
    let _ = write!(
        out,
        "--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
    );
    for (n, part) in parts.iter().enumerate() {
        let _ = write!(
            out,
            "--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n\
             {} {} HTTP/1.1\r\nContent-ID: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json;odata=nometadata\r\nPrefer: return-no-content\r\n\
             DataServiceVersion: 3.0;\r\n",
            part.method,
            part.url,
            n + 1
        );
        if let Some(etag) = &part.if_match {
            let _ = write!(out, "If-Match: {etag}\r\n");
        }
        out.push_str("\r\n");
        out.push_str(std::str::from_utf8(&part.json).expect("JSON is UTF-8"));
        out.push_str("\r\n");
    }
    let _ = write!(out, "--{changeset}--\r\n--{batch}--\r\n");
    (
        format!("multipart/mixed; boundary={batch}"),
        out.into_bytes(),
    )
}

/// Reads the responses out of a batch answer: each `HTTP/1.1 NNN` status line, the `ETag`
/// header after it, and (for a failure) the operation index the error message starts with
/// (`"1:The update condition..."`).
pub(super) fn outcome(text: &str, operations: usize) -> TransactionOutcome {
    let mut statuses = Vec::new();
    let mut etags: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
            let status = rest
                .split(' ')
                .next()
                .and_then(|s| s.parse::<u16>().ok())
                .unwrap_or(0);
            statuses.push(status);
            etags.push(String::new());
        } else if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("etag")
            && let Some(last) = etags.last_mut()
        {
            *last = value.trim().to_string();
        }
    }
    if statuses.len() == operations && statuses.iter().all(|s| (200..300).contains(s)) {
        return TransactionOutcome::Applied(etags);
    }
    let status = statuses
        .iter()
        .copied()
        .find(|s| !(200..300).contains(s))
        .unwrap_or(0);
    TransactionOutcome::Refused {
        index: failed_index(text).filter(|i| *i < operations),
        status,
    }
}

/// The index in `"value":"1:The update condition ..."` (the error message names the
/// operation that failed, counting from 0).
fn failed_index(text: &str) -> Option<usize> {
    let at = text.find("\"value\"")?;
    let rest = text[at + "\"value\"".len()..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start().strip_prefix('"')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with(':') {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_one_changeset_of_http_requests() {
        let url = Url::parse("http://127.0.0.1/acct/imports").unwrap();
        let parts = [
            Part {
                method: Method::POST,
                url: url.clone(),
                if_match: None,
                json: br#"{"a":1}"#.to_vec(),
            },
            Part {
                method: Method::PUT,
                url,
                if_match: Some("W/\"1\"".into()),
                json: br#"{"b":2}"#.to_vec(),
            },
        ];
        let (content_type, body) = body(&parts, "x");
        assert_eq!(content_type, "multipart/mixed; boundary=batch_x");
        let body = String::from_utf8(body).unwrap();
        assert!(body.starts_with(
            "--batch_x\r\nContent-Type: multipart/mixed; boundary=changeset_x\r\n\r\n--changeset_x\r\n"
        ));
        assert!(body.contains("POST http://127.0.0.1/acct/imports HTTP/1.1\r\n"));
        assert!(body.contains("If-Match: W/\"1\"\r\n\r\n{\"b\":2}\r\n"));
        assert!(body.ends_with("--changeset_x--\r\n--batch_x--\r\n"));
        assert_eq!(body.matches("Content-Transfer-Encoding: binary").count(), 2);
    }

    #[test]
    fn applied_answers_give_every_etag_in_order() {
        let text = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_1\r\n\r\n\
            --changesetresponse_1\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\
            ETag: W/\"datetime'1'\"\r\n\r\n--changesetresponse_1\r\nContent-Type: application/http\r\n\r\n\
            HTTP/1.1 204 No Content\r\netag: W/\"datetime'2'\"\r\n\r\n--changesetresponse_1--\r\n--batchresponse_1--\r\n";
        assert_eq!(
            outcome(text, 2),
            TransactionOutcome::Applied(vec![
                "W/\"datetime'1'\"".into(),
                "W/\"datetime'2'\"".into()
            ])
        );
    }

    #[test]
    fn a_refusal_names_the_failed_operation() {
        let text = "--batchresponse_1\r\n--changesetresponse_1\r\nContent-Type: application/http\r\n\r\n\
            HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\n\r\n\
            {\"odata.error\":{\"code\":\"UpdateConditionNotSatisfied\",\"message\":{\"lang\":\"en-US\",\
            \"value\":\"1:The update condition specified in the request was not satisfied.\"}}}\r\n";
        assert_eq!(
            outcome(text, 2),
            TransactionOutcome::Refused {
                index: Some(1),
                status: 412
            }
        );
        // No index, or one out of range: the failure is still reported, unattributed.
        assert_eq!(
            outcome(
                "HTTP/1.1 409 Conflict\r\n\r\n{\"value\":\"The entity exists\"}",
                2
            ),
            TransactionOutcome::Refused {
                index: None,
                status: 409
            }
        );
        assert_eq!(
            outcome("HTTP/1.1 409 Conflict\r\n\r\n{\"value\": \"7:exists\"}", 2),
            TransactionOutcome::Refused {
                index: None,
                status: 409
            }
        );
    }
}
