//! The blob watcher of `serve` mode: Azurite has no Event Grid, so new blobs in the input
//! containers are found by listing, and registered exactly as a BlobCreated event would be.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::import::{Importer, Registration};

pub async fn watch(importer: Arc<Importer>, interval: Duration, shutdown: CancellationToken) {
    // (container, blob, etag) already registered: listing again costs nothing more.
    let mut seen: HashSet<(String, String, String)> = HashSet::new();
    loop {
        let mut present = HashSet::new();
        for container in importer.settings.input_containers() {
            let blobs = match importer.blobs.list(container, None).await {
                Ok(b) => b,
                Err(e) => {
                    warn!(message = "Blob watcher cannot list a container.", container, error = %e);
                    continue;
                }
            };
            for blob in blobs {
                let key = (container.to_string(), blob.name.clone(), blob.etag.clone());
                present.insert(key.clone());
                if seen.contains(&key) {
                    continue;
                }
                match importer.register(container, &blob.name).await {
                    Ok(outcome) => {
                        if let Registration::Queued { parts, .. } = outcome {
                            debug!(message = "New blob registered.", container, blob = %blob.name, parts);
                        }
                        seen.insert(key);
                    }
                    Err(e) => {
                        warn!(message = "Cannot register a new blob; will retry.", container, blob = %blob.name, error = %e)
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
