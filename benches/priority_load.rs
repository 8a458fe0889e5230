//! GetPriority under load, from a separate process.
//!
//! Starts the release `healthscore-server` as a child process with a fresh
//! SQLite store, seeds it with accounts built from the Telco sample, then
//! drives it over loopback:
//!
//! 1. closed loop: N requests in flight for a few seconds, for GetPriority
//!    (one account id) and for grpc.health.v1 Check (the empty RPC), to show
//!    the ceiling and how close GetPriority comes to it;
//! 2. open loop: requests paced evenly at a target rate (default 10,000/s);
//!    latency is measured from each request's *scheduled* send time, so a
//!    stalled server cannot hide its queueing (no coordinated omission).
//!
//! Run: `cargo bench --bench priority_load` (figures printed; nothing is
//! asserted). Sizes: BENCH_ACCOUNTS (10000), BENCH_SECONDS (10),
//! BENCH_RATE (10000), BENCH_RUNS (3), BENCH_CONCURRENCY (64).

mod common;

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{env_or, seed, start_server, telco_features};

use healthscore::grpc::pb::{self, health_score_service_client::HealthScoreServiceClient};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Clone, Copy)]
enum Rpc {
    Priority,
    Check,
    /// ScoreAccounts with one account.
    ScoreOne,
    /// ScoreAccounts with a batch of [`BATCH`] accounts.
    ScoreBatch,
}

/// Accounts per ScoreAccounts call in the batch run.
const BATCH: usize = 1000;

/// ScoreAccounts requests of Telco customers: one account, and [`BATCH`].
fn score_requests() -> &'static (pb::ScoreAccountsRequest, pb::ScoreAccountsRequest) {
    static REQUESTS: std::sync::OnceLock<(pb::ScoreAccountsRequest, pb::ScoreAccountsRequest)> =
        std::sync::OnceLock::new();
    REQUESTS.get_or_init(|| {
        let accounts: Vec<pb::Account> = telco_features(BATCH)
            .into_iter()
            .enumerate()
            .map(|(i, features)| pb::Account {
                account_id: format!("inline-{i}"),
                features,
            })
            .collect();
        // Three attributions each, as a dashboard asks for its top drivers.
        let one = pb::ScoreAccountsRequest {
            accounts: accounts[..1].to_vec(),
            max_attributions: 3,
        };
        let batch = pb::ScoreAccountsRequest {
            accounts,
            max_attributions: 3,
        };
        (one, batch)
    })
}

async fn score(client: &mut HealthScoreServiceClient<Channel>, batch: bool) -> bool {
    let (one, many) = score_requests();
    let request = if batch { many } else { one };
    client.score_accounts(request.clone()).await.is_ok_and(|r| {
        let scores = r.into_inner().scores;
        scores.len() == request.accounts.len() && scores.iter().all(|s| s.error.is_none())
    })
}

/// One GetPriority for one account id; true when it answered for a known
/// account.
async fn priority(
    client: &mut HealthScoreServiceClient<Channel>,
    i: usize,
    accounts: usize,
) -> bool {
    let request = pb::GetPriorityRequest {
        account_ids: vec![format!("acct-{}", i % accounts)],
        context: None,
    };
    client
        .get_priority(request)
        .await
        .is_ok_and(|r| r.into_inner().priorities.first().is_some_and(|p| p.known))
}

