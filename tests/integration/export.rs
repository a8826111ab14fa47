//! Export end to end: data loaded by the import engine into the real FHIR server, exported by
//! the real `handler serve` into real Azurite, and every output file compared with what the
//! server itself returns for the same searches.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::fixtures::{observation_line, patient_bundle, patient_id};
use crate::support::{
    Azurite, FhirServer, GIVE_UP_FAST, Handler, blob_text, blobs, export_store, searched,
};

const PATIENTS: usize = 12;

/// A Coverage whose subscriber is patient `n`, in class `class`.
fn coverage_line(n: usize, class: &str) -> String {
    json!({"resourceType": "Coverage", "id": format!("cov-{n}"), "status": "active",
           "beneficiary": {"reference": format!("Patient/{}", patient_id(n))},
           "subscriber": {"reference": format!("Patient/{}", patient_id(n))},
           "payor": [{"display": "Payer"}],
           "class": [{"type": {"text": "plan"}, "value": class}]})
    .to_string()
}

/// Twelve patients by transaction Bundle (even ones born 1940), 600 padded Observations of
/// patient 0 (about 1.3 MB: the Observation output rolls over at 1 MiB), and Coverages
/// (Med1 for every third patient), all loaded through the import engine.
async fn load(azurite: &Azurite, handler: &Handler) {
    let store = blobs(azurite);
    for n in 0..PATIENTS {
        let bundle = patient_bundle(n, 3).to_string();
        store
            .upload("bundles", &format!("p{n}.json"), Bytes::from(bundle))
            .await
            .unwrap();
    }
    let heavy: Vec<String> = (0..600)
        .map(|i| observation_line("heavy", 0, i, 2000))
        .collect();
    store
        .upload(
            "ndjson",
            "heavy.ndjson",
            Bytes::from(heavy.join("\n") + "\n"),
        )
        .await
        .unwrap();
    let coverages: Vec<String> = (0..PATIENTS)
        .map(|n| coverage_line(n, if n % 3 == 0 { "Med1" } else { "Med2" }))
        .collect();
    store
        .upload(
            "ndjson",
            "coverage.ndjson",
            Bytes::from(coverages.join("\n") + "\n"),
        )
        .await
        .unwrap();
    handler.wait_imports(PATIENTS + 2, 300).await;
}

/// Every `Type/id` the server returns for a search, following `next` links.
async fn server_ids(fhir: &str, search: &str) -> BTreeSet<String> {
    searched(fhir, search).await.into_keys().collect()
}

pub(crate) async fn post_export(
    handler: &Handler,
    body: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    post_to(handler, "$alt-export", body).await
}

