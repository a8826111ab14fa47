//! The storage layer against real Azurite: shared-key signing, blobs, queues, tables.

use bytes::Bytes;
use fhir_bulk::config::parse_connection_string;
use fhir_bulk::storage::stream::BlobChunks;
use fhir_bulk::storage::stream::ChunkStream;
use fhir_bulk::storage::{
    BlobStore, Entity, MoveOutcome, StorageCredentials, TableClient, TransactionOp,
    TransactionOutcome, WorkQueue,
};
use std::time::Duration;

use crate::support::{Azurite, blobs};

#[tokio::test]
async fn blobs_queues_and_tables_work_against_azurite() {
    let azurite = Azurite::start();
    let creds =
        StorageCredentials::new(&parse_connection_string(&azurite.connection_string).unwrap())
            .unwrap();

    let blobs = BlobStore::new(&creds).unwrap();
    blobs.ensure_container("bundles").await.unwrap();
    blobs.ensure_container("bundles").await.unwrap();
    let name = "folder/a b+c.json";
    blobs
        .upload("bundles", name, Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    let props = blobs.properties("bundles", name).await.unwrap().unwrap();
    assert_eq!(props.size, 10);
    assert_eq!(
        &blobs.read_range("bundles", name, 2, 3).await.unwrap()[..],
        b"234"
    );
    assert_eq!(
        &blobs.read_range("bundles", name, 8, 100).await.unwrap()[..],
        b"89"
    );
    let listed = blobs.list("bundles", None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, name);
    let etag = props.etag.clone();
    assert_eq!(
        blobs
            .move_blob(
                "bundles",
                name,
                "bundlesprocessed",
                name,
                Some("\"0xstale\"")
            )
            .await
            .unwrap(),
        MoveOutcome::SourceChanged,
        "a newer upload is never moved away"
    );
    assert_eq!(
        blobs
            .move_blob("bundles", name, "moved-here", name, Some(&etag))
            .await
            .unwrap(),
        MoveOutcome::Moved,
        "a missing destination container is created"
    );
    blobs
        .move_blob("moved-here", name, "bundlesprocessed", name, None)
        .await
        .unwrap();
    assert!(
        blobs
            .properties("moved-here", name)
            .await
            .unwrap()
            .is_none()
    );
    assert!(blobs.properties("bundles", name).await.unwrap().is_none());
    assert_eq!(
        blobs
            .properties("bundlesprocessed", name)
            .await
            .unwrap()
            .unwrap()
            .size,
        10
    );
    let chunks = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"ab")),
        Ok(Bytes::from_static(b"cd")),
    ]);
    assert_eq!(
        blobs.upload_blocks("bundles", "big", chunks).await.unwrap(),
        4
    );
    assert_eq!(
        &blobs.read_range("bundles", "big", 0, 4).await.unwrap()[..],
        b"abcd"
    );

    let queue = WorkQueue::new(&creds, "work").unwrap();
    queue.ensure().await.unwrap();
    queue.send("{\"a\":\"<&>\"}", Duration::ZERO).await.unwrap();
    let got = queue.receive(5, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].text, "{\"a\":\"<&>\"}");
    queue.delete(&got[0]).await.unwrap();
    assert!(
        queue
            .receive(5, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );

    let tables = TableClient::new(&creds, reqwest::Client::new()).unwrap();
    tables.create_table("imports").await.unwrap();
    tables.create_table("imports").await.unwrap();
    let mut e = Entity::new("bundles", "a%2Fb.json");
    e.set_i64("loaded", 3);
    let etag = tables.insert("imports", &e).await.unwrap();
    assert!(
        tables
            .insert("imports", &e)
            .await
            .unwrap_err()
            .is_conflict()
    );
    let mut read = tables
        .get("imports", "bundles", "a%2Fb.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.i64("loaded"), 3);
    assert_eq!(read.etag, etag);
    read.set_i64("loaded", 4);
    let stale = read.clone();
    tables.replace("imports", &read).await.unwrap();
    assert!(
        tables
            .replace("imports", &stale)
            .await
            .unwrap_err()
            .is_conflict()
    );
    let all = tables
        .query("imports", "PartitionKey eq 'bundles'")
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].i64("loaded"), 4);
    // A queried row carries its ETag (and no OData control information), so it can be
    // replaced conditionally: once, and not again from the same read.
    let mut queried = all[0].clone();
    assert!(!queried.etag.is_empty(), "a query must return ETags");
    assert!(queried.props.keys().all(|k| !k.starts_with("odata.")));
    let stale = queried.clone();
    queried.set_i64("loaded", 5);
    assert!(
        tables
            .replace_if_unchanged("imports", &mut queried)
            .await
            .unwrap()
    );
    assert!(
        !tables
            .replace_if_unchanged("imports", &mut stale.clone())
            .await
            .unwrap()
    );

    // A transaction applies all of its writes or none, and says which one failed.
    let mut file = Entity::new("tx", "file");
    let mut part = Entity::new("tx", "part-00000");
    file.set_str("status", "registering");
    let inserted = tables
        .transact(
            "imports",
            &[TransactionOp::Insert(&file), TransactionOp::Insert(&part)],
        )
        .await
        .unwrap();
    let TransactionOutcome::Applied(etags) = inserted else {
        panic!("the inserts were refused: {inserted:?}");
    };
    assert_eq!(etags.len(), 2);
    assert!(matches!(
        tables
            .transact("imports", &[TransactionOp::Insert(&file)])
            .await
            .unwrap(),
        TransactionOutcome::Refused { status: 409, .. }
    ));
    file.etag = etags[0].clone();
    part.etag = "W/\"datetime'2000-01-01T00%3A00%3A00.0000000Z'\"".into();
    file.set_str("status", "loading");
    let stale = tables
        .transact(
            "imports",
            &[TransactionOp::Replace(&file), TransactionOp::Replace(&part)],
        )
        .await
        .unwrap();
    assert_eq!(
        stale,
        TransactionOutcome::Refused {
            index: Some(1),
            status: 412
        }
    );
    let unchanged = tables.get("imports", "tx", "file").await.unwrap().unwrap();
    assert_eq!(
        unchanged.str("status"),
        Some("registering"),
        "nothing applied"
    );
    part.etag = etags[1].clone();
    let applied = tables
        .transact(
            "imports",
            &[TransactionOp::Replace(&file), TransactionOp::Replace(&part)],
        )
        .await
        .unwrap();
    assert!(
        matches!(applied, TransactionOutcome::Applied(_)),
        "{applied:?}"
    );
    let now = tables.get("imports", "tx", "file").await.unwrap().unwrap();
    assert_eq!(now.str("status"), Some("loading"));
    let TransactionOutcome::Applied(new_etags) = applied else {
        unreachable!()
    };
    assert_eq!(
        now.etag, new_etags[0],
        "the answer carries each row's new ETag"
    );

    // Pages come in RowKey order whatever the insert order (error reports rely on it), and
    // `exists` asks for one entity.
    tables.create_table("errors").await.unwrap();
    for key in [
        "000000000007",
        "000000000002",
        "000000000010",
        "000000000001",
    ] {
        tables
            .upsert("errors", &Entity::new("file", key))
            .await
            .unwrap();
    }
    let mut pages = tables.query_pages("errors", "PartitionKey eq 'file'");
    let mut keys = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        keys.extend(page.iter().map(|e| e.str("RowKey").unwrap().to_string()));
    }
    assert_eq!(
        keys,
        [
            "000000000001",
            "000000000002",
            "000000000007",
            "000000000010"
        ]
    );
    assert!(
        tables
            .exists(
                "errors",
                "PartitionKey eq 'file' and RowKey ge '000000000005'"
            )
            .await
            .unwrap()
    );
    assert!(
        !tables
            .exists("errors", "PartitionKey eq 'other'")
            .await
            .unwrap()
    );
}

