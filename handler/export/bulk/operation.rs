//! The HTTP side of a standard export, independent of how a request arrives: the kick-off
//! (202 with `Content-Location`), the status URL (`GET`: 202 with `X-Progress` and
//! `Retry-After`, 429 when polled too often, 200 with the manifest, 500 for a failed export,
//! 404 once deleted; `DELETE`: cancel and remove, 202) and the files the manifest lists,
//! downloaded through the loader with the same key as the kick-off (`requiresAccessToken`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Level;
use super::plan::plan;
use super::request::KickOff;
use crate::export::ExportKind;
use crate::export::Exporter;
use crate::export::control::{
    Links, Reply, STATUS_HOLD, failed, hold_while_running, load, purge, running_status,
    stored_manifest,
};
use crate::export::state::JobStatus;
use crate::fhir::batch_response::operation_outcome;
use crate::import::references::is_fhir_id;

/// The status path of export `id`, below the public base URL.
pub fn status_path(id: &str) -> String {
    format!("$export-status/{id}")
}

/// The download path of file `name` of export `id`.
pub fn file_path(id: &str, name: &str) -> String {
    format!("$export-file/{id}/{name}")
}

/// `[base]/$export`, `[base]/Patient/$export`, `[base]/Group/{id}/$export`.
pub async fn kick_off(ex: &Exporter, level: Level, request: &KickOff, links: &Links) -> Reply {
    if let Level::Group(id) = &level
        && !is_fhir_id(id)
    {
        return Reply::outcome(
            404,
            "not-found",
            &format!("{id:?} is not a FHIR id (letters, digits, '-' and '.', at most 64)"),
        );
    }
    let asked = match request.asked() {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    let caps = match ex.capabilities().await {
        Ok(c) => c,
        Err(e) => return capabilities_unavailable(&e),
    };
    let (definition, listed) = match plan(level, &asked, &caps) {
        Ok(planned) => planned,
        Err(reply) => return reply,
    };
    let first_page = match (&definition.patient_query, listed.is_empty()) {
        (Some(query), true) => Some(ex.search_url(query)),
        _ => None,
    };
    let id = match ex
        .open_job(
            ExportKind::Bulk,
            definition.to_json_text(),
            &request_without_key(&request.url),
            first_page,
            &listed,
            None,
        )
        .await
    {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let status = links.url(&status_path(&id));
    Reply::new(
        202,
        operation_outcome(
            "information",
            "informational",
            &format!("export {id} accepted; poll {status}"),
        ),
    )
    .header("Content-Location", status)
}

/// 503 when the FHIR server's CapabilityStatement, which a kick-off and `GET metadata` need,
/// cannot be read.
pub fn capabilities_unavailable(e: &crate::fhir::FhirError) -> Reply {
    Reply::outcome(
        503,
        "transient",
        &format!(
            "the FHIR server's CapabilityStatement (GET metadata) could not be read ({e}); try again"
        ),
    )
    .header("Retry-After", "10")
}

/// The kick-off URL for the manifest's `request`, without a function key.
fn request_without_key(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "code")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    parsed.to_string()
}

/// When each running export may be polled again: a client polling sooner than half the
/// `Retry-After` it was given is answered 429 (per process: each instance paces the polls
/// it answers).
#[derive(Default)]
pub struct PollPacer(std::sync::Mutex<HashMap<String, Instant>>);

impl PollPacer {
    /// `Some(seconds to wait)` when `id` is polled too early.
    fn too_early(&self, id: &str) -> Option<u64> {
        let map = self.0.lock().expect("poll pacer lock");
        let not_before = *map.get(id)?;
        let now = Instant::now();
        (now < not_before).then(|| (not_before - now).as_secs_f64().ceil().max(1.0) as u64)
    }

    fn answered(&self, id: &str, retry_after_secs: u64) {
        let mut map = self.0.lock().expect("poll pacer lock");
        if map.len() > 10_000 {
            let now = Instant::now();
            map.retain(|_, t| *t > now);
        }
        map.insert(
            id.to_string(),
            Instant::now() + Duration::from_millis(retry_after_secs * 500),
        );
    }

    fn forget(&self, id: &str) {
        self.0.lock().expect("poll pacer lock").remove(id);
    }
}

/// The job of a standard export, or the 404 for anything else.
async fn bulk_job(
    ex: &Exporter,
    id: &str,
) -> Result<
    (
        crate::storage::Row<crate::export::state::ExportJob>,
        JobStatus,
    ),
    Reply,
> {
    let not_found = || {
        Reply::outcome(
            404,
            "not-found",
            &format!("no $export {id}: it was never started here, or it was deleted"),
        )
    };
    match load(ex, id).await {
        Ok((job, _)) if job.data.kind != ExportKind::Bulk => Err(not_found()),
        Ok(found) => Ok(found),
        Err(reply) if reply.status == 404 => Err(not_found()),
        Err(reply) => Err(reply),
    }
}

/// `GET [base]/$export-status/{id}`.
pub async fn status(ex: &Exporter, id: &str, links: &Links) -> Reply {
    if let Err(reply) = bulk_job(ex, id).await {
        return reply;
    }
    if let Some(wait) = ex.polls.too_early(id) {
        return Reply::outcome(
            429,
            "throttled",
            &format!("export {id} was polled too soon; wait the Retry-After before polling again"),
        )
        .header("Retry-After", wait.to_string());
    }
    hold_while_running(ex, id, STATUS_HOLD).await;
    let (job, status) = match bulk_job(ex, id).await {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    match status {
        JobStatus::Completed | JobStatus::CompletedWithErrors => {
            ex.polls.forget(id);
            manifest(ex, id, status, links).await
        }
        JobStatus::Failed => {
            ex.polls.forget(id);
            failed(id, &job.data)
        }
        JobStatus::Terminated => Reply::outcome(
            404,
            "not-found",
            &format!("export {id} was cancelled; delete it with DELETE on this URL"),
        ),
        running => {
            let reply = running_status(ex, id, &job.data, running).await;
            let wait = reply
                .headers
                .get("Retry-After")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            ex.polls.answered(id, wait);
            reply
        }
    }
}

/// The stored manifest with each file's URL on the loader (the blobs themselves need the
/// storage key).
async fn manifest(ex: &Exporter, id: &str, status: JobStatus, links: &Links) -> Reply {
    let mut body = match stored_manifest(ex, id, status).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let marker = format!("/{id}/");
    for list in ["output", "error"] {
        for file in body
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let relative = file
                .get("url")
                .and_then(Value::as_str)
                .and_then(|u| u.rsplit_once(&marker))
                .map(|(_, name)| name.to_string());
            if let Some(relative) = relative {
                file["url"] = json!(links.url(&file_path(id, &relative)));
            }
        }
    }
    Reply::new(200, body)
}

/// `DELETE [base]/$export-status/{id}`: cancels a running export and removes its files and
/// state; the status URL answers 404 from then on.
pub async fn cancel(ex: &Exporter, id: &str) -> Reply {
    if let Err(reply) = bulk_job(ex, id).await {
        return reply;
    }
    let purged = purge(ex, id).await;
    if purged.status >= 300 {
        return purged;
    }
    ex.polls.forget(id);
    Reply::new(
        202,
        operation_outcome(
            "information",
            "informational",
            &format!("export {id} is cancelled and its files are deleted"),
        ),
    )
}

/// A file an export wrote, checked for download: its blob name and size.
#[derive(Debug)]
pub struct Download {
    pub blob: String,
    pub size: u64,
}

/// `GET [base]/$export-file/{id}/{name}`: the file, if the export is complete and lists it.
pub async fn file(
    ex: &Exporter,
    id: &str,
    name: &str,
    accept: Option<&str>,
) -> Result<Download, Reply> {
    let accept = accept.unwrap_or("*/*");
    let ndjson = accept.split(',').any(|v| {
        matches!(
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .as_str(),
            "application/fhir+ndjson" | "application/ndjson" | "ndjson" | "*/*" | "application/*"
        )
    });
    if !ndjson {
        return Err(Reply::outcome(
            406,
            "not-supported",
            &format!("files are application/fhir+ndjson; Accept was {accept:?}"),
        ));
    }
    let (_, status) = bulk_job(ex, id).await?;
    let listed = name.ends_with(".ndjson")
        && !name.starts_with('_')
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != ".." && seg != "." && !seg.contains('\\'));
    if !matches!(
        status,
        JobStatus::Completed | JobStatus::CompletedWithErrors
    ) || !listed
    {
        return Err(Reply::outcome(
            404,
            "not-found",
            &format!(
                "export {id} has no file {name:?} (files are listed in its manifest once it is complete)"
            ),
        ));
    }
    let blob = Exporter::blob_name(id, name);
    match ex.blobs.properties(&ex.settings.container, &blob).await {
        Ok(Some(entry)) => Ok(Download {
            blob,
            size: entry.size,
        }),
        Ok(None) => Err(Reply::outcome(
            404,
            "not-found",
            &format!("export {id} has no file {name:?}"),
        )),
        Err(e) => Err(Reply::unavailable("export files", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_request_drops_the_function_key() {
        assert_eq!(
            request_without_key("https://app.example/$export?_type=Patient&code=secret"),
            "https://app.example/$export?_type=Patient"
        );
        assert_eq!(
            request_without_key("https://app.example/Group/g1/$export?code=secret"),
            "https://app.example/Group/g1/$export"
        );
    }

    #[test]
    fn a_poll_sooner_than_half_the_retry_after_is_too_early() {
        let pacer = PollPacer::default();
        assert_eq!(pacer.too_early("a"), None);
        pacer.answered("a", 4);
        assert_eq!(pacer.too_early("a"), Some(2));
        pacer.forget("a");
        assert_eq!(pacer.too_early("a"), None);
        pacer.answered("b", 0);
        assert_eq!(pacer.too_early("b"), None);
    }
}
