//! Queue pollers of `serve` mode, standing in for the queue triggers: take a message, keep it
//! hidden while its work runs, delete it when done, or make it visible again after a backoff
//! when the work must be retried. Several pollers serve each queue (import or export), sharing
//! one `Inbox`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::functions::WorkOutcome;
use crate::protocol::event_grid::peel;
use crate::storage::{ReceivedWork, WorkQueue};

/// Runs one message's work: (payload, dequeue count) → outcome.
pub type Handle =
    Arc<dyn Fn(Value, u32) -> Pin<Box<dyn Future<Output = WorkOutcome> + Send>> + Send + Sync>;

/// A queue and what to do with its messages.
#[derive(Clone)]
pub struct QueueWork {
    pub name: &'static str,
    pub queue: WorkQueue,
    pub visibility: Duration,
    pub handle: Handle,
    /// Shared by every poller of this queue in this process.
    pub inbox: Arc<Inbox>,
}

/// The messages of one queue shared by this process's pollers. One idle poller at a time
/// receives, as many messages as there are idle pollers (so none waits in the buffer while its
/// visibility runs out), and hands the others over; the rest of the idle pollers wait their
/// turn instead of each polling an empty queue.
#[derive(Default)]
pub struct Inbox {
    idle: AtomicUsize,
    received: std::sync::Mutex<Vec<ReceivedWork>>,
    receiving: Mutex<()>,
    /// Messages whose work is running, by message id (handed back on a drain timeout).
    running: std::sync::Mutex<HashMap<String, Arc<Mutex<ReceivedWork>>>>,
}

impl Inbox {
    /// Hands every message this process holds (running or waiting in the inbox) back to the
    /// queue at once (visibility 0), for another instance: called when the drain times out,
    /// after the work was stopped, instead of leaving them hidden for the visibility timeout.
    pub async fn release_all(&self, work: &QueueWork) {
        let mut held: Vec<ReceivedWork> =
            std::mem::take(&mut *self.received.lock().expect("inbox lock"));
        let running: Vec<_> = self
            .running
            .lock()
            .expect("inbox lock")
            .drain()
            .map(|(_, m)| m)
            .collect();
        for message in running {
            held.push(message.lock().await.clone());
        }
        for message in held {
            if let Err(e) = work.queue.extend(&message, Duration::ZERO).await {
                warn!(message = "Cannot hand a message back; it returns after its visibility timeout.", queue = work.name, error = %e);
            }
        }
    }
}

impl Inbox {
    fn take(&self) -> Option<ReceivedWork> {
        self.received.lock().expect("inbox lock").pop()
    }

    /// The next message for this poller; `None` on shutdown.
    async fn next(&self, work: &QueueWork, shutdown: &CancellationToken) -> Option<ReceivedWork> {
        if let Some(m) = self.take() {
            return Some(m);
        }
        let _turn = tokio::select! {
            _ = shutdown.cancelled() => return None,
            turn = self.receiving.lock() => turn,
        };
        let mut idle = Duration::from_millis(100);
        loop {
            // Another poller's receive may have left one here while this one waited its turn.
            if let Some(m) = self.take() {
                return Some(m);
            }
            let wanted = self.idle.load(Ordering::Relaxed).clamp(1, 32) as u32;
            match work.queue.receive(wanted, work.visibility).await {
                Ok(mut messages) if !messages.is_empty() => {
                    let mine = messages.pop().expect("not empty");
                    self.received.lock().expect("inbox lock").extend(messages);
                    return Some(mine);
                }
                Ok(_) => {
                    // Another process's messages are found by polling (backing off to 1 s);
                    // this process's own are looked for as soon as they are sent.
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(idle) => {}
                        _ = work.queue.message_sent() => idle = Duration::from_millis(50),
                    }
                    idle = (idle * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    warn!(message = "Cannot read a work queue.", queue = work.name, error = %e);
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

pub async fn poll(work: QueueWork, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        work.inbox.idle.fetch_add(1, Ordering::Relaxed);
        let message = work.inbox.next(&work, &shutdown).await;
        work.inbox.idle.fetch_sub(1, Ordering::Relaxed);
        let Some(message) = message else {
            return;
        };
        let current = Arc::new(Mutex::new(message.clone()));
        work.inbox
            .running
            .lock()
            .expect("inbox lock")
            .insert(message.id.clone(), current.clone());
        let keepalive = tokio::spawn(keep_hidden(work.clone(), current.clone()));
        let payload = peel(Value::String(message.text.clone()));
        // A panic in one work item must not take the poller with it: it counts as a failed try.
        let running = tokio::spawn((work.handle)(payload, message.dequeue_count));
        let outcome = running.await.unwrap_or_else(|e| {
            warn!(message = "Queued work panicked; it will be retried.", queue = work.name, error = %e);
            WorkOutcome::Retry("the work panicked".into())
        });
        keepalive.abort();
        work.inbox
            .running
            .lock()
            .expect("inbox lock")
            .remove(&message.id);
        let held = current.lock().await.clone();
        let settled = match outcome {
            WorkOutcome::Done => work.queue.delete(&held).await,
            WorkOutcome::Invalid(why) => {
                warn!(message = "Invalid queue message dropped.", queue = work.name, reason = %why);
                work.queue.delete(&held).await
            }
            WorkOutcome::Retry(_) => {
                let delay = retry_delay(held.dequeue_count);
                work.queue.extend(&held, delay).await.map(|_| ())
            }
        };
        if let Err(e) = settled {
            warn!(message = "Cannot settle a queue message; it will be delivered again.", queue = work.name, error = %e);
        }
    }
}

/// Renews the message's invisibility at half its timeout while the work runs.
async fn keep_hidden(work: QueueWork, current: Arc<Mutex<ReceivedWork>>) {
    loop {
        tokio::time::sleep(work.visibility / 2).await;
        let mut held = current.lock().await;
        match work.queue.extend(&held, work.visibility).await {
            Ok(receipt) => held.pop_receipt = receipt,
            Err(e) => {
                warn!(message = "Cannot extend a message's visibility.", queue = work.name, error = %e)
            }
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
