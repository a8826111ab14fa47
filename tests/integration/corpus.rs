//! The hostile-input corpus (issue #15): bad and odd files dropped into every container, and
//! bad requests to every HTTP route, each with the end it must reach (loaded, completed with
//! errors, rejected; or an HTTP status), its counts, and words its error must contain, next to
//! good files that must load exactly. One stack serves them all. The inputs are generated
//! here (`tests/corpus/README.md` lists the classes); none is a committed blob.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::fixtures::{gzip, patient_bundle, patient_line, zip_of};
use crate::support::{Azurite, FhirServer, Handler, blob_text, blobs, fhir_count};

/// How a file's import must end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Loaded,
    WithErrors,
    Rejected,
}

impl End {
    fn status(self) -> &'static str {
        match self {
            End::Loaded => "loaded",
            End::WithErrors => "completed-with-errors",
            End::Rejected => "rejected",
        }
    }
}

/// One input file and what must become of it.
struct FileCase {
    container: &'static str,
    name: String,
    bytes: Vec<u8>,
    end: End,
    /// (loaded or already present, failed) resources, when they are known exactly.
    counts: Option<(i64, i64)>,
    /// Words the reason or the error report must contain.
    cause: &'static str,
}

fn case(
    container: &'static str,
    name: &str,
    bytes: impl Into<Vec<u8>>,
    end: End,
    counts: Option<(i64, i64)>,
    cause: &'static str,
) -> FileCase {
    FileCase {
        container,
        name: name.to_string(),
        bytes: bytes.into(),
        end,
        counts,
        cause,
    }
}

fn batch(entries: Value) -> Vec<u8> {
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
        .to_string()
        .into_bytes()
}

