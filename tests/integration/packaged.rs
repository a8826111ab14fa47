//! The release package (`target/package/fhir-bulk.zip`, built by `scripts/package.sh`) read and
//! run the way the Azure Functions host does, against real Azurite and the real FHIR server:
//!
//! - functions are the top-level folders of the app root holding a `function.json` (the host's
//!   `HostFunctionMetadataProvider` looks one folder deep), `host.json` sits at the root;
//! - the handler is started from `host.json`'s `customHandler.description`: its executable,
//!   `arguments` and `workingDirectory`, with `FUNCTIONS_CUSTOMHANDLER_PORT` and app settings
//!   shaped like those `infra/main.bicep` gives the app;
//! - every discovered function is invoked through its own trigger binding (the binding's name
//!   is the key under `Data`, an HTTP route's `{params}` arrive as `Params`, a `%SETTING%`
//!   queue name is resolved from the app settings), and a function the driver has no case for
//!   fails the test.
//!
//! The host's own part (checking function keys, polling queues, validating Event Grid
//! subscriptions) is not run here: the test checks what it reads for it (every HTTP trigger
//! asks for a function key); that the Bicep defines every setting a binding names is
//! tests/layout.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::fixtures::{observation_batch, patient_bundle, patient_line, zip_of};
use crate::support::{Azurite, FhirServer, blobs, fhir_count, free_port, repo_root, wait_for_port};
use fhir_bulk::functions::FUNCTION_NAMES;
use fhir_bulk::storage::{StorageCredentials, WorkQueue};

/// App settings as `infra/main.bicep` names them (values for this test's services).
fn app_settings(azurite: &Azurite, fhir: &FhirServer) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("FUNCTIONS_WORKER_RUNTIME", "custom".to_string()),
        (
            "WEBSITE_HOSTNAME",
            "fb-func-abc.azurewebsites.net".to_string(),
        ),
        (
            "FHIRBULK_STORAGE_CONNECTION_STRING",
            azurite.connection_string.clone(),
        ),
        ("FHIRBULK_IMPORT_QUEUE", "import-work".to_string()),
        ("FHIRBULK_EXPORT_QUEUE", "export-work".to_string()),
        ("FHIRBULK_FHIR_URL", fhir.base_url.clone()),
        ("FHIRBULK_FHIR_AUTH", "none".to_string()),
        // Files up to 1 KiB load on the delivery of their event, larger ones through the
        // queue: both paths of the package run.
        ("FHIRBULK_LOAD_ON_DELIVERY_MAX_KIB", "1".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ])
}

/// The package unpacked as the host's app root (`/home/site/wwwroot`).
struct AppRoot {
    dir: tempfile::TempDir,
    host: Value,
    /// Function name → its `function.json`, found as the host finds them.
    functions: BTreeMap<String, Value>,
}

impl AppRoot {
    fn unpack() -> Self {
        let path = repo_root().join("target/package/fhir-bulk.zip");
        let file = std::fs::File::open(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build it with scripts/package.sh (scripts/test.sh does)",
                path.display()
            )
        });
        let mut zip = zip::ZipArchive::new(file).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).unwrap();
            let Some(relative) = entry.enclosed_name() else {
                panic!("package entry {:?} escapes the app root", entry.name());
            };
            let out = dir.path().join(relative);
            if entry.is_dir() {
                std::fs::create_dir_all(&out).unwrap();
                continue;
            }
            std::fs::create_dir_all(out.parent().unwrap()).unwrap();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            std::fs::write(&out, bytes).unwrap();
            if let Some(mode) = entry.unix_mode() {
                std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o777))
                    .unwrap();
            }
        }
        let read = |p: &Path| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let host_json = dir.path().join("host.json");
        assert!(host_json.is_file(), "host.json is not at the package root");
        let host = read(&host_json);
        let mut functions = BTreeMap::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let folder = entry.unwrap().path();
            let metadata = folder.join("function.json");
            if folder.is_dir() && metadata.is_file() {
                let name = folder.file_name().unwrap().to_string_lossy().into_owned();
                functions.insert(name, read(&metadata));
            }
        }
        AppRoot {
            dir,
            host,
            functions,
        }
    }

    /// The trigger binding of `function` (the one `in` binding whose type ends in `Trigger`).
    fn trigger(&self, function: &str) -> &Value {
        let bindings = self.functions[function]["bindings"].as_array().unwrap();
        let triggers: Vec<&Value> = bindings
            .iter()
            .filter(|b| b["type"].as_str().is_some_and(|t| t.ends_with("Trigger")))
            .collect();
        assert_eq!(
            triggers.len(),
            1,
            "{function} has one trigger: {bindings:?}"
        );
        triggers[0]
    }
}

