//! Where the served model comes from, and replacing it while serving.
//!
//! A replacement is validated before anything changes: the artifact must
//! parse and pass its integrity checks, meet the configured floor on its
//! recorded test ROC AUC, and score every account the current model scores.
//! Only then are the new model and its scores swapped in, together; a
//! refused artifact is logged with its reason and the old model keeps
//! serving.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use thiserror::Error;

use crate::{
    SHIPPED_MODEL, SHIPPED_MODEL_PATH,
    artifact::ModelArtifact,
    engine::{Engine, EngineError},
    observe::Metrics,
    scoring::Model,
};

/// The model file and the bar a model must clear to be served.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The artifact file; `None` serves the built-in shipped model.
    pub path: Option<PathBuf>,
    /// Lowest recorded test ROC AUC accepted.
    pub min_test_roc_auc: f64,
}

/// Why a model was not loaded.
#[derive(Debug, Error)]
pub enum ReloadError {
    /// The server serves the built-in model: there is no file to read.
    #[error(
        "the server serves its built-in model; start it with --model FILE to reload from a file"
    )]
    NoModelFile,
    /// The artifact was refused; the old model keeps serving.
    #[error("model {path} refused: {reason}")]
    Refused {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The store failed while re-scoring; the old model keeps serving.
    #[error(transparent)]
    Engine(EngineError),
}

impl ModelSource {
    /// Reads and validates the model to serve.
    ///
    /// # Errors
    /// [`ReloadError::Refused`] naming the file and the reason.
    pub fn load(&self) -> Result<Model, ReloadError> {
        let (artifact, shown) = match &self.path {
            Some(path) => (ModelArtifact::load(path), path.display().to_string()),
            None => (
                ModelArtifact::from_json(SHIPPED_MODEL, SHIPPED_MODEL_PATH),
                SHIPPED_MODEL_PATH.to_owned(),
            ),
        };
        let refused = |reason: String| ReloadError::Refused {
            path: shown.clone(),
            reason,
        };
        let artifact = artifact.map_err(|e| refused(e.to_string()))?;
        let auc = artifact.training.test_metrics.roc_auc;
        if auc < self.min_test_roc_auc {
            return Err(refused(format!(
                "its test ROC AUC {auc:.4} is below the floor of {:.4} (--min-test-roc-auc)",
                self.min_test_roc_auc
            )));
        }
        Ok(Model::new(artifact))
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reloaded {
    /// Serving before.
    pub previous_version: String,
    /// Serving now.
    pub version: String,
    /// Whether the version changed.
    pub changed: bool,
    /// Accounts re-scored.
    pub accounts_rescored: usize,
}

/// Replaces the engine's model from its source, one reload at a time.
#[derive(Debug)]
pub struct Reloader {
    source: ModelSource,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    serial: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader of `engine`'s model from `source`.
    pub fn new(source: ModelSource, engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        metrics.set_model(engine.model().version());
        Self {
            source,
            engine,
            metrics,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    /// The model file watched, if any.
    pub fn path(&self) -> Option<&Path> {
        self.source.path.as_deref()
    }

    /// Reads the model file again and swaps a new, valid version in.
    /// `trigger` says why, for the log.
    ///
    /// # Errors
    /// [`ReloadError`]; the old model keeps serving.
    pub async fn reload(&self, trigger: &'static str) -> Result<Reloaded, ReloadError> {
        let _serial = self.serial.lock().await;
        let result = self.reload_now().await;
        match &result {
            Ok(done) if done.changed => {
                self.metrics.reload("loaded");
                self.metrics.set_model(&done.version);
                tracing::info!(
                    trigger,
                    previous = %done.previous_version,
                    model_version = %done.version,
                    accounts_rescored = done.accounts_rescored,
                    "model replaced"
                );
            }
            Ok(done) => {
                self.metrics.reload("unchanged");
                tracing::info!(trigger, model_version = %done.version, "model file unchanged");
            }
            Err(error) => {
                self.metrics.reload("refused");
                tracing::warn!(trigger, %error, "model not replaced; the old model keeps serving");
            }
        }
        result
    }

    async fn reload_now(&self) -> Result<Reloaded, ReloadError> {
        if self.source.path.is_none() {
            return Err(ReloadError::NoModelFile);
        }
        let source = self.source.clone();
        let model = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| ReloadError::Refused {
                path: String::new(),
                reason: format!("loading task failed: {e}"),
            })??;
        let current = self.engine.model();
        if current.version() == model.version() {
            // A version names one model: a file that scores differently
            // under the serving version is an edit, not a new model.
            if !current.artifact().scores_like(model.artifact()) {
                return Err(ReloadError::Refused {
                    path: self.path_shown(),
                    reason: format!(
                        "its model_version {:?} is the one serving, but its coefficients, \
                         features or bands differ; a changed model needs a new model_version \
                         (healthscore-train gives every model its own)",
                        model.version()
                    ),
                });
            }
            return Ok(Reloaded {
                previous_version: current.version().to_owned(),
                version: current.version().to_owned(),
                changed: false,
                accounts_rescored: 0,
            });
        }
        match self.engine.replace_model(Arc::new(model)).await {
            Ok(done) => Ok(Reloaded {
                previous_version: done.previous_version,
                version: done.version,
                changed: true,
                accounts_rescored: done.accounts_rescored,
            }),
            Err(EngineError::Incompatible(reason)) => Err(ReloadError::Refused {
                path: self.path_shown(),
                reason,
            }),
            Err(error) => {
                if matches!(error, EngineError::Store(_)) {
                    self.metrics.store_error();
                }
                Err(ReloadError::Engine(error))
            }
        }
    }

    fn path_shown(&self) -> String {
        self.source
            .path
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string())
    }
}

/// Watches the model file's directory and reloads when the file changes
/// (written in place or renamed over). Dropping the handle stops watching.
#[derive(Debug)]
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Quiet time after the last change before reloading, so a file written in
/// several steps is read once, whole.
const SETTLE: Duration = Duration::from_millis(300);

/// Starts watching `reloader`'s model file; `None` when it has none.
///
/// # Errors
/// When the directory cannot be watched.
pub fn watch(reloader: Arc<Reloader>) -> anyhow::Result<Option<WatchHandle>> {
    let Some(path) = reloader.path().map(Path::to_path_buf) else {
        return Ok(None);
    };
    let path = std::path::absolute(&path).unwrap_or(path);
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path.file_name().map(ToOwned::to_owned);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) => {
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(ToOwned::to_owned) == name);
                let relevant = matches!(
                    event.kind,
                    notify::EventKind::Create(_) | notify::EventKind::Modify(_)
                );
                if ours && relevant {
                    let _ = tx.send(());
                }
            }
            Err(error) => tracing::warn!(%error, "model directory watch failed"),
        })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the model directory");
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let the writer finish, then read once.
            loop {
                tokio::time::sleep(SETTLE).await;
                let mut more = false;
                while rx.try_recv().is_ok() {
                    more = true;
                }
                if !more {
                    break;
                }
            }
            // The outcome is logged and counted by `reload`.
            let _ = reloader.reload("model file changed").await;
        }
    });
    Ok(Some(WatchHandle {
        _watcher: watcher,
        task,
    }))
}
