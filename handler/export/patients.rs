//! Finding the patients of an export: ids from a search page (Patients, resources with a
//! Patient reference field, or Groups and their members), the page's `next` link wherever it
//! sits in `link[]`, and batches of ids sized so that every include URL stays under a limit.

use std::ops::Range;

use serde_json::Value;
use url::Url;

use super::definition::Include;
use crate::import::references::is_fhir_id;

/// The `next` link of a search page, wherever it is in `link[]` (fhir-loader only looked at
/// the first link).
pub fn next_link(page: &Value) -> Option<&str> {
    page.get("link")?
        .as_array()?
        .iter()
        .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))?
        .get("url")?
        .as_str()
        .filter(|u| !u.is_empty())
}

/// Patient ids found in a search result (or a single resource such as a Group read by id).
/// Returns how many candidate references were not Patients on this server (skipped).
pub fn patient_ids(page: &Value, field: &str, base: &Url, out: &mut Vec<String>) -> usize {
    let mut skipped = 0;
    let resources: Vec<&Value> =
        if page.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            page.get("entry")
                .and_then(Value::as_array)
                .map(|entries| {
                    entries
                        .iter()
                        .filter(|e| {
                            // OperationOutcome warnings and _include'd resources are not matches.
                            e.pointer("/search/mode")
                                .and_then(Value::as_str)
                                .unwrap_or("match")
                                == "match"
                        })
                        .filter_map(|e| e.get("resource"))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            vec![page]
        };
    for resource in resources {
        let kind = resource.get("resourceType").and_then(Value::as_str);
        // A Group (read by id, or found by a Group search) contributes its members.
        if kind == Some("Group") {
            for member in resource
                .get("member")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match member
                    .pointer("/entity/reference")
                    .and_then(Value::as_str)
                    .and_then(|r| patient_id_from_reference(r, base))
                {
                    Some(id) => out.push(id),
                    None => skipped += 1,
                }
            }
            continue;
        }
        if field == "id" {
            match (kind, resource.get("id").and_then(Value::as_str)) {
                (Some("Patient"), Some(id)) => out.push(id.to_string()),
                _ => skipped += 1,
            }
            continue;
        }
        let mut value = Some(resource);
        for part in field.split('.') {
            value = value.and_then(|v| v.get(part));
        }
        let references: Vec<&Value> = match value {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(v) => vec![v],
            None => Vec::new(),
        };
        for reference in references {
            match reference
                .get("reference")
                .and_then(Value::as_str)
                .and_then(|r| patient_id_from_reference(r, base))
            {
                Some(id) => out.push(id),
                None => skipped += 1,
            }
        }
    }
    skipped
}

/// The Patient id of `Patient/x`, `Patient/x/_history/2` or `<base>/Patient/x`; `None` for
/// other types, other servers and `urn:` references.
pub fn patient_id_from_reference(reference: &str, base: &Url) -> Option<String> {
    let prefix = format!("{}/", base.as_str().trim_end_matches('/'));
    let relative = if reference.contains("://") {
        reference.strip_prefix(&prefix)?
    } else {
        reference
    };
    let mut parts = relative.split('/');
    if parts.next()? != "Patient" {
        return None;
    }
    let id = parts.next()?;
    is_fhir_id(id).then(|| id.to_string())
}

/// Keeps the first occurrence of every id, in order.
pub fn dedupe(mut ids: Vec<String>) -> Vec<String> {
    // The set borrows the ids (no second copy of each): a million 36-character ids peak at
    // 108 MB here (72 MB of them the ids themselves), against 170 MB with a copy in the set.
    let first: Vec<bool> = {
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        ids.iter().map(|id| seen.insert(id.as_str())).collect()
    };
    let mut first = first.into_iter();
    ids.retain(|_| first.next().unwrap_or(false));
    ids
}

/// The most ids one search names: at most `ids_per_search`, and few enough that the cohort
/// makes at least `searches_wanted` searches across its `includes` (so the FHIR client's
/// concurrency has work for every slot: a search is paged one page after another, and on a
/// server that pages by offset a long one costs more than its share). A 42-patient export of 6
/// includes with 16 searches wanted: 3 batches of 14, not one of 42.
pub fn ids_per_batch(
    patients: usize,
    includes: usize,
    ids_per_search: usize,
    searches_wanted: usize,
) -> usize {
    let batches_wanted = searches_wanted.div_ceil(includes.max(1)).max(1);
    patients
        .div_ceil(batches_wanted)
        .clamp(1, ids_per_search.max(1))
}

