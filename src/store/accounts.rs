//! Queries on `accounts` and `account_features`.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use sqlx::{AnyConnection, Row, any::AnyRow};
use tokio_stream::StreamExt;

use super::{
    AccountRecord, Backend, MAX_BINDS, Store, StoreError, StoredValue, require_finite,
    rows_per_statement, values_placeholders,
};

const ACCOUNTS: &str = "accounts";
const FEATURES: &str = "account_features";
const ACCOUNT_COLUMNS: usize = 8;
const FEATURE_COLUMNS: usize = 3;

impl Store {
    /// Inserts or updates each account's profile and replaces its whole set
    /// of feature values, in one transaction that has committed when this
    /// returns. Writing the same records again changes nothing. If an id
    /// appears more than once, its last record wins.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidValue`] for a non-finite number or a renewal
    /// date that is not `YYYY-MM-DD`, before anything is written;
    /// [`StoreError::Write`] if the transaction fails, in which case none of
    /// the batch is stored.
    #[tracing::instrument(skip_all, fields(backend = %self.backend, accounts = accounts.len()))]
    pub async fn upsert_accounts(&self, accounts: &[AccountRecord]) -> Result<(), StoreError> {
        for account in accounts {
            validate(account)?;
        }
        // Keyed by id, so a later record replaces an earlier one; the sorted
        // order also gives every writer the same row-lock order, so
        // concurrent upserts on PostgreSQL cannot deadlock.
        let latest: BTreeMap<&str, &AccountRecord> = accounts
            .iter()
            .map(|account| (account.account_id.as_str(), account))
            .collect();
        let batch: Vec<&AccountRecord> = latest.into_values().collect();
        if batch.is_empty() {
            return Ok(());
        }

        let features: Vec<FeatureRow<'_>> = batch
            .iter()
            .flat_map(|account| {
                let id = account.account_id.as_str();
                account
                    .features
                    .iter()
                    .map(move |(name, value)| (id, name.as_str(), value))
            })
            .collect();
        let accounts_failed = |source: sqlx::Error| StoreError::Write {
            table: ACCOUNTS,
            rows: batch.len(),
            source,
        };
        let features_failed = |source: sqlx::Error| StoreError::Write {
            table: FEATURES,
            rows: features.len(),
            source,
        };

        let mut tx = self.begin_write().await.map_err(accounts_failed)?;
        upsert_profiles(&mut tx, self.backend, &batch)
            .await
            .map_err(accounts_failed)?;
        replace_features(&mut tx, self.backend, &batch, &features)
            .await
            .map_err(features_failed)?;
        tx.commit().await.map_err(accounts_failed)?;

        tracing::debug!(
            accounts = batch.len(),
            features = features.len(),
            "upserted accounts"
        );
        Ok(())
    }

    /// Every account with its current feature values, ordered by id
    /// (bytewise, as Rust orders `str`). Both scans run in one read
    /// transaction (REPEATABLE READ on PostgreSQL, a WAL snapshot on
    /// SQLite), so the result is a consistent snapshot.
    ///
    /// # Errors
    ///
    /// [`StoreError::Read`] if the query fails, [`StoreError::Corrupt`] if a
    /// stored feature row has no single value (only possible if the database
    /// was edited outside the store).
    #[tracing::instrument(skip_all, fields(backend = %self.backend))]
    pub async fn load_accounts(&self) -> Result<Vec<AccountRecord>, StoreError> {
        let read_failed = |source: sqlx::Error| StoreError::Read {
            table: ACCOUNTS,
            scope: "(all, with features)".to_owned(),
            source,
        };
        // Two ordered scans merged by id, streamed: one row per account and
        // one per feature value, never a joined row repeating the profile
        // per feature, and never every row in memory at once.
        let order = self.backend.bytewise();
        let mut tx = self.pool.begin().await.map_err(read_failed)?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await
                .map_err(read_failed)?;
        }
        let profiles_sql = format!(
            "SELECT account_id, name, segment, region, plan, annual_contract_value, \
             renewal_date, updated_at FROM accounts ORDER BY account_id {order}"
        );
        let mut accounts: Vec<AccountRecord> = Vec::new();
        let mut profiles = sqlx::query(&profiles_sql).fetch(&mut *tx);
        while let Some(row) = profiles.next().await {
            let row = row.map_err(read_failed)?;
            let account_id: String = row.try_get("account_id").map_err(read_failed)?;
            accounts.push(profile(&row, account_id).map_err(read_failed)?);
        }
        drop(profiles);

