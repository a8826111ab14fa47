//! The export's HTTP surface, independent of how a request arrives (Functions host or
//! `serve`): start, status, terminate, purge and the listing. Every answer is a [`Reply`].

use serde::Serialize;
use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;
use tracing::info;

use super::all::AllDefinition;
use super::definition::ExportDefinition;
use super::finish::MANIFEST_NAME;
use super::state::{ExportJob, JobStatus, Progress};
use super::{ExportKind, ExportWork, Exporter, valid_export_id};
pub use crate::protocol::reply::Reply;
use crate::storage::Row;

/// Most seconds a client is asked to wait between status polls.
pub const STATUS_RETRY_AFTER_MAX_SECS: u64 = 5;

/// Seconds a client is asked to wait before polling an export running for `age` again: one
/// while it is young (a small export is done within seconds, and waiting 5 s more for the
/// answer would double its time), then a tenth of its age, up to
/// `STATUS_RETRY_AFTER_MAX_SECS`: a client never waits more than about a tenth of the time
/// the export took.
pub fn status_retry_after(age: std::time::Duration) -> u64 {
    (age.as_secs() / 10).clamp(1, STATUS_RETRY_AFTER_MAX_SECS)
}
/// Largest definition accepted (it is stored in one table property).
const MAX_DEFINITION_BYTES: usize = 30_000;

/// What `Reply::unavailable` names.
const STATE: &str = "export state";

/// Where the answer's links point: the public base URL of the function app (scheme, host,
/// optional port) and the function key to carry along, if the request had one.
#[derive(Debug, Clone, Default)]
pub struct Links {
    pub base: String,
    pub code: Option<String>,
}

impl Links {
    /// Links under the app's public base URL (`FHIRBULK_PUBLIC_BASE_URL`: never the request's
    /// Host header), carrying the function key the request came with (`code` in the URL the
    /// caller used, `https://app.azurewebsites.net/$alt-export?code=...`).
    pub fn new(public_base: &str, request_url: &str) -> Self {
        let code = url::Url::parse(request_url).ok().and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned())
        });
        Links {
            base: public_base.trim_end_matches('/').to_string(),
            code,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        let mut url = format!("{}/{path}", self.base);
        if let Some(code) = &self.code {
            url.push_str("?code=");
            url.push_str(
                &percent_encoding::utf8_percent_encode(code, percent_encoding::NON_ALPHANUMERIC)
                    .to_string(),
            );
        }
        url
    }

    fn status(&self, id: &str) -> String {
        self.url(&format!("$alt-export/{id}"))
    }
}

/// `POST /$alt-export` (`kind` Patients) or `POST /$alt-export-all` (`kind` All): checks the
/// definition, applies the concurrency cap, records the export and queues its first step. `id`
/// is given for trigger files (derived from the file, so a repeated event starts nothing new).
pub async fn start(
    ex: &Exporter,
    kind: ExportKind,
    body: &str,
    links: &Links,
    request: &str,
    id: Option<String>,
) -> Reply {
    if body.len() > MAX_DEFINITION_BYTES {
        return Reply::outcome(
            400,
            "too-long",
            &format!(
                "the query definition is {} bytes; at most {MAX_DEFINITION_BYTES} are accepted",
                body.len()
            ),
        );
    }
    // The definition as stored, and for a patient export the first page of its query.
    let parsed = match kind {
        ExportKind::Patients => ExportDefinition::parse(body, ex.fhir.base())
            .map(|d| (d.to_json(), Some(ex.search_url(&d.query)))),
        ExportKind::All => AllDefinition::parse(
            body,
            ex.fhir.base(),
            ex.fhir.audience(),
            time::OffsetDateTime::now_utc(),
        )
        .map(|d| (d.to_json(), None)),
        ExportKind::Bulk => {
            Err("a $export starts at [base]/$export, Patient/$export or Group/{id}/$export".into())
        }
    };
    let (definition, query_page) = match parsed {
        Ok(d) => d,
        Err(why) => return Reply::outcome(400, "invalid", &why),
    };
    let id = match ex
        .open_job(kind, definition.to_string(), request, query_page, &[], id)
        .await
    {
        Ok(id) => id,
        Err(reply) => return reply,
    };
    let status_uri = links.status(&id);
    Reply::new(
        202,
        json!({
            "id": id,
            "statusQueryGetUri": status_uri,
            "terminatePostUri": links.url(&format!("$alt-export/{id}/terminate")),
            "purgeHistoryDeleteUri": status_uri,
        }),
    )
    .header("Content-Location", status_uri)
}

