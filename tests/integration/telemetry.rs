//! The log events the operations workbook charts (`fhir_bulk::telemetry::CHARTED_EVENTS`),
//! as the handler writes them in JSON: a load through a stand-in that throttles, a rejected
//! file, an export and a reconciliation sweep make every charted event, each with the fields
//! the workbook reads, of the declared JSON types. (That the workbook reads nothing else is a
//! unit test in `handler/telemetry.rs`.)

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::export::{post_export, wait_export};
use crate::fixtures::{patient_bundle, patient_line};
use crate::standin::{Faults, StandIn};
use crate::support::{Azurite, FhirServer, Handler, blobs};
use fhir_bulk::telemetry::{CHARTED_EVENTS, COMMON_FIELDS, FieldType, charted};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_charted_event_is_logged_with_its_fields_and_types() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let (_standin, url) = StandIn::start(
        &fhir.base_url,
        Faults {
            throttle_posts: 2,
            retry_after_secs: 1,
            ..Default::default()
        },
    )
    .await;
    let handler = Handler::start_logged(
        &azurite,
        &url,
        &[
            ("FHIRBULK_LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
            ("FHIRBULK_SWEEP_INTERVAL_SECS", "1"),
            ("FHIRBULK_FHIR_RETRY_BASE_MS", "20"),
            ("FHIRBULK_FHIR_MAX_CONCURRENCY", "4"),
        ],
    );
    let store = blobs(&azurite);
    let lines = (1..=3).map(patient_line).collect::<Vec<_>>().join("\n");
    store
        .upload("ndjson", "t/patients.ndjson", Bytes::from(lines))
        .await
        .unwrap();
    store
        .upload(
            "bundles",
            "t/p4.json",
            Bytes::from(patient_bundle(4, 3).to_string()),
        )
        .await
        .unwrap();
    store
        .upload(
            "bundles",
            "t/broken.json",
            Bytes::from("{\"resourceType\": \"Bund"),
        )
        .await
        .unwrap();
    handler.wait_imports(3, 120).await;

    let definition = json!({"query": "Patient", "patientreferencefield": "id",
        "include": ["Observation?patient=$IDS"]});
    let (status, started, _) = post_export(&handler, &definition.to_string()).await;
    assert_eq!(status, 202, "{started}");
    let (status, _) = wait_export(&handler, started["id"].as_str().unwrap(), 120).await;
    assert_eq!(status, 200);

    // Every charted event shows up (the sweep runs every second).
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events: Vec<Value> = handler
            .logs
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("a log line that is no JSON object ({e}): {line}"))
            })
            .collect();
        let seen: BTreeSet<&str> = events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        let missing: Vec<&str> = CHARTED_EVENTS
            .iter()
            .map(|c| c.message)
            .filter(|m| !seen.contains(m))
            .collect();
        if missing.is_empty() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "charted events never logged: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for event in &events {
        for field in COMMON_FIELDS {
            assert!(event[*field].is_string(), "{field} in {event}");
        }
        let Some(contract) = charted(event["message"].as_str().unwrap()) else {
            continue;
        };
        for (field, kind) in contract.fields {
            let value = &event[*field];
            let ok = match kind {
                FieldType::String => value.is_string(),
                FieldType::Number => value.is_number(),
            };
            assert!(
                ok,
                "{}: {field} should be {kind:?}: {event}",
                contract.message
            );
        }
    }
}