/// Large reads are one streamed request each: the bytes come back whole and in order, past
/// the SDK's 4 MiB partitions, across a range's planned end, and a blob shorter than it was
/// registered is an error that says so.
#[tokio::test]
async fn streamed_blob_reads_return_every_byte_once() {
    let azurite = Azurite::start();
    let creds =
        StorageCredentials::new(&parse_connection_string(&azurite.connection_string).unwrap())
            .unwrap();
    let blobs = BlobStore::new(&creds).unwrap();
    blobs.ensure_container("ndjson").await.unwrap();
    // 9 MiB + 7 bytes of a pattern that shows any byte out of place.
    let content: Vec<u8> = (0..(9 << 20) + 7).map(|i: u32| (i % 251) as u8).collect();
    let size = content.len() as u64;
    blobs
        .upload("ndjson", "big.ndjson", Bytes::from(content.clone()))
        .await
        .unwrap();
    assert_eq!(
        blobs
            .read_range("ndjson", "big.ndjson", 0, size)
            .await
            .unwrap(),
        content,
        "a read larger than the SDK's 4 MiB partitions"
    );

    let read = |start: u64, planned_end: u64, registered: u64| {
        let blobs = blobs.clone();
        async move {
            let mut chunks = BlobChunks::new(blobs, "ndjson", "big.ndjson", start, registered)
                .planned_to(planned_end);
            let mut out = Vec::new();
            loop {
                match chunks.next_chunk().await {
                    Ok(Some(c)) => out.extend_from_slice(&c),
                    Ok(None) => return Ok(out),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    };
    let start = 3 << 20;
    assert_eq!(
        read(start, 5 << 20, size).await.unwrap(),
        content[start as usize..],
        "a range read on past its planned end (as to finish its last line) gets the rest in order"
    );
    let error = read(0, size, size + 10).await.unwrap_err();
    assert!(
        error.contains("before the 9437201 bytes it had when registered"),
        "{error}"
    );
}

/// A streamed read whose connection breaks mid-body is reopened where it stopped: the reader
/// gets every byte once, in order. The break is made by a proxy in front of Azurite's blob
/// port that closes its first connection after 3 MiB of the answer.
#[tokio::test]
async fn a_blob_read_cut_off_mid_body_resumes_where_it_stopped() {
    let azurite = Azurite::start();
    let direct = blobs(&azurite);
    direct.ensure_container("ndjson").await.unwrap();
    let content: Vec<u8> = (0..(9 << 20) + 3).map(|i: u32| (i % 253) as u8).collect();
    direct
        .upload("ndjson", "cut.ndjson", Bytes::from(content.clone()))
        .await
        .unwrap();

    let blob_port: u16 = azurite
        .connection_string
        .split("BlobEndpoint=http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .expect("the blob port of the connection string");
    // Blob clients through a proxy whose first connection is cut after 3 MiB of the answer.
    let cut_blobs = || async {
        let proxy = cutting_proxy(blob_port, 3 << 20).await;
        let through_proxy = azurite.connection_string.replace(
            &format!("BlobEndpoint=http://127.0.0.1:{blob_port}/"),
            &format!("BlobEndpoint=http://127.0.0.1:{proxy}/"),
        );
        let settings = parse_connection_string(&through_proxy).unwrap();
        BlobStore::new(&StorageCredentials::new(&settings).unwrap()).unwrap()
    };

    let blobs = cut_blobs().await;
    let mut chunks = BlobChunks::new(blobs, "ndjson", "cut.ndjson", 0, content.len() as u64);
    let mut read = Vec::new();
    while let Some(chunk) = chunks.next_chunk().await.unwrap() {
        read.extend_from_slice(&chunk);
    }
    assert_eq!(read.len(), content.len());
    assert!(read == content, "every byte once, in order");

    // A Bundle is read whole, the same way: cut off, reopened, every byte once.
    let blobs = cut_blobs().await;
    let whole = BlobChunks::new(blobs, "ndjson", "cut.ndjson", 0, content.len() as u64)
        .read_to_end()
        .await
        .unwrap();
    assert!(whole[..] == content[..], "every byte once, in order");
}

/// Forwards connections to `port` on loopback; the first one is closed after `cut_after`
/// bytes of the answer. Returns the proxy's port.
async fn cutting_proxy(port: u16, cut_after: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let limit = if first { cut_after } else { usize::MAX };
            first = false;
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let requests = tokio::spawn(async move {
                    tokio::io::copy(&mut client_read, &mut server_write).await
                });
                let mut sent = 0;
                let mut buf = vec![0u8; 64 * 1024];
                while sent < limit {
                    let n = match server_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n.min(limit - sent),
                    };
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                requests.abort();
            });
        }
    });
    proxy_port
}

