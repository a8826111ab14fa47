//! A Group's members, read as its JSON arrives: a Group of ten million members is a reply of
//! hundreds of megabytes, which is never held. Its `member[].entity.reference`s are decoded one
//! member at a time (serde, on a blocking thread), and the patient ids go to the export's ids
//! blobs in chunks of `FHIRBULK_EXPORT_IDS_PER_CHUNK`, as a paged query's ids do at its checkpoints.
//!
//! The blobs written are a function of the Group alone (the n-th chunk is `ids-<n>`), so a
//! step that dies while reading starts again and writes the same blobs; the job row records
//! them only once the whole Group is read.

use std::fmt;
use std::io::{self, BufReader, Read};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tokio::sync::mpsc;
use url::Url;

use super::gather::ids_blob;
use super::patients::patient_id_from_reference;
use super::{ExportError, Exporter};
use crate::fhir::Streamed;
use crate::storage::stream::{ChunkRead, ChunkStream};

/// What reading a Group found: ids blobs written, ids in them, references skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Members {
    pub blobs: i64,
    pub ids: i64,
    pub skipped: i64,
}

/// Whether a patient query is the read of one Group (`Group/{id}`).
pub fn is_group_read(query: &str) -> bool {
    let mut parts = query.split('/');
    parts.next() == Some("Group")
        && parts
            .next()
            .is_some_and(|id| !id.is_empty() && !id.contains('?'))
        && parts.next().is_none()
}

/// Reads the Group at `url` and writes its member ids to export `export`'s ids blobs.
pub async fn gather(ex: &Exporter, export: &str, url: &Url) -> Result<Members, ReadError> {
    let reply = ex.fhir.get_streamed(url).await.map_err(ReadError::Fhir)?;
    let (tx, mut rx) = mpsc::channel::<Vec<String>>(2);
    let base = ex.fhir.base().clone();
    let per_blob = ex.settings.ids_per_chunk;
    let reader = tokio::task::spawn_blocking(move || {
        let read: Box<dyn Read> = match reply {
            Streamed::Body(resp) => Box::new(ChunkRead::new(ResponseChunks(resp))),
            Streamed::Whole(bytes) => Box::new(io::Cursor::new(bytes)),
        };
        let mut chunk = Vec::with_capacity(per_blob.min(65_536));
        let mut skipped = 0i64;
        // `false` (stop reading) once the writer is gone: it failed, and the step is retried.
        let mut sink = |id: Option<String>| match id {
            Some(id) => {
                chunk.push(id);
                if chunk.len() < per_blob {
                    return true;
                }
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(per_blob.min(65_536)));
                tx.blocking_send(full).is_ok()
            }
            None => {
                skipped += 1;
                true
            }
        };
        let result = read_members(BufReader::with_capacity(64 * 1024, read), &base, &mut sink);
        if result.is_ok() && !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        result.map(|()| skipped)
    });
    let mut found = Members::default();
    while let Some(ids) = rx.recv().await {
        let name = ids_blob(export, found.blobs);
        found.ids += ids.len() as i64;
        ex.blobs
            .upload(&ex.settings.container, &name, Bytes::from(ids.join("\n")))
            .await
            .map_err(|e| ReadError::Retry(e.into()))?;
        found.blobs += 1;
    }
    found.skipped = reader
        .await
        .map_err(|e| ReadError::Invalid(format!("the Group reader stopped: {e}")))?
        .map_err(ReadError::Invalid)?;
    Ok(found)
}

/// Why a Group could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The server refused or failed the read.
    Fhir(crate::fhir::FhirError),
    /// Storage failed: try the step again.
    Retry(ExportError),
    /// The reply is no Group, or not JSON.
    Invalid(String),
}

struct ResponseChunks(reqwest::Response);

#[async_trait]
impl ChunkStream for ResponseChunks {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        self.0.chunk().await.map_err(io::Error::other)
    }
}

/// Decodes a Group from `read`, giving `sink` each member's patient id (`None` for a member
/// that is no Patient of this server); stops when `sink` answers `false`.
pub fn read_members(
    read: impl Read,
    base: &Url,
    sink: &mut dyn FnMut(Option<String>) -> bool,
) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_reader(read);
    GroupSeed { base, sink }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| format!("the Group could not be read: {e}"))
}

struct GroupSeed<'a> {
    base: &'a Url,
    sink: &'a mut dyn FnMut(Option<String>) -> bool,
}

impl<'de> DeserializeSeed<'de> for GroupSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for GroupSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Group resource")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "resourceType" => {
                    let kind: String = map.next_value()?;
                    if kind != "Group" {
                        return Err(serde::de::Error::custom(format!(
                            "it is a {kind}, not a Group"
                        )));
                    }
                }
                "member" => map.next_value_seed(MembersSeed {
                    base: self.base,
                    sink: &mut *self.sink,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct MembersSeed<'a> {
    base: &'a Url,
    sink: &'a mut dyn FnMut(Option<String>) -> bool,
}

#[derive(Deserialize)]
struct Member {
    entity: Option<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    reference: Option<String>,
}

impl<'de> DeserializeSeed<'de> for MembersSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MembersSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of Group members")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(member) = seq.next_element::<Member>()? {
            let id = member
                .entity
                .and_then(|e| e.reference)
                .and_then(|r| patient_id_from_reference(&r, self.base));
            if !(self.sink)(id) {
                return Err(serde::de::Error::custom(
                    "reading stopped: its ids cannot be written",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(json: &str) -> Result<(Vec<String>, usize), String> {
        let base = Url::parse("http://fhir.example/fhir").unwrap();
        let mut ids = Vec::new();
        let mut skipped = 0;
        read_members(json.as_bytes(), &base, &mut |id| {
            match id {
                Some(id) => ids.push(id),
                None => skipped += 1,
            }
            true
        })?;
        Ok((ids, skipped))
    }

    #[test]
    fn reading_stops_when_the_ids_cannot_be_written() {
        let base = Url::parse("http://fhir.example/fhir").unwrap();
        let group = r#"{"resourceType":"Group","member":[{"entity":{"reference":"Patient/a"}},
            {"entity":{"reference":"Patient/b"}},{"entity":{"reference":"Patient/c"}}]}"#;
        let mut seen = 0;
        let err = read_members(group.as_bytes(), &base, &mut |_| {
            seen += 1;
            false
        })
        .unwrap_err();
        assert_eq!(seen, 1, "no member is read after the sink says stop");
        assert!(err.contains("stopped"), "{err}");
    }

    #[test]
    fn members_are_read_one_at_a_time_as_patient_ids() {
        let (ids, skipped) = members(
            r#"{"resourceType":"Group","id":"g","text":{"div":"<div/>"},"member":[
                {"entity":{"reference":"Patient/a"}},
                {"entity":{"reference":"http://fhir.example/fhir/Patient/b"},"period":{"start":"2020"}},
                {"entity":{"reference":"Device/d"}},
                {"entity":{"display":"no reference"}},
                {"entity":{"reference":"http://other.example/Patient/c"}}],"actual":true}"#,
        )
        .unwrap();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(skipped, 3);
    }

    #[test]
    fn a_reply_that_is_no_group_says_so() {
        assert!(
            members(r#"{"resourceType":"Patient","id":"p"}"#)
                .unwrap_err()
                .contains("not a Group")
        );
        assert!(members(r#"{"resourceType":"Group","member":[{"entity":"#).is_err());
        assert!(
            is_group_read("Group/g1")
                && !is_group_read("Group?name=x")
                && !is_group_read("Group/g1/x")
        );
    }
}
