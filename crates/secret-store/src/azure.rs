//! [`AzureKeyVaultProvider`]: Azure Key Vault secrets over HTTP, signed in with the OAuth 2.0
//! client-credentials grant.

use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::http::{client, parse_error, send_error, status_error};
use crate::provider::Provider;
use crate::value::{Fetched, SecretName, Version};

/// Where and how to reach Azure Key Vault.
#[derive(Clone)]
#[non_exhaustive]
pub struct AzureConfig {
    /// The vault's URL, e.g. `https://myvault.vault.azure.net`.
    pub vault_url: String,
    /// The Microsoft Entra tenant id.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: SecretString,
    /// The token endpoint (default
    /// `https://login.microsoftonline.com/<tenant_id>/oauth2/v2.0/token`; sovereign clouds
    /// and tests set their own).
    pub token_endpoint: String,
    /// The scope asked for (default `https://vault.azure.net/.default`).
    pub scope: String,
    /// The Key Vault REST API version (default `7.4`).
    pub api_version: String,
    /// One request's time limit (default 5 s).
    pub timeout: Duration,
}

impl std::fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureConfig")
            .field("vault_url", &self.vault_url)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .field("token_endpoint", &self.token_endpoint)
            .field("scope", &self.scope)
            .field("api_version", &self.api_version)
            .finish_non_exhaustive()
    }
}

impl AzureConfig {
    /// The vault at `vault_url`, signed in as `client_id` of `tenant_id` with `client_secret`.
    pub fn new(
        vault_url: impl Into<String>,
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: SecretString,
    ) -> Self {
        let tenant_id = tenant_id.into();
        Self {
            vault_url: vault_url.into(),
            token_endpoint: format!(
                "https://login.microsoftonline.com/{tenant_id}/oauth2/v2.0/token"
            ),
            tenant_id,
            client_id: client_id.into(),
            client_secret,
            scope: "https://vault.azure.net/.default".to_owned(),
            api_version: "7.4".to_owned(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Another token endpoint.
    #[must_use]
    pub fn token_endpoint(mut self, url: impl Into<String>) -> Self {
        self.token_endpoint = url.into();
        self
    }

    /// Another scope.
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Another REST API version.
    #[must_use]
    pub fn api_version(mut self, v: impl Into<String>) -> Self {
        self.api_version = v.into();
        self
    }

    /// One request's time limit.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

struct Token {
    value: SecretString,
    refresh_at: Instant,
}

/// Secrets in Azure Key Vault. Secret `name` must be a Key Vault name (1 to 127 of
/// `A-Z a-z 0-9 -`); other names are [`Error::InvalidName`] (a miss for the chain).
/// Versions are Key Vault's 32-digit ids; `attributes.exp` becomes the value's expiry, which
/// the cache never passes. Writable: `put` is `PUT /secrets/<name>` (a new version; the old
/// ones stay readable).
///
/// Sign-in: the client-credentials grant at the token endpoint; the token is cached until
/// five minutes before it expires (or half its lifetime, if shorter) and fetched again after
/// a 401. Answers: 404 is a miss; 401 (after one new token) and 403 are [`Error::Denied`];
/// 429, 5xx and connection failures are transient. `list` follows `nextLink` only on the
/// vault's own URL, so the token never goes elsewhere; redirects are not followed.
///
/// ```no_run
/// use palisade_secret_store::azure::{AzureConfig, AzureKeyVaultProvider};
/// let secret = std::env::var("AZURE_CLIENT_SECRET").unwrap().into();
/// let config = AzureConfig::new("https://myvault.vault.azure.net", "tenant-id", "client-id", secret);
/// let azure = AzureKeyVaultProvider::new(config)?;
/// # Ok::<(), palisade_secret_store::Error>(())
/// ```
pub struct AzureKeyVaultProvider {
    name: String,
    config: AzureConfig,
    vault: String,
    client: reqwest::Client,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for AzureKeyVaultProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKeyVaultProvider")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: SecretString,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    3599
}

#[derive(Deserialize)]
struct SecretBundle {
    value: SecretString,
    id: String,
    #[serde(default)]
    attributes: Attributes,
}

#[derive(Deserialize, Default)]
struct Attributes {
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    created: Option<u64>,
}

#[derive(Deserialize)]
struct SecretItem {
    id: String,
}

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    value: Vec<SecretItem>,
    #[serde(rename = "nextLink", default)]
    next_link: Option<String>,
}

/// Pages `list` reads at most.
const MAX_PAGES: usize = 100;

fn check_name(name: &SecretName) -> Result<()> {
    let s = name.as_str();
    if s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err(Error::InvalidName {
            name: s.to_owned(),
            reason: "Azure Key Vault names are 1 to 127 of A-Z a-z 0-9 -",
        })
    }
}

fn version_from_id(id: &str) -> Option<Version> {
    Version::new(id.trim_end_matches('/').rsplit('/').next()?).ok()
}

impl AzureKeyVaultProvider {
    /// A provider for `config` (no request until the first call).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for URLs that are not `http(s)://…` or empty ids.
    pub fn new(config: AzureConfig) -> Result<Self> {
        let vault = config.vault_url.trim_end_matches('/').to_owned();
        for (what, url) in [
            ("vault_url", &vault),
            ("token_endpoint", &config.token_endpoint),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(Error::InvalidConfig(format!(
                    "Azure {what} must be an http(s) URL, got {url:?}"
                )));
            }
        }
        if config.client_id.is_empty() || config.tenant_id.is_empty() {
            return Err(Error::InvalidConfig(
                "Azure tenant_id and client_id must not be empty".to_owned(),
            ));
        }
        Ok(Self {
            name: "azure".to_owned(),
            client: client(config.timeout)?,
            vault,
            config,
            token: Mutex::new(None),
        })
    }

    /// Report under another name.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    async fn token(&self, renew: bool) -> Result<SecretString> {
        let mut slot = self.token.lock().await;
        if !renew
            && let Some(t) = slot.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.value.clone());
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.config.client_id.as_str()),
            ("client_secret", self.config.client_secret.expose_secret()),
            ("scope", self.config.scope.as_str()),
        ];
        let resp = self
            .client
            .post(&self.config.token_endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| send_error(&self.name, e))?;
        let status = resp.status();
        if !status.is_success() {
            // Entra ID answers 400/401 for a bad client id or secret: a denial.
            return Err(match status.as_u16() {
                400 | 401 | 403 => Error::denied(&self.name, format!("HTTP {status} on sign-in")),
                _ => status_error(&self.name, status, "sign-in"),
            });
        }
        let body = zeroize::Zeroizing::new(
            resp.bytes()
                .await
                .map_err(|e| send_error(&self.name, e))?
                .to_vec(),
        );
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| parse_error(&self.name, "sign-in"))?;
        let life = Duration::from_secs(answer.expires_in);
        let early = Duration::from_secs(300).min(life / 2);
        *slot = Some(Token {
            value: answer.access_token.clone(),
            refresh_at: Instant::now() + life - early,
        });
        Ok(answer.access_token)
    }

    /// Send with a bearer token; on 401, once more with a new token.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let mut renew = false;
        loop {
            let token = self.token(renew).await?;
            let resp = build(token.expose_secret())
                .send()
                .await
                .map_err(|e| send_error(&self.name, e))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !renew {
                renew = true;
                continue;
            }
            return Ok(resp);
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{path}?api-version={}",
            self.vault, self.config.api_version
        )
    }
}

