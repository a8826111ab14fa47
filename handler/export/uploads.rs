//! Blocks of a blob being uploaded in the background, a bounded number at once, so that reading
//! (search pages, staged output) goes on while earlier blocks travel. A blob's blocks are
//! committed only after `finish` has seen every upload succeed.

use bytes::Bytes;
use tokio::task::JoinSet;

use super::ExportError;
use crate::storage::{BlobStore, StorageError};

pub struct BlockUploads {
    running: JoinSet<Result<(), StorageError>>,
    in_flight: usize,
}

impl BlockUploads {
    pub fn new(in_flight: usize) -> Self {
        BlockUploads {
            running: JoinSet::new(),
            in_flight: in_flight.max(1),
        }
    }

    /// Starts uploading one block, first waiting while `in_flight` uploads are running.
    pub async fn stage(
        &mut self,
        blobs: &BlobStore,
        container: &str,
        name: &str,
        block: Vec<u8>,
        chunk: Bytes,
    ) -> Result<(), ExportError> {
        while self.running.len() >= self.in_flight {
            self.join_one().await?;
        }
        let (blobs, container, name) = (blobs.clone(), container.to_string(), name.to_string());
        self.running
            .spawn(async move { blobs.stage_block(&container, &name, &block, chunk).await });
        Ok(())
    }

    /// Waits for every upload started so far; the first failure is returned.
    pub async fn finish(&mut self) -> Result<(), ExportError> {
        while !self.running.is_empty() {
            self.join_one().await?;
        }
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), ExportError> {
        match self.running.join_next().await {
            Some(Ok(result)) => Ok(result?),
            Some(Err(e)) => Err(ExportError::transient(format!(
                "a block upload stopped: {e}"
            ))),
            None => Ok(()),
        }
    }
}
