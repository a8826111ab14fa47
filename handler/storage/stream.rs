//! Streaming bytes with bounded memory, for import and export alike: the `ChunkStream`
//! trait, a blob read as a stream (ranged requests, reopened where a read broke off), a blob
//! read as a seekable file, and any blocking `Read` (a gzip decoder, a zip entry) run on a
//! blocking thread that hands chunks over a bounded channel; gzip with expansion limits.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::{BlobBody, BlobStore};

/// A source of consecutive bytes (a blob read in ranges, a decompressor, a zip entry).
#[async_trait]
pub trait ChunkStream: Send {
    /// The next bytes, or `None` at the end.
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>>;
}

/// Most bytes one streamed blob request covers: a long read is a few requests, each short
/// enough for the service's time limit on one read however slowly the FHIR server takes it.
pub const BLOB_REQUEST_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes asked for at a time past `planned_end` (a range finishing its last line).
pub const BLOB_TAIL_BYTES: u64 = 1024 * 1024;
/// Times a broken read is reopened where it stopped before the error is the work item's.
const REOPENS: u32 = 3;

/// When a read of one blob version (`If-Match`) was last answered: the answer proves the
/// version was still the blob's when the request was sent. Shared by a reader and whoever
/// checks the version (import's version fence), so a read spares them a check.
#[derive(Clone, Debug, Default)]
pub struct VersionSeen(Arc<std::sync::Mutex<Option<tokio::time::Instant>>>);

impl VersionSeen {
    /// When the latest answered request was sent.
    pub fn last(&self) -> Option<tokio::time::Instant> {
        *self.0.lock().expect("version lock")
    }

    fn record(&self, sent: tokio::time::Instant) {
        let mut last = self.0.lock().expect("version lock");
        if last.is_none_or(|l| l < sent) {
            *last = Some(sent);
        }
    }
}

/// The error of a read of one version (`BlobChunks::of_version`) that found another there: a
/// newer upload replaced the blob. Carried inside an `io::Error`; see [`is_version_changed`].
#[derive(Debug, thiserror::Error)]
#[error("the blob {0} is no longer the version being read")]
pub struct VersionChanged(String);

/// Whether `e` is a read that found a newer version of the blob.
pub fn is_version_changed(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<VersionChanged>())
}

/// Reads `[offset, size)` of a blob as it is consumed: one streamed request up to
/// `planned_end` (in `BLOB_REQUEST_BYTES` pieces), then `BLOB_TAIL_BYTES` at a time, so memory
/// holds what the transport buffers, not the range. A request that breaks off is reopened at
/// the first byte not yet handed out.
pub struct BlobChunks {
    store: BlobStore,
    container: String,
    blob: String,
    offset: u64,
    size: u64,
    planned_end: u64,
    /// The open request, and the offset its body ends at.
    body: Option<(BlobBody, u64)>,
    failures: u32,
    /// Only this version (ETag) is read, and each answer is recorded.
    version: Option<(String, VersionSeen)>,
}

impl BlobChunks {
    /// Reads from `offset` to the end of the blob (`size`) in as few requests as it can.
    pub fn new(store: BlobStore, container: &str, blob: &str, offset: u64, size: u64) -> Self {
        BlobChunks {
            store,
            container: container.to_string(),
            blob: blob.to_string(),
            offset,
            size,
            planned_end: size,
            body: None,
            failures: 0,
            version: None,
        }
    }

    /// Reads only version `etag` of the blob (a newer upload is a [`VersionChanged`] error,
    /// never bytes of two versions mixed), and records each answer in `seen`.
    pub fn of_version(mut self, etag: &str, seen: VersionSeen) -> Self {
        let quoted = format!("\"{}\"", etag.trim_matches('"'));
        self.version = Some((quoted, seen));
        self
    }

    /// Expects to be read up to about `end` (an NDJSON range's end): bytes past it are asked
    /// for a little at a time, so a range does not request the rest of the file.
    pub fn planned_to(mut self, end: u64) -> Self {
        self.planned_end = end.min(self.size);
        self
    }

    /// Reads everything left into one buffer, sized once (a Bundle read whole), reopening a
    /// request that breaks off like every other read.
    pub async fn read_to_end(self) -> io::Result<Bytes> {
        let end = self.size;
        self.read_up_to(end).await
    }

