//! `handler serve`: the functions without the Functions host. HTTP routes are served directly,
//! a blob watcher stands in for Event Grid and queue pollers for the queue triggers (import and
//! export). SIGTERM or
//! Ctrl-C stops taking work and lets work in flight finish (up to a drain timeout); anything
//! unfinished is redelivered from the queue later, from its checkpoint.

pub mod poller;
pub mod watcher;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::build_state;
use crate::config::Settings;
use crate::functions::{AppState, export_worker, import_worker, public_router, reconcile};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until told to stop. It listens only once its storage is set up: an open port means
/// ready (scripts and tests wait for it).
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let state = build_state(&settings).await?;
    let address = std::net::SocketAddr::new(settings.http.listen, settings.serve.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    if settings.http.api_keys.is_empty() {
        warn!(
            message = "No FHIRBULK_API_KEYS: every route is open to any process on this machine."
        );
    }
    info!(message = "Serving.", address = %listener.local_addr()?, workers = settings.serve.workers);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(watcher::watch(
        state.clone(),
        settings.serve.watch_interval,
        shutdown.clone(),
    ));
    tasks.spawn(sweep(
        state.clone(),
        settings.serve.sweep_interval,
        shutdown.clone(),
    ));
    let (imports, exports) = queue_work(&state);
    for _ in 0..settings.serve.workers {
        tasks.spawn(poller::poll(imports.clone(), shutdown.clone()));
        tasks.spawn(poller::poll(exports.clone(), shutdown.clone()));
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!(message = "Shutting down: no new work; finishing work in flight.");
        stop.cancel();
    });
    let http_stop = shutdown.clone();
    axum::serve(listener, public_router(state))
        .with_graceful_shutdown(async move { http_stop.cancelled().await })
        .await?;
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!(message = "Drain timeout reached; unfinished work is handed back to the queue.");
        tasks.shutdown().await;
    }
    // Messages taken but not finished (or not started) go back at once, from their checkpoints.
    imports.inbox.release_all(&imports).await;
    exports.inbox.release_all(&exports).await;
    Ok(())
}

/// The two work queues and their handlers, as the queue triggers would run them.
fn queue_work(state: &AppState) -> (poller::QueueWork, poller::QueueWork) {
    let importer = state.importer.clone();
    let imports = poller::QueueWork {
        name: "import",
        queue: importer.queue.clone(),
        visibility: importer.settings.work.visibility,
        inbox: Arc::default(),
        // Import parts count their own retries (`ImportWork::retry`), not deliveries.
        handle: Arc::new(move |payload, _deliveries| {
            let importer = importer.clone();
            Box::pin(async move { import_worker::handle_message(&importer, payload).await })
        }),
    };
    let exporter = state.exporter.clone();
    let exports = poller::QueueWork {
        name: "export",
        queue: exporter.queue.clone(),
        visibility: exporter.settings.work.visibility,
        inbox: Arc::default(),
        handle: Arc::new(move |payload, attempt| {
            let exporter = exporter.clone();
            Box::pin(
                async move { export_worker::handle_message(&exporter, payload, attempt).await },
            )
        }),
    };
    (imports, exports)
}

/// The reconciliation sweep every `interval` (the `Reconcile` function's timer, under the host).
async fn sweep(state: AppState, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(why) = reconcile::sweep(&state.importer, &state.exporter).await {
            warn!(message = "Reconciliation sweep failed; it runs again later.", reason = %why);
        }
    }
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
