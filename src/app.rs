//! The server application: settings, model loading, the bound listener and
//! the run-until-stopped loop with graceful shutdown.

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};

use crate::{
    auth::Tokens,
    engine::{Engine, EngineSlot},
    grpc,
    observe::{self, Metrics},
    reload::{self, ModelSource, Reloader},
    scoring::Model,
    store::Store,
    telemetry::LogFormat,
};

/// Server settings, from flags or `HEALTHSCORE_*` environment variables.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "healthscore-server",
    version,
    about = "Serve customer health scores over gRPC"
)]
pub struct Settings {
    /// Model artifact to serve [default: the shipped models/telco-churn.json,
    /// built into the binary].
    #[arg(long, env = "HEALTHSCORE_MODEL")]
    pub model: Option<PathBuf>,

    /// Address to listen on. Anything but loopback needs authentication
    /// (tokens or client certificates) or --insecure-allow-remote.
    #[arg(long, env = "HEALTHSCORE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// TOML file of bearer tokens and their scopes (read, write, admin).
    #[arg(long, env = "HEALTHSCORE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Bearer tokens inline, as comma-separated `name:scope+scope:secret`.
    #[arg(long, env = "HEALTHSCORE_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,

    /// TLS certificate chain (PEM); serving TLS needs --tls-key too.
    #[arg(long, env = "HEALTHSCORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "HEALTHSCORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that client certificates must chain to; with it
    /// every client must present one.
    #[arg(long, env = "HEALTHSCORE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Most API requests served at once; beyond it requests are refused
    /// with RESOURCE_EXHAUSTED instead of queueing.
    #[arg(long, env = "HEALTHSCORE_MAX_CONCURRENT_REQUESTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// Most signals in one RecordSignals stream.
    #[arg(long, env = "HEALTHSCORE_MAX_STREAM_SIGNALS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stream_signals: u64,

    /// Lowest recorded test ROC AUC of a model the server will load, at
    /// start or on reload.
    #[arg(long, env = "HEALTHSCORE_MIN_TEST_ROC_AUC", default_value_t = 0.5)]
    pub min_test_roc_auc: f64,

    /// Do not watch the --model file for changes (ReloadModel still works).
    #[arg(long, env = "HEALTHSCORE_NO_MODEL_WATCH")]
    pub no_model_watch: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "HEALTHSCORE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "HEALTHSCORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Seconds in-flight requests get to finish after a shutdown signal.
    #[arg(long, env = "HEALTHSCORE_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Largest number of accounts in one ScoreAccounts call.
    #[arg(long, env = "HEALTHSCORE_MAX_BATCH", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: u32,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "HEALTHSCORE_MAX_MESSAGE_BYTES", default_value_t = 32 << 20)]
    pub max_message_bytes: usize,

    /// Serve on a non-loopback address without authentication.
    #[arg(long, env = "HEALTHSCORE_INSECURE_ALLOW_REMOTE")]
    pub insecure_allow_remote: bool,

    /// Account store: `sqlite://PATH` or `postgres://...` [default: SQLite
    /// file healthscore.db in --data-dir].
    #[arg(long, env = "HEALTHSCORE_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory of the default SQLite store; created if missing.
    #[arg(long, env = "HEALTHSCORE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Seconds between re-scoring every stored account (signal windows
    /// slide with time); 0 disables it.
    #[arg(long, env = "HEALTHSCORE_RESCORE_INTERVAL_SECS", default_value_t = 900)]
    pub rescore_interval_secs: u64,
}

impl Settings {
    /// Settings for `listen` with every other value at its default.
    pub fn with_listen(listen: SocketAddr) -> Self {
        Self::parse_from(["healthscore-server", "--listen", &listen.to_string()])
    }

    /// The configured tokens, if any.
    ///
    /// # Errors
    /// When a token file or variable is unusable, or both are given.
    pub fn tokens(&self) -> anyhow::Result<Option<Tokens>> {
        match (&self.auth_tokens_file, &self.auth_tokens) {
            (Some(_), Some(_)) => bail!(
                "give tokens either in a file (--auth-tokens-file) or inline (--auth-tokens), not both"
            ),
            (Some(path), None) => Ok(Some(Tokens::from_file(path)?)),
            (None, Some(text)) => Ok(Some(Tokens::from_compact("--auth-tokens", text)?)),
            (None, None) => Ok(None),
        }
    }

