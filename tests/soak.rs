//! A bounded soak: the real `healthscore-server` binary on loopback takes
//! mixed writes and reads from several clients while its model file is
//! replaced and the process is killed with SIGKILL and started again. At the
//! end every acknowledged write must be in the store, and no call may have
//! failed other than by the server being down.
//!
//! It runs for `HEALTHSCORE_SOAK_SECS` seconds (default 20) per backend:
//! `HEALTHSCORE_SOAK_SECS=180 cargo test --release --test soak -- --nocapture`
//! for a few minutes. The PostgreSQL run uses a database of its own and is
//! skipped with `HEALTHSCORE_SKIP_POSTGRES=1`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use healthscore::{
    SHIPPED_MODEL,
    grpc::pb::{
        self, FeatureValue, feature_value::Kind,
        health_score_service_client::HealthScoreServiceClient,
    },
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::watch,
};
use tonic::{Code, transport::Channel};

#[path = "support/postgres.rs"]
mod postgres;

const WRITERS: usize = 3;
const READERS: usize = 2;
const BATCH: usize = 20;

fn soak_duration() -> Duration {
    let secs = std::env::var("HEALTHSCORE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// The shipped model under another version, its intercept nudged by
/// `step`: a valid replacement that scores every Telco account.
fn model_variant(step: u32) -> String {
    let mut json: serde_json::Value = serde_json::from_str(SHIPPED_MODEL).unwrap();
    let intercept = json["intercept"].as_f64().unwrap();
    json["intercept"] = (intercept + 0.01 * f64::from(step % 5)).into();
    json["model_version"] = format!("telco-soak-{}", step % 5).into();
    serde_json::to_string_pretty(&json).unwrap()
}

fn replace_file(path: &Path, contents: &str) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, contents).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// One run of the server binary.
struct Server {
    child: Child,
    address: SocketAddr,
}

/// Starts the binary on `port` (0: any) and waits for its "listening" line.
async fn start(dir: &Path, database_url: &str, port: u16) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_healthscore-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--model", dir.join("model.json").to_str().unwrap()])
        .args(["--database-url", database_url])
        .args(["--log-format", "json", "--rescore-interval-secs", "2"])
        .env("HEALTHSCORE_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the server binary starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = tokio::time::timeout(Duration::from_secs(60), async {
        let mut listening = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let fields = &event["fields"];
            if fields["message"] == "healthscore-server listening" {
                listening = fields["addr"].as_str().unwrap().parse::<SocketAddr>().ok();
            }
            if fields["message"] == "healthscore-server ready" {
                return listening.expect("the server says where it listens before it is ready");
            }
            assert_ne!(event["level"], "ERROR", "server error at start: {line}");
        }
        panic!("the server exited before listening");
    })
    .await
    .expect("the server listens within 60 s");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("\"level\":\"ERROR\"") {
                eprintln!("server: {line}");
            }
        }
    });
    Server { child, address }
}

async fn connect(address: SocketAddr) -> Option<HealthScoreServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .ok()?;
    Some(HealthScoreServiceClient::new(channel))
}

