//! From a kick-off's parameters to the searches of a standard export, checked against what the
//! FHIR server supports. Every refusal names the parameter and says what would work; under
//! `Prefer: handling=lenient` what cannot be honoured is left out and noted instead (never
//! widened: a filter that cannot be applied drops its type, not the filter).
//!
//! - `_outputFormat`: `application/fhir+ndjson`, `application/ndjson` or `ndjson`.
//! - `_since`: an instant; every search gets `_lastUpdated=gt<since>`.
//! - `_type`: types the server supports (default: all of them; at Patient and Group level,
//!   those of the Patient compartment).
//! - `_typeFilter`: `Type?criteria`, repeated or comma-separated; a type's filters are ORed
//!   (one search each), and each search also carries the type's patient criterion.
//! - `_elements`: passed on to every search.
//! - `patient` (POST, Patient level): the patients whose compartments are exported.
//! - `includeAssociatedData` and any other parameter: not supported.

use std::collections::{BTreeMap, BTreeSet};

use super::request::Asked;
use super::{BulkDefinition, Level, TypeSearch};
use crate::export::all::{format_instant, parse_instant};
use crate::export::capability::ServerCapabilities;
use crate::export::compartment::{criterion, patient_params};
use crate::export::definition::is_resource_type;
use crate::import::references::is_fhir_id;
use crate::protocol::reply::Reply;

/// Parameters of a `_typeFilter` that change what a search returns rather than which
/// resources match: refused, since the export decides paging, includes and content.
const RESULT_PARAMS: &[&str] = &[
    "_include",
    "_revinclude",
    "_count",
    "_sort",
    "_elements",
    "_summary",
    "_total",
    "_contained",
    "_containedType",
    "_format",
];

const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Refusals collected while planning, or notes under `handling=lenient`.
struct Checks {
    lenient: bool,
    notes: Vec<String>,
}

impl Checks {
    /// `Err` (400) for something not supported, unless lenient: then it is noted.
    fn unsupported(&mut self, why: String) -> Result<(), Reply> {
        if self.lenient {
            self.notes
                .push(format!("ignored (Prefer: handling=lenient): {why}"));
            Ok(())
        } else {
            Err(Reply::outcome(
                400,
                "not-supported",
                &format!("{why}; or send Prefer: handling=lenient to have it ignored"),
            ))
        }
    }
}

fn invalid(message: String) -> Reply {
    Reply::outcome(400, "invalid", &message)
}

