//! Every setting of the handler: its environment variable, its default and its validation, in
//! one place. Read once at start-up (`Settings::from_env`); an invalid value stops start-up with
//! a message that names the variable. Tests build settings from a `HashMap` (no `set_var`).

mod export;
mod http;
mod storage;

use std::collections::HashMap;
use std::time::Duration;

use url::Url;

pub use export::*;
pub use http::*;
use storage::valid_account_name;
pub use storage::{AZURITE_CONNECTION_STRING, StorageSettings, parse_connection_string};

/// Where a setting's raw value comes from: the process environment, or a map in tests.
pub trait SettingSource {
    fn get(&self, name: &'static str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl SettingSource for ProcessEnv {
    fn get(&self, name: &'static str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl SettingSource for HashMap<String, String> {
    fn get(&self, name: &'static str) -> Option<String> {
        HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

impl SettingSource for HashMap<&str, &str> {
    fn get(&self, name: &'static str) -> Option<String> {
        HashMap::get(self, name)
            .map(|v| v.to_string())
            .filter(|v| !v.trim().is_empty())
    }
}

/// The settings as the app sees them once App Service has resolved its Key Vault references:
/// a value still reading `@Microsoft.KeyVault(...)` was not resolved, and is never used as the
/// value (a client secret that is the reference text would fail sign-in with a misleading
/// error). The first such setting read is remembered.
struct KeyVaultResolved<'a> {
    src: &'a dyn SettingSource,
    unresolved: std::cell::Cell<Option<&'static str>>,
}

/// How an app setting holding a Key Vault reference begins.
const KEY_VAULT_REFERENCE: &str = "@Microsoft.KeyVault(";

impl SettingSource for KeyVaultResolved<'_> {
    fn get(&self, name: &'static str) -> Option<String> {
        let value = self.src.get(name)?;
        if value.trim_start().starts_with(KEY_VAULT_REFERENCE) {
            if self.unresolved.get().is_none() {
                self.unresolved.set(Some(name));
            }
            return None;
        }
        Some(value)
    }
}

/// A setting that could not be used, with the variable it came from.
#[derive(Debug, thiserror::Error)]
#[error("setting {name}={value:?} is invalid: {reason}")]
pub struct SettingError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

pub const ENV_STORAGE_CONNECTION_STRING: &str = "FHIRBULK_STORAGE_CONNECTION_STRING";
pub const ENV_STORAGE_ACCOUNT: &str = "FHIRBULK_STORAGE_ACCOUNT";
pub const ENV_MANAGED_IDENTITY_CLIENT_ID: &str = "FHIRBULK_MANAGED_IDENTITY_CLIENT_ID";

pub const ENV_FHIR_URL: &str = "FHIRBULK_FHIR_URL";
pub const ENV_FHIR_AUTH: &str = "FHIRBULK_FHIR_AUTH";
pub const ENV_FHIR_AUDIENCE: &str = "FHIRBULK_FHIR_AUDIENCE";
pub const ENV_FHIR_TENANT_ID: &str = "FHIRBULK_FHIR_TENANT_ID";
pub const ENV_FHIR_CLIENT_ID: &str = "FHIRBULK_FHIR_CLIENT_ID";
pub const ENV_FHIR_CLIENT_SECRET: &str = "FHIRBULK_FHIR_CLIENT_SECRET";
pub const ENV_FHIR_TIMEOUT_SECS: &str = "FHIRBULK_FHIR_TIMEOUT_SECS";
pub const DEFAULT_FHIR_TIMEOUT_SECS: u64 = 100;
pub const ENV_FHIR_MAX_RETRIES: &str = "FHIRBULK_FHIR_MAX_RETRIES";
pub const DEFAULT_FHIR_MAX_RETRIES: u32 = 6;
pub const ENV_FHIR_RETRY_BASE_MS: &str = "FHIRBULK_FHIR_RETRY_BASE_MS";
pub const DEFAULT_FHIR_RETRY_BASE_MS: u64 = 500;
pub const ENV_FHIR_RETRY_MAX_MS: &str = "FHIRBULK_FHIR_RETRY_MAX_MS";
pub const DEFAULT_FHIR_RETRY_MAX_MS: u64 = 60_000;
pub const ENV_FHIR_THROTTLE_PATIENCE_SECS: &str = "FHIRBULK_FHIR_THROTTLE_PATIENCE_SECS";
pub const DEFAULT_FHIR_THROTTLE_PATIENCE_SECS: u64 = 900;
pub const ENV_FHIR_RETRY_BUDGET_PERCENT: &str = "FHIRBULK_FHIR_RETRY_BUDGET_PERCENT";
pub const DEFAULT_FHIR_RETRY_BUDGET_PERCENT: u32 = 20;
pub const ENV_FHIR_MIN_CONCURRENCY: &str = "FHIRBULK_FHIR_MIN_CONCURRENCY";
pub const DEFAULT_FHIR_MIN_CONCURRENCY: usize = 1;
pub const ENV_FHIR_MAX_CONCURRENCY: &str = "FHIRBULK_FHIR_MAX_CONCURRENCY";
pub const DEFAULT_FHIR_MAX_CONCURRENCY: usize = 16;
pub const ENV_FHIR_BUNDLE_PROCESSING_LOGIC: &str = "FHIRBULK_FHIR_BUNDLE_PROCESSING_LOGIC";

pub const ENV_CONTAINER_BUNDLES: &str = "FHIRBULK_CONTAINER_BUNDLES";
pub const ENV_CONTAINER_NDJSON: &str = "FHIRBULK_CONTAINER_NDJSON";
pub const ENV_CONTAINER_ZIP: &str = "FHIRBULK_CONTAINER_ZIP";
pub const ENV_CONTAINER_REPORTS: &str = "FHIRBULK_CONTAINER_REPORTS";
pub const DEFAULT_CONTAINER_REPORTS: &str = "reports";
pub const ENV_IMPORT_QUEUE: &str = "FHIRBULK_IMPORT_QUEUE";
pub const DEFAULT_IMPORT_QUEUE: &str = "import-work";
pub const ENV_IMPORTS_TABLE: &str = "FHIRBULK_IMPORTS_TABLE";
pub const DEFAULT_IMPORTS_TABLE: &str = "imports";

pub const ENV_TRANSACTION_MODE: &str = "FHIRBULK_TRANSACTION_MODE";
pub const ENV_MAX_BUNDLE_ENTRIES: &str = "FHIRBULK_MAX_BUNDLE_ENTRIES";
pub const DEFAULT_MAX_BUNDLE_ENTRIES: usize = 500;
pub const ENV_MAX_BUNDLE_FILE_MIB: &str = "FHIRBULK_MAX_BUNDLE_FILE_MIB";
pub const DEFAULT_MAX_BUNDLE_FILE_MIB: u64 = 64;
pub const ENV_NDJSON_RESOURCES_PER_BUNDLE: &str = "FHIRBULK_NDJSON_RESOURCES_PER_BUNDLE";
pub const DEFAULT_NDJSON_RESOURCES_PER_BUNDLE: usize = 200;
pub const ENV_MAX_BATCH_MIB: &str = "FHIRBULK_MAX_BATCH_MIB";
pub const DEFAULT_MAX_BATCH_MIB: usize = 4;
pub const ENV_BATCH_BUDGET_MIB: &str = "FHIRBULK_BATCH_BUDGET_MIB";
pub const DEFAULT_BATCH_BUDGET_MIB: usize = 32;
pub const ENV_BUNDLE_PARSE_BUDGET_MIB: &str = "FHIRBULK_BUNDLE_PARSE_BUDGET_MIB";
pub const DEFAULT_BUNDLE_PARSE_BUDGET_MIB: u32 = 24;
pub const ENV_BATCHES_PER_PART: &str = "FHIRBULK_BATCHES_PER_PART";
pub const DEFAULT_BATCHES_PER_PART: usize = 4;
pub const ENV_NDJSON_RANGE_MIB: &str = "FHIRBULK_NDJSON_RANGE_MIB";
pub const DEFAULT_NDJSON_RANGE_MIB: u64 = 32;
pub const ENV_LOAD_ON_DELIVERY_MAX_KIB: &str = "FHIRBULK_LOAD_ON_DELIVERY_MAX_KIB";
pub const DEFAULT_LOAD_ON_DELIVERY_MAX_KIB: u64 = 1024;
pub const ENV_LOAD_ON_DELIVERY_SECS: &str = "FHIRBULK_LOAD_ON_DELIVERY_SECS";
/// Event Grid waits 30 s for an answer before it delivers again.
pub const DEFAULT_LOAD_ON_DELIVERY_SECS: u64 = 10;
pub const ENV_ZIP_MAX_UNCOMPRESSED_MIB: &str = "FHIRBULK_ZIP_MAX_UNCOMPRESSED_MIB";
pub const DEFAULT_ZIP_MAX_UNCOMPRESSED_MIB: u64 = 20 * 1024;
pub const ENV_ZIP_MAX_RATIO: &str = "FHIRBULK_ZIP_MAX_RATIO";
pub const DEFAULT_ZIP_MAX_RATIO: u64 = 200;
pub const ENV_ZIP_MAX_ENTRIES: &str = "FHIRBULK_ZIP_MAX_ENTRIES";
pub const DEFAULT_ZIP_MAX_ENTRIES: usize = 10_000;

pub const ENV_WORK_VISIBILITY_SECS: &str = "FHIRBULK_WORK_VISIBILITY_SECS";
pub const DEFAULT_WORK_VISIBILITY_SECS: u64 = 120;
pub const ENV_MAX_WORK_ATTEMPTS: &str = "FHIRBULK_MAX_WORK_ATTEMPTS";
pub const DEFAULT_MAX_WORK_ATTEMPTS: u32 = 8;
pub const ENV_WORK_STALLED_SECS: &str = "FHIRBULK_WORK_STALLED_SECS";
/// A day, like Event Grid's retry window: an outage of hours slows a load down, never ends it.
pub const DEFAULT_WORK_STALLED_SECS: u64 = 24 * 60 * 60;
pub const ENV_WORKERS: &str = "FHIRBULK_WORKERS";
pub const DEFAULT_WORKERS: usize = 4;
pub const ENV_SWEEP_INTERVAL_SECS: &str = "FHIRBULK_SWEEP_INTERVAL_SECS";
pub const DEFAULT_SWEEP_INTERVAL_SECS: u64 = 300;
pub const ENV_WATCH_INTERVAL_MS: &str = "FHIRBULK_WATCH_INTERVAL_MS";
pub const DEFAULT_WATCH_INTERVAL_MS: u64 = 1_000;
pub const ENV_PORT: &str = "FUNCTIONS_CUSTOMHANDLER_PORT";
pub const DEFAULT_PORT: u16 = 7071;

/// How the handler authenticates to the FHIR server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FhirAuth {
    None,
    ManagedIdentity {
        client_id: Option<String>,
    },
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: String,
    },
}

