//! What the HTTP providers share: status classification and error mapping. No response body
//! ever reaches an error (a body may echo a value).

use crate::error::Error;

/// Map a non-success status: 401/403 denied, 408/429/5xx transient, anything else a
/// protocol error.
pub(crate) fn status_error(provider: &str, status: reqwest::StatusCode, what: &str) -> Error {
    let code = status.as_u16();
    match code {
        401 | 403 => Error::denied(provider, format!("HTTP {code} on {what}")),
        408 | 429 | 500..=599 => Error::backend(provider, format!("HTTP {code} on {what}"), true),
        _ => Error::protocol(provider, format!("HTTP {code} on {what}")),
    }
}

/// A request that did not get an answer: transient (connection refused, reset, timeout).
pub(crate) fn send_error(provider: &str, e: reqwest::Error) -> Error {
    // reqwest's message names the URL (secret names are not secret) and never headers.
    let transient = !e.is_builder();
    Error::backend(provider, e.without_url(), transient)
}

/// An answer that does not parse.
pub(crate) fn parse_error(provider: &str, what: &str) -> Error {
    Error::protocol(provider, format!("could not parse the answer to {what}"))
}

pub(crate) fn client(timeout: std::time::Duration) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::InvalidConfig(format!("HTTP client: {e}")))
}

/// Percent-encode one URL path segment (secret names are `A-Z a-z 0-9 _ - . /`; `/` stays a
/// separator where the caller wants it).
#[cfg(feature = "vault")]
pub(crate) fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
