//! What a finished import leaves beside the moved file: a small result JSON, and for failures an
//! NDJSON of OperationOutcomes, one per refused line or entry, saying where it was (file, line
//! or entry index, zip entry), what it was (`Type/id`), the HTTP status and the server's words.

use serde_json::{Value, json};

use super::state::{Counts, ErrorRecord, GAVE_UP};

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

/// The result JSON of a finished import: its counts, where the input file is now (moved to
/// `<container>processed`/`err`, `replaced` or `deleted`) and where its error report is.
pub fn result_json(
    source: &str,
    status: &str,
    counts: Counts,
    input: &str,
    errors: Option<&str>,
    reason: Option<&str>,
) -> Value {
    json!({
        "file": source,
        "status": status,
        "input": input,
        "resources": {
            "loaded": counts.loaded,
            "failed": counts.failed,
            "alreadyPresent": counts.present,
            "notLoaded": counts.not_loaded,
        },
        "linesRead": counts.lines,
        "errorReport": errors,
        "reason": reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