/// What happens to a `transaction` Bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionMode {
    /// Rewrite to a `batch` of `PUT Type/id` entries (works on every server, splittable).
    Batch,
    /// Post it unchanged, for servers that support transactions of that size.
    Transaction,
}

#[derive(Clone, Debug)]
pub struct FhirSettings {
    pub base_url: Url,
    pub auth: FhirAuth,
    /// Token audience (resource); defaults to the FHIR base URL's origin.
    pub audience: String,
    pub timeout: Duration,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long one request may be throttled (429/503) before its work is tried again later.
    pub throttle_patience: Duration,
    pub retry_budget_percent: u32,
    pub min_concurrency: usize,
    pub max_concurrency: usize,
    pub bundle_processing_logic: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ImportSettings {
    pub bundles_container: String,
    pub ndjson_container: String,
    pub zip_container: String,
    /// Result JSONs and error reports (`storage::reports`).
    pub reports_container: String,
    pub queue: String,
    pub table: String,
    pub transaction_mode: TransactionMode,
    pub max_bundle_entries: usize,
    pub max_bundle_file_bytes: u64,
    /// MiB of Bundle files read and planned at once in this process.
    pub bundle_parse_budget_mib: u32,
    pub ndjson_resources_per_bundle: usize,
    /// An NDJSON batch is closed before it would pass this many bytes (a longer line goes
    /// alone): FHIR servers refuse large request bodies.
    pub max_batch_bytes: usize,
    /// Bytes of NDJSON batches being built or sent at once in this process, each counted
    /// twice (its entries and its request body).
    pub batch_budget_bytes: usize,
    pub ndjson_range_bytes: u64,
    /// Batches one work item keeps in flight (the FHIR client's limiter caps the total).
    pub batches_per_part: usize,
    pub zip_max_uncompressed_bytes: u64,
    pub zip_max_ratio: u64,
    pub zip_max_entries: usize,
    /// Files of one work item up to this size are loaded by the delivery of their event (0:
    /// every file is queued).
    pub load_on_delivery_max_bytes: u64,
    /// A load on delivery still running after this is handed on to a queued work item.
    pub load_on_delivery_deadline: Duration,
    pub work: WorkSettings,
}

/// How queued work items are held and given up on; the same for import and export.
#[derive(Clone, Copy, Debug)]
pub struct WorkSettings {
    /// (serve) how long a taken work item stays hidden; renewed while it runs.
    pub visibility: Duration,
    /// Deliveries after which a failing export step is closed with a recorded error.
    pub max_attempts: u32,
    /// How long an import part may go without progress (its checkpoint not moving) before it
    /// is closed with a record of what was not loaded; until then failing work is queued again.
    pub stalled_after: Duration,
}

impl WorkSettings {
    fn read(r: &Reader) -> Result<Self, SettingError> {
        Ok(WorkSettings {
            visibility: Duration::from_secs(r.number(
                ENV_WORK_VISIBILITY_SECS,
                DEFAULT_WORK_VISIBILITY_SECS,
                10,
            )?),
            max_attempts: r.number(ENV_MAX_WORK_ATTEMPTS, DEFAULT_MAX_WORK_ATTEMPTS, 1)?,
            stalled_after: Duration::from_secs(r.number(
                ENV_WORK_STALLED_SECS,
                DEFAULT_WORK_STALLED_SECS,
                1,
            )?),
        })
    }
}

#[derive(Clone, Debug)]
pub struct ServeSettings {
    pub port: u16,
    pub workers: usize,
    pub watch_interval: Duration,
    /// How often the reconciliation sweep runs (the `Reconcile` timer's schedule, for serve).
    pub sweep_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub storage: StorageSettings,
    pub fhir: FhirSettings,
    pub import: ImportSettings,
    pub export: ExportSettings,
    pub serve: ServeSettings,
    pub http: HttpSettings,
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source(src: &dyn SettingSource) -> Result<Self, SettingError> {
        let resolved = KeyVaultResolved {
            src,
            unresolved: std::cell::Cell::new(None),
        };
        let settings = Self::read(&Reader(&resolved));
        if let Some(name) = resolved.unresolved.get() {
            return Err(SettingError {
                name,
                value: "@Microsoft.KeyVault(...)".into(),
                reason: "App Service did not resolve this Key Vault reference (the app's identity may \
                    lack Key Vault Secrets User on the vault, the role may still be applying, or the \
                    secret may be missing); see the setting's Key Vault reference status in the portal \
                    (Configuration > Application settings), then refresh the references or restart \
                    the app (scripts/deploy.sh does both)"
                    .into(),
            });
        }
        settings
    }

