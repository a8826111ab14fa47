//! What the configured FHIR server says it supports (its CapabilityStatement, `GET metadata`):
//! the resource types a `$export` may name and each type's search parameters, which decide the
//! searches a standard export plans. Read once and kept for `CAPABILITY_TTL`; also the base of
//! the loader's own `GET /metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Exporter;
use crate::fhir::FhirError;

/// How long a CapabilityStatement read is used before it is read again.
const CAPABILITY_TTL: Duration = Duration::from_secs(300);

/// The parts of a server's CapabilityStatement an export uses.
#[derive(Debug, Clone, Default)]
pub struct ServerCapabilities {
    /// The statement as read.
    pub statement: Value,
    /// Each supported type and its search parameters (empty: the server lists none, so any
    /// parameter is tried).
    types: BTreeMap<String, BTreeSet<String>>,
}

impl ServerCapabilities {
    pub fn of(statement: Value) -> Self {
        let mut types = BTreeMap::new();
        let rests = statement.get("rest").and_then(Value::as_array);
        for rest in rests.into_iter().flatten() {
            if rest.get("mode").and_then(Value::as_str) != Some("server") {
                continue;
            }
            for resource in rest
                .get("resource")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(kind) = resource.get("type").and_then(Value::as_str) else {
                    continue;
                };
                let params: BTreeSet<String> = resource
                    .get("searchParam")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect();
                types.insert(kind.to_string(), params);
            }
        }
        ServerCapabilities { statement, types }
    }

    /// The supported types, in name order.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    pub fn supports_type(&self, resource_type: &str) -> bool {
        self.types.contains_key(resource_type)
    }

    /// Whether the server searches `resource_type` by `param` (its name before any `:` or
    /// `.`). Parameters for all resources (`_id`, `_lastUpdated`, ...) count as supported, as
    /// does any parameter of a type the server lists none for.
    pub fn supports_param(&self, resource_type: &str, param: &str) -> bool {
        let name = param.split([':', '.']).next().unwrap_or_default();
        match self.types.get(resource_type) {
            None => false,
            Some(params) if params.is_empty() => true,
            Some(params) => params.contains(name) || COMMON_PARAMS.contains(&name),
        }
    }

    /// The loader's own CapabilityStatement: the server's types, with the Bulk Data export
    /// operations the loader serves for them, at the loader's base URL.
    pub fn for_loader(&self, public_base: &str) -> Value {
        let mut statement = self.statement.clone();
        let Some(object) = statement.as_object_mut() else {
            return statement;
        };
        object.insert(
            "software".into(),
            json!({"name": "fhir-bulk", "version": env!("CARGO_PKG_VERSION")}),
        );
        object.insert(
            "implementation".into(),
            json!({"description": "fhir-bulk: Bulk Data $export for the FHIR server behind it", "url": public_base}),
        );
        object.insert(
            "instantiates".into(),
            json!(["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]),
        );
        let operations = json!([
            {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
            {"name": "patient-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
            {"name": "group-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}
        ]);
        if let Some(rests) = object.get_mut("rest").and_then(Value::as_array_mut) {
            for rest in rests {
                if let Some(rest) = rest.as_object_mut() {
                    rest.insert("operation".into(), operations.clone());
                }
            }
        }
        statement
    }
}

/// Search parameters every resource type has.
const COMMON_PARAMS: &[&str] = &[
    "_id",
    "_lastUpdated",
    "_tag",
    "_profile",
    "_security",
    "_source",
    "_has",
    "_text",
    "_content",
    "_list",
];

/// The cached statement and when it was read.
#[derive(Default)]
pub struct CapabilityCache(tokio::sync::Mutex<Option<(Instant, Arc<ServerCapabilities>)>>);

impl Exporter {
    /// The FHIR server's capabilities, read at most every `CAPABILITY_TTL`.
    pub async fn capabilities(&self) -> Result<Arc<ServerCapabilities>, FhirError> {
        let mut cached = self.capabilities.0.lock().await;
        if let Some((read, caps)) = cached.as_ref()
            && read.elapsed() < CAPABILITY_TTL
        {
            return Ok(caps.clone());
        }
        let statement = self.fhir.get(&self.fhir.url("metadata")).await?;
        let caps = Arc::new(ServerCapabilities::of(statement));
        *cached = Some((Instant::now(), caps.clone()));
        Ok(caps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement() -> Value {
        json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
            {"type": "Observation", "searchParam": [{"name": "subject"}, {"name": "category"}]},
            {"type": "Patient"}
        ]}]})
    }

    #[test]
    fn types_and_parameters_come_from_the_server_rest() {
        let caps = ServerCapabilities::of(statement());
        assert_eq!(caps.types().collect::<Vec<_>>(), ["Observation", "Patient"]);
        assert!(caps.supports_param("Observation", "subject:Patient"));
        assert!(caps.supports_param("Observation", "_lastUpdated"));
        assert!(!caps.supports_param("Observation", "performer"));
        assert!(caps.supports_param("Patient", "anything"), "none listed");
        assert!(
            !caps.supports_param("Encounter", "patient"),
            "type unsupported"
        );
    }

    #[test]
    fn the_loader_statement_names_the_export_operations() {
        let caps = ServerCapabilities::of(statement());
        let own = caps.for_loader("https://loader.example");
        assert_eq!(own["rest"][0]["operation"][0]["name"], "export");
        assert_eq!(own["implementation"]["url"], "https://loader.example");
        assert_eq!(own["rest"][0]["resource"][1]["type"], "Patient");
    }
}
