//! Import end to end: files dropped through the Blob API into real Azurite, loaded by the real
//! `handler serve` into the real FHIR server, then checked on the server and in storage.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::fixtures::{gzip, observation_line, patient_bundle, patient_id, patient_line, zip_of};
use crate::support::{Azurite, FhirServer, Handler, blobs, fhir_count};

/// 2,401 lines over two 1 MiB ranges: a Patient, then Observations, with a line without
/// resourceType at line 5 and a broken line at line 2000 (in the second range).
fn mixed_ndjson() -> String {
    let mut lines = vec![patient_line(10)];
    for i in 0..2400 {
        let line_no = i + 2;
        lines.push(match line_no {
            5 => r#"{"id":"no-type"}"#.to_string(),
            2000 => r#"{"resourceType": "Observation", "id": "broken""#.to_string(),
            _ => observation_line("mixed", 10, i, 500),
        });
    }
    lines.join("\n") + "\n"
}

fn good_zip() -> Vec<u8> {
    zip_of(&[
        (
            "data/Patient.ndjson",
            format!("{}\n{}\n", patient_line(20), patient_line(21)).into_bytes(),
        ),
        (
            "bundles/p4.json",
            patient_bundle(4, 5).to_string().into_bytes(),
        ),
    ])
}

fn bad_zip() -> Vec<u8> {
    zip_of(&[
        ("../evil.json", b"{}".to_vec()),
        (
            "ok/Patient.ndjson",
            format!("{}\n", patient_line(30)).into_bytes(),
        ),
    ])
}