        // Each account's feature values come aggregated into one JSON
        // array of [feature, number as text, text, bool] per row: a row
        // crossing the driver costs microseconds, a value in JSON
        // nanoseconds. Numbers travel as text printed to round-trip exactly
        // (SQLite's own JSON rounds them to 15 digits).
        let features_sql = match self.backend {
            Backend::Sqlite => format!(
                "SELECT account_id, json_group_array(json_array(feature, \
                 CASE WHEN number_value IS NULL THEN NULL ELSE printf('%!.17g', number_value) END, \
                 text_value, bool_value)) FROM account_features \
                 GROUP BY account_id ORDER BY account_id {order}"
            ),
            Backend::Postgres => format!(
                "SELECT account_id, json_agg(json_build_array(feature, number_value::text, \
                 text_value, bool_value))::text FROM account_features \
                 GROUP BY account_id ORDER BY account_id {order}"
            ),
        };
        let mut features = sqlx::query(&features_sql).fetch(&mut *tx);
        let mut next = accounts.iter_mut();
        let mut current = next.next();
        while let Some(row) = features.next().await {
            let row = row.map_err(read_failed)?;
            let account_id: String = row.try_get(0).map_err(read_failed)?;
            // Both scans are in the same byte order, so the owner of these
            // feature rows is the current account or a later one.
            while current
                .as_ref()
                .is_some_and(|a| a.account_id.as_bytes() < account_id.as_bytes())
            {
                current = next.next();
            }
            let Some(account) = current.as_mut().filter(|a| a.account_id == account_id) else {
                return Err(StoreError::Corrupt {
                    table: FEATURES,
                    account_id,
                    problem: "feature values of an account that is not stored".to_owned(),
                });
            };
            let json: String = row.try_get(1).map_err(read_failed)?;
            type Cell = (String, Option<String>, Option<String>, Option<i64>);
            let cells: Vec<Cell> =
                serde_json::from_str(&json).map_err(|error| StoreError::Corrupt {
                    table: FEATURES,
                    account_id: account.account_id.clone(),
                    problem: format!("feature values do not decode: {error}"),
                })?;
            for (feature, number, text, flag) in cells {
                let number = number
                    .map(|n| {
                        n.parse::<f64>().map_err(|_| StoreError::Corrupt {
                            table: FEATURES,
                            account_id: account.account_id.clone(),
                            problem: format!("feature {feature:?} has the number {n:?}"),
                        })
                    })
                    .transpose()?;
                let value = stored_value(&account.account_id, &feature, number, text, flag)?;
                account.features.insert(feature, value);
            }
        }
        drop(features);
        tx.commit().await.map_err(read_failed)?;

        tracing::debug!(accounts = accounts.len(), "loaded accounts");
        Ok(accounts)
    }
}

