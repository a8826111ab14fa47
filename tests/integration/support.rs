//! Starts the real services a test needs (Azurite, the sekmet FHIR server) on free loopback
//! ports in temporary folders, and stops exactly those processes when dropped. A service that
//! cannot start fails the test: integration tests never skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A process started by one of the `scripts/*-up.sh` scripts, killed on drop.
pub struct Service {
    pid: u32,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
    }
}

/// Waits until something listens on loopback `port`; fails with `failure` after `secs`.
pub fn wait_for_port(port: u16, secs: u64, failure: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{failure}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs `script` with the environment `env` makes (ports chosen afresh each time). A port
/// found free can be taken before the service binds it (outgoing connections draw from the
/// same range), so a start that fails with "address already in use" is tried again on others.
fn start<E: Fn() -> Vec<(&'static str, String)>>(
    script: &str,
    env: E,
) -> (Service, Vec<(&'static str, String)>) {
    for attempt in 1.. {
        let dir = tempfile::tempdir().expect("temp dir");
        let vars = env();
        let out = Command::new(repo_root().join("scripts").join(script))
            .env("STATE_DIR", dir.path())
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/{script}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && attempt < 3 && stderr.contains("in use") {
            continue;
        }
        assert!(
            out.status.success(),
            "scripts/{script} failed (run scripts/install.sh first): {stderr}"
        );
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the script prints the PID");
        return (Service { pid, _dir: dir }, vars);
    }
    unreachable!()
}

pub struct Azurite {
    pub connection_string: String,
    _service: Service,
}

impl Azurite {
    pub fn start() -> Self {
        let (service, ports) = start("azurite-up.sh", || {
            vec![
                ("AZURITE_BLOB_PORT", free_port().to_string()),
                ("AZURITE_QUEUE_PORT", free_port().to_string()),
                ("AZURITE_TABLE_PORT", free_port().to_string()),
            ]
        });
        let (b, q, t) = (&ports[0].1, &ports[1].1, &ports[2].1);
        let connection_string = format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:{b}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{q}/devstoreaccount1;TableEndpoint=http://127.0.0.1:{t}/devstoreaccount1;"
        );
        Azurite {
            connection_string,
            _service: service,
        }
    }
}

pub struct FhirServer {
    pub base_url: String,
    _service: Service,
}

impl FhirServer {
    pub fn start() -> Self {
        let (service, vars) = start("fhir-up.sh", || {
            vec![("FHIR_PORT", free_port().to_string())]
        });
        let port = &vars[0].1;
        FhirServer {
            base_url: format!("http://127.0.0.1:{port}/fhir"),
            _service: service,
        }
    }
}

/// The real `handler serve` binary, pointed at a test's Azurite and FHIR URL; killed on drop.
/// Handler settings that make a failing FHIR request give up after one retry (and a throttled
/// one after a second), a failing import part after 3 s without progress and a failing export
/// step after two deliveries, so tests of give-up paths finish quickly.
pub const GIVE_UP_FAST: [(&str, &str); 5] = [
    ("FHIRBULK_FHIR_MAX_RETRIES", "1"),
    ("FHIRBULK_FHIR_RETRY_BASE_MS", "10"),
    ("FHIRBULK_FHIR_THROTTLE_PATIENCE_SECS", "1"),
    ("FHIRBULK_WORK_STALLED_SECS", "3"),
    ("FHIRBULK_MAX_WORK_ATTEMPTS", "2"),
];

/// Reads `from` line by line on a thread of its own into `into`, echoing each line to the
/// test's stderr when `echo`.
fn forward_lines(
    from: impl std::io::Read + Send + 'static,
    into: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    echo: bool,
) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(from).lines().map_while(Result::ok) {
            if echo {
                eprintln!("{line}");
            }
            into.lock().unwrap().push(line);
        }
    });
}

pub struct Handler {
    child: std::process::Child,
    pub base: String,
    /// A client that sends the handler's key (`TEST_API_KEY`) with every request.
    pub client: reqwest::Client,
    /// The handler's stdout lines, when started with `start_logged`.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// The key tests start `handler serve` with (`FHIRBULK_API_KEYS`).
pub const TEST_API_KEY: &str = "integration-test-key-0123456789";

impl Handler {
    pub fn start(azurite: &Azurite, fhir_url: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::spawn(azurite, fhir_url, extra_env, false)
    }

    /// `start`, keeping the handler's stdout (its log lines) in `logs`.
    pub fn start_logged(azurite: &Azurite, fhir_url: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::spawn(azurite, fhir_url, extra_env, true)
    }

