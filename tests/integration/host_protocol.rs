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
use crate::meter::StorageMeter;
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
    let text = || Value::String(String::from_utf8_lossy(&bytes).into_owned());
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|_| text()),
    )
}

/// Settings that send every file through a queued work item (none is loaded on delivery).
const QUEUE_EVERY_FILE: [(&str, &str); 1] = [("FHIRBULK_LOAD_ON_DELIVERY_MAX_KIB", "0")];

/// The handler's state as the host mode builds it, on a test's Azurite and FHIR server.
async fn host_state(azurite: &Azurite, fhir: &FhirServer) -> AppState {
    host_state_on(&azurite.connection_string, &fhir.base_url, &[]).await
}

/// The same on the storage account `connection_string` names and the FHIR server at
/// `fhir_url`, with more settings.
async fn host_state_on(
    connection_string: &str,
    fhir_url: &str,
    settings: &[(&'static str, &str)],
) -> AppState {
    let mut env: HashMap<&str, &str> = HashMap::from([
        ("FHIRBULK_STORAGE_CONNECTION_STRING", connection_string),
        ("FHIRBULK_FHIR_URL", fhir_url),
    ]);
    env.extend(settings.iter().copied());
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
    let state = host_state_on(
        &azurite.connection_string,
        &fhir.base_url,
        &QUEUE_EVERY_FILE,
    )
    .await;
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
    let state = host_state_on(
        &azurite.connection_string,
        &fhir.base_url,
        &QUEUE_EVERY_FILE,
    )
    .await;
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

    // The work stopped between writing the result and moving the input (the result is
    // written first): the sweep moves the input as the result says and closes the import,
    // without loading the file again.
    let bundle = Bytes::from(patient_bundle(8, 1).to_string());
    importer
        .blobs
        .upload("bundles", "p8.json", bundle)
        .await
        .unwrap();
    importer.register("bundles", "p8.json", None).await.unwrap();
    let lost = importer
        .queue
        .receive(32, Duration::from_secs(60))
        .await
        .unwrap();
    let key = importer
        .store
        .files(None)
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.data.blob == "p8.json")
        .unwrap()
        .partition_key;
    let id = fhir_bulk::import::work::import_id(&key);
    let result = json!({"file": "bundles/p8.json", "status": "loaded", "input": "bundlesprocessed/p8.json",
        "resources": {"loaded": 3, "failed": 0, "alreadyPresent": 0, "notLoaded": 0}, "linesRead": 0});
    let name = fhir_bulk::storage::reports::report_blob("bundles", "p8.json", &id, "result.json");
    importer
        .blobs
        .upload("reports", &name, Bytes::from(result.to_string()))
        .await
        .unwrap();
    let sweep = importer
        .reconcile_stale_after(Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (sweep.closed_from_result, sweep.requeued),
        (1, 0),
        "{sweep:?}"
    );
    let (_, view) = import_status(&state, "bundles/p8.json").await;
    assert_eq!(view["status"], "loaded", "{view}");
    assert_eq!(view["outcome"], "bundlesprocessed/p8.json", "{view}");
    assert!(
        importer
            .blobs
            .properties("bundles", "p8.json")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        importer
            .blobs
            .properties("bundlesprocessed", "p8.json")
            .await
            .unwrap()
            .is_some()
    );
    // The lost work item, delivered after all, finds the import finished.
    invoke(&state, "ImportWorker", queue_payload(&lost[0])).await;
    assert_eq!(
        fhir_count(
            &fhir.base_url,
            &format!("Observation?subject=Patient/{}", patient_id(8))
        )
        .await,
        0,
        "the file was not loaded again"
    );
}

/// An export whose fetch steps were lost after planning gets them again from the sweep, each
/// with its own search, and exports exactly what the server has. Fails before work rows kept
/// their search: the sweep queued the lost fetches with an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_requeues_lost_fetch_steps_with_their_searches() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let (state, id) = an_export_whose_fetch_steps_were_lost(&azurite, &fhir).await;
    let exporter = &state.exporter;
    let queued = exporter
        .reconcile_stale_after(Duration::ZERO)
        .await
        .unwrap();
    assert!(queued >= 1, "{queued}");
    assert_exports_the_three_patients(&state, &id).await;
}

/// A planning step delivered again after its export was planned (its first delivery died
/// while it ran a small plan's searches itself) queues the searches still pending, each with
/// its own search, and the export completes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_planning_step_queues_the_searches_still_pending() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let (queued_state, id) = an_export_whose_fetch_steps_were_lost(&azurite, &fhir).await;
    // The same export's planning step, delivered again to a handler that runs small plans in
    // the step (the default): what the dead delivery left pending is queued.
    let state = host_state(&azurite, &fhir).await;
    let gather = json!({"Data": {"work": serde_json::to_string(&fhir_bulk::export::ExportWork::Gather { export: id.clone() }).unwrap()}, "Metadata": {"DequeueCount": 2, "Id": "again"}});
    let (status, body) = invoke(&state, "ExportWorker", gather).await;
    assert_eq!(status, 200, "{body}");
    drop(queued_state);
    assert_exports_the_three_patients(&state, &id).await;
}

