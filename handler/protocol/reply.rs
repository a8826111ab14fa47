//! The one type of HTTP answer every route gives: a status, headers and a JSON body (an
//! OperationOutcome for errors). Under `serve` it is the response itself (`IntoResponse`);
//! under the Functions host it goes back as the HTTP output binding of the invocation
//! (`into_invocation`).

use std::collections::BTreeMap;

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::invocation::{HttpResponseData, InvocationResponse};
use crate::fhir::batch_response::operation_outcome;

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Self {
        Reply {
            status,
            headers: BTreeMap::new(),
            body,
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.insert(name.to_string(), value.into());
        self
    }

    /// An error answer: an OperationOutcome with one issue of `code` saying `message`.
    pub fn outcome(status: u16, code: &str, message: &str) -> Self {
        Reply::new(status, operation_outcome("error", code, message))
    }

    /// 503: `what` (a table, a queue) cannot be used right now; the caller may try again.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> Self {
        Reply::outcome(
            503,
            "transient",
            &format!("{what} cannot be read or written right now ({e}); try again"),
        )
    }

    /// The answer to a host invocation: the reply as the HTTP output binding `binding`.
    pub fn into_invocation(self, binding: &str) -> Response {
        let mut data = HttpResponseData::json(self.status, &self.body);
        data.headers.extend(self.headers);
        Json(InvocationResponse::default().http(binding, data)).into_response()
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(self.body),
        )
            .into_response();
        for (name, value) in self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value.as_str()),
            ) {
                response.headers_mut().insert(n, v);
            }
        }
        response
    }
}