    fn read(r: &Reader) -> Result<Self, SettingError> {
        let fhir = FhirSettings::read(r)?;
        let work = WorkSettings::read(r)?;
        let import = ImportSettings::read(r, work)?;
        let export = ExportSettings::read(r, work)?;
        let serve = ServeSettings {
            port: r.number(ENV_PORT, DEFAULT_PORT, 1)?,
            workers: r.number(ENV_WORKERS, DEFAULT_WORKERS, 1)?,
            watch_interval: Duration::from_millis(r.number(
                ENV_WATCH_INTERVAL_MS,
                DEFAULT_WATCH_INTERVAL_MS,
                50,
            )?),
            sweep_interval: Duration::from_secs(r.number(
                ENV_SWEEP_INTERVAL_SECS,
                DEFAULT_SWEEP_INTERVAL_SECS,
                1,
            )?),
        };
        let http = HttpSettings::read(r, serve.port)?;
        Ok(Settings {
            storage: StorageSettings::read(r)?,
            http,
            fhir,
            import,
            export,
            serve,
        })
    }
}

impl StorageSettings {
    fn read(r: &Reader) -> Result<Self, SettingError> {
        if let Some(cs) = r.0.get(ENV_STORAGE_CONNECTION_STRING) {
            return parse_connection_string(&cs).map_err(|reason| SettingError {
                name: ENV_STORAGE_CONNECTION_STRING,
                value: "<redacted>".into(),
                reason,
            });
        }
        match r.0.get(ENV_STORAGE_ACCOUNT) {
            Some(account) if valid_account_name(&account) => Ok(StorageSettings::ManagedIdentity {
                account,
                client_id: r.0.get(ENV_MANAGED_IDENTITY_CLIENT_ID),
            }),
            Some(account) => Err(SettingError {
                name: ENV_STORAGE_ACCOUNT,
                value: account,
                reason: "a storage account name is 3-24 lowercase letters and digits".into(),
            }),
            None => Err(SettingError {
                name: ENV_STORAGE_ACCOUNT,
                value: String::new(),
                reason: format!(
                    "set {ENV_STORAGE_ACCOUNT} (Azure, managed identity) or \
                     {ENV_STORAGE_CONNECTION_STRING} (Azurite: UseDevelopmentStorage=true)"
                ),
            }),
        }
    }
}

impl FhirSettings {
    fn read(r: &Reader) -> Result<Self, SettingError> {
        let raw_url = r.0.get(ENV_FHIR_URL).ok_or_else(|| SettingError {
            name: ENV_FHIR_URL,
            value: String::new(),
            reason: "the FHIR server base URL is required, e.g. http://127.0.0.1:8090/fhir".into(),
        })?;
        let base_url = parse_base_url(&raw_url).map_err(|reason| SettingError {
            name: ENV_FHIR_URL,
            value: raw_url.clone(),
            reason,
        })?;
        let auth = match r.text(ENV_FHIR_AUTH, "none").as_str() {
            "none" => FhirAuth::None,
            "managed-identity" => FhirAuth::ManagedIdentity {
                client_id: r.0.get(ENV_MANAGED_IDENTITY_CLIENT_ID),
            },
            "client-secret" => FhirAuth::ClientSecret {
                tenant_id: r.required(ENV_FHIR_TENANT_ID, "client-secret auth needs the tenant")?,
                client_id: r.required(ENV_FHIR_CLIENT_ID, "client-secret auth needs the app id")?,
                secret: r.required(ENV_FHIR_CLIENT_SECRET, "client-secret auth needs a secret")?,
            },
            other => {
                return Err(SettingError {
                    name: ENV_FHIR_AUTH,
                    value: other.into(),
                    reason: "use none, managed-identity or client-secret".into(),
                });
            }
        };
        let audience =
            r.0.get(ENV_FHIR_AUDIENCE)
                .unwrap_or_else(|| base_url.origin().ascii_serialization());
        let min_concurrency =
            r.number(ENV_FHIR_MIN_CONCURRENCY, DEFAULT_FHIR_MIN_CONCURRENCY, 1)?;
        let max_concurrency =
            r.number(ENV_FHIR_MAX_CONCURRENCY, DEFAULT_FHIR_MAX_CONCURRENCY, 1)?;
        if min_concurrency > max_concurrency {
            return Err(SettingError {
                name: ENV_FHIR_MIN_CONCURRENCY,
                value: min_concurrency.to_string(),
                reason: format!("must not exceed {ENV_FHIR_MAX_CONCURRENCY}={max_concurrency}"),
            });
        }
        let retry_base = r.number(ENV_FHIR_RETRY_BASE_MS, DEFAULT_FHIR_RETRY_BASE_MS, 1)?;
        let retry_max = r.number(ENV_FHIR_RETRY_MAX_MS, DEFAULT_FHIR_RETRY_MAX_MS, retry_base)?;
        Ok(FhirSettings {
            base_url,
            auth,
            audience,
            timeout: Duration::from_secs(r.number(
                ENV_FHIR_TIMEOUT_SECS,
                DEFAULT_FHIR_TIMEOUT_SECS,
                1,
            )?),
            max_retries: r.number(ENV_FHIR_MAX_RETRIES, DEFAULT_FHIR_MAX_RETRIES, 0)?,
            retry_base: Duration::from_millis(retry_base),
            retry_max: Duration::from_millis(retry_max),
            throttle_patience: Duration::from_secs(r.number(
                ENV_FHIR_THROTTLE_PATIENCE_SECS,
                DEFAULT_FHIR_THROTTLE_PATIENCE_SECS,
                1,
            )?),
            retry_budget_percent: r.number(
                ENV_FHIR_RETRY_BUDGET_PERCENT,
                DEFAULT_FHIR_RETRY_BUDGET_PERCENT,
                1,
            )?,
            min_concurrency,
            max_concurrency,
            bundle_processing_logic: r.0.get(ENV_FHIR_BUNDLE_PROCESSING_LOGIC),
        })
    }
}

/// A FHIR base URL must be absolute http(s); it is kept without a trailing slash.
pub fn parse_base_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim().trim_end_matches('/')).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an absolute http(s) URL".into());
    }
    Ok(url)
}

