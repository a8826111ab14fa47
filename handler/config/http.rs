//! Settings of the HTTP side: the keys `serve` asks callers for, the address it listens on, and
//! the public base URL that links in answers are built from (never the request's `Host`
//! header, which a caller chooses: a link built from it would send the caller's key to any
//! host they name).

use std::net::IpAddr;

use url::Url;

use super::{Reader, SettingError, parse_base_url};

pub const ENV_API_KEYS: &str = "FHIRBULK_API_KEYS";
pub const ENV_LISTEN_ADDRESS: &str = "FHIRBULK_LISTEN_ADDRESS";
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1";
pub const ENV_PUBLIC_BASE_URL: &str = "FHIRBULK_PUBLIC_BASE_URL";
/// Set by App Service to the app's default host name.
pub const ENV_WEBSITE_HOSTNAME: &str = "WEBSITE_HOSTNAME";

#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// (serve) keys accepted as `?code=` or `x-functions-key` on every route but `/health`;
    /// none: `serve` is open, and then only on a loopback address.
    pub api_keys: Vec<String>,
    /// (serve) the address `serve` listens on.
    pub listen: IpAddr,
    /// Base of the links in answers (status URLs): `FHIRBULK_PUBLIC_BASE_URL`, else
    /// `https://$WEBSITE_HOSTNAME` (Azure), else the address `serve` listens on.
    pub public_base: String,
}

impl HttpSettings {
    pub(super) fn read(r: &Reader, port: u16) -> Result<Self, SettingError> {
        let raw_listen = r.text(ENV_LISTEN_ADDRESS, DEFAULT_LISTEN_ADDRESS);
        let listen: IpAddr = raw_listen.parse().map_err(|_| SettingError {
            name: ENV_LISTEN_ADDRESS,
            value: raw_listen.clone(),
            reason: "an IP address to listen on, e.g. 127.0.0.1 or 0.0.0.0".into(),
        })?;
        let api_keys: Vec<String> =
            r.0.get(ENV_API_KEYS)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
        if let Some(short) = api_keys.iter().find(|k| k.len() < 16) {
            return Err(SettingError {
                name: ENV_API_KEYS,
                value: "<redacted>".into(),
                reason: format!(
                    "a key of {} characters is too easy to guess; use 16 or more (e.g. openssl rand -hex 24)",
                    short.len()
                ),
            });
        }
        if api_keys.is_empty() && !listen.is_loopback() {
            return Err(SettingError {
                name: ENV_API_KEYS,
                value: String::new(),
                reason: format!(
                    "listening on {listen} ({ENV_LISTEN_ADDRESS}) opens the handler to the network: set one or more keys (comma-separated) that callers send as ?code= or x-functions-key"
                ),
            });
        }
        let public_base = match (r.0.get(ENV_PUBLIC_BASE_URL), r.0.get(ENV_WEBSITE_HOSTNAME)) {
            (Some(raw), _) => parse_base_url(&raw)
                .map(|u: Url| u.as_str().trim_end_matches('/').to_string())
                .map_err(|reason| SettingError {
                    name: ENV_PUBLIC_BASE_URL,
                    value: raw,
                    reason,
                })?,
            (None, Some(host)) => format!("https://{host}"),
            (None, None) => format!("http://{}", std::net::SocketAddr::new(listen, port)),
        };
        Ok(HttpSettings {
            api_keys,
            listen,
            public_base,
        })
    }

    /// Whether `presented` is one of the keys (compared in constant time).
    pub fn accepts(&self, presented: &str) -> bool {
        self.api_keys.iter().fold(false, |found, key| {
            let same = key.len() == presented.len()
                && key
                    .bytes()
                    .zip(presented.bytes())
                    .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                    == 0;
            found | same
        })
    }
}
