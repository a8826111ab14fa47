//! The error policy, in one place.
//!
//! - **Library code returns typed errors** (`thiserror`): each component says what can go
//!   wrong in its own words — `StorageError` (which request, which target, the service's status
//!   and code, never its XML), `FhirError`, `SettingError`, `ImportError`, `ExportError` — so
//!   that callers decide by kind, not by parsing text.
//! - **`anyhow` is for the edges only**: start-up (`app::build_state`, `serve::run`) and the
//!   binary's commands, where an error is printed once and the process exits.
//! - **Every error decides one of three fates** for the work it stopped: final and recorded
//!   for the user (`ImportError::Rejected`/`Gone`/`Replaced`, an export's `fail`), handed to
//!   another delivery (`ImportError::Superseded`), or tried again later ([`Transient`]).
//! - **A [`Transient`] keeps its cause**: `reason` is a short sentence that is logged (so it
//!   holds no resource content, no blob name and no server diagnostics), `http_status` the
//!   FHIR server's answer when there was one, and `source` the error underneath, so that
//!   `std::error::Error::source` walks the whole chain for whoever needs more than the log line.
//! - **Messages say what to do**: an error a user sees ends with what would fix it (upload the
//!   file again, fix the definition, give the flag).

use std::sync::Arc;

/// Why work is to be tried again later, the FHIR server's status when it answered, and the
/// error underneath.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason}")]
pub struct Transient {
    pub reason: String,
    pub http_status: Option<u16>,
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Transient {
    /// A transient failure with no error underneath.
    pub fn new(reason: impl Into<String>) -> Self {
        Transient {
            reason: reason.into(),
            http_status: None,
            source: None,
        }
    }

    /// A transient failure caused by `source`, said as `reason`.
    pub fn caused_by(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Transient {
            reason: reason.into(),
            http_status: None,
            source: Some(Arc::new(source)),
        }
    }

    /// A request to the FHIR server that failed: its summary (no diagnostics, which may quote
    /// resource content), its status, and the error itself as the source.
    pub fn of_fhir(e: crate::fhir::FhirError) -> Self {
        Transient {
            reason: e.summary(),
            http_status: e.status(),
            source: Some(Arc::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn a_transient_error_keeps_its_cause_out_of_its_message() {
        let io = std::io::Error::other("connection reset by peer");
        let t = Transient::caused_by("reading the file stopped", io);
        assert_eq!(t.to_string(), "reading the file stopped");
        let source = t.source().expect("the cause is kept");
        assert_eq!(source.to_string(), "connection reset by peer");
    }
}
