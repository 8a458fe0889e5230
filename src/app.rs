//! The server application: settings, model loading, the bound listener and
//! the run-until-stopped loop with graceful shutdown.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};

use crate::{
    SHIPPED_MODEL, SHIPPED_MODEL_PATH, artifact::ModelArtifact, engine::Engine, grpc,
    scoring::Model, store::Store,
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

    /// Address to listen on. Anything but loopback needs
    /// --insecure-allow-remote until authentication is configured.
    #[arg(long, env = "HEALTHSCORE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

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

/// A server with its model loaded and its port bound, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    engine: Arc<Engine>,
    settings: Settings,
}

impl Application {
    /// Loads the model and binds the listener.
    ///
    /// # Errors
    /// When the model cannot be loaded, the address is refused by the
    /// safety rule above, or the port cannot be bound.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if !settings.listen.ip().is_loopback() && !settings.insecure_allow_remote {
            bail!(
                "refusing to serve on {} without authentication; listen on loopback \
                 (127.0.0.1) or pass --insecure-allow-remote",
                settings.listen
            );
        }
        let artifact = match &settings.model {
            Some(path) => ModelArtifact::load(path)?,
            None => ModelArtifact::from_json(SHIPPED_MODEL, SHIPPED_MODEL_PATH)?,
        };
        let model = Arc::new(Model::new(artifact));
        let url = settings.store_url()?;
        let store = Store::connect(&url)
            .await
            .with_context(|| format!("cannot open the account store {}", redact(&url)))?;
        let engine = Arc::new(
            Engine::open(model, store)
                .await
                .context("cannot load the account store")?,
        );
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let local_addr = listener
            .local_addr()
            .context("listener has no local address")?;
        Ok(Self {
            listener,
            local_addr,
            engine,
            settings,
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The model being served.
    pub fn model(&self) -> &Model {
        self.engine.model()
    }

    /// The engine: model, store and account registry.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Serves until `shutdown` completes, then stops accepting connections
    /// and lets in-flight requests finish.
    ///
    /// # Errors
    /// When the transport fails.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let api =
            grpc::HealthScoreApi::new(Arc::clone(&self.engine), self.settings.max_batch as usize);
        let api = api
            .into_server()
            .max_decoding_message_size(self.settings.max_message_bytes)
            .max_encoding_message_size(usize::MAX);
        health
            .set_serving::<grpc::pb::health_score_service_server::HealthScoreServiceServer<grpc::HealthScoreApi>>()
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

        if !self.local_addr.ip().is_loopback() {
            tracing::warn!(addr = %self.local_addr, "serving on a non-loopback address WITHOUT authentication");
        } else {
            tracing::warn!("no authentication configured: serving on loopback only");
        }
        tracing::info!(
            addr = %self.local_addr,
            model_version = self.engine.model().version(),
            features = self.engine.model().feature_count(),
            accounts = self.engine.account_count(),
            "healthscore-server listening"
        );

        let sweeper = (self.settings.rescore_interval_secs > 0).then(|| {
            let engine = Arc::clone(&self.engine);
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

        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("gRPC server failed")?;
        if let Some(sweeper) = sweeper {
            sweeper.abort();
        }
        self.engine.store().close().await;
        tracing::info!("healthscore-server stopped");
        Ok(())
    }
}

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