    /// Reads up to offset `end` (or the end of the blob) into one buffer, sized once.
    async fn read_up_to(mut self, end: u64) -> io::Result<Bytes> {
        let end = end.min(self.size);
        let left = usize::try_from(end.saturating_sub(self.offset)).unwrap_or(0);
        let mut out = BytesMut::with_capacity(left.min(1 << 30));
        while self.offset < end {
            let Some(chunk) = self.next_chunk().await? else {
                break;
            };
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    fn next_request_end(&self) -> u64 {
        let end = if self.offset < self.planned_end {
            self.planned_end.min(self.offset + BLOB_REQUEST_BYTES)
        } else {
            self.offset + BLOB_TAIL_BYTES
        };
        end.min(self.size)
    }

    /// Counts a broken request; past `REOPENS` in a row without progress it is an error.
    fn broken(&mut self, error: io::Error) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        if self.failures > REOPENS {
            return Err(error);
        }
        tracing::warn!(
            blob = %crate::storage::blob_log_name(&self.container, &self.blob),
            offset = self.offset,
            error = %error,
            "blob read broke off; reopening where it stopped"
        );
        Ok(())
    }
}

#[async_trait]
impl ChunkStream for BlobChunks {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.offset >= self.size {
                return Ok(None);
            }
            let (body, body_end) = match &mut self.body {
                Some(open) => open,
                None => {
                    let end = self.next_request_end();
                    let sent = tokio::time::Instant::now();
                    let etag = self.version.as_ref().map(|(etag, _)| etag.as_str());
                    let opened = self
                        .store
                        .stream_range(
                            &self.container,
                            &self.blob,
                            self.offset,
                            end - self.offset,
                            etag,
                        )
                        .await;
                    let body = match opened {
                        Ok(body) => body,
                        Err(e) => {
                            let (store, container, blob) = (
                                self.store.clone(),
                                self.container.clone(),
                                self.blob.clone(),
                            );
                            return Err(open_error(&store, &container, &blob, e).await);
                        }
                    };
                    if let Some((_, seen)) = &self.version {
                        seen.record(sent);
                    }
                    self.body.insert((body, end))
                }
            };
            let body_end = *body_end;
            match body.next_bytes().await {
                Ok(Some(bytes)) if !bytes.is_empty() => {
                    // Never more than was asked for (an empty chunk would read as the end).
                    let room = (body_end - self.offset) as usize;
                    if room == 0 {
                        self.body = None;
                        continue;
                    }
                    let bytes = if bytes.len() > room {
                        bytes.slice(..room)
                    } else {
                        bytes
                    };
                    self.offset += bytes.len() as u64;
                    self.failures = 0;
                    return Ok(Some(bytes));
                }
                Ok(Some(_)) => {}
                Ok(None) if self.offset >= body_end => self.body = None,
                // A complete answer that is short: the blob is not the one registered.
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the blob {}/{} ends at byte {}, before the {} bytes it had when registered",
                            self.container, self.blob, self.offset, self.size
                        ),
                    ));
                }
                Err(e) => self.broken(io::Error::other(e))?,
            }
        }
    }
}

/// What a request that could not be opened means for the reader. A 404 stays one: the
/// file was deleted after it was registered. A 412 (a read of one version that found
/// another, or, on some services, none) is told apart by reading the blob's properties.
async fn open_error(
    store: &BlobStore,
    container: &str,
    blob: &str,
    e: super::StorageError,
) -> io::Error {
    let deleted = || io::Error::new(io::ErrorKind::NotFound, e.to_string());
    match e.status() {
        Some(404) => deleted(),
        Some(412) => match store.properties(container, blob).await {
            Ok(None) => deleted(),
            Ok(Some(_)) => io::Error::other(VersionChanged(crate::storage::blob_log_name(
                container, blob,
            ))),
            Err(e) => io::Error::other(e),
        },
        _ => io::Error::other(e),
    }
}

/// Smallest and largest ranged read of a [`BlobFile`]: a read after a seek starts small (a zip
/// entry may be a few KiB) and doubles while reading goes on in the same direction.
const FILE_READ_MIN: u64 = 64 * 1024;
const FILE_READ_MAX: u64 = 8 * 1024 * 1024;

