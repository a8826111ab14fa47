//! Starts the real services a test needs (Azurite, the sekmet FHIR server) on free loopback
//! ports in temporary folders, and stops exactly those processes when dropped. A service that
//! cannot start fails the test: integration tests never skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
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

fn start(script: &str, env: &[(&str, String)]) -> Service {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(repo_root().join("scripts").join(script))
        .env("STATE_DIR", dir.path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} failed (run scripts/install.sh first): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the script prints the PID");
    Service { pid, _dir: dir }
}

pub struct Azurite {
    pub connection_string: String,
    _service: Service,
}

impl Azurite {
    pub fn start() -> Self {
        let (b, q, t) = (free_port(), free_port(), free_port());
        let service = start(
            "azurite-up.sh",
            &[
                ("AZURITE_BLOB_PORT", b.to_string()),
                ("AZURITE_QUEUE_PORT", q.to_string()),
                ("AZURITE_TABLE_PORT", t.to_string()),
            ],
        );
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
        let port = free_port();
        let service = start("fhir-up.sh", &[("FHIR_PORT", port.to_string())]);
        FhirServer {
            base_url: format!("http://127.0.0.1:{port}/fhir"),
            _service: service,
        }
    }
}

#[allow(dead_code)]
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
