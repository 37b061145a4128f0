//! The `/health` report: one entry per breaker, store and provider.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One part of the service as `/health` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    /// What it is (`ratelimit`, `breaker:openai`, `secrets:vault`, …).
    pub name: String,
    /// Backend kind (`memory`, `redis`, `vault`, `http`, …).
    pub backend: String,
    /// Whether its backend answered just now (memory is always connected).
    pub connected: bool,
    /// A short state (`closed`, `open`, `ok`, `degraded`, …).
    pub state: String,
    /// What went wrong, when something did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Component {
    /// A healthy component.
    pub fn up(
        name: impl Into<String>,
        backend: impl Into<String>,
        state: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            backend: backend.into(),
            connected: true,
            state: state.into(),
            detail: None,
        }
    }

    /// A component whose backend did not answer.
    pub fn down(
        name: impl Into<String>,
        backend: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            backend: backend.into(),
            connected: false,
            state: "unreachable".to_owned(),
            detail: Some(detail.into()),
        }
    }
}

/// The whole report: `ok` when every backend is connected, `degraded` otherwise (the service
/// still answers: every guard has a failure mode). Always 200, so a load balancer does not
/// pull an instance that is serving from its fallbacks; `degraded` is for dashboards.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `ok` or `degraded`.
    pub status: &'static str,
    /// Every component.
    pub components: Vec<Component>,
}

impl Report {
    /// A report over `components`.
    pub fn new(components: Vec<Component>) -> Self {
        let status = if components.iter().all(|c| c.connected) {
            "ok"
        } else {
            "degraded"
        };
        Self { status, components }
    }
}

impl IntoResponse for Report {
    fn into_response(self) -> Response {
        (StatusCode::OK, Json(self)).into_response()
    }
}