/// A blob as a seekable file, for a blocking reader that wants one (the zip reader, on a
/// blocking thread): no copy of the blob on disk. Bytes are read in ranged requests into one
/// window; a read after a seek asks for `FILE_READ_MIN` bytes, and each following one in the
/// same direction for twice as many, up to `FILE_READ_MAX`, so an entry read front to back is a
/// few large requests and a search backwards from the end (for the zip directory) a few more.
/// Each request is a [`BlobChunks`] read: reopened if it breaks off, and an error if the blob
/// is shorter than registered. Clones share the window's bytes.
#[derive(Clone)]
pub struct BlobFile {
    store: BlobStore,
    container: String,
    blob: String,
    size: u64,
    pos: u64,
    window: Bytes,
    window_start: u64,
    /// The size of the next ranged read, grown while reads follow each other.
    next_read: u64,
    runtime: tokio::runtime::Handle,
}

impl BlobFile {
    /// The blob as registered: `size` bytes. Call from within the runtime.
    pub fn new(store: BlobStore, container: &str, blob: &str, size: u64) -> Self {
        BlobFile {
            store,
            container: container.to_string(),
            blob: blob.to_string(),
            size,
            pos: 0,
            window: Bytes::new(),
            window_start: 0,
            next_read: FILE_READ_MIN,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Reads a new window holding `self.pos`.
    fn fill(&mut self) -> io::Result<()> {
        let (start, end, next_read) = plan_window(
            self.pos,
            (self.window_start, self.window.len() as u64),
            self.next_read,
            self.size,
        );
        self.next_read = next_read;
        self.window = Bytes::new(); // (not held while the next one is read)
        let chunks = BlobChunks::new(
            self.store.clone(),
            &self.container,
            &self.blob,
            start,
            self.size,
        )
        .planned_to(end);
        self.window = self.runtime.block_on(chunks.read_up_to(end))?;
        self.window_start = start;
        Ok(())
    }
}

/// The next window of a [`BlobFile`] to read, holding `pos` (`pos < size`): `(start, end,
/// next_read)`, from the current window `(start, len)` and read size. A blob of at most
/// `FILE_READ_MAX` is one window. Otherwise reading on just past the window, or stepping back
/// just before it, doubles the read size (up to `FILE_READ_MAX`); any other seek starts again
/// at `FILE_READ_MIN`.
fn plan_window(pos: u64, window: (u64, u64), next_read: u64, size: u64) -> (u64, u64, u64) {
    if size <= FILE_READ_MAX {
        // A blob that fits one window is read whole, once: the clones of a small archive's
        // reader (one per entry) then share it and read nothing more.
        return (0, size, FILE_READ_MAX);
    }
    let (window_start, window_end) = (window.0, window.0 + window.1);
    let grown = (next_read * 2).min(FILE_READ_MAX);
    let (start, end, next_read) = if pos >= window_end && pos < window_end + FILE_READ_MIN {
        (pos, pos + grown, grown)
    } else if pos < window_start && pos + FILE_READ_MIN >= window_start {
        // A search backwards: the window ends a little past `pos` and reaches back.
        let end = pos + FILE_READ_MIN;
        (end.saturating_sub(grown), end, grown)
    } else {
        (pos, pos + FILE_READ_MIN, FILE_READ_MIN)
    };
    (start, end.min(size), next_read)
}

impl Read for BlobFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if self.pos < self.window_start || self.pos >= window_end {
            self.fill()?;
            if self.pos >= self.window_start + self.window.len() as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the blob {}/{} ended before byte {}",
                        self.container, self.blob, self.pos
                    ),
                ));
            }
        }
        let at = (self.pos - self.window_start) as usize;
        let n = out.len().min(self.window.len() - at);
        out[..n].copy_from_slice(&self.window[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlobFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the blob",
            )
        })?;
        Ok(self.pos)
    }
}

/// A blocking `Read` over a chunk stream (a blob's ranges, an export's staged blobs), for
/// decoders that want one (run it on a blocking thread).
pub struct ChunkRead<C> {
    chunks: C,
    current: Bytes,
    runtime: tokio::runtime::Handle,
}

