//! `$export` as the HL7 Bulk Data Access IG (v2.0.0) defines it, for the configured FHIR
//! server, on the same orchestration as the other exports (Table state, queued steps, compose,
//! manifest):
//!
//! - `request`: a kick-off (`GET` with query parameters, or `POST` with a `Parameters`
//!   body) read into its parameters, with the IG's header rules;
//! - `plan`: the parameters checked against the server's CapabilityStatement and turned into a
//!   [`BulkDefinition`]: a system-level export searches every type (as `$alt-export-all` does
//!   per type); a Patient- or Group-level one finds its patients (all Patients, the listed
//!   ones, or a Group's members) and searches each type of the Patient compartment by each of
//!   its compartment parameters (as `$alt-export` does with its includes);
//! - `status`: the status URL (202 with `X-Progress`, 429 when polled too often, 200 with the
//!   IG's manifest, 500 for a failed export), its `DELETE`, and the file downloads.
//!
//! The definition is stored on the job row, complete: a repeated planning step plans the same
//! searches whatever the server's CapabilityStatement says by then.

pub mod operation;
pub mod plan;
pub mod request;

use serde::{Deserialize, Serialize};
use serde_json::json;
use url::Url;

use super::definition::ExportDefinition;
use super::schedule::WorkItem;
use super::state::ExportJob;
use super::{ExportError, Exporter};
use crate::storage::Row;

/// Which `$export` was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "level", content = "group", rename_all = "lowercase")]
pub enum Level {
    /// `[base]/$export`: every resource of the types.
    System,
    /// `[base]/Patient/$export`: the compartments of all patients (or of those listed).
    Patient,
    /// `[base]/Group/{id}/$export`: the compartments of the Group's member patients.
    Group(String),
}

impl Level {
    /// The operation's path below the base URL.
    pub fn path(&self) -> String {
        match self {
            Level::System => "$export".into(),
            Level::Patient => "Patient/$export".into(),
            Level::Group(id) => format!("Group/{id}/$export"),
        }
    }
}

/// One search of a system-level export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeSearch {
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Relative to the FHIR base URL.
    pub search: String,
}

/// A standard export, as stored with its job (the job's `definition`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkDefinition {
    #[serde(flatten)]
    pub level: Level,
    /// The types exported, in name order.
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `Type?criteria` as asked (`_typeFilter`), for the status and the manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub type_filter: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elements: Option<String>,
    /// Patients listed by the kick-off's `patient` parameter (their ids are the export's
    /// gathered ids).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub listed_patients: usize,
    /// System level: one search per type (and per type filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<TypeSearch>,
    /// Patient and Group level: the search that finds the patients and the compartment
    /// searches, each with `$IDS` where a batch of patient ids goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_query: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// What the export does not do that was asked for or might be expected (types outside the
    /// Patient compartment, parameters ignored under `handling=lenient`): written to the
    /// manifest's `error` file as informational OperationOutcomes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl BulkDefinition {
    /// System level: registers one work item per search (no patients to gather).
    pub(crate) async fn plan_system(
        &self,
        ex: &Exporter,
        export: &str,
        job: Row<ExportJob>,
    ) -> Result<(), ExportError> {
        let item = |n: usize| WorkItem {
            batch: 0,
            include: n as u32,
            resource_type: self.searches[n].resource_type.clone(),
            search: self.searches[n].search.clone(),
        };
        ex.register_work(export, job, self.searches.len(), item)
            .await
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("not a stored $export definition: {e}"))
    }

    pub fn to_json_text(&self) -> String {
        serde_json::to_string(self).expect("a definition serialises")
    }

    /// Patient and Group level: the definition the patient export runs (its patients found by
    /// `patient_query`, or given, and one include per compartment search).
    pub fn patient_definition(&self, base: &Url) -> Option<Result<ExportDefinition, String>> {
        let query = self.patient_query.as_ref()?;
        Some(ExportDefinition::from_value(
            &json!({"query": query, "patientreferencefield": "id", "include": self.include}),
            base,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_round_trips_with_its_level() {
        let d = BulkDefinition {
            level: Level::Group("g1".into()),
            types: vec!["Observation".into()],
            since: None,
            type_filter: vec![],
            elements: None,
            listed_patients: 0,
            searches: vec![],
            patient_query: Some("Group/g1".into()),
            include: vec!["Observation?subject:Patient=$IDS".into()],
            notes: vec![],
        };
        let text = d.to_json_text();
        assert!(text.contains(r#""level":"group","group":"g1""#), "{text}");
        assert_eq!(BulkDefinition::parse(&text).unwrap(), d);
        let base = Url::parse("http://fhir.example/fhir").unwrap();
        let patients = d.patient_definition(&base).unwrap().unwrap();
        assert_eq!(patients.query, "Group/g1");
        assert_eq!(patients.include[0].resource_type, "Observation");
        assert_eq!(Level::Group("g1".into()).path(), "Group/g1/$export");
    }
}
