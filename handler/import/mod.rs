//! Import: files dropped into the `bundles`, `ndjson` and `zip` containers are read with
//! bounded memory, turned into idempotent batch entries and loaded into the FHIR server.

pub mod ndjson;
pub mod references;
pub mod split;
pub mod transform;
