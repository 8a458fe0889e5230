//! End-to-end tests of the account RPCs: the real server over a real tonic
//! client, on a real SQLite file and on a real PostgreSQL database, with the
//! shipped Telco model or a small SaaS model whose engagement, support and
//! satisfaction features are derived from signals.
//!
//! Every test body runs twice, as `<test>::sqlite` and `<test>::postgres`,
//! each on a fresh database of its own. PostgreSQL is the server at
//! `HEALTHSCORE_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`);
//! `HEALTHSCORE_SKIP_POSTGRES=1` skips the PostgreSQL variants.

/// Declares `<test>::sqlite` and `<test>::postgres` for each test body, an
/// `async fn(TestDb)` of the enclosing module.
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                crate::helpers::on_sqlite(super::$test).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                crate::helpers::on_postgres(super::$test).await;
            }
        }
    )+};
}

mod concurrency;
mod health;
mod helpers;
mod history;
mod list;
mod models;
#[path = "../support/postgres.rs"]
mod postgres;
mod priority;
mod reload;
mod segments;
mod signals;
mod startup;
mod upsert;
