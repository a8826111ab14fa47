//! Reading an uploaded Bundle's text without building a JSON tree: its kind and entry count,
//! its entries with their resources as borrowed raw text, and which entries reference which,
//! decided from the file alone so that every try of a work item agrees.

use std::borrow::Cow;

use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::encoding::json_error_text;
use super::raw_json::ResourceScan;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleKind {
    Transaction,
    Batch,
}

/// The top of a Bundle file: enough to decide whether it can be loaded, without building a
/// tree of its entries.
#[derive(Deserialize)]
struct BundleHead<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    entry: Vec<IgnoredAny>,
}

/// The kind and entry count of a Bundle file, or why it is not a loadable Bundle.
pub fn bundle_kind(text: &str) -> Result<(BundleKind, usize), String> {
    let head: BundleHead = serde_json::from_str(text).map_err(|e| {
        json_error_text(
            &e,
            "the file",
            "a FHIR resource (an object whose resourceType and type are strings)",
        )
    })?;
    Ok((
        kind_of(head.resource_type.as_deref(), head.kind.as_deref())?,
        head.entry.len(),
    ))
}

/// Reads a Bundle file in one pass: its kind, and its entries with their resources kept as
/// text borrowed from the file. A file that does not parse is read again by `bundle_kind`,
/// only to say what is wrong with it.
pub(crate) fn read_bundle(text: &str) -> Result<(BundleKind, RawBundle<'_>), String> {
    match serde_json::from_str::<RawBundle>(text) {
        Ok(bundle) => Ok((
            kind_of(bundle.resource_type.as_deref(), bundle.kind.as_deref())?,
            bundle,
        )),
        Err(e) => {
            bundle_kind(text)?;
            Err(json_error_text(
                &e,
                "the Bundle",
                "a Bundle whose entry is an array of objects (fullUrl a string, resource and request objects)",
            ))
        }
    }
}

fn kind_of(resource_type: Option<&str>, kind: Option<&str>) -> Result<BundleKind, String> {
    match resource_type {
        Some("Bundle") => {}
        Some(other) => return Err(format!("the file holds a {other}, not a Bundle")),
        None => return Err("the file is JSON without a resourceType, not a FHIR Bundle".into()),
    }
    match kind {
        Some("transaction") => Ok(BundleKind::Transaction),
        Some("batch") => Ok(BundleKind::Batch),
        Some(other) => Err(format!(
            "Bundle.type is {other:?}; only transaction and batch Bundles can be loaded"
        )),
        None => {
            Err("the Bundle has no type; only transaction and batch Bundles can be loaded".into())
        }
    }
}

/// One entry of an uploaded Bundle; its resource stays text borrowed from the file.
#[derive(Deserialize)]
pub(crate) struct RawEntry<'a> {
    #[serde(rename = "fullUrl", borrow, default)]
    pub(crate) full_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) resource: Option<&'a RawValue>,
    /// Kept as written: entries sent unchanged (DELETE, GET ...) carry it as it is.
    #[serde(borrow, default)]
    pub(crate) request: Option<&'a RawValue>,
}

/// What the loader reads of an entry's `request`, borrowed from the file.
#[derive(Deserialize)]
pub(crate) struct RequestHead<'a> {
    #[serde(borrow, default)]
    pub(crate) method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) url: Option<Cow<'a, str>>,
    #[serde(rename = "ifNoneExist", borrow, default)]
    pub(crate) if_none_exist: Option<Cow<'a, str>>,
}

impl<'a> RawEntry<'a> {
    /// The entry's `request`: `None` when it has none, an error when it is not an object with
    /// string members.
    pub(crate) fn request_head(&self) -> Option<Result<RequestHead<'a>, String>> {
        let raw = self.request?.get();
        if !raw.starts_with('{') {
            return Some(Err("its request is not an object".into()));
        }
        Some(serde_json::from_str(raw).map_err(|e| format!("its request cannot be read: {e}")))
    }
}

#[derive(Deserialize)]
pub(crate) struct RawBundle<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) entry: Vec<RawEntry<'a>>,
}

