//! `fhir-storage-costs AZURITE_PIDS [N]`: what each storage operation the importer uses costs the
//! storage emulator, in CPU milliseconds of the Azurite processes (a comma-separated list: blob,
//! queue and table run in processes of their own) per operation (N operations of
//! each kind, 4 at a time, through the project's own storage clients). For `scripts/bench.sh
//! storage-costs`: it shows what bounds files/hour on Azurite. Not part of the deployed package.
//! Reads `FHIRBULK_STORAGE_CONNECTION_STRING`.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fhir_bulk::config::parse_connection_string;
use fhir_bulk::storage::{
    BlobStore, Entity, StorageCredentials, TableClient, TransactionOp, WorkQueue,
};
use futures::StreamExt;

const AT_ONCE: usize = 4;

/// User + system CPU of the comma-separated processes `pids`, in milliseconds.
fn cpu_ms(pids: &str) -> f64 {
    pids.split(',').map(process_cpu_ms).sum()
}

/// User + system CPU of one process, in milliseconds.
fn process_cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("an Azurite PID");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks * 1000.0 / 100.0 // USER_HZ: 100 on Linux
}

async fn measure<F, Fut>(pid: &str, name: &str, n: usize, op: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let (cpu, wall) = (cpu_ms(pid), Instant::now());
    futures::stream::iter(0..n)
        .map(op)
        .buffer_unordered(AT_ONCE)
        .collect::<Vec<()>>()
        .await;
    println!(
        "{name:<34} {:>6.2} ms Azurite CPU per operation ({:.2} ms wall)",
        (cpu_ms(pid) - cpu) / n as f64,
        wall.elapsed().as_secs_f64() * 1000.0 / n as f64
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let pid = args
        .next()
        .expect("usage: fhir-storage-costs AZURITE_PIDS [N]");
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(400);
    let connection = std::env::var("FHIRBULK_STORAGE_CONNECTION_STRING")
        .expect("FHIRBULK_STORAGE_CONNECTION_STRING");
    let creds = StorageCredentials::new(&parse_connection_string(&connection).expect("valid"))
        .expect("credentials");
    let blobs = BlobStore::new(&creds).expect("blob client");
    let queue = WorkQueue::new(&creds, "costs").expect("queue client");
    let tables = TableClient::new(&creds, reqwest::Client::new()).expect("table client");
    blobs.ensure_container("costs").await.unwrap();
    blobs.ensure_container("costsmoved").await.unwrap();
    queue.ensure().await.unwrap();
    tables.create_table("costs").await.unwrap();
    let (blobs, queue, tables) = (&blobs, &queue, &tables);
    let name = |i: usize| format!("file-{i:06}.json");
    let small = Bytes::from(vec![b' '; 1024]);
    let large = Bytes::from(vec![b' '; 1400 * 1024]);
    let pid = pid.as_str();

    measure(pid, "blob upload (1 KiB)", n, |i| {
        let small = small.clone();
        async move { blobs.upload("costs", &name(i), small).await.unwrap() }
    })
    .await;
    measure(pid, "blob properties", n, |i| async move {
        blobs.properties("costs", &name(i)).await.unwrap();
    })
    .await;
    measure(pid, "blob read (1 KiB)", n, |i| async move {
        blobs.read_range("costs", &name(i), 0, 1024).await.unwrap();
    })
    .await;
    measure(pid, "blob copy + delete (a move)", n, |i| async move {
        blobs
            .move_blob("costs", &name(i), "costsmoved", &name(i), None)
            .await
            .unwrap();
    })
    .await;
    let big_n = (n / 4).max(1);
    measure(pid, "blob upload (1.4 MiB)", big_n, |i| {
        let large = large.clone();
        async move { blobs.upload("costs", &name(i), large).await.unwrap() }
    })
    .await;
    measure(pid, "blob read (1.4 MiB)", big_n, |i| async move {
        blobs
            .read_range("costs", &name(i), 0, 1400 * 1024)
            .await
            .unwrap();
    })
    .await;
    // Azurite hashes every partial read of up to 4 MiB (it reads the range twice): the cost per
    // MiB of reading one 64 MiB blob in ranges of each size shows it.
    const BLOB_MIB: u64 = 64;
    blobs
        .upload(
            "costs",
            "ranges",
            Bytes::from(vec![b'x'; (BLOB_MIB << 20) as usize]),
        )
        .await
        .unwrap();
    for mib in [1u64, 4, 8, 16] {
        let reads = (BLOB_MIB / mib) as usize;
        let (cpu, wall) = (cpu_ms(pid), Instant::now());
        for i in 0..reads as u64 {
            blobs
                .read_range("costs", "ranges", i * (mib << 20), mib << 20)
                .await
                .unwrap();
        }
        println!(
            "{:<34} {:>6.2} ms Azurite CPU per MiB ({:.2} ms wall)",
            format!("blob ranged read ({mib} MiB ranges)"),
            (cpu_ms(pid) - cpu) / BLOB_MIB as f64,
            wall.elapsed().as_secs_f64() * 1000.0 / BLOB_MIB as f64
        );
    }
    measure(pid, "queue send", n, |_| async move {
        queue
            .send("{\"file\":\"x\"}", Duration::ZERO)
            .await
            .unwrap()
    })
    .await;
    measure(
        pid,
        "queue receive (1 message) + delete",
        n,
        |_| async move {
            for m in queue.receive(1, Duration::from_secs(300)).await.unwrap() {
                queue.delete(&m).await.unwrap();
            }
        },
    )
    .await;
    measure(pid, "queue receive (empty queue)", n, |_| async move {
        queue.receive(1, Duration::from_secs(300)).await.unwrap();
    })
    .await;
    let row = |i: usize, rk: &str| {
        let mut e = Entity::new(&format!("file-{i}"), rk);
        e.set_str("status", "queued");
        e.set_i64("loaded", 0);
        e
    };
    measure(pid, "table insert", n, |i| async move {
        tables.insert("costs", &row(i, "file")).await.unwrap();
    })
    .await;
    measure(pid, "table replace", n, |i| async move {
        tables.upsert("costs", &row(i, "file")).await.unwrap();
    })
    .await;
    measure(pid, "table get", n, |i| async move {
        tables
            .get("costs", &format!("file-{i}"), "file")
            .await
            .unwrap();
    })
    .await;
    measure(pid, "table query (file and part rows)", n, |i| async move {
        let filter =
            format!("PartitionKey eq 'file-{i}' and (RowKey eq 'file' or RowKey eq 'part-00000')");
        tables.query("costs", &filter).await.unwrap();
    })
    .await;
    measure(pid, "table transaction (2 inserts)", n, |i| async move {
        let (a, b) = (row(i, "part-00000"), row(i, "part-00001"));
        tables
            .transact(
                "costs",
                &[TransactionOp::Insert(&a), TransactionOp::Insert(&b)],
            )
            .await
            .unwrap();
    })
    .await;
}
