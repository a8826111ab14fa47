//! Reading the lines of a byte stream (`stream::ChunkStream`) with bounded memory: the lines a
//! byte range owns, or all of them.
//!
//! A line belongs to the range that holds its first byte. A range that does not start at 0
//! skips the partial line it starts in, and every range reads past its end to finish its last
//! line; so ranges processed independently see every line exactly once.

use std::io;

use bytes::{Buf, Bytes, BytesMut};

pub use super::stream::ChunkStream;

/// Nominal byte ranges `[start, end)` of at most `range_bytes` covering a file of `size` bytes.
pub fn cut_ranges(size: u64, range_bytes: u64) -> Vec<(u64, u64)> {
    if size == 0 {
        return vec![(0, 0)];
    }
    let step = range_bytes.max(1);
    (0..size.div_ceil(step))
        .map(|i| (i * step, ((i + 1) * step).min(size)))
        .collect()
}

/// Longest line accepted; a longer one is reported as invalid and skipped.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// One line as read: where it starts, its 1-based number within this reader, its bytes.
#[derive(Debug, Clone)]
pub struct Line {
    pub offset: u64,
    pub number: u64,
    /// Bytes of the line, without its newline (also when they were dropped).
    pub length: u64,
    pub bytes: Bytes,
    /// The line exceeded the reader's limit (`MAX_LINE_BYTES`); `bytes` is empty.
    pub too_long: bool,
}

pub struct LineReader<S> {
    src: S,
    buf: BytesMut,
    /// Absolute offset of `buf[0]`.
    offset: u64,
    /// Lines starting at or after this offset belong to the next range.
    end: u64,
    eof: bool,
    skip_partial: bool,
    number: u64,
    /// Longest line kept; a longer one is handed out as `too_long`, without its bytes.
    max_line: usize,
}

impl<S: ChunkStream> LineReader<S> {
    /// Reads lines whose first byte lies in `[start, end)`, from a stream positioned at
    /// `start - 1` when `start > 0` (to see whether `start` begins a line), else at 0.
    /// `resume_at` (a line start from a checkpoint) replaces that rule: the stream is
    /// positioned there and it begins a line.
    pub fn new(src: S, stream_offset: u64, end: u64, starts_mid_line: bool) -> Self {
        LineReader {
            src,
            buf: BytesMut::new(),
            offset: stream_offset,
            end,
            eof: false,
            skip_partial: starts_mid_line,
            number: 0,
            max_line: MAX_LINE_BYTES,
        }
    }

    /// Lines longer than `max` bytes are handed out as `too_long` (tests use small limits).
    pub fn with_max_line(mut self, max: usize) -> Self {
        self.max_line = max;
        self
    }

    /// Lines read so far (blank ones included: they count for line numbers).
    pub fn lines_read(&self) -> u64 {
        self.number
    }

