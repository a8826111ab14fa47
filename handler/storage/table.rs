//! A small Table Storage REST client over reqwest (the official SDK has no Table crate).
//!
//! Entities are JSON maps; every write that must not lose a concurrent update carries the ETag
//! it read (`If-Match`), and the service answers 412 when another writer got there first.
//! Auth is a bearer token in Azure and Shared Key Lite on Azurite.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Map, Value, json};
use url::Url;

use super::credentials::{STORAGE_SCOPE, StorageCredentials};
use super::shared_key::{SharedKey, storage_date_now};
use super::table_transaction::{self, TransactionOp, TransactionOutcome};
use super::{StorageError, StorageResult};

const TABLE_SERVICE_VERSION: &str = "2019-02-02";

/// One table row: its properties (including `PartitionKey`/`RowKey`) and its ETag.
#[derive(Clone, Debug, Default)]
pub struct Entity {
    pub props: Map<String, Value>,
    pub etag: String,
}

impl Entity {
    pub fn new(partition_key: &str, row_key: &str) -> Self {
        let mut props = Map::new();
        props.insert("PartitionKey".into(), partition_key.into());
        props.insert("RowKey".into(), row_key.into());
        Entity {
            props,
            etag: String::new(),
        }
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.props.get(name).and_then(Value::as_str)
    }

    /// When the row was last written, as the service keeps it (`Timestamp`, on rows read).
    pub fn written_at(&self) -> Option<time::OffsetDateTime> {
        self.str("Timestamp").and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    }

    /// Reads an integer stored as a JSON number or as an `Edm.Int64` string.
    pub fn i64(&self, name: &str) -> i64 {
        match self.props.get(name) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        }
    }

    pub fn set_str(&mut self, name: &str, value: impl Into<String>) {
        self.props.insert(name.into(), Value::String(value.into()));
    }

    /// Stores a 64-bit integer with its `Edm.Int64` annotation (plain JSON numbers are Int32).
    pub fn set_i64(&mut self, name: &str, value: i64) {
        self.props
            .insert(name.into(), Value::String(value.to_string()));
        self.props
            .insert(format!("{name}@odata.type"), json!("Edm.Int64"));
    }
}

/// `value` as the inside of an OData string literal (`'...'`): quotes doubled. For filters
/// and entity keys.
pub fn odata_string(value: &str) -> String {
    value.replace('\'', "''")
}

/// Escapes characters a PartitionKey/RowKey may not hold (`/ \ # ?`, control chars) and `%`.
pub fn encode_key(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '/' | '\\' | '#' | '?' | '%' | '\'' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[derive(Clone)]
enum TableAuth {
    SharedKeyLite(SharedKey),
    Bearer(Arc<dyn TokenCredential>),
}

/// One request to the Table service.
struct Request<'a> {
    method: Method,
    url: Url,
    body: Option<RequestBody>,
    if_match: Option<&'a str>,
    accept: &'static str,
}

struct RequestBody {
    content_type: String,
    bytes: Vec<u8>,
}

#[derive(Clone)]
pub struct TableClient {
    http: reqwest::Client,
    endpoint: Url,
    auth: TableAuth,
}

impl TableClient {
    pub fn new(credentials: &StorageCredentials, http: reqwest::Client) -> StorageResult<Self> {
        let auth = match (credentials.shared_key(), credentials.token_credential()) {
            (Some(key), _) => TableAuth::SharedKeyLite(key.clone()),
            (None, Some(token)) => TableAuth::Bearer(token),
            (None, None) => {
                return Err(StorageError::Invalid {
                    operation: "create table client",
                    target: credentials.account().into(),
                    reason: "no credential configured".into(),
                });
            }
        };
        Ok(TableClient {
            http,
            endpoint: credentials.endpoint("table"),
            auth,
        })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.endpoint.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{path}"));
        url
    }