impl ImportSettings {
    fn read(r: &Reader, work: WorkSettings) -> Result<Self, SettingError> {
        let transaction_mode = match r.text(ENV_TRANSACTION_MODE, "batch").as_str() {
            "batch" => TransactionMode::Batch,
            "transaction" => TransactionMode::Transaction,
            other => {
                return Err(SettingError {
                    name: ENV_TRANSACTION_MODE,
                    value: other.into(),
                    reason: "use batch (convert transactions) or transaction (post unchanged)"
                        .into(),
                });
            }
        };
        const MIB: u64 = 1024 * 1024;
        let max_batch_mib: usize = r.number(ENV_MAX_BATCH_MIB, DEFAULT_MAX_BATCH_MIB, 1)?;
        let batch_budget_mib: usize =
            r.number(ENV_BATCH_BUDGET_MIB, DEFAULT_BATCH_BUDGET_MIB, 1)?;
        // A batch is counted twice (its entries and its body): a smaller budget holds none.
        if batch_budget_mib < 2 * max_batch_mib {
            return Err(SettingError {
                name: ENV_BATCH_BUDGET_MIB,
                value: batch_budget_mib.to_string(),
                reason: format!(
                    "must be at least twice {ENV_MAX_BATCH_MIB}={max_batch_mib}, so that one full batch fits"
                ),
            });
        }
        Ok(ImportSettings {
            bundles_container: r.container(ENV_CONTAINER_BUNDLES, "bundles")?,
            ndjson_container: r.container(ENV_CONTAINER_NDJSON, "ndjson")?,
            zip_container: r.container(ENV_CONTAINER_ZIP, "zip")?,
            reports_container: r.container(ENV_CONTAINER_REPORTS, DEFAULT_CONTAINER_REPORTS)?,
            queue: r.text(ENV_IMPORT_QUEUE, DEFAULT_IMPORT_QUEUE),
            table: r.text(ENV_IMPORTS_TABLE, DEFAULT_IMPORTS_TABLE),
            transaction_mode,
            max_bundle_entries: r.number(ENV_MAX_BUNDLE_ENTRIES, DEFAULT_MAX_BUNDLE_ENTRIES, 1)?,
            max_bundle_file_bytes: MIB
                * r.number(ENV_MAX_BUNDLE_FILE_MIB, DEFAULT_MAX_BUNDLE_FILE_MIB, 1)?,
            ndjson_resources_per_bundle: r.number(
                ENV_NDJSON_RESOURCES_PER_BUNDLE,
                DEFAULT_NDJSON_RESOURCES_PER_BUNDLE,
                1,
            )?,
            max_batch_bytes: MIB as usize * max_batch_mib,
            batch_budget_bytes: MIB as usize * batch_budget_mib,
            ndjson_range_bytes: MIB
                * r.number(ENV_NDJSON_RANGE_MIB, DEFAULT_NDJSON_RANGE_MIB, 1)?,
            batches_per_part: r.number(ENV_BATCHES_PER_PART, DEFAULT_BATCHES_PER_PART, 1)?,
            bundle_parse_budget_mib: r.number(
                ENV_BUNDLE_PARSE_BUDGET_MIB,
                DEFAULT_BUNDLE_PARSE_BUDGET_MIB,
                1,
            )?,
            zip_max_uncompressed_bytes: MIB
                * r.number(
                    ENV_ZIP_MAX_UNCOMPRESSED_MIB,
                    DEFAULT_ZIP_MAX_UNCOMPRESSED_MIB,
                    1,
                )?,
            zip_max_ratio: r.number(ENV_ZIP_MAX_RATIO, DEFAULT_ZIP_MAX_RATIO, 1)?,
            zip_max_entries: r.number(ENV_ZIP_MAX_ENTRIES, DEFAULT_ZIP_MAX_ENTRIES, 1)?,
            load_on_delivery_max_bytes: 1024
                * r.number(
                    ENV_LOAD_ON_DELIVERY_MAX_KIB,
                    DEFAULT_LOAD_ON_DELIVERY_MAX_KIB,
                    0,
                )?,
            load_on_delivery_deadline: Duration::from_secs(r.number(
                ENV_LOAD_ON_DELIVERY_SECS,
                DEFAULT_LOAD_ON_DELIVERY_SECS,
                1,
            )?),
            work,
        })
    }

