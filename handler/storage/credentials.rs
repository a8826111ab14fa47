//! How storage requests are authorised: shared key for Azurite and development accounts,
//! managed identity (an Entra ID token for `https://storage.azure.com/.default`) in Azure.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::policies::Policy;
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use url::Url;

use super::shared_key::{SharedKey, SharedKeyPolicy};
use super::{StorageError, StorageResult};
use crate::config::StorageSettings;

pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

#[derive(Clone)]
pub struct StorageCredentials {
    settings: StorageSettings,
    shared_key: Option<SharedKey>,
    token: Option<Arc<dyn TokenCredential>>,
}

impl StorageCredentials {
    pub fn new(settings: &StorageSettings) -> StorageResult<Self> {
        match settings {
            StorageSettings::SharedKey { account, key, .. } => {
                let shared_key =
                    SharedKey::new(account, key).map_err(|e| StorageError::Invalid {
                        operation: "read storage account key",
                        target: account.clone(),
                        reason: format!("the AccountKey is not base64: {e}"),
                    })?;
                Ok(StorageCredentials {
                    settings: settings.clone(),
                    shared_key: Some(shared_key),
                    token: None,
                })
            }
            StorageSettings::ManagedIdentity { client_id, .. } => {
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                    ..Default::default()
                };
                let credential = ManagedIdentityCredential::new(Some(options))
                    .map_err(|e| StorageError::sdk("create managed identity credential", "", e))?;
                Ok(StorageCredentials {
                    settings: settings.clone(),
                    shared_key: None,
                    token: Some(credential),
                })
            }
        }
    }

    pub fn endpoint(&self, service: &str) -> Url {
        self.settings.endpoint(service)
    }

    pub fn account(&self) -> &str {
        self.settings.account()
    }

    /// The per-try signing policy for shared-key accounts (`None` in Azure).
    pub fn signing_policy(&self) -> Option<Arc<dyn Policy>> {
        self.shared_key.clone().map(SharedKeyPolicy::into_policy)
    }

    pub fn token_credential(&self) -> Option<Arc<dyn TokenCredential>> {
        self.token.clone()
    }

    pub fn shared_key(&self) -> Option<&SharedKey> {
        self.shared_key.as_ref()
    }
}
