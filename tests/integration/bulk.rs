//! The standard `$export` (Bulk Data IG) end to end, driven by a client nobody here wrote:
//! `smart-fetch` (PyPI) runs system-, Patient- and Group-level exports against `handler serve`
//! in front of the real FHIR server, and the NDJSON it writes is compared with what the
//! server's own searches return: every resource once, as the server has it, nothing else.
//! The IG's protocol answers (kick-off refusals, `_since`, the key on file downloads, `DELETE`)
//! are checked with plain requests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{
    Azurite, FhirServer, Handler, TEST_API_KEY, repo_root, resource_key as key, searched,
};

const PATIENTS: usize = 10;
/// The Group's members: patients 0 to 3.
const MEMBERS: usize = 4;

fn patient(n: usize) -> String {
    format!("bulk-p{n}")
}

/// Ten patients, each with a laboratory and a vital-signs Observation and an Encounter; one
/// Observation of patient 8 performed by patient 1 (in patient 1's compartment through
/// `performer`, not `subject`); a Practitioner and a Device (in no patient's compartment);
/// and Group `cohort` of patients 0 to 3 (and patient 0 again, and the Device).
fn seed() -> Vec<Value> {
    let mut out = Vec::new();
    for n in 0..PATIENTS {
        let p = patient(n);
        out.push(json!({"resourceType": "Patient", "id": p, "gender": if n % 2 == 0 { "female" } else { "male" }}));
        for (i, category) in ["laboratory", "vital-signs"].iter().enumerate() {
            out.push(json!({"resourceType": "Observation", "id": format!("{p}-obs{i}"), "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
                "code": {"text": "test"}, "subject": {"reference": format!("Patient/{p}")}}));
        }
        out.push(
            json!({"resourceType": "Encounter", "id": format!("{p}-enc"), "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{p}")}}),
        );
    }
    out.push(json!({"resourceType": "Observation", "id": "bulk-performed", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
        "code": {"text": "test"}, "subject": {"reference": format!("Patient/{}", patient(8))},
        "performer": [{"reference": format!("Patient/{}", patient(1))}]}));
    out.push(json!({"resourceType": "Practitioner", "id": "bulk-dr"}));
    out.push(json!({"resourceType": "Device", "id": "bulk-device"}));
    // Patient 0 is listed twice, and a Device is a member too.
    let mut members: Vec<Value> = (0..MEMBERS)
        .chain([0])
        .map(|n| json!({"entity": {"reference": format!("Patient/{}", patient(n))}}))
        .collect();
    members.push(json!({"entity": {"reference": "Device/bulk-device"}}));
    out.push(
        json!({"resourceType": "Group", "id": "cohort", "type": "person", "actual": true,
        "member": members}),
    );
    out
}

async fn put_all(fhir: &str, resources: &[Value]) {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            json!({"resource": r, "request": {"method": "PUT",
                "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let resp = reqwest::Client::new()
        .post(fhir)
        .header("Content-Type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "seeding: {}", resp.status());
}

fn smart_fetch() -> PathBuf {
    let tools = std::env::var_os("FHIR_BULK_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools"));
    let exe = tools.join("bulk-client/bin/smart-fetch");
    assert!(
        exe.is_file(),
        "{} is missing: run scripts/install.sh",
        exe.display()
    );
    exe
}

/// Runs `smart-fetch bulk` into a new folder; returns the resources it wrote (each file's
/// lines checked to be resources of the file's type, and no resource twice) and the
/// informational messages of its error files.
fn run_smart_fetch(fhir_url: &str, args: &[&str]) -> (BTreeMap<String, Value>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let token = dir.path().join("token");
    std::fs::write(&token, TEST_API_KEY).unwrap();
    let output = Command::new(smart_fetch())
        .args(["bulk", "--fhir-url", fhir_url, "--bearer-token"])
        .arg(&token)
        .args(["--no-compression", "--no-default-filters"])
        .args(args)
        .arg(&out)
        .env("COLUMNS", "200")
        .output()
        .expect("smart-fetch runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "smart-fetch {args:?} failed: {said}"
    );
    let mut resources = BTreeMap::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".ndjson") || name == "log.ndjson" {
            continue;
        }
        let kind = name.split('.').next().unwrap().to_string();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let r: Value = serde_json::from_str(line).expect("each line is one resource");
            assert_eq!(r["resourceType"], kind.as_str(), "{name}");
            assert!(
                resources.insert(key(&r), r.clone()).is_none(),
                "{} exported twice",
                key(&r)
            );
        }
    }
    (resources, messages(&out.join("error")))
}

