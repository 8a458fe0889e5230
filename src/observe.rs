//! Prometheus metrics: requests and latency by RPC and status code, the
//! model version, the health scores and bands given out (so drift in the
//! outputs shows), store errors, shed requests and model reloads; served on
//! their own HTTP port as `/metrics`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets, linear_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

use crate::{
    engine::{Engine, EngineSlot},
    scoring::Band,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcCode {
    rpc: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabel {
    rpc: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BandLabel {
    band: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    model_version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(50e-6, 2.0, 16))
}

/// The server's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcCode, Counter>,
    latency: Family<RpcLabel, Histogram, fn() -> Histogram>,
    shed: Counter,
    store_errors: Counter,
    health_scores: Histogram,
    bands_given: Family<BandLabel, Counter>,
    accounts_by_band: Family<BandLabel, Gauge>,
    model: Family<VersionLabel, Gauge>,
    reloads: Family<OutcomeLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("healthscore");
        let requests = Family::<RpcCode, Counter>::default();
        registry.register(
            "rpc_requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        let latency: Family<RpcLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "rpc_duration_seconds",
            "Time from request to response headers, by method",
            latency.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "shed_requests",
            "Requests refused with RESOURCE_EXHAUSTED at the concurrency limit",
            shed.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Account store operations that failed",
            store_errors.clone(),
        );
        let health_scores = Histogram::new(linear_buckets(10.0, 10.0, 9));
        registry.register(
            "health_score_given",
            "Health scores returned by ScoreAccounts and GetAccountHealth",
            health_scores.clone(),
        );
        let bands_given = Family::<BandLabel, Counter>::default();
        registry.register(
            "band_given",
            "Bands returned by ScoreAccounts and GetAccountHealth",
            bands_given.clone(),
        );
        let accounts_by_band = Family::<BandLabel, Gauge>::default();
        registry.register(
            "stored_accounts",
            "Stored accounts by their current band (UNSCORED: lacking features)",
            accounts_by_band.clone(),
        );
        let model = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "model_info",
            "The model version being served (value 1)",
            model.clone(),
        );
        let reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "model_reloads",
            "Model reload attempts by outcome",
            reloads.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            shed,
            store_errors,
            health_scores,
            bands_given,
            accounts_by_band,
            model,
            reloads,
        }
    }

    /// One finished request.
    pub fn request(&self, rpc: &'static str, code: tonic::Code, seconds: f64) {
        self.requests
            .get_or_create(&RpcCode {
                rpc,
                code: code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&RpcLabel { rpc })
            .observe(seconds);
    }

    /// One request refused at the concurrency limit.
    pub fn shed(&self) {
        self.shed.inc();
    }

    /// One failed store operation.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// One health score given out.
    pub fn score_given(&self, health: f64, band: Band) {
        self.health_scores.observe(health);
        self.bands_given
            .get_or_create(&BandLabel {
                band: band_label(Some(band)),
            })
            .inc();
    }

    /// The model now served.
    pub fn set_model(&self, version: &str) {
        self.model.clear();
        self.model
            .get_or_create(&VersionLabel {
                model_version: version.to_owned(),
            })
            .set(1);
    }

    /// One reload attempt: `loaded`, `unchanged` or `refused`.
    pub fn reload(&self, outcome: &'static str) {
        self.reloads.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The metrics in Prometheus text format, with the band mix of the
    /// stored accounts read from `engine` now (all zero while it loads).
    pub fn render(&self, engine: Option<&Engine>) -> String {
        let mix = engine.map(Engine::band_mix).unwrap_or_default();
        for (band, count) in [
            (Some(Band::Healthy), mix.healthy),
            (Some(Band::Watch), mix.watch),
            (Some(Band::AtRisk), mix.at_risk),
            (None, mix.unscored),
        ] {
            self.accounts_by_band
                .get_or_create(&BandLabel {
                    band: band_label(band),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

fn band_label(band: Option<Band>) -> &'static str {
    match band {
        Some(Band::Healthy) => "HEALTHY",
        Some(Band::Watch) => "WATCH",
        Some(Band::AtRisk) => "AT_RISK",
        None => "UNSCORED",
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Binds the metrics port.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
///
/// # Errors
/// When the HTTP server fails.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    engine: Arc<EngineSlot>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = metrics.render(engine.get().map(|e| &**e));
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("metrics server failed")
}
