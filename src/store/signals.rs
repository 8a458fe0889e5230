//! Queries on `signals`.

use std::collections::{BTreeSet, HashMap, HashSet};

use sqlx::{Row, any::AnyRow, error::ErrorKind};

use super::{
    MAX_BINDS, SignalRecord, Store, StoreError, require_finite, rows_per_statement,
    values_placeholders,
};

const SIGNALS: &str = "signals";
const SIGNAL_COLUMNS: usize = 6;

impl Store {
    /// Stores each signal unless one with its `event_id` already is, in one
    /// transaction that has committed when this returns. Returns, per input,
    /// whether it was newly stored: a resent event gives `false`, and so does
    /// every repeat of an id within `signals` after its first occurrence
    /// (whose content is the one kept).
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidValue`] for a non-finite value, before anything
    /// is written; [`StoreError::UnknownAccounts`] if a signal names an
    /// account that is not stored (callers should check first; the database
    /// enforces it anyway); [`StoreError::Write`] if the transaction fails
    /// otherwise. On any error none of the batch is stored.
    #[tracing::instrument(skip_all, fields(backend = %self.backend, signals = signals.len()))]
    pub async fn insert_signals(&self, signals: &[SignalRecord]) -> Result<Vec<bool>, StoreError> {
        for signal in signals {
            require_finite(SIGNALS, &signal.account_id, "value", signal.value)?;
        }
        let mut first_at: HashMap<&str, usize> = HashMap::with_capacity(signals.len());
        for (index, signal) in signals.iter().enumerate() {
            first_at.entry(signal.event_id.as_str()).or_insert(index);
        }
        let mut batch: Vec<&SignalRecord> =
            first_at.values().map(|&index| &signals[index]).collect();
        // One insertion order for every writer, so concurrent batches that
        // share event ids cannot deadlock on PostgreSQL's index locks.
        batch.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
        if batch.is_empty() {
            return Ok(Vec::new());
        }

        let inserted = match self.write_signals(&batch).await {
            Ok(inserted) => inserted,
            Err(error) => return Err(self.explain_failed_write(&batch, error).await),
        };

        tracing::debug!(
            offered = signals.len(),
            stored = inserted.len(),
            "inserted signals"
        );
        Ok(signals
            .iter()
            .enumerate()
            .map(|(index, signal)| {
                first_at.get(signal.event_id.as_str()) == Some(&index)
                    && inserted.contains(signal.event_id.as_str())
            })
            .collect())
    }

    /// Every signal that occurred at or after `since_micros`, ordered by
    /// account id (bytewise), then time, then event id.
    ///
    /// # Errors
    ///
    /// [`StoreError::Read`] if the query fails.
    #[tracing::instrument(skip_all, fields(backend = %self.backend, since_micros))]
    pub async fn load_signals_since(
        &self,
        since_micros: i64,
    ) -> Result<Vec<SignalRecord>, StoreError> {
        let read_failed = |source: sqlx::Error| StoreError::Read {
            table: SIGNALS,
            scope: format!("that occurred at or after {since_micros} µs"),
            source,
        };
        let sql = format!(
            "SELECT event_id, account_id, kind, value, occurred_at, received_at \
             FROM signals WHERE occurred_at >= $1 \
             ORDER BY account_id {order}, occurred_at, event_id {order}",
            order = self.backend.bytewise()
        );
        let rows = sqlx::query(&sql)
            .bind(since_micros)
            .fetch_all(&self.pool)
            .await
            .map_err(read_failed)?;

        let signals = rows
            .iter()
            .map(signal)
            .collect::<Result<Vec<_>, _>>()
            .map_err(read_failed)?;
        tracing::debug!(signals = signals.len(), "loaded signals");
        Ok(signals)
    }

    /// Inserts `batch` (distinct event ids) and returns the ids that were
    /// new.
    async fn write_signals(&self, batch: &[&SignalRecord]) -> Result<HashSet<String>, sqlx::Error> {
        let mut inserted = HashSet::with_capacity(batch.len());
        let mut tx = self.begin_write().await?;
        for chunk in batch.chunks(rows_per_statement(SIGNAL_COLUMNS)) {
            let sql = format!(
                "INSERT INTO signals \
                 (event_id, account_id, kind, value, occurred_at, received_at) VALUES {} \
                 ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                values_placeholders(self.backend, chunk.len(), SIGNAL_COLUMNS)
            );
            let mut query = sqlx::query(&sql);
            for signal in chunk {
                query = query
                    .bind(signal.event_id.as_str())
                    .bind(signal.account_id.as_str())
                    .bind(signal.kind.as_str())
                    .bind(signal.value)
                    .bind(signal.occurred_at_micros)
                    .bind(signal.received_at_micros);
            }
            for row in query.fetch_all(&mut *tx).await? {
                inserted.insert(row.try_get(0)?);
            }
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Turns a failed signal write into an error naming the missing accounts
    /// when a foreign key was violated. The write has been rolled back, so
    /// this looks the batch's accounts up afresh; if that fails or finds
    /// them all, the original error is kept.
    async fn explain_failed_write(
        &self,
        batch: &[&SignalRecord],
        source: sqlx::Error,
    ) -> StoreError {
        let write_failed = |source: sqlx::Error| StoreError::Write {
            table: SIGNALS,
            rows: batch.len(),
            source,
        };
        let violated_foreign_key = source
            .as_database_error()
            .is_some_and(|error| error.kind() == ErrorKind::ForeignKeyViolation);
        if !violated_foreign_key {
            return write_failed(source);
        }

        let named: BTreeSet<&str> = batch
            .iter()
            .map(|signal| signal.account_id.as_str())
            .collect();
        let named: Vec<&str> = named.into_iter().collect();
        let mut stored: HashSet<String> = HashSet::with_capacity(named.len());
        for chunk in named.chunks(MAX_BINDS) {
            let sql = format!(
                "SELECT account_id FROM accounts WHERE account_id IN {}",
                values_placeholders(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query_scalar(&sql);
            for account_id in chunk {
                query = query.bind(*account_id);
            }
            match query.fetch_all(&self.pool).await {
                Ok(found) => stored.extend(found),
                Err(_) => return write_failed(source),
            }
        }
        let missing: Vec<String> = named
            .into_iter()
            .filter(|id| !stored.contains(*id))
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            // Created since the failed write: report the violation as it was.
            return write_failed(source);
        }
        StoreError::UnknownAccounts {
            account_ids: missing,
        }
    }
}

fn signal(row: &AnyRow) -> Result<SignalRecord, sqlx::Error> {
    Ok(SignalRecord {
        event_id: row.try_get("event_id")?,
        account_id: row.try_get("account_id")?,
        kind: row.try_get("kind")?,
        value: row.try_get("value")?,
        occurred_at_micros: row.try_get("occurred_at")?,
        received_at_micros: row.try_get("received_at")?,
    })
}
