//! The version fence: the work of one uploaded version of a file writes to the FHIR server
//! only while that version is still the blob in its container. Before each batch (and each
//! piece of a Bundle) the blob's ETag is checked; once the blob was replaced by a newer upload
//! (which has its own import) or deleted, the old version's work stops before its next write,
//! so an old version never overwrites a newer one's resources.
//!
//! A check started less than `LEASE` before a batch asked serves it too, and checks asked for
//! while one is under way share it, so a fast load costs a few requests a second, not one per
//! batch (one per batch cost Azurite a quarter of an NDJSON load's speed into the null sink).
//! A read of the file made for this version only (`If-Match`, see [`VersionFence::seen`])
//! is such a check too: a small file read and sent at once costs no request of its own.
//! The lease is far shorter than the time a newer upload takes to reach its first write (its
//! event, registration, claim, read and planning), so the old version still stops first. A
//! failed check is final.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a passed check serves batches asking after it started.
const LEASE: Duration = Duration::from_millis(250);

use super::work::ImportError;
use crate::storage::BlobStore;
use crate::storage::stream::VersionSeen;

/// Why a version's work stops once a newer upload took the blob's name.
pub const REPLACED: &str = "the file was replaced by a newer upload while it loaded; that upload is loaded on its own, and this one stopped before writing anything more";

pub struct VersionFence {
    blobs: BlobStore,
    container: String,
    blob: String,
    /// The version being loaded, without quotes.
    etag: String,
    /// The last check: when it started, and what it found.
    last: Mutex<Option<(Instant, Result<(), ImportError>)>>,
    /// Reads of this version answered, which pass as checks.
    seen: VersionSeen,
}

impl VersionFence {
    pub fn new(blobs: BlobStore, container: &str, blob: &str, etag: &str) -> Self {
        VersionFence {
            blobs,
            container: container.to_string(),
            blob: blob.to_string(),
            etag: etag.trim_matches('"').to_string(),
            last: Mutex::new(None),
            seen: VersionSeen::default(),
        }
    }

    /// The record reads of this version (`BlobChunks::of_version`) keep, so that each answer
    /// serves as a passed check.
    pub fn seen(&self) -> VersionSeen {
        self.seen.clone()
    }

    /// `Ok` while the version is the current blob; `Replaced` or `Gone` once it is not; a
    /// storage error is `Transient` (the work is tried again).
    pub async fn check(&self) -> Result<(), ImportError> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = last.as_ref()
            && (*at + LEASE >= asked
                || matches!(
                    verdict,
                    Err(ImportError::Replaced(_) | ImportError::Gone(_))
                ))
        {
            return verdict.clone();
        }
        if last.as_ref().is_none_or(|(_, verdict)| verdict.is_ok())
            && self.seen.last().is_some_and(|read| read + LEASE >= asked)
        {
            return Ok(());
        }
        let at = Instant::now();
        let verdict = match self.blobs.properties(&self.container, &self.blob).await {
            Ok(Some(now)) if now.etag.trim_matches('"') == self.etag => Ok(()),
            Ok(Some(_)) => Err(ImportError::Replaced(REPLACED.into())),
            Ok(None) => Err(ImportError::Gone(
                "the file was deleted while it loaded; what was read before was loaded, the rest was not".into(),
            )),
            Err(e) => Err(e.into()),
        };
        *last = Some((at, verdict.clone()));
        verdict
    }
}
