//! Azure Storage: blobs and queues through the official SDK 1.x crates, tables through a small
//! REST client, all authorised by managed identity in Azure or shared key on Azurite.

pub mod blob;
pub mod credentials;
pub mod queue;
pub mod reports;
pub mod shared_key;
pub mod table;
mod table_transaction;

pub use blob::{BlobBody, BlobEntry, BlobStore, BlobVersion, MoveOutcome, block_id};
pub use credentials::StorageCredentials;
pub use queue::{ReceivedWork, WorkQueue};
pub use table::{Entity, QueryPages, TableClient, odata_string};
pub use table_transaction::{TransactionOp, TransactionOutcome};

pub type StorageResult<T> = Result<T, StorageError>;

/// A storage operation that failed, with what was being done and to which container/blob.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{operation} {target}: {source}")]
    Sdk {
        operation: &'static str,
        target: String,
        status: Option<u16>,
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
        StorageError::Sdk {
            operation,
            target: target.to_string(),
            status: source.http_status().map(u16::from),
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
