//! A fresh PostgreSQL database for one test, shared by the test crates
//! that run on both backends (each includes this file as a module).
//!
//! The server is `HEALTHSCORE_TEST_POSTGRES` (a URL without a database;
//! default `postgres://postgres@127.0.0.1:5432`). Each database is created
//! through the existing database `test` under a random name and dropped
//! afterwards, pass or fail, so parallel runs never meet. An unreachable
//! server fails the test; `HEALTHSCORE_SKIP_POSTGRES=1` skips it instead.

use sqlx::{Connection, Executor, postgres::PgConnection};

/// Runs `test` with the URL of a new, empty database and drops the
/// database afterwards; `prefix` starts its name (letters and `_` only).
/// Returns without running `test` when `HEALTHSCORE_SKIP_POSTGRES=1`.
pub(crate) async fn with_database<F, Fut>(prefix: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    if std::env::var("HEALTHSCORE_SKIP_POSTGRES").as_deref() == Ok("1") {
        eprintln!("skipped: HEALTHSCORE_SKIP_POSTGRES=1");
        return;
    }
    let server = std::env::var("HEALTHSCORE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let mut admin = PgConnection::connect(&format!("{server}/test"))
        .await
        .unwrap_or_else(|error| {
            panic!(
                "PostgreSQL is unreachable at {server}/test: {error}. Start it \
                 (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start), \
                 point HEALTHSCORE_TEST_POSTGRES at a server, or set \
                 HEALTHSCORE_SKIP_POSTGRES=1 to skip the PostgreSQL tests"
            )
        });
    // A database name is an identifier, which cannot be a bound parameter;
    // this one is made of the prefix and [0-9a-f] only.
    assert!(prefix.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    let name = format!("{prefix}_{:016x}", rand::random::<u64>());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|error| panic!("cannot create database {name}: {error}"));

    // The body runs as a task so that a failing assertion still reaches the
    // cleanup below; its panic is re-raised afterwards.
    let outcome = tokio::spawn(test(format!("{server}/{name}"))).await;
    admin
        .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
        .await
        .unwrap_or_else(|error| panic!("cannot drop database {name}: {error}"));
    if let Err(failure) = outcome {
        std::panic::resume_unwind(failure.into_panic());
    }
}
