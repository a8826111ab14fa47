//! Shared Key request signing for Azurite and development accounts only.
//!
//! The official Azure SDK 1.x crates authenticate with Entra ID tokens alone, and Azurite only
//! accepts OAuth over HTTPS; so against Azurite we add this policy last in the per-try pipeline
//! (just before the transport) and sign each request the way the storage service expects.
//! In Azure the storage account has shared-key access disabled and managed identity is used.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::{
    Context, Request,
    policies::{Policy, PolicyResult},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

/// An account name with its decoded key.
#[derive(Clone)]
pub struct SharedKey {
    pub account: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKey")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl SharedKey {
    pub fn new(account: &str, base64_key: &str) -> Result<Self, base64::DecodeError> {
        Ok(SharedKey {
            account: account.to_string(),
            key: STANDARD.decode(base64_key)?,
        })
    }

    fn sign(&self, string_to_sign: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(string_to_sign.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }

    /// `SharedKey` authorization for the Blob and Queue services.
    /// `headers` are (lower-case name, value) pairs as they will be sent.
    pub fn blob_queue_authorization(
        &self,
        verb: &str,
        url: &Url,
        headers: &[(String, String)],
    ) -> String {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let content_length = match header("content-length") {
            "0" => "",
            other => other,
        };
        let mut ms: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(n, _)| n.starts_with("x-ms-"))
            .map(|(n, v)| (n.as_str(), v.trim()))
            .collect();
        ms.sort();
        let mut s = format!(
            "{verb}\n{}\n{}\n{content_length}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n",
            header("content-encoding"),
            header("content-language"),
            header("content-md5"),
            header("content-type"),
            header("if-modified-since"),
            header("if-match"),
            header("if-none-match"),
            header("if-unmodified-since"),
            header("range"),
        );
        for (n, v) in ms {
            s.push_str(n);
            s.push(':');
            s.push_str(v);
            s.push('\n');
        }
        s.push_str(&self.canonicalized_resource(url));
        let mut query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
            .collect();
        query.sort();
        // Repeated parameters are joined with commas, in sorted order (REST spec).
        let mut i = 0;
        while i < query.len() {
            let name = query[i].0.clone();
            let mut values = vec![query[i].1.clone()];
            while i + 1 < query.len() && query[i + 1].0 == name {
                i += 1;
                values.push(query[i].1.clone());
            }
            s.push_str(&format!("\n{name}:{}", values.join(",")));
            i += 1;
        }
        format!("SharedKey {}:{}", self.account, self.sign(&s))
    }

    /// `SharedKeyLite` authorization for the Table service: `x-ms-date\n/account/path`,
    /// plus `?comp=` when present.
    pub fn table_authorization(&self, date: &str, url: &Url) -> String {
        let mut s = format!("{date}\n{}", self.canonicalized_resource(url));
        if let Some((_, comp)) = url.query_pairs().find(|(k, _)| k == "comp") {
            s.push_str(&format!("?comp={comp}"));
        }
        format!("SharedKeyLite {}:{}", self.account, self.sign(&s))
    }

    /// `/account` + the URL path as sent. On Azurite's path-style URLs the path already starts
    /// with the account, so the string reads `/devstoreaccount1/devstoreaccount1/...` (tried).
    fn canonicalized_resource(&self, url: &Url) -> String {
        format!("/{}{}", self.account, url.path())
    }
}

/// RFC 1123 date as the storage services want in `x-ms-date`.
pub fn storage_date_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// An `azure_core` policy that signs every attempt with Shared Key.
#[derive(Debug)]
pub struct SharedKeyPolicy {
    key: SharedKey,
}

impl SharedKeyPolicy {
    pub fn into_policy(key: SharedKey) -> Arc<dyn Policy> {
        Arc::new(SharedKeyPolicy { key })
    }
}

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        request.insert_header("x-ms-date", storage_date_now());
        let body_len = request.body().len().unwrap_or(0);
        if body_len > 0 || !matches!(request.method().as_ref(), "GET" | "HEAD" | "DELETE") {
            request.insert_header("content-length", body_len.to_string());
        }
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_ascii_lowercase(), v.as_str().to_string()))
            .collect();
        let auth =
            self.key
                .blob_queue_authorization(request.method().as_ref(), request.url(), &headers);
        request.insert_header("authorization", auth);
        next[0].send(ctx, request, &next[1..]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn key() -> SharedKey {
        SharedKey::new("devstoreaccount1", KEY).unwrap()
    }

    /// Recomputes the documented string-to-sign by hand and checks the signature against it.
    #[test]
    fn blob_signature_covers_headers_resource_and_sorted_query() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/bundles?restype=container&comp=list&include=metadata",
        )
        .unwrap();
        let headers = vec![
            ("x-ms-version".to_string(), "2025-11-05".to_string()),
            (
                "x-ms-date".to_string(),
                "Mon, 23 Nov 2026 10:00:00 GMT".to_string(),
            ),
            ("content-length".to_string(), "0".to_string()),
        ];
        let expected_sts = "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Mon, 23 Nov 2026 10:00:00 GMT\nx-ms-version:2025-11-05\n/devstoreaccount1/devstoreaccount1/bundles\ncomp:list\ninclude:metadata\nrestype:container";
        let auth = key().blob_queue_authorization("GET", &url, &headers);
        assert_eq!(
            auth,
            format!("SharedKey devstoreaccount1:{}", key().sign(expected_sts))
        );
    }

    #[test]
    fn table_signature_is_date_and_resource() {
        let url = Url::parse("http://127.0.0.1:10002/devstoreaccount1/imports()").unwrap();
        let date = "Mon, 23 Nov 2026 10:00:00 GMT";
        let auth = key().table_authorization(date, &url);
        let expected = key().sign(&format!(
            "{date}\n/devstoreaccount1/devstoreaccount1/imports()"
        ));
        assert_eq!(auth, format!("SharedKeyLite devstoreaccount1:{expected}"));
    }

    /// Worked example from the Azure Storage REST documentation's key (a known HMAC vector):
    /// the signature must be stable for a fixed input.
    #[test]
    fn signature_is_deterministic_base64_hmac_sha256() {
        let sig = key().sign("abc");
        assert_eq!(STANDARD.decode(&sig).unwrap().len(), 32);
        assert_eq!(sig, key().sign("abc"));
        assert_ne!(sig, key().sign("abd"));
    }

    #[test]
    fn debug_never_prints_the_key() {
        assert!(!format!("{:?}", key()).contains("Eby8"));
    }
}