/// The packaged handler, started as the host starts a custom handler; killed on drop.
struct HostedHandler {
    child: std::process::Child,
    port: u16,
    client: reqwest::Client,
    settings: BTreeMap<&'static str, String>,
    invoked: BTreeSet<String>,
}

impl Drop for HostedHandler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HostedHandler {
    fn start(root: &AppRoot, settings: BTreeMap<&'static str, String>) -> Self {
        let description = &root.host["customHandler"]["description"];
        let executable = description["defaultExecutablePath"]
            .as_str()
            .expect("customHandler.description.defaultExecutablePath");
        let arguments: Vec<String> = description["arguments"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let working = description["workingDirectory"].as_str().unwrap_or("");
        let cwd: PathBuf = root.dir.path().join(working);
        let port = free_port();
        let child = std::process::Command::new(root.dir.path().join(executable))
            .args(&arguments)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .envs(settings.iter().map(|(k, v)| (*k, v.as_str())))
            .spawn()
            .unwrap_or_else(|e| panic!("the packaged {executable} does not start: {e}"));
        wait_for_port(
            port,
            60,
            "the packaged handler did not listen on FUNCTIONS_CUSTOMHANDLER_PORT within the host's 60 s",
        );
        HostedHandler {
            child,
            port,
            client: reqwest::Client::new(),
            settings,
            invoked: BTreeSet::new(),
        }
    }

    /// POSTs `{Data: {<binding>: value}, Metadata}` to `/<function>`, as the host invokes.
    async fn invoke(
        &mut self,
        root: &AppRoot,
        function: &str,
        value: Value,
        metadata: Value,
    ) -> (u16, Value) {
        let binding = root.trigger(function)["name"].as_str().unwrap().to_string();
        self.invoked.insert(function.to_string());
        let resp = self
            .client
            .post(format!("http://127.0.0.1:{}/{function}", self.port))
            .header(
                "X-Azure-Functions-InvocationId",
                "00000000-0000-0000-0000-000000000001",
            )
            .json(&json!({"Data": {binding: value}, "Metadata": metadata}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// An HTTP trigger's request to `method path?query`, routed by the function's `route`
    /// template as the host routes it; answers the `res` output's status and parsed body.
    async fn http(
        &mut self,
        root: &AppRoot,
        function: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let answer = self
            .http_with(root, function, method, path, json!({}), body)
            .await;
        let parsed = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        (answer.code, parsed)
    }

    /// `http` with request headers (`{"Name": "value"}`); `path` may carry a query string,
    /// which arrives as the host sends it (`Query`). The answer's status, body and headers.
    async fn http_with(
        &mut self,
        root: &AppRoot,
        function: &str,
        method: &str,
        path: &str,
        headers: Value,
        body: Option<&str>,
    ) -> HttpAnswer {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let query: BTreeMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let trigger = root.trigger(function).clone();
        assert_eq!(trigger["type"], "httpTrigger");
        let methods: Vec<&str> = trigger["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert!(
            methods.contains(&method.to_ascii_lowercase().as_str()),
            "{function} does not take {method}: {methods:?}"
        );
        let prefix = root.host["extensions"]["http"]["routePrefix"]
            .as_str()
            .unwrap_or("api");
        let route = trigger["route"].as_str().unwrap();
        let params = route_params(route, path)
            .unwrap_or_else(|| panic!("{path} does not match {function}'s route {route}"));
        let base = format!("https://{}", self.settings["WEBSITE_HOSTNAME"]);
        let url = if prefix.is_empty() {
            format!("{base}/{path}")
        } else {
            format!("{base}/{prefix}/{path}")
        };
        let request = json!({"Url": url, "Method": method, "Query": query, "Headers": headers,
            "Params": params, "Identities": [], "Body": body});
        let (status, answer) = self
            .invoke(root, function, request, json!({"Query": {}, "Headers": {}}))
            .await;
        assert_eq!(status, 200, "{function}: the invocation itself: {answer}");
        let res = &answer["Outputs"]["res"];
        let code = res["statusCode"]
            .as_str()
            .map(|s| s.parse().unwrap())
            .or_else(|| res["statusCode"].as_u64().map(|n| n as u16))
            .unwrap_or_else(|| panic!("{function}: no res.statusCode in {answer}"));
        HttpAnswer {
            code,
            body: res["body"].as_str().unwrap_or_default().to_string(),
            headers: res["headers"].clone(),
        }
    }

    /// Delivers a BlobCreated event for `container/name`, as the Event Grid extension does;
    /// the answer's log says `outcome`.
    async fn blob_created(
        &mut self,
        root: &AppRoot,
        function: &str,
        container: &str,
        name: &str,
        outcome: &str,
    ) {
        assert_eq!(root.trigger(function)["type"], "eventGridTrigger");
        let event = json!({
            "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
            "subject": format!("/blobServices/default/containers/{container}/blobs/{name}"),
            "eventType": "Microsoft.Storage.BlobCreated", "id": format!("evt-{container}-{name}"),
            "eventTime": "2026-12-06T10:00:00Z",
            "data": {"api": "PutBlob", "url": format!("http://127.0.0.1/devstoreaccount1/{container}/{name}")},
            "dataVersion": "", "metadataVersion": "1"
        });
        let (status, body) = self
            .invoke(
                root,
                function,
                Value::String(event.to_string()),
                json!({"sys": {"MethodName": function}}),
            )
            .await;
        assert_eq!(status, 200, "{function} for {container}/{name}: {body}");
        assert!(
            body["Logs"][0].as_str().unwrap_or("").contains(outcome),
            "{function} for {container}/{name}: {body}"
        );
    }

    /// Runs `function` for each message of its queue (named by the binding, `%SETTING%`
    /// resolved) until the queue stays empty or `done` holds; deletes a message the handler
    /// answered 200, as the host does.
    async fn drain(
        &mut self,
        root: &AppRoot,
        function: &str,
        timeout: Duration,
        mut done: impl AsyncFnMut(&mut Self) -> bool,
    ) {
        let trigger = root.trigger(function).clone();
        assert_eq!(trigger["type"], "queueTrigger");
        let name = trigger["queueName"].as_str().unwrap();
        let name = match name.strip_prefix('%').and_then(|n| n.strip_suffix('%')) {
            Some(setting) => self.settings[setting].clone(),
            None => name.to_string(),
        };
        let storage = fhir_bulk::config::parse_connection_string(
            &self.settings["FHIRBULK_STORAGE_CONNECTION_STRING"],
        )
        .unwrap();
        let queue = WorkQueue::new(&StorageCredentials::new(&storage).unwrap(), &name).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            let messages = queue.receive(4, Duration::from_secs(30)).await.unwrap();
            for m in &messages {
                let metadata = json!({"DequeueCount": m.dequeue_count, "Id": m.id});
                let (status, body) = self
                    .invoke(root, function, Value::String(m.text.clone()), metadata)
                    .await;
                assert_eq!(status, 200, "{function}: {body}");
                queue.delete(m).await.unwrap();
            }
            if messages.is_empty() {
                if done(self).await {
                    return;
                }
                assert!(Instant::now() < deadline, "{function}: work did not finish");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What an HTTP function answered: its `res` binding.
struct HttpAnswer {
    code: u16,
    body: String,
    headers: Value,
}

impl HttpAnswer {
    /// The export id at the end of the `Content-Location` of a kick-off's 202.
    fn status_path(&self) -> String {
        let location = self.headers["Content-Location"]
            .as_str()
            .unwrap_or_default();
        let at = location.find("$export-status/").expect("a status URL");
        location[at..].to_string()
    }
}

/// Matches `path` against an HTTP trigger's `route` (`{name}` one segment, `{*name}` the rest).
fn route_params(route: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    let mut segments = path.split('/');
    for part in route.split('/') {
        if let Some(name) = part.strip_prefix("{*").and_then(|p| p.strip_suffix('}')) {
            params.insert(
                name.to_string(),
                segments.by_ref().collect::<Vec<_>>().join("/"),
            );
            return Some(params);
        }
        let segment = segments.next()?;
        match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => {
                params.insert(name.to_string(), segment.to_string());
            }
            None if part == segment => {}
            None => return None,
        }
    }
    segments.next().is_none().then_some(params)
}

#[test]
fn routes_match_as_the_host_matches_them() {
    assert_eq!(
        route_params("imports/{*path}", "imports/bundles/a/b.json").unwrap()["path"],
        "bundles/a/b.json"
    );
    assert_eq!(
        route_params("$alt-export/{id}/terminate", "$alt-export/x1/terminate").unwrap()["id"],
        "x1"
    );
    assert!(route_params("$alt-export/{id}", "$alt-export/x1/terminate").is_none());
    assert!(route_params("$alt-export", "$alt-export-all").is_none());
}

#[test]
fn the_package_is_laid_out_as_the_host_reads_it() {
    let root = AppRoot::unpack();
    let found: BTreeSet<&str> = root.functions.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = FUNCTION_NAMES.iter().copied().collect();
    assert_eq!(
        found, expected,
        "the host finds these functions (top-level folders with a function.json)"
    );
    for function in &found {
        let trigger = root.trigger(function);
        if trigger["type"] == "httpTrigger" {
            let level = if *function == "Metadata" {
                "anonymous"
            } else {
                "function"
            };
            assert_eq!(
                trigger["authLevel"], level,
                "{function}: the host asks for a function key"
            );
        }
    }
    assert!(
        root.host["customHandler"]["description"]["defaultExecutablePath"]
            .as_str()
            .is_some_and(|p| root.dir.path().join(p).is_file()),
        "the custom handler's executable is in the package"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_packaged_function_runs_when_invoked_as_the_host_invokes_it() {
    let root = AppRoot::unpack();
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let mut handler = HostedHandler::start(&root, app_settings(&azurite, &fhir));
    let store = blobs(&azurite);

    // Imports: one file per input container, each announced by Event Grid.
    let ndjson = (1..=3).map(patient_line).collect::<Vec<_>>().join("\n");
    let bundle = patient_bundle(4, 2).to_string();
    let zipped = zip_of(&[
        ("a.json", observation_batch("z", 5, 1..4, 0)),
        ("b.ndjson", patient_line(5).into_bytes()),
    ]);
    for (container, name, content) in [
        ("ndjson", "host/patients.ndjson", ndjson.into_bytes()),
        ("bundles", "host/p4.json", bundle.into_bytes()),
        ("zip", "host/more.zip", zipped),
    ] {
        let outcome = if content.len() <= 1024 {
            "on delivery: loaded"
        } else {
            "queued"
        };
        store
            .upload(container, name, Bytes::from(content))
            .await
            .unwrap();
        handler
            .blob_created(&root, "ImportBlobCreated", container, name, outcome)
            .await;
    }
    handler
        .drain(
            &root,
            "ImportWorker",
            Duration::from_secs(120),
            async |_| true,
        )
        .await;
    for path in [
        "ndjson/host/patients.ndjson",
        "bundles/host/p4.json",
        "zip/host/more.zip",
    ] {
        let (code, view) = handler
            .http(
                &root,
                "ImportStatus",
                "GET",
                &format!("imports/{path}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{path}: {view}");
        assert_eq!(view["status"], "loaded", "{path}: {view}");
    }
    let (code, list) = handler
        .http(&root, "ImportStatus", "GET", "imports/", None)
        .await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(fhir_count(&fhir.base_url, "Patient").await, 5);

    // Exports: by definition over HTTP, of a whole type, and from a trigger file.
    let definition = json!({"query": "Patient", "patientreferencefield": "id",
        "include": ["Observation?patient=$IDS"]});
    let (code, started) = handler
        .http(
            &root,
            "ExportStart",
            "POST",
            "$alt-export",
            Some(&definition.to_string()),
        )
        .await;
    assert_eq!(code, 202, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    let (code, all) = handler
        .http(
            &root,
            "ExportAllStart",
            "POST",
            "$alt-export-all",
            Some(&json!({"_type": "Patient"}).to_string()),
        )
        .await;
    assert_eq!(code, 202, "{all}");
    let all_id = all["id"].as_str().unwrap().to_string();
    store
        .upload(
            "export-trigger",
            "nightly.json",
            Bytes::from(definition.to_string()),
        )
        .await
        .unwrap();
    handler
        .blob_created(
            &root,
            "ExportBlobCreated",
            "export-trigger",
            "nightly.json",
            "started",
        )
        .await;
    // The standard $export at each level (the Group does not exist: that export fails).
    let ig = json!({"Accept": "application/fhir+json", "Prefer": "respond-async"});
    let mut bulk = Vec::new();
    for (function, path) in [
        ("BulkExport", "$export?_type=Patient,Observation"),
        ("BulkExportPatient", "Patient/$export?_type=Patient"),
        ("BulkExportGroup", "Group/none/$export"),
    ] {
        let answer = handler
            .http_with(&root, function, "GET", path, ig.clone(), None)
            .await;
        assert_eq!(answer.code, 202, "{function}: {}", answer.body);
        bulk.push(answer.status_path());
    }
    let status_path = format!("$alt-export/{id}");
    let all_path = format!("$alt-export/{all_id}");
    handler
        .drain(&root, "ExportWorker", Duration::from_secs(120), async |h| {
            let (a, _) = h
                .http(&root, "ExportStatus", "GET", &status_path, None)
                .await;
            let (b, _) = h.http(&root, "ExportStatus", "GET", &all_path, None).await;
            let (c, _) = h
                .http(&root, "BulkExportStatus", "GET", &bulk[0], None)
                .await;
            a == 200 && b == 200 && c == 200
        })
        .await;
    let (code, manifest) = handler
        .http(&root, "BulkExportStatus", "GET", &bulk[0], None)
        .await;
    assert_eq!(code, 200, "{manifest}");
    let file = manifest["output"][0]["url"].as_str().unwrap();
    let file_path = &file[file.find("$export-file/").unwrap()..];
    let download = handler
        .http_with(&root, "BulkExportFile", "GET", file_path, json!({}), None)
        .await;
    assert_eq!(download.code, 200, "{}", download.body);
    assert_eq!(
        download.body.lines().count() as u64,
        manifest["output"][0]["count"].as_u64().unwrap()
    );
    let (code, cancelled) = handler
        .http(&root, "BulkExportStatus", "DELETE", &bulk[0], None)
        .await;
    assert_eq!(code, 202, "{cancelled}");
    let (code, metadata) = handler
        .http(&root, "Metadata", "GET", "metadata", None)
        .await;
    assert_eq!(code, 200, "{metadata}");
    let (code, manifest) = handler
        .http(&root, "ExportStatus", "GET", &status_path, None)
        .await;
    assert_eq!(code, 200, "{manifest}");
    let (code, listed) = handler
        .http(&root, "ExportList", "GET", "$alt-export-status", None)
        .await;
    assert_eq!(code, 200, "{listed}");
    let (code, managed) = handler
        .http(
            &root,
            "ExportManage",
            "GET",
            &format!("$alt-export-manage/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{managed}");
    let (code, terminated) = handler
        .http(
            &root,
            "ExportTerminate",
            "POST",
            &format!("{status_path}/terminate"),
            None,
        )
        .await;
    assert!(
        code < 500,
        "a finished export is not terminated: {code} {terminated}"
    );
    let (code, purged) = handler
        .http(&root, "ExportPurge", "DELETE", &status_path, None)
        .await;
    assert_eq!(code, 200, "{purged}");

    // The timer.
    assert_eq!(root.trigger("Reconcile")["type"], "timerTrigger");
    let (status, body) = handler
        .invoke(
            &root,
            "Reconcile",
            json!({"Schedule": {}, "IsPastDue": false}),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "Reconcile: {body}");

    let untested: Vec<&String> = root
        .functions
        .keys()
        .filter(|f| !handler.invoked.contains(*f))
        .collect();
    assert!(
        untested.is_empty(),
        "functions no invocation reached: {untested:?}"
    );
}
