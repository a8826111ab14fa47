//! Sending import entries to the FHIR server and counting what became of them: the entries of
//! one batch are settled by `fhir::batch::settle` (throttled entries sent again, a batch refused
//! as a whole halved to the entries at fault); this module keeps each entry's place in its
//! file, so a refusal becomes an error record naming the line or entry.

use crate::fhir::batch::{BatchEntry, Settled, settle};
use crate::fhir::{FhirClient, FhirError};

/// One entry to send: where it came from, what it writes, its serialised JSON.
#[derive(Clone, Debug)]
pub struct OutgoingEntry {
    /// Position within the part (NDJSON line number or Bundle entry index).
    pub position: i64,
    pub target: Option<String>,
    pub json: String,
}

impl BatchEntry for OutgoingEntry {
    fn json(&self) -> &str {
        &self.json
    }
}

/// An entry the server would not take.
#[derive(Clone, Debug, PartialEq)]
pub struct RefusedEntry {
    pub position: i64,
    pub target: Option<String>,
    pub status: u16,
    pub diagnostics: String,
}

#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub loaded: i64,
    pub refused: Vec<RefusedEntry>,
}

/// Sends `entries` as one batch (or more, when it must be halved) and settles every entry.
/// `Err` means the server stayed unavailable or kept throttling: retry the work later.
pub async fn send_batch(
    fhir: &FhirClient,
    entries: Vec<OutgoingEntry>,
) -> Result<BatchOutcome, FhirError> {
    let mut outcome = BatchOutcome::default();
    for (entry, settled) in settle(fhir, entries).await? {
        match settled {
            Settled::Loaded => outcome.loaded += 1,
            Settled::Refused {
                status,
                diagnostics,
            } => outcome.refused.push(RefusedEntry {
                position: entry.position,
                target: entry.target,
                status,
                diagnostics,
            }),
        }
    }
    // Refusals in file order: error records and reports follow the file.
    outcome.refused.sort_by_key(|r| r.position);
    Ok(outcome)
}
