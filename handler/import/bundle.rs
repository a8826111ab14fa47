//! Loading one uploaded Bundle: validate, prepare (transaction → idempotent batch), split in
//! dependency order, send piece by piece. Progress is reported per piece so a resumed work
//! item skips the pieces already loaded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use super::sender::{OutgoingEntry, RefusedEntry, send_batch};
use super::split::split;
use super::transform::{BundleKind, SearchResolver, bundle_kind, prepare};
use super::work::ImportError;
use crate::config::TransactionMode;
use crate::fhir::FhirClient;
use crate::fhir::batch_response::{diagnostics, read_batch_response};

/// What happened to a Bundle before its pieces were sent.
pub struct BundlePlan {
    pub pieces: Vec<Vec<OutgoingEntry>>,
    /// Entries refused while preparing (dangling or unresolvable references ...).
    pub refused: Vec<RefusedEntry>,
    pub already_present: i64,
    /// A transaction kept whole (transaction mode): sent as it is, all or nothing.
    pub whole_transaction: Option<Bytes>,
    pub entry_count: usize,
}

/// Parses and prepares a Bundle file. `Err(Rejected)` when it is not a loadable Bundle.
pub async fn plan_bundle(
    bytes: &[u8],
    mode: TransactionMode,
    max_entries: usize,
    resolver: &dyn SearchResolver,
) -> Result<BundlePlan, ImportError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ImportError::Rejected(format!("the file is not UTF-8 text: {e}")))?;
    let (kind, entry_count) = bundle_kind(text).map_err(ImportError::Rejected)?;
    if kind == BundleKind::Transaction && mode == TransactionMode::Transaction {
        return Ok(BundlePlan {
            pieces: Vec::new(),
            refused: Vec::new(),
            already_present: 0,
            whole_transaction: Some(Bytes::copy_from_slice(bytes)),
            entry_count,
        });
    }
    let prepared = prepare(text, resolver)
        .await
        .map_err(ImportError::Rejected)?;
    let pieces = split(prepared.entries, max_entries)
        .into_iter()
        .map(|piece| {
            piece
                .into_iter()
                .map(|e| OutgoingEntry {
                    position: e.index as i64,
                    target: e.target,
                    json: e.json,
                })
                .collect()
        })
        .collect();
    let refused = prepared
        .failures
        .into_iter()
        .map(|f| RefusedEntry {
            position: f.index as i64,
            target: f.target,
            status: f.status,
            diagnostics: f.diagnostics,
        })
        .collect();
    Ok(BundlePlan {
        pieces,
        refused,
        already_present: prepared.already_present as i64,
        whole_transaction: None,
        entry_count,
    })
}

/// Result of one piece (or of a whole transaction).
pub struct PieceDone {
    pub loaded: i64,
    pub refused: Vec<RefusedEntry>,
}

pub async fn send_piece(
    fhir: &FhirClient,
    piece: Vec<OutgoingEntry>,
) -> Result<PieceDone, ImportError> {
    let outcome = send_batch(fhir, piece).await?;
    Ok(PieceDone {
        loaded: outcome.loaded,
        refused: outcome.refused,
    })
}

/// Posts a transaction unchanged; it loads or fails as a whole.
pub async fn send_transaction(
    fhir: &FhirClient,
    body: Bytes,
    entries: usize,
) -> Result<PieceDone, ImportError> {
    match fhir.post_bundle_bytes(body).await {
        Ok(reply) => {
            let results = read_batch_response(&reply, entries);
            let refused: Vec<RefusedEntry> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.is_success())
                .map(|(i, r)| RefusedEntry {
                    position: i as i64,
                    target: None,
                    status: r.status,
                    diagnostics: r.outcome.as_ref().map(diagnostics).unwrap_or_default(),
                })
                .collect();
            Ok(PieceDone {
                loaded: (entries - refused.len()) as i64,
                refused,
            })
        }
        Err(e) if e.is_transient() => Err(e.into()),
        Err(e) => Ok(PieceDone {
            loaded: 0,
            refused: vec![RefusedEntry {
                position: -1,
                target: None,
                status: e.status().unwrap_or(0),
                diagnostics: format!("the transaction was refused as a whole: {e}"),
            }],
        }),
    }
}

/// Resolves `Type?query` with a search on the FHIR server. Single matches are cached for the
/// life of the process (a resource found once stays found); misses are asked again.
pub struct FhirSearchResolver {
    fhir: Arc<FhirClient>,
    cache: Mutex<HashMap<String, String>>,
}

impl FhirSearchResolver {
    pub fn new(fhir: Arc<FhirClient>) -> Self {
        FhirSearchResolver {
            fhir,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SearchResolver for FhirSearchResolver {
    async fn find_ids(&self, resource_type: &str, query: &str) -> Result<Vec<String>, String> {
        let key = format!("{resource_type}?{query}");
        if let Some(id) = self.cache.lock().expect("cache lock").get(&key) {
            return Ok(vec![id.clone()]);
        }
        let mut url = self.fhir.url(resource_type);
        url.set_query(Some(query));
        url.query_pairs_mut()
            .append_pair("_elements", "id")
            .append_pair("_count", "2");
        let page = self.fhir.get(&url).await.map_err(|e| e.to_string())?;
        let ids: Vec<String> = page
            .get("entry")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| {
                        e.pointer("/search/mode").and_then(Value::as_str) != Some("outcome")
                    })
                    .filter(|e| {
                        e.pointer("/resource/resourceType").and_then(Value::as_str)
                            == Some(resource_type)
                    })
                    .filter_map(|e| {
                        e.pointer("/resource/id")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() == 1 {
            self.cache
                .lock()
                .expect("cache lock")
                .insert(key, ids[0].clone());
        }
        Ok(ids)
    }
}
