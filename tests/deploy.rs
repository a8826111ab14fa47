//! `scripts/deploy.sh` against a recording stand-in for `az` (tests/deploy/bin/az): the exact
//! command sequence of a first deployment (with and without `--fhir-service-id`), of a re-run
//! (nothing re-created, re-uploaded or switched), of an update to a new package (uploaded
//! before the app is switched to it), of `--what-if` (nothing built or changed), under a
//! managed-identity login (no Microsoft Graph call); the triggers synchronised on every run
//! and every Event Grid function waited for (with one restart when they do not appear); the
//! service-principal secret kept out of every command line and output and its Key Vault
//! reference refreshed; and a clear message for each missing prerequisite.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One stand-in Azure: its call log and its remembered state.
struct FakeAzure {
    dir: tempfile::TempDir,
}

impl FakeAzure {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("package.zip"), b"not really a zip").unwrap();
        FakeAzure { dir }
    }

    fn package(&self) -> PathBuf {
        self.dir.path().join("package.zip")
    }

    fn deploy(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.run(
            &[args, &["--package", self.package().to_str().unwrap()]].concat(),
            env,
        )
    }

    /// Runs deploy.sh with exactly `args`; building a package is recorded and refused.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let _ = std::fs::remove_file(self.dir.path().join("log"));
        let builder = self.dir.path().join("build-package");
        std::fs::write(
            &builder,
            format!(
                "#!/bin/sh\necho 'package.sh' >> {}\nexit 9\n",
                self.dir.path().join("log").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&builder, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            root().join("tests/deploy/bin").display(),
            std::env::var("PATH").unwrap()
        );
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts/deploy.sh"))
            .args(args)
            .env("PATH", path)
            .env("DEPLOY_PACKAGE_COMMAND", &builder)
            .env("AZ_LOG", self.dir.path().join("log"))
            .env("AZ_STATE", self.dir.path())
            .env("DEPLOY_RETRY_SECS", "0")
            .env_remove("FHIRBULK_FHIR_CLIENT_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// The recorded calls, with this run's paths replaced by placeholders.
    fn calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let repo = root().display().to_string();
        let package = self.package().display().to_string();
        text.lines()
            .map(|line| {
                line.split(' ')
                    .map(|word| {
                        if word.starts_with('@') && word.ends_with("/main.parameters.json") {
                            "@<parameters>".to_string()
                        } else {
                            word.replace(&package, "<package>").replace(&repo, "<repo>")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    fn parameters(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("parameters.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

fn expected(name: &str) -> Vec<String> {
    let path = root().join("tests/deploy").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const ARGS: &[&str] = &[
    "--subscription",
    "sub-id",
    "--resource-group",
    "rg-fhirbulk",
    "--location",
    "westeurope",
    "--prefix",
    "fbulk",
    "--fhir-url",
    "https://ws-fhir.fhir.azurehealthcareapis.com",
];

const FHIR_SERVICE: &[&str] = &[
    "--fhir-service-id",
    "/subscriptions/sub-2/resourceGroups/rg-fhir/providers/Microsoft.HealthcareApis/workspaces/ws/fhirservices/fhir",
];

/// No call may need Microsoft Graph (`az ad`): a deployer with Owner on the subscription may
/// not have directory read permission, and a managed identity has none.
fn assert_no_graph(calls: &[String]) {
    assert!(calls.iter().all(|c| !c.starts_with("az ad ")), "{calls:#?}");
}

#[test]
fn a_first_deployment_runs_infra_then_code_then_events_and_a_rerun_changes_nothing() {
    let azure = FakeAzure::new();
    let args = [ARGS, FHIR_SERVICE].concat();
    let out = azure.deploy(&args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(azure.calls(), expected("first-run.txt"));
    assert_no_graph(&azure.calls());
    let said = text(&out);
    assert!(
        said.contains("az functionapp keys list --resource-group rg-fhirbulk --name fb-func-abc"),
        "ends with how to get the function key: {said}"
    );
    assert!(said.contains("https://fb-func-abc.azurewebsites.net/$alt-export"));
    let params = azure.parameters();
    let p = &params["parameters"];
    assert_eq!(p["fhirAuth"]["value"], "managed-identity");
    assert_eq!(p["prefix"]["value"], "fbulk");
    assert_eq!(p["fhirServiceResourceId"]["value"], FHIR_SERVICE[1]);
    assert_eq!(
        p["deployerObjectId"]["value"],
        "00000000-0000-0000-0000-0000000000aa"
    );
    assert_eq!(p["deployerPrincipalType"]["value"], "User");
    assert_eq!(
        p["packageBlobName"]["value"], "",
        "the first infrastructure deployment points the app at no package"
    );

    let out = azure.deploy(&args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(azure.calls(), expected("rerun.txt"));
    assert!(text(&out).contains("already deployed"));
    assert_eq!(
        azure.parameters()["parameters"]["packageBlobName"]["value"],
        "fhir-bulk-d5bd64a5c43b6f8c.zip",
        "a re-run keeps the package the app runs"
    );
}

#[test]
fn an_update_uploads_the_new_package_before_the_app_is_switched_to_it() {
    let azure = FakeAzure::new();
    let out = azure.deploy(ARGS, &[]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(azure.package(), b"a newer package").unwrap();
    let out = azure.deploy(ARGS, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The stand-in refuses a switch to a package that is not uploaded; the order is recorded.
    assert_eq!(azure.calls(), expected("update.txt"));
    assert_eq!(
        azure.parameters()["parameters"]["packageBlobName"]["value"],
        "fhir-bulk-d5bd64a5c43b6f8c.zip",
        "stage 1 keeps the running package while the new one is uploaded"
    );
}

#[test]
fn without_a_fhir_service_id_no_role_is_asked_for() {
    let azure = FakeAzure::new();
    let out = azure.deploy(ARGS, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(azure.calls(), expected("no-fhir-service-id.txt"));
    assert_eq!(
        azure.parameters()["parameters"]["fhirServiceResourceId"]["value"],
        ""
    );
}

#[test]
fn a_managed_identity_login_deploys_with_the_identity_s_object_id() {
    let azure = FakeAzure::new();
    let out = azure.deploy(ARGS, &[("AZ_LOGIN", "identity")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(azure.calls(), expected("managed-identity.txt"));
    assert_no_graph(&azure.calls());
    let params = azure.parameters();
    assert_eq!(
        params["parameters"]["deployerObjectId"]["value"],
        "00000000-0000-0000-0000-0000000000cc"
    );
    assert_eq!(
        params["parameters"]["deployerPrincipalType"]["value"],
        "ServicePrincipal"
    );
    // Or given outright.
    let id = "12345678-1234-1234-1234-123456789abc";
    let out = azure.deploy(&[ARGS, &["--deployer-object-id", id]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        azure.parameters()["parameters"]["deployerObjectId"]["value"],
        id
    );
    assert!(
        azure
            .calls()
            .iter()
            .all(|c| !c.contains("get-access-token"))
    );
}

#[test]
fn functions_that_do_not_appear_after_the_sync_get_one_restart() {
    let azure = FakeAzure::new();
    let out = azure.deploy(
        ARGS,
        &[("AZ_FUNCTIONS_AFTER_RESTART", "1"), ("DEPLOY_RETRIES", "4")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let calls = azure.calls();
    let restarts = calls
        .iter()
        .filter(|c| c.contains("functionapp restart"))
        .count();
    assert_eq!(restarts, 1, "{calls:#?}");
    assert!(calls.last().unwrap().contains("eventgrid.bicep"));
}

#[test]
fn what_if_builds_nothing_and_changes_nothing() {
    let azure = FakeAzure::new();
    let out = azure.run(&[ARGS, &["--what-if"]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("does not exist; a deployment would create it"),
        "{}",
        text(&out)
    );
    std::fs::write(azure.dir.path().join("group"), b"").unwrap();
    let out = azure.run(&[ARGS, &["--what-if"]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("eventgrid.bicep would be deployed once the functions exist"));
    // Once deployed, both templates are compared, still without building anything.
    let out = azure.deploy(ARGS, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = azure.run(&[ARGS, &["--what-if"]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(azure.calls(), expected("what-if.txt"));
    assert!(
        text(&out).contains("the package would be built"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_service_principal_secret_goes_to_key_vault_and_nowhere_else() {
    let azure = FakeAzure::new();
    let secret = "s3cr3t-value-that-must-not-leak";
    let args = [
        ARGS,
        &[
            "--auth",
            "service-principal",
            "--tenant-id",
            "tenant-1",
            "--client-id",
            "client-1",
        ],
    ]
    .concat();
    let out = azure.deploy(&args, &[("FHIRBULK_FHIR_CLIENT_SECRET", secret)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(secret));
    assert!(azure.calls().iter().all(|c| !c.contains(secret)));
    let params = azure.parameters();
    assert_eq!(params["parameters"]["fhirAuth"]["value"], "client-secret");
    assert_eq!(params["parameters"]["fhirClientSecret"]["value"], secret);
    let refreshes = |calls: Vec<String>| {
        calls
            .iter()
            .filter(|c| c.contains("/config/configreferences/appsettings/refresh"))
            .count()
    };
    assert_eq!(
        refreshes(azure.calls()),
        1,
        "a written secret is read at once"
    );
    // A re-run without the secret keeps the stored one: the parameter is left out.
    let out = azure.deploy(&args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(azure.parameters()["parameters"]["fhirClientSecret"].is_null());
    assert_eq!(refreshes(azure.calls()), 0);
    // Without the tenant and client ids it stops before calling Azure.
    let out = azure.deploy(&[ARGS, &["--auth", "service-principal"]].concat(), &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("needs --tenant-id and --client-id"));
    assert!(azure.calls().is_empty());
}

#[test]
fn missing_prerequisites_and_bad_flags_say_what_to_do() {
    let azure = FakeAzure::new();
    std::fs::write(azure.dir.path().join("logged-out"), b"").unwrap();
    let out = azure.deploy(ARGS, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("run 'az login'"), "{}", text(&out));

    // No az at all: a PATH holding only what the script needs before it looks for az.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(which("dirname"), bin.path().join("dirname")).unwrap();
    let out = Command::new(which("bash"))
        .arg(root().join("scripts/deploy.sh"))
        .args(ARGS)
        .env("PATH", bin.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the Azure CLI (az) is not installed"),
        "{}",
        text(&out)
    );

    for (args, says) in [
        (vec!["--prefix", "fbulk"], "missing --subscription"),
        (
            [ARGS, &["--prefix", "Bad-Prefix"]].concat(),
            "must be 3-11 lowercase",
        ),
        (
            [ARGS, &["--prefix", "1bulk"]].concat(),
            "starting with a letter",
        ),
        (
            [ARGS, &["--deployer-object-id", "me"]].concat(),
            "is not an object id",
        ),
        ([ARGS, &["--auth", "password"]].concat(), "--auth must be"),
        (
            [ARGS, &["--fhir-service-id", "/subscriptions/x"]].concat(),
            "must be a FHIR service id",
        ),
        ([ARGS, &["--colour"]].concat(), "unknown argument"),
    ] {
        let out = azure.deploy(&args, &[]);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
}

fn which(tool: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap().split(':') {
        let candidate = Path::new(dir).join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{tool} is not on PATH");
}