    /// The container that holds fully loaded files of `input`.
    pub fn processed_container(input: &str) -> String {
        format!("{input}processed")
    }

    /// The container that holds rejected or partly failed files of `input`.
    pub fn err_container(input: &str) -> String {
        format!("{input}err")
    }

    pub fn input_containers(&self) -> [&str; 3] {
        [
            &self.bundles_container,
            &self.ndjson_container,
            &self.zip_container,
        ]
    }
}

struct Reader<'a>(&'a dyn SettingSource);

impl Reader<'_> {
    fn number<T>(&self, name: &'static str, default: T, min: T) -> Result<T, SettingError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = self.0.get(name) else {
            return Ok(default);
        };
        let value: T = raw.trim().parse().map_err(|_| SettingError {
            name,
            value: raw.clone(),
            reason: "not a whole number".into(),
        })?;
        if value < min {
            return Err(SettingError {
                name,
                value: raw,
                reason: format!("must be at least {min}"),
            });
        }
        Ok(value)
    }

    /// A text setting with its default.
    fn text(&self, name: &'static str, default: &str) -> String {
        self.0.get(name).unwrap_or_else(|| default.into())
    }

    fn required(&self, name: &'static str, why: &str) -> Result<String, SettingError> {
        self.0.get(name).ok_or_else(|| SettingError {
            name,
            value: String::new(),
            reason: why.into(),
        })
    }

    /// Container names: 3-63 chars of lowercase letters, digits and single hyphens.
    fn container(&self, name: &'static str, default: &str) -> Result<String, SettingError> {
        let value = self.text(name, default);
        let ok = (3..=63).contains(&value.len())
            && value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !value.starts_with('-')
            && !value.contains("--");
        if ok {
            Ok(value)
        } else {
            Err(SettingError {
                name,
                value,
                reason: "a container name is 3-63 lowercase letters, digits and single hyphens"
                    .into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&'static str, &'static str)]) -> Result<Settings, SettingError> {
        let mut map: HashMap<&str, &str> = HashMap::from([
            (ENV_FHIR_URL, "http://127.0.0.1:8090/fhir/"),
            (ENV_STORAGE_CONNECTION_STRING, "UseDevelopmentStorage=true"),
        ]);
        map.extend(pairs.iter().copied());
        Settings::from_source(&map)
    }

    #[test]
    fn defaults_are_documented_values() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.fhir.base_url.as_str(), "http://127.0.0.1:8090/fhir");
        assert_eq!(s.import.max_bundle_entries, 500);
        assert_eq!(s.import.max_batch_bytes, 4 * 1024 * 1024);
        assert_eq!(s.import.batch_budget_bytes, 32 * 1024 * 1024);
        assert_eq!(s.import.transaction_mode, TransactionMode::Batch);
        assert_eq!(s.fhir.auth, FhirAuth::None);
        assert_eq!(s.fhir.audience, "http://127.0.0.1:8090");
        assert_eq!(s.export.container, "export");
        assert_eq!(
            s.export.trigger_processed_container(),
            "export-trigger-processed"
        );
        assert_eq!(s.export.max_exports, 10);
        assert_eq!(s.export.max_url_length, 4096);
        assert_eq!(s.export.max_file_bytes, 256 * 1024 * 1024);
        match &s.storage {
            StorageSettings::SharedKey { account, blob, .. } => {
                assert_eq!(account, "devstoreaccount1");
                assert_eq!(blob.as_str(), "http://127.0.0.1:10000/devstoreaccount1");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let err = settings(&[(ENV_MAX_BUNDLE_ENTRIES, "lots")]).unwrap_err();
        assert_eq!(err.name, ENV_MAX_BUNDLE_ENTRIES);
        let err = settings(&[(ENV_MAX_BUNDLE_ENTRIES, "0")]).unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
        let err = settings(&[(ENV_FHIR_AUTH, "kerberos")]).unwrap_err();
        assert_eq!(err.name, ENV_FHIR_AUTH);
        let err = settings(&[(ENV_FHIR_AUTH, "client-secret")]).unwrap_err();
        assert_eq!(err.name, ENV_FHIR_TENANT_ID);
        let err = settings(&[(ENV_CONTAINER_NDJSON, "Bad_Name")]).unwrap_err();
        assert_eq!(err.name, ENV_CONTAINER_NDJSON);
        let err = settings(&[(ENV_FHIR_URL, "fhir.example.org")]).unwrap_err();
        assert_eq!(err.name, ENV_FHIR_URL);
        let err = settings(&[(ENV_EXPORT_MAX_URL_LENGTH, "100000")]).unwrap_err();
        assert!(err.to_string().contains("at most 32768"), "{err}");
        let err = settings(&[(ENV_EXPORT_MAX_URL_LENGTH, "100")]).unwrap_err();
        assert_eq!(err.name, ENV_EXPORT_MAX_URL_LENGTH);
        let err = settings(&[(ENV_MAX_BATCH_MIB, "20")]).unwrap_err();
        assert_eq!(err.name, ENV_BATCH_BUDGET_MIB);
        assert!(err.to_string().contains("twice"), "{err}");
        assert!(settings(&[(ENV_MAX_BATCH_MIB, "16")]).is_ok());
    }

    #[test]
    fn storage_account_requires_a_valid_name_without_connection_string() {
        let map: HashMap<&str, &str> = HashMap::from([
            (ENV_FHIR_URL, "https://fhir.example.org"),
            (ENV_STORAGE_ACCOUNT, "My_Account"),
        ]);
        let err = Settings::from_source(&map).unwrap_err();
        assert_eq!(err.name, ENV_STORAGE_ACCOUNT);
        let map: HashMap<&str, &str> = HashMap::from([
            (ENV_FHIR_URL, "https://fhir.example.org"),
            (ENV_STORAGE_ACCOUNT, "bulkstore01"),
        ]);
        let s = Settings::from_source(&map).unwrap();
        assert_eq!(
            s.storage.endpoint("table").as_str(),
            "https://bulkstore01.table.core.windows.net/"
        );
    }

    #[test]
    fn an_unresolved_key_vault_reference_is_refused_with_what_to_do() {
        let reference = "@Microsoft.KeyVault(VaultName=fb-kv-abc;SecretName=fhir-client-secret)";
        let src = HashMap::from([
            (ENV_STORAGE_CONNECTION_STRING, AZURITE_CONNECTION_STRING),
            (ENV_FHIR_URL, "https://fhir.example.com"),
            (ENV_FHIR_AUTH, "client-secret"),
            (ENV_FHIR_TENANT_ID, "tenant"),
            (ENV_FHIR_CLIENT_ID, "client"),
            (ENV_FHIR_CLIENT_SECRET, reference),
        ]);
        let err = Settings::from_source(&src).unwrap_err();
        assert_eq!(err.name, ENV_FHIR_CLIENT_SECRET);
        let said = err.to_string();
        assert!(
            said.contains("did not resolve this Key Vault reference"),
            "{said}"
        );
        assert!(
            !said.contains("fhir-client-secret"),
            "the reference is not echoed: {said}"
        );
        // Any setting, not only the secret.
        let src = HashMap::from([
            (ENV_STORAGE_CONNECTION_STRING, AZURITE_CONNECTION_STRING),
            (ENV_FHIR_URL, reference),
        ]);
        assert_eq!(Settings::from_source(&src).unwrap_err().name, ENV_FHIR_URL);
    }
}
