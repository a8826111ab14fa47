//! Rewriting references inside a resource's JSON text without building a JSON tree: a tree of
//! a Bundle costs ~20 times its text in memory and most of the CPU of a load, while the only
//! edits the loader makes are `reference` strings and the top-level `id`.
//!
//! The scanner expects text `serde_json` has already accepted as valid JSON. Keys are compared
//! as written (a key spelled with `\u` escapes is not recognised; FHIR JSON never does that).

/// A JSON string in the text: `start..end` covers its quotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StringSpan {
    pub start: usize,
    pub end: usize,
    pub value: String,
}

/// What the loader edits in one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceScan {
    /// Every string value under a key named `reference`, at any depth, in text order.
    pub references: Vec<StringSpan>,
    /// The top-level `id` string, if any.
    pub id: Option<StringSpan>,
    /// Offset of the top-level `{`.
    pub object_start: usize,
}

struct Frame {
    is_object: bool,
    expecting_key: bool,
    key: (usize, usize),
}

/// Finds the references and the top-level id of one JSON object.
pub fn scan_resource(text: &str) -> ResourceScan {
    let b = text.as_bytes();
    let mut scan = ResourceScan::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            open @ (b'{' | b'[') => {
                if stack.is_empty() && open == b'{' {
                    scan.object_start = i;
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
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' {
                        escaped = true;
                        j += 1;
                    }
                    j += 1;
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
                        let wanted_reference = key == "reference";
                        let wanted_id = key == "id" && depth == 1;
                        if wanted_reference || wanted_id {
                            let value = if escaped {
                                serde_json::from_str(&text[start..end]).unwrap_or_default()
                            } else {
                                text[start + 1..j].to_string()
                            };
                            let span = StringSpan { start, end, value };
                            if wanted_reference {
                                scan.references.push(span);
                            } else {
                                scan.id = Some(span);
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

/// The resource text with references replaced (`replace` returns the new value, or `None` to
/// keep one) and the top-level id set to `id` (replaced, or inserted first).
pub fn rewrite(
    text: &str,
    scan: &ResourceScan,
    replace: impl Fn(&str) -> Option<String>,
    id: &str,
) -> String {
    let mut edits: Vec<(usize, usize, String)> = scan
        .references
        .iter()
        .filter_map(|r| replace(&r.value).map(|new| (r.start, r.end, json_string(&new))))
        .collect();
    match &scan.id {
        Some(span) if span.value == id => {}
        Some(span) => edits.push((span.start, span.end, json_string(id))),
        None => {
            let at = scan.object_start + 1;
            let rest = text[at..].trim_start();
            let sep = if rest.starts_with('}') { "" } else { "," };
            edits.push((at, at, format!("\"id\":{}{sep}", json_string(id))));
        }
    }
    edits.sort_by_key(|e| e.0);
    let mut out = String::with_capacity(text.len() + edits.len() * 16);
    let mut at = 0;
    for (start, end, new) in edits {
        out.push_str(&text[at..start]);
        out.push_str(&new);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn values(scan: &ResourceScan) -> Vec<&str> {
        scan.references.iter().map(|r| r.value.as_str()).collect()
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
            scan.id.as_ref().map(|s| s.value.as_str()),
            Some("o1"),
            "the contained id is not the top-level one"
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
        let out = rewrite(
            &text,
            &scan,
            |r| r.strip_prefix("urn:uuid:").map(|u| format!("X/{u}")),
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
