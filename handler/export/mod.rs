//! Export (`$alt-export` for patients, `$alt-export-all` for a whole type): a durable-style
//! orchestration whose state lives in Table Storage and whose work travels on a Storage Queue,
//! so any number of instances share it and a killed instance's work is redelivered.
//!
//! Steps, each a queue message safe to run twice:
//! 1. `gather`: plan the searches. A patient export pages its query for patient ids
//!    (checkpointed) and batches them (at most `FHIRBULK_EXPORT_IDS_PER_SEARCH` each, and every
//!    include URL under the length limit), one work item per batch × include (`gather`); an export-all counts its time windows and
//!    balances them into ranges, one work item per range (`windows`). Both register their work
//!    the same way (`schedule`).
//! 2. `fetch`: one work item pages through its search and stages the resources in a blob of
//!    its own (`_work/<batch>-<include>.ndjson`), written whole or not at all.
//! 3. `compose-type`: as soon as no pending work item can return a resource type, its staged
//!    resources are merged into `<Type>-<n>.ndjson` (each resource once, files rolled over by
//!    size), while the searches for other types go on; types are composed in parallel.
//! 4. `finish`: once every work item is finished and every type composed, the manifest is
//!    written to `_completed_run.json`, and the staging blobs are deleted.
//!
//! A small plan (`FHIRBULK_EXPORT_SEARCHES_IN_STEP`) runs steps 2 to 4 inside its planning
//! step, with no message for each (`schedule`); a step that fails there is queued.
//!
//! Laid out as import is: this file is the component ([`Exporter`]), `state` its typed rows
//! and their store, `work` its queued work items, `control` the HTTP-facing operations, then
//! the steps.

pub mod all;
pub mod bulk;
pub mod capability;
pub mod compartment;
pub mod compose;
pub mod control;
pub mod definition;
pub mod fetch;
pub mod finish;
pub mod gather;
pub mod members;
pub mod page;
pub mod patients;
pub mod reconcile;
pub mod schedule;
pub mod split;
pub mod state;
pub mod trigger;
pub mod uploads;
pub mod windows;
pub mod work;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::ExportSettings;
use crate::error::Transient;
use crate::fhir::FhirClient;
use crate::storage::{BlobStore, Row, StorageError, WorkQueue};
use all::AllDefinition;
use definition::ExportDefinition;
use state::{ExportJob, ExportStore, JobStatus};
pub use work::ExportWork;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Try the step again later (storage or FHIR server unavailable).
    #[error("{0}")]
    Transient(Transient),
}

impl ExportError {
    pub fn transient(reason: impl Into<String>) -> Self {
        ExportError::Transient(Transient::new(reason))
    }
}

impl From<StorageError> for ExportError {
    fn from(e: StorageError) -> Self {
        ExportError::Transient(Transient::caused_by(e.to_string(), e))
    }
}

impl From<crate::fhir::FhirError> for ExportError {
    fn from(e: crate::fhir::FhirError) -> Self {
        ExportError::Transient(Transient::of_fhir(e))
    }
}

pub struct Exporter {
    pub settings: ExportSettings,
    pub blobs: BlobStore,
    pub queue: WorkQueue,
    pub store: ExportStore,
    pub fhir: Arc<FhirClient>,
    /// Told whenever an export of this process ends: status requests held for a running
    /// export (`control::status_after_hold`) answer at once, not at their next look.
    pub ended: tokio::sync::Notify,
    /// The FHIR server's CapabilityStatement, read when a `$export` needs it.
    pub capabilities: capability::CapabilityCache,
    /// When each running `$export` may be polled again.
    pub polls: bulk::operation::PollPacer,
}

/// What an export exports, recorded on its job row (`kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportKind {
    /// `$alt-export`: the patients a query finds, and the include searches for them.
    #[default]
    Patients,
    /// `$alt-export-all`: every resource of one type, optionally in a `_lastUpdated` range.
    All,
    /// `$export` (Bulk Data IG): system, Patient or Group level (`bulk::BulkDefinition`).
    Bulk,
}

impl ExportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportKind::Patients => "patients",
            ExportKind::All => "all",
            ExportKind::Bulk => "bulk",
        }
    }
}

impl Exporter {
    pub fn new(
        settings: ExportSettings,
        blobs: BlobStore,
        queue: WorkQueue,
        store: ExportStore,
        fhir: Arc<FhirClient>,
    ) -> Self {
        Exporter {
            settings,
            blobs,
            queue,
            store,
            fhir,
            ended: tokio::sync::Notify::new(),
            capabilities: Default::default(),
            polls: Default::default(),
        }
    }