/// Three patients on the server, an export of them planned by a handler that queues every
/// search (`FHIRBULK_EXPORT_SEARCHES_IN_STEP=0`), and the fetch steps it queued lost: that
/// handler's state and the export's id.
async fn an_export_whose_fetch_steps_were_lost(
    azurite: &Azurite,
    fhir: &FhirServer,
) -> (AppState, String) {
    let client = reqwest::Client::new();
    for n in 1..=3 {
        let patient: Value = serde_json::from_str(&crate::fixtures::patient_line(n)).unwrap();
        let url = format!("{}/Patient/{}", fhir.base_url, patient_id(n));
        let resp = client.put(url).json(&patient).send().await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    let every_search_queued = [("FHIRBULK_EXPORT_SEARCHES_IN_STEP", "0")];
    let state = host_state_on(
        &azurite.connection_string,
        &fhir.base_url,
        &every_search_queued,
    )
    .await;
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
    (state, id)
}

/// Runs export `id` to completion: it holds the three patients, and no error.
async fn assert_exports_the_three_patients(state: &AppState, id: &str) {
    let manifest = run_export_to_completion(state, id).await;
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

/// What one small file costs in storage requests, event to result, as the Functions host runs
/// it: the Event Grid delivery, then any queued work item received and deleted by the host's
/// queue trigger. A storage account serves about 20,000 requests a second, so this count, not
/// the instances, bounds files per hour (#17 §3: at most seven). The file still loads whole,
/// moves and reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_costs_at_most_seven_storage_requests() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let meter = StorageMeter::start(&azurite).await;
    let state = host_state_on(&meter.connection_string, &fhir.base_url, &[]).await;
    let cases = [
        ("bundles", "small/p3.json", patient_bundle(3, 4).to_string()),
        (
            "ndjson",
            "small/p4.ndjson",
            format!(
                "{}\n{}\n",
                json!({"resourceType": "Patient", "id": "meter-a"}),
                json!({"resourceType": "Patient", "id": "meter-b"})
            ),
        ),
    ];
    for (container, name, content) in cases {
        let delivery = upload_with_event(&state, container, name, Bytes::from(content)).await;
        meter.reset();
        let (status, body) = invoke(&state, "ImportBlobCreated", delivery).await;
        assert_eq!(status, 200, "{body}");
        // The host's queue trigger: receive, run, delete. Its polling of an empty queue is not
        // the file's cost.
        let delivered = meter.counts();
        let messages = state
            .importer
            .queue
            .receive(32, Duration::from_secs(60))
            .await
            .unwrap();
        for m in &messages {
            let (status, _) = invoke(&state, "ImportWorker", queue_payload(m)).await;
            assert_eq!(status, 200);
            state.importer.queue.delete(m).await.unwrap();
        }
        let counts = if messages.is_empty() {
            delivered
        } else {
            meter.counts()
        };
        let total: usize = counts.values().sum();
        eprintln!("a small file in {container}: {total} storage requests: {counts:?}");
        let (_, view) = import_status(&state, &format!("{container}/{name}")).await;
        assert_eq!(view["status"], "loaded", "{view}");
        assert_eq!(view["outcome"], format!("{container}processed/{name}"));
        assert!(
            total <= 7,
            "a small file in {container} cost {total} storage requests: {counts:?}"
        );
    }
}

/// A small file is loaded by the delivery of its event, which answers only once it is loaded
/// or handed on: a load that outlasts `FHIRBULK_LOAD_ON_DELIVERY_SECS` goes on as a work item,
/// and a delivery that died mid-load is taken over by the next delivery of the event, once the
/// load cannot be running any more (before, that delivery is refused, so Event Grid repeats it).
/// Each file ends loaded exactly once, with exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_loads_on_delivery_and_a_dead_delivery_is_taken_over() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let (_standin, slow_url) = crate::standin::StandIn::start(
        &fhir.base_url,
        crate::standin::Faults::slow(Duration::from_millis(400)),
    )
    .await;
    let settings = [
        ("FHIRBULK_LOAD_ON_DELIVERY_SECS", "1"),
        ("FHIRBULK_NDJSON_RESOURCES_PER_BUNDLE", "2"),
        ("FHIRBULK_FHIR_MAX_CONCURRENCY", "1"),
    ];
    let state = host_state_on(&azurite.connection_string, &slow_url, &settings).await;
    let lines = |tag: &str| -> Bytes {
        let lines: Vec<String> = (0..8)
            .map(|i| crate::fixtures::observation_line(tag, 5, i, 10))
            .collect();
        Bytes::from(lines.join("\n") + "\n")
    };
    let patient = Bytes::from(crate::fixtures::patient_line(5) + "\n");
    let payload = upload_with_event(&state, "ndjson", "patient.ndjson", patient).await;
    let (status, body) = invoke(&state, "ImportBlobCreated", payload).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        first_log(&body),
        format!(
            "loaded import {} on delivery: loaded",
            import_of(&state, "patient.ndjson").await
        )
    );

    // Four batches of 0.4 s outlast the 1 s a load on delivery may take: a work item goes on.
    let payload = upload_with_event(&state, "ndjson", "slow.ndjson", lines("slow")).await;
    let (status, body) = invoke(&state, "ImportBlobCreated", payload).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        first_log(&body).contains("a queued work item goes on"),
        "{body}"
    );
    run_the_queued_work_item(&state).await;
    let (_, view) = import_status(&state, "ndjson/slow.ndjson").await;
    assert_eq!(view["status"], "loaded", "{view}");
    assert_eq!(view["resources"]["loaded"], 8, "{view}");

    // A delivery dies mid-load (its process killed: nothing after the kill runs).
    let payload = upload_with_event(&state, "ndjson", "dies.ndjson", lines("dies")).await;
    let dying = tokio::spawn({
        let (state, payload) = (state.clone(), payload.clone());
        async move { invoke(&state, "ImportBlobCreated", payload).await }
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    dying.abort();
    // Delivered again at once: the load may still be running, so not acknowledged.
    let (status, body) = invoke(&state, "ImportBlobCreated", payload.clone()).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.to_string().contains("deliver it again later"),
        "{body}"
    );
    // Delivered again once it cannot be: a work item takes over from the checkpoint.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = invoke(&state, "ImportBlobCreated", payload.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert!(is_queued_log(first_log(&body)), "{body}");
    run_the_queued_work_item(&state).await;
    let (_, view) = import_status(&state, "ndjson/dies.ndjson").await;
    assert_eq!(view["status"], "loaded", "{view}");
    assert_eq!(view["resources"]["loaded"], 8, "{view}");
    // And once more: nothing left to do.
    let (status, body) = invoke(&state, "ImportBlobCreated", payload).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        first_log(&body).contains("registered before (loaded)"),
        "{body}"
    );
    let search = format!("Observation?subject=Patient/{}", patient_id(5));
    assert_eq!(fhir_count(&fhir.base_url, &search).await, 16);
}

