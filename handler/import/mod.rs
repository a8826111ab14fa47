//! Import: files dropped into the `bundles`, `ndjson` and `zip` containers are read with
//! bounded memory, turned into idempotent batch entries and loaded into the FHIR server.
//!
//! Flow: `engine::Importer::register` (from a BlobCreated event) records the file in the
//! `imports` table and queues one work item per part; `Importer::run` loads a part from its
//! checkpoint (`jobs`), and the last part to finish writes the reports and moves the file.

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
pub mod sources;
pub mod split;
pub mod state;
pub mod transform;
pub mod work;
pub mod zip;

pub use engine::{Importer, Registration};
pub use work::{FileKind, ImportError, ImportWork};
