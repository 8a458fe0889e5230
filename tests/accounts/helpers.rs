//! The harness: a fresh database per test body on either backend, the real
//! server started on it (and restarted on the same database), thin client
//! calls, and builders for accounts, profiles and signals.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf};

use clap::Parser;
use healthscore::{
    app::{Application, Settings},
    grpc::pb::{
        self, FeatureValue, feature_value::Kind,
        health_score_service_client::HealthScoreServiceClient,
        model_admin_service_client::ModelAdminServiceClient,
    },
};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};

use crate::models::{self, Served};

/// A connected `HealthScoreService` client.
pub(crate) type Client = HealthScoreServiceClient<Channel>;

/// One empty database for one test body, and a directory for its files.
pub(crate) struct TestDb {
    url: String,
    /// Holds the SQLite file (on SQLite) and the model artifacts served.
    dir: TempDir,
}

/// Runs `test` on a fresh SQLite file in a temporary directory.
pub(crate) async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    healthscore::telemetry::init_for_tests();
    let dir = TempDir::new().expect("a temporary directory can be created");
    let url = format!("sqlite://{}", dir.path().join("accounts.db").display());

    test(TestDb { url, dir }).await;
}

/// Runs `test` on a fresh PostgreSQL database, created through the
/// existing database `test` and dropped afterwards, pass or fail.
pub(crate) async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    healthscore::telemetry::init_for_tests();
    crate::postgres::with_database("hs_test", |url| {
        let dir = TempDir::new().expect("a temporary directory can be created");
        test(TestDb { url, dir })
    })
    .await;
}

impl TestDb {
    /// Starts the real server on this database with `model`: port 0 on
    /// loopback, no periodic re-scoring (so nothing changes behind a
    /// test's back), and a connected client. The listener is bound before
    /// this returns, so no sleep is needed.
    pub(crate) async fn serve(&self, model: Served) -> TestServer {
        self.serve_file(models::artifact_file(model, self.dir.path()))
            .await
    }

    /// As [`TestDb::serve`], with the model read from `model` (the shipped
    /// one when `None`); the server watches that file.
    pub(crate) async fn serve_file(&self, model: Option<PathBuf>) -> TestServer {
        let mut settings = Settings::parse_from([
            "healthscore-server",
            "--listen",
            "127.0.0.1:0",
            "--max-batch",
            "10000",
            "--rescore-interval-secs",
            "0",
        ]);
        settings.database_url = Some(self.url.clone());
        settings.data_dir = self.dir.path().join("data");
        settings.model = model;
        let app = Application::build(settings)
            .await
            .unwrap_or_else(|error| panic!("the application builds: {error:#}"));
        let address = app.local_addr();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            // A fired or a dropped sender both stop the server.
            let _ = stop.await;
        }));
        TestServer {
            client: connect(address).await,
            address,
            shutdown,
            task,
        }
    }

    /// This test's directory (model files go here).
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The database URL, for writing to the store directly.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

async fn connect(address: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the client connects to the bound listener");
    wait_until_serving(&channel).await;
    HealthScoreServiceClient::new(channel)
}

/// Waits until the server reports SERVING (its accounts are loaded), as a
/// deployment's readiness probe would.
async fn wait_until_serving(channel: &Channel) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
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
            "the server was not SERVING within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A running server on a test database.
pub(crate) struct TestServer {
    /// A connected client; clone it freely (clones share the connection).
    pub(crate) client: Client,
    address: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Stops the server gracefully and waits until it has closed its store.
    pub(crate) async fn stop(self) {
        drop(self.client);
        let _ = self.shutdown.send(());
        self.task
            .await
            .expect("the server task does not panic")
            .expect("the server stops cleanly");
    }

    /// Stops this server and starts a new one on the same database.
    pub(crate) async fn restart(self, db: &TestDb, model: Served) -> TestServer {
        self.stop().await;
        db.serve(model).await
    }

    /// A client on a connection of its own.
    pub(crate) async fn new_client(&self) -> Client {
        connect(self.address).await
    }

