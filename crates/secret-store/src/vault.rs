//! [`VaultProvider`]: HashiCorp Vault's KV version 2 secrets engine over HTTP.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::http::{client, parse_error, path_segment, send_error, status_error};
use crate::provider::Provider;
use crate::value::{Fetched, SecretName, Version};

/// Where and how to reach Vault.
#[derive(Clone)]
#[non_exhaustive]
pub struct VaultConfig {
    /// Vault's address, e.g. `https://vault.internal:8200`.
    pub address: String,
    /// The token sent as `X-Vault-Token`.
    pub token: SecretString,
    /// The KV v2 mount (default `secret`).
    pub mount: String,
    /// A path prepended to every secret name (default empty): `app/` reads `app/<name>`.
    pub path_prefix: String,
    /// The field of the KV entry that holds the value (default `value`).
    pub field: String,
    /// An Enterprise namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// One request's time limit (default 5 s).
    pub timeout: Duration,
}

impl std::fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultConfig")
            .field("address", &self.address)
            .field("token", &"[REDACTED]")
            .field("mount", &self.mount)
            .field("path_prefix", &self.path_prefix)
            .field("field", &self.field)
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl VaultConfig {
    /// Vault at `address` with `token`, mount `secret`, field `value`.
    pub fn new(address: impl Into<String>, token: SecretString) -> Self {
        Self {
            address: address.into(),
            token,
            mount: "secret".to_owned(),
            path_prefix: String::new(),
            field: "value".to_owned(),
            namespace: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// Another KV v2 mount.
    #[must_use]
    pub fn mount(mut self, mount: impl Into<String>) -> Self {
        self.mount = mount.into();
        self
    }

    /// A path prepended to every name.
    #[must_use]
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = prefix.into();
        self
    }

    /// The entry field that holds the value.
    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }

    /// An Enterprise namespace.
    #[must_use]
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// One request's time limit.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Secrets in Vault's KV v2 engine: secret `name` is the entry at `<mount>/data/<prefix><name>`
/// and its value the entry's `field`. Writable: a `put` writes a new KV version (the
/// engine keeps the previous ones, up to its `max_versions`); reads of a version use
/// `?version=N`; `list` walks `<mount>/metadata/<prefix>` (`?list=true`).
///
/// Answers: 404 (or a deleted/destroyed version) is a miss; 401/403 are [`Error::Denied`];
/// 429, 5xx (503 = sealed) and connection failures are transient. No response body is ever
/// put into an error. Redirects are not followed (the token must not travel elsewhere).
///
/// ```no_run
/// use palisade_secret_store::vault::{VaultConfig, VaultProvider};
/// let token = std::env::var("VAULT_TOKEN").unwrap().into();
/// let vault = VaultProvider::new(VaultConfig::new("https://vault.internal:8200", token).path_prefix("myapp/"))?;
/// # Ok::<(), palisade_secret_store::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct VaultProvider {
    name: String,
    config: VaultConfig,
    base: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct ReadAnswer {
    data: ReadData,
}

#[derive(Deserialize)]
struct ReadData {
    data: Option<HashMap<String, SecretString>>,
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    version: u64,
    #[serde(default)]
    destroyed: bool,
    #[serde(default)]
    deletion_time: String,
}

#[derive(Deserialize)]
struct WriteAnswer {
    data: Metadata,
}

#[derive(Deserialize)]
struct ListAnswer {
    data: ListData,
}

#[derive(Deserialize)]
struct ListData {
    keys: Vec<String>,
}

/// Folders `list` descends at most.
const MAX_LIST_DEPTH: usize = 8;
/// Names `list` returns at most.
const MAX_LIST: usize = 10_000;

impl VaultProvider {
    /// A provider for `config`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an address that is not `http(s)://…`.
    pub fn new(config: VaultConfig) -> Result<Self> {
        let address = config.address.trim_end_matches('/');
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            return Err(Error::InvalidConfig(format!(
                "a Vault address is http(s)://host[:port], got {address:?}"
            )));
        }
        let base = format!(
            "{address}/v1/{}",
            path_segment(config.mount.trim_matches('/'))
        );
        Ok(Self {
            name: "vault".to_owned(),
            client: client(config.timeout)?,
            base,
            config,
        })
    }

    /// Report under another name.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .client
            .request(method, url)
            .header("X-Vault-Token", self.config.token.expose_secret());
        if let Some(ns) = &self.config.namespace {
            r = r.header("X-Vault-Namespace", ns);
        }
        r
    }

    fn path(&self, name: &SecretName) -> String {
        path_segment(&format!("{}{}", self.config.path_prefix, name.as_str()))
    }

    async fn list_folder(
        &self,
        folder: &str,
        depth: usize,
        out: &mut Vec<SecretName>,
    ) -> Result<()> {
        let url = format!("{}/metadata/{}?list=true", self.base, path_segment(folder));
        let resp = self
            .request(reqwest::Method::GET, &url)
            .send()
            .await
            .map_err(|e| send_error(&self.name, e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        if !resp.status().is_success() {
            return Err(status_error(&self.name, resp.status(), "list"));
        }
        let body = resp.bytes().await.map_err(|e| send_error(&self.name, e))?;
        let answer: ListAnswer =
            serde_json::from_slice(&body).map_err(|_| parse_error(&self.name, "list"))?;
        for key in answer.data.keys {
            if out.len() >= MAX_LIST {
                break;
            }
            let full = format!("{folder}{key}");
            if key.ends_with('/') {
                if depth < MAX_LIST_DEPTH {
                    Box::pin(self.list_folder(&full, depth + 1, out)).await?;
                }
            } else if let Some(rel) = full.strip_prefix(&self.config.path_prefix)
                && let Ok(n) = SecretName::new(rel)
            {
                out.push(n);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for VaultProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, name: &SecretName, version: Option<&Version>) -> Result<Option<Fetched>> {
        let mut url = format!("{}/data/{}", self.base, self.path(name));
        if let Some(v) = version {
            match v.number() {
                Some(n) if n >= 1 => url.push_str(&format!("?version={n}")),
                _ => return Ok(None),
            }
        }
        let resp = self
            .request(reqwest::Method::GET, &url)
            .send()
            .await
            .map_err(|e| send_error(&self.name, e))?;
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
        let answer: ReadAnswer =
            serde_json::from_slice(&body).map_err(|_| parse_error(&self.name, "read"))?;
        let meta = answer.data.metadata;
        if meta.destroyed || !meta.deletion_time.is_empty() {
            return Ok(None);
        }
        let Some(mut data) = answer.data.data else {
            return Ok(None);
        };
        let value = data.remove(&self.config.field).ok_or_else(|| {
            Error::protocol(
                &self.name,
                format!("the entry has no field `{}`", self.config.field),
            )
        })?;
        Ok(Some(Fetched::new(value, Version::from(meta.version))))
    }

    async fn put(&self, name: &SecretName, value: &SecretString) -> Result<Version> {
        let url = format!("{}/data/{}", self.base, self.path(name));
        let body = serde_json::json!({ "data": { &self.config.field: value.expose_secret() } });
        let resp = self
            .request(reqwest::Method::POST, &url)
            .json(&body)
            .send()
            .await
            .map_err(|e| send_error(&self.name, e))?;
        drop(body);
        if !resp.status().is_success() {
            return Err(status_error(&self.name, resp.status(), "write"));
        }
        let body = resp.bytes().await.map_err(|e| send_error(&self.name, e))?;
        let answer: WriteAnswer =
            serde_json::from_slice(&body).map_err(|_| parse_error(&self.name, "write"))?;
        Ok(Version::from(answer.data.version))
    }

    fn writable(&self) -> bool {
        true
    }

    async fn list(&self) -> Result<Vec<SecretName>> {
        let mut out = Vec::new();
        let prefix = self.config.path_prefix.clone();
        self.list_folder(&prefix, 0, &mut out).await?;
        Ok(out)
    }

    async fn health(&self) -> Result<()> {
        let address = self.config.address.trim_end_matches('/');
        let resp = self
            .request(reqwest::Method::GET, &format!("{address}/v1/sys/health"))
            .send()
            .await
            .map_err(|e| send_error(&self.name, e))?;
        match resp.status().as_u16() {
            // Active, standby, performance standby, DR secondary: answering.
            200 | 429 | 472 | 473 => Ok(()),
            501 => Err(Error::backend(
                &self.name,
                "Vault is not initialised",
                false,
            )),
            503 => Err(Error::backend(&self.name, "Vault is sealed", true)),
            _ => Err(status_error(&self.name, resp.status(), "health")),
        }
    }
}
