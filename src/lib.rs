//! healthscore: customer health scores from a logistic churn model.
//!
//! Map of the crate:
//! - [`template`]: the health-score framework as a TOML training template;
//! - [`dataset`]: reading a training CSV as a template describes it;
//! - [`train`]: the training pipeline, from CSV to a [`artifact::ModelArtifact`];
//! - [`metrics`]: held-out evaluation (ROC AUC, PR AUC, log loss, Brier,
//!   calibration);
//! - [`artifact`]: the versioned JSON model file;
//! - [`cli`]: error output and output-path guards of the command-line tools;
//! - [`checks`]: warnings about the training data (skew, correlation, no
//!   variance, rare outcomes);
//! - [`averaging`]: fitting a group of correlated columns as one averaged
//!   column;
//! - [`report`]: the training report, HTML with SVG charts and JSON;
//! - [`scoring`]: churn probability, health score, band and attributions;
//! - [`solver`]: L2-regularised logistic regression by Newton's method;
//! - [`signals`]: signal kinds and the windowed features derived from them;
//! - [`history`]: point-in-time training rows from accounts, subscriptions
//!   and signals;
//! - [`simulate`]: a simulated SaaS data set from a known churn model;
//! - [`store`]: the account store (accounts, features, signals, score
//!   history) on SQLite or PostgreSQL;
//! - [`accounts`]: the in-memory registry of accounts, scores and priorities;
//! - [`engine`]: model, store and registry together: the account operations;
//! - [`grpc`]: the `healthscore.v1` service and its conversions;
//! - [`app`]: the server application: settings, listener, shutdown;
//! - [`auth`]: bearer tokens and their scopes;
//! - [`reload`]: the model source, validation and hot replacement;
//! - [`observe`]: Prometheus metrics and their HTTP endpoint;
//! - [`telemetry`]: tracing set-up shared by binaries and tests;
//! - [`error`]: error types per layer.

pub mod accounts;
pub mod app;
pub mod artifact;
pub mod auth;
pub mod averaging;
pub mod checks;
pub mod cli;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod history;
pub mod metrics;
pub mod observe;
pub mod reload;
pub mod report;
pub mod scoring;
pub mod signals;
pub mod simulate;
pub mod solver;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod train;

/// The shipped default model, built into the binary so the server starts
/// from anywhere with no files around it.
pub const SHIPPED_MODEL: &str = include_str!("../models/telco-churn.json");

/// Where [`SHIPPED_MODEL`] lives in the repository, for messages.
pub const SHIPPED_MODEL_PATH: &str = "models/telco-churn.json";
