//! The gate every gRPC request passes before its handler: it names the RPC,
//! checks the caller's bearer token and scope, sheds load beyond the
//! concurrency limit, and records the outcome and latency.
//!
//! Health checks and reflection pass untouched and are never shed, so a
//! probe still gets an answer from a server that is full.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status, body::Body};
use tower::{Layer, Service};

use crate::{
    auth::{Scope, Tokens},
    observe::Metrics,
};

/// The protected RPCs: full path, short name for metrics, scope needed.
const ROUTES: &[(&str, &str, Scope)] = &[
    (
        "/healthscore.v1.HealthScoreService/ScoreAccounts",
        "ScoreAccounts",
        Scope::Read,
    ),
    (
        "/healthscore.v1.HealthScoreService/GetModelInfo",
        "GetModelInfo",
        Scope::Read,
    ),
    (
        "/healthscore.v1.HealthScoreService/UpsertAccounts",
        "UpsertAccounts",
        Scope::Write,
    ),
    (
        "/healthscore.v1.HealthScoreService/RecordSignals",
        "RecordSignals",
        Scope::Write,
    ),
    (
        "/healthscore.v1.HealthScoreService/GetAccountHealth",
        "GetAccountHealth",
        Scope::Read,
    ),
    (
        "/healthscore.v1.HealthScoreService/GetPriority",
        "GetPriority",
        Scope::Read,
    ),
    (
        "/healthscore.v1.HealthScoreService/ListAccounts",
        "ListAccounts",
        Scope::Read,
    ),
    (
        "/healthscore.v1.HealthScoreService/SummarizeSegments",
        "SummarizeSegments",
        Scope::Read,
    ),
    (
        "/healthscore.v1.HealthScoreService/GetHealthHistory",
        "GetHealthHistory",
        Scope::Read,
    ),
    (
        "/healthscore.v1.ModelAdminService/ReloadModel",
        "ReloadModel",
        Scope::Admin,
    ),
];

/// Path prefixes that are always open and never shed.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// The RPC a path names: its short name and scope, or `None` for paths
/// outside the API (health, reflection, or unknown methods, which tonic
/// answers with UNIMPLEMENTED).
fn route(path: &str) -> Option<(&'static str, Scope)> {
    ROUTES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|&(_, name, scope)| (name, scope))
}

/// Settings of the gate.
#[derive(Debug, Clone)]
pub struct GateLayer {
    tokens: Option<Arc<Tokens>>,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    metrics: Arc<Metrics>,
}

impl GateLayer {
    /// A gate checking `tokens` (none: no authentication) and letting at
    /// most `max_concurrent` API requests run at once.
    pub fn new(tokens: Option<Arc<Tokens>>, max_concurrent: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            tokens,
            permits: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            metrics,
        }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            layer: self.clone(),
        }
    }
}

/// The gate around the inner gRPC routes.
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<Request<Body>> for Gate<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let Some((rpc, scope)) = route(path) else {
            if !OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
                tracing::debug!(path, "request for an unknown method");
            }
            return Box::pin(self.inner.call(request));
        };
        let metrics = Arc::clone(&self.layer.metrics);
        let mut outcome = Outcome::new(rpc, metrics);

        if let Some(tokens) = &self.layer.tokens
            && let Err(status) = authorize(tokens, request.headers(), rpc, scope)
        {
            outcome.finish(status.code());
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let Ok(permit) = Arc::clone(&self.layer.permits).try_acquire_owned() else {
            outcome.metrics.shed();
            outcome.finish(Code::ResourceExhausted);
            let status = Status::resource_exhausted(format!(
                "the server is at its limit of {} concurrent requests; retry with backoff",
                self.layer.max_concurrent
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        };

        // The ready clone serves this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _permit: OwnedSemaphorePermit = permit;
            let mut response = inner.call(request).await?;
            oversized_is_resource_exhausted(&mut response);
            outcome.finish(status_of(response.headers()));
            Ok(response)
        })
    }
}

/// Checks the bearer token and its scope.
fn authorize(tokens: &Tokens, headers: &HeaderMap, rpc: &str, scope: Scope) -> Result<(), Status> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "missing bearer token: send the header `authorization: Bearer <token>`",
        ));
    };
    let Some(secret) = value
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .or_else(|| value.as_bytes().strip_prefix(b"bearer "))
    else {
        return Err(Status::unauthenticated(
            "the authorization header is not of the form `Bearer <token>`",
        ));
    };
    let Some(caller) = tokens.identify(secret) else {
        return Err(Status::unauthenticated("the bearer token is not known"));
    };
    if !caller.may(scope) {
        tracing::info!(token = caller.name, rpc, %scope, "token lacks the scope");
        return Err(Status::permission_denied(format!(
            "token {:?} lacks the `{scope}` scope that {rpc} needs",
            caller.name
        )));
    }
    Ok(())
}

/// The gRPC status of a response: from its headers when the handler failed
/// (a trailers-only response), OK otherwise (the status then travels in the
/// trailers, which are OK for every unary success).
fn status_of(headers: &HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// tonic refuses a request above the decoding limit with OUT_OF_RANGE; the
/// gRPC status-code guide (and every other gRPC server) says
/// RESOURCE_EXHAUSTED, which is what clients retry-classify on.
fn oversized_is_resource_exhausted(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    if status_of(headers) != Code::OutOfRange {
        return;
    }
    let oversized = Status::from_header_map(headers)
        .is_some_and(|status| status.message().contains("message length too large"));
    if oversized {
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
}

/// Records one request's outcome exactly once: when it finishes, or as
/// CANCELLED when its future is dropped first (the client went away or its
/// deadline passed).
struct Outcome {
    rpc: &'static str,
    started: Instant,
    metrics: Arc<Metrics>,
    done: bool,
}

impl Outcome {
    fn new(rpc: &'static str, metrics: Arc<Metrics>) -> Self {
        Self {
            rpc,
            started: Instant::now(),
            metrics,
            done: false,
        }
    }

    fn finish(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            self.metrics
                .request(self.rpc, code, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_method_has_a_route() {
        let descriptor = crate::grpc::pb::FILE_DESCRIPTOR_SET;
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(descriptor).unwrap();
        let mut methods = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    assert!(route(&path).is_some(), "{path} has no route");
                    methods += 1;
                }
            }
        }
        assert_eq!(methods, ROUTES.len());
    }
}