/// A blob read as a seekable file (how a zip is read, in place): every read, forward, after a
/// seek, or stepping backwards from the end, returns the blob's bytes at that position; and a
/// zip archive larger than the largest read window, with a comment and stored and deflated
/// entries, streams each entry whole.
#[tokio::test]
async fn a_blob_read_as_a_file_returns_the_bytes_at_every_position() {
    use fhir_bulk::import::zip::{read_directory, stream_entry};
    use fhir_bulk::storage::stream::BlobFile;
    use std::io::{Read, Seek, SeekFrom, Write};

    let azurite = Azurite::start();
    let blobs = blobs(&azurite);
    blobs.ensure_container("zip").await.unwrap();
    let content: Vec<u8> = (0..(11 << 20) + 5).map(|i: u32| (i % 251) as u8).collect();
    blobs
        .upload("zip", "raw.bin", Bytes::from(content.clone()))
        .await
        .unwrap();
    let file = BlobFile::new(blobs.clone(), "zip", "raw.bin", content.len() as u64);
    let expected = content.clone();
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut all = Vec::new();
        file.read_to_end(&mut all).unwrap();
        assert!(all == expected, "a front-to-back read is the blob");
        // Backwards from the end in 2,000-byte steps, as a zip reader looks for its directory.
        let mut at = expected.len() as u64;
        let mut block = [0u8; 2000];
        for _ in 0..3000 {
            at -= 2000;
            file.seek(SeekFrom::Start(at)).unwrap();
            file.read_exact(&mut block).unwrap();
            assert!(
                block[..] == expected[at as usize..at as usize + 2000],
                "at {at}"
            );
        }
        for at in [0u64, 7 << 20, 3, (11 << 20) + 1, 65_535, 65_536] {
            file.seek(SeekFrom::Start(at)).unwrap();
            let mut four = [0u8; 4];
            file.read_exact(&mut four).unwrap();
            assert!(
                four[..] == expected[at as usize..at as usize + 4],
                "at {at}"
            );
        }
        file.seek(SeekFrom::End(-2)).unwrap();
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, expected[expected.len() - 2..]);
    })
    .await
    .unwrap();

    // A file that is not an archive is searched backwards to its start, then refused.
    let not_zip = BlobFile::new(blobs.clone(), "zip", "raw.bin", content.len() as u64);
    let e = tokio::task::spawn_blocking(move || read_directory(not_zip).err().unwrap())
        .await
        .unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");

    let big_line = format!("{}\n", "{\"resourceType\":\"Patient\",\"id\":\"p\"}");
    let stored: Vec<u8> = big_line.repeat(300_000).into_bytes(); // ~11 MB
    let deflated: Vec<u8> = big_line.repeat(1_000).into_bytes();
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let plain =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("data/Patient.ndjson", plain).unwrap();
    w.write_all(&stored).unwrap();
    w.start_file("data/More.ndjson", zip::write::SimpleFileOptions::default())
        .unwrap();
    w.write_all(&deflated).unwrap();
    w.set_comment("x".repeat(1000));
    let archive_bytes = w.finish().unwrap().into_inner();
    blobs
        .upload("zip", "big.zip", Bytes::from(archive_bytes.clone()))
        .await
        .unwrap();
    let file = BlobFile::new(blobs, "zip", "big.zip", archive_bytes.len() as u64);
    let (archive, entries) = tokio::task::spawn_blocking(move || read_directory(file))
        .await
        .unwrap()
        .unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["data/Patient.ndjson", "data/More.ndjson"]);
    for (index, want) in [(0, &stored), (1, &deflated)] {
        let mut chunks = stream_entry(archive.clone(), index, None, u64::MAX);
        let mut got = Vec::new();
        while let Some(chunk) = chunks.next_chunk().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
        assert!(got == *want, "entry {index} whole, in order");
    }
}