fn text(s: &str) -> FeatureValue {
    FeatureValue {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn number(x: f64) -> FeatureValue {
    FeatureValue {
        kind: Some(Kind::NumberValue(x)),
    }
}

fn telco_account(id: &str, tenure: f64) -> pb::AccountUpsert {
    let features: HashMap<String, FeatureValue> = [
        ("gender", text("Female")),
        ("SeniorCitizen", text("0")),
        ("Partner", text("Yes")),
        ("Dependents", text("No")),
        ("tenure", number(tenure)),
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
        ("TotalCharges", number(29.85 * tenure.max(1.0))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    pb::AccountUpsert {
        account_id: id.to_owned(),
        profile: Some(pb::AccountProfile {
            name: id.to_owned(),
            segment: "smb".into(),
            region: "emea".into(),
            plan: "monthly".into(),
            annual_contract_value: 360.0,
            renewal_date: String::new(),
        }),
        features,
    }
}

/// Whether a failed call failed only because the server was down or
/// restarting, which the soak provokes on purpose.
fn server_was_down(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown
    ) || status.message().contains("transport")
}

#[derive(Default)]
struct Ledger {
    /// Accounts whose upsert was acknowledged, with the tenures they may
    /// hold now: the last acknowledged one, then those of later attempts
    /// that failed (a write can commit just before the server dies).
    accounts: Mutex<HashMap<String, Vec<f64>>>,
    /// Signals whose batch was acknowledged.
    events: Mutex<Vec<pb::Signal>>,
    calls: AtomicU64,
    down: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

impl Ledger {
    fn failed(&self, what: &str, status: &tonic::Status) {
        if server_was_down(status) {
            self.down.fetch_add(1, Ordering::Relaxed);
        } else {
            self.unexpected
                .lock()
                .unwrap()
                .push(format!("{what}: {status:?}"));
        }
    }
}

async fn soak(database_url: String) {
    let dir = tempfile::tempdir().unwrap();
    replace_file(&dir.path().join("model.json"), &model_variant(0));
    let server = start(dir.path(), &database_url, 0).await;
    let port = server.address.port();
    let (address_tx, address_rx) = watch::channel(server.address);
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    for writer in 0..WRITERS {
        let (ledger, stop, mut address) = (ledger.clone(), stop.clone(), address_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = None;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if address.has_changed().unwrap_or(false) || client.is_none() {
                    let now = *address.borrow_and_update();
                    client = connect(now).await;
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = client.as_mut().unwrap();
                round += 1;
                // New accounts, and rewrites of earlier ones with new values.
                let batch: Vec<(String, f64)> = (0..BATCH)
                    .map(|i| {
                        let id = format!("w{writer}-{}", (round * BATCH as u64 + i as u64) % 3000);
                        (id, (round % 72) as f64)
                    })
                    .collect();
                let request = pb::UpsertAccountsRequest {
                    accounts: batch.iter().map(|(id, t)| telco_account(id, *t)).collect(),
                };
                ledger.calls.fetch_add(1, Ordering::Relaxed);
                match c.upsert_accounts(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        if response.upserted as usize != BATCH {
                            ledger.unexpected.lock().unwrap().push(format!(
                                "upsert stored {} of {BATCH}: {:?}",
                                response.upserted, response.results
                            ));
                        }
                        let mut accounts = ledger.accounts.lock().unwrap();
                        for (id, tenure) in batch {
                            accounts.insert(id, vec![tenure]);
                        }
                    }
                    Err(status) => {
                        ledger.failed("UpsertAccounts", &status);
                        let mut accounts = ledger.accounts.lock().unwrap();
                        for (id, tenure) in batch {
                            if let Some(candidates) = accounts.get_mut(&id) {
                                candidates.push(tenure);
                            }
                        }
                        client = None;
                        continue;
                    }
                }
                // Signals for accounts of this batch, each with a fresh id.
                let signals: Vec<pb::Signal> = (0..BATCH)
                    .map(|i| pb::Signal {
                        event_id: format!("w{writer}-r{round}-e{i}"),
                        account_id: format!(
                            "w{writer}-{}",
                            (round * BATCH as u64 + i as u64) % 3000
                        ),
                        kind: pb::SignalKind::Login as i32,
                        value: 1.0,
                        occurred_at: Some(prost_types::Timestamp {
                            seconds: chrono::Utc::now().timestamp() - 3600,
                            nanos: 0,
                        }),
                    })
                    .collect();
                let message = pb::RecordSignalsRequest {
                    signals: signals.clone(),
                };
                ledger.calls.fetch_add(1, Ordering::Relaxed);
                match c.record_signals(tokio_stream::iter([message])).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        if response.accepted as usize != BATCH {
                            ledger.unexpected.lock().unwrap().push(format!(
                                "signals: {} accepted of {BATCH}, errors {:?}",
                                response.accepted, response.errors
                            ));
                        }
                        ledger.events.lock().unwrap().extend(signals);
                    }
                    Err(status) => {
                        ledger.failed("RecordSignals", &status);
                        client = None;
                    }
                }
            }
        }));
    }
    for _ in 0..READERS {
        let (ledger, stop, mut address) = (ledger.clone(), stop.clone(), address_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = None;
            while !stop.load(Ordering::Relaxed) {
                if address.has_changed().unwrap_or(false) || client.is_none() {
                    let now = *address.borrow_and_update();
                    client = connect(now).await;
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
                let c = client.as_mut().unwrap();
                let known: Vec<String> = ledger
                    .accounts
                    .lock()
                    .unwrap()
                    .keys()
                    .take(5)
                    .cloned()
                    .collect();
                ledger.calls.fetch_add(1, Ordering::Relaxed);
                let result = c
                    .get_priority(pb::GetPriorityRequest {
                        account_ids: known.clone(),
                        context: None,
                    })
                    .await;
                match result {
                    Ok(answer) => {
                        // An acknowledged account is never unknown, even
                        // right after a restart.
                        for p in answer.into_inner().priorities {
                            if !p.known {
                                ledger.unexpected.lock().unwrap().push(format!(
                                    "acknowledged account {} unknown to GetPriority",
                                    p.account_id
                                ));
                            }
                        }
                    }
                    Err(status) if known.is_empty() && status.code() == Code::InvalidArgument => {}
                    Err(status) => {
                        ledger.failed("GetPriority", &status);
                        client = None;
                        continue;
                    }
                }
                if let Some(id) = known.first() {
                    ledger.calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(status) = c
                        .get_account_health(pb::GetAccountHealthRequest {
                            account_id: id.clone(),
                        })
                        .await
                    {
                        ledger.failed("GetAccountHealth", &status);
                        client = None;
                    }
                }
            }
        }));
    }

    // The chaos: replace the model every 3 s, SIGKILL and restart every 7 s.
    let started = Instant::now();
    let mut server = server;
    let (mut reloads, mut kills) = (0u32, 0u32);
    let mut next_reload = Duration::from_secs(3);
    let mut next_kill = Duration::from_secs(7);
    while started.elapsed() < soak_duration() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() >= next_reload {
            reloads += 1;
            replace_file(&dir.path().join("model.json"), &model_variant(reloads));
            next_reload += Duration::from_secs(3);
        }
        if started.elapsed() >= next_kill {
            kills += 1;
            server.child.start_kill().unwrap();
            server.child.wait().await.unwrap();
            server = start(dir.path(), &database_url, port).await;
            address_tx.send(server.address).unwrap();
            next_kill += Duration::from_secs(7);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();

    // A fresh start on the same store holds every acknowledged write.
    let server = start(dir.path(), &database_url, port).await;
    let mut client = connect(server.address)
        .await
        .expect("the final server answers");
    let accounts = ledger.accounts.lock().unwrap().clone();
    let events = ledger.events.lock().unwrap().clone();
    let ids: Vec<String> = accounts.keys().cloned().collect();
    for chunk in ids.chunks(1000) {
        let answer = client
            .get_priority(pb::GetPriorityRequest {
                account_ids: chunk.to_vec(),
                context: None,
            })
            .await
            .unwrap()
            .into_inner();
        let lost: Vec<&str> = answer
            .priorities
            .iter()
            .filter(|p| !p.known)
            .map(|p| p.account_id.as_str())
            .collect();
        assert!(lost.is_empty(), "acknowledged accounts lost: {lost:?}");
    }
    // A sample of accounts holds the values last acknowledged (or those of
    // a later write that committed without its answer arriving): the stored
    // score equals the score of one of those candidates.
    for (id, candidates) in accounts.iter().take(100) {
        let stored = client
            .get_account_health(pb::GetAccountHealthRequest {
                account_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .score
            .unwrap()
            .churn_probability;
        let inline = client
            .score_accounts(pb::ScoreAccountsRequest {
                accounts: candidates
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let upsert = telco_account(&format!("{id}-candidate-{i}"), *t);
                        pb::Account {
                            account_id: upsert.account_id,
                            features: upsert.features,
                        }
                    })
                    .collect(),
                max_attributions: 1,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            inline
                .scores
                .iter()
                .any(|s| (s.churn_probability - stored).abs() < 1e-12),
            "{id} holds a score ({stored}) of none of its acknowledged values {candidates:?}"
        );
    }
    // Resending every acknowledged signal stores nothing new.
    let mut duplicates = 0;
    for chunk in events.chunks(5000) {
        let answer = client
            .record_signals(tokio_stream::iter([pb::RecordSignalsRequest {
                signals: chunk.to_vec(),
            }]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.accepted, 0, "acknowledged signals were lost");
        duplicates += answer.duplicates;
    }
    assert_eq!(duplicates, events.len() as u64);
    let unexpected = ledger.unexpected.lock().unwrap().clone();
    eprintln!(
        "soak {:?}: {} calls, {} refused while the server was down, {} accounts and {} signals \
         acknowledged, {reloads} model replacements, {kills} kills",
        soak_duration(),
        ledger.calls.load(Ordering::Relaxed),
        ledger.down.load(Ordering::Relaxed),
        accounts.len(),
        events.len(),
    );
    assert!(
        unexpected.is_empty(),
        "unexpected failures: {unexpected:#?}"
    );
    assert!(kills >= 1 || soak_duration() < Duration::from_secs(7));
    assert!(
        !accounts.is_empty() && !events.is_empty(),
        "nothing was written"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("soak.db").display());
    soak(url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_on_postgres() {
    postgres::with_database("hs_soak", soak).await;
}