    fn tls(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            read(cert, "TLS certificate")?,
            read(key, "TLS key")?,
        ));
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(Some(config))
    }

    /// The store URL: `--database-url`, or the SQLite file in `--data-dir`.
    ///
    /// # Errors
    /// When the data directory cannot be created.
    pub fn store_url(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create data directory {}", self.data_dir.display()))?;
        Ok(format!(
            "sqlite://{}",
            self.data_dir.join("healthscore.db").display()
        ))
    }
}

/// A server with its model loaded, its store connected and its port bound,
/// ready to run. The accounts are loaded once it runs: until then health
/// reports NOT_SERVING and the account RPCs UNAVAILABLE.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
    model: Arc<Model>,
    source: ModelSource,
    store: Store,
    metrics: Arc<Metrics>,
    tokens: Option<Arc<Tokens>>,
    tls: Option<ServerTlsConfig>,
    settings: Settings,
}

impl Application {
    /// Loads the model, connects to the store and binds the listeners.
    ///
    /// # Errors
    /// When the model cannot be loaded, the store cannot be opened, the
    /// address is refused by the safety rule above, or a port cannot be
    /// bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let tokens = settings.tokens()?.map(Arc::new);
        let tls = settings.tls()?;
        let authenticated = tokens.is_some() || settings.tls_client_ca.is_some();
        if !settings.listen.ip().is_loopback() && !authenticated && !settings.insecure_allow_remote
        {
            bail!(
                "refusing to serve on {} without authentication; configure tokens \
                 (--auth-tokens-file) or client certificates (--tls-client-ca), listen on \
                 loopback (127.0.0.1), or pass --insecure-allow-remote",
                settings.listen
            );
        }
        let source = ModelSource {
            path: settings.model.clone(),
            min_test_roc_auc: settings.min_test_roc_auc,
        };
        let model = Arc::new(source.load()?);
        let url = settings.store_url()?;
        let store = Store::connect(&url)
            .await
            .with_context(|| format!("cannot open the account store {}", redact(&url)))?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let local_addr = listener
            .local_addr()
            .context("listener has no local address")?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(observe::bind(addr).await?),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(l) => Some(l.local_addr().context("metrics listener has no address")?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        Ok(Self {
            listener,
            local_addr,
            metrics_listener,
            metrics_addr,
            model,
            source,
            store,
            metrics,
            tokens,
            tls,
            settings,
        })
    }

