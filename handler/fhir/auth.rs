//! Bearer tokens for the FHIR server: none (local servers), managed identity, or a client
//! secret (azure_identity). Tokens are cached and refreshed five minutes before they expire,
//! and once more when the server answers 401.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{
    ClientSecretCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId,
};
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::config::FhirAuth;

const REFRESH_MARGIN: Duration = Duration::from_secs(300);

pub enum TokenSource {
    None,
    Credential {
        credential: Arc<dyn TokenCredential>,
        scope: String,
        cached: Mutex<Option<(String, OffsetDateTime)>>,
    },
}

impl TokenSource {
    pub fn new(auth: &FhirAuth, audience: &str) -> azure_core::Result<Self> {
        let credential: Arc<dyn TokenCredential> = match auth {
            FhirAuth::None => return Ok(TokenSource::None),
            FhirAuth::ManagedIdentity { client_id } => {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    ..Default::default()
                }))?
            }
            FhirAuth::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret.clone()),
                None,
            )?,
        };
        Ok(TokenSource::Credential {
            credential,
            scope: format!("{}/.default", audience.trim_end_matches('/')),
            cached: Mutex::new(None),
        })
    }

    /// The bearer token to send, if this source has one.
    pub async fn bearer(&self) -> azure_core::Result<Option<String>> {
        let TokenSource::Credential {
            credential,
            scope,
            cached,
        } = self
        else {
            return Ok(None);
        };
        let mut cached = cached.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && *expires - REFRESH_MARGIN > OffsetDateTime::now_utc()
        {
            return Ok(Some(token.clone()));
        }
        let fresh = credential.get_token(&[scope.as_str()], None).await?;
        let token = fresh.token.secret().to_string();
        *cached = Some((token.clone(), fresh.expires_on));
        Ok(Some(token))
    }

    /// Drops the cached token so the next request fetches a new one (after a 401).
    pub async fn invalidate(&self) {
        if let TokenSource::Credential { cached, .. } = self {
            *cached.lock().await = None;
        }
    }
}