/// The definition of a standard export, and the ids of the patients a `patient` parameter
/// listed (their compartments are all a Patient-level export then covers).
pub fn plan(
    level: Level,
    asked: &Asked,
    caps: &ServerCapabilities,
) -> Result<(BulkDefinition, Vec<String>), Reply> {
    let mut checks = Checks {
        lenient: asked.lenient,
        notes: Vec::new(),
    };
    let mut since = None;
    let mut elements = None;
    let mut type_names: Option<BTreeSet<String>> = None;
    let mut filters_asked = Vec::new();
    for (name, value) in &asked.params {
        match name.as_str() {
            "_outputFormat" => {
                if !OUTPUT_FORMATS.contains(&value.trim().to_ascii_lowercase().as_str()) {
                    return Err(invalid(format!(
                        "_outputFormat {value:?} is not supported: give {} (NDJSON)",
                        OUTPUT_FORMATS.join(", ")
                    )));
                }
            }
            "_since" => {
                let instant = parse_instant(value).ok_or_else(|| {
                    invalid(format!(
                        "_since {value:?} is not an instant: give e.g. 2024-01-01T00:00:00Z"
                    ))
                })?;
                since = Some(format_instant(instant));
            }
            "_type" => {
                let set = type_names.get_or_insert_with(BTreeSet::new);
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !is_resource_type(t) {
                        return Err(invalid(format!("_type {t:?} is not a resource type")));
                    }
                    set.insert(t.to_string());
                }
            }
            "_typeFilter" => filters_asked.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(str::to_string),
            ),
            "_elements" => {
                let ok = value.split(',').all(|e| {
                    let e = e.trim();
                    !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
                });
                if !ok {
                    return Err(invalid(format!(
                        "_elements {value:?} is not a list of element names (e.g. id,status,subject)"
                    )));
                }
                elements = Some(value.replace(' ', ""));
            }
            "includeAssociatedData" => checks.unsupported(format!(
                "includeAssociatedData={value} is not supported"
            ))?,
            other => checks.unsupported(format!(
                "{other:?} is not a $export parameter this server supports (_outputFormat, _since, _type, _typeFilter, _elements, patient)"
            ))?,
        }
    }
    let types = chosen_types(&level, type_names, caps, &mut checks)?;
    let filters = type_filters(&filters_asked, &types, caps, &mut checks)?;
    let patients = listed_patients(&level, &asked.patients)?;
    let common: Vec<String> = since
        .iter()
        .map(|s| format!("_lastUpdated=gt{s}"))
        .chain(elements.iter().map(|e| format!("_elements={e}")))
        .collect();
    let mut definition = BulkDefinition {
        level: level.clone(),
        types: types.iter().cloned().collect(),
        since,
        type_filter: filters_asked,
        elements,
        listed_patients: patients.len(),
        searches: Vec::new(),
        patient_query: None,
        include: Vec::new(),
        notes: Vec::new(),
    };
    for t in &types {
        let criteria = filters
            .get(t)
            .cloned()
            .unwrap_or_else(|| vec![String::new()]);
        if level == Level::System {
            for c in &criteria {
                definition.searches.push(TypeSearch {
                    resource_type: t.clone(),
                    search: search(
                        t,
                        [c.as_str()]
                            .into_iter()
                            .chain(common.iter().map(String::as_str)),
                    ),
                });
            }
            continue;
        }
        let params: Vec<&str> = patient_params(t)
            .iter()
            .copied()
            .filter(|p| caps.supports_param(t, p))
            .collect();
        if params.is_empty() {
            checks.notes.push(format!(
                "{t} is not exported: the FHIR server supports none of its Patient compartment search parameters ({})",
                patient_params(t).join(", ")
            ));
            continue;
        }
        for p in params {
            for c in &criteria {
                let patient = criterion(p);
                definition.include.push(search(
                    t,
                    [c.as_str(), patient.as_str()]
                        .into_iter()
                        .chain(common.iter().map(String::as_str)),
                ));
            }
        }
    }
    definition.patient_query = match &level {
        Level::System => None,
        Level::Patient => Some("Patient".to_string()),
        Level::Group(id) => Some(format!("Group/{id}")),
    };
    if definition.searches.is_empty() && definition.include.is_empty() {
        return Err(invalid(format!(
            "nothing to export: {}",
            if checks.notes.is_empty() {
                "the FHIR server lists no resource types".to_string()
            } else {
                checks.notes.join("; ")
            }
        )));
    }
    definition.notes = checks.notes;
    Ok((definition, patients))
}

/// `Type?a&b&c`, empty parts left out.
fn search<'a>(resource_type: &str, parts: impl Iterator<Item = &'a str>) -> String {
    let query: Vec<&str> = parts.filter(|p| !p.is_empty()).collect();
    if query.is_empty() {
        resource_type.to_string()
    } else {
        format!("{resource_type}?{}", query.join("&"))
    }
}

/// The types exported: those asked for (each supported by the server), or every supported
/// one; at Patient and Group level only those of the Patient compartment.
fn chosen_types(
    level: &Level,
    asked: Option<BTreeSet<String>>,
    caps: &ServerCapabilities,
    checks: &mut Checks,
) -> Result<BTreeSet<String>, Reply> {
    let in_scope = |t: &str| *level == Level::System || !patient_params(t).is_empty();
    let Some(asked) = asked else {
        return Ok(caps
            .types()
            .filter(|t| in_scope(t))
            .map(str::to_string)
            .collect());
    };
    let mut types = BTreeSet::new();
    for t in asked {
        if !caps.supports_type(&t) {
            checks.unsupported(format!("the FHIR server does not support {t}"))?;
        } else if !in_scope(&t) {
            // Not an error: a client asking for the types it handles (Practitioner, Location)
            // gets what the level has, and is told.
            checks.notes.push(format!(
                "{t} is not in the Patient compartment: a Patient- or Group-level export has none"
            ));
        } else {
            types.insert(t);
        }
    }
    Ok(types)
}

