//! The Azure Functions custom-handler payloads: the host POSTs `{Data, Metadata}` to
//! `/<FunctionName>` and reads `{Outputs, Logs, ReturnValue}` back. A non-2xx answer fails the
//! invocation, which is how a queue message or an Event Grid delivery gets retried.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::event_grid::peel;

#[derive(Debug, Default, Deserialize)]
pub struct InvocationRequest {
    #[serde(rename = "Data", default)]
    pub data: Map<String, Value>,
    #[serde(rename = "Metadata", default)]
    pub metadata: Map<String, Value>,
}

impl InvocationRequest {
    /// The trigger's value under its binding name, strings peeled of JSON encoding.
    pub fn binding(&self, name: &str) -> Option<Value> {
        self.data.get(name).cloned().map(peel)
    }

    /// A queue trigger's `DequeueCount` metadata (1 on the first delivery).
    pub fn dequeue_count(&self) -> u32 {
        match self.metadata.get("DequeueCount") {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(1) as u32,
            Some(Value::String(s)) => s.trim_matches('"').parse().unwrap_or(1),
            _ => 1,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct InvocationResponse {
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvocationResponse {
    pub fn log(mut self, line: impl Into<String>) -> Self {
        self.logs.push(line.into());
        self
    }

    /// Sets the `http` output binding named `name`.
    pub fn http(mut self, name: &str, response: HttpResponseData) -> Self {
        self.outputs.insert(name.to_string(), response.into_value());
        self
    }
}

/// An HTTP trigger's request as the host forwards it in `Data.<binding>`.
#[derive(Debug, Default, Clone)]
pub struct HttpRequestData {
    pub url: String,
    pub method: String,
    pub query: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
    pub body: Option<String>,
}

impl HttpRequestData {
    pub fn from_binding(value: &Value) -> Self {
        let strings = |v: Option<&Value>| -> BTreeMap<String, String> {
            match v.cloned().map(peel) {
                Some(Value::Object(m)) => m
                    .into_iter()
                    .map(|(k, v)| {
                        let s = match v {
                            Value::String(s) => s,
                            Value::Array(a) => a
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(","),
                            other => other.to_string(),
                        };
                        (k, s)
                    })
                    .collect(),
                _ => BTreeMap::new(),
            }
        };
        HttpRequestData {
            url: value
                .get("Url")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            method: value
                .get("Method")
                .and_then(Value::as_str)
                .unwrap_or("GET")
                .to_ascii_uppercase(),
            query: strings(value.get("Query")),
            headers: strings(value.get("Headers"))
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            params: strings(value.get("Params")),
            body: match value.get("Body") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            },
        }
    }
}

/// The value of an `http` output binding.
#[derive(Debug, Clone)]
pub struct HttpResponseData {
    pub status: u16,
    pub body: String,
    pub headers: BTreeMap<String, String>,
}

impl HttpResponseData {
    pub fn json(status: u16, body: &Value) -> Self {
        HttpResponseData {
            status,
            body: body.to_string(),
            headers: BTreeMap::from([("Content-Type".to_string(), "application/json".to_string())]),
        }
    }

    pub fn into_value(self) -> Value {
        serde_json::json!({
            "statusCode": self.status.to_string(),
            "body": self.body,
            "headers": self.headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn http_trigger_data_in_both_query_forms() {
        let req = json!({"Url": "https://app/imports/ndjson/a.ndjson?x=1", "Method": "get",
            "Query": {"status": "loaded"}, "Headers": {"Content-Type": ["application/json"]},
            "Params": {"container": "ndjson", "blob": "a.ndjson"}});
        let r = HttpRequestData::from_binding(&req);
        assert_eq!(r.method, "GET");
        assert_eq!(r.query["status"], "loaded");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.params["blob"], "a.ndjson");
        assert_eq!(r.body, None);
        // Hosts before 3.0.14785 sent Query as a JSON string.
        let old = json!({"Url": "u", "Method": "GET", "Query": "{\"status\":\"failed\"}"});
        assert_eq!(
            HttpRequestData::from_binding(&old).query["status"],
            "failed"
        );
    }

    #[test]
    fn responses_have_the_shape_the_host_reads() {
        let resp = InvocationResponse::default()
            .http("res", HttpResponseData::json(202, &json!({"id": "1"})))
            .log("ok");
        let v = serde_json::to_value(resp).unwrap();
        assert_eq!(v["Outputs"]["res"]["statusCode"], "202");
        assert_eq!(v["Outputs"]["res"]["body"], "{\"id\":\"1\"}");
        assert_eq!(v["Logs"][0], "ok");
        assert!(v["ReturnValue"].is_null());
    }

    #[test]
    fn dequeue_count_in_number_or_string_form() {
        let mut r = InvocationRequest::default();
        assert_eq!(r.dequeue_count(), 1);
        r.metadata.insert("DequeueCount".into(), json!(3));
        assert_eq!(r.dequeue_count(), 3);
        r.metadata.insert("DequeueCount".into(), json!("4"));
        assert_eq!(r.dequeue_count(), 4);
    }
}
