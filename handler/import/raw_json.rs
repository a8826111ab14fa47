//! Rewriting references inside a resource's JSON text without building a JSON tree: a tree of
//! a Bundle costs ~20 times its text in memory and most of the CPU of a load, while the only
//! edits the loader makes are `reference` strings and the top-level `id`.
//!
//! The scanner expects text `serde_json` has already accepted as valid JSON. Keys are compared
//! as written (a key spelled with `\u` escapes is not recognised; FHIR JSON never does that).

use std::borrow::Cow;

/// A JSON string in the text: `start..end` covers its quotes; `value` borrows the text unless
/// the string has escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StringSpan<'a> {
    pub start: usize,
    pub end: usize,
    pub value: Cow<'a, str>,
}

/// What the loader reads and edits in one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceScan<'a> {
    /// Every string value under a key named `reference`, at any depth, in text order.
    pub references: Vec<StringSpan<'a>>,
    /// The top-level `id` string, if any.
    pub id: Option<StringSpan<'a>>,
    /// The top-level `resourceType` string, if any.
    pub resource_type: Option<StringSpan<'a>>,
    /// Offset of the top-level `{`, when the text is an object.
    pub object_start: Option<usize>,
}

struct Frame {
    is_object: bool,
    expecting_key: bool,
    key: (usize, usize),
}