/// Each type's filters as search criteria, re-encoded (`Observation?category=a%2Cb` keeps
/// one criterion with the value `a,b`, an OR in FHIR search).
fn type_filters(
    asked: &[String],
    types: &BTreeSet<String>,
    caps: &ServerCapabilities,
    checks: &mut Checks,
) -> Result<BTreeMap<String, Vec<String>>, Reply> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut dropped = BTreeSet::new();
    for filter in asked {
        let Some((t, query)) = filter.split_once('?') else {
            return Err(invalid(format!(
                "_typeFilter {filter:?} is not Type?criteria (e.g. Observation?category=laboratory)"
            )));
        };
        if !types.contains(t) {
            checks.unsupported(format!(
                "_typeFilter {filter:?} is for {t}, which this export does not include"
            ))?;
            continue;
        }
        let mut criteria = Vec::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let base = name.split([':', '.']).next().unwrap_or_default();
            if RESULT_PARAMS.contains(&base) {
                return Err(invalid(format!(
                    "_typeFilter {filter:?} uses {name}, which shapes results rather than selecting resources; the export sets it"
                )));
            }
            if !caps.supports_param(t, &name) {
                // A filter that cannot be applied would widen the export: lenient drops the
                // type instead.
                checks.unsupported(format!(
                    "the FHIR server cannot search {t} by {name} (_typeFilter {filter:?}); {t} is left out"
                ))?;
                dropped.insert(t.to_string());
            }
            criteria.push(format!("{}={}", encode(&name), encode(&value)));
        }
        out.entry(t.to_string())
            .or_default()
            .push(criteria.join("&"));
    }
    for t in dropped {
        out.insert(t, Vec::new());
    }
    Ok(out)
}

/// Percent-encodes a name or value for a search URL, keeping the characters FHIR search uses
/// as syntax inside one (`:`, `|`, `.`, `-`, `$`).
fn encode(text: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b':')
        .remove(b'|')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_')
        .remove(b'$');
    utf8_percent_encode(text, KEEP).to_string()
}

