//! Building the running handler from its settings: storage clients, the FHIR client and the
//! import engine, shared by the custom-handler mode and `serve`.

use std::sync::Arc;

use crate::config::Settings;
use crate::fhir::FhirClient;
use crate::functions::AppState;
use crate::import::Importer;
use crate::import::ledger::Ledger;
use crate::storage::{BlobStore, StorageCredentials, TableClient, WorkQueue};

pub async fn build_state(settings: &Settings) -> anyhow::Result<AppState> {
    let credentials = StorageCredentials::new(&settings.storage)?;
    let blobs = BlobStore::new(&credentials)?;
    let queue = WorkQueue::new(&credentials, &settings.import.queue)?;
    let tables = TableClient::new(&credentials, reqwest::Client::new())?;
    let ledger = Ledger::new(tables, &settings.import.table);
    let fhir = Arc::new(FhirClient::new(&settings.fhir)?);
    let importer = Importer::new(settings.import.clone(), blobs, queue, ledger, fhir);
    importer
        .ensure_resources()
        .await
        .map_err(|e| anyhow::anyhow!("cannot prepare storage (containers, queue, tables): {e}"))?;
    Ok(AppState {
        importer: Arc::new(importer),
    })
}