    /// Creates the containers, queue and table export uses (idempotent).
    pub async fn ensure_resources(&self) -> Result<(), StorageError> {
        for c in [
            self.settings.container.clone(),
            self.settings.trigger_container.clone(),
            self.settings.trigger_processed_container(),
            self.settings.trigger_err_container(),
            self.settings.reports_container.clone(),
        ] {
            self.blobs.ensure_container(&c).await?;
        }
        self.queue.ensure().await?;
        self.store.ensure_table().await
    }

    /// Runs one queued step. `Err` leaves the message for a later delivery.
    pub async fn run(&self, work: &ExportWork, attempt: u32) -> Result<(), ExportError> {
        let result = self.run_step(work, attempt).await;
        if let Err(e) = &result {
            tracing::warn!(message = "Export step will be retried.", export = %work.export(), attempt, reason = %e);
        }
        result
    }

    async fn run_step(&self, work: &ExportWork, attempt: u32) -> Result<(), ExportError> {
        match work {
            ExportWork::Gather { export } => gather::run(self, export, attempt).await,
            ExportWork::Fetch {
                export,
                batch,
                include,
                search,
            } => fetch::run(self, export, *batch, *include, search, attempt).await,
            ExportWork::ComposeType {
                export,
                resource_type,
            } => compose::run(self, export, resource_type).await,
            ExportWork::Finish { export } => finish::run(self, export).await,
        }
    }

    /// The patient-export definition stored with an export (for a Patient- or Group-level
    /// `$export`, the one its definition derives).
    pub(crate) fn definition(&self, job: &ExportJob) -> Result<ExportDefinition, String> {
        if job.kind == ExportKind::Bulk {
            return bulk::BulkDefinition::parse(&job.definition)?
                .patient_definition(self.fhir.base())
                .unwrap_or_else(|| Err("a system-level $export has no patients".into()));
        }
        ExportDefinition::parse(&job.definition, self.fhir.base())
    }

    /// The export-all definition stored with an export (its `_till` already fixed).
    pub(crate) fn all_definition(&self, job: &ExportJob) -> Result<AllDefinition, String> {
        AllDefinition::parse(
            &job.definition,
            self.fhir.base(),
            self.fhir.audience(),
            time::OffsetDateTime::now_utc(),
        )
    }

    /// The absolute URL of a relative search, with `_count` added when it has none.
    pub(crate) fn search_url(&self, relative: &str) -> String {
        let base = self.fhir.base().as_str().trim_end_matches('/');
        let mut url = format!("{base}/{relative}");
        if !relative
            .split(['?', '&'])
            .skip(1)
            .any(|p| p.starts_with("_count="))
        {
            url.push(if relative.contains('?') { '&' } else { '?' });
            url.push_str(&format!("_count={}", self.settings.page_size));
        }
        url
    }

    /// Characters a search URL adds around the include text: base URL, `/`, `&_count=N`.
    pub(crate) fn url_overhead(&self) -> usize {
        self.fhir.base().as_str().trim_end_matches('/').len()
            + 1
            + "&_count=".len()
            + self.settings.page_size.to_string().len()
    }

    /// Parses a URL to follow (a `next` link); only this FHIR server is ever called, so a
    /// token is never sent elsewhere.
    pub(crate) fn same_server_url(&self, link: &str) -> Result<Url, String> {
        let base = self.fhir.base();
        let url = base
            .join(link)
            .map_err(|e| format!("the link {link:?} is not a URL: {e}"))?;
        if url.origin() != base.origin() {
            return Err(format!(
                "the server's next link points at {}, not at {}; set FHIRBULK_FHIR_URL to the base URL the server advertises",
                url.origin().ascii_serialization(),
                base.origin().ascii_serialization()
            ));
        }
        Ok(url)
    }

    /// The job row, and its status, if the export exists.
    pub(crate) async fn job(
        &self,
        id: &str,
    ) -> Result<Option<(Row<ExportJob>, JobStatus)>, StorageError> {
        Ok(self.store.job(id).await?.map(|job| {
            let status = job.data.status;
            (job, status)
        }))
    }

    /// Blob name of a file of an export.
    pub(crate) fn blob_name(export: &str, name: &str) -> String {
        format!("{export}/{name}")
    }
}

/// An export id: lowercase hex, as generated (also keeps ids safe as table keys and paths).
pub fn valid_export_id(id: &str) -> bool {
    (8..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_ids_are_32_lowercase_hex_digits() {
        assert!(valid_export_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_export_id("../etc"));
        assert!(!valid_export_id("ABCDEF0123"));
    }
}