    async fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        match self.src.next_chunk().await? {
            Some(chunk) => {
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
            None => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    /// The next line that is not blank (blank lines are counted, not handed out), or `None`
    /// past the last line starting before `end`.
    pub async fn next_line(&mut self) -> io::Result<Option<Line>> {
        if self.skip_partial {
            // Discard through the first newline: that line belongs to the previous range.
            loop {
                if let Some(p) = memchr(&self.buf) {
                    self.buf.advance(p + 1);
                    self.offset += p as u64 + 1;
                    break;
                }
                self.offset += self.buf.len() as u64;
                self.buf.clear();
                if !self.fill().await? {
                    return Ok(None);
                }
            }
            self.skip_partial = false;
        }
        loop {
            if self.offset >= self.end {
                return Ok(None);
            }
            // Whole blank lines starting before `end` are counted and dropped, many at a time
            // (a file of a gigabyte of newlines is read at memory speed).
            let content = self
                .buf
                .iter()
                .position(|&b| !is_blank(b))
                .unwrap_or(self.buf.len());
            let room = usize::try_from(self.end - self.offset).unwrap_or(usize::MAX);
            if let Some(last_newline) = memrchr(&self.buf[..content.min(room)]) {
                let blank = self.buf.split_to(last_newline + 1);
                self.number += ::memchr::memchr_iter(b'\n', &blank).count() as u64;
                self.offset += blank.len() as u64;
                continue;
            }
            // (A blank line longer than the limit is read as a line, so the buffer stays small.)
            if content < self.buf.len() || self.buf.len() > self.max_line {
                let line = self.read_line().await?;
                // A blank line cut by the range's end (its newline lies past it) is counted too.
                if line.too_long || line.bytes.iter().any(|&b| !is_blank(b)) {
                    return Ok(Some(line));
                }
                continue;
            }
            // Only the start of a blank line is buffered: read on.
            if !self.fill().await? {
                if !self.buf.is_empty() {
                    // A last line of spaces without a newline: blank, but still a line.
                    self.offset += self.buf.len() as u64;
                    self.buf.clear();
                    self.number += 1;
                }
                return Ok(None);
            }
        }
    }

    /// Reads the line that starts at the front of the buffer (it starts before `end`), to its
    /// newline or the end of the stream, however far past `end` that is.
    async fn read_line(&mut self) -> io::Result<Line> {
        let line_start = self.offset;
        let mut scanned = 0;
        // Bytes of a line longer than `max_line` are dropped as they come, and counted here.
        let mut dropped: u64 = 0;
        loop {
            if let Some(p) = memchr(&self.buf[scanned..]).map(|p| p + scanned) {
                let bytes = self.buf.split_to(p + 1).freeze();
                return Ok(self.line(line_start, dropped, p, bytes.slice(..p), 1));
            }
            scanned = self.buf.len();
            if dropped + scanned as u64 > self.max_line as u64 {
                dropped += scanned as u64;
                self.buf.clear();
                scanned = 0;
            }
            if !self.fill().await? {
                let bytes = self.buf.split().freeze();
                return Ok(self.line(line_start, dropped, bytes.len(), bytes, 0));
            }
        }
    }

    /// Hands out a line of `dropped + kept` bytes (plus `newline`), moving the offset past it.
    fn line(&mut self, offset: u64, dropped: u64, kept: usize, bytes: Bytes, newline: u64) -> Line {
        let length = dropped + kept as u64;
        self.offset = offset + length + newline;
        self.number += 1;
        let too_long = length > self.max_line as u64;
        Line {
            offset,
            number: self.number,
            length,
            bytes: if too_long { Bytes::new() } else { bytes },
            too_long,
        }
    }
}

/// Bytes a blank line may hold (JSON's insignificant white space).
fn is_blank(b: u8) -> bool {
    matches!(b, b'\n' | b'\r' | b' ' | b'\t')
}

fn memrchr(haystack: &[u8]) -> Option<usize> {
    ::memchr::memrchr(b'\n', haystack)
}

fn memchr(haystack: &[u8]) -> Option<usize> {
    ::memchr::memchr(b'\n', haystack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    /// An in-memory byte source in fixed-size chunks (tests, small payloads).
    struct MemoryChunks {
        data: Bytes,
        chunk: usize,
    }

    impl MemoryChunks {
        fn new(data: Bytes, chunk: usize) -> Self {
            MemoryChunks {
                data,
                chunk: chunk.max(1),
            }
        }
    }

    #[async_trait]
    impl ChunkStream for MemoryChunks {
        async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
            if self.data.is_empty() {
                return Ok(None);
            }
            let n = self.chunk.min(self.data.len());
            Ok(Some(self.data.split_to(n)))
        }
    }

    /// Reads the lines a range owns from an in-memory file (the same rule blob ranges use).
    async fn lines_of_range(file: &Bytes, start: u64, end: u64, chunk: usize) -> Vec<Line> {
        let from = start.saturating_sub(1) as usize;
        let src = MemoryChunks::new(file.slice(from..), chunk);
        let mut reader = LineReader::new(src, from as u64, end, start > 0);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.expect("memory never fails") {
            out.push(line);
        }
        out
    }

    #[test]
    fn ranges_cover_the_file() {
        assert_eq!(cut_ranges(10, 4), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(cut_ranges(8, 4), vec![(0, 4), (4, 8)]);
        assert_eq!(cut_ranges(0, 4), vec![(0, 0)]);
        assert_eq!(cut_ranges(3, 100), vec![(0, 3)]);
    }

    /// For every range size and chunk size, the ranges together yield each line exactly once.
    #[tokio::test]
    async fn ranges_partition_lines_exactly() {
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!(
                "{{\"n\":{}}}\n",
                "x".repeat(i % 7) + &i.to_string()
            ));
            if i % 9 == 0 {
                text.push('\n');
            }
        }
        text.push_str("{\"last\":\"no newline\"}");
        let file = Bytes::from(text.clone());
        // Blank lines are counted, not handed out.
        let expected: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
        for range in [1u64, 2, 3, 7, 16, 33, 1000] {
            for chunk in [1usize, 5, 64] {
                let mut got = Vec::new();
                for (s, e) in cut_ranges(file.len() as u64, range) {
                    for line in lines_of_range(&file, s, e, chunk).await {
                        assert_eq!(
                            &file[line.offset as usize..line.offset as usize + line.bytes.len()],
                            &line.bytes[..]
                        );
                        got.push(String::from_utf8(line.bytes.to_vec()).unwrap());
                    }
                }
                assert_eq!(got, expected, "range {range} chunk {chunk}");
            }
        }
    }

    /// Every line of a file whose first byte lies in a range is handed out by exactly that
    /// range (or counted, when blank), with its absolute number, its length and whether it is
    /// over the limit: over random files of lines around the limit (blank, white-space and
    /// over-long lines among them), random range sizes and random chunk sizes.
    #[tokio::test]
    async fn every_line_is_handed_out_once_whatever_its_length_and_range() {
        use rand::{Rng, SeedableRng};
        const LIMIT: usize = 16;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for case in 0..400 {
            // The lines: (text, blank?) with lengths clustered around the limit.
            let mut lines: Vec<String> = Vec::new();
            for _ in 0..rng.random_range(1..30) {
                let line = match rng.random_range(0..6) {
                    0 => String::new(),
                    1 => " \r".repeat(rng.random_range(0..3)),
                    _ => {
                        let len = rng.random_range(1..=LIMIT * 2 + 2);
                        "x".repeat(len)
                    }
                };
                lines.push(line);
            }
            let mut text = lines.join("\n");
            if rng.random_bool(0.5) {
                text.push('\n');
            } else if lines.last().is_some_and(String::is_empty) {
                lines.pop(); // an empty last piece without a newline is no line
            }
            let file = Bytes::from(text);
            let range = rng.random_range(1..=file.len().max(1) as u64 + 3);
            let chunk = rng.random_range(1..=LIMIT * 3);
            let mut got = Vec::new();
            let mut base = 0u64;
            for (s, e) in cut_ranges(file.len() as u64, range) {
                let from = s.saturating_sub(1) as usize;
                let src = MemoryChunks::new(file.slice(from..), chunk);
                let mut reader = LineReader::new(src, from as u64, e, s > 0).with_max_line(LIMIT);
                while let Some(line) = reader.next_line().await.unwrap() {
                    assert!(line.offset >= s && line.offset < e.max(1), "case {case}");
                    got.push((base + line.number, line.length, line.too_long, line.bytes));
                }
                base += reader.lines_read();
            }
            assert_eq!(
                base,
                lines.len() as u64,
                "case {case}: every line counted once"
            );
            let expected: Vec<_> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let too_long = l.len() > LIMIT;
                    let bytes = if too_long {
                        Bytes::new()
                    } else {
                        Bytes::from(l.clone())
                    };
                    (i as u64 + 1, l.len() as u64, too_long, bytes)
                })
                .collect();
            assert_eq!(got, expected, "case {case}: range {range}, chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn a_file_of_blank_lines_is_counted_without_a_line_handed_out() {
        let file = Bytes::from("\n".repeat(3_000_000) + "  \r\n\t");
        let mut reader = LineReader::new(MemoryChunks::new(file, 1 << 16), 0, u64::MAX, false);
        assert!(reader.next_line().await.unwrap().is_none());
        assert_eq!(reader.lines_read(), 3_000_002);
    }
}
