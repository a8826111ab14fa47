//! Queue pollers of `serve` mode, standing in for the queue trigger: take a message, keep it
//! hidden while its work runs, delete it when done, or make it visible again after a backoff
//! when the work must be retried.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::functions::import_worker::{WorkOutcome, handle_message};
use crate::import::Importer;
use crate::protocol::event_grid::peel;
use crate::storage::ReceivedWork;

pub async fn poll(importer: Arc<Importer>, shutdown: CancellationToken) {
    let visibility = importer.settings.work_visibility;
    let mut idle = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let message = match importer.queue.receive(1, visibility).await {
            Ok(mut m) if !m.is_empty() => m.remove(0),
            Ok(_) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(idle) => {}
                }
                idle = (idle * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(e) => {
                warn!(message = "Cannot read the import queue.", error = %e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        idle = Duration::from_millis(100);
        let current = Arc::new(Mutex::new(message.clone()));
        let keepalive = tokio::spawn(keep_hidden(importer.clone(), current.clone(), visibility));
        let payload = peel(serde_json::Value::String(message.text.clone()));
        // A panic in one work item must not take the poller with it: it counts as a failed try.
        let work = tokio::spawn({
            let importer = importer.clone();
            let attempt = message.dequeue_count;
            async move { handle_message(&importer, payload, attempt).await }
        });
        let outcome = work.await.unwrap_or_else(|e| {
            warn!(message = "Import work panicked; it will be retried.", error = %e);
            WorkOutcome::Retry("the work panicked".into())
        });
        keepalive.abort();
        let held = current.lock().await.clone();
        let settled = match outcome {
            WorkOutcome::Done => importer.queue.delete(&held).await,
            WorkOutcome::Invalid(why) => {
                warn!(message = "Invalid import queue message dropped.", reason = %why);
                importer.queue.delete(&held).await
            }
            WorkOutcome::Retry(_) => {
                let delay = retry_delay(held.dequeue_count);
                importer.queue.extend(&held, delay).await.map(|_| ())
            }
        };
        if let Err(e) = settled {
            warn!(message = "Cannot settle an import queue message; it will be delivered again.", error = %e);
        }
    }
}

/// Renews the message's invisibility at half its timeout while the work runs.
async fn keep_hidden(
    importer: Arc<Importer>,
    current: Arc<Mutex<ReceivedWork>>,
    visibility: Duration,
) {
    loop {
        tokio::time::sleep(visibility / 2).await;
        let mut held = current.lock().await;
        match importer.queue.extend(&held, visibility).await {
            Ok(receipt) => held.pop_receipt = receipt,
            Err(e) => warn!(message = "Cannot extend an import message's visibility.", error = %e),
        }
    }
}

/// 5 s, 10 s, 20 s ... up to 5 minutes: the queue-level backoff between deliveries.
fn retry_delay(dequeue_count: u32) -> Duration {
    Duration::from_secs(
        5u64.saturating_mul(1 << dequeue_count.saturating_sub(1).min(6))
            .min(300),
    )
}
