//! HTTP plumbing: correlation ids, `/metrics`, problem+json.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

/// The correlation id header: taken from the caller when present (a gateway in front may set
/// it), otherwise a fresh UUID; echoed on the response and recorded on the request's span, so
/// every log line of one request carries it.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wrap `router` with correlation ids, a request span (`http.request` with method, path
/// and `request_id`) and one `INFO` line per response (status, latency). Apply it last, so it is the outermost layer and every response,
/// rejections included, carries the id.
///
/// The three layers go on as one stack (one `Router::layer` call): axum boxes every route
/// once per call and clones those boxes on every request, so one call instead of three saves
/// allocations on every request.
pub fn with_request_ids<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(
        tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request<_>| {
                        let id = request
                            .headers()
                            .get(&REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!(
                            "http.request",
                            method = %request.method(),
                            path = %request.uri().path(),
                            request_id = %id,
                        )
                    })
                    // One line per request at the default level (status and latency, inside
                    // the span, so with its id): a request that logs nothing else can still
                    // be found by the id a caller reports.
                    .on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
            .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
    )
}

/// `GET /metrics`: the Prometheus text exposition of every metric this process recorded.
pub fn metrics_route<S: Clone + Send + Sync + 'static>(handle: PrometheusHandle) -> Router<S> {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// An RFC 9457 problem response (`application/problem+json`), the shape every example uses
/// for its own 4xx/5xx answers (the crates' layers build the same shape for theirs).
pub fn problem(status: StatusCode, title: &str, detail: impl Into<String>) -> Response {
    problem_with(status, title, detail, serde_json::Map::new())
}

/// [`problem`] with extension members (RFC 9457 §3.2): a machine-readable `code`, the
/// version of a failed migration, … They never replace the standard members.
pub fn problem_with(
    status: StatusCode,
    title: &str,
    detail: impl Into<String>,
    extensions: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let mut body = extensions;
    body.insert("type".to_owned(), "about:blank".into());
    body.insert("title".to_owned(), title.into());
    body.insert("status".to_owned(), status.as_u16().into());
    body.insert("detail".to_owned(), detail.into().into());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        serde_json::Value::Object(body).to_string(),
    )
        .into_response()
}
