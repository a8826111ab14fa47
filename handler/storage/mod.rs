//! Azure Storage: blobs and queues through the official SDK 1.x crates, tables through a small
//! REST client, all authorised by managed identity in Azure or shared key on Azurite.

pub mod blob;
pub mod credentials;
pub mod lines;
pub mod queue;
pub mod reports;
pub mod row;
pub mod shared_key;
pub mod stream;
pub mod table;
mod table_transaction;

pub use blob::{BlobBody, BlobEntry, BlobStore, BlobVersion, MoveOutcome, block_id};
pub use credentials::StorageCredentials;
pub use queue::{ReceivedWork, WorkQueue};
pub use row::{Row, TableRow};
pub use table::{Entity, QueryPages, TableClient, odata_string};
pub use table_transaction::{TransactionOp, TransactionOutcome};

pub type StorageResult<T> = Result<T, StorageError>;

/// How a blob is named in logs and storage errors: its container and a 12-hex-digit hash of
/// its name. Blob names are often patient names (`Jane_Doe_<uuid>.json`); the full name is
/// logged at DEBUG only.
pub fn blob_log_name(container: &str, blob: &str) -> String {
    format!(
        "{container}/#{}",
        short_hash(&format!("{container}/{blob}"))
    )
}

/// 12 hex digits of the SHA-256 of `text`: a stable short name for logs and ids.
pub fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A storage operation that failed, with what was being done and to which container/blob.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Said as the service's status and error code, never its raw XML body.
    #[error("{operation} {target}: {summary}")]
    Sdk {
        operation: &'static str,
        target: String,
        status: Option<u16>,
        summary: String,
        #[source]
        source: Box<azure_core::Error>,
    },
    #[error("{operation} {target}: HTTP {status}: {body}")]
    Http {
        operation: &'static str,
        target: String,
        status: u16,
        body: String,
    },
    #[error("{operation} {target}: {source}")]
    Transport {
        operation: &'static str,
        target: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{operation} {target}: {source}")]
    Io {
        operation: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{operation} {target}: {reason}")]
    Invalid {
        operation: &'static str,
        target: String,
        reason: String,
    },
}

impl StorageError {
    pub fn sdk(operation: &'static str, target: &str, source: azure_core::Error) -> Self {
        let summary = match source.kind() {
            azure_core::error::ErrorKind::HttpResponse {
                status, error_code, ..
            } => format!(
                "HTTP {} {}",
                u16::from(*status),
                error_code.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_string(),
            _ => source.to_string(),
        };
        StorageError::Sdk {
            operation,
            target: target.to_string(),
            status: source.http_status().map(u16::from),
            summary,
            source: Box::new(source),
        }
    }

    /// The HTTP status the service answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            StorageError::Sdk { status, .. } => *status,
            StorageError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// An optimistic-concurrency conflict (ETag mismatch or row already present).
    pub fn is_conflict(&self) -> bool {
        matches!(self.status(), Some(409) | Some(412))
    }
}