    fn entity_url(&self, table: &str, pk: &str, rk: &str) -> Url {
        let path = format!(
            "{table}(PartitionKey='{}',RowKey='{}')",
            odata_string(pk),
            odata_string(rk)
        );
        // Keys are already restricted by `encode_key`; escape what is left for the URL path.
        let encoded = percent_encoding::utf8_percent_encode(&path, PATH_SET).to_string();
        let mut url = self.endpoint.clone();
        let base = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base}/{encoded}"));
        url
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Map<String, Value>>,
        if_match: Option<&str>,
        operation: &'static str,
        target: &str,
    ) -> StorageResult<(StatusCode, HeaderMap, String)> {
        let request = Request {
            method,
            url,
            body: body.map(|b| RequestBody {
                content_type: "application/json".into(),
                bytes: entity_json(b),
            }),
            if_match,
            accept: "application/json;odata=nometadata",
        };
        self.execute(request, operation, target).await
    }

    async fn execute(
        &self,
        request: Request<'_>,
        operation: &'static str,
        target: &str,
    ) -> StorageResult<(StatusCode, HeaderMap, String)> {
        let Request {
            method,
            url,
            body,
            if_match,
            accept,
        } = request;
        let date = storage_date_now();
        let mut req = self
            .http
            .request(method, url.clone())
            .header("x-ms-date", &date)
            .header("x-ms-version", TABLE_SERVICE_VERSION)
            .header("Accept", accept)
            .header("DataServiceVersion", "3.0;NetFx")
            .header("MaxDataServiceVersion", "3.0;NetFx");
        if let Some(etag) = if_match {
            req = req.header("If-Match", etag);
        }
        if let Some(body) = body {
            req = req
                .header("Content-Type", body.content_type)
                .header("Prefer", "return-no-content")
                .body(body.bytes);
        }
        req = match &self.auth {
            TableAuth::SharedKeyLite(key) => {
                req.header("Authorization", key.table_authorization(&date, &url))
            }
            TableAuth::Bearer(credential) => {
                let token = credential
                    .get_token(&[STORAGE_SCOPE], None)
                    .await
                    .map_err(|e| StorageError::sdk("get storage token", target, e))?;
                req.bearer_auth(token.token.secret())
            }
        };
        let resp = req.send().await.map_err(|source| StorageError::Transport {
            operation,
            target: target.to_string(),
            source,
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            Ok((status, headers, text))
        } else {
            Err(StorageError::Http {
                operation,
                target: target.to_string(),
                status: status.as_u16(),
                body: text.chars().take(300).collect(),
            })
        }
    }

    pub async fn create_table(&self, table: &str) -> StorageResult<()> {
        let body = json!({ "TableName": table });
        match self
            .send(
                Method::POST,
                self.url("Tables"),
                body.as_object(),
                None,
                "create table",
                table,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn get(&self, table: &str, pk: &str, rk: &str) -> StorageResult<Option<Entity>> {
        let target = format!("{table}/{pk}/{rk}");
        match self
            .send(
                Method::GET,
                self.entity_url(table, pk, rk),
                None,
                None,
                "read entity",
                &target,
            )
            .await
        {
            Ok((_, headers, text)) => {
                let props: Map<String, Value> =
                    serde_json::from_str(&text).map_err(|e| StorageError::Invalid {
                        operation: "read entity",
                        target,
                        reason: e.to_string(),
                    })?;
                Ok(Some(Entity {
                    props,
                    etag: etag_of(&headers),
                }))
            }
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Inserts a new entity; a 409 conflict means it already exists.
    pub async fn insert(&self, table: &str, entity: &Entity) -> StorageResult<String> {
        let target = format!("{table}/{}", entity.str("RowKey").unwrap_or(""));
        let (_, headers, _) = self
            .send(
                Method::POST,
                self.url(table),
                Some(&entity.props),
                None,
                "insert entity",
                &target,
            )
            .await?;
        Ok(etag_of(&headers))
    }

    /// Inserts a new entity; `Ok(None)` when one with its keys exists already (a repeat).
    pub async fn insert_new(&self, table: &str, entity: &Entity) -> StorageResult<Option<String>> {
        match self.insert(table, entity).await {
            Ok(etag) => Ok(Some(etag)),
            Err(e) if e.status() == Some(409) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the entity if nobody changed it since it was read (its ETag); on success it
    /// carries the new ETag. `Ok(false)` when another writer changed or deleted it first.
    pub async fn replace_if_unchanged(
        &self,
        table: &str,
        entity: &mut Entity,
    ) -> StorageResult<bool> {
        match self.replace(table, entity).await {
            Ok(etag) => {
                entity.etag = etag;
                Ok(true)
            }
            Err(e) if e.is_conflict() || e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces the entity if its ETag still matches (`"*"` replaces unconditionally);
    /// a 412 means someone else changed it since it was read.
    pub async fn replace(&self, table: &str, entity: &Entity) -> StorageResult<String> {
        let (pk, rk) = keys(entity);
        let etag = replace_condition(entity);
        let (_, headers, _) = self
            .send(
                Method::PUT,
                self.entity_url(table, pk, rk),
                Some(&entity.props),
                Some(etag),
                "replace entity",
                &format!("{table}/{pk}/{rk}"),
            )
            .await?;
        Ok(etag_of(&headers))
    }

    /// Inserts or replaces unconditionally.
    pub async fn upsert(&self, table: &str, entity: &Entity) -> StorageResult<String> {
        let (pk, rk) = keys(entity);
        let (_, headers, _) = self
            .send(
                Method::PUT,
                self.entity_url(table, pk, rk),
                Some(&entity.props),
                None,
                "upsert entity",
                &format!("{table}/{pk}/{rk}"),
            )
            .await?;
        Ok(etag_of(&headers))
    }

    pub async fn delete(&self, table: &str, pk: &str, rk: &str) -> StorageResult<()> {
        match self
            .send(
                Method::DELETE,
                self.entity_url(table, pk, rk),
                None,
                Some("*"),
                "delete entity",
                &format!("{table}/{pk}/{rk}"),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies `ops` (rows of one partition, at most 100) as one entity group transaction:
    /// all of them, or none.
    pub async fn transact(
        &self,
        table: &str,
        ops: &[TransactionOp<'_>],
    ) -> StorageResult<TransactionOutcome> {
        let parts: Vec<table_transaction::Part> = ops
            .iter()
            .map(|op| match op {
                TransactionOp::Insert(e) => table_transaction::Part {
                    method: Method::POST,
                    url: self.url(table),
                    if_match: None,
                    json: entity_json(&e.props),
                },
                TransactionOp::Replace(e) => {
                    let (pk, rk) = keys(e);
                    table_transaction::Part {
                        method: Method::PUT,
                        url: self.entity_url(table, pk, rk),
                        if_match: Some(replace_condition(e).to_string()),
                        json: entity_json(&e.props),
                    }
                }
            })
            .collect();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (content_type, bytes) = table_transaction::body(&parts, &id);
        let request = Request {
            method: Method::POST,
            url: self.url("$batch"),
            body: Some(RequestBody {
                content_type,
                bytes,
            }),
            if_match: None,
            accept: "application/json;odata=nometadata",
        };
        let (_, _, text) = self
            .execute(request, "entity group transaction", table)
            .await?;
        Ok(table_transaction::outcome(&text, ops.len()))
    }

    /// All entities matching an OData `$filter`, following continuation tokens.
    pub async fn query(&self, table: &str, filter: &str) -> StorageResult<Vec<Entity>> {
        self.query_selected(table, filter, None).await
    }

    /// `query` reading only the properties `select` names (`$select`, comma-separated).
    pub async fn query_selected(
        &self,
        table: &str,
        filter: &str,
        select: Option<&str>,
    ) -> StorageResult<Vec<Entity>> {
        let mut pages = self.query_pages(table, filter);
        pages.select = select.map(str::to_string);
        let mut out = Vec::new();
        while let Some(page) = pages.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }

    /// Whether any entity matches an OData `$filter`: pages of at most one entity (the service
    /// may still answer a page with no entity and a continuation, which is followed).
    pub async fn exists(&self, table: &str, filter: &str) -> StorageResult<bool> {
        let mut pages = self.query_pages(table, filter);
        pages.top = Some(1);
        while let Some(page) = pages.next_page().await? {
            if !page.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A query read a page (up to 1,000 entities, in PartitionKey and RowKey order) at a time,
    /// for results too large to hold at once.
    pub fn query_pages(&self, table: &str, filter: &str) -> QueryPages<'_> {
        QueryPages {
            client: self,
            table: table.to_string(),
            filter: filter.to_string(),
            top: None,
            select: None,
            next: None,
            done: false,
        }
    }

    /// One page of a query: its entities and the continuation, if there is more.
    async fn query_page(
        &self,
        table: &str,
        filter: &str,
        top: Option<usize>,
        select: Option<&str>,
        next: Option<&(String, String)>,
    ) -> StorageResult<(Vec<Entity>, Option<(String, String)>)> {
        let mut url = self.url(&format!("{table}()"));
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("$filter", filter);
            if let Some(top) = top {
                q.append_pair("$top", &top.to_string());
            }
            if let Some(select) = select {
                q.append_pair("$select", select);
            }
            if let Some((pk, rk)) = next {
                q.append_pair("NextPartitionKey", pk);
                q.append_pair("NextRowKey", rk);
            }
        }
        // Minimal metadata: unlike `nometadata`, each entity carries its ETag (`odata.etag`),
        // so rows read by a query can be replaced conditionally.
        let request = Request {
            method: Method::GET,
            url,
            body: None,
            if_match: None,
            accept: "application/json;odata=minimalmetadata",
        };
        let (_, headers, text) = self.execute(request, "query entities", table).await?;
        let mut page: Value = serde_json::from_str(&text).map_err(|e| StorageError::Invalid {
            operation: "query entities",
            target: table.into(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::new();
        if let Some(Value::Array(values)) = page.get_mut("value").map(Value::take) {
            for v in values {
                if let Value::Object(mut props) = v {
                    let etag = match props.remove("odata.etag") {
                        Some(Value::String(etag)) => etag,
                        _ => String::new(),
                    };
                    // Control information (`odata.id`, `odata.editLink`...) is not a property.
                    props.retain(|name, _| !name.starts_with("odata."));
                    out.push(Entity { props, etag });
                }
            }
        }
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let more = match (
            header("x-ms-continuation-NextPartitionKey"),
            header("x-ms-continuation-NextRowKey"),
        ) {
            (Some(pk), Some(rk)) => Some((pk, rk)),
            _ => None,
        };
        Ok((out, more))
    }
}

/// The pages of one query (`TableClient::query_pages`).
pub struct QueryPages<'a> {
    client: &'a TableClient,
    table: String,
    filter: String,
    /// `$top`: entities per page at most.
    top: Option<usize>,
    /// `$select`: the properties read.
    select: Option<String>,
    next: Option<(String, String)>,
    done: bool,
}

impl QueryPages<'_> {
    /// The next page; `None` once every page was read. A page may be empty while more follow.
    pub async fn next_page(&mut self) -> StorageResult<Option<Vec<Entity>>> {
        if self.done {
            return Ok(None);
        }
        let (page, more) = self
            .client
            .query_page(
                &self.table,
                &self.filter,
                self.top,
                self.select.as_deref(),
                self.next.as_ref(),
            )
            .await?;
        self.done = more.is_none();
        self.next = more;
        Ok(Some(page))
    }
}

fn keys(entity: &Entity) -> (&str, &str) {
    (
        entity.str("PartitionKey").unwrap_or_default(),
        entity.str("RowKey").unwrap_or_default(),
    )
}

/// The `If-Match` of a replace: the ETag the row was read with, or `*` for a row never read.
fn replace_condition(entity: &Entity) -> &str {
    if entity.etag.is_empty() {
        "*"
    } else {
        &entity.etag
    }
}

fn entity_json(props: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(props).expect("JSON map serialises")
}

fn etag_of(headers: &HeaderMap) -> String {
    headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Characters escaped in an entity path: controls, space, `%` and what URLs reserve.
const PATH_SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_forbidden_characters() {
        assert_eq!(encode_key("a/b#c?d\\e%f'g"), "a%2Fb%23c%3Fd%5Ce%25f%27g");
        assert_eq!(encode_key("Patient.ndjson"), "Patient.ndjson");
    }

    #[test]
    fn int64_round_trips_as_annotated_string() {
        let mut e = Entity::new("p", "r");
        e.set_i64("loaded", 5_000_000_000);
        assert_eq!(e.i64("loaded"), 5_000_000_000);
        assert_eq!(e.str("loaded@odata.type"), Some("Edm.Int64"));
    }
}