/// The ids of the patients a Patient-level `patient` parameter lists (`Patient/<id>`).
fn listed_patients(level: &Level, references: &[String]) -> Result<Vec<String>, Reply> {
    if references.is_empty() {
        return Ok(Vec::new());
    }
    if *level != Level::Patient {
        return Err(invalid(format!(
            "patient is supported at Patient level only ([base]/Patient/$export), not at {}",
            level.path()
        )));
    }
    let mut ids = Vec::with_capacity(references.len());
    for r in references {
        let mut parts = r.trim_end_matches('/').rsplit('/');
        let (id, kind) = (parts.next().unwrap_or_default(), parts.next());
        if kind != Some("Patient") || !is_fhir_id(id) {
            return Err(invalid(format!(
                "patient {r:?} is not a Patient reference (Patient/<id>)"
            )));
        }
        ids.push(id.to_string());
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps() -> ServerCapabilities {
        ServerCapabilities::of(json!({"rest": [{"mode": "server", "resource": [
            {"type": "Observation", "searchParam": [{"name": "subject"}, {"name": "category"}, {"name": "code"}]},
            {"type": "Patient", "searchParam": [{"name": "_id"}, {"name": "link"}, {"name": "gender"}]},
            {"type": "Practitioner", "searchParam": [{"name": "name"}]},
            {"type": "Encounter", "searchParam": [{"name": "status"}]}
        ]}]}))
    }

    fn asked(params: &[(&str, &str)]) -> Asked {
        Asked {
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Asked::default()
        }
    }

    #[test]
    fn system_level_searches_every_type_with_since_and_filters() {
        let (d, _) = plan(
            Level::System,
            &asked(&[
                ("_since", "2024-01-01T00:00:00Z"),
                (
                    "_typeFilter",
                    "Observation?category=a%2Cb,Observation?code=x",
                ),
            ]),
            &caps(),
        )
        .unwrap();
        let searches: Vec<&str> = d.searches.iter().map(|s| s.search.as_str()).collect();
        assert_eq!(
            searches,
            [
                "Encounter?_lastUpdated=gt2024-01-01T00:00:00Z",
                "Observation?category=a%2Cb&_lastUpdated=gt2024-01-01T00:00:00Z",
                "Observation?code=x&_lastUpdated=gt2024-01-01T00:00:00Z",
                "Patient?_lastUpdated=gt2024-01-01T00:00:00Z",
                "Practitioner?_lastUpdated=gt2024-01-01T00:00:00Z",
            ]
        );
    }

    #[test]
    fn patient_level_searches_the_compartment_by_each_supported_parameter() {
        let (d, ids) = plan(
            Level::Group("g1".into()),
            &asked(&[("_type", "Observation,Patient,Practitioner,Encounter")]),
            &caps(),
        )
        .unwrap();
        assert!(ids.is_empty());
        assert_eq!(d.patient_query.as_deref(), Some("Group/g1"));
        assert_eq!(
            d.include,
            [
                "Observation?subject:Patient=$IDS",
                "Patient?_id=$IDS",
                "Patient?link:Patient=$IDS"
            ]
        );
        assert_eq!(d.types, ["Encounter", "Observation", "Patient"]);
        assert_eq!(d.notes.len(), 2, "{:?}", d.notes);
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("Practitioner is not in the Patient compartment"))
        );
        assert!(
            d.notes
                .iter()
                .any(|n| n.starts_with("Encounter is not exported"))
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_unless_lenient() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("_outputFormat", "text/csv")], "_outputFormat"),
            (&[("_since", "yesterday")], "not an instant"),
            (&[("_type", "Medication")], "does not support Medication"),
            (&[("_typeFilter", "Observation")], "not Type?criteria"),
            (
                &[("_typeFilter", "Observation?_include=Observation:subject")],
                "shapes results",
            ),
            (
                &[("_typeFilter", "Observation?value-quantity=5")],
                "cannot search Observation by value-quantity",
            ),
            (
                &[("includeAssociatedData", "LatestProvenanceResources")],
                "not supported",
            ),
            (&[("_until", "2024")], "not a $export parameter"),
        ];
        for (params, expected) in cases {
            let err = plan(Level::System, &asked(params), &caps()).unwrap_err();
            assert!(
                err.status == 400 && err.body.to_string().contains(expected),
                "{params:?}: {:?}",
                err.body
            );
        }
        let mut lenient = asked(&[
            ("_typeFilter", "Observation?value-quantity=5"),
            ("_until", "2024"),
        ]);
        lenient.lenient = true;
        let (d, _) = plan(Level::System, &lenient, &caps()).unwrap();
        assert!(
            d.searches.iter().all(|s| s.resource_type != "Observation"),
            "the filter is not widened away"
        );
        assert_eq!(d.notes.len(), 2);
    }

    #[test]
    fn listed_patients_are_for_patient_level_only() {
        let mut a = asked(&[]);
        a.patients = vec!["Patient/p1".into(), "http://fhir/Patient/p2".into()];
        let (d, ids) = plan(Level::Patient, &a, &caps()).unwrap();
        assert_eq!(ids, ["p1", "p2"]);
        assert_eq!(d.listed_patients, 2);
        assert_eq!(plan(Level::System, &a, &caps()).unwrap_err().status, 400);
        a.patients = vec!["Group/g1".into()];
        assert_eq!(plan(Level::Patient, &a, &caps()).unwrap_err().status, 400);
    }
}
