//! The models the test servers serve: the shipped Telco model, and a small
//! SaaS model with signal-derived features, trained once per test binary
//! from seeded synthetic data through `healthscore::train`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use healthscore::{
    artifact::ModelArtifact,
    grpc::pb,
    train::{TrainOptions, train, write_artifact},
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::helpers::{Features, features, number, profile, text, upsert_of};

/// Which model a test server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// The shipped Telco model (the server's default).
    Telco,
    /// The SaaS model fitted with C = 1.
    Saas,
    /// The SaaS model refitted on the same data with C = 0.05: the same
    /// features, other coefficients, another model_version.
    SaasRefit,
}

/// Rows of synthetic SaaS data: enough for stable coefficients, few enough
/// that a debug build fits them in about a second.
const SAAS_ROWS: usize = 3000;

/// The SaaS template. Engagement, support and satisfaction are aggregates
/// of signals; plan and seats are sent with UpsertAccounts.
fn saas_template(c: f64) -> String {
    format!(
        r#"
name = "saas-churn"
description = "Synthetic B2B SaaS accounts for the account RPC tests"
id_column = "account_id"
outcome = {{ column = "churned", positive = "yes", negative = "no" }}

[fit]
c = {c}

[[feature]]
name = "plan"
kind = "categorical"
category = "financial"
missing = "reject"

[[feature]]
name = "seats"
kind = "numeric"
category = "adoption"
transform = "log1p"
missing = "reject"

[[feature]]
name = "logins_28d"
kind = "numeric"
category = "engagement"
signal = {{ kind = "login", aggregate = "count", window_days = 28 }}

[[feature]]
name = "logins_trend"
kind = "numeric"
category = "engagement"
missing = "median"
signal = {{ kind = "login", aggregate = "count", window_days = 28, ratio_to_days = 90 }}

[[feature]]
name = "escalations_90d"
kind = "numeric"
category = "support"
signal = {{ kind = "ticket_escalated", aggregate = "count", window_days = 90 }}

[[feature]]
name = "nps_last"
kind = "numeric"
category = "satisfaction"
missing = "median"
signal = {{ kind = "nps_response", aggregate = "last", window_days = 365 }}
"#
    )
}

/// Seeded synthetic accounts with churn drawn from known signs: fewer
/// logins, a falling login trend, escalations, a low NPS and the starter
/// plan raise churn; seats lower it. The signal features are plain numeric
/// columns here, as a training export computes them.
fn saas_csv() -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(20_261_203);
    let mut csv = String::from(
        "account_id,plan,seats,logins_28d,logins_trend,escalations_90d,nps_last,churned\n",
    );
    for i in 0..SAAS_ROWS {
        let plan = ["starter", "growth", "enterprise"][rng.random_range(0..3)];
        let seats: u32 = rng.random_range(1..=200);
        let logins_90d: u32 = rng.random_range(0..=150);
        let share: f64 = rng.random_range(0.05..0.65);
        let logins_28d = (f64::from(logins_90d) * share).round();
        let trend = (logins_90d > 0).then(|| logins_28d / f64::from(logins_90d));
        let escalations: u32 = [0, 0, 0, 0, 1, 1, 2, 3, 4][rng.random_range(0..9)];
        let nps = (rng.random::<f64>() < 0.7).then(|| rng.random_range(0..=10));

        let logit = 0.9 - 0.06 * logins_28d - 2.5 * (trend.unwrap_or(0.33) - 0.33)
            + 0.7 * f64::from(escalations)
            - 0.25 * (f64::from(nps.unwrap_or(7)) - 7.0)
            + match plan {
                "starter" => 0.5,
                "growth" => 0.0,
                _ => -0.5,
            }
            - 0.3 * f64::from(seats).ln_1p();
        let churned = rng.random::<f64>() < 1.0 / (1.0 + (-logit).exp());

        let cell = |x: Option<String>| x.unwrap_or_default();
        writeln!(
            csv,
            "acct-{i:04},{plan},{seats},{logins_28d},{},{escalations},{},{}",
            cell(trend.map(|t| t.to_string())),
            cell(nps.map(|n: i32| n.to_string())),
            if churned { "yes" } else { "no" },
        )
        .expect("writing to a String cannot fail");
    }
    csv
}

fn train_saas(c: f64) -> ModelArtifact {
    let dir = tempfile::tempdir().expect("a temporary directory can be created");
    let data = dir.path().join("saas.csv");
    let template = dir.path().join("saas.toml");
    std::fs::write(&data, saas_csv()).expect("the CSV is writable");
    std::fs::write(&template, saas_template(c)).expect("the template is writable");
    let trained = train(&TrainOptions {
        data,
        template,
        progress: false,
        champion: None,
    })
    .unwrap_or_else(|error| panic!("the SaaS model trains: {error}"));
    trained.artifact
}

/// The trained artifact of a SaaS model, fitted on first use and shared by
/// every test of the binary.
pub(crate) fn saas_artifact(model: Served) -> &'static ModelArtifact {
    static SAAS: OnceLock<ModelArtifact> = OnceLock::new();
    static SAAS_REFIT: OnceLock<ModelArtifact> = OnceLock::new();
    match model {
        Served::Saas => SAAS.get_or_init(|| train_saas(1.0)),
        Served::SaasRefit => SAAS_REFIT.get_or_init(|| train_saas(0.05)),
        Served::Telco => panic!("the Telco model is shipped, not trained here"),
    }
}

/// The artifact file for `--model`, written into `dir`; `None` (the
/// server's built-in model) for Telco.
pub(crate) fn artifact_file(model: Served, dir: &Path) -> Option<PathBuf> {
    if model == Served::Telco {
        return None;
    }
    let path = dir.join(format!("{model:?}.json").to_lowercase());
    write_artifact(saas_artifact(model), &path).expect("the artifact is writable");
    Some(path)
}

/// The client-set features of a SaaS account.
pub(crate) fn saas_features(plan: &str, seats: f64) -> Features {
    features([("plan", text(plan)), ("seats", number(seats))])
}

/// A SaaS account to upsert: profile plan and feature plan agree.
pub(crate) fn saas_account(account_id: &str, plan: &str, seats: f64) -> pb::AccountUpsert {
    let mut profile = profile("mid-market", "emea", 24_000.0, "2027-01-31");
    profile.plan = plan.to_owned();
    upsert_of(account_id, profile, saas_features(plan, seats))
}

/// The features ScoreAccounts needs to score a SaaS account as the server
/// derives it: the client-set ones plus the signal aggregates given here
/// (`None` leaves the feature missing, as an empty window does).
pub(crate) fn saas_derived(
    plan: &str,
    seats: f64,
    logins_28d: f64,
    logins_trend: Option<f64>,
    escalations_90d: f64,
    nps_last: Option<f64>,
) -> Features {
    let mut all = saas_features(plan, seats);
    all.insert("logins_28d".to_owned(), number(logins_28d));
    all.insert("escalations_90d".to_owned(), number(escalations_90d));
    if let Some(trend) = logins_trend {
        all.insert("logins_trend".to_owned(), number(trend));
    }
    if let Some(nps) = nps_last {
        all.insert("nps_last".to_owned(), number(nps));
    }
    all
}
