//! The handler as the Functions host drives it: `{Data, Metadata}` POSTed to `/<FunctionName>`,
//! with the event double-encoded as a string, the queue message as the host passes it on, and
//! the HTTP trigger's request object — against real Azurite and the real FHIR server.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::fixtures::{patient_bundle, patient_id};
use crate::support::{Azurite, FhirServer, fhir_count};
use fhir_bulk::config::Settings;
use fhir_bulk::functions::{AppState, host_router};
use fhir_bulk::import::state::{FileStatus, PartStatus};

async fn invoke(state: &AppState, function: &str, payload: Value) -> (u16, Value) {
    let req = Request::post(format!("/{function}"))
        .header("content-type", "application/json")
        .header("X-Azure-Functions-InvocationId", "test")
        .body(Body::from(payload.to_string()))
        .unwrap();
    let resp = host_router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The handler's state as the host mode builds it, on a test's Azurite and FHIR server.
async fn host_state(azurite: &Azurite, fhir: &FhirServer) -> AppState {
    let env: HashMap<&str, &str> = HashMap::from([
        (
            "FHIRBULK_STORAGE_CONNECTION_STRING",
            azurite.connection_string.as_str(),
        ),
        ("FHIRBULK_FHIR_URL", fhir.base_url.as_str()),
    ]);
    let settings = Settings::from_source(&env).unwrap();
    fhir_bulk::app::build_state(&settings).await.unwrap()
}

/// The first log line of an invocation's answer.
fn first_log(body: &Value) -> &str {
    body["Logs"][0].as_str().unwrap_or_default()
}

/// Takes the one queued work item and runs it as the queue trigger would.
async fn run_the_queued_work_item(state: &AppState) {
    let messages = state
        .importer
        .queue
        .receive(32, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(messages.len(), 1, "one work item, not two");
    let (status, _) = invoke(state, "ImportWorker", queue_payload(&messages[0])).await;
    assert_eq!(status, 200);
}

/// A queue message as the queue trigger passes it on.
fn queue_payload(m: &fhir_bulk::storage::ReceivedWork) -> Value {
    json!({"Data": {"work": m.text}, "Metadata": {"DequeueCount": 1, "Id": m.id}})
}

/// Starts a patient export of every Patient (with the Patients as its include); its id.
async fn start_patient_export(state: &AppState) -> String {
    use fhir_bulk::export::ExportKind;
    use fhir_bulk::export::control::{self, Links};
    let definition =
        r#"{"query": "Patient", "patientreferencefield": "id", "include": ["Patient?_id=$IDS"]}"#;
    let started = control::start(
        &state.exporter,
        ExportKind::Patients,
        definition,
        &Links::default(),
        "test",
        None,
    )
    .await;
    assert_eq!(started.status, 202, "{}", started.body);
    started.body["id"].as_str().unwrap().to_string()
}

/// Runs the queued export steps as the queue trigger would, until export `id` answers 200;
/// that answer (the manifest).
async fn run_export_to_completion(state: &AppState, id: &str) -> Value {
    use fhir_bulk::export::control;
    let exporter = &state.exporter;
    for _ in 0..20 {
        for m in exporter
            .queue
            .receive(32, Duration::from_secs(60))
            .await
            .unwrap()
        {
            let (status, _) = invoke(state, "ExportWorker", queue_payload(&m)).await;
            assert_eq!(status, 200);
            exporter.queue.delete(&m).await.unwrap();
        }
        let status = control::status(exporter, id).await;
        if status.status == 200 {
            return status.body;
        }
    }
    panic!(
        "the export did not complete after the sweep: {}",
        control::status(exporter, id).await.body
    );
}

/// `ImportStatus` for `container/blob`, through the HTTP trigger: the answer's status code and
/// the file's view.
async fn import_status(state: &AppState, path: &str) -> (String, Value) {
    let request = json!({"Data": {"req": {"Url": format!("https://app/imports/{path}"), "Method": "GET",
        "Query": {}, "Headers": {}, "Params": {"path": path}}}, "Metadata": {}});
    let (status, body) = invoke(state, "ImportStatus", request).await;
    assert_eq!(status, 200);
    let res = &body["Outputs"]["res"];
    let view = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    (
        res["statusCode"].as_str().unwrap_or_default().to_string(),
        view,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_payloads_register_load_and_report() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let state = host_state(&azurite, &fhir).await;
    state
        .importer
        .blobs
        .upload(
            "bundles",
            "dir/p1.json",
            Bytes::from(patient_bundle(1, 4).to_string()),
        )
        .await
        .unwrap();

    let event = json!({
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": "/blobServices/default/containers/bundles/blobs/dir/p1.json",
        "eventType": "Microsoft.Storage.BlobCreated", "id": "evt-1", "eventTime": "2026-11-23T10:00:00Z",
        "data": {"api": "PutBlob", "url": "http://127.0.0.1/devstoreaccount1/bundles/dir/p1.json"},
        "dataVersion": "", "metadataVersion": "1"
    });
    let double_encoded = Value::String(Value::String(event.to_string()).to_string());
    let payload = json!({"Data": {"event": double_encoded}, "Metadata": {"sys": {"MethodName": "ImportBlobCreated"}}});
    let (status, body) = invoke(&state, "ImportBlobCreated", payload.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(is_queued_log(first_log(&body)), "{body}");

    // Event Grid redelivers: the same event is a no-op.
    let (status, body) = invoke(&state, "ImportBlobCreated", payload).await;
    assert_eq!(status, 200);
    assert!(first_log(&body).contains("registered before"), "{body}");

    run_the_queued_work_item(&state).await;
    assert_eq!(
        fhir_count(
            &fhir.base_url,
            &format!("Observation?subject=Patient/{}", patient_id(1))
        )
        .await,
        4
    );

    let (status_code, view) = import_status(&state, "bundles/dir/p1.json").await;
    assert_eq!(status_code, "200");
    assert_eq!(view["status"], "loaded");
    assert_eq!(view["resources"]["loaded"], 7);
    assert_eq!(view["outcome"], "bundlesprocessed/dir/p1.json");

    // Garbage is acknowledged (redelivery cannot help) with a log line saying why.
    let (status, body) = invoke(
        &state,
        "ImportBlobCreated",
        json!({"Data": {"event": "42"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(first_log(&body).contains("invalid event"), "{body}");
    let (status, body) = invoke(
        &state,
        "ImportWorker",
        json!({"Data": {"work": "{\"nope\":1}"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        first_log(&body).contains("not an import work item"),
        "{body}"
    );

    // An event names the version it is about (data.eTag, data.contentLength): registering it
    // needs no read of the blob, and a blob deleted before its work ran ends rejected, with
    // the reason recorded, instead of being retried.
    let bundle = Bytes::from(patient_bundle(2, 1).to_string());
    let mut gone = event_for_a_deleted_blob(&state, &event, "bundles", "gone.json", bundle).await;
    let deliver = |e: &Value| json!({"Data": {"event": e.to_string()}, "Metadata": {}});
    let (status, body) = invoke(&state, "ImportBlobCreated", deliver(&gone)).await;
    assert_eq!(status, 200);
    assert!(is_queued_log(first_log(&body)), "{body}");
    // The same version without the ETag's quotes is the same file version.
    let etag = gone["data"]["eTag"]
        .as_str()
        .unwrap()
        .trim_matches('"')
        .to_string();
    gone["data"]["eTag"] = json!(etag);
    let (_, body) = invoke(&state, "ImportBlobCreated", deliver(&gone)).await;
    assert!(first_log(&body).contains("registered before"), "{body}");
    run_the_queued_work_item(&state).await;
    assert_rejected_as_deleted(&state, "bundles/gone.json").await;

    // The same for an NDJSON file: rejected at once with the reason, not retried.
    let line = Bytes::from_static(b"{\"resourceType\":\"Patient\",\"id\":\"g\"}\n");
    let gone = event_for_a_deleted_blob(&state, &event, "ndjson", "gone.ndjson", line).await;
    let (_, body) = invoke(&state, "ImportBlobCreated", deliver(&gone)).await;
    assert!(is_queued_log(first_log(&body)), "{body}");
    run_the_queued_work_item(&state).await;
    assert_rejected_as_deleted(&state, "ndjson/gone.ndjson").await;
}

/// Uploads `content` as `container/name`, deletes it, and returns `template` made into the
/// BlobCreated event of the version that was deleted.
async fn event_for_a_deleted_blob(
    state: &AppState,
    template: &Value,
    container: &str,
    name: &str,
    content: Bytes,
) -> Value {
    let blobs = &state.importer.blobs;
    blobs.upload(container, name, content).await.unwrap();
    let version = blobs.properties(container, name).await.unwrap().unwrap();
    blobs.delete(container, name).await.unwrap();
    let mut event = template.clone();
    event["subject"] = json!(format!(
        "/blobServices/default/containers/{container}/blobs/{name}"
    ));
    event["data"]["eTag"] = json!(version.etag);
    event["data"]["contentLength"] = json!(version.size);
    event
}

/// The import of `path` ended rejected, saying the file was deleted after it was registered.
async fn assert_rejected_as_deleted(state: &AppState, path: &str) {
    let (_, view) = import_status(state, path).await;
    assert_eq!(view["status"], "rejected", "{view}");
    assert!(
        view["reason"]
            .as_str()
            .unwrap()
            .contains("deleted or replaced after it was registered"),
        "{view}"
    );
}

/// An invocation log line of a queued import: it names the import by id, never the blob (blob
/// names are often patient names).
fn is_queued_log(line: &str) -> bool {
    line.starts_with("queued import ") && !line.contains(".json") && !line.contains(".ndjson")
}

/// Nothing stays "loading" for ever: a work item whose message was lost is queued again by
/// the sweep, and an import whose rows fell behind its work (storage lost its last writes
/// after the file was loaded, moved and its result written) is closed from that result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_requeues_lost_work_and_closes_imports_whose_rows_fell_behind() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let state = host_state(&azurite, &fhir).await;
    let importer = &state.importer;
    importer
        .blobs
        .upload(
            "bundles",
            "p7.json",
            Bytes::from(patient_bundle(7, 3).to_string()),
        )
        .await
        .unwrap();
    importer.register("bundles", "p7.json", None).await.unwrap();
    // The message is lost.
    for m in importer
        .queue
        .receive(32, Duration::from_secs(60))
        .await
        .unwrap()
    {
        importer.queue.delete(&m).await.unwrap();
    }
    let sweep = importer
        .reconcile_stale_after(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(sweep.requeued, 1, "{sweep:?}");
    run_the_queued_work_item(&state).await;
    let (_, view) = import_status(&state, "bundles/p7.json").await;
    assert_eq!(view["status"], "loaded", "{view}");

    // The rows fall behind: back to loading, nothing counted, the part pending.
    let key = importer.store.files(None).await.unwrap()[0]
        .partition_key
        .clone();
    let mut file = importer.store.file(&key).await.unwrap().unwrap();
    file.data.status = FileStatus::Loading;
    file.data.counts.loaded = 0;
    importer.store.upsert(&file).await.unwrap();
    let mut part = importer.store.part(&key, 0).await.unwrap().unwrap();
    part.data.status = PartStatus::Loading;
    importer.store.upsert(&part).await.unwrap();
    let sweep = importer
        .reconcile_stale_after(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(sweep.closed_from_result, 1, "{sweep:?}");
    let (_, view) = import_status(&state, "bundles/p7.json").await;
    assert_eq!(view["status"], "loaded", "{view}");
    assert_eq!(view["resources"]["loaded"], 6, "{view}");
    assert_eq!(view["outcome"], "bundlesprocessed/p7.json", "{view}");
    // A sweep through the host's timer invocation finds nothing more to do.
    let (status, body) = invoke(
        &state,
        "Reconcile",
        json!({"Data": {"timer": {}}, "Metadata": {}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(first_log(&body).starts_with("requeued 0 parts"), "{body}");
}

/// An export whose fetch steps were lost after planning gets them again from the sweep, each
/// with its own search, and exports exactly what the server has. Fails before work rows kept
/// their search: the sweep queued the lost fetches with an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_requeues_lost_fetch_steps_with_their_searches() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let client = reqwest::Client::new();
    for n in 1..=3 {
        let patient: Value = serde_json::from_str(&crate::fixtures::patient_line(n)).unwrap();
        let url = format!("{}/Patient/{}", fhir.base_url, patient_id(n));
        let resp = client.put(url).json(&patient).send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    let state = host_state(&azurite, &fhir).await;
    let exporter = &state.exporter;
    let id = start_patient_export(&state).await;
    // The gather step runs and plans; the fetch steps it queued are lost.
    let gather = exporter
        .queue
        .receive(32, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(gather.len(), 1);
    assert_eq!(
        invoke(&state, "ExportWorker", queue_payload(&gather[0]))
            .await
            .0,
        200
    );
    exporter.queue.delete(&gather[0]).await.unwrap();
    let lost = exporter
        .queue
        .receive(32, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!lost.is_empty(), "the fetch steps were queued");
    for m in &lost {
        exporter.queue.delete(m).await.unwrap();
    }
    let queued = exporter
        .reconcile_stale_after(Duration::ZERO)
        .await
        .unwrap();
    assert!(queued >= 1, "{queued}");
    let manifest = run_export_to_completion(&state, &id).await;
    let patients: u64 = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "Patient")
        .map(|o| o["count"].as_u64().unwrap())
        .sum();
    assert_eq!(patients, 3, "{manifest}");
    assert!(
        manifest["error"].as_array().unwrap().is_empty(),
        "{manifest}"
    );
}

/// The same for exports: an export whose queued steps were lost is given them again by the
/// sweep, and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_requeues_the_lost_steps_of_an_export() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let state = host_state(&azurite, &fhir).await;
    let exporter = &state.exporter;
    let id = start_patient_export(&state).await;
    // Its first step is lost.
    for m in exporter
        .queue
        .receive(32, Duration::from_secs(60))
        .await
        .unwrap()
    {
        exporter.queue.delete(&m).await.unwrap();
    }
    let queued = exporter
        .reconcile_stale_after(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(queued, 1, "the gather step");
    run_export_to_completion(&state, &id).await;
}
