//! Nobody let in: `handler serve` asks for a key on every route but `/health`, does not expose
//! the host's invocation routes, builds links from its public base URL (never the request's
//! Host header, which would send the caller's key to any host they name), and refuses searches
//! that leave the FHIR base URL.

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Azurite, FhirServer, Handler, TEST_API_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_asks_for_a_key_and_builds_links_from_its_own_base() {
    let azurite = Azurite::start();
    let fhir = FhirServer::start();
    let handler = Handler::start(&azurite, &fhir.base_url, &[]);
    let anonymous = reqwest::Client::new();
    let base = &handler.base;

    for (method, path) in [
        ("GET", "/imports"),
        ("GET", "/imports/bundles/x.json"),
        ("GET", "/$alt-export-status"),
        ("DELETE", "/$alt-export/0123456789abcdef0123456789abcdef"),
        ("POST", "/$alt-export"),
        ("GET", "/$alt-export-manage/x?action=terminate"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = anonymous
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
        let wrong = anonymous
            .request(method.clone(), format!("{base}{path}"))
            .header("x-functions-key", "not-the-key-but-long-enough")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let health = anonymous
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let with_code = anonymous
        .get(format!("{base}/imports?code={TEST_API_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(with_code.status(), StatusCode::OK);

    // The host's invocation routes are not served: a forged BlobCreated registers nothing.
    for function in ["ImportBlobCreated", "ImportWorker", "ExportStart"] {
        let resp = handler
            .client
            .post(format!("{base}/{function}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{function}");
    }

    // Links point at the handler's own base, whatever Host the request named.
    let definition =
        r#"{"query": "Patient", "patientreferencefield": "id", "include": ["Patient?_id=$IDS"]}"#;
    let resp = anonymous
        .post(format!("{base}/$alt-export?code={TEST_API_KEY}"))
        .header("Host", "evil.example")
        .body(definition)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let started: Value = resp.json().await.unwrap();
    for link in [
        location.as_str(),
        started["statusQueryGetUri"].as_str().unwrap(),
        started["terminatePostUri"].as_str().unwrap(),
    ] {
        assert!(link.starts_with(&format!("{base}/")), "{link}");
        assert!(!link.contains("evil.example"), "{link}");
    }

    // A search climbing out of the FHIR base path is refused before anything is sent.
    let escaping = r#"{"query": "Patient/../../../x?a=1", "patientreferencefield": "id", "include": ["Patient?_id=$IDS"]}"#;
    let resp = handler
        .client
        .post(format!("{base}/$alt-export"))
        .body(escaping)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let outcome: Value = resp.json().await.unwrap();
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("leaves the FHIR base URL"),
        "{outcome}"
    );
}

/// Start-up refuses to listen beyond loopback without keys, and refuses keys too short to
/// keep anyone out.
#[test]
fn serve_refuses_to_open_up_without_keys() {
    let err = serve_start_error(&[("FHIRBULK_LISTEN_ADDRESS", "0.0.0.0")]);
    assert!(err.contains("FHIRBULK_API_KEYS"), "{err}");
    let err = serve_start_error(&[("FHIRBULK_API_KEYS", "short")]);
    assert!(err.contains("too easy to guess"), "{err}");
}

/// What `handler serve` says when it refuses to start with `env`.
fn serve_start_error(env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("serve")
        .env(
            "FHIRBULK_STORAGE_CONNECTION_STRING",
            "UseDevelopmentStorage=true",
        )
        .env("FHIRBULK_FHIR_URL", "http://127.0.0.1:9/fhir")
        .env_remove("FHIRBULK_API_KEYS")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started with {env:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