impl Exporter {
    /// Records a new export and queues its first step, within the cap on running exports
    /// (429 beyond it): the id (given for trigger files, whose events may repeat) or the
    /// answer to give. `listed_ids` are patients given by the request: they are the export's
    /// gathered ids, and no query is paged for them.
    pub(crate) async fn open_job(
        &self,
        kind: ExportKind,
        definition: String,
        request: &str,
        first_page: Option<String>,
        listed_ids: &[String],
        id: Option<String>,
    ) -> Result<String, Reply> {
        if self.settings.max_exports > 0 {
            let running = match self.store.jobs().await {
                Ok(jobs) => jobs.iter().filter(|j| j.data.status.is_running()).count(),
                Err(e) => return Err(Reply::unavailable(STATE, e)),
            };
            if running >= self.settings.max_exports {
                return Err(Reply::new(
                    429,
                    json!({"error": format!(
                        "Unable to start export: {running} exports are running and at most {} may run at once (FHIRBULK_MAX_EXPORTS); try again when one finishes",
                        self.settings.max_exports
                    )}),
                )
                .header("Retry-After", "60"));
            }
        }
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let mut row = ExportJob::start(kind, definition, request, first_page);
        if !listed_ids.is_empty() {
            let ids = bytes::Bytes::from(listed_ids.join("\n"));
            let name = super::gather::ids_blob(&id, 0);
            if let Err(e) = self
                .blobs
                .upload(&self.settings.container, &name, ids)
                .await
            {
                return Err(Reply::unavailable(STATE, e));
            }
            row.gather_seq = 1;
            row.ids_found = listed_ids.len() as i64;
        }
        // The first step is queued before the job row exists; it waits for the row (see gather).
        if let Err(e) = self
            .enqueue(&ExportWork::Gather { export: id.clone() })
            .await
        {
            return Err(Reply::unavailable(STATE, e));
        }
        match self
            .store
            .insert(&Row::new(&id, super::state::JOB_ROW, row))
            .await
        {
            Ok(Some(_)) => info!(message = "Export started.", export = %id, kind = kind.as_str()),
            Ok(None) => {} // the same trigger file again: the export exists already
            Err(e) => return Err(Reply::unavailable(STATE, e)),
        }
        Ok(id)
    }
}

pub(crate) async fn load(ex: &Exporter, id: &str) -> Result<(Row<ExportJob>, JobStatus), Reply> {
    if !valid_export_id(id) {
        return Err(Reply::outcome(
            404,
            "not-found",
            &format!(
                "{id:?} is not an export id (ids are the \"id\" of the answer to POST /$alt-export)"
            ),
        ));
    }
    match ex.job(id).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(Reply::outcome(
            404,
            "not-found",
            &format!("no export {id}: it was never started here, or it was purged"),
        )),
        Err(e) => Err(Reply::unavailable(STATE, e)),
    }
}

/// `GET /$alt-export/{id}`: 202 with `X-Progress` while running, 200 with the manifest when
/// finished, an OperationOutcome when failed or terminated.
/// How long a status request of a running export is held, waiting for it to finish, before it
/// answers 202: a small export's client gets its manifest when the export is done, not at its
/// next poll (which a `Retry-After` of whole seconds puts a second or more later).
pub const STATUS_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

/// The status a client polls (`GET /$alt-export/{id}`): `status`, after holding the request
/// up to `hold` while the export runs: its job row is read again when an export of this
/// process ends, and every 100 ms for one another instance runs.
pub async fn status_after_hold(ex: &Exporter, id: &str, hold: std::time::Duration) -> Reply {
    hold_while_running(ex, id, hold).await;
    status(ex, id).await
}

