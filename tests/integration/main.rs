//! Integration tests against real Azurite and the real sekmet FHIR server (one test binary).
//! Each test starts its own services on free ports; nothing is shared between tests.

mod bulk;
mod corpus;
mod export;
mod faults;
mod fixtures;
mod host_protocol;
mod import;
mod meter;
mod packaged;
mod security;
mod standin;
mod storage;
mod support;
mod telemetry;
