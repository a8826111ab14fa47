//! NDJSON: cutting a file into byte ranges, reading the lines a range owns, and turning a line
//! into a `PUT Type/id` batch entry.
//!
//! A line belongs to the range that holds its first byte. A range that does not start at 0
//! skips the partial line it starts in, and every range reads past its end to finish its last
//! line; so ranges processed independently see every line exactly once.

use std::borrow::Cow;
use std::io;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::Value;

use super::references::{is_fhir_id, is_resource_type};
use super::transform::derived_id;

/// Longest line accepted; a longer one is reported as invalid and skipped.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

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

/// A source of consecutive bytes (a blob read in ranges, a decompressor, a zip entry).
#[async_trait]
pub trait ChunkStream: Send {
    /// The next bytes, or `None` at the end.
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>>;
}

/// One line as read: where it starts, its 1-based number within this reader, its bytes.
#[derive(Debug, Clone)]
pub struct Line {
    pub offset: u64,
    pub number: u64,
    pub bytes: Bytes,
    /// The line exceeded `MAX_LINE_BYTES`; `bytes` is empty.
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
        }
    }

    /// Lines read so far.
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
        let mut scanned = 0;
        let mut too_long = false;
        loop {
            if self.offset >= self.end {
                return Ok(None);
            }
            if let Some(p) = memchr(&self.buf[scanned..]).map(|p| p + scanned) {
                let line_start = self.offset;
                let bytes = self.buf.split_to(p + 1).freeze();
                self.offset += p as u64 + 1;
                self.number += 1;
                let bytes = if too_long {
                    Bytes::new()
                } else {
                    bytes.slice(..p)
                };
                return Ok(Some(Line {
                    offset: line_start,
                    number: self.number,
                    bytes,
                    too_long,
                }));
            }
            scanned = self.buf.len();
            if scanned > MAX_LINE_BYTES {
                // Keep counting offsets, drop the bytes.
                too_long = true;
                self.offset += scanned as u64;
                self.buf.clear();
                scanned = 0;
            }
            if !self.fill().await? {
                if self.buf.is_empty() && !too_long {
                    return Ok(None);
                }
                let line_start = self.offset;
                let bytes = self.buf.split().freeze();
                self.offset += bytes.len() as u64;
                self.number += 1;
                return Ok(Some(Line {
                    offset: line_start,
                    number: self.number,
                    bytes: if too_long { Bytes::new() } else { bytes },
                    too_long,
                }));
            }
        }
    }
}

fn memchr(haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == b'\n')
}

/// What one NDJSON line becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedLine {
    /// A batch entry (`PUT Type/id`) as serialised JSON.
    Entry {
        target: String,
        json: String,
    },
    Invalid(String),
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType", borrow, default)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// Parses one line; `None` for a blank line (not an error: files often end with one).
pub fn parse_line(raw: &[u8]) -> Option<ParsedLine> {
    let line = trim_ascii(raw);
    if line.is_empty() {
        return None;
    }
    let head: Head = match serde_json::from_slice(line) {
        Ok(h) => h,
        Err(e) => {
            return Some(ParsedLine::Invalid(format!(
                "not a JSON object: {}",
                e.to_string().split(" at line").next().unwrap_or_default()
            )));
        }
    };
    let Some(resource_type) = head.resource_type.filter(|t| is_resource_type(t)) else {
        return Some(ParsedLine::Invalid(
            "the JSON object has no valid resourceType".into(),
        ));
    };
    let text = std::str::from_utf8(line).expect("serde_json accepted it, so it is UTF-8");
    let (target, resource) = match head.id {
        Some(id) if is_fhir_id(&id) => (format!("{resource_type}/{id}"), Cow::Borrowed(text)),
        Some(id) => {
            return Some(ParsedLine::Invalid(format!(
                "id {id:?} is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)"
            )));
        }
        None => {
            // No id: derive one from the content so a re-upload maps to the same resource.
            let mut value: Value = serde_json::from_slice(line).expect("parsed above");
            let id = derived_id(&format!("{resource_type}#{text}"));
            value["id"] = Value::String(id.clone());
            (
                format!("{resource_type}/{id}"),
                Cow::Owned(value.to_string()),
            )
        }
    };
    let json =
        format!(r#"{{"resource":{resource},"request":{{"method":"PUT","url":"{target}"}}}}"#);
    Some(ParsedLine::Entry { target, json })
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// A batch Bundle from serialised entries, without re-parsing them.
pub fn batch_bundle_json<'a>(entries: impl IntoIterator<Item = &'a str>) -> String {
    let mut s = String::from(r#"{"resourceType":"Bundle","type":"batch","entry":["#);
    for (i, e) in entries.into_iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(e);
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let expected: Vec<&str> = text.split('\n').collect();
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

    #[test]
    fn lines_become_put_entries() {
        let p = parse_line(br#"{"resourceType":"Patient","id":"p1","name":[{"family":"X"}]}"#);
        let Some(ParsedLine::Entry { target, json }) = p else {
            panic!("{p:?}")
        };
        assert_eq!(target, "Patient/p1");
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["request"]["url"], "Patient/p1");
        assert_eq!(v["request"]["method"], "PUT");
        assert_eq!(v["resource"]["name"][0]["family"], "X");
        let bundle: Value =
            serde_json::from_str(&batch_bundle_json([json.as_str(), json.as_str()])).unwrap();
        assert_eq!(bundle["entry"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn bad_lines_say_why_and_blank_lines_are_skipped() {
        assert_eq!(parse_line(b"   \r"), None);
        let bad = |l: &[u8]| match parse_line(l) {
            Some(ParsedLine::Invalid(r)) => r,
            other => panic!("{other:?}"),
        };
        assert!(bad(b"{\"resourceType\": \"Patient\"").contains("not a JSON object"));
        assert!(bad(b"[1,2]").contains("not a JSON object"));
        assert!(bad(b"{\"id\":\"x\"}").contains("resourceType"));
        assert!(
            bad(b"{\"resourceType\":\"Patient\",\"id\":\"a b\"}").contains("not a valid FHIR id")
        );
    }

    #[test]
    fn lines_without_id_get_a_stable_derived_id() {
        let line = br#"{"resourceType":"Observation","status":"final"}"#;
        let a = parse_line(line).unwrap();
        assert_eq!(a, parse_line(line).unwrap());
        let ParsedLine::Entry { target, json } = a else {
            panic!()
        };
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            format!("Observation/{}", v["resource"]["id"].as_str().unwrap()),
            target
        );
    }
}
