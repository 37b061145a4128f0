//! Settings: a TOML file named by an environment variable, then environment overrides.

use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;

/// Read settings of type `T`: from the TOML file named by `$<var>` when it is set, defaults
/// otherwise. Unknown keys are refused when `T` says `deny_unknown_fields`.
///
/// # Errors
/// The file cannot be read or is not valid TOML for `T`.
pub fn load<T: DeserializeOwned + Default>(var: &str) -> Result<T, String> {
    match std::env::var(var) {
        Ok(path) if !path.trim().is_empty() => from_file(Path::new(&path)),
        _ => Ok(T::default()),
    }
}

/// Read settings of type `T` from one TOML file.
///
/// # Errors
/// The file cannot be read or is not valid TOML for `T`.
pub fn from_file<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read settings file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid settings file {}: {e}", path.display()))
}

/// `REDIS_URL`, when set and not empty: the examples run in memory without it.
pub fn redis_url() -> Option<String> {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// The address to listen on: `$LISTEN`, else `127.0.0.1:<default_port>`.
///
/// # Errors
/// `$LISTEN` is not a socket address.
pub fn listen_addr(default_port: u16) -> Result<SocketAddr, String> {
    match std::env::var("LISTEN") {
        Ok(addr) if !addr.trim().is_empty() => addr
            .trim()
            .parse()
            .map_err(|e| format!("LISTEN={addr} is not a socket address: {e}")),
        _ => Ok(SocketAddr::from(([127, 0, 0, 1], default_port))),
    }
}

/// A connection pool for `url` (`redis://…`, `rediss://…`). No connection is made until the
/// first command, so a service starts while Redis is down and its health says so.
///
/// # Errors
/// The URL is malformed.
#[cfg(feature = "redis")] // an example built without the `redis` feature has no use for it
pub fn redis_pool(url: &str) -> Result<palisade::deadpool_redis::Pool, String> {
    palisade::deadpool_redis::Config::from_url(url)
        .create_pool(Some(palisade::deadpool_redis::Runtime::Tokio1))
        .map_err(|e| format!("invalid REDIS_URL: {e}"))
}
