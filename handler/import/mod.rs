//! Import: files dropped into the `bundles`, `ndjson` and `zip` containers are read with
//! bounded memory, turned into idempotent batch entries and loaded into the FHIR server.
//!
//! The component is [`Importer`] (here: what it holds and how it is set up). Flow (`engine`):
//! `Importer::register` (from a BlobCreated event) records the file in the `imports` table
//! (`state`) and queues one work item per part (`work`), or, for a small file of one part,
//! loads it there with no work item (six storage requests in all); `Importer::run` loads a
//! part from its checkpoint (`jobs`), and the last part to finish writes the reports, moves the
//! file and closes its rows.

pub mod budget;
pub mod bundle;
pub mod bundle_text;
pub mod encoding;
pub mod engine;
pub mod fence;
pub mod jobs;
pub mod ndjson;
pub mod pump;
pub mod raw_json;
pub mod reconcile;
pub mod references;
pub mod report;
pub mod sender;
pub mod split;
pub mod state;
pub mod transform;
pub mod work;
pub mod zip;

pub use engine::Registration;
pub use work::{FileKind, ImportError, ImportWork};

use std::sync::Arc;

use budget::MemoryBudget;
use bundle::FhirSearchResolver;
use state::ImportStore;

use crate::config::ImportSettings;
use crate::fhir::FhirClient;
use crate::storage::{BlobStore, WorkQueue};

/// The import component: its settings, the storage and FHIR clients it works with, and the
/// memory budgets shared by its work in this process.
pub struct Importer {
    pub settings: ImportSettings,
    pub blobs: BlobStore,
    pub queue: WorkQueue,
    pub store: ImportStore,
    pub fhir: Arc<FhirClient>,
    pub resolver: FhirSearchResolver,
    /// Bundle bytes being read and planned, in MiB (`FHIRBULK_BUNDLE_PARSE_BUDGET_MIB`).
    pub bundle_parse_budget: MemoryBudget,
    /// Bytes of NDJSON batches held at once, in KiB (`FHIRBULK_BATCH_BUDGET_MIB`).
    pub batch_budget: MemoryBudget,
}

impl Importer {
    pub fn new(
        settings: ImportSettings,
        blobs: BlobStore,
        queue: WorkQueue,
        store: ImportStore,
        fhir: Arc<FhirClient>,
    ) -> Self {
        let resolver = FhirSearchResolver::new(fhir.clone());
        Importer {
            bundle_parse_budget: MemoryBudget::mib(settings.bundle_parse_budget_mib),
            batch_budget: MemoryBudget::new(settings.batch_budget_bytes as u64, 10),
            settings,
            blobs,
            queue,
            store,
            fhir,
            resolver,
        }
    }

    /// Batches one part keeps in flight (several parts run at once; the limiter caps the total).
    pub fn fhir_window(&self) -> usize {
        self.settings.batches_per_part
    }

    /// Batches in flight for each of a file's `parts`: the file may keep as many at once as the
    /// FHIR client would run (`FHIRBULK_FHIR_MAX_CONCURRENCY`), each part at least
    /// `FHIRBULK_BATCHES_PER_PART`. A file read as one stream (gzip, a zip's NDJSON entry) or
    /// small enough for one range has one part, which so keeps the server as busy as many would.
    pub fn part_window(&self, parts: usize) -> usize {
        self.fhir_window()
            .max(self.fhir.max_concurrency().div_ceil(parts.max(1)))
    }

    /// Creates the containers, queue and tables import uses (idempotent).
    pub async fn ensure_resources(&self) -> Result<(), ImportError> {
        for c in self.settings.input_containers() {
            self.blobs.ensure_container(c).await?;
            self.blobs
                .ensure_container(&ImportSettings::processed_container(c))
                .await?;
            self.blobs
                .ensure_container(&ImportSettings::err_container(c))
                .await?;
        }
        self.blobs
            .ensure_container(&self.settings.reports_container)
            .await?;
        self.queue.ensure().await?;
        self.store.ensure_tables().await?;
        Ok(())
    }

    /// How a blob in `container` is read; `None` for containers this loader does not watch.
    pub fn kind_for(&self, container: &str, blob: &str) -> Option<FileKind> {
        let lower = blob.to_ascii_lowercase();
        if container == self.settings.bundles_container {
            Some(FileKind::Bundle)
        } else if container == self.settings.ndjson_container {
            Some(if lower.ends_with(".gz") {
                FileKind::NdjsonGz
            } else {
                FileKind::Ndjson
            })
        } else if container == self.settings.zip_container {
            Some(FileKind::Zip)
        } else {
            None
        }
    }
}
