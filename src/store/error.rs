//! The storage layer's error type.

use thiserror::Error;

use super::Backend;

/// A store operation that failed, saying what it was doing.
///
/// `Display` names the operation, the table and the account where there is
/// one, never SQL or driver text: the gRPC layer may show it. The driver's
/// error, which can quote SQL and data, stays in the `source` chain for logs.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The URL is neither `sqlite://…` nor `postgres://…`.
    #[error(
        "unsupported database URL scheme {scheme:?}; use sqlite://PATH or postgres://HOST/DATABASE"
    )]
    UnsupportedUrl {
        /// The URL's scheme, as given.
        scheme: String,
    },
    /// The database could not be opened or configured.
    #[error("cannot open the {backend} database at {target}")]
    Connect {
        /// Which backend the URL named.
        backend: Backend,
        /// The URL without credentials or query parameters.
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// SQLite did not switch to write-ahead logging, which the store needs
    /// for readers alongside a writer (in-memory databases and some network
    /// file systems cannot).
    #[error("the SQLite database at {target} stays in journal mode {mode:?}; WAL is required")]
    NotWal {
        /// The URL as given.
        target: String,
        /// The journal mode SQLite reported instead of `wal`.
        mode: String,
    },
    /// An existing database opened for reading is not a store of this
    /// build.
    #[error("the database at {target} {problem}")]
    NotAStore {
        /// The URL without credentials or query parameters.
        target: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The embedded migrations could not be applied.
    #[error("cannot bring the {backend} database schema up to date")]
    Migrate {
        /// Which backend was being migrated.
        backend: Backend,
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A value that would not round-trip on both backends; nothing of the
    /// batch was written.
    #[error("cannot store {table} for account {account_id:?}: {field} {problem}")]
    InvalidValue {
        /// The table the value was meant for.
        table: &'static str,
        /// The account the record belongs to.
        account_id: String,
        /// The offending field (a feature name for feature values).
        field: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Signals named accounts the store does not hold; nothing of the batch
    /// was written.
    #[error("cannot store signals: no stored account {}", quoted(account_ids))]
    UnknownAccounts {
        /// The accounts that were missing when checked after the failed
        /// write, sorted; never empty.
        account_ids: Vec<String>,
    },
    /// A write transaction failed and was rolled back.
    #[error("cannot write {rows} row(s) to {table}")]
    Write {
        /// The table being written.
        table: &'static str,
        /// Rows in the batch (after removing duplicates).
        rows: usize,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A read failed.
    #[error("cannot read {table} {scope}")]
    Read {
        /// The table being read.
        table: &'static str,
        /// Which rows, for example `for account "acme"`.
        scope: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row breaks an invariant the store keeps on write, so the
    /// database was changed behind the store's back.
    #[error("stored {table} row of account {account_id:?} is unreadable: {problem}")]
    Corrupt {
        /// The table holding the row.
        table: &'static str,
        /// The row's account.
        account_id: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Accounts named in [`StoreError::UnknownAccounts`]'s message; the field
/// holds them all.
const SHOWN_IDS: usize = 5;

fn quoted(ids: &[String]) -> String {
    let mut shown = ids
        .iter()
        .take(SHOWN_IDS)
        .map(|id| format!("{id:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN_IDS {
        shown.push_str(&format!(" and {} more", ids.len() - SHOWN_IDS));
    }
    shown
}