/// Inserts or updates the profile columns of `batch`.
async fn upsert_profiles(
    conn: &mut AnyConnection,
    backend: Backend,
    batch: &[&AccountRecord],
) -> Result<(), sqlx::Error> {
    for chunk in batch.chunks(rows_per_statement(ACCOUNT_COLUMNS)) {
        let sql = format!(
            "INSERT INTO accounts (account_id, name, segment, region, plan, \
             annual_contract_value, renewal_date, updated_at) VALUES {} \
             ON CONFLICT (account_id) DO UPDATE SET name = excluded.name, \
             segment = excluded.segment, region = excluded.region, plan = excluded.plan, \
             annual_contract_value = excluded.annual_contract_value, \
             renewal_date = excluded.renewal_date, updated_at = excluded.updated_at",
            values_placeholders(backend, chunk.len(), ACCOUNT_COLUMNS)
        );
        let mut query = sqlx::query(&sql);
        for account in chunk {
            query = query
                .bind(account.account_id.as_str())
                .bind(account.name.as_str())
                .bind(account.segment.as_str())
                .bind(account.region.as_str())
                .bind(account.plan.as_str())
                .bind(account.annual_contract_value)
                .bind(account.renewal_date.as_deref())
                .bind(account.updated_at_micros);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes every stored feature value of `batch`'s accounts, then inserts
/// `features`.
async fn replace_features(
    conn: &mut AnyConnection,
    backend: Backend,
    batch: &[&AccountRecord],
    features: &[FeatureRow<'_>],
) -> Result<(), sqlx::Error> {
    for chunk in batch.chunks(MAX_BINDS) {
        let sql = format!(
            "DELETE FROM account_features WHERE account_id IN {}",
            values_placeholders(backend, 1, chunk.len())
        );
        let mut query = sqlx::query(&sql);
        for account in chunk {
            query = query.bind(account.account_id.as_str());
        }
        query.execute(&mut *conn).await?;
    }
    for (column, rows) in by_kind(features) {
        for chunk in rows.chunks(rows_per_statement(FEATURE_COLUMNS)) {
            let sql = format!(
                "INSERT INTO account_features (account_id, feature, {column}) VALUES {}",
                values_placeholders(backend, chunk.len(), FEATURE_COLUMNS)
            );
            let mut query = sqlx::query(&sql);
            for &(account_id, feature, value) in chunk {
                query = query.bind(account_id).bind(feature);
                query = match value {
                    StoredValue::Number(number) => query.bind(*number),
                    StoredValue::Text(text) => query.bind(text.as_str()),
                    StoredValue::Bool(flag) => query.bind(i64::from(*flag)),
                };
            }
            query.execute(&mut *conn).await?;
        }
    }
    Ok(())
}

type FeatureRow<'a> = (&'a str, &'a str, &'a StoredValue);

/// Feature rows split by the column their value goes to, so every statement
/// binds a value of one type and no NULLs. A NULL `f64` cannot be bound
/// safely: sqlx 0.8's Any driver sends it to PostgreSQL as a `float4`, and a
/// cached statement first prepared that way then rejects a real `f64`
/// ("incorrect binary data format", sqlx issue #4284).
fn by_kind<'a>(features: &[FeatureRow<'a>]) -> [(&'static str, Vec<FeatureRow<'a>>); 3] {
    let mut numbers = Vec::new();
    let mut texts = Vec::new();
    let mut flags = Vec::new();
    for &row in features {
        match row.2 {
            StoredValue::Number(_) => numbers.push(row),
            StoredValue::Text(_) => texts.push(row),
            StoredValue::Bool(_) => flags.push(row),
        }
    }
    [
        ("number_value", numbers),
        ("text_value", texts),
        ("bool_value", flags),
    ]
}

/// The record's profile columns, with no features yet.
fn profile(row: &AnyRow, account_id: String) -> Result<AccountRecord, sqlx::Error> {
    Ok(AccountRecord {
        account_id,
        name: row.try_get("name")?,
        segment: row.try_get("segment")?,
        region: row.try_get("region")?,
        plan: row.try_get("plan")?,
        annual_contract_value: row.try_get("annual_contract_value")?,
        renewal_date: row.try_get("renewal_date")?,
        features: BTreeMap::new(),
        updated_at_micros: row.try_get("updated_at")?,
    })
}

/// A feature row's value from its three nullable columns, exactly one of
/// which the table's CHECK constraint lets be set.
fn stored_value(
    account_id: &str,
    feature: &str,
    number: Option<f64>,
    text: Option<String>,
    flag: Option<i64>,
) -> Result<StoredValue, StoreError> {
    match (number, text, flag) {
        (Some(number), None, None) => Ok(StoredValue::Number(number)),
        (None, Some(text), None) => Ok(StoredValue::Text(text)),
        (None, None, Some(0)) => Ok(StoredValue::Bool(false)),
        (None, None, Some(1)) => Ok(StoredValue::Bool(true)),
        (number, text, flag) => Err(StoreError::Corrupt {
            table: FEATURES,
            account_id: account_id.to_owned(),
            problem: format!(
                "feature {feature:?} has number {}, text {}, bool {flag:?}; \
                 expected exactly one, bool 0 or 1",
                if number.is_some() { "set" } else { "unset" },
                if text.is_some() { "set" } else { "unset" },
            ),
        }),
    }
}

fn validate(account: &AccountRecord) -> Result<(), StoreError> {
    let id = account.account_id.as_str();
    require_finite(
        ACCOUNTS,
        id,
        "annual_contract_value",
        account.annual_contract_value,
    )?;
    if let Some(date) = &account.renewal_date {
        // chrono accepts unpadded fields; the length pins YYYY-MM-DD so the
        // stored text also sorts as a date.
        if date.len() != 10 || NaiveDate::parse_from_str(date, "%Y-%m-%d").is_err() {
            return Err(StoreError::InvalidValue {
                table: ACCOUNTS,
                account_id: id.to_owned(),
                field: "renewal_date".to_owned(),
                problem: "is not a calendar date written YYYY-MM-DD",
            });
        }
    }
    for (feature, value) in &account.features {
        if let StoredValue::Number(number) = value {
            require_finite(FEATURES, id, feature, *number)?;
        }
    }
    Ok(())
}
