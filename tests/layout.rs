//! The Functions app layout matches the handler: every folder under `functions/` is a function
//! the handler routes, every handler function has a folder, and the bindings are well formed
//! and use the binding names the handler reads.

use std::collections::BTreeSet;
use std::path::Path;

use fhir_bulk::functions::{
    FUNCTION_NAMES, export_blob_created, export_http, export_worker, import_blob_created,
    import_status, import_worker,
};
use serde_json::Value;

fn function_json(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("functions")
        .join(name)
        .join("function.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

#[test]
fn every_function_folder_has_a_route_and_every_route_a_folder() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("functions");
    let folders: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let names: BTreeSet<String> = FUNCTION_NAMES.iter().map(|s| s.to_string()).collect();
    assert_eq!(folders, names);
}

#[test]
fn bindings_are_valid_and_named_as_the_handler_reads_them() {
    for name in FUNCTION_NAMES {
        let bindings = function_json(name)["bindings"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let triggers: Vec<&Value> = bindings
            .iter()
            .filter(|b| b["type"].as_str().unwrap_or("").ends_with("Trigger"))
            .collect();
        assert_eq!(triggers.len(), 1, "{name} needs exactly one trigger");
        for b in &bindings {
            assert!(b["name"].is_string(), "{name}: a binding without a name");
            assert!(
                matches!(b["direction"].as_str(), Some("in" | "out")),
                "{name}: bad direction"
            );
            let kind = b["type"].as_str().unwrap_or("");
            assert!(
                [
                    "eventGridTrigger",
                    "queueTrigger",
                    "httpTrigger",
                    "http",
                    "timerTrigger"
                ]
                .contains(&kind),
                "{name}: unknown binding type {kind}"
            );
            if kind == "httpTrigger" {
                // The CapabilityStatement is public, as on any FHIR server: clients read it
                // before they authenticate.
                let level = if *name == "Metadata" {
                    "anonymous"
                } else {
                    "function"
                };
                assert_eq!(
                    b["authLevel"], level,
                    "{name}: HTTP functions need a function key"
                );
            }
            if kind == "queueTrigger" {
                assert!(
                    b["queueName"].is_string() && b["connection"].is_string(),
                    "{name}: queue binding incomplete"
                );
            }
        }
    }
    let trigger_name = |f: &str| {
        function_json(f)["bindings"][0]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        trigger_name("ImportBlobCreated"),
        import_blob_created::BINDING
    );
    assert_eq!(trigger_name("ImportWorker"), import_worker::BINDING);
    assert_eq!(trigger_name("ImportStatus"), import_status::REQUEST_BINDING);
    assert_eq!(
        function_json("ImportStatus")["bindings"][1]["name"],
        import_status::RESPONSE_BINDING
    );
    assert_eq!(trigger_name("ExportWorker"), export_worker::BINDING);
    assert_eq!(
        trigger_name("ExportBlobCreated"),
        export_blob_created::BINDING
    );
    for f in [
        "ExportStart",
        "ExportAllStart",
        "ExportStatus",
        "ExportTerminate",
        "ExportManage",
        "ExportPurge",
        "ExportList",
    ] {
        assert_eq!(trigger_name(f), export_http::REQUEST_BINDING, "{f}");
        assert_eq!(
            function_json(f)["bindings"][1]["name"],
            export_http::RESPONSE_BINDING,
            "{f}"
        );
    }
    // The export queue trigger reads the queue the handler writes.
    assert_eq!(
        function_json("ExportWorker")["bindings"][0]["queueName"],
        "%FHIRBULK_EXPORT_QUEUE%"
    );
}

#[test]
fn host_json_runs_the_handler_binary_as_a_custom_handler() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("host.json")).unwrap();
    let host: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(host["version"], "2.0");
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "handler"
    );
    assert_eq!(host["extensions"]["http"]["routePrefix"], "");
    assert_eq!(
        host["extensions"]["queues"]["messageEncoding"], "none",
        "work items are plain JSON"
    );
    let max_dequeue = host["extensions"]["queues"]["maxDequeueCount"]
        .as_u64()
        .unwrap();
    assert!(
        max_dequeue > u64::from(fhir_bulk::config::DEFAULT_MAX_WORK_ATTEMPTS),
        "the engine must give up (with a recorded reason) before the host poisons the message"
    );
    // Invocations arrive in the host's request format (the default): no forwarding setting,
    // whose name changed (enableForwardingHttpRequest, now enableProxyingHttpRequest).
    let custom = host["customHandler"].as_object().unwrap();
    assert!(
        custom.keys().all(|k| k == "description"),
        "customHandler: {custom:?}"
    );
}

/// Telemetry a user pays for: request telemetry is sampled; the handler's log lines (traces,
/// which the workbook counts) and exceptions never are; the host's per-invocation
/// "Executing/Executed" traces are off (Function at Warning) while the handler's stdout
/// (Host.Function.Console) is kept.
#[test]
fn host_json_samples_requests_but_never_errors_or_the_handler_s_logs() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("host.json")).unwrap();
    let host: Value = serde_json::from_str(&text).unwrap();
    let sampling = &host["logging"]["applicationInsights"]["samplingSettings"];
    assert_eq!(sampling["isEnabled"], true);
    let excluded: Vec<&str> = sampling["excludedTypes"]
        .as_str()
        .unwrap()
        .split(';')
        .collect();
    assert!(
        excluded.contains(&"Exception") && excluded.contains(&"Trace"),
        "{sampling}"
    );
    let levels = &host["logging"]["logLevel"];
    assert_eq!(levels["Function"], "Warning");
    assert_eq!(levels["Host.Function.Console"], "Information");
    assert_eq!(levels["Host.Results"], "Information");
}

/// The Bicep keeps in step with the functions: every `%SETTING%` a binding reads and every
/// identity-based connection is an app setting, and every Event Grid function gets events.
#[test]
fn infra_sets_what_the_bindings_read_and_subscribes_every_event_grid_function() {
    let infra = Path::new(env!("CARGO_MANIFEST_DIR")).join("infra");
    let main = std::fs::read_to_string(infra.join("main.bicep")).unwrap();
    let events = std::fs::read_to_string(infra.join("eventgrid.bicep")).unwrap();
    for name in FUNCTION_NAMES {
        for b in function_json(name)["bindings"].as_array().unwrap() {
            if let Some(queue) = b["queueName"].as_str() {
                let setting = queue.trim_matches('%');
                assert!(
                    main.contains(&format!("name: '{setting}'")),
                    "{name}: app setting {setting} missing from infra/main.bicep"
                );
            }
            if let Some(connection) = b["connection"].as_str() {
                assert!(
                    main.contains(&format!("name: '{connection}__queueServiceUri'")),
                    "{name}: connection {connection} missing from infra/main.bicep"
                );
            }
            if b["type"] == "eventGridTrigger" {
                assert!(
                    events.contains(&format!("function: '{name}'")),
                    "{name} gets no Event Grid subscription in infra/eventgrid.bicep"
                );
            }
        }
    }
}
