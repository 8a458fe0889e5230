//! What the load and start-up benches share: the release server as a child
//! process on a free loopback port, and Telco-like accounts to send it.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use healthscore::grpc::pb::{self, health_score_service_client::HealthScoreServiceClient};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// An environment variable parsed, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server process; killed when dropped.
pub struct Server(pub Child);

impl Server {
    /// Asks the server to stop (SIGTERM) and waits until it has, so its
    /// store is flushed and closed.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM was delivered");
        self.0.wait().expect("the server exits");
    }

    /// Resident memory of the server now, in bytes (Linux).
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the release server on a free port over `data_dir` and waits until
/// grpc.health.v1 reports SERVING (every stored account loaded and scored).
/// Returns the server, a channel to it, its URL, and the time from launch
/// to SERVING.
pub async fn start_server(data_dir: &Path) -> (Server, Channel, String, Duration) {
    let port = free_port();
    let launched = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_healthscore-server"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .env("HEALTHSCORE_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the server binary starts");
    let server = Server(child);
    let url = format!("http://127.0.0.1:{port}");
    let patience = Duration::from_secs(env_or("BENCH_START_TIMEOUT_SECS", 600));
    loop {
        if let Ok(channel) = Channel::from_shared(url.clone()).unwrap().connect().await {
            let mut health = HealthClient::new(channel.clone());
            let serving = health
                .check(HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving);
            if serving {
                return (server, channel, url, launched.elapsed());
            }
        }
        assert!(launched.elapsed() < patience, "server did not come up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Feature maps of the first `n` Telco rows (cycling), as a client sends them.
pub fn telco_features(n: usize) -> Vec<HashMap<String, pb::FeatureValue>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/training/data/telco-customer-churn/Telco-Customer-Churn.csv"
    );
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let numeric = ["tenure", "MonthlyCharges", "TotalCharges"];
    (0..n.min(rows.len()))
        .map(|i| {
            let row = &rows[i];
            let mut features = HashMap::new();
            for (name, cell) in header.iter().zip(row.iter()) {
                if ["customerID", "Churn"].contains(&name) || cell.trim().is_empty() {
                    continue;
                }
                let kind = if numeric.contains(&name) {
                    pb::feature_value::Kind::NumberValue(cell.trim().parse().unwrap())
                } else {
                    pb::feature_value::Kind::StringValue(cell.to_owned())
                };
                features.insert(name.to_owned(), pb::FeatureValue { kind: Some(kind) });
            }
            features
        })
        .cycle()
        .take(n)
        .collect()
}

/// Upserts accounts `acct-0` .. `acct-{n-1}` cycling through the Telco
/// rows, with annual values spread over two orders of magnitude, 1,000 per
/// call; returns the accounts stored per second.
pub async fn seed(client: &mut HealthScoreServiceClient<Channel>, n: usize) -> f64 {
    let rows = telco_features(7043.min(n));
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(pb::AccountUpsert {
            account_id: format!("acct-{i}"),
            profile: Some(pb::AccountProfile {
                segment: ["smb", "mid", "enterprise"][i % 3].into(),
                region: ["emea", "amer", "apac"][i % 3].into(),
                annual_contract_value: 1_000.0 * (1.0 + (i * 7919 % 100) as f64),
                ..Default::default()
            }),
            features: rows[i % rows.len()].clone(),
        });
        if batch.len() == 1000 || i + 1 == n {
            let response = client
                .upsert_accounts(pb::UpsertAccountsRequest {
                    accounts: std::mem::take(&mut batch),
                })
                .await
                .expect("seeding succeeds")
                .into_inner();
            assert!(
                response.results.iter().all(|r| r.error.is_none()),
                "seed rows are valid"
            );
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}
