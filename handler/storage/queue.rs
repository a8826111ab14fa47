//! A Storage Queue of work items through the official `azure_storage_queue` 1.x client.
//! Messages are plain JSON text (host.json sets `messageEncoding: none` for the queue trigger).

use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, StatusCode};
use azure_storage_queue::models::{
    QueueClientGetPropertiesResultHeaders, QueueClientReceiveMessagesOptions,
    QueueClientSendMessageOptions, QueueMessage,
};
use azure_storage_queue::{QueueClient, QueueClientOptions};

use super::{StorageError, StorageResult, credentials::StorageCredentials};

/// Azurite 3.35 accepts service versions up to this one.
const AZURITE_SERVICE_VERSION: &str = "2025-11-05";

/// A message taken from the queue, invisible to others until its visibility timeout ends.
#[derive(Clone, Debug)]
pub struct ReceivedWork {
    pub id: String,
    pub pop_receipt: String,
    pub text: String,
    pub dequeue_count: u32,
}

#[derive(Clone)]
pub struct WorkQueue {
    client: Arc<QueueClient>,
    name: String,
    /// Wakes one idle poller of this process for each message it sends, so it looks at once.
    sent: Arc<tokio::sync::Notify>,
}

impl WorkQueue {
    pub fn new(credentials: &StorageCredentials, name: &str) -> StorageResult<Self> {
        let mut client_options = ClientOptions::default();
        let mut options = QueueClientOptions::default();
        if let Some(policy) = credentials.signing_policy() {
            client_options.per_try_policies.push(policy);
            options.version = AZURITE_SERVICE_VERSION.to_string();
        }
        options.client_options = client_options;
        let mut url = credentials.endpoint("queue");
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{name}"));
        let client = QueueClient::new(url, credentials.token_credential(), Some(options))
            .map_err(|e| StorageError::sdk("create queue client", name, e))?;
        Ok(WorkQueue {
            client: Arc::new(client),
            name: name.to_string(),
            sent: Arc::new(tokio::sync::Notify::new()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Completes when this process sends an immediately visible message (one waiter per
    /// message).
    pub async fn message_sent(&self) {
        self.sent.notified().await
    }

    pub async fn ensure(&self) -> StorageResult<()> {
        match self.client.create(None).await {
            Ok(_) => Ok(()),
            Err(e) if e.http_status() == Some(StatusCode::Conflict) => Ok(()),
            Err(e) => Err(StorageError::sdk("create queue", &self.name, e)),
        }
    }

    /// Enqueues `text`, visible after `delay`.
    pub async fn send(&self, text: &str, delay: Duration) -> StorageResult<()> {
        let message = QueueMessage {
            message_text: Some(text.to_string()),
        };
        let options = QueueClientSendMessageOptions {
            visibility_timeout: Some(delay.as_secs() as i32),
            message_time_to_live: Some(-1),
            ..Default::default()
        };
        let content = message
            .try_into()
            .map_err(|e| StorageError::sdk("encode queue message", &self.name, e))?;
        self.client
            .send_message(content, Some(options))
            .await
            .map_err(|e| StorageError::sdk("send queue message", &self.name, e))?;
        if delay.is_zero() {
            // One message wants one poller: waking every idle one cost an empty receive each
            // (about 2.6 storage operations per small file). With none waiting, the next to
            // wait finds the permit.
            self.sent.notify_one();
        }
        Ok(())
    }

    /// The service's approximate count of messages on the queue, hidden ones included.
    pub async fn approximate_count(&self) -> StorageResult<u64> {
        let response = self
            .client
            .get_properties(None)
            .await
            .map_err(|e| StorageError::sdk("read queue properties", &self.name, e))?;
        let count = response
            .approximate_messages_count()
            .map_err(|e| StorageError::sdk("read queue properties", &self.name, e))?;
        Ok(count.unwrap_or(0).max(0) as u64)
    }

    /// Takes up to `max` messages, hiding them for `visibility`.
    pub async fn receive(
        &self,
        max: u32,
        visibility: Duration,
    ) -> StorageResult<Vec<ReceivedWork>> {
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max.clamp(1, 32) as i32),
            visibility_timeout: Some(visibility.as_secs() as i32),
            ..Default::default()
        };
        let received = self
            .client
            .receive_messages(Some(options))
            .await
            .map_err(|e| StorageError::sdk("receive queue messages", &self.name, e))?
            .into_model()
            .map_err(|e| StorageError::sdk("read queue messages", &self.name, e))?;
        Ok(received
            .items
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                Some(ReceivedWork {
                    id: m.message_id?,
                    pop_receipt: m.pop_receipt?,
                    text: m.message_text.unwrap_or_default(),
                    dequeue_count: m.dequeue_count.unwrap_or(1) as u32,
                })
            })
            .collect())
    }

    pub async fn delete(&self, work: &ReceivedWork) -> StorageResult<()> {
        match self
            .client
            .delete_message(&work.id, &work.pop_receipt, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.http_status() == Some(StatusCode::NotFound) => Ok(()),
            Err(e) => Err(StorageError::sdk("delete queue message", &self.name, e)),
        }
    }

    /// Keeps a message hidden for another `visibility` while its work goes on; returns the
    /// new pop receipt that later calls must use.
    pub async fn extend(&self, work: &ReceivedWork, visibility: Duration) -> StorageResult<String> {
        let resp = self
            .client
            .update_message(
                &work.id,
                &work.pop_receipt,
                visibility.as_secs() as i32,
                None,
            )
            .await
            .map_err(|e| StorageError::sdk("extend queue message", &self.name, e))?;
        Ok(resp
            .headers()
            .get_optional_string(&azure_core::http::headers::HeaderName::from_static(
                "x-ms-popreceipt",
            ))
            .unwrap_or_else(|| work.pop_receipt.clone()))
    }
}
