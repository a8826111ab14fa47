//! Event Grid `BlobCreated` events as the Functions host delivers them: a JSON object, a JSON
//! string, or a string holding a JSON string (double-encoded); Event Grid or CloudEvents schema;
//! one event or an array.

use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::storage::BlobVersion;

/// A blob that was created, located by container and name (names may contain `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobCreated {
    pub event_id: String,
    pub container: String,
    pub blob: String,
    /// `data.api`: PutBlob, PutBlockList, CopyBlob, FlushWithClose ...
    pub api: Option<String>,
    /// `data.eTag` and `data.contentLength`: the version the event is about, when it says.
    pub version: Option<BlobVersion>,
}

/// One event of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GridEvent {
    BlobCreated(BlobCreated),
    /// The handshake of a plain webhook subscription; answer with this code.
    SubscriptionValidation {
        code: String,
    },
    /// Any other event type (BlobDeleted, ...): acknowledged and ignored.
    Other {
        event_type: String,
    },
}

/// Parses strings as JSON until the value is no longer a string (at most three layers).
pub fn peel(mut value: Value) -> Value {
    for _ in 0..3 {
        match &value {
            Value::String(s) => match serde_json::from_str(s) {
                Ok(inner) => value = inner,
                Err(_) => break,
            },
            _ => break,
        }
    }
    value
}

