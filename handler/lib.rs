//! FHIR bulk loader & exporter: an Azure Functions custom handler that loads bundles, NDJSON
//! and zip files from Blob Storage into a FHIR R4 server, and exports patient-centric data.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod export;
pub mod fhir;
pub mod functions;
pub mod import;
pub mod protocol;
pub mod serve;
pub mod storage;
pub mod telemetry;
