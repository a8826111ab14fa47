//! The work items on the import queue and the ways processing one can end.

use serde::{Deserialize, Serialize};

use crate::fhir::FhirError;
use crate::storage::StorageError;
use crate::storage::row::is_zero;

/// How a file is read, decided from its container and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    Bundle,
    Ndjson,
    NdjsonGz,
    Zip,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Bundle => "bundle",
            FileKind::Ndjson => "ndjson",
            FileKind::NdjsonGz => "ndjson-gz",
            FileKind::Zip => "zip",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            FileKind::Bundle,
            FileKind::Ndjson,
            FileKind::NdjsonGz,
            FileKind::Zip,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One queued unit of import work: a whole file, or one byte range of an NDJSON file.
/// Everything needed to do it is in the message; progress is in the part row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportWork {
    /// Partition key of the file version in the imports table.
    pub file: String,
    pub container: String,
    pub blob: String,
    pub etag: String,
    pub kind: FileKind,
    pub part: u32,
    /// Byte range `[start, end)` whose lines this part owns (NDJSON ranges); whole file otherwise.
    pub start: u64,
    pub end: u64,
    /// The file's size when it was registered (0 in messages queued before it was recorded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Deliveries in a row that failed without moving the checkpoint (0 on the first): the
    /// delay before the next one grows with it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry: u32,
}

/// The short id of an import (a file version's partition key in the imports table): 12 hex digits of its SHA-256.
pub fn import_id(file_key: &str) -> String {
    crate::storage::short_hash(file_key)
}

impl ImportWork {
    /// A short, stable name of the file version for logs: blob names are often patient names
    /// (`Jane_Doe_<uuid>.json`), so they are logged only at DEBUG.
    pub fn file_id(&self) -> String {
        import_id(&self.file)
    }

    /// Whether the work is the whole file (a Bundle, a gzip or zip file, an NDJSON file of one
    /// range): its part row is then the file's only one. An NDJSON item queued before items
    /// carried the file's size counts as one range of several.
    pub fn is_whole_file(&self) -> bool {
        self.kind != FileKind::Ndjson || (self.size > 0 && self.start == 0 && self.end >= self.size)
    }

    /// The wait before delivery `retry` of a failing part: 5 s, 10 s, 20 s … up to 5 minutes.
    pub fn retry_delay(retry: u32) -> std::time::Duration {
        let secs = 5u64 << retry.saturating_sub(1).min(6);
        std::time::Duration::from_secs(secs.min(300))
    }
}

/// Why a work item stopped before its part was done (the policy: `crate::error`).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be loaded at all (not JSON, not a Bundle, a refused zip): recorded, final.
    #[error("{0}")]
    Rejected(String),
    /// The file was deleted or replaced after it was registered (a read's 404): recorded,
    /// final, and for the whole file (a zip's remaining entries are not refused one by one).
    #[error("{0}")]
    Gone(String),
    /// A newer upload replaced the file while it loaded: this version's work stops (its
    /// import ends `superseded`); the newer one has its own.
    #[error("{0}")]
    Replaced(String),
    /// Another delivery of the same work item owns the part now; this one stops quietly.
    #[error("another worker is processing this part")]
    Superseded,
    /// Worth trying again later: the FHIR server or storage is unavailable or throttling.
    #[error("{0}")]
    Transient(Transient),
}

pub use crate::error::Transient;

impl ImportError {
    pub fn transient(reason: impl Into<String>) -> Self {
        ImportError::Transient(Transient::new(reason))
    }
}

impl From<StorageError> for ImportError {
    /// A 404 is final: the file (or its container) was deleted after it was registered.
    fn from(e: StorageError) -> Self {
        if e.status() == Some(404) {
            return gone(&e);
        }
        ImportError::Transient(Transient::caused_by(e.to_string(), e))
    }
}

fn gone(e: &dyn std::fmt::Display) -> ImportError {
    ImportError::Gone(format!(
        "{e} — the file was deleted or replaced after it was registered; upload it again to import it"
    ))
}

impl From<FhirError> for ImportError {
    /// Transient reasons are logged, so they carry no server diagnostics (see `summary`).
    fn from(e: FhirError) -> Self {
        ImportError::Transient(Transient::of_fhir(e))
    }
}

impl From<std::io::Error> for ImportError {
    /// Bytes that cannot be decoded (corrupt gzip or zip data, an entry larger than its limit)
    /// are a property of the file: final, as is a file no longer there (a read's 404).
    /// Anything else (storage unreachable) may pass.
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        if crate::storage::stream::is_version_changed(&e) {
            return ImportError::Replaced(super::fence::REPLACED.into());
        }
        match e.kind() {
            ErrorKind::NotFound => gone(&e),
            ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::UnexpectedEof => {
                ImportError::Rejected(format!("data cannot be read: {e}"))
            }
            _ => ImportError::Transient(Transient::caused_by(format!("reading the file: {e}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn undecodable_bytes_are_final_and_storage_failures_pass() {
        let corrupt: ImportError = Error::new(ErrorKind::InvalidData, "invalid gzip header").into();
        assert!(matches!(corrupt, ImportError::Rejected(r) if r.contains("gzip header")));
        let truncated: ImportError = Error::from(ErrorKind::UnexpectedEof).into();
        assert!(matches!(truncated, ImportError::Rejected(_)));
        let gone: ImportError = Error::new(ErrorKind::NotFound, "blob not found").into();
        assert!(matches!(gone, ImportError::Gone(r) if r.contains("deleted or replaced")));
        let unreachable: ImportError = Error::other("read blob range ndjson/a: timed out").into();
        assert!(matches!(unreachable, ImportError::Transient(_)));
    }
}
