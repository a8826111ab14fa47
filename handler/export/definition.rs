//! The query definition an export starts from (fhir-loader's format):
//! `{"query": "Patient?birthdate=lt1951-01-01", "patientreferencefield": "id",
//!   "include": ["Encounter?patient=$IDS", "Patient?_id=$IDS"]}`.
//! Searches may be relative to the FHIR base URL or absolute on that same server; they are
//! kept relative. Every problem is reported in words a user can act on.

use serde_json::{Value, json};
use url::Url;

/// The placeholder an include search carries for the comma-separated patient ids.
pub const IDS_PLACEHOLDER: &str = "$IDS";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportDefinition {
    /// The search that finds the patients, relative to the base URL (`Type?params`).
    pub query: String,
    /// `id` when the query returns Patients, else the field holding the Patient reference.
    pub patient_reference_field: String,
    pub include: Vec<Include>,
}

/// The fields of a query definition (fhir-loader's format).
const FIELDS: &[&str] = &["query", "patientreferencefield", "include"];

/// One include search: `Type?param=$IDS&...`, relative to the base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Include {
    pub search: String,
    pub resource_type: String,
}

impl Include {
    /// The relative search for these patient ids.
    pub fn for_ids(&self, ids: &[String]) -> String {
        self.search.replace(IDS_PLACEHOLDER, &ids.join(","))
    }
}

impl ExportDefinition {
    /// Parses and checks a definition; the error says what is wrong and how to fix it.
    pub fn parse(body: &str, base: &Url) -> Result<Self, String> {
        let value: Value = serde_json::from_str(body)
            .map_err(|e| format!("the query definition is not valid JSON: {e}"))?;
        Self::from_value(&value, base)
    }

    pub fn from_value(value: &Value, base: &Url) -> Result<Self, String> {
        let Some(object) = value.as_object() else {
            return Err("the query definition must be a JSON object with query, patientreferencefield and include".into());
        };
        // As for export-all: a field this loader does not know is refused, not ignored (a
        // misspelt "includes" would otherwise export nothing the user asked for).
        if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "{unknown:?} is not a query definition field; the fields are {}",
                FIELDS.join(", ")
            ));
        }
        let text = |name: &str| {
            object
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let query = text("query").ok_or(
            "query is missing: give the search that finds the patients, e.g. \"Patient?birthdate=lt1951-01-01\"",
        )?;
        let query = relative_search(query, base).map_err(|e| format!("query {e}"))?;
        let field = text("patientreferencefield").ok_or(
            "patientreferencefield is missing: \"id\" when the query returns Patients, else the field holding the Patient reference (e.g. \"subscriber\" for Coverage)",
        )?;
        if !field
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(format!(
                "patientreferencefield {field:?} is not a field name (letters and digits, dots between nested fields)"
            ));
        }
        let includes = match object.get("include") {
            Some(Value::Array(items)) if !items.is_empty() => items,
            _ => {
                return Err(
                    "include is missing or empty: list the searches to export, each with $IDS where the patient ids go, e.g. [\"Encounter?patient=$IDS\"]"
                        .into(),
                );
            }
        };
        let mut include = Vec::with_capacity(includes.len());
        for (i, item) in includes.iter().enumerate() {
            let Some(raw) = item.as_str().map(str::trim).filter(|s| !s.is_empty()) else {
                return Err(format!("include[{i}] is not a search string"));
            };
            if !raw.contains(IDS_PLACEHOLDER) {
                return Err(format!(
                    "include[{i}] {raw:?} has no {IDS_PLACEHOLDER}: write where the patient ids go, e.g. \"Encounter?patient=$IDS\""
                ));
            }
            let search = relative_search(raw, base).map_err(|e| format!("include[{i}] {e}"))?;
            let resource_type = search_type(&search).to_string();
            include.push(Include {
                search,
                resource_type,
            });
        }
        Ok(ExportDefinition {
            query,
            patient_reference_field: field.to_string(),
            include,
        })
    }

    /// The definition as stored with the export and echoed in its status.
    pub fn to_json(&self) -> Value {
        json!({
            "query": self.query,
            "patientreferencefield": self.patient_reference_field,
            "include": self.include.iter().map(|i| i.search.as_str()).collect::<Vec<_>>(),
        })
    }
}

