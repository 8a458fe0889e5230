//! Starts the real server on an ephemeral loopback port and hands back a
//! connected client, plus builders for accounts of the Telco model.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf};

use healthscore::{
    app::{Application, Settings},
    grpc::pb::{
        self, FeatureValue, feature_value::Kind,
        health_score_service_client::HealthScoreServiceClient,
    },
};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// A running server and what a test needs to talk to it and stop it.
pub(crate) struct TestApp {
    /// The bound address (the real port).
    pub(crate) address: SocketAddr,
    /// The metrics address, when `--metrics-listen` was set.
    pub(crate) metrics_address: Option<SocketAddr>,
    /// The connection the client uses; clone it for other services.
    pub(crate) channel: Channel,
    /// A connected `HealthScoreService` client.
    pub(crate) client: HealthScoreServiceClient<Channel>,
    /// Fire to stop the server; dropping it stops the server too.
    pub(crate) shutdown: oneshot::Sender<()>,
    /// The `run_until_stopped` task.
    pub(crate) server: JoinHandle<anyhow::Result<()>>,
    /// This server's own account store directory, removed on drop.
    _data_dir: TempDir,
}

/// Default settings on 127.0.0.1 port 0: the shipped model, default limits.
pub(crate) fn test_settings() -> Settings {
    Settings::with_listen(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// Builds the application (model loaded, store opened, port bound), runs it
/// in the background and connects a client. The listener is bound before
/// this returns, so no retry or sleep is needed. Each server gets a fresh
/// SQLite account store in its own temporary directory, never the working
/// directory's `data/` nor a `HEALTHSCORE_DATABASE_URL` from the environment.
pub(crate) async fn spawn_app(mut settings: Settings) -> TestApp {
    healthscore::telemetry::init_for_tests();
    let data_dir = TempDir::new().expect("a temporary data directory");
    settings.database_url = None;
    settings.data_dir = data_dir.path().to_owned();
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let address = app.local_addr();
    let metrics_address = app.metrics_addr();
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        // A fired or a dropped sender both stop the server.
        let _ = stop.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the client connects to the bound listener");
    wait_until_serving(&channel).await;
    let client = HealthScoreServiceClient::new(channel.clone());
    TestApp {
        address,
        metrics_address,
        channel,
        client,
        shutdown,
        server,
        _data_dir: data_dir,
    }
}

/// Waits until the server reports SERVING (its accounts are loaded), as a
/// deployment's readiness probe would.
pub(crate) async fn wait_until_serving(channel: &Channel) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = health
            .check(HealthCheckRequest::default())
            .await
            .expect("the health service answers")
            .into_inner()
            .status();
        if status == ServingStatus::Serving {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server was not SERVING within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

impl TestApp {
    /// ScoreAccounts with every attribution.
    pub(crate) async fn score(
        &self,
        accounts: Vec<pb::Account>,
    ) -> Result<pb::ScoreAccountsResponse, tonic::Status> {
        self.score_with(accounts, 0).await
    }

    /// ScoreAccounts with `max_attributions`.
    pub(crate) async fn score_with(
        &self,
        accounts: Vec<pb::Account>,
        max_attributions: u32,
    ) -> Result<pb::ScoreAccountsResponse, tonic::Status> {
        let request = pb::ScoreAccountsRequest {
            accounts,
            max_attributions,
        };
        self.client
            .clone()
            .score_accounts(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Scores one account that must score without error.
    pub(crate) async fn score_one(&self, account: pb::Account) -> pb::AccountScore {
        let mut response = self
            .score(vec![account])
            .await
            .expect("ScoreAccounts succeeds");
        assert_eq!(response.scores.len(), 1);
        let score = response.scores.remove(0);
        assert_eq!(
            score.error, None,
            "account {} was not scored",
            score.account_id
        );
        score
    }

    /// GetModelInfo.
    pub(crate) async fn model_info(&self) -> pb::GetModelInfoResponse {
        self.client
            .clone()
            .get_model_info(pb::GetModelInfoRequest {})
            .await
            .expect("GetModelInfo succeeds")
            .into_inner()
    }
}

/// Features of one account, keyed by feature name.
pub(crate) type Features = HashMap<String, FeatureValue>;

/// A number value.
pub(crate) fn number(x: f64) -> FeatureValue {
    FeatureValue {
        kind: Some(Kind::NumberValue(x)),
    }
}

/// A string value.
pub(crate) fn text(s: &str) -> FeatureValue {
    FeatureValue {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// A boolean value.
pub(crate) fn boolean(b: bool) -> FeatureValue {
    FeatureValue {
        kind: Some(Kind::BoolValue(b)),
    }
}

/// A value with no oneof case set: the feature counts as missing.
pub(crate) fn unset() -> FeatureValue {
    FeatureValue { kind: None }
}

/// An account from an id and its features.
pub(crate) fn account(id: &str, features: Features) -> pb::Account {
    pb::Account {
        account_id: id.to_owned(),
        features,
    }
}

/// Features from `(name, value)` pairs.
pub(crate) fn features<const N: usize>(pairs: [(&str, FeatureValue); N]) -> Features {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// Customer 7590-VHVEG, the first data row of
/// `training/data/telco-customer-churn/Telco-Customer-Churn.csv`, as a
/// client would send it (the Yes/No and 0/1 columns as the CSV's words).
pub(crate) fn customer_7590_vhveg() -> Features {
    features([
        ("gender", text("Female")),
        ("SeniorCitizen", text("0")),
        ("Partner", text("Yes")),
        ("Dependents", text("No")),
        ("tenure", number(1.0)),
        ("PhoneService", text("No")),
        ("MultipleLines", text("No phone service")),
        ("InternetService", text("DSL")),
        ("OnlineSecurity", text("No")),
        ("OnlineBackup", text("Yes")),
        ("DeviceProtection", text("No")),
        ("TechSupport", text("No")),
        ("StreamingTV", text("No")),
        ("StreamingMovies", text("No")),
        ("Contract", text("Month-to-month")),
        ("PaperlessBilling", text("Yes")),
        ("PaymentMethod", text("Electronic check")),
        ("MonthlyCharges", number(29.85)),
        ("TotalCharges", number(29.85)),
    ])
}

/// The Telco training CSV shipped in the repository.
pub(crate) fn telco_csv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("training/data/telco-customer-churn/Telco-Customer-Churn.csv")
}

/// The first `n` rows of the Telco CSV as accounts (id = customerID).
/// Numeric columns go as numbers, every other feature as the CSV's text; a
/// blank cell is left out, as a client with no value would.
pub(crate) fn telco_accounts(n: usize, info: &pb::GetModelInfoResponse) -> Vec<pb::Account> {
    let numeric: Vec<&str> = info
        .features
        .iter()
        .filter(|f| f.kind == pb::FeatureKind::Numeric as i32)
        .map(|f| f.name.as_str())
        .collect();
    let mut reader = csv::Reader::from_path(telco_csv()).expect("the Telco CSV opens");
    let header = reader
        .headers()
        .expect("the Telco CSV has a header")
        .clone();
    reader
        .records()
        .take(n)
        .map(|record| {
            let record = record.expect("a well-formed Telco row");
            let mut id = String::new();
            let mut values = Features::new();
            for (name, cell) in header.iter().zip(record.iter()) {
                let cell = cell.trim();
                match name {
                    "customerID" => id = cell.to_owned(),
                    "Churn" => {}
                    _ if cell.is_empty() => {}
                    _ if numeric.contains(&name) => {
                        let x = cell.parse().expect("a numeric Telco cell");
                        values.insert(name.to_owned(), number(x));
                    }
                    _ => {
                        values.insert(name.to_owned(), text(cell));
                    }
                }
            }
            account(&id, values)
        })
        .collect()
}

/// Asserts `score` is an error of `reason` about `feature` ("" for none) and
/// carries no score.
pub(crate) fn assert_account_error(
    score: &pb::AccountScore,
    reason: pb::AccountErrorReason,
    feature: &str,
) {
    let error = score.error.as_ref().unwrap_or_else(|| {
        panic!(
            "account {:?} should have failed with {reason:?}",
            score.account_id
        )
    });
    assert_eq!(
        error.reason(),
        reason,
        "account {:?}: {}",
        score.account_id,
        error.message
    );
    assert_eq!(error.feature, feature, "account {:?}", score.account_id);
    if !feature.is_empty() {
        assert!(
            error.message.contains(feature),
            "message {:?} should name {feature}",
            error.message
        );
    }
    assert!(!score.model_version.is_empty());
    assert_eq!(score.churn_probability, 0.0);
    assert_eq!(score.health_score, 0.0);
    assert_eq!(score.band(), pb::HealthBand::Unspecified);
    assert!(score.attributions.is_empty());
    assert!(score.category_scores.is_empty());
    assert!(score.imputed_features.is_empty());
    assert_eq!(score.base_value, 0.0);
    assert_eq!(score.churn_log_odds, 0.0);
}
