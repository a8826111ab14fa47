//! NDJSON: cutting a file into byte ranges (whose lines `storage::lines::LineReader` reads)
//! and turning a line into a `PUT Type/id` batch entry.

use std::borrow::Cow;

use serde::Deserialize;

use super::encoding::{json_error_text, utf8_text};
use super::raw_json::{rewrite_into, scan_resource};
use super::references::{is_fhir_id, is_resource_type};
use super::transform::{derived_id, put_entry_json};

/// What one NDJSON line becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedLine {
    /// A batch entry (`PUT Type/id`) as serialised JSON.
    Entry {
        target: String,
        json: String,
    },
    Invalid(String),
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// Parses one line; `None` for a blank line (not an error: files often end with one).
pub fn parse_line(raw: &[u8]) -> Option<ParsedLine> {
    let line = trim_ascii(raw);
    if line.is_empty() || line == b"\xEF\xBB\xBF" {
        return None;
    }
    Some(resource_line(line).unwrap_or_else(ParsedLine::Invalid))
}

/// A non-blank line as a `PUT Type/id` entry, or why it cannot be one.
fn resource_line(line: &[u8]) -> Result<ParsedLine, String> {
    let text = utf8_text(line, "the line")?.trim_start();
    let head: Head = serde_json::from_str(text).map_err(|e| {
        json_error_text(
            &e,
            "the line",
            "a resource (an object whose resourceType and id are strings)",
        )
    })?;
    let Some(resource_type) = head.resource_type.filter(|t| is_resource_type(t)) else {
        return Err("the JSON object has no valid resourceType".into());
    };
    let scan = scan_resource(text);
    if let Some(hazard) = scan.hazard() {
        return Err(hazard);
    }
    let id = match head.id {
        Some(id) if is_fhir_id(&id) => id,
        Some(id) => {
            return Err(format!(
                "id {id:?} is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)"
            ));
        }
        // No id: derive one from the content so a re-upload maps to the same resource.
        None => Cow::Owned(derived_id(&format!("{resource_type}#{text}"))),
    };
    let target = format!("{resource_type}/{id}");
    let json = put_entry_json(&target, text.len(), |out| {
        rewrite_into(out, text, &scan, |_| None, &id)
    });
    Ok(ParsedLine::Entry { target, json })
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn lines_become_put_entries() {
        let p = parse_line(br#"{"resourceType":"Patient","id":"p1","name":[{"family":"X"}]}"#);
        let Some(ParsedLine::Entry { target, json }) = p else {
            panic!("{p:?}")
        };
        assert_eq!(target, "Patient/p1");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["request"]["url"], "Patient/p1");
        assert_eq!(v["request"]["method"], "PUT");
        assert_eq!(v["resource"]["name"][0]["family"], "X");
        let bundle: Value = serde_json::from_str(&crate::fhir::batch::batch_bundle_json([
            json.as_str(),
            json.as_str(),
        ]))
        .unwrap();
        assert_eq!(bundle["entry"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bad_lines_say_why_and_blank_lines_are_skipped() {
        assert_eq!(parse_line(b"   \r"), None);
        let bad = |l: &[u8]| match parse_line(l) {
            Some(ParsedLine::Invalid(r)) => r,
            other => panic!("{other:?}"),
        };
        assert!(
            bad(b"{\"resourceType\": \"Patient\"").contains("ends before its JSON is complete")
        );
        assert!(bad(b"[1,2]").contains("is JSON, but not a resource"));
        assert!(bad(b"{\"id\":\"x\"}").contains("resourceType"));
        assert!(
            bad(b"{\"resourceType\":\"Patient\",\"id\":\"a b\"}").contains("not a valid FHIR id")
        );
    }

    /// Lines a server cannot store faithfully, or that are no UTF-8 text, are refused alone
    /// with the reason (a deep line without an id used to panic the worker).
    #[test]
    fn hazardous_lines_are_refused_with_the_reason_and_a_bom_is_dropped() {
        let bad = |l: &[u8]| match parse_line(l) {
            Some(ParsedLine::Invalid(r)) => r,
            other => panic!("{other:?}"),
        };
        assert!(
            bad(br#"{"resourceType":"Patient","id":"s","name":[{"text":"\ud800"}]}"#)
                .contains("surrogate")
        );
        let deep = format!(
            r#"{{"resourceType":"Basic","x":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(bad(deep.as_bytes()).contains("nested 100001 levels"));
        assert!(bad(b"{\"resourceType\":\"Patient\",\"x\":\"\xff\"}").contains("not UTF-8"));
        assert!(!bad(b"[1]").contains("Head"), "no internal type names");
        let Some(ParsedLine::Entry { target, .. }) =
            parse_line(b"\xEF\xBB\xBF{\"resourceType\":\"Patient\",\"id\":\"bom\"}")
        else {
            panic!("a line after a byte-order mark loads")
        };
        assert_eq!(target, "Patient/bom");
        assert_eq!(parse_line(b"\xEF\xBB\xBF"), None);
    }

    #[test]
    fn lines_without_id_get_a_stable_derived_id() {
        let line = br#"{"resourceType":"Observation","status":"final"}"#;
        let a = parse_line(line).unwrap();
        assert_eq!(a, parse_line(line).unwrap());
        let ParsedLine::Entry { target, json } = a else {
            panic!()
        };
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            format!("Observation/{}", v["resource"]["id"].as_str().unwrap()),
            target
        );
    }
}
