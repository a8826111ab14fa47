//! One page of search results, read without building a JSON tree: each resource is kept as
//! the server's text (made single-line when the server pretty-prints) and becomes a staged
//! line `Type \t id \t resource \n`, so the composer can route and de-duplicate without
//! parsing resources again.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct SearchPage<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(default)]
    total: Option<u64>,
    #[serde(default)]
    link: Vec<PageLink>,
    #[serde(borrow, default)]
    entry: Vec<PageEntry<'a>>,
}

#[derive(Deserialize)]
struct PageLink {
    #[serde(default)]
    relation: String,
    #[serde(default)]
    url: String,
}

#[derive(Deserialize)]
struct PageEntry<'a> {
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(default)]
    search: Option<EntrySearch>,
}

#[derive(Deserialize)]
struct EntrySearch {
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// What a page contributed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PageLines {
    /// Staged lines, one per resource.
    pub text: String,
    /// Resources per type on this page, in first-seen order.
    pub counts: Vec<(String, u64)>,
    pub next: Option<String>,
    /// Entries skipped: OperationOutcome notes (`search.mode = outcome`), resources without id.
    pub skipped: u64,
    /// The Bundle's `total`, when the server gave one, and the entries on this page: how many
    /// pages the search has, roughly.
    pub total: Option<u64>,
    pub entries: u64,
}

/// Turns a searchset page into staged lines; `Err` when it is not a searchset Bundle.
pub fn stage_page(bytes: &[u8]) -> Result<PageLines, String> {
    let page: SearchPage =
        serde_json::from_slice(bytes).map_err(|e| format!("not a search result: {e}"))?;
    if page.resource_type.as_deref() != Some("Bundle") {
        return Err(format!(
            "not a search result: resourceType is {:?}, not Bundle",
            page.resource_type.as_deref().unwrap_or("missing")
        ));
    }
    let mut out = PageLines {
        next: page
            .link
            .into_iter()
            .find(|l| l.relation == "next" && !l.url.is_empty())
            .map(|l| l.url),
        total: page.total,
        entries: page.entry.len() as u64,
        ..Default::default()
    };
    for entry in page.entry {
        let mode = entry.search.and_then(|s| s.mode);
        let Some(raw) = entry.resource else { continue };
        if mode.as_deref() == Some("outcome") {
            out.skipped += 1;
            continue;
        }
        let head: Head = match serde_json::from_str(raw.get()) {
            Ok(h) => h,
            Err(_) => {
                out.skipped += 1;
                continue;
            }
        };
        let Some(id) = head
            .id
            .filter(|id| !id.is_empty() && !id.contains(['\t', '\n']))
        else {
            out.skipped += 1;
            continue;
        };
        if head.resource_type.contains(['\t', '\n']) {
            out.skipped += 1;
            continue;
        }
        out.text.push_str(&head.resource_type);
        out.text.push('\t');
        out.text.push_str(&id);
        out.text.push('\t');
        push_single_line(&mut out.text, raw.get());
        out.text.push('\n');
        match out
            .counts
            .iter_mut()
            .find(|(t, _)| t.as_str() == head.resource_type)
        {
            Some((_, n)) => *n += 1,
            None => out.counts.push((head.resource_type.to_string(), 1)),
        }
    }
    Ok(out)
}

/// Appends JSON text without its line breaks (JSON strings cannot hold raw line breaks, so
/// every one is whitespace between tokens); other whitespace is kept as the server sent it.
fn push_single_line(out: &mut String, json: &str) {
    if !json.contains(['\n', '\r']) {
        out.push_str(json);
        return;
    }
    let mut in_string = false;
    let mut escaped = false;
    let mut after_break = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '\n' | '\r' => after_break = true,
            ' ' | '\t' if after_break => {}
            _ => {
                after_break = false;
                if c == '"' {
                    in_string = true;
                }
                out.push(c);
            }
        }
    }
}

/// A staged line split into (type, id, resource JSON); `None` for a malformed line.
pub fn split_staged(line: &[u8]) -> Option<(&str, &str, &[u8])> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let first = line.iter().position(|&b| b == b'\t')?;
    let second = first + 1 + line[first + 1..].iter().position(|&b| b == b'\t')?;
    let kind = std::str::from_utf8(&line[..first]).ok()?;
    let id = std::str::from_utf8(&line[first + 1..second]).ok()?;
    Some((kind, id, &line[second + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_become_staged_lines() {
        let page = br#"{"resourceType":"Bundle","type":"searchset",
          "link":[{"relation":"self","url":"s"},{"relation":"next","url":"http://h/fhir/Observation?page=2"}],
          "entry":[
            {"resource":{"resourceType":"Observation","id":"o1","valueString":"a\tb \"x\" \n"},"search":{"mode":"match"}},
            {"resource":{
                "resourceType": "Patient",
                "id": "p1",
                "name": [ { "text": "line one  two" } ]
             },"search":{"mode":"include"}},
            {"resource":{"resourceType":"OperationOutcome","issue":[]},"search":{"mode":"outcome"}},
            {"resource":{"resourceType":"Observation"}},
            {"fullUrl":"x"}
          ]}"#;
        let lines = stage_page(page).unwrap();
        assert_eq!(
            lines.next.as_deref(),
            Some("http://h/fhir/Observation?page=2")
        );
        assert_eq!(lines.skipped, 2);
        assert_eq!(
            lines.counts,
            vec![("Observation".to_string(), 1), ("Patient".to_string(), 1)]
        );
        let staged: Vec<&str> = lines.text.lines().collect();
        assert_eq!(staged.len(), 2);
        let (kind, id, json) = split_staged(staged[0].as_bytes()).unwrap();
        assert_eq!((kind, id), ("Observation", "o1"));
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(v["valueString"], "a\tb \"x\" \n");
        let (_, _, json) = split_staged(staged[1].as_bytes()).unwrap();
        let text = std::str::from_utf8(json).unwrap();
        assert!(!text.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            v["name"][0]["text"], "line one  two",
            "spaces inside strings are kept"
        );
    }

    #[test]
    fn non_bundles_are_refused() {
        assert!(stage_page(br#"{"resourceType":"OperationOutcome"}"#).is_err());
        assert!(stage_page(b"<html>").is_err());
        assert_eq!(split_staged(b"no tabs"), None);
    }
}