/// Uploads `content` as `container/name` and returns the Event Grid delivery of its
/// BlobCreated event, naming the version uploaded (its ETag and size) as Azure does.
async fn upload_with_event(state: &AppState, container: &str, name: &str, content: Bytes) -> Value {
    let blobs = &state.importer.blobs;
    blobs.upload(container, name, content).await.unwrap();
    let version = blobs.properties(container, name).await.unwrap().unwrap();
    let event = json!({
        "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": format!("/blobServices/default/containers/{container}/blobs/{name}"),
        "eventType": "Microsoft.Storage.BlobCreated", "id": format!("evt-{name}"), "eventTime": "2026-12-06T10:00:00Z",
        "data": {"api": "PutBlob", "eTag": version.etag, "contentLength": version.size},
        "dataVersion": "", "metadataVersion": "1"
    });
    json!({"Data": {"event": event.to_string()}, "Metadata": {}})
}

/// The id of the one import of `name`.
async fn import_of(state: &AppState, name: &str) -> String {
    let files = state.importer.store.files(None).await.unwrap();
    let file = files.iter().find(|f| f.data.blob == name).unwrap();
    fhir_bulk::import::work::import_id(&file.partition_key)
}

/// A status request of a running export is held until the export completes (up to the hold):
/// a small export's client gets its manifest when it is done, not a second or more later at
/// its next poll. Fails before the hold: the first answer was a 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_request_waits_for_a_running_export_to_complete() {
    use fhir_bulk::export::control;
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let client = reqwest::Client::new();
    let patient: Value = serde_json::from_str(&crate::fixtures::patient_line(1)).unwrap();
    let url = format!("{}/Patient/{}", fhir.base_url, patient_id(1));
    client.put(url).json(&patient).send().await.unwrap();
    let state = host_state(&azurite, &fhir).await;
    let id = start_patient_export(&state).await;
    let held = tokio::spawn({
        let (state, id) = (state.clone(), id.clone());
        async move { control::status_after_hold(&state.exporter, &id, Duration::from_secs(60)).await }
    });
    run_export_to_completion(&state, &id).await;
    let answer = held.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["output"][0]["count"], 1, "{}", answer.body);
}
