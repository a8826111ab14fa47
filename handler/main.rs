//! The `handler` binary.
//!
//! - `handler` / `handler host`: Azure Functions custom handler; listens on
//!   `127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT` for the host's invocations.
//! - `handler serve`: the same functions standalone, with a blob watcher and queue pollers.
//! - `handler upload CONTAINER PATH [BLOB]`: uploads a file, or a directory's files, through the Blob API.
//! - `handler summary [--expect N] [--wait SECS]`: waits for imports, prints what landed.
//!
//! Logs: JSON lines under the host, text otherwise (`telemetry`).

use std::path::Path;
use std::time::Duration;

use fhir_bulk::config::Settings;
use fhir_bulk::storage::{BlobStore, StorageCredentials};
use fhir_bulk::telemetry::{self, LogFormat};
use fhir_bulk::{app, cli, functions, serve};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

const USAGE: &str = "usage: handler [host | serve | upload CONTAINER PATH [BLOB] | summary [--expect N] [--wait SECS]]
Settings come from FHIRBULK_* environment variables; see README.md.";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Under the Functions host, JSON lines for Application Insights; text for a terminal.
    let default = match args.first().map(String::as_str) {
        None | Some("host") => LogFormat::Json,
        Some(_) => LogFormat::Text,
    };
    match LogFormat::from_env(default) {
        Ok(format) => telemetry::init(format),
        Err(e) => {
            eprintln!("handler: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = run(&args).await {
        eprintln!("handler: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: &[String]) -> anyhow::Result<()> {
    let command = args.first().map(String::as_str).unwrap_or("host");
    if matches!(command, "-h" | "--help" | "help") {
        println!("{USAGE}");
        return Ok(());
    }
    let settings = Settings::from_env()?;
    match command {
        "host" => host(settings).await,
        "serve" => serve::run(settings).await,
        "upload" => {
            let (Some(container), Some(file)) = (args.get(1), args.get(2)) else {
                anyhow::bail!("{USAGE}");
            };
            let name = args.get(3).cloned().unwrap_or_else(|| {
                Path::new(file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            upload(&settings, container, Path::new(file), &name).await
        }
        "summary" => {
            let flag = |name: &str, default: u64| -> anyhow::Result<u64> {
                match args.iter().position(|a| a == name) {
                    Some(i) => args
                        .get(i + 1)
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| anyhow::anyhow!("{name} needs a number")),
                    None => Ok(default),
                }
            };
            let state = app::build_state(&settings).await?;
            let ok = cli::summary::run(
                &state,
                flag("--expect", 0)? as usize,
                Duration::from_secs(flag("--wait", 600)?),
            )
            .await?;
            if !ok {
                std::process::exit(2);
            }
            Ok(())
        }
        other => anyhow::bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// Custom-handler mode: bind first (the host waits at most 60 s for the port), then serve.
async fn host(settings: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", settings.serve.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{}: {e}", settings.serve.port))?;
    let state = app::build_state(&settings).await?;
    tracing::info!(
        message = "Custom handler ready.",
        port = settings.serve.port
    );
    axum::serve(listener, functions::host_router(state))
        .with_graceful_shutdown(serve::wait_for_signal())
        .await?;
    Ok(())
}

/// Uploads a file, or every file of a directory (names relative to it, 16 at a time).
async fn upload(
    settings: &Settings,
    container: &str,
    path: &Path,
    name: &str,
) -> anyhow::Result<()> {
    let blobs = BlobStore::new(&StorageCredentials::new(&settings.storage)?)?;
    blobs.ensure_container(container).await?;
    if !path.is_dir() {
        let bytes = upload_file(&blobs, container, path, name).await?;
        println!(
            "uploaded {} ({bytes} bytes) to {container}/{name}",
            path.display()
        );
        return Ok(());
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let count = files.len();
    let results: Vec<anyhow::Result<u64>> = futures::stream::iter(files)
        .map(|file| {
            let blobs = blobs.clone();
            let blob = file
                .strip_prefix(path)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('\\', "/");
            async move { upload_file(&blobs, container, &file, &blob).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut total = 0;
    for r in results {
        total += r?;
    }
    println!(
        "uploaded {count} files ({total} bytes) from {} to {container}",
        path.display()
    );
    Ok(())
}

/// Uploads one local file: in one request up to 4 MiB, else streamed as 4 MiB blocks.
async fn upload_file(
    blobs: &BlobStore,
    container: &str,
    file: &Path,
    name: &str,
) -> anyhow::Result<u64> {
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.display()))?;
    let size = f.metadata().await?.len();
    if size <= 4 * 1024 * 1024 {
        let mut content = Vec::with_capacity(size as usize);
        f.read_to_end(&mut content).await?;
        blobs
            .upload(container, name, bytes::Bytes::from(content))
            .await?;
        return Ok(size);
    }
    Ok(blobs
        .upload_blocks(container, name, async_stream_chunks(&mut f))
        .await?)
}

fn async_stream_chunks(
    f: &mut tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + '_ {
    futures::stream::unfold(f, |f| async move {
        let mut buf = vec![0u8; 4 * 1024 * 1024];
        let mut filled = 0;
        while filled < buf.len() {
            match f.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Some((Err(e), f)),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        Some((Ok(bytes::Bytes::from(buf)), f))
    })
}
