//! The account store: account profiles with their current feature values,
//! usage signals, and the score history, in SQLite (the embedded default) or
//! PostgreSQL behind one [`Store`].
//!
//! It owns the schema (embedded migrations, applied at connect) and every
//! SQL statement. It does not decide what a valid feature or score is; the
//! caller validates records against the model first. The store only refuses
//! what it could not keep faithfully on both backends: non-finite numbers
//! (SQLite turns NaN into NULL), malformed renewal dates and attribution text
//! that is not JSON.
//!
//! Every statement is plain SQL that both backends accept, run through
//! sqlx's Any driver with every value bound as a parameter. The two places
//! where the backends differ are chosen at run time from [`Backend`]: how a
//! write transaction starts, and the collation that makes text sort bytewise
//! (PostgreSQL's default collation follows the locale).
//!
//! Queries are grouped by table: `accounts.rs` (profiles and features),
//! `signals.rs` and `history.rs`.

mod accounts;
mod error;
mod history;
mod records;
mod signals;

use std::{fmt, str::FromStr, time::Duration};

use sqlx::{
    Any, AnyPool, ConnectOptions, Connection, Transaction, any::AnyPoolOptions, migrate::Migrator,
    sqlite::SqliteConnectOptions,
};

pub use error::StoreError;
pub use records::{AccountRecord, HistoryRecord, LatestScore, SignalRecord, StoredValue};

/// The schema, one migration set for both backends.
static MIGRATOR: Migrator = sqlx::migrate!("src/store/migrations");

/// How long a SQLite writer waits for another's lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound parameters per statement. Batches are written as multi-row
/// statements of at most this many values: far below both backends' limits
/// (32,766 for the bundled SQLite, 65,535 for PostgreSQL), and large enough
/// that the per-statement cost vanishes.
const MAX_BINDS: usize = 4_096;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file, opened in WAL mode.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

impl Backend {
    fn from_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
        match scheme {
            "sqlite" => Ok(Self::Sqlite),
            "postgres" | "postgresql" => Ok(Self::Postgres),
            _ => Err(StoreError::UnsupportedUrl {
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// The collation that sorts text by its UTF-8 bytes, as Rust's `str`
    /// does, so both backends return rows in the same order.
    fn bytewise(self) -> &'static str {
        match self {
            Self::Sqlite => "COLLATE BINARY",
            Self::Postgres => "COLLATE \"C\"",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        })
    }
}

/// A pool of connections to the account store. Cloning is cheap and shares
/// the pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens the store at `url` and brings its schema up to date.
    ///
    /// `sqlite://PATH` creates the file if missing and runs it in WAL mode
    /// with `synchronous=FULL` (an acknowledged write survives a power
    /// loss), foreign keys on and a 5 s busy timeout. `postgres://…` needs an
    /// existing database; TLS is not compiled in, so use a local or tunnelled
    /// server. Connecting again to an up-to-date database changes nothing.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnsupportedUrl`] for another scheme,
    /// [`StoreError::Connect`] if the database cannot be opened,
    /// [`StoreError::NotWal`] if SQLite refuses WAL (as an in-memory database
    /// does), and [`StoreError::Migrate`] if the schema cannot be applied,
    /// for example because it was changed outside the store.
    #[tracing::instrument(skip_all, fields(backend))]
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        tracing::Span::current().record("backend", tracing::field::display(backend));
        let connect_failed = |source| StoreError::Connect {
            backend,
            target: without_credentials(url),
            source,
        };

        if backend == Backend::Sqlite {
            enable_wal(url).await?;
        }
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(connect_failed)?;

        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { backend, source })?;
        tracing::debug!(
            migrations = MIGRATOR.iter().count(),
            "store schema is up to date"
        );
        Ok(Store { pool, backend })
    }

    /// Opens an existing store only to read it, as the tools beside the
    /// server do: nothing is created, migrated or switched to WAL, and a
    /// database without this build's schema is refused.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnsupportedUrl`] for another scheme,
    /// [`StoreError::Connect`] if the database cannot be opened (a missing
    /// SQLite file included), [`StoreError::NotAStore`] if it holds no
    /// healthscore schema or another version of it.
    #[tracing::instrument(skip_all, fields(backend))]
    pub async fn open_existing(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        tracing::Span::current().record("backend", tracing::field::display(backend));
        let target = without_credentials(url);
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .map_err(|source| StoreError::Connect {
                backend,
                target: target.clone(),
                source,
            })?;
        let not_a_store = |problem: String| StoreError::NotAStore {
            target: target.clone(),
            problem,
        };
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&pool)
        .await
        .map_err(|_| {
            not_a_store(
                "holds no healthscore schema (healthscore-server creates it on first start; \
                 check the URL)"
                    .into(),
            )
        })?;
        let expected: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        if applied != expected {
            pool.close().await;
            return Err(not_a_store(format!(
                "has schema versions {applied:?}; this build reads {expected:?}"
            )));
        }
        Ok(Store { pool, backend })
    }

    /// The backend this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection, waiting for those in use to come back. On
    /// SQLite the last close checkpoints the WAL into the main file. Calls
    /// made afterwards fail with a pool-closed error.
    #[tracing::instrument(skip_all, fields(backend = %self.backend))]
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a writer queued behind another waits out the
    /// busy timeout; a deferred transaction can instead fail with
    /// `SQLITE_BUSY` straight away when it upgrades from reading to writing.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }
}

