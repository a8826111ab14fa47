//! `handler summary`: waits until every recorded import has finished, then prints what landed
//! on the FHIR server per resource type, the files that failed and why, and the load rate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::functions::AppState;
use crate::import::state::{Counts, FileStatus, ImportFile};
use crate::storage::Row;

pub async fn run(state: &AppState, expect_files: usize, wait: Duration) -> anyhow::Result<bool> {
    let importer = &state.importer;
    let files = finished_files(importer, expect_files, wait).await?;
    let load = Load::of(&files);
    let per_type = server_counts(importer).await;
    println!("\nResources on the FHIR server ({}):", importer.fhir.base());
    println!("  {:<28} {:>10}", "type", "count");
    for (ty, n) in &per_type {
        println!("  {ty:<28} {n:>10}");
    }
    println!("  {:<28} {:>10}", "total", per_type.values().sum::<i64>());
    let totals = load.totals;
    println!(
        "\nFiles: {} imported, {} with failures. Resources loaded: {}, failed: {}, already present: {}.",
        files.len() - load.failed.len(),
        load.failed.len(),
        totals.loaded,
        totals.failed,
        totals.present
    );
    for f in &load.failed {
        println!(
            "  {}/{}: {} — {}{}",
            f.container,
            f.blob,
            f.status.as_str(),
            f.reason
                .as_ref()
                .map(|r| format!("{r}; "))
                .unwrap_or_default(),
            f.error_report
                .as_ref()
                .map(|r| format!("details in {r}"))
                .unwrap_or_default()
        );
    }
    if let (Some(s), Some(e)) = (load.first_start, load.last_end) {
        let secs = (e - s).as_seconds_f64().max(0.001);
        println!(
            "Load time {secs:.1}s from first start to last finish: {:.0} resources/second.",
            totals.loaded as f64 / secs
        );
    }
    Ok(load.failed.is_empty())
}

/// The imports recorded, once at least `expect_files` are and all have finished; an error
/// after `wait`.
async fn finished_files(
    importer: &crate::import::Importer,
    expect_files: usize,
    wait: Duration,
) -> anyhow::Result<Vec<Row<ImportFile>>> {
    let deadline = Instant::now() + wait;
    loop {
        let files = importer.store.files(None).await?;
        let finished = files.iter().filter(|f| f.data.status.is_terminal()).count();
        if files.len() >= expect_files && finished == files.len() {
            return Ok(files);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "gave up waiting after {}s: {finished} of {} recorded files finished ({expect_files} expected)",
                wait.as_secs(),
                files.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What the finished imports add up to.
struct Load {
    totals: Counts,
    first_start: Option<OffsetDateTime>,
    last_end: Option<OffsetDateTime>,
    /// The files that did not load cleanly.
    failed: Vec<ImportFile>,
}

impl Load {
    fn of(files: &[Row<ImportFile>]) -> Self {
        let mut load = Load {
            totals: Counts::default(),
            first_start: None,
            last_end: None,
            failed: Vec::new(),
        };
        let parse = |t: Option<&str>| t.and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
        for row in files {
            let f = &row.data;
            load.totals.add(f.counts);
            if let Some(s) = parse(f.started.as_deref()).or_else(|| parse(Some(&f.created))) {
                load.first_start = Some(load.first_start.map_or(s, |x| x.min(s)));
            }
            if let Some(e) = parse(f.finished.as_deref()) {
                load.last_end = Some(load.last_end.map_or(e, |x| x.max(e)));
            }
            if f.status != FileStatus::Loaded {
                load.failed.push(f.clone());
            }
        }
        load
    }
}

/// How many resources of each type in `TYPES` the FHIR server holds (types it has none of, or
/// cannot count, left out).
async fn server_counts(importer: &crate::import::Importer) -> BTreeMap<&'static str, i64> {
    let mut per_type = BTreeMap::new();
    for ty in TYPES {
        let url = importer.fhir.url(&format!("{ty}?_summary=count"));
        if let Ok(page) = importer.fhir.get(&url).await
            && let Some(n) = page.get("total").and_then(Value::as_i64)
            && n > 0
        {
            per_type.insert(*ty, n);
        }
    }
    per_type
}

/// Resource types counted in the summary (R4 types Synthea-like data uses, and more).
const TYPES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Claim",
    "Composition",
    "Condition",
    "Coverage",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Endpoint",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Group",
    "ImagingStudy",
    "Immunization",
    "Location",
    "Medication",
    "MedicationAdministration",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "ServiceRequest",
    "Specimen",
    "SupplyDelivery",
];