/// `Type?params` from a relative or same-server absolute search.
fn relative_search(raw: &str, base: &Url) -> Result<String, String> {
    let relative = if raw.starts_with("http://") || raw.starts_with("https://") {
        let prefix = format!("{}/", base.as_str().trim_end_matches('/'));
        match raw.strip_prefix(&prefix) {
            Some(rest) => rest.to_string(),
            None => {
                return Err(format!(
                    "{raw:?} points at another server: exports read only from {base}; give the search relative to it (e.g. \"Patient?...\")"
                ));
            }
        }
    } else {
        raw.trim_start_matches('/').to_string()
    };
    if !is_resource_type(search_type(&relative)) {
        return Err(format!(
            "{raw:?} does not start with a resource type: write it as Type?param=value"
        ));
    }
    // The path stays under the FHIR base: `Type`, `Type/id` (a Group read) and the like, never
    // a `..` or `.` segment or an encoded one, which would climb out of it.
    let path = relative.split('?').next().unwrap_or_default();
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == ".." || seg.contains(['%', '\\']))
    {
        return Err(format!(
            "{raw:?} has a path that leaves the FHIR base URL (a '..', '.', empty or encoded segment): write it as Type?param=value"
        ));
    }
    Ok(relative)
}

/// Whether a name has the shape of a FHIR resource type (`Observation`, not `observation`).
pub fn is_resource_type(name: &str) -> bool {
    name.len() > 1
        && name.starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphabetic())
}

/// The resource type a relative search is on (`Encounter` of `Encounter?patient=...`).
pub fn search_type(search: &str) -> &str {
    search.split(['?', '/']).next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://127.0.0.1:8090/fhir").unwrap()
    }

    #[test]
    fn readme_definitions_parse() {
        let d = ExportDefinition::parse(
            r#"{"query":"Patient?birthdate=lt1951-01-01&_count=50","patientreferencefield":"id",
               "include":["Encounter?patient=$IDS&_count=50","http://127.0.0.1:8090/fhir/Patient?_id=$IDS"]}"#,
            &base(),
        )
        .unwrap();
        assert_eq!(d.query, "Patient?birthdate=lt1951-01-01&_count=50");
        assert_eq!(d.include[0].resource_type, "Encounter");
        assert_eq!(d.include[1].search, "Patient?_id=$IDS");
        assert_eq!(
            d.include[0].for_ids(&["a".into(), "b".into()]),
            "Encounter?patient=a,b&_count=50"
        );
    }

    #[test]
    fn every_bad_definition_says_what_is_wrong() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "must be a JSON object"),
            (
                r#"{"patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
                "query is missing",
            ),
            (
                r#"{"query":"Patient?x=1","include":["Patient?_id=$IDS"]}"#,
                "patientreferencefield is missing",
            ),
            (
                r#"{"query":"Patient?x=1","patientreferencefield":"id"}"#,
                "include is missing",
            ),
            (
                r#"{"query":"Patient?x=1","patientreferencefield":"id","include":["Encounter?patient=123"]}"#,
                "has no $IDS",
            ),
            (
                r#"{"query":"https://evil.example.com/fhir/Patient","patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
                "points at another server",
            ),
            (
                r#"{"query":"Patient","patientreferencefield":"id","include":["https://other/fhir/Encounter?patient=$IDS"]}"#,
                "include[0]",
            ),
            (
                r#"{"query":"Patient/../../../x?a=1","patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
                "leaves the FHIR base URL",
            ),
            (
                r#"{"query":"Patient","patientreferencefield":"id","include":["Encounter/%2e%2e/x?patient=$IDS"]}"#,
                "include[0]",
            ),
            (
                r#"{"query":"Patient","patientreferencefield":"id","includes":["Patient?_id=$IDS"]}"#,
                "\"includes\" is not a query definition field",
            ),
            (
                r#"{"query":"?name=x","patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
                "does not start with a resource type",
            ),
            (
                r#"{"query":"Patient","patientreferencefield":"a b","include":["Patient?_id=$IDS"]}"#,
                "is not a field name",
            ),
        ];
        for (body, expected) in cases {
            let err = ExportDefinition::parse(body, &base()).unwrap_err();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }
}
