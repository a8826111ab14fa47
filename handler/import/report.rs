//! What a finished import leaves beside the moved file: a small result JSON, and for failures an
//! NDJSON of OperationOutcomes, one per refused line or entry, saying where it was (file, line
//! or entry index, zip entry), what it was (`Type/id`), the HTTP status and the server's words.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::state::{Counts, ErrorRecord, FileStatus, GAVE_UP, ResourceCounts};

const EXT: &str = "https://github.com/fhir-bulk/fhir-bulk/StructureDefinition";

/// One error record as an OperationOutcome. `line` is the absolute line number in the file.
pub fn error_outcome(source: &str, record: &ErrorRecord, line: Option<i64>) -> Value {
    let mut location = Vec::new();
    let mut extension = vec![json!({"url": format!("{EXT}/source-file"), "valueString": source})];
    if let Some(z) = &record.zip_entry {
        location.push(format!("zip entry {z}"));
        extension.push(json!({"url": format!("{EXT}/zip-entry"), "valueString": z}));
    }
    if let Some(l) = line {
        location.push(format!("line {l}"));
        extension.push(json!({"url": format!("{EXT}/line"), "valueInteger": l}));
    }
    if let Some(i) = record.entry {
        location.push(format!("Bundle.entry[{i}]"));
        extension.push(json!({"url": format!("{EXT}/entry-index"), "valueInteger": i}));
    }
    if let Some(t) = &record.target {
        extension.push(json!({"url": format!("{EXT}/resource"), "valueString": t}));
    }
    extension.push(json!({"url": format!("{EXT}/http-status"), "valueInteger": record.status}));
    let code = match record.status {
        // A part given up on after failing for long: the server, not the data, was at fault.
        _ if record.position == GAVE_UP => "transient",
        0 => "invalid",
        429 | 503 => "throttled",
        404 => "not-found",
        409 | 412 => "conflict",
        s if s >= 500 => "exception",
        _ => "processing",
    };
    let mut issue = json!({
        "severity": "error",
        "code": code,
        "diagnostics": record.diagnostics,
    });
    if !location.is_empty() {
        issue["location"] = json!(location);
    }
    if let Some(t) = &record.target {
        issue["expression"] = json!([t]);
    }
    json!({"resourceType": "OperationOutcome", "extension": extension, "issue": [issue]})
}

/// The result JSON of a finished import (`reports/<container>/<blob>/<id>/result.json`): its
/// counts, where the input file is now (moved to `<container>processed`/`err`, `replaced` or
/// `deleted`) and where its error report is. Written when the import finishes; read back by
/// the reconciliation sweep when the rows fell behind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportResult {
    /// `container/blob` of the input.
    pub file: String,
    pub status: FileStatus,
    /// Where the input went.
    pub input: String,
    pub resources: ResourceCounts,
    #[serde(default)]
    pub lines_read: i64,
    #[serde(default)]
    pub error_report: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl ImportResult {
    /// The counts it records, as a file row keeps them.
    pub fn counts(&self) -> Counts {
        Counts {
            loaded: self.resources.loaded,
            failed: self.resources.failed,
            present: self.resources.already_present,
            lines: self.lines_read,
            not_loaded: self.resources.not_loaded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result JSON as the previous version wrote it is read, and one written now has the
    /// same fields.
    #[test]
    fn result_json_keeps_its_format() {
        let previous = r#"{"file":"ndjson/a.ndjson","status":"completed-with-errors","input":"ndjsonerr/a.ndjson",
            "resources":{"loaded":10,"failed":2,"alreadyPresent":1,"notLoaded":0},"linesRead":13,
            "errorReport":"reports/ndjson/a.ndjson/abc/errors.ndjson","reason":null}"#;
        let result: ImportResult = serde_json::from_str(previous).unwrap();
        assert_eq!(result.status, FileStatus::CompletedWithErrors);
        assert_eq!(
            result.counts(),
            Counts {
                loaded: 10,
                failed: 2,
                present: 1,
                lines: 13,
                not_loaded: 0
            }
        );
        let written: Value = serde_json::to_value(&result).unwrap();
        let expected: Value = serde_json::from_str(previous).unwrap();
        assert_eq!(written, expected);
    }

    #[test]
    fn outcomes_say_where_what_and_why() {
        let r = ErrorRecord {
            part: 0,
            position: "x".into(),
            line: Some(3),
            entry: None,
            zip_entry: Some("d/Obs.ndjson".into()),
            target: Some("Observation/o1".into()),
            status: 422,
            diagnostics: "Observation.status is required".into(),
        };
        let o = error_outcome("zip/a.zip", &r, Some(1003));
        assert_eq!(o["resourceType"], "OperationOutcome");
        assert_eq!(
            o["issue"][0]["diagnostics"],
            "Observation.status is required"
        );
        assert_eq!(
            o["issue"][0]["location"],
            json!(["zip entry d/Obs.ndjson", "line 1003"])
        );
        assert_eq!(o["issue"][0]["expression"], json!(["Observation/o1"]));
        let ext = o["extension"].as_array().unwrap();
        assert!(ext.iter().any(|e| e["valueInteger"] == 422));
        assert!(ext.iter().any(|e| e["valueString"] == "zip/a.zip"));
    }
}