impl<C: ChunkStream> ChunkRead<C> {
    pub fn new(chunks: C) -> Self {
        ChunkRead {
            chunks,
            current: Bytes::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl<C: ChunkStream> Read for ChunkRead<C> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.current.is_empty() {
            match self.runtime.block_on(self.chunks.next_chunk())? {
                Some(c) => self.current = c,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Chunks produced by a blocking reader on its own thread.
pub struct ChannelChunks {
    rx: mpsc::Receiver<io::Result<Bytes>>,
}

#[async_trait]
impl ChunkStream for ChannelChunks {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        match self.rx.recv().await {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

/// Runs the reader `open` builds on a blocking thread (it is built there too: decoders such as
/// flate2's read their header as soon as they are made); at most four 1 MiB chunks wait in
/// the channel.
pub fn spawn_reader<R, F>(open: F) -> ChannelChunks
where
    R: Read,
    F: FnOnce() -> R + Send + 'static,
{
    spawn_producer(move |out| out.pump(open(), u64::MAX))
}

/// Runs `produce` on a blocking thread; what it pumps into its `ChunkSender`, and the error it
/// ends with, come out of the returned chunks (at most four 1 MiB chunks wait in between).
pub fn spawn_producer<F>(produce: F) -> ChannelChunks
where
    F: FnOnce(&ChunkSender) -> io::Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let out = ChunkSender { tx };
        if let Err(e) = produce(&out) {
            let _ = out.tx.blocking_send(Err(e));
        }
    });
    ChannelChunks { rx }
}

/// The sending end of `spawn_producer`'s channel.
pub struct ChunkSender {
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl ChunkSender {
    /// Sends what `read` yields in chunks of up to 1 MiB. More than `limit` bytes is an
    /// `InvalidData` error; a reader that went away (the consumer stopped) ends it quietly.
    pub fn pump(&self, read: impl Read, limit: u64) -> io::Result<()> {
        self.pump_checked(read, |total| {
            if total > limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the data expands past {} MiB, more than is allowed",
                        limit >> 20
                    ),
                ));
            }
            Ok(())
        })
    }

    /// Sends what `read` yields, asking `check` after each chunk with the bytes sent so far.
    fn pump_checked(
        &self,
        mut read: impl Read,
        check: impl Fn(u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; 1024 * 1024];
        let mut total = 0u64;
        loop {
            let n = read.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            total += n as u64;
            check(total)?;
            if self
                .tx
                .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                .is_err()
            {
                return Ok(());
            }
        }
    }
}

/// The decompressed bytes of a gzip stream (several concatenated members are allowed): a gzip
/// blob, or an export's staged blobs read one after another.
pub fn gunzip<C: ChunkStream + 'static>(chunks: C) -> ChannelChunks {
    let raw = ChunkRead::new(chunks);
    spawn_reader(move || flate2::read::MultiGzDecoder::new(io::BufReader::new(raw)))
}

/// What a compressed upload may expand to: at most `max_bytes`, and at most `max_ratio` times
/// the compressed bytes read so far (checked once past `RATIO_SLACK`, so the first blocks of a
/// well-compressed file pass). A decompression bomb (a megabyte of gzip holding a gigabyte of
/// newlines) is refused within its first tens of megabytes, not after minutes.
#[derive(Clone, Copy, Debug)]
pub struct Expansion {
    pub max_bytes: u64,
    pub max_ratio: u64,
}

const RATIO_SLACK: u64 = 16 * 1024 * 1024;

impl Expansion {
    /// The zip limits (`FHIRBULK_ZIP_MAX_UNCOMPRESSED_MIB`, `FHIRBULK_ZIP_MAX_RATIO`), which
    /// hold for a `.ndjson.gz` file too.
    pub fn of(settings: &crate::config::ImportSettings) -> Self {
        Expansion {
            max_bytes: settings.zip_max_uncompressed_bytes,
            max_ratio: settings.zip_max_ratio,
        }
    }

    fn check(self, expanded: u64, compressed: u64) -> io::Result<()> {
        let refuse = |why: String| Err(io::Error::new(io::ErrorKind::InvalidData, why));
        if expanded > self.max_bytes {
            return refuse(format!(
                "expands past {} MiB; the limit is {} MiB (FHIRBULK_ZIP_MAX_UNCOMPRESSED_MIB)",
                expanded >> 20,
                self.max_bytes >> 20
            ));
        }
        if expanded > RATIO_SLACK && expanded / compressed.max(1) > self.max_ratio {
            return refuse(format!(
                "expands {} times ({} MiB from {} KiB read); the limit is {}:1 (FHIRBULK_ZIP_MAX_RATIO) — a decompression bomb is likely",
                expanded / compressed.max(1),
                expanded >> 20,
                compressed >> 10,
                self.max_ratio
            ));
        }
        Ok(())
    }
}

