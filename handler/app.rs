//! Building the running handler from its settings: storage clients, the FHIR client, the import
//! engine and the exporter, shared by the custom-handler mode and `serve`.

use std::sync::Arc;

use crate::config::Settings;
use crate::export::Exporter;
use crate::export::state::ExportStore;
use crate::fhir::FhirClient;
use crate::functions::AppState;
use crate::import::Importer;
use crate::import::state::ImportStore;
use crate::storage::{BlobStore, StorageCredentials, TableClient, WorkQueue};

pub async fn build_state(settings: &Settings) -> anyhow::Result<AppState> {
    let credentials = StorageCredentials::new(&settings.storage)?;
    let blobs = BlobStore::new(&credentials)?;
    let tables = TableClient::new(&credentials, reqwest::Client::new())?;
    let fhir = Arc::new(FhirClient::new(&settings.fhir)?);
    let importer = Importer::new(
        settings.import.clone(),
        blobs.clone(),
        WorkQueue::new(&credentials, &settings.import.queue)?,
        ImportStore::new(tables.clone(), &settings.import.table),
        fhir.clone(),
    );
    importer.ensure_resources().await.map_err(|e| {
        anyhow::anyhow!("cannot prepare storage for import (containers, queue, tables): {e}")
    })?;
    let exporter = Exporter::new(
        settings.export.clone(),
        blobs,
        WorkQueue::new(&credentials, &settings.export.queue)?,
        ExportStore::new(tables, &settings.export.table),
        fhir,
    );
    exporter.ensure_resources().await.map_err(|e| {
        anyhow::anyhow!("cannot prepare storage for export (containers, queue, table): {e}")
    })?;
    Ok(AppState {
        importer: Arc::new(importer),
        exporter: Arc::new(exporter),
        http: Arc::new(settings.http.clone()),
    })
}
