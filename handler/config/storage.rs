//! How the handler reaches its storage account: shared key over explicit endpoints (Azurite
//! and development accounts, from a connection string) or managed identity in Azure.

use std::collections::HashMap;

use url::Url;

/// The Azurite development account, used when the connection string says `UseDevelopmentStorage=true`.
/// Its key is the well-known public Azurite key from the emulator's documentation, not a secret.
pub const AZURITE_CONNECTION_STRING: &str = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;";

/// How the handler reaches its storage account.
// Built once at start-up: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum StorageSettings {
    /// Azurite or a development account: shared-key signing over explicit endpoints.
    SharedKey {
        account: String,
        key: String,
        blob: Url,
        queue: Url,
        table: Url,
    },
    /// Azure: managed identity against `https://<account>.<service>.core.windows.net`.
    ManagedIdentity {
        account: String,
        client_id: Option<String>,
    },
}

impl StorageSettings {
    pub fn account(&self) -> &str {
        match self {
            StorageSettings::SharedKey { account, .. } => account,
            StorageSettings::ManagedIdentity { account, .. } => account,
        }
    }

    /// Service endpoint for `service` (`blob`, `queue` or `table`), without a trailing slash.
    pub fn endpoint(&self, service: &str) -> Url {
        match self {
            StorageSettings::SharedKey {
                blob, queue, table, ..
            } => match service {
                "blob" => blob.clone(),
                "queue" => queue.clone(),
                _ => table.clone(),
            },
            StorageSettings::ManagedIdentity { account, .. } => {
                Url::parse(&format!("https://{account}.{service}.core.windows.net"))
                    .expect("account name was validated")
            }
        }
    }
}

pub(super) fn valid_account_name(s: &str) -> bool {
    (3..=24).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Parses an Azure Storage connection string (`AccountName=..;AccountKey=..;BlobEndpoint=..`)
/// or `UseDevelopmentStorage=true`. Endpoints lose any trailing slash: Azurite rejects `//`.
pub fn parse_connection_string(cs: &str) -> Result<StorageSettings, String> {
    let cs = if cs.trim().eq_ignore_ascii_case("UseDevelopmentStorage=true") {
        AZURITE_CONNECTION_STRING
    } else {
        cs
    };
    let parts: HashMap<String, String> = cs
        .split(';')
        .filter(|p| !p.trim().is_empty())
        .filter_map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let account = parts
        .get("accountname")
        .ok_or("the connection string has no AccountName")?
        .clone();
    let key = parts
        .get("accountkey")
        .ok_or("the connection string has no AccountKey")?
        .clone();
    let protocol = parts
        .get("defaultendpointsprotocol")
        .map(String::as_str)
        .unwrap_or("https");
    let suffix = parts
        .get("endpointsuffix")
        .map(String::as_str)
        .unwrap_or("core.windows.net");
    let endpoint = |service: &str| -> Result<Url, String> {
        let raw = parts
            .get(&format!("{service}endpoint"))
            .cloned()
            .unwrap_or_else(|| format!("{protocol}://{account}.{service}.{suffix}"));
        let trimmed = raw.trim_end_matches('/');
        Url::parse(trimmed).map_err(|e| format!("{service} endpoint {trimmed:?}: {e}"))
    };
    Ok(StorageSettings::SharedKey {
        blob: endpoint("blob")?,
        queue: endpoint("queue")?,
        table: endpoint("table")?,
        account,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_string_trailing_slashes_are_dropped() {
        let s = parse_connection_string(
            "AccountName=a;AccountKey=a2V5;BlobEndpoint=http://h:1/a/;QueueEndpoint=http://h:2/a/;TableEndpoint=http://h:3/a",
        )
        .unwrap();
        assert_eq!(s.endpoint("blob").as_str(), "http://h:1/a");
        assert_eq!(s.endpoint("queue").as_str(), "http://h:2/a");
    }
}
