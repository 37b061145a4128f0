//! tower middleware: [`CircuitBreakerLayer`] guards any `Service` with a [`CircuitBreaker`].
//!
//! Rejected requests never reach the inner service and fail at once with
//! [`Error::Rejected`] carrying the retry-after; [`rejection_response`] turns that into a
//! `503 Service Unavailable` with a `Retry-After` header and a problem+json body for HTTP
//! services. Which responses
//! count as failures is decided by a [`ResponseClassifier`]; [`ServerErrorClassifier`] (the
//! default) counts `5xx` responses and inner errors.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use palisade_circuit_breaker::CircuitBreaker;
//! use palisade_circuit_breaker::layer::CircuitBreakerLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! let breaker = CircuitBreaker::builder("upstream").build().unwrap();
//! let mut svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker.clone()))
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::builder().status(502).body(()).unwrap())
//!     });
//! let res = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 502);
//! assert_eq!(breaker.snapshot().failures, 1); // a 5xx counts as a failure
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use crate::{CircuitBreaker, Error, Outcome};

/// Decides how a response (or the inner service's error) counts.
pub trait ResponseClassifier<Res, E> {
    /// Classify one result of the inner service.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;
}

/// `5xx` responses and errors are failures; everything else is a success.
#[derive(Clone, Copy, Debug, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a unit value users write by name"
)]
pub struct ServerErrorClassifier;

impl<B, E> ResponseClassifier<http::Response<B>, E> for ServerErrorClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(res) if res.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// A classifier from a closure.
#[derive(Clone, Copy)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a newtype around the function, complete by nature"
)]
pub struct ClassifyFn<F>(pub F);

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifyFn")
    }
}

impl<Res, E, F> ResponseClassifier<Res, E> for ClassifyFn<F>
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        (self.0)(result)
    }
}

/// Wraps services in a [`CircuitBreakerService`].
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = ServerErrorClassifier> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer guarding with `breaker` and the [`ServerErrorClassifier`].
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: ServerErrorClassifier,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Use another response classifier.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service guarded by a circuit breaker; see [`CircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<S, C = ServerErrorClassifier> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C> CircuitBreakerService<S, C> {
    /// The breaker guarding this service.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    C: ResponseClassifier<S::Response, S::Error> + Clone + Send + Sync + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Error<S::Error>>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let breaker = self.breaker.clone();
        let classifier = self.classifier.clone();
        Box::pin(async move {
            breaker
                .call_with(
                    move || inner.call(req),
                    move |r: &Result<S::Response, S::Error>| classifier.classify(r),
                )
                .await
        })
    }
}

/// For a rejection, a `503 Service Unavailable` response with a `Retry-After` header (whole
/// seconds, rounded up) and an RFC 9457 `application/problem+json` body of the shape every
/// palisade HTTP rejection shares (the rate limiter's 429, the key layer's 401/403):
///
/// ```json
/// {"type": "about:blank", "title": "Service Unavailable", "status": 503,
///  "detail": "The service is unavailable; retry in 7 s.", "code": "circuit_open",
///  "state": "open", "retry_after": 7}
/// ```
///
/// `state` is the breaker's [`State::as_str`](crate::State::as_str) (`open`, `half_open`,
/// `forced_open`). `None` for any other error: a timeout or the call's own error is the
/// service's to map (often `502`/`504`). The body names no breaker, so nothing about the
/// upstream leaks to the client.
pub fn rejection_response<B: From<String>, E>(error: &Error<E>) -> Option<http::Response<B>> {
    let Error::Rejected { state, retry_after } = error else {
        return None;
    };
    let secs = retry_after_secs(*retry_after);
    let state = state.as_str();
    // Every member is a fixed word or a number: no escaping needed.
    let body = format!(
        r#"{{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"The service is unavailable; retry in {secs} s.","code":"circuit_open","state":"{state}","retry_after":{secs}}}"#
    );
    let mut res = http::Response::new(B::from(body));
    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    res.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    Some(res)
}

/// `Retry-After` in whole seconds (rounded up, at least 1) for `d`.
pub fn retry_after_secs(d: Duration) -> u64 {
    // Saturating: a breaker's retry-after comes from its configuration or from Redis.
    d.as_secs()
        .saturating_add(u64::from(d.subsec_nanos() > 0))
        .max(1)
}