async fn assert_server_holds_exactly_the_expected_resources(fhir: &str) {
    assert_eq!(
        fhir_count(fhir, "Organization").await,
        1,
        "one Organization despite four ifNoneExist creates"
    );
    assert_eq!(fhir_count(fhir, "Patient").await, 8);
    assert_eq!(fhir_count(fhir, "Encounter").await, 4);
    assert_eq!(fhir_count(fhir, "Observation").await, 90 + 5 + 2398);
    for n in 1..=3 {
        assert_eq!(
            fhir_count(
                fhir,
                &format!("Observation?subject=Patient/{}", patient_id(n))
            )
            .await,
            30
        );
    }
    assert_eq!(
        fhir_count(
            fhir,
            &format!("Observation?subject=Patient/{}", patient_id(10))
        )
        .await,
        2398
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_load_exactly_once_and_bad_files_are_explained() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let handler = Handler::start(
        &azurite,
        &fhir.base_url,
        &[
            ("FHIRBULK_NDJSON_RANGE_MIB", "1"),
            ("FHIRBULK_MAX_BUNDLE_ENTRIES", "20"),
        ],
    );
    let store = blobs(&azurite);
    let drop_good = || async {
        for n in 1..=3 {
            store
                .upload(
                    "bundles",
                    &format!("p{n}.json"),
                    Bytes::from(patient_bundle(n, 30).to_string()),
                )
                .await
                .unwrap();
        }
        store
            .upload("zip", "good.zip", Bytes::from(good_zip()))
            .await
            .unwrap();
    };
    drop_good().await;
    store
        .upload("ndjson", "mixed.ndjson", Bytes::from(mixed_ndjson()))
        .await
        .unwrap();
    store
        .upload("zip", "bad.zip", Bytes::from(bad_zip()))
        .await
        .unwrap();
    store
        .upload(
            "bundles",
            "group.json",
            Bytes::from(
                json!({"resourceType": "Group", "type": "person", "actual": true}).to_string(),
            ),
        )
        .await
        .unwrap();
    store
        .upload(
            "bundles",
            "broken.json",
            Bytes::from_static(b"{\"resourceType\": \"Bundle\""),
        )
        .await
        .unwrap();

    let imports = handler.wait_imports(8, 240).await;
    let status_of = |blob: &str| {
        imports
            .iter()
            .find(|i| i["blob"] == blob)
            .map(|i| i["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    for good in ["p1.json", "p2.json", "p3.json", "good.zip"] {
        assert_eq!(status_of(good), "loaded", "{good}: {imports:#?}");
    }
    assert_eq!(status_of("mixed.ndjson"), "completed-with-errors");
    assert_eq!(status_of("bad.zip"), "completed-with-errors");
    assert_eq!(status_of("group.json"), "rejected");
    assert_eq!(status_of("broken.json"), "rejected");

    let fhir_url = fhir.base_url.as_str();
    assert_server_holds_exactly_the_expected_resources(fhir_url).await;

    // References resolve: the conditional serviceProvider points at the one Organization.
    let org: Value = reqwest::get(format!("{fhir_url}/Organization"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let org_id = org["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let enc: Value = reqwest::get(format!(
        "{fhir_url}/Encounter?subject=Patient/{}",
        patient_id(2)
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        enc["entry"][0]["resource"]["serviceProvider"]["reference"],
        format!("Organization/{org_id}")
    );

    // Files moved, with their reports.
    assert!(
        store
            .properties("bundles", "p1.json")
            .await
            .unwrap()
            .is_none(),
        "moved out of bundles"
    );
    let result: Value =
        serde_json::from_str(&handler.report(&store, "bundles", "p1.json", "result").await)
            .unwrap();
    // The shared Organization is "loaded" by the file that created it, "already present" to the others.
    let resources = &result["resources"];
    assert_eq!(
        resources["loaded"].as_i64().unwrap() + resources["alreadyPresent"].as_i64().unwrap(),
        33,
        "{result}"
    );
    assert!(
        store
            .properties("bundlesprocessed", "p1.json")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .properties("zipprocessed", "good.zip")
            .await
            .unwrap()
            .is_some()
    );

    let report = handler
        .report(&store, "ndjson", "mixed.ndjson", "errorReport")
        .await;
    let outcomes: Vec<Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(outcomes.len(), 2, "{report}");
    assert_eq!(outcomes[0]["resourceType"], "OperationOutcome");
    assert_eq!(outcomes[0]["issue"][0]["location"], json!(["line 5"]));
    assert!(
        outcomes[0]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("resourceType")
    );
    assert_eq!(
        outcomes[1]["issue"][0]["location"],
        json!(["line 2000"]),
        "absolute across ranges"
    );
    assert!(
        store
            .properties("ndjsonerr", "mixed.ndjson")
            .await
            .unwrap()
            .is_some()
    );

    let group = handler
        .report(&store, "bundles", "group.json", "errorReport")
        .await;
    assert!(group.contains("holds a Group, not a Bundle"), "{group}");
    let broken = handler
        .report(&store, "bundles", "broken.json", "errorReport")
        .await;
    assert!(
        broken.contains("ends before its JSON is complete"),
        "{broken}"
    );
    let zip_report = handler
        .report(&store, "zip", "bad.zip", "errorReport")
        .await;
    assert!(
        zip_report.contains("../evil.json") && zip_report.contains("'..' segment"),
        "{zip_report}"
    );

    // The status endpoint tells the same story.
    let status = handler.import_view("ndjson", "mixed.ndjson").await;
    assert_eq!(status["resources"]["loaded"], 2399);
    assert_eq!(status["resources"]["failed"], 2);
    assert_eq!(status["parts"]["total"], 2);
    assert_eq!(
        status["errorReport"],
        format!(
            "reports/ndjson/mixed.ndjson/{}/errors.ndjson",
            status["id"].as_str().unwrap()
        )
    );
    assert_eq!(status["outcome"], "ndjsonerr/mixed.ndjson");

    // A second drop of the same files creates no duplicates.
    drop_good().await;
    let again = handler.wait_imports(12, 180).await;
    assert_eq!(again.iter().filter(|i| i["status"] == "loaded").count(), 8);
    assert_server_holds_exactly_the_expected_resources(fhir_url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_ndjson_loads_from_the_ndjson_container_and_from_zips() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let handler = Handler::start(&azurite, &fhir.base_url, &[]);
    let store = blobs(&azurite);
    let lines =
        |from: usize, to: usize| -> String { (from..to).map(|n| patient_line(n) + "\n").collect() };
    store
        .upload(
            "ndjson",
            "Patient.ndjson.gz",
            Bytes::from(gzip(&lines(100, 103))),
        )
        .await
        .unwrap();
    let archive = zip_of(&[("export/Patient.ndjson.gz", gzip(&lines(200, 202)))]);
    store
        .upload("zip", "gz.zip", Bytes::from(archive))
        .await
        .unwrap();
    let imports = handler.wait_imports(2, 120).await;
    for i in &imports {
        assert_eq!(i["status"], "loaded", "{imports:#?}");
    }
    assert_eq!(fhir_count(&fhir.base_url, "Patient").await, 5);
    assert!(
        store
            .properties("ndjsonprocessed", "Patient.ndjson.gz")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_posts_transactions_unchanged() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let handler = Handler::start(
        &azurite,
        &fhir.base_url,
        &[("FHIRBULK_TRANSACTION_MODE", "transaction")],
    );
    // Without the conditional reference: the server creates all of it atomically.
    let mut simple = patient_bundle(3, 4);
    simple["entry"][2]["resource"]
        .as_object_mut()
        .unwrap()
        .remove("serviceProvider");
    let store = blobs(&azurite);
    store
        .upload("bundles", "ok.json", Bytes::from(simple.to_string()))
        .await
        .unwrap();
    // sekmet does not resolve a conditional reference to an entry of the same transaction:
    // it refuses the whole transaction, and every entry is reported with its reason.
    let mut refused = patient_bundle(4, 2);
    refused["entry"][0]["request"]["ifNoneExist"] = json!("identifier=urn:test:org|only-here");
    refused["entry"][2]["resource"]["serviceProvider"]["reference"] =
        json!("Organization?identifier=urn:test:org|only-here");
    store
        .upload("bundles", "refused.json", Bytes::from(refused.to_string()))
        .await
        .unwrap();
    let imports = handler.wait_imports(2, 60).await;
    let find = |blob: &str| imports.iter().find(|i| i["blob"] == blob).unwrap().clone();
    let ok = find("ok.json");
    assert_eq!(ok["status"], "loaded", "{imports:#?}");
    assert_eq!(ok["resources"]["loaded"], 7);
    let refused = find("refused.json");
    assert_eq!(refused["status"], "completed-with-errors");
    assert_eq!(
        refused["resources"]["failed"], 5,
        "all five entries failed together"
    );
    let report = handler
        .report(&store, "bundles", "refused.json", "errorReport")
        .await;
    assert_eq!(report.lines().count(), 5);
    assert!(report.contains("refused as a whole"), "{report}");
    // The server assigned the ids and resolved the urn:uuid references itself.
    let obs: Value = reqwest::get(format!("{}/Observation", fhir.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let subject = obs["entry"][0]["resource"]["subject"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(subject.starts_with("Patient/"), "{subject}");
    assert_eq!(
        fhir_count(&fhir.base_url, &format!("Observation?subject={subject}")).await,
        4
    );
    assert_eq!(
        fhir_count(&fhir.base_url, "Patient").await,
        1,
        "nothing of the refused one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_bad_lines_is_reported_in_full_and_in_order() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let handler = Handler::start(&azurite, &fhir.base_url, &[]);
    let store = blobs(&azurite);
    // 1,500 lines, three of them Patients: more error records than one page of the errors
    // table holds (1,000), so the report is read back a page at a time.
    let good = [1usize, 700, 1500];
    let text: String = (1..=1500)
        .map(|n| {
            if good.contains(&n) {
                patient_line(n) + "\n"
            } else {
                format!("{{\"resourceType\": \"Patient\", broken line {n}\n")
            }
        })
        .collect();
    store
        .upload("ndjson", "bad-lines.ndjson", Bytes::from(text))
        .await
        .unwrap();
    let imports = handler.wait_imports(1, 180).await;
    assert_eq!(
        imports[0]["status"], "completed-with-errors",
        "{imports:#?}"
    );
    assert_eq!(fhir_count(&fhir.base_url, "Patient").await, 3);
    let report = handler
        .report(&store, "ndjson", "bad-lines.ndjson", "errorReport")
        .await;
    let lines: Vec<String> = report
        .lines()
        .map(|l| {
            let outcome: Value = serde_json::from_str(l).unwrap();
            outcome["issue"][0]["location"][0]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = (1..=1500)
        .filter(|n| !good.contains(n))
        .map(|n| format!("line {n}"))
        .collect();
    assert_eq!(lines.len(), 1497);
    assert_eq!(lines, expected, "every bad line once, in file order");
}
