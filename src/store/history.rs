//! Queries on `score_history`.

use std::collections::HashMap;

use serde::de::IgnoredAny;
use sqlx::{Row, any::AnyRow};

use tokio_stream::StreamExt;

use super::{
    HistoryRecord, LatestScore, Store, StoreError, require_finite, rows_per_statement,
    values_placeholders,
};

const HISTORY: &str = "score_history";
const HISTORY_COLUMNS: usize = 7;
const SELECT_COLUMNS: &str = "account_id, model_version, scored_at, churn_probability, \
                              health_score, band, top_attributions";

impl Store {
    /// Appends score-history rows in one transaction that has committed when
    /// this returns. A row whose account, `scored_at` and model version are
    /// already stored is skipped, the first write standing, so a retried
    /// append is harmless.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidValue`] for a non-finite probability or score or
    /// attributions that are not JSON, before anything is written;
    /// [`StoreError::Write`] if the transaction fails, in which case none of
    /// the batch is stored.
    #[tracing::instrument(skip_all, fields(backend = %self.backend, entries = entries.len()))]
    pub async fn append_history(&self, entries: &[HistoryRecord]) -> Result<(), StoreError> {
        for entry in entries {
            validate(entry)?;
        }
        let mut batch: Vec<&HistoryRecord> = entries.iter().collect();
        // One insertion order for every writer, so concurrent appends of the
        // same keys cannot deadlock on PostgreSQL's index locks.
        batch.sort_unstable_by(|a, b| {
            (&a.account_id, a.scored_at_micros, &a.model_version).cmp(&(
                &b.account_id,
                b.scored_at_micros,
                &b.model_version,
            ))
        });
        if batch.is_empty() {
            return Ok(());
        }

        let write_failed = |source: sqlx::Error| StoreError::Write {
            table: HISTORY,
            rows: batch.len(),
            source,
        };
        let mut tx = self.begin_write().await.map_err(write_failed)?;
        for chunk in batch.chunks(rows_per_statement(HISTORY_COLUMNS)) {
            let sql = format!(
                "INSERT INTO score_history ({SELECT_COLUMNS}) VALUES {} \
                 ON CONFLICT (account_id, scored_at, model_version) DO NOTHING",
                values_placeholders(self.backend, chunk.len(), HISTORY_COLUMNS)
            );
            let mut query = sqlx::query(&sql);
            for entry in chunk {
                query = query
                    .bind(entry.account_id.as_str())
                    .bind(entry.model_version.as_str())
                    .bind(entry.scored_at_micros)
                    .bind(entry.churn_probability)
                    .bind(entry.health_score)
                    .bind(entry.band.as_str())
                    .bind(entry.top_attributions.as_str());
            }
            query.execute(&mut *tx).await.map_err(write_failed)?;
        }
        tx.commit().await.map_err(write_failed)?;

        tracing::debug!(entries = batch.len(), "appended score history");
        Ok(())
    }

    /// One account's history with `scored_at` in `[from_micros, to_micros)`,
    /// oldest first: the newest `limit` rows if there are more. Rows scored
    /// at the same instant by different models are ordered by model version.
    ///
    /// # Errors
    ///
    /// [`StoreError::Read`] if the query fails.
    #[tracing::instrument(
        skip_all,
        fields(backend = %self.backend, account_id, from_micros, to_micros, limit)
    )]
    pub async fn history(
        &self,
        account_id: &str,
        from_micros: i64,
        to_micros: i64,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let read_failed = |source: sqlx::Error| StoreError::Read {
            table: HISTORY,
            scope: format!("for account {account_id:?} scored in [{from_micros}, {to_micros}) µs"),
            source,
        };
        let sql = format!(
            "SELECT {SELECT_COLUMNS} FROM score_history \
             WHERE account_id = $1 AND scored_at >= $2 AND scored_at < $3 \
             ORDER BY scored_at DESC, model_version {order} DESC LIMIT $4",
            order = self.backend.bytewise()
        );
        let rows = sqlx::query(&sql)
            .bind(account_id)
            .bind(from_micros)
            .bind(to_micros)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(read_failed)?;

        let mut entries = rows
            .iter()
            .map(history_record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_failed)?;
        entries.reverse();
        tracing::debug!(entries = entries.len(), "read score history");
        Ok(entries)
    }

    /// For every account with history scored before `before_micros`, its
    /// newest such row: the baseline for "change in health since". If
    /// several models scored an account at that same instant, the row whose
    /// model version sorts last (bytewise) is chosen.
    ///
    /// # Errors
    ///
    /// [`StoreError::Read`] if the query fails.
    #[tracing::instrument(skip_all, fields(backend = %self.backend, before_micros))]
    pub async fn latest_history_before(
        &self,
        before_micros: i64,
    ) -> Result<HashMap<String, LatestScore>, StoreError> {
        let read_failed = |source: sqlx::Error| StoreError::Read {
            table: HISTORY,
            scope: format!("newest per account scored before {before_micros} µs"),
            source,
        };
        // Only what the callers use, streamed: at start-up this reads one
        // row per stored account.
        let sql = format!(
            "SELECT account_id, model_version, scored_at, health_score FROM (\
                 SELECT account_id, model_version, scored_at, health_score, ROW_NUMBER() OVER (\
                     PARTITION BY account_id \
                     ORDER BY scored_at DESC, model_version {order} DESC\
                 ) AS newest \
                 FROM score_history WHERE scored_at < $1\
             ) ranked WHERE newest = 1",
            order = self.backend.bytewise()
        );
        let mut rows = sqlx::query(&sql).bind(before_micros).fetch(&self.pool);
        let mut latest = HashMap::new();
        while let Some(row) = rows.next().await {
            let row = row.map_err(read_failed)?;
            let score = LatestScore {
                model_version: row.try_get("model_version").map_err(read_failed)?,
                scored_at_micros: row.try_get("scored_at").map_err(read_failed)?,
                health_score: row.try_get("health_score").map_err(read_failed)?,
            };
            latest.insert(row.try_get("account_id").map_err(read_failed)?, score);
        }
        tracing::debug!(accounts = latest.len(), "read latest score history");
        Ok(latest)
    }
}

fn history_record(row: &AnyRow) -> Result<HistoryRecord, sqlx::Error> {
    Ok(HistoryRecord {
        account_id: row.try_get("account_id")?,
        model_version: row.try_get("model_version")?,
        scored_at_micros: row.try_get("scored_at")?,
        churn_probability: row.try_get("churn_probability")?,
        health_score: row.try_get("health_score")?,
        band: row.try_get("band")?,
        top_attributions: row.try_get("top_attributions")?,
    })
}

fn validate(entry: &HistoryRecord) -> Result<(), StoreError> {
    let id = entry.account_id.as_str();
    require_finite(HISTORY, id, "churn_probability", entry.churn_probability)?;
    require_finite(HISTORY, id, "health_score", entry.health_score)?;
    if serde_json::from_str::<IgnoredAny>(&entry.top_attributions).is_err() {
        return Err(StoreError::InvalidValue {
            table: HISTORY,
            account_id: id.to_owned(),
            field: "top_attributions".to_owned(),
            problem: "is not JSON text",
        });
    }
    Ok(())
}
