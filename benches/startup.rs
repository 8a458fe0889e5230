//! Start-up: time from launching `healthscore-server` to grpc.health.v1
//! SERVING (every stored account loaded from the store and scored), with
//! the shipped model on an empty store and on a store of BENCH_STARTUP_ACCOUNTS
//! accounts (default 1,000,000), with the server's resident memory once
//! ready. The store is a fresh SQLite file, filled through UpsertAccounts by
//! a first server that is then stopped with SIGTERM.
//!
//! Run: `cargo bench --bench startup`. Sizes: BENCH_STARTUP_ACCOUNTS,
//! BENCH_STARTUP_RUNS (3 starts of each kind); BENCH_STARTUP_DIR keeps the
//! seeded store there (and reuses it when it exists), for profiling.

mod common;

use std::time::Duration;

use common::{env_or, seed, start_server};
use healthscore::grpc::pb::health_score_service_client::HealthScoreServiceClient;

fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn main() {
    let accounts: usize = env_or("BENCH_STARTUP_ACCOUNTS", 1_000_000);
    let runs: usize = env_or("BENCH_STARTUP_RUNS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!("start-up of the release healthscore-server, shipped model, SQLite store");
        println!(
            "{:<28} {:>6} {:>18} {:>16}",
            "store", "start", "launch to SERVING s", "resident MB"
        );
        for run in 1..=runs {
            let dir = tempfile::tempdir().unwrap();
            let (server, _, _, took) = start_server(dir.path()).await;
            let rss = server.resident_bytes().unwrap_or(0);
            server.stop();
            println!(
                "{:<28} {run:>6} {:>18} {:>16.0}",
                "empty",
                seconds(took),
                rss as f64 / 1e6
            );
        }

        // BENCH_STARTUP_DIR keeps the seeded store for profiling: seeded on
        // the first run, reused as it is on later ones.
        let temporary = tempfile::tempdir().unwrap();
        let kept = std::env::var_os("BENCH_STARTUP_DIR").map(std::path::PathBuf::from);
        let dir = kept.as_deref().unwrap_or(temporary.path());
        let seeded = dir.join("healthscore.db").exists();
        if seeded {
            println!("reusing the store in {}", dir.display());
        } else {
            std::fs::create_dir_all(dir).unwrap();
            let (server, channel, _, _) = start_server(dir).await;
            let rate = seed(&mut HealthScoreServiceClient::new(channel), accounts).await;
            server.stop();
            println!("seeded {accounts} accounts at {rate:.0} accounts/s through UpsertAccounts");
        }
        let db_bytes: u64 = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!("store {:.0} MB on disk", db_bytes as f64 / 1e6);
        let label = format!("{accounts} accounts");
        for run in 1..=runs {
            let (server, _, _, took) = start_server(dir).await;
            let rss = server.resident_bytes().unwrap_or(0);
            server.stop();
            println!(
                "{label:<28} {run:>6} {:>18} {:>16.0}",
                seconds(took),
                rss as f64 / 1e6
            );
        }
    });
}