/// `resourceType` and `id` of a resource's text.
pub(crate) struct ResourceHead<'a> {
    pub(crate) resource_type: Option<Cow<'a, str>>,
    pub(crate) id: Option<Cow<'a, str>>,
}

impl<'a> ResourceHead<'a> {
    /// The head the scan of a resource found; `None` when the text is not a JSON object.
    pub(crate) fn of(scan: &ResourceScan<'a>) -> Option<Self> {
        scan.object_start?;
        Some(ResourceHead {
            resource_type: scan.resource_type.as_ref().map(|s| s.value.clone()),
            id: scan.id.as_ref().map(|s| s.value.clone()),
        })
    }
}

/// Which entries each entry references, from the file alone: a reference naming another
/// entry's fullUrl, its `Type/id` as written, or its `ifNoneExist` criteria.
pub(crate) fn static_dependencies(
    entries: &[RawEntry<'_>],
    requests: &[Option<Result<RequestHead<'_>, String>>],
    heads: &[Option<ResourceHead<'_>>],
    scans: &[ResourceScan<'_>],
) -> Vec<Vec<usize>> {
    // Borrowed keys: no string is built per entry (criteria are rare and owned).
    let mut full_urls: FxHashMap<&str, usize> = FxHashMap::default();
    full_urls.reserve(entries.len());
    let mut ids: FxHashMap<(&str, &str), usize> = FxHashMap::default();
    ids.reserve(entries.len());
    let mut criteria: FxHashMap<String, usize> = FxHashMap::default();
    for (i, ((entry, head), request)) in entries.iter().zip(heads).zip(requests).enumerate() {
        if let Some(full_url) = entry.full_url.as_deref() {
            full_urls.entry(full_url).or_insert(i);
        }
        let Some(head) = head else { continue };
        let Some(ty) = head.resource_type.as_deref() else {
            continue;
        };
        if let Some(id) = head.id.as_deref() {
            ids.entry((ty, id)).or_insert(i);
        }
        if let Some(Ok(RequestHead {
            if_none_exist: Some(c),
            ..
        })) = request
        {
            criteria
                .entry(format!("{ty}?{}", c.trim_start_matches('?')))
                .or_insert(i);
        }
    }
    let find = |r: &str| -> Option<usize> {
        full_urls.get(r).copied().or_else(|| {
            if let Some((ty, rest)) = r.split_once('/') {
                let id = rest.split('/').next().unwrap_or(rest);
                ids.get(&(ty, id)).copied()
            } else if r.contains('?') {
                criteria.get(r).copied()
            } else {
                None
            }
        })
    };
    scans
        .iter()
        .enumerate()
        .map(|(i, scan)| {
            let mut deps: Vec<usize> = scan
                .references
                .iter()
                .filter_map(|r| find(&r.value))
                .filter(|&j| j != i)
                .collect();
            deps.sort_unstable();
            deps.dedup();
            deps
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn txn(entries: Value) -> Value {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    }

    #[test]
    fn only_transaction_and_batch_bundles_are_accepted() {
        let kind = |v: Value| bundle_kind(&v.to_string()).map(|(k, _)| k);
        assert_eq!(kind(txn(json!([{}, {}]))), Ok(BundleKind::Transaction));
        assert_eq!(bundle_kind(&txn(json!([{}, {}])).to_string()).unwrap().1, 2);
        assert_eq!(
            kind(json!({"resourceType": "Bundle", "type": "batch"})),
            Ok(BundleKind::Batch)
        );
        let e = kind(json!({"resourceType": "Bundle", "type": "collection"})).unwrap_err();
        assert!(e.contains("collection"), "{e}");
        let e = kind(json!({"resourceType": "Group"})).unwrap_err();
        assert!(e.contains("Group"), "{e}");
        assert!(kind(json!({"a": 1})).is_err());
        assert!(
            bundle_kind("{\"resourceType\": \"Bundle\"")
                .unwrap_err()
                .contains("ends before its JSON is complete")
        );
        assert!(
            bundle_kind("{\"resourceType\": Bundle}")
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(bundle_kind("[1, 2]").is_err());
    }
}