/// Cuts `ids` into consecutive batches of at most `max_ids` such that every include, with the
/// batch's ids joined by commas and `extra` more characters (base URL, `_count`), stays within
/// `max_url` characters. An id too long to fit even alone gets a batch of its own.
pub fn batch_ids(
    ids: &[String],
    includes: &[Include],
    extra: usize,
    max_url: usize,
    max_ids: usize,
) -> Vec<Range<usize>> {
    let template = includes
        .iter()
        .map(|i| i.search.len() - super::definition::IDS_PLACEHOLDER.len())
        .max()
        .unwrap_or(0);
    let placeholders = includes
        .iter()
        .map(|i| i.search.matches(super::definition::IDS_PLACEHOLDER).count())
        .max()
        .unwrap_or(1)
        .max(1);
    let budget = max_url.saturating_sub(template + extra);
    let mut batches = Vec::new();
    let mut start = 0;
    let mut length = 0;
    for (i, id) in ids.iter().enumerate() {
        let added = (id.len() + usize::from(i > start)) * placeholders;
        if i > start && (length + added > budget || i - start >= max_ids) {
            batches.push(start..i);
            start = i;
            length = id.len() * placeholders;
        } else {
            length += added;
        }
    }
    if start < ids.len() {
        batches.push(start..ids.len());
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Url {
        Url::parse("http://h:1/fhir").unwrap()
    }

    #[test]
    fn next_link_is_found_anywhere_in_link() {
        let page =
            json!({"link": [{"relation": "self", "url": "s"}, {"relation": "next", "url": "n"}]});
        assert_eq!(next_link(&page), Some("n"));
        assert_eq!(
            next_link(&json!({"link": [{"relation": "self", "url": "s"}]})),
            None
        );
    }

    #[test]
    fn ids_from_every_reference_form() {
        let page = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Coverage", "subscriber": {"reference": "Patient/a"}}},
            {"resource": {"resourceType": "Coverage", "subscriber": {"reference": "http://h:1/fhir/Patient/b/_history/3"}}},
            {"resource": {"resourceType": "Coverage", "subscriber": {"reference": "https://other/fhir/Patient/c"}}},
            {"resource": {"resourceType": "Coverage", "subscriber": {"reference": "urn:uuid:1234"}}},
            {"resource": {"resourceType": "Coverage", "subscriber": {"reference": "RelatedPerson/r"}}},
            {"resource": {"resourceType": "Coverage"}},
            {"resource": {"resourceType": "CareTeam", "subscriber": [{"reference": "Patient/d"}, {"reference": "Patient/e"}]}},
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
        ]});
        let mut ids = Vec::new();
        let skipped = patient_ids(&page, "subscriber", &base(), &mut ids);
        assert_eq!(ids, ["a", "b", "d", "e"]);
        assert_eq!(skipped, 3);
    }

    #[test]
    fn ids_from_patients_and_groups() {
        let page = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "p2"}},
            {"resource": {"resourceType": "Organization", "id": "o"}, "search": {"mode": "include"}},
        ]});
        let mut ids = Vec::new();
        patient_ids(&page, "id", &base(), &mut ids);
        assert_eq!(ids, ["p1", "p2"]);
        let group = json!({"resourceType": "Group", "member": [
            {"entity": {"reference": "Patient/g1"}}, {"entity": {"reference": "Patient/g2"}},
            {"entity": {"reference": "Device/x"}}]});
        let mut ids = Vec::new();
        assert_eq!(patient_ids(&group, "id", &base(), &mut ids), 1);
        assert_eq!(ids, ["g1", "g2"]);
        assert_eq!(dedupe(vec!["a".into(), "b".into(), "a".into()]), ["a", "b"]);
    }

    #[test]
    fn batches_keep_every_include_url_under_the_limit() {
        let includes = [
            Include {
                search: "Patient?_id=$IDS".into(),
                resource_type: "Patient".into(),
            },
            Include {
                search: "ExplanationOfBenefit?patient=$IDS&_count=50".into(),
                resource_type: "ExplanationOfBenefit".into(),
            },
        ];
        let ids: Vec<String> = (0..1000).map(|i| format!("{:036}", i)).collect();
        let extra = "http://h:1/fhir/".len() + "&_count=500".len();
        let batches = batch_ids(&ids, &includes, extra, 2048, usize::MAX);
        assert_eq!(batches.first().unwrap().start, 0);
        assert_eq!(batches.last().unwrap().end, 1000);
        for pair in batches.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for (n, b) in batches.iter().enumerate() {
            for inc in &includes {
                let url = format!(
                    "http://h:1/fhir/{}&_count=500",
                    inc.for_ids(&ids[b.clone()])
                );
                assert!(url.len() <= 2048, "{}", url.len());
            }
            // Not a fixed size: as many as fit (a 37-character id and a comma each).
            assert!(b.len() >= 50 || n == batches.len() - 1, "{}", b.len());
        }
        assert_eq!(
            batch_ids(&[], &includes, extra, 2048, usize::MAX),
            Vec::<Range<usize>>::new()
        );
        let huge = vec!["x".repeat(5000)];
        assert_eq!(batch_ids(&huge, &includes, extra, 2048, 20), vec![0..1]);
        // At most `max_ids` per batch, the URL limit still holding.
        let small = batch_ids(&ids, &includes, extra, 2048, 20);
        assert_eq!(small.len(), 50);
        assert!(small.iter().all(|b| b.len() == 20));
    }

    #[test]
    fn small_cohorts_are_spread_over_enough_searches() {
        // The issue's 42 patients: 3 batches of 14 across 6 includes for 16 searches.
        assert_eq!(ids_per_batch(42, 6, 20, 16), 14);
        assert_eq!(ids_per_batch(10, 6, 20, 16), 4);
        assert_eq!(ids_per_batch(1, 6, 20, 16), 1);
        // Large cohorts: the cap.
        assert_eq!(ids_per_batch(300, 6, 20, 16), 20);
        // One include: as many batches as searches wanted.
        assert_eq!(ids_per_batch(40, 1, 20, 16), 3);
    }
}
