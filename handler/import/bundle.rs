//! Loading one uploaded Bundle: validate, prepare (transaction → idempotent batch), split in
//! dependency order, send piece by piece. Progress is reported per piece so a resumed work
//! item skips the pieces already loaded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use super::bundle_text::{BundleKind, read_bundle};
use super::encoding::utf8_text;
use super::sender::{BatchOutcome, OutgoingEntry, RefusedEntry, send_batch};
use super::split::{piece_dependencies, split};
use super::transform::{SearchResolver, prepare_bundle};
use super::work::ImportError;
use crate::config::TransactionMode;
use crate::fhir::FhirClient;
use crate::fhir::batch_response::{diagnostics, read_batch_response};

/// What happened to a Bundle before its pieces were sent.
pub struct BundlePlan {
    pub pieces: Vec<Vec<OutgoingEntry>>,
    /// For each piece, the earlier pieces it must wait for.
    pub piece_deps: Vec<Vec<usize>>,
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
    let text = utf8_text(bytes, "the file").map_err(ImportError::Rejected)?;
    let (kind, bundle) = read_bundle(text).map_err(ImportError::Rejected)?;
    let entry_count = bundle.entry.len();
    if kind == BundleKind::Transaction && mode == TransactionMode::Transaction {
        return Ok(BundlePlan {
            pieces: Vec::new(),
            piece_deps: Vec::new(),
            refused: Vec::new(),
            already_present: 0,
            whole_transaction: Some(Bytes::copy_from_slice(bytes)),
            entry_count,
        });
    }
    let prepared = prepare_bundle(bundle, resolver)
        .await
        .map_err(ImportError::Rejected)?;
    // Pieces are cut over every entry position (sent or not), so they are the same on a
    // resumed try even when the server's answers to searches have changed since.
    let positions = split(&prepared.deps, max_entries);
    let piece_deps = piece_dependencies(&positions, &prepared.deps);
    let mut slots = prepared.slots;
    let pieces = positions
        .iter()
        .map(|piece| {
            piece
                .iter()
                .filter_map(|&i| slots[i].take())
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
        piece_deps,
        refused,
        already_present: prepared.already_present as i64,
        whole_transaction: None,
        entry_count,
    })
}

pub async fn send_piece(
    fhir: &FhirClient,
    piece: Vec<OutgoingEntry>,
) -> Result<BatchOutcome, ImportError> {
    if piece.is_empty() {
        // Every entry of the piece was already present or refused while preparing.
        return Ok(BatchOutcome::default());
    }
    Ok(send_batch(fhir, piece).await?)
}

/// Posts a transaction unchanged; it loads or fails as a whole.
pub async fn send_transaction(
    fhir: &FhirClient,
    body: Bytes,
    entries: usize,
) -> Result<BatchOutcome, ImportError> {
    match fhir.post_transaction(body).await {
        Ok(reply) => {
            let results = read_batch_response(reply, entries);
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
            Ok(BatchOutcome {
                loaded: (entries - refused.len()) as i64,
                refused,
            })
        }
        Err(e) if e.is_transient() => Err(e.into()),
        // All or nothing: every entry of a refused transaction failed, for the same reason.
        Err(e) => Ok(BatchOutcome {
            loaded: 0,
            refused: (0..entries)
                .map(|i| RefusedEntry {
                    position: i as i64,
                    target: None,
                    status: e.status().unwrap_or(0),
                    diagnostics: format!("the transaction was refused as a whole: {e}"),
                })
                .collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Finds `Organization?identifier=x|1` or not, as told.
    struct Server(bool);

    #[async_trait]
    impl SearchResolver for Server {
        async fn find_ids(&self, _: &str, _: &str) -> Result<Vec<String>, String> {
            Ok(if self.0 { vec!["org".into()] } else { vec![] })
        }
    }

    /// A resumed try must cut the same pieces as the first, even though the Organization the
    /// first try created is now found by its ifNoneExist search.
    #[tokio::test]
    async fn pieces_do_not_move_when_a_search_answer_changes() {
        let mut entries = vec![
            json!({"fullUrl": "urn:uuid:o", "resource": {"resourceType": "Organization"},
            "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=x|1"}}),
        ];
        for i in 0..9 {
            entries.push(json!({"fullUrl": format!("urn:uuid:p{i}"),
                "resource": {"resourceType": "Patient", "managingOrganization": {"reference": "urn:uuid:o"}},
                "request": {"method": "POST", "url": "Patient"}}));
        }
        let bundle =
            json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string();
        let positions = |plan: &BundlePlan| -> Vec<Vec<i64>> {
            plan.pieces
                .iter()
                .map(|p| p.iter().map(|e| e.position).filter(|&i| i != 0).collect())
                .collect()
        };
        let first = plan_bundle(bundle.as_bytes(), TransactionMode::Batch, 3, &Server(false))
            .await
            .unwrap();
        let resumed = plan_bundle(bundle.as_bytes(), TransactionMode::Batch, 3, &Server(true))
            .await
            .unwrap();
        assert_eq!(first.already_present, 0);
        assert_eq!(resumed.already_present, 1);
        assert_eq!(positions(&first), positions(&resumed));
        assert_eq!(first.piece_deps, resumed.piece_deps);
        assert_eq!(
            first.piece_deps[1],
            vec![0],
            "Patients wait for the Organization's piece"
        );
    }
}