    /// Starts `handler serve` on a free port. A port found free can be taken before the
    /// handler binds it: a handler that exits saying so is started again on another; one that
    /// exits for any other reason fails the test with what it wrote to stderr.
    fn spawn(azurite: &Azurite, fhir_url: &str, extra_env: &[(&str, &str)], capture: bool) -> Self {
        for attempt in 1.. {
            let port = free_port();
            let mut child = Command::new(env!("CARGO_BIN_EXE_handler"))
                .arg("serve")
                .env(
                    "FHIRBULK_STORAGE_CONNECTION_STRING",
                    &azurite.connection_string,
                )
                .env("FHIRBULK_FHIR_URL", fhir_url)
                .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
                .env("FHIRBULK_WATCH_INTERVAL_MS", "200")
                .env("RUST_LOG", "warn")
                .env("FHIRBULK_API_KEYS", TEST_API_KEY)
                .envs(extra_env.iter().copied())
                .stdout(if capture {
                    std::process::Stdio::piped()
                } else {
                    std::process::Stdio::inherit()
                })
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the handler binary starts");
            let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            if let Some(stdout) = child.stdout.take() {
                forward_lines(stdout, logs.clone(), false);
            }
            let stderr = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            forward_lines(child.stderr.take().expect("piped"), stderr.clone(), true);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    // Let the forwarding thread take the last lines.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    let said = stderr.lock().unwrap().join("\n");
                    assert!(
                        attempt < 3 && said.contains("in use"),
                        "handler serve exited ({status}) before it listened: {said}"
                    );
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "handler serve did not listen within 30 s"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if child.try_wait().ok().flatten().is_some() {
                continue;
            }
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert("x-functions-key", TEST_API_KEY.parse().unwrap());
            let client = reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap();
            return Handler {
                child,
                base: format!("http://127.0.0.1:{port}"),
                client,
                logs,
            };
        }
        unreachable!()
    }

    /// SIGKILL, as a crash would: no graceful drain.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until at least `files` imports are recorded and all have finished.
    pub async fn wait_imports(&self, files: usize, timeout_secs: u64) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
        loop {
            if let Ok(resp) = self
                .client
                .get(format!("{}/imports", self.base))
                .send()
                .await
                && let Ok(body) = resp.json::<serde_json::Value>().await
            {
                let items = body["imports"].as_array().cloned().unwrap_or_default();
                let done = items
                    .iter()
                    .filter(|i| {
                        matches!(
                            i["status"].as_str(),
                            Some("loaded" | "completed-with-errors" | "rejected" | "superseded")
                        )
                    })
                    .count();
                if items.len() >= files && done == items.len() {
                    return items;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "imports did not finish in {timeout_secs}s: {done} of {} done ({files} expected): {items:#?}",
                    items.len()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

impl Handler {
    /// `GET /imports/{container}/{blob}`: the newest import of that blob.
    pub async fn import_view(&self, container: &str, blob: &str) -> serde_json::Value {
        self.client
            .get(format!("{}/imports/{container}/{blob}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The text of an import's report, as its status names it: `which` is `result` (the
    /// result JSON) or `errorReport` (the NDJSON of OperationOutcomes).
    pub async fn report(
        &self,
        store: &fhir_bulk::storage::BlobStore,
        container: &str,
        blob: &str,
        which: &str,
    ) -> String {
        let status = self.import_view(container, blob).await;
        let path = status[which]
            .as_str()
            .unwrap_or_else(|| panic!("{container}/{blob} has no {which}: {status:#}"));
        let (reports, name) = path.split_once('/').expect("container/blob");
        blob_text(store, reports, name).await
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `Type?query` result count on the FHIR server (`_summary=count`).
pub async fn fhir_count(base: &str, query: &str) -> i64 {
    let sep = if query.contains('?') { '&' } else { '?' };
    let url = format!("{base}/{query}{sep}_summary=count");
    let body: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    body["total"]
        .as_i64()
        .unwrap_or_else(|| panic!("no total from {url}: {body}"))
}

/// Blob storage of a test's Azurite.
pub fn blobs(azurite: &Azurite) -> fhir_bulk::storage::BlobStore {
    let settings = fhir_bulk::config::parse_connection_string(&azurite.connection_string).unwrap();
    fhir_bulk::storage::BlobStore::new(
        &fhir_bulk::storage::StorageCredentials::new(&settings).unwrap(),
    )
    .unwrap()
}

/// The export state tables of `azurite` (the default `exports` table), read as the handler
/// reads them.
pub fn export_store(azurite: &Azurite) -> fhir_bulk::export::state::ExportStore {
    let settings = fhir_bulk::config::parse_connection_string(&azurite.connection_string).unwrap();
    let credentials = fhir_bulk::storage::StorageCredentials::new(&settings).unwrap();
    let tables =
        fhir_bulk::storage::TableClient::new(&credentials, reqwest::Client::new()).unwrap();
    fhir_bulk::export::state::ExportStore::new(tables, "exports")
}

/// A blob's whole content as text.
pub async fn blob_text(
    store: &fhir_bulk::storage::BlobStore,
    container: &str,
    name: &str,
) -> String {
    let size = store
        .properties(container, name)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{container}/{name} should exist"))
        .size;
    String::from_utf8(
        store
            .read_range(container, name, 0, size)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap()
}

/// Every resource a search of the FHIR server at `fhir` returns (all pages, matches only), by
/// `Type/id`.
pub async fn searched(
    fhir: &str,
    search: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    let sep = if search.contains('?') { '&' } else { '?' };
    let mut next = Some(format!("{fhir}/{search}{sep}_count=100"));
    while let Some(url) = next.take() {
        let page: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        for e in page["entry"].as_array().cloned().unwrap_or_default() {
            if e["search"]["mode"].as_str().unwrap_or("match") == "match" {
                let r = e["resource"].clone();
                out.insert(resource_key(&r), r);
            }
        }
        next = page["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
    }
    out
}

/// `Type/id` of a resource.
pub fn resource_key(resource: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    )
}