/// Run on every new SQLite connection. `synchronous` and `busy_timeout` are
/// per connection; sqlx already defaults to the same values, but the
/// durability promise of [`Store::connect`] should not rest on a default.
const SQLITE_PRAGMAS: [&str; 3] = [
    "PRAGMA foreign_keys = ON",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 5000",
];

/// Creates the SQLite file if missing and switches it to WAL. The mode is
/// stored in the file, so this is done once on a lone connection: switching
/// needs an exclusive lock that the busy timeout does not wait for, which a
/// pool opening several connections at once could contend for.
async fn enable_wal(url: &str) -> Result<(), StoreError> {
    let connect_failed = |source| StoreError::Connect {
        backend: Backend::Sqlite,
        target: url.to_owned(),
        source,
    };
    let mut conn = SqliteConnectOptions::from_str(url)
        .map_err(connect_failed)?
        .create_if_missing(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .connect()
        .await
        .map_err(connect_failed)?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
        .fetch_one(&mut conn)
        .await
        .map_err(connect_failed)?;
    conn.close().await.map_err(connect_failed)?;
    if mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(StoreError::NotWal {
            target: url.to_owned(),
            mode,
        })
    }
}

/// `url` without user, password or query parameters, fit for messages.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split('?').next().unwrap_or_default().to_owned();
    };
    let rest = rest.split('?').next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

/// Rows of `columns` values that fit in one statement.
fn rows_per_statement(columns: usize) -> usize {
    MAX_BINDS / columns
}

/// `($1, $2), ($3, $4)` for `rows` rows of `columns` parameters each, or
/// `(?, ?), (?, ?)` on SQLite: sqlx's SQLite driver looks up every numbered
/// parameter by name, which is quadratic in the parameter count (three
/// quarters of an upsert's time at 4,096 parameters), while `?` binds by
/// position.
fn values_placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 6);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    sql.push('$');
                    sql.push_str(&(row * columns + column + 1).to_string());
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Refuses a number that would not round-trip: SQLite stores NaN as NULL,
/// and infinities have no JSON form for the layers above.
fn require_finite(
    table: &'static str,
    account_id: &str,
    field: &str,
    value: f64,
) -> Result<(), StoreError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(StoreError::InvalidValue {
            table,
            account_id: account_id.to_owned(),
            field: field.to_owned(),
            problem: "is not a finite number",
        })
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    #[test]
    fn placeholders_number_rows_then_columns() {
        let pg = Backend::Postgres;
        assert_eq!(values_placeholders(pg, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_placeholders(pg, 1, 1), "($1)");
        assert_eq!(values_placeholders(pg, 0, 4), "");
        assert_eq!(values_placeholders(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }

    #[test]
    fn messages_never_show_credentials_or_parameters() {
        assert_eq!(
            without_credentials("postgres://app:s3cret@db.internal:5432/health?sslmode=disable"),
            "postgres://db.internal:5432/health"
        );
        assert_eq!(
            without_credentials("postgres://user@localhost"),
            "postgres://localhost"
        );
        assert_eq!(
            without_credentials("sqlite:///var/lib/hs.db?mode=rwc"),
            "sqlite:///var/lib/hs.db"
        );
    }

    #[test]
    fn backend_comes_from_the_url_scheme() {
        assert_eq!(
            Backend::from_url("sqlite://a.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("postgresql://h/d").ok(),
            Some(Backend::Postgres)
        );
        let error = Backend::from_url("mysql://h/d")
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| e.contains("\"mysql\"")));
    }

    #[tokio::test]
    async fn sqlite_connections_are_durable_and_enforce_foreign_keys() {
        let dir = tempfile::tempdir().expect("a temporary directory can be created");
        let url = format!("sqlite://{}", dir.path().join("pragmas.db").display());
        let store = Store::connect(&url).await.expect("a new SQLite file opens");

        let mut conn = store
            .pool
            .acquire()
            .await
            .expect("the pool hands out a connection");
        let mut pragmas = Vec::new();
        for name in ["synchronous", "foreign_keys", "busy_timeout"] {
            let row = sqlx::query(&format!("PRAGMA {name}"))
                .fetch_one(&mut *conn)
                .await
                .expect("pragmas are readable");
            pragmas.push(
                row.try_get::<i64, _>(0)
                    .expect("these pragmas are integers"),
            );
        }
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .expect("the journal mode is readable");

        // synchronous 2 is FULL: https://www.sqlite.org/pragma.html#pragma_synchronous
        assert_eq!(pragmas, [2, 1, 5_000]);
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn in_memory_sqlite_is_refused_for_want_of_wal() {
        let error = Store::connect("sqlite::memory:").await.err();

        assert!(
            matches!(error, Some(StoreError::NotWal { ref mode, .. }) if mode == "memory"),
            "{error:?}"
        );
    }
}