    /// The bound metrics address, when metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The model the server starts with.
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Serves until `shutdown` completes, then stops accepting connections
    /// and lets in-flight requests finish.
    ///
    /// # Errors
    /// When the transport fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let engine_slot = Arc::new(EngineSlot::new());
        let reloader_slot = Arc::new(OnceLock::<Arc<Reloader>>::new());
        let limits = grpc::Limits {
            max_batch: self.settings.max_batch as usize,
            max_stream_signals: self.settings.max_stream_signals,
        };
        let api = grpc::HealthScoreApi::new(
            Arc::clone(&engine_slot),
            Arc::clone(&self.model),
            limits,
            Arc::clone(&self.metrics),
        )
        .into_server()
        .max_decoding_message_size(self.settings.max_message_bytes)
        .max_encoding_message_size(usize::MAX);
        let admin = grpc::ModelAdminApi::new(Arc::clone(&reloader_slot))
            .into_server()
            .max_decoding_message_size(1024);
        // Not ready until the accounts are loaded.
        health.set_not_serving::<ApiServer>().await;
        health.set_not_serving::<AdminServer>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(grpc::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // v1 for current clients, v1alpha for grpcurl and older tooling.
        let reflection_v1 = reflection().build_v1().context("building reflection")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("building reflection")?;

        let authenticated = self.tokens.is_some() || self.settings.tls_client_ca.is_some();
        if !authenticated {
            if self.local_addr.ip().is_loopback() {
                tracing::warn!("no authentication configured: serving on loopback only");
            } else {
                tracing::warn!(addr = %self.local_addr, "serving on a non-loopback address WITHOUT authentication (--insecure-allow-remote)");
            }
        }
        if self.tls.is_none() && self.tokens.is_some() && !self.local_addr.ip().is_loopback() {
            tracing::warn!(
                "bearer tokens travel in clear text without TLS; configure --tls-cert and --tls-key"
            );
        }
        tracing::info!(
            addr = %self.local_addr,
            tls = self.tls.is_some(),
            tokens = self.tokens.as_ref().map_or(0, |t| t.len()),
            model_version = self.model.version(),
            features = self.model.feature_count(),
            "healthscore-server listening"
        );

        // One signal fans out to the gRPC server, the metrics server and the
        // grace timer.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let health_on_stop = health.clone();
        tokio::spawn(async move {
            shutdown.await;
            // Tell load balancers first, then stop accepting.
            health_on_stop.set_not_serving::<ApiServer>().await;
            health_on_stop.set_not_serving::<AdminServer>().await;
            health_on_stop
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let _ = stop_tx.send(true);
        });

        let metrics_server = self.metrics_listener.map(|listener| {
            tracing::info!(addr = ?self.metrics_addr, "serving Prometheus metrics at /metrics");
            tokio::spawn(observe::serve(
                listener,
                Arc::clone(&self.metrics),
                Arc::clone(&engine_slot),
                stopped(),
            ))
        });

        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder
                .tls_config(tls)
                .context("invalid TLS configuration")?;
        }
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let serve = builder
            .layer(grpc::GateLayer::new(
                self.tokens.clone(),
                self.settings.max_concurrent_requests as usize,
                Arc::clone(&self.metrics),
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, stopped());
        tokio::pin!(serve);

        // Load every stored account while the port already answers health
        // checks (NOT_SERVING) and ScoreAccounts.
        let started = std::time::Instant::now();
        let startup = async {
            let engine = Engine::open(Arc::clone(&self.model), self.store)
                .await
                .context("cannot load the account store")?;
            let engine = Arc::new(engine);
            let _ = engine_slot.set(Arc::clone(&engine));
            let reloader = Arc::new(Reloader::new(
                self.source,
                Arc::clone(&engine),
                Arc::clone(&self.metrics),
            ));
            let _ = reloader_slot.set(Arc::clone(&reloader));
            health.set_serving::<ApiServer>().await;
            health.set_serving::<AdminServer>().await;
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            tracing::info!(
                accounts = engine.account_count(),
                startup_ms = started.elapsed().as_millis() as u64,
                "healthscore-server ready"
            );
            anyhow::Ok((engine, reloader))
        };
        let (engine, reloader) = tokio::select! {
            result = &mut serve => {
                // Stopped before the accounts were loaded.
                result.context("gRPC server failed")?;
                tracing::info!("healthscore-server stopped");
                return Ok(());
            }
            loaded = startup => loaded?,
        };

        let sweeper = (self.settings.rescore_interval_secs > 0).then(|| {
            let engine = Arc::clone(&engine);
            let period = Duration::from_secs(self.settings.rescore_interval_secs);
            tokio::spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                loop {
                    ticks.tick().await;
                    match engine.sweep().await {
                        Ok(recorded) => tracing::debug!(recorded, "re-scored every account"),
                        Err(error) => tracing::error!(%error, "periodic re-scoring failed"),
                    }
                }
            })
        });
        let _watch = if self.settings.no_model_watch {
            None
        } else {
            reload::watch(reloader).context("cannot watch the model file")?
        };

        let grace = Duration::from_secs(self.settings.shutdown_grace_secs);
        let deadline = {
            let stopped = stopped();
            async move {
                stopped.await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::select! {
            result = serve => result.context("gRPC server failed")?,
            () = deadline => tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight requests did not finish within the grace period; stopping anyway"
            ),
        }
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        if let Some(server) = metrics_server {
            server.abort();
        }
        engine.close().await;
        tracing::info!("healthscore-server stopped");
        Ok(())
    }
}

type ApiServer =
    grpc::pb::health_score_service_server::HealthScoreServiceServer<grpc::HealthScoreApi>;
type AdminServer =
    grpc::pb::model_admin_service_server::ModelAdminServiceServer<grpc::ModelAdminApi>;

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
