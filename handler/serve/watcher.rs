//! The blob watcher of `serve` mode: Azurite has no Event Grid, so new blobs in the input
//! containers are found by listing, and handled exactly as a BlobCreated event would be: import
//! files registered (small ones loaded then), query definitions in the export trigger
//! container started.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::export::trigger::start_from_blob;
use crate::functions::AppState;
use crate::import::Registration;

/// New blobs registered concurrently by one listing pass.
const REGISTRATIONS_AT_ONCE: usize = 8;

pub async fn watch(state: AppState, interval: Duration, shutdown: CancellationToken) {
    let importer = state.importer.clone();
    let trigger = state.exporter.settings.trigger_container.clone();
    // (container, blob, etag) already registered: listing again costs nothing more.
    let mut seen: HashSet<(String, String, String)> = HashSet::new();
    loop {
        let mut present = HashSet::new();
        let containers = importer.settings.input_containers().map(str::to_string);
        for container in containers.iter().chain(std::iter::once(&trigger)) {
            let container = container.as_str();
            let blobs = match importer.blobs.list(container, None).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(message = "Blob watcher cannot list a container.", container, error = %e);
                    continue;
                }
            };
            let mut new_blobs = Vec::new();
            for blob in blobs {
                let key = (container.to_string(), blob.name.clone(), blob.etag.clone());
                present.insert(key.clone());
                if !seen.contains(&key) {
                    new_blobs.push((key, blob));
                }
            }
            if container == trigger {
                for (key, blob) in new_blobs {
                    match start_from_blob(&state.exporter, container, &blob.name).await {
                        Ok(outcome) => {
                            debug!(message = "Export trigger handled.", outcome = %outcome);
                            seen.insert(key);
                        }
                        Err(e) => {
                            warn!(message = "Cannot start an export from a trigger file yet; will retry.", blob = %crate::storage::blob_log_name(container, &blob.name), error = %e)
                        }
                    }
                }
                continue;
            }
            // Several at a time, as Event Grid delivers a burst of uploads to several instances.
            let registered = futures::stream::iter(new_blobs)
                .map(|(key, blob)| {
                    let importer = &importer;
                    async move {
                        let outcome = importer
                            .register(container, &blob.name, blob.version())
                            .await;
                        (key, blob.name, outcome)
                    }
                })
                .buffer_unordered(REGISTRATIONS_AT_ONCE)
                .collect::<Vec<_>>()
                .await;
            for (key, name, outcome) in registered {
                match outcome {
                    // Listed again next time: it takes the load over if that one died.
                    Ok(Registration::LoadingElsewhere { .. }) => {
                        debug!(message = "Blob being loaded on another delivery.", container, blob = %name);
                    }
                    Ok(outcome) => {
                        if let Registration::Queued { parts, .. } = outcome {
                            debug!(message = "New blob registered.", container, blob = %name, parts);
                        }
                        seen.insert(key);
                    }
                    Err(e) => {
                        warn!(message = "Cannot register a new blob; will retry.", blob = %crate::storage::blob_log_name(container, &name), error = %e)
                    }
                }
            }
        }
        seen.retain(|k| present.contains(k));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