fn messages(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        for line in std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .lines()
        {
            let outcome: Value = serde_json::from_str(line).unwrap();
            for issue in outcome["issue"].as_array().unwrap() {
                assert_eq!(issue["severity"], "information", "{issue}");
                out.push(issue["diagnostics"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

/// What the server's searches return for each of `searches`, together.
async fn expected(fhir: &str, searches: &[String]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for s in searches {
        out.extend(searched(fhir, s).await);
    }
    out
}

fn assert_same(level: &str, got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>) {
    let got_keys: BTreeSet<&String> = got.keys().collect();
    let want_keys: BTreeSet<&String> = want.keys().collect();
    assert_eq!(got_keys, want_keys, "{level}: the resources exported");
    for (k, r) in want {
        assert_eq!(&got[k], r, "{level}: {k} as the server has it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn smart_fetch_exports_exactly_the_server_s_resources_at_every_level() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    // Two ids per search: the Group's four members make several batches per compartment
    // search. One id per chunk: the Group's members and the paged patients go to one ids blob
    // each, and cohorts of more than four are planned one blob at a time, as ten million
    // would be.
    let handler = Handler::start(
        &azurite,
        &fhir.base_url,
        &[
            ("FHIRBULK_EXPORT_IDS_PER_SEARCH", "2"),
            ("FHIRBULK_EXPORT_IDS_PER_CHUNK", "1"),
        ],
    );
    put_all(&fhir.base_url, &seed()).await;
    let f = &fhir.base_url;
    let members: Vec<String> = (0..MEMBERS)
        .map(|n| format!("Patient/{}", patient(n)))
        .collect();
    let members = members.join(",");

    // System level: every resource of the types.
    let (got, notes) = run_smart_fetch(
        &handler.base,
        &["--type", "Patient,Observation,Encounter,Device"],
    );
    let want = expected(
        f,
        &["Patient", "Observation", "Encounter", "Device"].map(String::from),
    )
    .await;
    assert_same("system", &got, &want);
    assert!(notes.is_empty(), "{notes:?}");

    // Group level: the members' compartments, Observations by subject and by performer; a
    // Device is in no compartment, and the export says so.
    let (got, notes) = run_smart_fetch(
        &handler.base,
        &[
            "--group",
            "cohort",
            "--type",
            "Patient,Observation,Encounter,Device",
        ],
    );
    let want = expected(
        f,
        &[
            format!("Patient?_id={}", members.replace("Patient/", "")),
            format!("Observation?subject={members}"),
            format!("Observation?performer={members}"),
            format!("Encounter?patient={members}"),
        ],
    )
    .await;
    assert!(want.contains_key("Observation/bulk-performed"));
    assert_same("group", &got, &want);
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Device is not in the Patient compartment")),
        "{notes:?}"
    );

    // Patient level with a type filter: every patient's laboratory Observations.
    let (got, _) = run_smart_fetch(
        &format!("{}/Patient", handler.base),
        &[
            "--type",
            "Observation",
            "--type-filter",
            "Observation?category=laboratory",
        ],
    );
    let want = expected(f, &["Observation?category=laboratory".to_string()]).await;
    assert_eq!(want.len(), PATIENTS);
    assert_same("patient", &got, &want);
}

/// The kick-off and status answers the IG asks for, checked with plain requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_export_protocol_answers_as_the_ig_says() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let handler = Handler::start(&azurite, &fhir.base_url, &[]);
    put_all(&fhir.base_url, &seed()).await;
    let client = &handler.client;
    let kick_off = |path: &str, prefer: Option<&str>| {
        let mut request = client
            .get(format!("{}/{path}", handler.base))
            .header("Accept", "application/fhir+json");
        if let Some(p) = prefer {
            request = request.header("Prefer", p);
        }
        request.send()
    };

    // Refusals: 4xx with an OperationOutcome that says what to send.
    for (path, prefer, expected) in [
        ("$export", None, "respond-async"),
        (
            "$export?_type=Nonsense",
            Some("respond-async"),
            "does not support Nonsense",
        ),
        (
            "$export?_since=yesterday",
            Some("respond-async"),
            "not an instant",
        ),
        (
            "$export?_outputFormat=text/csv",
            Some("respond-async"),
            "_outputFormat",
        ),
        (
            "Patient/$export?_type=Practitioner",
            Some("respond-async"),
            "nothing to export",
        ),
    ] {
        let resp = kick_off(path, prefer).await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert!(body.to_string().contains(expected), "{path}: {body}");
    }
    // Lenient: an unknown parameter is ignored, and the export says so.
    let resp = kick_off(
        "$export?_type=Patient&_until=2030",
        Some("respond-async, handling=lenient"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 202);

    // _since: only what changed after it.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let since = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut changed = seed()[0].clone();
    changed["gender"] = json!("other");
    put_all(&fhir.base_url, &[changed]).await;
    let resp = kick_off(
        &format!("Patient/$export?_type=Patient&_since={since}"),
        Some("respond-async"),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        status_url.starts_with(&handler.base),
        "absolute: {status_url}"
    );
    let manifest = loop {
        let resp = client.get(&status_url).send().await.unwrap();
        match resp.status().as_u16() {
            202 => {
                assert!(resp.headers().contains_key("x-progress"));
                let wait: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            }
            200 => break resp.json::<Value>().await.unwrap(),
            other => panic!("status {other}: {}", resp.text().await.unwrap()),
        }
    };
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["request"].as_str().unwrap().contains("_since="));
    let output = manifest["output"].as_array().unwrap();
    assert_eq!(output.len(), 1, "{manifest}");
    assert_eq!(output[0]["type"], "Patient");
    assert_eq!(
        output[0]["count"], 1,
        "only the patient changed after _since"
    );
    let file = output[0]["url"].as_str().unwrap();

    // Files need the key; with it they are NDJSON.
    let anonymous = reqwest::get(file).await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let resp = client
        .get(file)
        .header("Accept", "application/fhir+ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "application/fhir+ndjson");
    let text = resp.text().await.unwrap();
    let exported: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(exported["gender"], "other");

    // DELETE: 202, then the export and its files are gone.
    let resp = client.delete(&status_url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(
        client
            .get(&status_url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    assert_eq!(
        client.get(file).send().await.unwrap().status().as_u16(),
        404
    );

    // The CapabilityStatement is public and names the operations.
    let metadata: Value = reqwest::get(format!("{}/metadata", handler.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations = metadata["rest"][0]["operation"].to_string();
    assert!(operations.contains("patient-export") && operations.contains("group-export"));
}