/// Finds the references and the top-level id and resourceType of one JSON object.
pub fn scan_resource(text: &str) -> ResourceScan<'_> {
    let b = text.as_bytes();
    let mut scan = ResourceScan::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            open @ (b'{' | b'[') => {
                if stack.is_empty() && open == b'{' {
                    scan.object_start = Some(i);
                }
                stack.push(Frame {
                    is_object: open == b'{',
                    expecting_key: open == b'{',
                    key: (0, 0),
                });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
            }
            b',' => {
                if let Some(top) = stack.last_mut()
                    && top.is_object
                {
                    top.expecting_key = true;
                }
                i += 1;
            }
            b':' => {
                if let Some(top) = stack.last_mut() {
                    top.expecting_key = false;
                }
                i += 1;
            }
            b'"' => {
                let start = i;
                let mut j = i + 1;
                let mut escaped = false;
                // String bodies are most of a resource: jump to the next quote or backslash.
                loop {
                    match memchr::memchr2(b'"', b'\\', &b[j.min(b.len())..]) {
                        Some(k) if b[j + k] == b'\\' => {
                            escaped = true;
                            j += k + 2;
                        }
                        Some(k) => {
                            j += k;
                            break;
                        }
                        None => {
                            j = b.len();
                            break;
                        }
                    }
                }
                let end = (j + 1).min(b.len());
                let depth = stack.len();
                if let Some(top) = stack.last_mut()
                    && top.is_object
                {
                    if top.expecting_key {
                        top.key = (start + 1, j);
                    } else {
                        let key = &text[top.key.0..top.key.1];
                        let top_level = depth == 1 && (key == "id" || key == "resourceType");
                        if key == "reference" || top_level {
                            let value = if escaped {
                                Cow::Owned(
                                    serde_json::from_str(&text[start..end]).unwrap_or_default(),
                                )
                            } else {
                                Cow::Borrowed(&text[start + 1..j])
                            };
                            let span = StringSpan { start, end, value };
                            match key {
                                "reference" => scan.references.push(span),
                                "id" => scan.id = Some(span),
                                _ => scan.resource_type = Some(span),
                            }
                        }
                    }
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    scan
}

/// Appends the resource text to `out` with references replaced (`replace` returns the new
/// value, or `None` to keep one) and the top-level id set to `id` (replaced, or inserted first).
pub fn rewrite_into<'r>(
    out: &mut String,
    text: &str,
    scan: &ResourceScan<'_>,
    replace: impl Fn(&str) -> Option<&'r str>,
    id: &str,
) {
    let mut edits: Vec<(usize, usize, Edit<'_>)> = scan
        .references
        .iter()
        .filter_map(|r| replace(&r.value).map(|new| (r.start, r.end, Edit::String(new))))
        .collect();
    match &scan.id {
        Some(span) if span.value == id => {}
        Some(span) => edits.push((span.start, span.end, Edit::String(id))),
        None => {
            let at = scan.object_start.map_or(0, |o| o + 1);
            let rest = text[at..].trim_start();
            let comma = !rest.starts_with('}');
            edits.push((at, at, Edit::IdMember { id, comma }));
        }
    }
    edits.sort_by_key(|e| e.0);
    out.reserve(text.len() + edits.len() * 48);
    let mut at = 0;
    for (start, end, edit) in edits {
        out.push_str(&text[at..start]);
        match edit {
            Edit::String(value) => push_json_string(out, value),
            Edit::IdMember { id, comma } => {
                out.push_str("\"id\":");
                push_json_string(out, id);
                if comma {
                    out.push(',');
                }
            }
        }
        at = end;
    }
    out.push_str(&text[at..]);
}

/// One edit of a resource's text.
enum Edit<'a> {
    /// A string value replaced.
    String(&'a str),
    /// `"id":"..."` inserted as the first member.
    IdMember { id: &'a str, comma: bool },
}

/// Appends `s` as a JSON string (quoted, escaped only where JSON needs it).
pub fn push_json_string(out: &mut String, s: &str) {
    if needs_escape(s) {
        out.push_str(&json_string(s));
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// Whether `s` holds a byte JSON must escape. Every byte is looked at (no early exit), which
/// lets the compiler check many bytes per instruction: the strings are short ids and references.
fn needs_escape(s: &str) -> bool {
    s.bytes().fold(false, |found, b| {
        found | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn rewrite<'r>(
        text: &str,
        scan: &ResourceScan<'_>,
        replace: impl Fn(&str) -> Option<&'r str>,
        id: &str,
    ) -> String {
        let mut out = String::new();
        rewrite_into(&mut out, text, scan, replace, id);
        out
    }

    fn values<'a>(scan: &'a ResourceScan<'_>) -> Vec<&'a str> {
        scan.references.iter().map(|r| r.value.as_ref()).collect()
    }

    #[test]
    fn finds_references_at_any_depth_but_not_look_alikes() {
        let text = r#"{ "resourceType" : "Observation", "id":"o1",
            "subject": {"reference": "urn:uuid:p"},
            "note": [{"text": "reference"}, {"text": "\"reference\": \"x\""}],
            "extension": [{"url": "u", "valueReference": {"reference":"Practitioner?identifier=a|1"}}],
            "contained": [{"resourceType": "Medication", "id": "m1"}],
            "derivedFrom": [{"reference": "urn:uuid:a\"b"}, {"display": "reference"}]}"#;
        let scan = scan_resource(text);
        assert_eq!(
            values(&scan),
            vec!["urn:uuid:p", "Practitioner?identifier=a|1", "urn:uuid:a\"b"]
        );
        assert_eq!(
            scan.id.as_ref().map(|s| s.value.as_ref()),
            Some("o1"),
            "the contained id is not the top-level one"
        );
        assert_eq!(
            scan.resource_type.as_ref().map(|s| s.value.as_ref()),
            Some("Observation"),
            "the contained resourceType is not the top-level one"
        );
    }

    #[test]
    fn rewriting_matches_a_tree_edit() {
        let original = json!({"resourceType": "Encounter", "id": "old",
            "subject": {"reference": "urn:uuid:p"},
            "participant": [{"individual": {"reference": "Practitioner/x", "display": "Dr"}}],
            "serviceProvider": {"reference": "urn:uuid:org"}});
        let text = serde_json::to_string_pretty(&original).unwrap();
        let scan = scan_resource(&text);
        let targets: std::collections::HashMap<&str, String> = scan
            .references
            .iter()
            .filter_map(|r| r.value.strip_prefix("urn:uuid:"))
            .map(|u| (u, format!("X/{u}")))
            .collect();
        let out = rewrite(
            &text,
            &scan,
            |r| {
                r.strip_prefix("urn:uuid:")
                    .and_then(|u| targets.get(u))
                    .map(String::as_str)
            },
            "new",
        );
        let got: Value = serde_json::from_str(&out).unwrap();
        let mut expected = original.clone();
        expected["id"] = json!("new");
        expected["subject"]["reference"] = json!("X/p");
        expected["serviceProvider"]["reference"] = json!("X/org");
        assert_eq!(got, expected);
    }

    #[test]
    fn a_missing_id_is_inserted() {
        let text = r#"{"resourceType":"Patient","name":[{"family":"A"}]}"#;
        let out = rewrite(text, &scan_resource(text), |_| None, "p1");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["id"], "p1");
        assert_eq!(v["name"][0]["family"], "A");
        let empty = "{ }";
        let v: Value =
            serde_json::from_str(&rewrite(empty, &scan_resource(empty), |_| None, "e")).unwrap();
        assert_eq!(v, json!({"id": "e"}));
    }
}
