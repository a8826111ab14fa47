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
    /// The deepest nesting of objects and arrays (the resource itself is 1).
    pub depth: usize,
    /// The first string escape that is valid JSON but no Unicode text (a lone UTF-16
    /// surrogate such as `\ud800`), described.
    pub bad_escape: Option<String>,
}

/// Deepest nesting of objects and arrays a resource may have. Servers on .NET refuse JSON
/// nested more than 64 levels (Newtonsoft's and System.Text.Json's default `MaxDepth`), and a
/// resource sits 3 levels into its batch Bundle; no real resource comes near it.
pub const MAX_RESOURCE_DEPTH: usize = 60;

impl ResourceScan<'_> {
    /// Why the server could not store this text faithfully although it is valid JSON, checked
    /// here so that the entry or line fails alone, with the reason, instead of making the
    /// server answer 500 to its whole batch.
    pub fn hazard(&self) -> Option<String> {
        if self.depth > MAX_RESOURCE_DEPTH {
            return Some(format!(
                "the resource's JSON is nested {} levels deep; at most {MAX_RESOURCE_DEPTH} are loaded",
                self.depth
            ));
        }
        self.bad_escape.clone()
    }
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
                scan.depth = scan.depth.max(stack.len());
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
                if escaped && scan.bad_escape.is_none() {
                    scan.bad_escape = unpaired_surrogate(&b[start + 1..j]);
                }
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

/// The first `\\uXXXX` escape in a JSON string's body that is half of a UTF-16 surrogate pair
/// without its other half: valid JSON, but no Unicode character (serde_json checks the rest
/// of the escape syntax).
fn unpaired_surrogate(body: &[u8]) -> Option<String> {
    let unit = |at: usize| -> Option<u16> {
        let hex = body.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'\\', &body[i..]) {
        i += k;
        if body.get(i + 1) != Some(&b'u') {
            i += 2;
            continue;
        }
        // (serde_json has checked the four hex digits.)
        let first = unit(i + 2)?;
        i += 6;
        match first {
            0xD800..=0xDBFF => {
                let low = (body.get(i..i + 2) == Some(b"\\u".as_slice()))
                    .then(|| unit(i + 2))
                    .flatten();
                if !low.is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) {
                    return Some(lone_surrogate(first));
                }
                i += 6;
            }
            0xDC00..=0xDFFF => return Some(lone_surrogate(first)),
            _ => {}
        }
    }
    None
}

fn lone_surrogate(unit: u16) -> String {
    format!(
        "a string holds the escape \\u{unit:04x}, half of a UTF-16 surrogate pair without its other half: it is no Unicode character, and FHIR strings must be Unicode text"
    )
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
    fn lone_surrogates_and_deep_nesting_are_hazards_and_pairs_are_not() {
        let hazard = |t: &str| scan_resource(t).hazard();
        assert_eq!(hazard(r#"{"a":"\ud83d\ude00 \u00e9 \n \\ud800"}"#), None);
        for bad in [
            r#"{"a":"x\ud800"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":["\uD83D"]}"#,
        ] {
            let why = hazard(bad).unwrap_or_else(|| panic!("{bad}"));
            assert!(why.contains("surrogate"), "{why}");
        }
        let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        assert_eq!(hazard(&deep(MAX_RESOURCE_DEPTH - 1)), None);
        let why = hazard(&deep(100_000)).unwrap();
        assert!(why.contains("100001 levels"), "{why}");
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