/// Every event of a delivery; `Err` says why the payload is not an event at all.
pub fn parse_events(payload: Value) -> Result<Vec<GridEvent>, String> {
    match peel(payload) {
        Value::Array(items) => items.into_iter().map(|v| parse_event(peel(v))).collect(),
        v @ Value::Object(_) => Ok(vec![parse_event(v)?]),
        other => Err(format!(
            "expected an Event Grid event (JSON object or array), got {}",
            kind(&other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string that is not JSON",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_event(event: Value) -> Result<GridEvent, String> {
    let Value::Object(map) = &event else {
        return Err(format!(
            "an event must be a JSON object, got {}",
            kind(&event)
        ));
    };
    let event_type = map
        .get("eventType")
        .or_else(|| map.get("type"))
        .and_then(Value::as_str)
        .ok_or("the event has neither eventType (Event Grid) nor type (CloudEvents)")?;
    let data = map
        .get("data")
        .map(|d| peel(d.clone()))
        .unwrap_or(Value::Null);
    match event_type {
        "Microsoft.EventGrid.SubscriptionValidationEvent" => {
            let code = data
                .get("validationCode")
                .and_then(Value::as_str)
                .ok_or("a validation event without data.validationCode")?;
            Ok(GridEvent::SubscriptionValidation {
                code: code.to_string(),
            })
        }
        "Microsoft.Storage.BlobCreated" => {
            let subject = map.get("subject").and_then(Value::as_str).unwrap_or("");
            let (container, blob) = split_subject(subject)
                .or_else(|| data.get("url").and_then(Value::as_str).and_then(split_url))
                .ok_or_else(|| {
                    format!("cannot find the container and blob in subject {subject:?} or data.url")
                })?;
            Ok(GridEvent::BlobCreated(BlobCreated {
                event_id: map
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                container,
                blob,
                api: data.get("api").and_then(Value::as_str).map(str::to_string),
                version: event_version(&data),
            }))
        }
        other => Ok(GridEvent::Other {
            event_type: other.to_string(),
        }),
    }
}

/// The version named by `data.eTag` and `data.contentLength`. An empty blob's event (ADLS
/// `CreateFile` comes before the data is flushed) names none: it is read from the blob instead.
fn event_version(data: &Value) -> Option<BlobVersion> {
    let etag = data.get("eTag").and_then(Value::as_str)?;
    let size = data.get("contentLength").and_then(Value::as_u64)?;
    BlobVersion::new(etag, size).filter(|v| v.size > 0)
}

/// `/blobServices/default/containers/{container}/blobs/{blob}`; the blob keeps its slashes.
pub fn split_subject(subject: &str) -> Option<(String, String)> {
    let rest = subject.strip_prefix("/blobServices/default/containers/")?;
    let (container, blob) = rest.split_once("/blobs/")?;
    (!container.is_empty() && !blob.is_empty()).then(|| (container.to_string(), blob.to_string()))
}

/// `https://{account}.blob.core.windows.net/{container}/{blob}` (percent-decoded).
fn split_url(url: &str) -> Option<(String, String)> {
    let parsed = url::Url::parse(url).ok()?;
    let path = parsed.path().trim_start_matches('/');
    let (container, blob) = path.split_once('/')?;
    let blob = percent_decode_str(blob).decode_utf8().ok()?.into_owned();
    (!container.is_empty() && !blob.is_empty()).then(|| (container.to_string(), blob))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grid_event() -> Value {
        json!({
            "topic": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
            "subject": "/blobServices/default/containers/ndjson/blobs/2024/01/Patient.ndjson",
            "eventType": "Microsoft.Storage.BlobCreated",
            "id": "e-1",
            "data": {"api": "PutBlockList", "url": "https://acct.blob.core.windows.net/ndjson/2024/01/Patient.ndjson"},
            "dataVersion": "", "metadataVersion": "1"
        })
    }

    fn expected() -> GridEvent {
        GridEvent::BlobCreated(BlobCreated {
            event_id: "e-1".into(),
            container: "ndjson".into(),
            blob: "2024/01/Patient.ndjson".into(),
            api: Some("PutBlockList".into()),
            version: None,
        })
    }

    #[test]
    fn object_string_and_double_encoded_forms_parse_alike() {
        let object = grid_event();
        let string = Value::String(object.to_string());
        let double = Value::String(string.to_string());
        for payload in [object.clone(), string, double, json!([object])] {
            assert_eq!(parse_events(payload).unwrap(), vec![expected()]);
        }
    }

    #[test]
    fn cloud_events_schema_parses() {
        let ce = json!({
            "specversion": "1.0", "type": "Microsoft.Storage.BlobCreated", "id": "e-1",
            "source": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
            "subject": "/blobServices/default/containers/ndjson/blobs/2024/01/Patient.ndjson",
            "data": {"api": "PutBlockList"}
        });
        assert_eq!(parse_events(ce).unwrap(), vec![expected()]);
    }

    #[test]
    fn url_is_the_fallback_and_is_decoded() {
        let e = json!({"eventType": "Microsoft.Storage.BlobCreated", "id": "x", "subject": "",
            "data": {"url": "https://a.blob.core.windows.net/bundles/dir/my%20bundle.json"}});
        match &parse_events(e).unwrap()[0] {
            GridEvent::BlobCreated(b) => {
                assert_eq!(
                    (b.container.as_str(), b.blob.as_str()),
                    ("bundles", "dir/my bundle.json")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_version_comes_from_etag_and_content_length() {
        let mut e = grid_event();
        e["data"]["eTag"] = json!("\"0x8D4BCC2E4835CD0\"");
        e["data"]["contentLength"] = json!(524288);
        let version = |e: Value| match parse_events(e).unwrap().remove(0) {
            GridEvent::BlobCreated(b) => b.version,
            other => panic!("{other:?}"),
        };
        let quoted = Some(BlobVersion {
            etag: "\"0x8D4BCC2E4835CD0\"".into(),
            size: 524288,
        });
        assert_eq!(version(e.clone()), quoted);
        // Unquoted ETags are quoted, so both spellings name one file version.
        e["data"]["eTag"] = json!("0x8D4BCC2E4835CD0");
        assert_eq!(version(e.clone()), quoted);
        // An empty blob (ADLS CreateFile) or a missing field: the blob itself is asked.
        e["data"]["contentLength"] = json!(0);
        assert_eq!(version(e.clone()), None);
        assert_eq!(version(grid_event()), None);
    }

    #[test]
    fn validation_other_events_and_garbage() {
        let v = json!([{"eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "id": "v",
            "data": {"validationCode": "512d38b6"}}]);
        assert_eq!(
            parse_events(v).unwrap(),
            vec![GridEvent::SubscriptionValidation {
                code: "512d38b6".into()
            }]
        );
        let deleted = json!({"eventType": "Microsoft.Storage.BlobDeleted", "subject": "x"});
        assert!(matches!(
            parse_events(deleted).unwrap()[0],
            GridEvent::Other { .. }
        ));
        assert!(parse_events(json!(42)).unwrap_err().contains("a number"));
        assert!(parse_events(json!("not json")).is_err());
        assert!(
            parse_events(json!({"subject": "x"}))
                .unwrap_err()
                .contains("eventType")
        );
    }
}
