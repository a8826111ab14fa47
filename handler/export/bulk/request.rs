//! Reading a `$export` kick-off: the IG's headers (`Accept: application/fhir+json`,
//! `Prefer: respond-async`, optionally `handling=lenient`) and its parameters, from the query
//! string of a `GET` or the `Parameters` body of a `POST`, as one list of `(name, value)`.

use serde_json::Value;

use crate::protocol::reply::Reply;

/// A kick-off as it arrived, whichever way (Functions host or `serve`).
#[derive(Debug, Default, Clone)]
pub struct KickOff {
    pub method: String,
    /// The URL the client called (for the manifest's `request`; its `code` is dropped).
    pub url: String,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    pub accept: Option<String>,
    pub prefer: Option<String>,
    pub body: Option<String>,
}

/// The parameters asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Every parameter but `patient`, in the order given (repeats kept).
    pub params: Vec<(String, String)>,
    /// The `patient` references (POST only).
    pub patients: Vec<String>,
    /// `Prefer: handling=lenient`: unsupported parameters are ignored (and noted), not refused.
    pub lenient: bool,
}

/// Most bytes of a kick-off `Parameters` body (a long `patient` list fits).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

impl KickOff {
    /// Checks the headers and collects the parameters; the error is the IG's 4xx.
    pub fn asked(&self) -> Result<Asked, Reply> {
        let lenient = self.check_headers()?;
        let mut asked = Asked {
            lenient,
            ..Asked::default()
        };
        // `code` is the function key of an Azure Functions URL, not an export parameter.
        asked
            .params
            .extend(self.query.iter().filter(|(k, _)| k != "code").cloned());
        match self.method.as_str() {
            "GET" => {
                if asked.params.iter().any(|(k, _)| k == "patient") {
                    return Err(invalid(
                        "patient is a POST parameter: send the kick-off as POST with a Parameters body listing each patient as a valueReference",
                    ));
                }
            }
            "POST" => {
                let body = self.body.as_deref().unwrap_or_default();
                if body.len() > MAX_BODY_BYTES {
                    return Err(invalid(&format!(
                        "the Parameters body is {} bytes; at most {MAX_BODY_BYTES} are accepted",
                        body.len()
                    )));
                }
                if !body.trim().is_empty() {
                    parameters_body(body, &mut asked).map_err(|e| invalid(&e))?;
                }
            }
            other => {
                return Err(Reply::outcome(
                    405,
                    "not-supported",
                    &format!("$export is started by GET or POST, not {other}"),
                ));
            }
        }
        Ok(asked)
    }

    /// `Accept` must allow `application/fhir+json` and `Prefer` must say `respond-async`;
    /// returns whether `Prefer` also says `handling=lenient`.
    fn check_headers(&self) -> Result<bool, Reply> {
        let accept = self.accept.as_deref().unwrap_or_default();
        let accepted = accept.split(',').any(|v| {
            let media = v.split(';').next().unwrap_or_default().trim();
            matches!(
                media.to_ascii_lowercase().as_str(),
                "application/fhir+json" | "application/json" | "*/*" | "application/*"
            )
        });
        if !accepted {
            return Err(invalid(&format!(
                "send Accept: application/fhir+json (the format of an error answer); it was {:?}",
                accept
            )));
        }
        let prefer = self
            .prefer
            .as_deref()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let preferences: Vec<&str> = prefer.split([',', ';']).map(str::trim).collect();
        if !preferences.contains(&"respond-async") {
            return Err(invalid(
                "send Prefer: respond-async: $export runs asynchronously and answers 202 with a status URL",
            ));
        }
        Ok(preferences.contains(&"handling=lenient"))
    }
}

/// Reads a `Parameters` resource: each parameter's value as text (`patient` references into
/// `asked.patients`).
fn parameters_body(body: &str, asked: &mut Asked) -> Result<(), String> {
    let value: Value = serde_json::from_str(body)
        .map_err(|e| format!("the body is not JSON ({e}); send a FHIR Parameters resource"))?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err("the body must be a FHIR Parameters resource".into());
    }
    for (i, p) in value
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or(format!("parameter[{i}] has no name"))?;
        if name == "patient" {
            let reference = p
                .pointer("/valueReference/reference")
                .and_then(Value::as_str)
                .ok_or(format!(
                    "parameter[{i}] patient needs a valueReference with a reference (Patient/<id>)"
                ))?;
            asked.patients.push(reference.to_string());
            continue;
        }
        let text = p
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, _)| k.starts_with("value"))
            .and_then(|(_, v)| match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .ok_or(format!(
                "parameter[{i}] {name} has no value[x] of a simple type (valueString, valueInstant, ...)"
            ))?;
        asked.params.push((name.to_string(), text));
    }
    Ok(())
}

fn invalid(message: &str) -> Reply {
    Reply::outcome(400, "invalid", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(query: &[(&str, &str)]) -> KickOff {
        KickOff {
            method: "GET".into(),
            url: "http://loader/$export".into(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            accept: Some("application/fhir+json".into()),
            prefer: Some("respond-async".into()),
            body: None,
        }
    }

    #[test]
    fn the_headers_the_ig_requires_are_checked() {
        assert!(get(&[]).asked().is_ok());
        let mut k = get(&[]);
        k.prefer = None;
        let reply = k.asked().unwrap_err();
        assert_eq!(reply.status, 400);
        assert!(reply.body.to_string().contains("respond-async"));
        let mut k = get(&[]);
        k.accept = Some("application/xml".into());
        assert_eq!(k.asked().unwrap_err().status, 400);
        let mut k = get(&[]);
        k.prefer = Some("respond-async, handling=lenient".into());
        assert!(k.asked().unwrap().lenient);
    }

    #[test]
    fn parameters_come_from_the_query_or_a_parameters_body() {
        let asked = get(&[("_type", "Patient"), ("code", "key")])
            .asked()
            .unwrap();
        assert_eq!(asked.params, [("_type".to_string(), "Patient".to_string())]);
        assert_eq!(
            get(&[("patient", "Patient/1")]).asked().unwrap_err().status,
            400
        );
        let mut post = get(&[]);
        post.method = "POST".into();
        post.body = Some(
            r#"{"resourceType":"Parameters","parameter":[
                {"name":"_since","valueInstant":"2024-01-01T00:00:00Z"},
                {"name":"_type","valueString":"Observation"},
                {"name":"patient","valueReference":{"reference":"Patient/p1"}}]}"#
                .into(),
        );
        let asked = post.asked().unwrap();
        assert_eq!(asked.params.len(), 2);
        assert_eq!(asked.patients, ["Patient/p1"]);
        post.body = Some(r#"{"resourceType":"Bundle"}"#.into());
        assert_eq!(post.asked().unwrap_err().status, 400);
    }
}