async fn post_to(
    handler: &Handler,
    path: &str,
    body: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = handler
        .client
        .clone()
        .post(format!("{}/{path}", handler.base))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

async fn get_status(handler: &Handler, id: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = handler
        .client
        .get(format!("{}/$alt-export/{id}", handler.base))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

/// Polls the status until it is no longer 202; returns the final answer.
pub(crate) async fn wait_export(handler: &Handler, id: &str, timeout_secs: u64) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let (status, body, headers) = get_status(handler, id).await;
        if status != 202 {
            return (status, body);
        }
        assert!(headers.contains_key("x-progress"), "202 without X-Progress");
        assert!(
            headers.contains_key("retry-after"),
            "202 without Retry-After"
        );
        assert!(
            Instant::now() < deadline,
            "export {id} still running after {timeout_secs}s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The export's files per type: every line, checked to be a resource of that type.
async fn exported(azurite: &Azurite, manifest: &Value) -> BTreeMap<String, Vec<String>> {
    let store = blobs(azurite);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in manifest["output"].as_array().unwrap() {
        let kind = file["type"].as_str().unwrap().to_string();
        let url = file["url"].as_str().unwrap();
        let name = url.split("/export/").nth(1).unwrap();
        let text = blob_text(&store, "export", name).await;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        assert_eq!(
            lines.len() as u64,
            file["count"].as_u64().unwrap(),
            "manifest count of {name}"
        );
        assert_eq!(text.len() as u64, file["sizebytes"].as_u64().unwrap());
        for line in &lines {
            let v: Value = serde_json::from_str(line).expect("each line is one JSON resource");
            assert_eq!(v["resourceType"], kind.as_str(), "{name}");
        }
        out.entry(kind).or_default().extend(lines);
    }
    out
}

fn ids_of(lines: &[String]) -> (BTreeSet<String>, usize) {
    let set: BTreeSet<String> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            )
        })
        .collect();
    let len = set.len();
    (set, lines.len() - len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exports_hold_exactly_what_the_server_returns() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    // Short URLs and small pages: several id batches and several pages per search.
    let handler = Handler::start(
        &azurite,
        &fhir.base_url,
        &[
            ("FHIRBULK_EXPORT_MAX_URL_LENGTH", "256"),
            ("FHIRBULK_EXPORT_PAGE_SIZE", "40"),
            ("FHIRBULK_EXPORT_MAX_FILE_MIB", "1"),
        ],
    );
    let before_load = time::OffsetDateTime::now_utc() - time::Duration::seconds(2);
    load(&azurite, &handler).await;
    let base = &fhir.base_url;

    // Provider style: patients born before 1951; the two Observation searches overlap.
    let definition = json!({
        "query": "Patient?birthdate=lt1951-01-01",
        "patientreferencefield": "id",
        "include": ["Patient?_id=$IDS", "Encounter?patient=$IDS",
                    "Observation?patient=$IDS", "Observation?subject=$IDS&code=8867-4"]});
    let (status, started, headers) = post_export(&handler, &definition.to_string()).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let status_uri = started["statusQueryGetUri"].as_str().unwrap();
    assert!(
        status_uri.ends_with(&format!("/$alt-export/{id}")),
        "{status_uri}"
    );
    assert_eq!(headers["content-location"].to_str().unwrap(), status_uri);
    assert!(
        started["terminatePostUri"].is_string() && started["purgeHistoryDeleteUri"].is_string()
    );
    let (status, manifest) = wait_export(&handler, &id, 240).await;
    assert_eq!(status, 200, "{manifest}");
    assert_eq!(manifest["extension"]["status"], "completed");
    assert_eq!(manifest["error"], json!([]));
    let old: Vec<String> = (0..PATIENTS).step_by(2).map(patient_id).collect();
    assert_eq!(manifest["extension"]["patients"], old.len());
    assert!(
        manifest["extension"]["batches"].as_i64().unwrap() > 1,
        "{manifest}"
    );
    let files = exported(&azurite, &manifest).await;
    let ids = old.join(",");
    for (kind, search) in [
        ("Patient", format!("Patient?_id={ids}")),
        ("Encounter", format!("Encounter?patient={ids}")),
        ("Observation", format!("Observation?patient={ids}")),
    ] {
        let (got, duplicates) = ids_of(&files[kind]);
        assert_eq!(duplicates, 0, "{kind} written once each");
        assert_eq!(got, server_ids(base, &search).await, "{kind}");
    }
    assert_eq!(
        files.len(),
        3,
        "only the included types: {:?}",
        files.keys()
    );
    assert_eq!(files["Observation"].len(), 6 * 3 + 600);
    // Patient 0's 600 Observations are 16 pages of 40: its batch's search was cut into
    // searches of fewer patients (`export::split`), and the files are the same.
    let rows = export_store(&azurite).work_rows(&id).await.unwrap();
    assert!(
        rows.iter().any(|r| r.data.split_into > 1),
        "a long search is cut"
    );
    assert!(
        manifest["extension"]["duplicatesDropped"].as_i64().unwrap() >= 18,
        "the second Observation search found the same resources again: {manifest}"
    );
    let observation_files = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "Observation")
        .count();
    assert!(observation_files >= 2, "Observation rolled over at 1 MiB");
    let store = blobs(&azurite);
    let completed: Value = serde_json::from_str(
        &blob_text(&store, "export", &format!("{id}/_completed_run.json")).await,
    )
    .unwrap();
    assert_eq!(
        completed, manifest,
        "_completed_run.json is the status body"
    );
    assert!(
        store
            .list("export", Some(&format!("{id}/_")))
            .await
            .unwrap()
            .iter()
            .all(|b| b.name.ends_with("_completed_run.json")),
        "staging blobs are cleaned up"
    );

    // Payer style: subscribers of class Med1 found through Coverage.subscriber. The Patient
    // file comes only from the Encounter search's _include: a type is composed only once no
    // pending search can return it, whatever type that search is on.
    let definition = json!({
        "query": "Coverage?class-value=Med1",
        "patientreferencefield": "subscriber",
        "include": ["Coverage?patient=$IDS", "Encounter?patient=$IDS&_include=Encounter:subject"]});
    let (status, started, _) = post_export(&handler, &definition.to_string()).await;
    assert_eq!(status, 202, "{started}");
    let payer = started["id"].as_str().unwrap().to_string();
    let (status, manifest) = wait_export(&handler, &payer, 240).await;
    assert_eq!(status, 200, "{manifest}");
    let subscribers: Vec<String> = (0..PATIENTS).step_by(3).map(patient_id).collect();
    let files = exported(&azurite, &manifest).await;
    let ids = subscribers.join(",");
    for (kind, search) in [
        ("Patient", format!("Patient?_id={ids}")),
        ("Coverage", format!("Coverage?patient={ids}")),
        ("Encounter", format!("Encounter?patient={ids}")),
    ] {
        let (got, duplicates) = ids_of(&files[kind]);
        assert_eq!(duplicates, 0);
        assert_eq!(got.len(), subscribers.len(), "{kind}");
        assert_eq!(got, server_ids(base, &search).await, "{kind}");
    }

    // The listing shows both, newest first.
    let list: Value = handler
        .client
        .get(format!("{}/$alt-export-status", handler.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["instanceId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [payer.as_str(), id.as_str()]);

    // Purge deletes files and state; then the id is unknown.
    let resp = handler
        .client
        .clone()
        .delete(format!("{}/$alt-export/{id}", handler.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        store
            .list("export", Some(&format!("{id}/")))
            .await
            .unwrap()
            .is_empty()
    );
    let (status, body, _) = get_status(&handler, &id).await;
    assert_eq!(status, 404, "{body}");
    let resp = handler
        .client
        .clone()
        .delete(format!("{}/$alt-export/{id}", handler.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "purging twice says the export is unknown"
    );

    // Export-all in parallel time windows: a few Observations written seconds after the load
    // make at least two windows with resources; together the windows hold each Observation
    // exactly once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..5 {
        let line: Value = serde_json::from_str(&observation_line("late", 1, i, 10)).unwrap();
        let url = format!("{base}/Observation/{}", line["id"].as_str().unwrap());
        let resp = reqwest::Client::new()
            .put(url)
            .header("content-type", "application/fhir+json")
            .body(line.to_string())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
    let since = before_load
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let definition = json!({"_type": "Observation", "_since": since,
        "_parallelizationCount": 4, "_parallelSearchInSecondsInterval": 1});
    let (status, started, _) = post_to(&handler, "$alt-export-all", &definition.to_string()).await;
    assert_eq!(status, 202, "{started}");
    let all = started["id"].as_str().unwrap().to_string();
    let (status, manifest) = wait_export(&handler, &all, 240).await;
    assert_eq!(status, 200, "{manifest}");
    assert_eq!(manifest["extension"]["kind"], "all");
    assert!(
        manifest["extension"]["workItems"].as_i64().unwrap() >= 2,
        "several time ranges: {manifest}"
    );
    assert_eq!(
        manifest["extension"]["duplicatesDropped"], 0,
        "time ranges do not overlap"
    );
    let files = exported(&azurite, &manifest).await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["Observation"]);
    let (got, duplicates) = ids_of(&files["Observation"]);
    assert_eq!(duplicates, 0);
    assert_eq!(got.len(), PATIENTS * 3 + 600 + 5);
    assert_eq!(got, server_ids(base, "Observation").await);

    // Export-all of a whole type in one search, started by a trigger file.
    store
        .upload(
            "export-trigger",
            "coverage-all.json",
            Bytes::from(r#"{"_type": "Coverage"}"#),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        let listed = store
            .list("reports", Some("export-trigger/coverage-all.json/"))
            .await
            .unwrap();
        if let Some(found) = listed.first() {
            break blob_text(&store, "reports", &found.name).await;
        }
        assert!(Instant::now() < deadline, "trigger file not picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let started: Value = serde_json::from_str(&result).unwrap();
    let (status, manifest) = wait_export(&handler, started["id"].as_str().unwrap(), 120).await;
    assert_eq!(status, 200, "{manifest}");
    let files = exported(&azurite, &manifest).await;
    let (got, duplicates) = ids_of(&files["Coverage"]);
    assert_eq!(duplicates, 0);
    assert_eq!(got.len(), PATIENTS);
    assert_eq!(got, server_ids(base, "Coverage").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_definitions_get_400s_that_say_why() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let handler = Handler::start(&azurite, &fhir.base_url, &[]);
    for (body, expected) in [
        ("{not json", "not valid JSON"),
        (
            r#"{"patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
            "query is missing",
        ),
        (
            r#"{"query":"Patient","patientreferencefield":"id","include":["Encounter?patient=x"]}"#,
            "has no $IDS",
        ),
        (
            r#"{"query":"https://elsewhere.example.com/fhir/Patient","patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
            "points at another server",
        ),
    ] {
        let (status, outcome, _) = post_export(&handler, body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.contains(expected), "{body}: {diagnostics}");
    }
    for (body, expected) in [
        (r#"{"_type":"Patient,Observation"}"#, "one type"),
        (
            r#"{"_type":"Observation","_since":"yesterday"}"#,
            "is not a date",
        ),
        (
            r#"{"_type":"Observation","_parallelizationCount":4}"#,
            "needs _since",
        ),
        (
            r#"{"_type":"Observation","_baseAddress":"https://elsewhere.example.com/fhir"}"#,
            "is not this loader's FHIR server",
        ),
    ] {
        let (status, outcome, _) = post_to(&handler, "$alt-export-all", body).await;
        assert_eq!(status, 400, "{body}");
        let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.contains(expected), "{body}: {diagnostics}");
    }
    let (status, _, _) = get_status(&handler, "0123456789abcdef0123456789abcdef").await;
    assert_eq!(status, 404);

    // Trigger files: a valid definition starts an export (here of an empty server: a manifest
    // with no output) and moves to -processed; an invalid one moves to -err with the reason.
    let store = blobs(&azurite);
    let good = json!({"query": "Patient", "patientreferencefield": "id",
                      "include": ["Patient?_id=$IDS"]});
    store
        .upload(
            "export-trigger",
            "nightly.json",
            Bytes::from(good.to_string()),
        )
        .await
        .unwrap();
    store
        .upload(
            "export-trigger",
            "broken.json",
            Bytes::from("{\"query\": 1}"),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store.list("export-trigger", None).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "trigger files were not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The start answers are in the reports container, named by trigger file and export id.
    let report = |prefix: &'static str| {
        let store = store.clone();
        async move {
            let found = store.list("reports", Some(prefix)).await.unwrap();
            assert_eq!(found.len(), 1, "{prefix}: {found:?}");
            blob_text(&store, "reports", &found[0].name).await
        }
    };
    let started: Value =
        serde_json::from_str(&report("export-trigger/nightly.json/").await).unwrap();
    let id = started["id"].as_str().unwrap();
    let (status, manifest) = wait_export(&handler, id, 60).await;
    assert_eq!(status, 200, "{manifest}");
    assert_eq!(manifest["output"], json!([]));
    assert_eq!(manifest["extension"]["patients"], 0);
    assert!(
        store
            .properties("export-trigger-processed", "nightly.json")
            .await
            .unwrap()
            .is_some()
    );
    let outcome = report("export-trigger/broken.json/").await;
    assert!(outcome.contains("query is missing"), "{outcome}");
    let resp = handler
        .client
        .clone()
        .post(format!(
            "{}/$alt-export/0123456789abcdef0123456789abcdef/terminate",
            handler.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // fhir-loader's terminate URL: known ids only, and only the terminate action.
    let manage = format!("{}/$alt-export-manage/{id}", handler.base);
    let resp = handler
        .client
        .get(format!("{manage}?action=purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = handler
        .client
        .get(format!("{manage}?action=terminate"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "an ended export answers that it had ended"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "completed");
    let resp = handler
        .client
        .get(format!(
            "{}/$alt-export-manage/0123456789abcdef0123456789abcdef",
            handler.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// Sorted lines per type: what an export wrote, independent of file boundaries.
fn sorted(files: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    files
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_export_resumes_with_identical_output_and_terminate_works() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    // One id per batch and tiny pages: many work items, so the kill lands mid-export.
    let env = [
        ("FHIRBULK_EXPORT_MAX_URL_LENGTH", "256"),
        ("FHIRBULK_EXPORT_PAGE_SIZE", "5"),
        ("FHIRBULK_MAX_EXPORTS", "1"),
        ("FHIRBULK_WORKERS", "2"),
        // Every search a queued step (a plan this small would run them all in its planning
        // step, at once): the kill lands among them.
        ("FHIRBULK_EXPORT_SEARCHES_IN_STEP", "0"),
        // Work held by the killed process comes back after 10 s instead of 2 minutes.
        ("FHIRBULK_WORK_VISIBILITY_SECS", "10"),
    ];
    let mut handler = Handler::start(&azurite, &fhir.base_url, &env);
    load(&azurite, &handler).await;
    let definition = json!({
        "query": "Patient?_count=3",
        "patientreferencefield": "id",
        "include": ["Patient?_id=$IDS", "Observation?patient=$IDS", "Encounter?patient=$IDS"]})
    .to_string();
    let (status, started, _) = post_export(&handler, &definition).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    // The cap is one export at a time.
    let (status, busy, _) = post_export(&handler, &definition).await;
    assert_eq!(status, 429, "{busy}");
    assert!(
        busy["error"]
            .as_str()
            .unwrap()
            .contains("FHIRBULK_MAX_EXPORTS")
    );
    // Kill once some, not all, work items are finished. Progress is read from the export's
    // rows: a status request is held while the export runs, and could outlast it.
    let store = export_store(&azurite);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = store.job(&id).await.unwrap().expect("the job row");
        assert!(
            job.data.status.is_running(),
            "the export finished before the kill: {:?}",
            job.data.status
        );
        let rows = store.work_rows(&id).await.unwrap();
        let finished = rows.iter().filter(|r| !r.data.is_pending()).count();
        if finished >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress: {finished} finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handler.kill();
    let handler = Handler::start(&azurite, &fhir.base_url, &env);
    let (status, resumed) = wait_export(&handler, &id, 300).await;
    assert_eq!(status, 200, "{resumed}");
    let resumed_files = sorted(exported(&azurite, &resumed).await);

    // The same definition, uninterrupted, writes the same resources.
    let (status, again, _) = post_export(&handler, &definition).await;
    assert_eq!(status, 202, "{again}");
    let again_id = again["id"].as_str().unwrap().to_string();
    let (status, clean) = wait_export(&handler, &again_id, 300).await;
    assert_eq!(status, 200, "{clean}");
    let clean_files = sorted(exported(&azurite, &clean).await);
    assert_eq!(
        resumed_files, clean_files,
        "a killed export's output equals a clean run's"
    );
    assert_eq!(resumed_files["Patient"].len(), PATIENTS);
    assert_eq!(resumed_files["Observation"].len(), PATIENTS * 3 + 600);
    assert_eq!(
        resumed["extension"]["resources"], clean["extension"]["resources"],
        "counts agree"
    );

    // Terminate: stops a running export, is idempotent, and purge removes it.
    let (status, third, _) = post_export(&handler, &definition).await;
    assert_eq!(status, 202, "{third}");
    let third = third["id"].as_str().unwrap().to_string();
    let client = handler.client.clone();
    let terminate = format!("{}/$alt-export/{third}/terminate", handler.base);
    let first: Value = client
        .post(&terminate)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["status"], "terminated", "{first}");
    let second = client.post(&terminate).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert!(
        second["message"]
            .as_str()
            .unwrap()
            .contains("already ended"),
        "{second}"
    );
    let (status, body, _) = get_status(&handler, &third).await;
    assert_eq!(status, 410, "{body}");
    // Nothing is scheduled any more: no compose, no manifest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = blobs(&azurite);
    assert!(
        store
            .properties("export", &format!("{third}/_completed_run.json"))
            .await
            .unwrap()
            .is_none()
    );
    let purged = client
        .delete(format!("{}/$alt-export/{third}", handler.base))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    assert!(
        store
            .list("export", Some(&format!("{third}/")))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_searches_end_in_completed_with_errors_and_are_listed() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let (_standin, url) = crate::standin::StandIn::start(
        &fhir.base_url,
        crate::standin::Faults {
            fail_gets_containing: Some("/Encounter?".into()),
            ..Default::default()
        },
    )
    .await;
    let env = [
        GIVE_UP_FAST.as_slice(),
        &[("FHIRBULK_EXPORT_PAGE_SIZE", "7")],
    ]
    .concat();
    let handler = Handler::start(&azurite, &url, &env);
    load(&azurite, &handler).await;
    let definition = json!({
        "query": "Patient?birthdate=lt1951-01-01", "patientreferencefield": "id",
        "include": ["Patient?_id=$IDS", "Encounter?patient=$IDS"]});
    let (status, started, _) = post_export(&handler, &definition.to_string()).await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().unwrap();
    let (status, manifest) = wait_export(&handler, id, 120).await;
    assert_eq!(status, 200, "{manifest}");
    assert_eq!(manifest["extension"]["status"], "completed-with-errors");
    let files = exported(&azurite, &manifest).await;
    assert_eq!(
        files["Patient"].len(),
        6,
        "the searches that worked are complete"
    );
    assert!(!files.contains_key("Encounter"));
    let errors = manifest["error"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{manifest}");
    assert_eq!(errors[0]["type"], "OperationOutcome");
    let name = errors[0]["url"]
        .as_str()
        .unwrap()
        .split("/export/")
        .nth(1)
        .unwrap();
    let text = blob_text(&blobs(&azurite), "export", name).await;
    let outcome: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.contains("Encounter?patient=") && diagnostics.contains("503"),
        "{diagnostics}"
    );
}