fn put(resource: Value, url: &str) -> Value {
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

fn patient(id: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": "Corpus"}]})
}

/// JSON nested `depth` levels deep inside a Basic resource.
fn deep(depth: usize) -> String {
    format!(
        r#"{{"resourceType":"Basic","id":"deep-{depth}","extension":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

fn bundle_cases() -> Vec<FileCase> {
    use End::*;
    let b = "bundles";
    let good = patient_bundle(501, 3).to_string();
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend(patient_bundle(502, 1).to_string().into_bytes());
    let mut utf16 = b"\xFF\xFE".to_vec();
    utf16.extend("{}".encode_utf16().flat_map(|u| u.to_le_bytes()));
    let mut bad_utf8 = batch(json!([put(patient("u8"), "Patient/u8")]));
    let at = bad_utf8.windows(6).position(|w| w == b"Corpus").unwrap();
    bad_utf8[at] = 0xFF;
    vec![
        case(b, "good.json", good, Loaded, Some((6, 0)), ""),
        case(b, "bom.json", with_bom, Loaded, Some((4, 0)), ""),
        case(
            b,
            "kept-id.json",
            batch(json!([{
                "fullUrl": "urn:uuid:8a0e2c9c-6b1e-4f55-9a0f-1b2c3d4e5f60",
                "resource": patient("x04a"),
                "request": {"method": "PUT", "url": "Patient/x04a"}
            }])),
            Loaded,
            Some((1, 0)),
            "",
        ),
        case(
            b,
            "group.json",
            json!({"resourceType": "Group"}).to_string(),
            Rejected,
            None,
            "holds a Group",
        ),
        case(
            b,
            "collection.json",
            json!({"resourceType": "Bundle", "type": "collection", "entry": []}).to_string(),
            Rejected,
            None,
            "collection",
        ),
        case(
            b,
            "no-type.json",
            json!({"resourceType": "Bundle"}).to_string(),
            Rejected,
            None,
            "has no type",
        ),
        case(
            b,
            "truncated.json",
            r#"{"resourceType": "Bundle", "type": "batch", "entry": ["#,
            Rejected,
            None,
            "ends before",
        ),
        case(
            b,
            "not-json.json",
            "hello, loader",
            Rejected,
            None,
            "not valid JSON",
        ),
        case(b, "empty.json", "", Rejected, None, "ends before"),
        case(
            b,
            "array.json",
            "[1, 2, 3]",
            Rejected,
            None,
            "not a FHIR resource",
        ),
        case(b, "utf16.json", utf16, Rejected, None, "UTF-16"),
        case(b, "bad-utf8.json", bad_utf8, Rejected, None, "not UTF-8"),
        case(
            b,
            "entries-not-objects.json",
            json!({"resourceType": "Bundle", "type": "batch", "entry": ["x"]}).to_string(),
            Rejected,
            None,
            "entry is an array of objects",
        ),
        case(
            b,
            "too-large.json",
            batch(json!([put(
                json!({"resourceType": "Basic", "id": "big", "x": "y".repeat(1_200_000)}),
                "Basic/big"
            )])),
            Rejected,
            None,
            "FHIRBULK_MAX_BUNDLE_FILE_MIB",
        ),
        case(
            b,
            "no-request.json",
            batch(json!([{"resource": patient("nr")}, put(patient("nr-ok"), "Patient/nr-ok")])),
            WithErrors,
            Some((1, 1)),
            "no request",
        ),
        case(
            b,
            "request-string.json",
            batch(
                json!([{"resource": patient("rs"), "request": "PUT Patient/rs"}, put(patient("rs-ok"), "Patient/rs-ok")]),
            ),
            WithErrors,
            Some((1, 1)),
            "request is not an object",
        ),
        case(
            b,
            "bad-put-id.json",
            batch(json!([
                put(patient("ok-1"), "Patient/ok-1"),
                put(patient("x"), "Patient/bad id")
            ])),
            WithErrors,
            Some((1, 1)),
            "not a valid FHIR id",
        ),
        case(
            b,
            "long-put-id.json",
            batch(json!([put(
                patient("x"),
                &format!("Patient/{}", "a".repeat(65))
            )])),
            WithErrors,
            Some((0, 1)),
            "not a valid FHIR id",
        ),
        case(
            b,
            "put-type-mismatch.json",
            batch(json!([put(patient("tm"), "Observation/tm")])),
            WithErrors,
            Some((0, 1)),
            "must name the same type",
        ),
        case(
            b,
            "same-full-url.json",
            batch(json!([
                {"fullUrl": "urn:uuid:1b0e2c9c-6b1e-4f55-9a0f-1b2c3d4e5f61", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
                {"fullUrl": "urn:uuid:1b0e2c9c-6b1e-4f55-9a0f-1b2c3d4e5f61", "resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}}
            ])),
            WithErrors,
            Some((1, 1)),
            "fullUrls must be unique",
        ),
        case(
            b,
            "same-target.json",
            batch(json!([
                put(patient("twice"), "Patient/twice"),
                put(patient("twice"), "Patient/twice")
            ])),
            WithErrors,
            Some((1, 1)),
            "may write a resource once",
        ),
        case(
            b,
            "dangling.json",
            batch(
                json!([{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:00000000-0000-0000-0000-00000000dead"}},
                          "request": {"method": "POST", "url": "Observation"}}]),
            ),
            WithErrors,
            Some((0, 1)),
            "points to no entry",
        ),
        case(
            b,
            "conditional-nothing.json",
            batch(
                json!([{"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "performer": [{"reference": "Practitioner?identifier=urn:none|0"}]},
                          "request": {"method": "POST", "url": "Observation"}}]),
            ),
            WithErrors,
            Some((0, 1)),
            "matches no resource",
        ),
        case(
            b,
            "surrogate.json",
            format!(
                r#"{{"resourceType":"Bundle","type":"batch","entry":[{{"resource":{{"resourceType":"Patient","id":"sur","name":[{{"text":"a\ud800b"}}]}},"request":{{"method":"PUT","url":"Patient/sur"}}}},{}]}}"#,
                put(patient("sur-ok"), "Patient/sur-ok")
            ),
            WithErrors,
            Some((1, 1)),
            "surrogate",
        ),
        case(
            b,
            "deep.json",
            format!(
                r#"{{"resourceType":"Bundle","type":"batch","entry":[{{"resource":{},"request":{{"method":"PUT","url":"Basic/deep-100000"}}}}]}}"#,
                deep(100_000)
            ),
            WithErrors,
            Some((0, 1)),
            "nested",
        ),
        case(
            b,
            "no-resource-type.json",
            batch(json!([put(json!({"id": "nt"}), "Patient/nt")])),
            WithErrors,
            Some((0, 1)),
            "valid resourceType",
        ),
        // An upload named like the other's report: both are kept, neither overwrites the other.
        case(b, "coll.json", "not json", Rejected, None, "not valid JSON"),
        case(
            b,
            "coll.json.errors.ndjson",
            "not json either",
            Rejected,
            None,
            "not valid JSON",
        ),
    ]
}

fn ndjson_cases() -> Vec<FileCase> {
    use End::*;
    let n = "ndjson";
    let lines = |ls: &[String]| ls.join("\n").into_bytes();
    let good = |i: usize| patient_line(600 + i);
    let mut bad_utf8 = format!("{}\n", good(10)).into_bytes();
    bad_utf8
        .extend(b"{\"resourceType\":\"Patient\",\"id\":\"u\",\"name\":[{\"text\":\"\xE9\"}]}\n");
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend(lines(&[good(11), good(12)]));
    // A gigabyte of newlines in about a megabyte of gzip: one 64 MiB member, repeated.
    let member = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b'\n'; 64 << 20]).unwrap();
        enc.finish().unwrap()
    };
    let bomb: Vec<u8> = std::iter::repeat_n(member, 16).flatten().collect();
    let long_line = format!(
        r#"{{"resourceType":"Basic","id":"long","x":"{}"}}"#,
        "y".repeat(66 << 20)
    );
    vec![
        case(
            n,
            "good.ndjson",
            lines(&[good(0), good(1), good(2)]),
            Loaded,
            Some((3, 0)),
            "",
        ),
        case(
            n,
            "crlf.ndjson",
            lines(&[good(3) + "\r", good(4) + "\r"]),
            Loaded,
            Some((2, 0)),
            "",
        ),
        case(n, "bom.ndjson", bom, Loaded, Some((2, 0)), ""),
        case(
            n,
            "blank.ndjson",
            "\n\n  \n\r\n\n",
            Loaded,
            Some((0, 0)),
            "",
        ),
        case(n, "empty.ndjson", "", Loaded, Some((0, 0)), ""),
        case(
            n,
            "broken-line.ndjson",
            lines(&[
                good(5),
                r#"{"resourceType": "Patient", "id": "#.into(),
                good(6),
            ]),
            WithErrors,
            Some((2, 1)),
            "ends before its JSON is complete",
        ),
        case(
            n,
            "no-type-line.ndjson",
            lines(&[good(7), r#"{"id":"x"}"#.into()]),
            WithErrors,
            Some((1, 1)),
            "no valid resourceType",
        ),
        case(
            n,
            "array-line.ndjson",
            lines(&["[1,2]".into(), good(8)]),
            WithErrors,
            Some((1, 1)),
            "not a resource",
        ),
        case(
            n,
            "bad-id-line.ndjson",
            lines(&[r#"{"resourceType":"Patient","id":"a b"}"#.into(), good(9)]),
            WithErrors,
            Some((1, 1)),
            "not a valid FHIR id",
        ),
        case(
            n,
            "bad-utf8.ndjson",
            bad_utf8,
            WithErrors,
            Some((1, 1)),
            "not UTF-8",
        ),
        case(
            n,
            "surrogate.ndjson",
            lines(&[
                r#"{"resourceType":"Patient","id":"s1","name":[{"text":"\udc00"}]}"#.into(),
                good(13),
            ]),
            WithErrors,
            Some((1, 1)),
            "surrogate",
        ),
        case(
            n,
            "deep.ndjson",
            lines(&[deep(100_000), good(14)]),
            WithErrors,
            Some((1, 1)),
            "nested",
        ),
        case(
            n,
            "deep-no-id.ndjson",
            format!(
                "{{\"resourceType\":\"Basic\",\"x\":{}1{}}}\n",
                "[".repeat(5000),
                "]".repeat(5000)
            ),
            WithErrors,
            Some((0, 1)),
            "nested",
        ),
        case(
            n,
            "long-line.ndjson",
            lines(&[good(15), long_line, good(16)]),
            WithErrors,
            Some((2, 1)),
            "lines of up to 64 MiB",
        ),
        case(
            n,
            "good.ndjson.gz",
            gzip(&(good(17) + "\n" + &good(18))),
            Loaded,
            Some((2, 0)),
            "",
        ),
        case(
            n,
            "corrupt.ndjson.gz",
            b"\x1f\x8b\x08\x00garbage".to_vec(),
            Rejected,
            None,
            "gzip",
        ),
        case(
            n,
            "plain.ndjson.gz",
            lines(&[good(19)]),
            Rejected,
            None,
            "gzip",
        ),
        case(
            n,
            "bomb.ndjson.gz",
            bomb,
            Rejected,
            None,
            "decompression bomb",
        ),
    ]
}

fn zip_cases() -> Vec<FileCase> {
    use End::*;
    let z = "zip";
    let ndjson = |i: usize| format!("{}\n", patient_line(700 + i)).into_bytes();
    let mut duplicate = zip_of(&[
        ("d/a.ndjson", ndjson(0)),
        ("d/b.ndjson", ndjson(1)),
        ("ok.ndjson", ndjson(2)),
    ]);
    for at in (0..duplicate.len() - 10).rev() {
        if &duplicate[at..at + 10] == b"d/b.ndjson" {
            duplicate[at + 2] = b'a';
        }
    }
    vec![
        case(
            z,
            "good.zip",
            zip_of(&[
                ("p.ndjson", ndjson(3)),
                ("b/p.json", patient_bundle(701, 1).to_string().into_bytes()),
            ]),
            Loaded,
            Some((5, 0)),
            "",
        ),
        case(
            z,
            "dots-in-name.zip",
            zip_of(&[("notes..v2.ndjson", ndjson(4))]),
            Loaded,
            Some((1, 0)),
            "",
        ),
        case(
            z,
            "litter.zip",
            zip_of(&[
                ("__MACOSX/._p.ndjson", b"junk".to_vec()),
                (".DS_Store", b"junk".to_vec()),
                ("p.ndjson", ndjson(5)),
            ]),
            Loaded,
            Some((1, 0)),
            "",
        ),
        case(
            z,
            "empty.zip",
            zip_of::<&str>(&[]),
            Loaded,
            Some((0, 0)),
            "",
        ),
        case(
            z,
            "climbing.zip",
            zip_of(&[("../evil.ndjson", ndjson(6)), ("ok.ndjson", ndjson(7))]),
            WithErrors,
            Some((1, 1)),
            "'..' segment",
        ),
        case(
            z,
            "nested.zip",
            zip_of(&[
                ("inner.zip", zip_of(&[("p.ndjson", ndjson(8))])),
                ("ok.ndjson", ndjson(9)),
            ]),
            WithErrors,
            Some((1, 1)),
            "nested archives",
        ),
        case(
            z,
            "unknown-type.zip",
            zip_of(&[("readme.txt", b"hi".to_vec()), ("ok.ndjson", ndjson(10))]),
            WithErrors,
            Some((1, 1)),
            "not a .json Bundle",
        ),
        case(
            z,
            "duplicate-names.zip",
            duplicate,
            WithErrors,
            Some((1, 2)),
            "entries named",
        ),
        case(
            z,
            "bad-entry.zip",
            zip_of(&[
                ("bad.json", b"{not json".to_vec()),
                ("ok.ndjson", ndjson(11)),
            ]),
            WithErrors,
            Some((1, 1)),
            "not valid JSON",
        ),
        case(
            z,
            "not-a-zip.zip",
            b"PK but not really".to_vec(),
            Rejected,
            None,
            "not a readable zip",
        ),
    ]
}

/// Trigger files that are no valid definition: each goes to the err container, with why.
fn trigger_cases() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("not-json.json", "{nope", "not valid JSON"),
        (
            "unknown-field.json",
            r#"{"query":"Patient","patientreferencefield":"id","includes":["Patient?_id=$IDS"]}"#,
            "is not a query definition field",
        ),
        (
            "escaping.json",
            r#"{"query":"Patient/../../../x?a=1","patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
            "leaves the FHIR base URL",
        ),
        (
            "missing-include.json",
            r#"{"query":"Patient","patientreferencefield":"id"}"#,
            "include is missing",
        ),
    ]
}

/// HTTP requests that must be refused: (method, path, body, status, words in the answer).
fn route_cases() -> Vec<(&'static str, &'static str, &'static str, u16, &'static str)> {
    vec![
        (
            "GET",
            "/imports?status=bogus",
            "",
            400,
            "is not an import status",
        ),
        ("GET", "/imports/bundles/nope.json", "", 404, "no import of"),
        ("POST", "/$alt-export", "{not json", 400, "not valid JSON"),
        ("POST", "/$alt-export", "[]", 400, "must be a JSON object"),
        (
            "POST",
            "/$alt-export",
            r#"{"query":"Patient","patientreferencefield":"id","include":["Patient?_id=$IDS"],"extra":1}"#,
            400,
            "is not a query definition field",
        ),
        (
            "POST",
            "/$alt-export",
            r#"{"query":"Patient/../../x","patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
            400,
            "leaves the FHIR base URL",
        ),
        (
            "POST",
            "/$alt-export",
            r#"{"query":"https://evil.example/fhir/Patient","patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#,
            400,
            "another server",
        ),
        (
            "POST",
            "/$alt-export-all",
            r#"{"_type":"Observation,Patient"}"#,
            400,
            "",
        ),
        (
            "POST",
            "/$alt-export-all",
            r#"{"_type":"Observation","_since":"yesterday"}"#,
            400,
            "",
        ),
        (
            "GET",
            "/$alt-export/0123456789abcdef0123456789abcdef",
            "",
            404,
            "",
        ),
        (
            "GET",
            "/$alt-export-manage/0123456789abcdef0123456789abcdef?action=purge",
            "",
            400,
            "",
        ),
        ("POST", "/ImportBlobCreated", "{}", 404, ""),
        ("POST", "/ImportWorker", "{}", 404, ""),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_corpus_ends_where_it_must_with_its_reasons() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let handler = Handler::start(
        &azurite,
        &fhir.base_url,
        &[("FHIRBULK_MAX_BUNDLE_FILE_MIB", "1")],
    );
    let store = blobs(&azurite);
    let files: Vec<FileCase> = bundle_cases()
        .into_iter()
        .chain(ndjson_cases())
        .chain(zip_cases())
        .collect();
    let triggers = trigger_cases();
    let routes = route_cases();
    assert!(
        files.len() + triggers.len() + routes.len() >= 60,
        "the corpus holds {} cases",
        files.len() + triggers.len() + routes.len()
    );
    let started = Instant::now();
    for f in &files {
        store
            .upload(f.container, &f.name, Bytes::from(f.bytes.clone()))
            .await
            .unwrap();
    }
    for (name, body, _) in &triggers {
        store
            .upload("export-trigger", name, Bytes::from(body.to_string()))
            .await
            .unwrap();
    }
    let imports = handler.wait_imports(files.len(), 600).await;
    let took = started.elapsed();

    let mut wrong = Vec::new();
    for f in &files {
        let view = imports
            .iter()
            .find(|i| i["container"] == f.container && i["blob"] == f.name.as_str())
            .unwrap_or_else(|| panic!("{}/{} was not recorded", f.container, f.name));
        let what = format!("{}/{}", f.container, f.name);
        if view["status"] != f.end.status() {
            wrong.push(format!(
                "{what}: ended {} (expected {}): {view}",
                view["status"],
                f.end.status()
            ));
            continue;
        }
        if let Some((loaded, failed)) = f.counts {
            let resources = &view["resources"];
            let got = (
                resources["loaded"].as_i64().unwrap_or(-1)
                    + resources["alreadyPresent"].as_i64().unwrap_or(0),
                resources["failed"].as_i64().unwrap_or(-1),
            );
            if got != (loaded, failed) {
                wrong.push(format!(
                    "{what}: counted {got:?}, expected {:?}: {view}",
                    (loaded, failed)
                ));
            }
        }
        if !f.cause.is_empty() {
            let mut said = view["reason"].as_str().unwrap_or_default().to_string();
            if let Some(path) = view["errorReport"].as_str() {
                let (c, name) = path.split_once('/').unwrap();
                said.push_str(&blob_text(&store, c, name).await);
            }
            if !said.contains(f.cause) {
                wrong.push(format!(
                    "{what}: the error does not say {:?}: {said}",
                    f.cause
                ));
            }
            for internal in ["RawEntry", "struct Head", "BundleHead", "<?xml"] {
                if said.contains(internal) {
                    wrong.push(format!("{what}: the error leaks {internal:?}: {said}"));
                }
            }
        }
    }
    // The file named like another's report is kept apart from that report.
    let coll = imports.iter().find(|i| i["blob"] == "coll.json").unwrap();
    let coll_report = coll["errorReport"].as_str().unwrap();
    let (c, name) = coll_report.split_once('/').unwrap();
    let text = blob_text(&store, c, name).await;
    assert!(
        text.contains("bundles/coll.json"),
        "coll.json's report is its own: {text}"
    );
    // The id a PUT named is the id stored.
    assert_eq!(fhir_count(&fhir.base_url, "Patient?_id=x04a").await, 1);

    // Trigger files: each definition refused with the reason, in the reports container.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store.list("export-trigger", None).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "trigger files were not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, _, cause) in &triggers {
        let found = store
            .list("reports", Some(&format!("export-trigger/{name}/")))
            .await
            .unwrap();
        let text = match found.first() {
            Some(b) => blob_text(&store, "reports", &b.name).await,
            None => String::new(),
        };
        if !text.contains(cause) {
            wrong.push(format!(
                "export-trigger/{name}: its error does not say {cause:?}: {text}"
            ));
        }
    }

    // HTTP routes.
    for (method, path, body, status, cause) in &routes {
        let resp = handler
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", handler.base),
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let got = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if got != *status || !text.contains(cause) {
            wrong.push(format!(
                "{method} {path}: {got} {text} (expected {status} saying {cause:?})"
            ));
        }
    }
    // An export whose own search the server refuses answers 400 with the server's reason.
    let resp = handler
        .client
        .post(format!("{}/$alt-export", handler.base))
        .body(r#"{"query":"Patient?birthdate=notadate","patientreferencefield":"id","include":["Patient?_id=$IDS"]}"#)
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, outcome) = crate::export::wait_export(&handler, &id, 60).await;
    if status != 400 || !outcome.to_string().contains("refused its search") {
        wrong.push(format!(
            "export with a refused search answered {status}: {outcome}"
        ));
    }
    assert!(
        wrong.is_empty(),
        "{} of the corpus went wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    eprintln!(
        "corpus: {} files loaded or refused in {took:?}",
        files.len()
    );
}