#[async_trait]
impl Provider for AzureKeyVaultProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>> {
        check_name(name)?;
        let path = match version {
            None => format!("/secrets/{name}"),
            Some(v) if v.as_str().bytes().all(|b| b.is_ascii_alphanumeric()) => {
                format!("/secrets/{name}/{v}")
            }
            Some(_) => return Ok(None),
        };
        let url = self.url(&path);
        let resp = self.send(|t| self.client.get(&url).bearer_auth(t)).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error(&self.name, resp.status(), "read"));
        }
        let body = zeroize::Zeroizing::new(
            resp.bytes()
                .await
                .map_err(|e| send_error(&self.name, e))?
                .to_vec(),
        );
        let b: SecretBundle =
            serde_json::from_slice(&body).map_err(|_| parse_error(&self.name, "read"))?;
        let version = version_from_id(&b.id)
            .ok_or_else(|| Error::protocol(&self.name, "a secret id without a version"))?;
        let secs = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        Ok(Some(
            Fetched::new(b.value, version)
                .expires_at(b.attributes.exp.map(secs))
                .created_at(b.attributes.created.map(secs)),
        ))
    }

    async fn put(&self, name: &SecretName, value: &SecretString) -> Result<Version> {
        check_name(name)?;
        let url = self.url(&format!("/secrets/{name}"));
        let resp = self
            .send(|t| {
                self.client
                    .put(&url)
                    .bearer_auth(t)
                    .json(&serde_json::json!({ "value": value.expose_secret() }))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(&self.name, resp.status(), "write"));
        }
        let body = zeroize::Zeroizing::new(
            resp.bytes()
                .await
                .map_err(|e| send_error(&self.name, e))?
                .to_vec(),
        );
        let b: SecretBundle =
            serde_json::from_slice(&body).map_err(|_| parse_error(&self.name, "write"))?;
        version_from_id(&b.id)
            .ok_or_else(|| Error::protocol(&self.name, "a secret id without a version"))
    }

    fn writable(&self) -> bool {
        true
    }

    async fn list(&self) -> Result<Vec<SecretName>> {
        let mut out = Vec::new();
        let mut next = Some(self.url("/secrets"));
        for _ in 0..MAX_PAGES {
            let Some(url) = next.take() else { break };
            if !url.starts_with(&self.vault) {
                return Err(Error::protocol(
                    &self.name,
                    "nextLink points outside the vault: not followed",
                ));
            }
            let resp = self.send(|t| self.client.get(&url).bearer_auth(t)).await?;
            if !resp.status().is_success() {
                return Err(status_error(&self.name, resp.status(), "list"));
            }
            let body = resp.bytes().await.map_err(|e| send_error(&self.name, e))?;
            let page: ListPage =
                serde_json::from_slice(&body).map_err(|_| parse_error(&self.name, "list"))?;
            out.extend(page.value.iter().filter_map(|item| {
                SecretName::new(item.id.trim_end_matches('/').rsplit('/').next()?).ok()
            }));
            next = page.next_link.filter(|l| !l.is_empty());
        }
        Ok(out)
    }

    async fn health(&self) -> Result<()> {
        let url = format!("{}&maxresults=1", self.url("/secrets"));
        let resp = self.send(|t| self.client.get(&url).bearer_auth(t)).await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error(&self.name, resp.status(), "health"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_names() {
        let v = version_from_id(
            "https://v.vault.azure.net/secrets/db/4387e9f3d6e14c459867679a90fd0f79",
        );
        assert_eq!(v.unwrap().as_str(), "4387e9f3d6e14c459867679a90fd0f79");
        assert!(check_name(&SecretName::new("db-password").unwrap()).is_ok());
        assert!(check_name(&SecretName::new("db_password").unwrap()).is_err());
    }
}
