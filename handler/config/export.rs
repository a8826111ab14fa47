//! Settings of the patient-centric export (`$alt-export`): where its state and output live, how
//! many exports may run at once, and how searches are cut and files rolled over.

use super::{Reader, SettingError, WorkSettings};

pub const ENV_CONTAINER_EXPORT: &str = "FHIRBULK_CONTAINER_EXPORT";
pub const ENV_CONTAINER_EXPORT_TRIGGER: &str = "FHIRBULK_CONTAINER_EXPORT_TRIGGER";
pub const ENV_EXPORT_QUEUE: &str = "FHIRBULK_EXPORT_QUEUE";
pub const DEFAULT_EXPORT_QUEUE: &str = "export-work";
pub const ENV_EXPORTS_TABLE: &str = "FHIRBULK_EXPORTS_TABLE";
pub const DEFAULT_EXPORTS_TABLE: &str = "exports";
pub const ENV_MAX_EXPORTS: &str = "FHIRBULK_MAX_EXPORTS";
pub const DEFAULT_MAX_EXPORTS: usize = 10;
pub const ENV_EXPORT_MAX_URL_LENGTH: &str = "FHIRBULK_EXPORT_MAX_URL_LENGTH";
pub const DEFAULT_EXPORT_MAX_URL_LENGTH: usize = 4096;
const MAX_URL_LENGTH_LIMIT: usize = 32_768;
pub const ENV_EXPORT_IDS_PER_SEARCH: &str = "FHIRBULK_EXPORT_IDS_PER_SEARCH";
pub const DEFAULT_EXPORT_IDS_PER_SEARCH: usize = 20;
pub const ENV_EXPORT_SEARCHES_IN_STEP: &str = "FHIRBULK_EXPORT_SEARCHES_IN_STEP";
pub const DEFAULT_EXPORT_SEARCHES_IN_STEP: usize = 32;
pub const ENV_EXPORT_PAGE_SIZE: &str = "FHIRBULK_EXPORT_PAGE_SIZE";
pub const DEFAULT_EXPORT_PAGE_SIZE: usize = 500;
pub const ENV_EXPORT_IDS_PER_CHUNK: &str = "FHIRBULK_EXPORT_IDS_PER_CHUNK";
pub const DEFAULT_EXPORT_IDS_PER_CHUNK: usize = 50_000;
pub const ENV_EXPORT_SPLIT_PAGES: &str = "FHIRBULK_EXPORT_SPLIT_PAGES";
pub const DEFAULT_EXPORT_SPLIT_PAGES: usize = 4;
pub const ENV_EXPORT_MAX_FILE_MIB: &str = "FHIRBULK_EXPORT_MAX_FILE_MIB";
pub const DEFAULT_EXPORT_MAX_FILE_MIB: u64 = 256;

#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// Output: `<container>/<export id>/<Type>-<n>.ndjson`.
    pub container: String,
    /// Query definitions dropped here start an export (then move to `<trigger>-processed`).
    pub trigger_container: String,
    /// Where a trigger file's start answer goes (`storage::reports`).
    pub reports_container: String,
    pub queue: String,
    pub table: String,
    /// Exports running at once; 0 means no limit.
    pub max_exports: usize,
    /// Longest search URL sent: patient ids are batched so that every include stays under it.
    pub max_url_length: usize,
    /// Most patient ids one search names (fewer when the URL limit or a small cohort says so).
    pub ids_per_search: usize,
    /// A plan of at most this many searches runs them in its planning step, not on the queue.
    pub searches_in_step: usize,
    /// Patient ids gathered per ids blob; a cohort of more than four chunks is planned one
    /// chunk at a time (memory holds a chunk, not the cohort).
    pub ids_per_chunk: usize,
    /// A search of several patients whose first page shows more than this many pages is cut
    /// into searches of fewer patients (0: never).
    pub split_pages: usize,
    /// `_count` added to searches that do not set one.
    pub page_size: usize,
    /// An output file rolls over to `<Type>-<n+1>.ndjson` before it would exceed this.
    pub max_file_bytes: u64,
    pub work: WorkSettings,
}

impl ExportSettings {
    pub(super) fn read(r: &Reader, work: WorkSettings) -> Result<Self, SettingError> {
        const MIB: u64 = 1024 * 1024;
        let max_url_length = r.number(
            ENV_EXPORT_MAX_URL_LENGTH,
            DEFAULT_EXPORT_MAX_URL_LENGTH,
            256,
        )?;
        if max_url_length > MAX_URL_LENGTH_LIMIT {
            // A work item carries its ids in a queue message, which holds at most 64 KiB.
            return Err(SettingError {
                name: ENV_EXPORT_MAX_URL_LENGTH,
                value: max_url_length.to_string(),
                reason: format!("must be at most {MAX_URL_LENGTH_LIMIT}"),
            });
        }
        Ok(ExportSettings {
            container: r.container(ENV_CONTAINER_EXPORT, "export")?,
            trigger_container: r.container(ENV_CONTAINER_EXPORT_TRIGGER, "export-trigger")?,
            reports_container: r.container(
                super::ENV_CONTAINER_REPORTS,
                super::DEFAULT_CONTAINER_REPORTS,
            )?,
            queue: r.text(ENV_EXPORT_QUEUE, DEFAULT_EXPORT_QUEUE),
            table: r.text(ENV_EXPORTS_TABLE, DEFAULT_EXPORTS_TABLE),
            max_exports: r.number(ENV_MAX_EXPORTS, DEFAULT_MAX_EXPORTS, 0)?,
            max_url_length,
            ids_per_search: r.number(
                ENV_EXPORT_IDS_PER_SEARCH,
                DEFAULT_EXPORT_IDS_PER_SEARCH,
                1,
            )?,
            searches_in_step: r.number(
                ENV_EXPORT_SEARCHES_IN_STEP,
                DEFAULT_EXPORT_SEARCHES_IN_STEP,
                0,
            )?,
            ids_per_chunk: r.number(ENV_EXPORT_IDS_PER_CHUNK, DEFAULT_EXPORT_IDS_PER_CHUNK, 1)?,
            split_pages: r.number(ENV_EXPORT_SPLIT_PAGES, DEFAULT_EXPORT_SPLIT_PAGES, 0)?,
            page_size: r.number(ENV_EXPORT_PAGE_SIZE, DEFAULT_EXPORT_PAGE_SIZE, 1)?,
            max_file_bytes: MIB
                * r.number(ENV_EXPORT_MAX_FILE_MIB, DEFAULT_EXPORT_MAX_FILE_MIB, 1)?,
            work,
        })
    }

    /// Where a trigger file goes once its export started.
    pub fn trigger_processed_container(&self) -> String {
        format!("{}-processed", self.trigger_container)
    }

    /// Where a trigger file goes when it is not a valid query definition.
    pub fn trigger_err_container(&self) -> String {
        format!("{}-err", self.trigger_container)
    }
}