    /// A `ModelAdminService` client on a connection of its own.
    pub(crate) async fn admin(&self) -> ModelAdminServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.address))
            .expect("a valid URI")
            .connect()
            .await
            .expect("the client connects to the bound listener");
        ModelAdminServiceClient::new(channel)
    }

    /// UpsertAccounts, which must succeed as a call.
    pub(crate) async fn upsert(
        &self,
        accounts: Vec<pb::AccountUpsert>,
    ) -> pb::UpsertAccountsResponse {
        upsert(&self.client, accounts).await
    }

    /// RecordSignals with one stream message per inner vector.
    pub(crate) async fn record(&self, messages: Vec<Vec<pb::Signal>>) -> pb::RecordSignalsResponse {
        record(&self.client, messages).await
    }

    /// GetAccountHealth.
    pub(crate) async fn try_health(
        &self,
        account_id: &str,
    ) -> Result<pb::GetAccountHealthResponse, Status> {
        let request = pb::GetAccountHealthRequest {
            account_id: account_id.to_owned(),
        };
        self.client
            .clone()
            .get_account_health(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// GetAccountHealth, which must succeed.
    pub(crate) async fn health(&self, account_id: &str) -> pb::GetAccountHealthResponse {
        self.try_health(account_id)
            .await
            .unwrap_or_else(|status| panic!("GetAccountHealth({account_id:?}): {status:?}"))
    }

    /// The score part of GetAccountHealth.
    pub(crate) async fn score_of(&self, account_id: &str) -> pb::AccountScore {
        self.health(account_id)
            .await
            .score
            .expect("GetAccountHealth always carries a score")
    }

    /// GetPriority.
    pub(crate) async fn try_priority(
        &self,
        account_ids: &[&str],
        cancellation_intent: bool,
    ) -> Result<Vec<pb::AccountPriority>, Status> {
        let request = pb::GetPriorityRequest {
            account_ids: account_ids.iter().map(|&id| id.to_owned()).collect(),
            context: Some(pb::InteractionContext {
                channel: "phone".to_owned(),
                cancellation_intent,
            }),
        };
        self.client
            .clone()
            .get_priority(request)
            .await
            .map(|r| r.into_inner().priorities)
    }

    /// GetPriority, which must succeed.
    pub(crate) async fn priority(
        &self,
        account_ids: &[&str],
        cancellation_intent: bool,
    ) -> Vec<pb::AccountPriority> {
        self.try_priority(account_ids, cancellation_intent)
            .await
            .expect("GetPriority succeeds")
    }

    /// ListAccounts.
    pub(crate) async fn try_list(
        &self,
        request: pb::ListAccountsRequest,
    ) -> Result<pb::ListAccountsResponse, Status> {
        self.client
            .clone()
            .list_accounts(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// ListAccounts, which must succeed.
    pub(crate) async fn list(&self, request: pb::ListAccountsRequest) -> pb::ListAccountsResponse {
        self.try_list(request).await.expect("ListAccounts succeeds")
    }

    /// Every account matching `request`, on one page of the largest size.
    pub(crate) async fn list_all(
        &self,
        request: pb::ListAccountsRequest,
    ) -> Vec<pb::AccountSummary> {
        let page = self
            .list(pb::ListAccountsRequest {
                page_size: 1000,
                page_token: String::new(),
                ..request
            })
            .await;
        assert_eq!(
            page.next_page_token, "",
            "the tests hold under 1000 accounts"
        );
        assert_eq!(page.total_matching, page.accounts.len() as u64);
        page.accounts
    }

    /// SummarizeSegments, which must succeed.
    pub(crate) async fn summarize(
        &self,
        group_by: pb::GroupBy,
        since: Option<prost_types::Timestamp>,
    ) -> Vec<pb::SegmentSummary> {
        let request = pb::SummarizeSegmentsRequest {
            group_by: group_by as i32,
            since,
        };
        self.client
            .clone()
            .summarize_segments(request)
            .await
            .expect("SummarizeSegments succeeds")
            .into_inner()
            .segments
    }

    /// GetHealthHistory over all time, up to 1000 points.
    pub(crate) async fn try_history(
        &self,
        account_id: &str,
    ) -> Result<Vec<pb::HealthPoint>, Status> {
        self.history_request(pb::GetHealthHistoryRequest {
            account_id: account_id.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// GetHealthHistory.
    pub(crate) async fn history_request(
        &self,
        request: pb::GetHealthHistoryRequest,
    ) -> Result<Vec<pb::HealthPoint>, Status> {
        self.client
            .clone()
            .get_health_history(request)
            .await
            .map(|r| r.into_inner().points)
    }

    /// GetHealthHistory over all time, which must succeed.
    pub(crate) async fn history(&self, account_id: &str) -> Vec<pb::HealthPoint> {
        self.try_history(account_id)
            .await
            .unwrap_or_else(|status| panic!("GetHealthHistory({account_id:?}): {status:?}"))
    }

    /// What ScoreAccounts says for `features` (every attribution), which
    /// must score: the reference a stored account's score is compared with.
    pub(crate) async fn score_inline(
        &self,
        account_id: &str,
        features: Features,
    ) -> pb::AccountScore {
        let request = pb::ScoreAccountsRequest {
            accounts: vec![pb::Account {
                account_id: account_id.to_owned(),
                features,
            }],
            max_attributions: 0,
        };
        let mut scores = self
            .client
            .clone()
            .score_accounts(request)
            .await
            .expect("ScoreAccounts succeeds")
            .into_inner()
            .scores;
        let score = scores.pop().expect("one score per account");
        assert_eq!(score.error, None, "the reference account scores");
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

/// UpsertAccounts through `client`, which must succeed as a call.
pub(crate) async fn upsert(
    client: &Client,
    accounts: Vec<pb::AccountUpsert>,
) -> pb::UpsertAccountsResponse {
    client
        .clone()
        .upsert_accounts(pb::UpsertAccountsRequest { accounts })
        .await
        .expect("UpsertAccounts succeeds")
        .into_inner()
}

/// RecordSignals through `client`, one stream message per inner vector.
pub(crate) async fn record(
    client: &Client,
    messages: Vec<Vec<pb::Signal>>,
) -> pb::RecordSignalsResponse {
    let stream = tokio_stream::iter(
        messages
            .into_iter()
            .map(|signals| pb::RecordSignalsRequest { signals }),
    );
    client
        .clone()
        .record_signals(stream)
        .await
        .expect("RecordSignals succeeds")
        .into_inner()
}

/// Asserts a call failed with `code` and a message containing `needle`.
pub(crate) fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    needle: &str,
) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
}

/// Asserts every upsert result is free of errors.
pub(crate) fn assert_all_upserted(response: &pb::UpsertAccountsResponse) {
    for result in &response.results {
        assert_eq!(result.error, None, "account {:?}", result.account_id);
    }
    assert_eq!(response.upserted as usize, response.results.len());
}

// --- values, accounts and profiles --------------------------------------------

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

/// Features from `(name, value)` pairs.
pub(crate) fn features<const N: usize>(pairs: [(&str, FeatureValue); N]) -> Features {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// A profile; `renewal_date` may be empty.
pub(crate) fn profile(
    segment: &str,
    region: &str,
    annual_contract_value: f64,
    renewal_date: &str,
) -> pb::AccountProfile {
    pb::AccountProfile {
        name: format!("{segment} customer in {region}"),
        segment: segment.to_owned(),
        region: region.to_owned(),
        plan: String::new(),
        annual_contract_value,
        renewal_date: renewal_date.to_owned(),
    }
}

/// One account to upsert.
pub(crate) fn upsert_of(
    account_id: &str,
    profile: pb::AccountProfile,
    features: Features,
) -> pb::AccountUpsert {
    pb::AccountUpsert {
        account_id: account_id.to_owned(),
        profile: Some(profile),
        features,
    }
}

/// Customer 7590-VHVEG, the first data row of
/// `training/data/telco-customer-churn/Telco-Customer-Churn.csv`, as a
/// client would send it to the Telco model.
pub(crate) fn telco_customer() -> Features {
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

/// The Telco model's numeric features; the others go as the CSV's words.
const TELCO_NUMERIC: [&str; 3] = ["tenure", "MonthlyCharges", "TotalCharges"];

/// The first `n` customers of the Telco CSV as (customerID, features), as a
/// client would send them: a blank cell is left out.
pub(crate) fn telco_customers(n: usize) -> Vec<(String, Features)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("training/data/telco-customer-churn/Telco-Customer-Churn.csv");
    let mut reader = csv::Reader::from_path(path).expect("the Telco CSV opens");
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
                    _ if TELCO_NUMERIC.contains(&name) => {
                        let x = cell.parse().expect("a numeric Telco cell");
                        values.insert(name.to_owned(), number(x));
                    }
                    _ => {
                        values.insert(name.to_owned(), text(cell));
                    }
                }
            }
            (id, values)
        })
        .collect()
}

// --- signals and time ------------------------------------------------------------

/// Microseconds in a day.
pub(crate) const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// Now, in microseconds since the epoch.
pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The timestamp of a microsecond instant.
pub(crate) fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// Microseconds since the epoch of a timestamp.
pub(crate) fn micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos / 1000)
}

/// The instant `days` days ago (fractions allowed).
pub(crate) fn days_ago(days: f64) -> prost_types::Timestamp {
    timestamp(now_micros() - (days * DAY_MICROS as f64) as i64)
}

/// A signal with every field set.
pub(crate) fn signal(
    event_id: &str,
    account_id: &str,
    kind: pb::SignalKind,
    value: f64,
    occurred_at: prost_types::Timestamp,
) -> pb::Signal {
    pb::Signal {
        event_id: event_id.to_owned(),
        account_id: account_id.to_owned(),
        kind: kind as i32,
        value,
        occurred_at: Some(occurred_at),
    }
}

/// A login `days` days ago.
pub(crate) fn login(event_id: &str, account_id: &str, days: f64) -> pb::Signal {
    signal(
        event_id,
        account_id,
        pb::SignalKind::Login,
        1.0,
        days_ago(days),
    )
}

/// A ticket escalation `days` days ago.
pub(crate) fn escalation(event_id: &str, account_id: &str, days: f64) -> pb::Signal {
    signal(
        event_id,
        account_id,
        pb::SignalKind::TicketEscalated,
        1.0,
        days_ago(days),
    )
}

// --- comparisons ---------------------------------------------------------------

/// Asserts `a` and `b` agree to within `1e-9` relative.
pub(crate) fn assert_close(a: f64, b: f64, what: &str) {
    let scale = a.abs().max(b.abs()).max(1.0);
    assert!((a - b).abs() <= 1e-9 * scale, "{what}: {a} != {b}");
}

/// The contribution of `feature` in a score.
pub(crate) fn contribution(score: &pb::AccountScore, feature: &str) -> f64 {
    score
        .attributions
        .iter()
        .find(|a| a.feature == feature)
        .unwrap_or_else(|| panic!("{feature} is among the attributions"))
        .contribution
}

/// Segments of [`telco_book`] accounts, in turn.
pub(crate) const SEGMENTS: [&str; 3] = ["enterprise", "mid-market", "smb"];

/// Regions of [`telco_book`] accounts, in turn.
pub(crate) const REGIONS: [&str; 4] = ["emea", "amer", "apac", "emea"];

/// The first `n` Telco customers with varied profiles: segment, region,
/// contract value and renewal date (none for every fifth account).
pub(crate) fn telco_book(n: usize) -> Vec<pb::AccountUpsert> {
    let first_renewal = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a valid date");
    telco_customers(n)
        .into_iter()
        .enumerate()
        .map(|(i, (id, features))| {
            let renewal = if i % 5 == 4 {
                String::new()
            } else {
                (first_renewal + chrono::Days::new((i as u64 * 41) % 365)).to_string()
            };
            let value = 5_000.0 + 1_250.5 * ((i * 37) % 23) as f64;
            let profile = profile(SEGMENTS[i % 3], REGIONS[i % 4], value, &renewal);
            upsert_of(&id, profile, features)
        })
        .collect()
}