/// A `Read` that counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// `gunzip` for an uploaded file: its expansion is held to `limits`.
pub fn gunzip_limited<C: ChunkStream + 'static>(chunks: C, limits: Expansion) -> ChannelChunks {
    spawn_producer(move |out| out.pump_expansion(ChunkRead::new(chunks), limits))
}

impl ChunkSender {
    /// Sends the gzip data of `compressed` decompressed, its expansion held to `limits`.
    pub fn pump_expansion(&self, compressed: impl Read, limits: Expansion) -> io::Result<()> {
        let read = Arc::new(AtomicU64::new(0));
        let raw = Counted {
            inner: compressed,
            read: read.clone(),
        };
        let decoder = flate2::read::MultiGzDecoder::new(io::BufReader::new(raw));
        self.pump_checked(decoder, |expanded| {
            limits.check(expanded, read.load(Ordering::Relaxed))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_is_held_to_its_size_and_ratio() {
        let limits = Expansion {
            max_bytes: 1 << 30,
            max_ratio: 200,
        };
        assert!(limits.check(8 << 20, 1024).is_ok(), "the slack");
        assert!(limits.check(100 << 20, 1 << 20).is_ok(), "100:1");
        let bomb = limits.check(64 << 20, 64 << 10).unwrap_err();
        assert!(bomb.to_string().contains("decompression bomb"), "{bomb}");
        assert!(limits.check((1 << 30) + 1, 1 << 30).is_err(), "the size");
    }

    /// Reads `[pos, pos + len)` the way `BlobFile` does, counting the windows it reads and
    /// checking each holds the position it was read for.
    struct Sim {
        window: (u64, u64),
        next_read: u64,
        size: u64,
        fills: u32,
        bytes: u64,
    }

    impl Sim {
        fn new(size: u64) -> Self {
            Sim {
                window: (0, 0),
                next_read: FILE_READ_MIN,
                size,
                fills: 0,
                bytes: 0,
            }
        }
        fn read(&mut self, mut pos: u64, len: u64) {
            let end = (pos + len).min(self.size);
            while pos < end {
                let (start, stop) = (self.window.0, self.window.0 + self.window.1);
                if pos < start || pos >= stop {
                    let (s, e, n) = plan_window(pos, self.window, self.next_read, self.size);
                    assert!(s <= pos && pos < e, "window {s}..{e} holds {pos}");
                    assert!(e - s <= FILE_READ_MAX && e <= self.size);
                    self.window = (s, e - s);
                    self.next_read = n;
                    self.fills += 1;
                    self.bytes += e - s;
                }
                pos = end.min(self.window.0 + self.window.1);
            }
        }
    }

    #[test]
    fn blob_file_windows_grow_forward_and_backward_and_always_hold_the_read() {
        const MIB: u64 = 1 << 20;
        let size = 100 * MIB + 7;
        // Front to back in 1 MiB reads: a ramp, then 8 MiB windows; every byte read once.
        let mut sim = Sim::new(size);
        for at in (0..size).step_by(MIB as usize) {
            sim.read(at, MIB);
        }
        assert!(sim.fills <= 20, "{} windows", sim.fills);
        assert_eq!(sim.bytes, size);
        // Back to front in 2,000-byte steps, as a zip reader looks for its directory.
        let mut sim = Sim::new(size);
        let mut at = size;
        while at >= 2000 {
            at -= 2000;
            sim.read(at, 2000);
        }
        assert!(sim.fills <= 25, "{} windows", sim.fills);
        assert!(sim.bytes <= 2 * size, "{} bytes read for {size}", sim.bytes);
        // Seeks elsewhere start small again: a small entry costs one small read.
        let mut sim = Sim::new(size);
        sim.read(50 * MIB, 4000);
        sim.read(10 * MIB, 4000);
        assert_eq!((sim.fills, sim.bytes), (2, 2 * FILE_READ_MIN));
        // A blob that fits one window is read once, whole, whatever the reads.
        let small = 3 * MIB;
        let mut sim = Sim::new(small);
        sim.read(small - 22, 22);
        sim.read(small - 4000, 2000);
        sim.read(1000, 50);
        sim.read(0, small);
        assert_eq!((sim.fills, sim.bytes), (1, small));
    }
}