/// Waits up to `hold` while export `id` runs (or until it cannot be read).
pub(crate) async fn hold_while_running(ex: &Exporter, id: &str, hold: std::time::Duration) {
    let until = tokio::time::Instant::now() + hold;
    while tokio::time::Instant::now() < until {
        let ended = ex.ended.notified();
        match ex.job(id).await {
            Ok(Some((_, status))) if status.is_running() => {}
            _ => break,
        }
        tokio::select! {
            _ = ended => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
}

/// An export's status: its manifest (200) once completed, where it is (202) while it runs,
/// why it failed or was refused.
pub async fn status(ex: &Exporter, id: &str) -> Reply {
    let (job, status) = match load(ex, id).await {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    match status {
        JobStatus::Completed | JobStatus::CompletedWithErrors => {
            match stored_manifest(ex, id, status).await {
                Ok(body) => Reply::new(200, body),
                Err(reply) => reply,
            }
        }
        // The server refused the definition's own search: the definition is at fault (400),
        // not the loader or the server (500).
        JobStatus::Failed if job.data.refused_status > 0 => Reply::outcome(
            400,
            "invalid",
            &format!(
                "export {id} failed: the FHIR server refused its search (HTTP {}): {}; fix the definition and start a new export",
                job.data.refused_status,
                job.data.error.as_deref().unwrap_or("no reason recorded")
            ),
        ),
        JobStatus::Failed => failed(id, &job.data),
        JobStatus::Terminated => Reply::outcome(
            410,
            "deleted",
            &format!(
                "export {id} was terminated at {}; files written before that stay until it is purged (DELETE /$alt-export/{id})",
                job.data.terminated.as_deref().unwrap_or_default()
            ),
        ),
        running => running_status(ex, id, &job.data, running).await,
    }
}

/// The manifest a completed export wrote (`_completed_run.json`), or the answer to give when
/// it cannot be read.
pub(crate) async fn stored_manifest(
    ex: &Exporter,
    id: &str,
    status: JobStatus,
) -> Result<Value, Reply> {
    let name = Exporter::blob_name(id, MANIFEST_NAME);
    match ex.blobs.read_all(&ex.settings.container, &name).await {
        Ok(Some((_, bytes))) => serde_json::from_slice(&bytes).map_err(|e| {
            Reply::outcome(
                500,
                "exception",
                &format!(
                    "export {id} is {} but its manifest {name} is not valid JSON ({e}); its files are in the {} container under {id}/",
                    status.as_str(),
                    ex.settings.container
                ),
            )
        }),
        Ok(None) => Err(Reply::outcome(
            500,
            "not-found",
            &format!(
                "export {id} is {} but its manifest {name} is missing",
                status.as_str()
            ),
        )),
        Err(e) => Err(Reply::unavailable(STATE, e)),
    }
}

/// 500 for a failed export, with the reason recorded on its job row.
pub(crate) fn failed(id: &str, job: &ExportJob) -> Reply {
    Reply::outcome(
        500,
        "exception",
        &format!(
            "export {id} failed: {}",
            job.error.as_deref().unwrap_or("no reason recorded")
        ),
    )
}

/// `POST /$alt-export/{id}/terminate`: stops scheduling; work in flight stops at its next page.
pub async fn terminate(ex: &Exporter, id: &str) -> Reply {
    loop {
        let (mut job, status) = match load(ex, id).await {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        if !status.is_running() {
            return Reply::new(
                200,
                json!({"id": id, "status": status.as_str(), "message": format!("export {id} had already ended ({}); nothing to terminate", status.as_str())}),
            );
        }
        job.data.terminate();
        match ex.store.replace_if_unchanged(&mut job).await {
            Ok(true) => {
                info!(message = "Export terminated.", export = %id);
                return Reply::new(
                    200,
                    json!({"id": id, "status": "terminated", "message": format!("export {id} terminated; purge it with DELETE /$alt-export/{id}")}),
                );
            }
            Ok(false) => continue, // changed meanwhile: look again
            Err(e) => return Reply::unavailable(STATE, e),
        }
    }
}

/// `GET /$alt-export-manage/{id}?action=terminate`: fhir-loader's terminate URL, kept so its
/// users' scripts work (fhir-loader terminates whatever the action; other actions are refused
/// here rather than mistaken for a terminate).
pub async fn manage(ex: &Exporter, id: &str, action: Option<&str>) -> Reply {
    match action.map(str::trim).unwrap_or_default() {
        "" => terminate(ex, id).await,
        a if a.eq_ignore_ascii_case("terminate") => terminate(ex, id).await,
        other => Reply::outcome(
            400,
            "not-supported",
            &format!(
                "action {other:?} is not supported: $alt-export-manage only terminates (action=terminate); purge with DELETE /$alt-export/{id}"
            ),
        ),
    }
}

/// `DELETE /$alt-export/{id}`: terminates if running, then deletes its files and its state.
pub async fn purge(ex: &Exporter, id: &str) -> Reply {
    let (_, status) = match load(ex, id).await {
        Ok(found) => found,
        Err(reply) => return reply,
    };
    if status.is_running() {
        let reply = terminate(ex, id).await;
        if reply.status >= 500 {
            return reply;
        }
    }
    let blobs = match ex
        .blobs
        .delete_prefix(&ex.settings.container, &format!("{id}/"))
        .await
    {
        Ok(n) => n,
        Err(e) => return Reply::unavailable(STATE, e),
    };
    if let Err(e) = ex.store.delete_export(id).await {
        return Reply::unavailable(STATE, e);
    }
    info!(message = "Export purged.", export = %id, blobs);
    Reply::new(
        200,
        json!({"id": id, "purged": true, "blobsDeleted": blobs, "message": format!("export {id}, its files and its state are deleted")}),
    )
}

/// `GET /$alt-export-status`: every export, newest first (fhir-loader's fields plus ours).
pub async fn list(ex: &Exporter, links: &Links) -> Reply {
    let jobs = match ex.store.jobs().await {
        Ok(j) => j,
        Err(e) => return Reply::unavailable(STATE, e),
    };
    let now = time::OffsetDateTime::now_utc();
    let mut items: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let id = job.partition_key.as_str();
            let created = job.data.created.as_str();
            let elapsed = time::OffsetDateTime::parse(
                created,
                &time::format_description::well_known::Rfc3339,
            )
            .map(|t| ((now - t).as_seconds_f64() / 60.0 * 100.0).round() / 100.0)
            .unwrap_or(0.0);
            let input: Value = serde_json::from_str(&job.data.definition).unwrap_or(Value::Null);
            json!({
                "instanceId": id,
                "createdDateTime": created,
                "status": job.data.status.as_str(),
                "elapsedtimeinminutes": elapsed,
                "input": input,
                "statusQueryGetUri": links.status(id),
            })
        })
        .collect();
    items.sort_by(|a, b| {
        b["createdDateTime"]
            .as_str()
            .cmp(&a["createdDateTime"].as_str())
    });
    Reply::new(200, Value::Array(items))
}

/// The body of a running export's status (202).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RunningStatus<'a> {
    id: &'a str,
    kind: ExportKind,
    status: JobStatus,
    created: &'a str,
    work_items: WorkItemCounts,
    resources_fetched: u64,
    per_type: Map<String, Value>,
    /// Patient exports: the patients found so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    patients: Option<i64>,
}

#[derive(Debug, Serialize)]
struct WorkItemCounts {
    total: u64,
    finished: u64,
    failed: u64,
}

/// 202 for a running export: where it is (`X-Progress`, one line) and its counts so far.
pub(crate) async fn running_status(
    ex: &Exporter,
    id: &str,
    job: &ExportJob,
    running: JobStatus,
) -> Reply {
    // While gathering, progress is on the job row: the work rows a large plan is registering
    // meanwhile (hundreds of thousands for a cohort of millions) are not read on every poll.
    let rows = if running == JobStatus::Gathering {
        Vec::new()
    } else {
        match ex.store.work_row_summaries(id).await {
            Ok(r) => r,
            Err(e) => return Reply::unavailable(STATE, e),
        }
    };
    let p = Progress::of(&rows);
    // A standard export runs as a patient export (Patient, Group level) or an export-all.
    let shape = match job.kind {
        ExportKind::Bulk => match super::bulk::BulkDefinition::parse(&job.definition) {
            Ok(d) if d.patient_query.is_some() => ExportKind::Patients,
            _ => ExportKind::All,
        },
        other => other,
    };
    let progress = match (running, shape) {
        (JobStatus::Gathering, ExportKind::Patients) => format!(
            "gathering patients: {} found on {} pages",
            job.ids_found, job.pages
        ),
        (JobStatus::Gathering, _) => "planning the searches".to_string(),
        (JobStatus::Exporting, ExportKind::Patients) => format!(
            "exporting: {} patients, {}/{} work items, {} resources",
            job.patients, p.finished, p.items, p.resources
        ),
        (JobStatus::Exporting, _) => format!(
            "exporting: {}/{} searches, {} resources",
            p.finished, p.items, p.resources
        ),
        _ => format!("writing files: {} resources fetched", p.resources),
    };
    let body = RunningStatus {
        id,
        kind: job.kind,
        status: running,
        created: &job.created,
        work_items: WorkItemCounts {
            total: p.items,
            finished: p.finished,
            failed: p.failed,
        },
        resources_fetched: p.resources,
        per_type: p.per_type,
        patients: (shape == ExportKind::Patients).then(|| job.patients.max(job.ids_found)),
    };
    let age = time::OffsetDateTime::parse(&job.created, &Rfc3339)
        .map(|created| (time::OffsetDateTime::now_utc() - created).unsigned_abs())
        .unwrap_or_default();
    Reply::new(202, json!(body))
        .header("X-Progress", progress)
        .header("Retry-After", status_retry_after(age).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_polls_start_at_a_second_and_stay_a_tenth_of_the_age() {
        use std::time::Duration;
        assert_eq!(status_retry_after(Duration::ZERO), 1);
        assert_eq!(status_retry_after(Duration::from_secs(19)), 1);
        assert_eq!(status_retry_after(Duration::from_secs(45)), 4);
        assert_eq!(
            status_retry_after(Duration::from_secs(3600)),
            STATUS_RETRY_AFTER_MAX_SECS
        );
    }
}