async fn call(
    rpc: Rpc,
    client: &mut HealthScoreServiceClient<Channel>,
    health: &mut HealthClient<Channel>,
    i: usize,
    accounts: usize,
) -> bool {
    match rpc {
        Rpc::Priority => priority(client, i, accounts).await,
        Rpc::Check => health.check(HealthCheckRequest::default()).await.is_ok(),
        Rpc::ScoreOne => score(client, false).await,
        Rpc::ScoreBatch => score(client, true).await,
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Closed loop: `concurrency` tasks over `connections` channels, each
/// sending its next request when the previous answer arrives.
async fn closed_loop(
    channels: &[Channel],
    rpc: Rpc,
    concurrency: usize,
    seconds: f64,
    accounts: usize,
) -> (f64, Duration, Duration, usize) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let results = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let channel = channels[t % channels.len()].clone();
        let results = Arc::clone(&results);
        tasks.push(tokio::spawn(async move {
            let mut client = HealthScoreServiceClient::new(channel.clone());
            let mut health = HealthClient::new(channel);
            let (mut latencies, mut errors) = (Vec::new(), 0);
            let mut i = t * 7919;
            while Instant::now() < deadline {
                let start = Instant::now();
                if call(rpc, &mut client, &mut health, i, accounts).await {
                    latencies.push(start.elapsed());
                } else {
                    errors += 1;
                }
                i += 1;
            }
            let mut r = results.lock().await;
            r.0.extend(latencies);
            r.1 += errors;
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (mut latencies, errors) = Arc::try_unwrap(results).unwrap().into_inner();
    latencies.sort_unstable();
    (
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        errors,
    )
}

/// A raw HTTP/2 connection sending one prepared GetPriority frame: the
/// paced load needs a generator far cheaper than the server it measures, and
/// tonic's client stack (a buffer task, tower layers, codec) costs more per
/// call than the server's whole answer. Replies are still checked: HTTP
/// status, grpc-status in the trailers, and a decoded `known` account.
#[derive(Clone)]
struct RawClient {
    send: h2::client::SendRequest<bytes::Bytes>,
    uri: http::Uri,
}

impl RawClient {
    async fn connect(address: &str) -> RawClient {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let uri = format!("http://{address}/healthscore.v1.HealthScoreService/GetPriority")
            .parse()
            .unwrap();
        RawClient { send, uri }
    }

    /// Sends `body` (a length-prefixed GetPriorityRequest); true when the
    /// server answered OK for a known account.
    async fn get_priority(self, body: bytes::Bytes) -> bool {
        let request = http::Request::post(self.uri.clone())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let Ok(mut send) = self.send.ready().await else {
            return false;
        };
        let Ok((response, mut stream)) = send.send_request(request, false) else {
            return false;
        };
        if stream.send_data(body, true).is_err() {
            return false;
        }
        let Ok(response) = response.await else {
            return false;
        };
        if response.status() != http::StatusCode::OK {
            return false;
        }
        let mut body = response.into_body();
        let mut payload = Vec::new();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { return false };
            let _ = body.flow_control().release_capacity(chunk.len());
            payload.extend_from_slice(&chunk);
        }
        let ok_status = matches!(
            body.trailers().await,
            Ok(Some(trailers)) if trailers.get("grpc-status").is_some_and(|s| s == "0")
        );
        ok_status
            && payload.len() > 5
            && <pb::GetPriorityResponse as prost::Message>::decode(&payload[5..])
                .is_ok_and(|r| r.priorities.first().is_some_and(|p| p.known))
    }
}

/// The gRPC frame of a GetPriorityRequest for one account.
fn priority_frame(account: usize) -> bytes::Bytes {
    use prost::Message;
    let message = pb::GetPriorityRequest {
        account_ids: vec![format!("acct-{account}")],
        context: None,
    }
    .encode_to_vec();
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame.into()
}

/// Open loop: a pacing thread schedules requests evenly at `rate` per
/// second for `seconds` and spawns each on the runtime at its time (a
/// thread's sleep is precise to tens of microseconds, unlike the runtime's
/// millisecond timer). Latency counts from the scheduled time, so time spent
/// waiting behind a slow request is included.
async fn open_loop(
    address: &str,
    rate: f64,
    seconds: f64,
    accounts: usize,
) -> (f64, Duration, Duration, Duration, Duration, usize) {
    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let handle = tokio::runtime::Handle::current();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Option<Duration>>();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(RawClient::connect(address).await);
    }
    let frames: Vec<bytes::Bytes> = (0..accounts.min(4096)).map(priority_frame).collect();
    let pacer = std::thread::spawn(move || {
        let origin = Instant::now() + Duration::from_millis(20);
        for k in 0..total {
            let scheduled = origin + interval * k as u32;
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let client = clients[k % clients.len()].clone();
            let frame = frames[k % frames.len()].clone();
            let done = done_tx.clone();
            handle.spawn(async move {
                let ok = client.get_priority(frame).await;
                let _ = done.send(ok.then(|| scheduled.elapsed()));
            });
        }
        origin
    });
    let (mut latencies, mut errors) = (Vec::with_capacity(total), 0usize);
    for _ in 0..total {
        match done_rx.recv().await.expect("every request reports") {
            Some(latency) => latencies.push(latency),
            None => errors += 1,
        }
    }
    let origin = pacer.join().unwrap();
    let achieved = latencies.len() as f64 / origin.elapsed().as_secs_f64();
    latencies.sort_unstable();
    (
        achieved,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        *latencies.last().unwrap(),
        errors,
    )
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let accounts: usize = env_or("BENCH_ACCOUNTS", 10_000);
    let seconds: f64 = env_or("BENCH_SECONDS", 10.0);
    let rate: f64 = env_or("BENCH_RATE", 10_000.0);
    let runs: usize = env_or("BENCH_RUNS", 3);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 64);
    // The load generator gets its own two runtime threads; the server is a
    // separate process sharing the same two cores, as a sidecar would.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("BENCH_CLIENT_THREADS", 2))
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (_server, channel, url, _) = start_server(dir.path()).await;
        let mut client = HealthScoreServiceClient::new(channel.clone());
        let seeding = Instant::now();
        seed(&mut client, accounts).await;
        println!(
            "seeded {accounts} accounts in {:.2} s ({:.0} accounts/s through UpsertAccounts)",
            seeding.elapsed().as_secs_f64(),
            accounts as f64 / seeding.elapsed().as_secs_f64()
        );
        // Let the kernel write back the seeding's dirty pages before
        // measuring, so the first runs do not pay for them.
        let _ = Command::new("sync").status();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(Channel::from_shared(url.clone()).unwrap().connect().await.unwrap());
        }

        println!("\nclosed loop, {concurrency} in flight over 4 connections, {seconds} s each");
        println!("{:<14} {:>10} {:>9} {:>9} {:>7}", "rpc", "req/s", "p50 ms", "p99 ms", "errors");
        let (check_rps, p50, p99, errors) = closed_loop(&channels, Rpc::Check, concurrency, seconds / 2.0, accounts).await;
        println!("{:<14} {check_rps:>10.0} {:>9} {:>9} {errors:>7}", "Health.Check", ms(p50), ms(p99));
        let (prio_rps, p50, p99, errors) = closed_loop(&channels, Rpc::Priority, concurrency, seconds / 2.0, accounts).await;
        println!("{:<14} {prio_rps:>10.0} {:>9} {:>9} {errors:>7}", "GetPriority", ms(p50), ms(p99));
        println!("GetPriority / Check throughput: {:.2}", prio_rps / check_rps);
        let (one_rps, p50, p99, errors) = closed_loop(&channels, Rpc::ScoreOne, concurrency, seconds / 2.0, accounts).await;
        println!("{:<14} {one_rps:>10.0} {:>9} {:>9} {errors:>7}", "Score x1", ms(p50), ms(p99));
        println!("ScoreAccounts(1) / Check throughput: {:.2}", one_rps / check_rps);
        let (batch_rps, p50, p99, errors) = closed_loop(&channels, Rpc::ScoreBatch, 4, seconds / 2.0, accounts).await;
        println!("{:<14} {batch_rps:>10.1} {:>9} {:>9} {errors:>7}", "Score x1000", ms(p50), ms(p99));
        println!(
            "ScoreAccounts({BATCH}), 4 in flight: {:.0} accounts/s end to end",
            batch_rps * BATCH as f64
        );

        println!("\nopen loop over raw HTTP/2 (4 connections), GetPriority paced evenly at {rate:.0}/s for {seconds} s, latency from the scheduled send time");
        println!("{:<5} {:>10} {:>9} {:>9} {:>10} {:>9} {:>7}", "run", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors");
        for run in 1..=runs {
            let (achieved, p50, p99, p999, max, errors) = open_loop(url.trim_start_matches("http://"), rate, seconds, accounts).await;
            println!(
                "{run:<5} {achieved:>10.0} {:>9} {:>9} {:>10} {:>9} {errors:>7}",
                ms(p50),
                ms(p99),
                ms(p999),
                ms(max)
            );
        }
    });
}
