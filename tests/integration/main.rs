//! Integration tests against real Azurite and the real sekmet FHIR server (one test binary).

mod storage;
mod support;
