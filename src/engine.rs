//! The account engine: the model, the store and the in-memory registry
//! together. Writes go to the store first and reach the registry only after
//! they are committed; reads for routing come from the registry alone.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::{
    accounts::{self, AccountState, Profile, Registry, Tier},
    scoring::{
        Band, MAX_ID_BYTES, MAX_TEXT_BYTES, Model, ScoreError, Scored, check_text, health_score,
        shown, sigmoid,
    },
    signals::{DAY_MICROS, EARLIEST_SIGNAL_MICROS, Event, SignalKind},
    store::{AccountRecord, HistoryRecord, SignalRecord, Store, StoreError, StoredValue},
    template::Category,
};

/// A new history row is written when health moves at least this much
/// (points) from the last recorded value, or the model changes.
pub const HISTORY_MIN_CHANGE: f64 = 0.1;

/// How far in the future a signal's time may lie (clock skew allowance).
pub const MAX_FUTURE_MICROS: i64 = 5 * 60 * 1_000_000;

/// Errors of engine operations that fail as a whole.
#[derive(Debug, Error)]
pub enum EngineError {
    /// No such account.
    #[error("account {account_id:?} is not stored")]
    NotFound {
        /// The id asked for.
        account_id: String,
    },
    /// The account is stored but lacks what the model needs.
    #[error("account {account_id:?} cannot be scored: {error}")]
    Unscorable {
        /// The account.
        account_id: String,
        /// Why.
        error: ScoreError,
    },
    /// A request argument is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// A replacement model cannot serve the stored accounts.
    #[error("{0}")]
    Incompatible(String),
    /// The store failed; the detail is logged, not sent.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One signal as a client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalInput {
    /// Event id for deduplication.
    pub event_id: String,
    /// The account.
    pub account_id: String,
    /// The kind, if recognised.
    pub kind: Option<SignalKind>,
    /// The value.
    pub value: f64,
    /// When it happened (µs since the epoch), if given and valid.
    pub occurred_at: Option<i64>,
}

/// Why a signal was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SignalRejection {
    /// No event id.
    #[error("event_id is empty")]
    MissingEventId,
    /// The event id is too long or holds control characters.
    #[error("event_id {0}")]
    InvalidEventId(String),
    /// The account is not stored.
    #[error("account {} is not stored; upsert it first", shown(.0))]
    UnknownAccount(String),
    /// Kind unset or unknown.
    #[error("kind is unset or unknown")]
    UnknownKind,
    /// Bad value.
    #[error("{0}")]
    InvalidValue(String),
    /// Bad time.
    #[error("{0}")]
    InvalidTime(String),
}

/// The outcome of one batch of signals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignalOutcome {
    /// Newly stored.
    pub accepted: u64,
    /// Already stored, or repeated within the batch.
    pub duplicates: u64,
    /// Rejected: position within the batch and reason.
    pub rejected: Vec<(usize, SignalRejection)>,
}

/// An account's current health with its trend.
#[derive(Debug, Clone)]
pub struct AccountHealth {
    /// The model that scored it.
    pub model: Arc<Model>,
    /// The fresh score.
    pub scored: Scored,
    /// The profile.
    pub profile: Profile,
    /// Last change to profile, features or signals (µs).
    pub updated_at: i64,
    /// Health now minus health 7 days ago.
    pub change_7d: Option<f64>,
    /// Health now minus health 30 days ago.
    pub change_30d: Option<f64>,
    /// Churn probability times annual value.
    pub revenue_at_risk: f64,
}

/// A routing answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityAnswer {
    /// The requested id.
    pub account_id: String,
    /// 0-100.
    pub priority: f64,
    /// Tier.
    pub tier: Tier,
    /// Churn probability (the average account's when unscored or unknown).
    pub churn_probability: f64,
    /// Band, when scored.
    pub band: Option<Band>,
    /// Revenue at risk.
    pub revenue_at_risk: f64,
    /// Whether the account is stored.
    pub known: bool,
}

/// Orders of [`Engine::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Order {
    /// Revenue at risk, highest first.
    RevenueAtRisk,
    /// Health, lowest first.
    HealthAscending,
    /// Health, highest first.
    HealthDescending,
}

/// Filters, order and page of [`Engine::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Bands to keep (empty: all).
    pub bands: Vec<Band>,
    /// Segment to keep.
    pub segment: Option<String>,
    /// Region to keep.
    pub region: Option<String>,
    /// Renewal on or after.
    pub renewal_from: Option<NaiveDate>,
    /// Renewal on or before.
    pub renewal_to: Option<NaiveDate>,
    /// Category whose health must be below a level.
    pub category_below: Option<(Category, f64)>,
    /// Order.
    pub order: Order,
    /// Page size.
    pub page_size: usize,
    /// Opaque token of the previous page.
    pub page_token: String,
}

/// One listed account.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// Id.
    pub account_id: String,
    /// Profile.
    pub profile: Profile,
    /// Score.
    pub score: accounts::CachedScore,
    /// Revenue at risk.
    pub revenue_at_risk: f64,
}

/// One page of [`Engine::list`].
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The model whose scores are listed.
    pub model: Arc<Model>,
    /// The page.
    pub accounts: Vec<Listed>,
    /// Token of the next page; empty on the last.
    pub next_page_token: String,
    /// Matching accounts over all pages.
    pub total_matching: usize,
}

/// Grouping of [`Engine::summarize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// By segment.
    Segment,
    /// By region.
    Region,
}

/// One group of [`Engine::summarize`].
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentRow {
    /// Segment or region.
    pub key: String,
    /// Scored accounts.
    pub accounts: u64,
    /// Mean health.
    pub mean_health: f64,
    /// Share AT_RISK.
    pub share_at_risk: f64,
    /// Sum of revenue at risk.
    pub revenue_at_risk: f64,
    /// Mean change in health since the requested time.
    pub mean_health_change: Option<f64>,
}

/// A stored attribution in history rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredAttribution {
    /// Feature name.
    pub feature: String,
    /// Its category.
    pub category: Category,
    /// Contribution to the churn log-odds.
    pub contribution: f64,
}

#[derive(Serialize, Deserialize)]
struct PageCursor {
    order: Order,
    /// The sort key's bits: serde_json's default float parsing can be one
    /// ulp off, which would repeat the last account of a page on the next.
    key_bits: u64,
    id: String,
    filters: String,
}

/// Where a server's engine appears once the account store is loaded.
pub type EngineSlot = std::sync::OnceLock<Arc<Engine>>;

/// The model, store and registry of a running server.
#[derive(Debug)]
pub struct Engine {
    store: Store,
    /// The model and the scores it gave, replaced together.
    live: RwLock<Live>,
    /// Serialises writes (and model replacement) so the registry sees
    /// commits in commit order.
    writes: tokio::sync::Mutex<()>,
}

/// A model with the registry it scored.
#[derive(Debug)]
struct Live {
    model: Arc<Model>,
    registry: Registry,
    lookback_days: u32,
}

/// Stored accounts counted by band.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandMix {
    /// HEALTHY.
    pub healthy: usize,
    /// WATCH.
    pub watch: usize,
    /// AT_RISK.
    pub at_risk: usize,
    /// Lacking what the model needs.
    pub unscored: usize,
}

/// What replacing the model did.
#[derive(Debug, Clone, PartialEq)]
pub struct Replacement {
    /// The version served before.
    pub previous_version: String,
    /// The version served now.
    pub version: String,
    /// Accounts re-scored with the new model.
    pub accounts_rescored: usize,
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Engine {
    /// Loads every stored account and its recent signals, scores them with
    /// `model`, and records a history row for each account whose last
    /// recorded score came from another model (or that has none).
    ///
    /// # Errors
    /// [`EngineError::Store`] when loading fails.
    pub async fn open(model: Arc<Model>, store: Store) -> Result<Self, EngineError> {
        let (live, history) = Self::load(model, &store).await?;
        store.append_history(&history).await?;
        Ok(Self {
            store,
            live: RwLock::new(live),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// Builds the registry of every stored account scored by `model`, with
    /// the history rows due for accounts last recorded under another model.
    async fn load(
        model: Arc<Model>,
        store: &Store,
    ) -> Result<(Live, Vec<HistoryRecord>), EngineError> {
        let now = now_micros();
        let lookback_days = accounts::lookback_days(&model);
        let records = store.load_accounts().await?;
        let signals = store
            .load_signals_since(now - i64::from(lookback_days) * DAY_MICROS)
            .await?;
        let latest = store.latest_history_before(i64::MAX).await?;

        let mut registry = Registry::default();
        for record in records {
            registry.upsert(&model, record, now);
        }
        // Per account: its events, and when the newest of them was
        // received, which is when its features last changed.
        let mut by_account: HashMap<&str, (Vec<Event>, i64)> = HashMap::new();
        for s in &signals {
            if let Ok(kind) = s.kind.parse() {
                let (events, received_at) = by_account.entry(&s.account_id).or_default();
                events.push(Event {
                    at: s.occurred_at_micros,
                    kind,
                    value: s.value,
                });
                *received_at = (*received_at).max(s.received_at_micros);
            }
        }
        for (id, (events, received_at)) in by_account {
            registry.add_events(&model, id, events, received_at, lookback_days, now);
        }
        registry.refresh_reference(&model);

        let mut history = Vec::new();
        for (id, record) in &latest {
            registry.set_recorded(id, record.health_score);
        }
        for (id, state) in registry.iter() {
            let Ok(score) = &state.score else { continue };
            let stale = latest
                .get(id)
                .is_none_or(|h| *h.model_version != *score.model_version);
            if stale {
                history.push(history_row(&model, id, score, now));
            }
        }
        for row in &history {
            registry.set_recorded(&row.account_id, row.health_score);
        }
        tracing::info!(
            accounts = registry.len(),
            signals = signals.len(),
            rescored_for_model = history.len(),
            model_version = model.version(),
            "account store loaded"
        );
        let live = Live {
            model,
            registry,
            lookback_days,
        };
        Ok((live, history))
    }

    /// Replaces the serving model: every stored account is re-scored with
    /// `model` from the store, history records the new version, and the new
    /// model and scores are swapped in together. Requests already running
    /// finish with the model they started with.
    ///
    /// # Errors
    /// [`EngineError::Incompatible`] when accounts the current model scores
    /// could not be scored by the new one (nothing changes then), or a
    /// store failure.
    pub async fn replace_model(&self, model: Arc<Model>) -> Result<Replacement, EngineError> {
        let _serial = self.writes.lock().await;
        let (live, history) = Self::load(Arc::clone(&model), &self.store).await?;
        {
            let current = self.read();
            let mut lost = current
                .registry
                .iter()
                .filter(|(id, state)| {
                    state.score.is_ok() && live.registry.get(id).is_none_or(|s| s.score.is_err())
                })
                .map(|(id, _)| id);
            if let Some(example) = lost.next() {
                let reason = match live.registry.get(example).map(|s| &s.score) {
                    Some(Err(error)) => error.to_string(),
                    _ => "it is missing".to_owned(),
                };
                return Err(EngineError::Incompatible(format!(
                    "model {} cannot score {} account(s) that {} scores, such as {example:?}: {reason}",
                    model.version(),
                    lost.count() + 1,
                    current.model.version(),
                )));
            }
        }
        self.store.append_history(&history).await?;
        let accounts_rescored = live.registry.len();
        let previous = std::mem::replace(&mut *self.write(), live);
        Ok(Replacement {
            previous_version: previous.model.version().to_owned(),
            version: model.version().to_owned(),
            accounts_rescored,
        })
    }

    /// The serving model.
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(&self.read().model)
    }

    /// Waits for the write in progress, if any, to commit, then closes the
    /// store; writes after this fail with a store error.
    pub async fn close(&self) {
        let _serial = self.writes.lock().await;
        self.store.close().await;
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn read(&self) -> RwLockReadGuard<'_, Live> {
        // A panic while holding the lock leaves a registry that is still
        // consistent per account (updates replace whole entries), so a
        // poisoned lock is safe to keep using.
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of accounts held.
    pub fn account_count(&self) -> usize {
        self.read().registry.len()
    }

    /// Stored accounts by their current band.
    pub fn band_mix(&self) -> BandMix {
        let live = self.read();
        let mut mix = BandMix::default();
        for (_, state) in live.registry.iter() {
            match state.score.as_ref().map(|s| s.band) {
                Ok(Band::Healthy) => mix.healthy += 1,
                Ok(Band::Watch) => mix.watch += 1,
                Ok(Band::AtRisk) => mix.at_risk += 1,
                Err(_) => mix.unscored += 1,
            }
        }
        mix
    }

    /// Checks one upsert against the model: id, profile, and every feature
    /// value as scoring would read it.
    ///
    /// # Errors
    /// The [`ScoreError`] naming the field or feature at fault.
    pub fn check_upsert(&self, record: &AccountRecord) -> Result<(), ScoreError> {
        check_upsert(&self.read().model, record)
    }

    /// Stores the accounts that pass [`Engine::check_upsert`] in one
    /// transaction, then re-scores them. Returns one result per input.
    ///
    /// # Errors
    /// [`EngineError::Store`] when the commit fails; nothing is then stored.
    pub async fn upsert_accounts(
        &self,
        mut records: Vec<AccountRecord>,
    ) -> Result<Vec<Result<(), ScoreError>>, EngineError> {
        let now = now_micros();
        let mut seen = HashSet::new();
        let results: Vec<Result<(), ScoreError>> = {
            let live = self.read();
            let registry = &live.registry;
            records
                .iter_mut()
                .map(|record| {
                    if record
                        .renewal_date
                        .as_deref()
                        .is_some_and(|d| d.trim().is_empty())
                    {
                        record.renewal_date = None;
                    }
                    // As in ScoreAccounts, a repeated id is a duplicate even when
                    // its first use was refused, so it cannot overwrite what is
                    // stored for that id; an empty id is reported as missing.
                    if !record.account_id.is_empty() && !seen.insert(record.account_id.clone()) {
                        return Err(ScoreError::DuplicateAccountId {
                            account_id: record.account_id.clone(),
                        });
                    }
                    check_upsert(&live.model, record)?;
                    // Re-sending what is stored changes nothing, so it keeps the
                    // time of the last real change.
                    record.updated_at_micros = registry
                        .get(&record.account_id)
                        .filter(|state| state.holds(record))
                        .map_or(now, |state| state.updated_at);
                    Ok(())
                })
                .collect()
        };
        let good: Vec<AccountRecord> = records
            .into_iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(record, _)| record)
            .collect();
        if good.is_empty() {
            return Ok(results);
        }

        let _serial = self.writes.lock().await;
        self.store.upsert_accounts(&good).await?;
        let history = {
            let mut live = self.write();
            let Live {
                model, registry, ..
            } = &mut *live;
            let ids: Vec<String> = good.iter().map(|r| r.account_id.clone()).collect();
            for record in good {
                registry.upsert(model, record, now);
            }
            registry.refresh_reference_if_due(model);
            history_due(model, registry, ids.iter().map(String::as_str), now)
        };
        self.record_history(history).await;
        Ok(results)
    }

    /// Validates, stores and applies one batch of signals.
    ///
    /// # Errors
    /// [`EngineError::Store`] when the commit fails; nothing of the batch is
    /// then stored.
    pub async fn record_signals(
        &self,
        batch: &[SignalInput],
    ) -> Result<SignalOutcome, EngineError> {
        let now = now_micros();
        let mut outcome = SignalOutcome::default();
        let mut records = Vec::with_capacity(batch.len());
        {
            let live = self.read();
            for (i, signal) in batch.iter().enumerate() {
                match check_signal(signal, &live.registry, now) {
                    Ok(record) => records.push(record),
                    Err(reason) => outcome.rejected.push((i, reason)),
                }
            }
        }
        if records.is_empty() {
            return Ok(outcome);
        }

        let _serial = self.writes.lock().await;
        let stored = self.store.insert_signals(&records).await?;
        let mut fresh: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
        for (record, new) in records.iter().zip(&stored) {
            if *new {
                outcome.accepted += 1;
                fresh.entry(&record.account_id).or_default().push(Event {
                    at: record.occurred_at_micros,
                    kind: record
                        .kind
                        .parse()
                        .expect("kinds were checked before storing"),
                    value: record.value,
                });
            } else {
                outcome.duplicates += 1;
            }
        }
        let history = {
            let mut live = self.write();
            let Live {
                model,
                registry,
                lookback_days,
            } = &mut *live;
            for (id, events) in &fresh {
                registry.add_events(model, id, events.iter().copied(), now, *lookback_days, now);
            }
            registry.refresh_reference_if_due(model);
            history_due(model, registry, fresh.keys().copied(), now)
        };
        self.record_history(history).await;
        Ok(outcome)
    }

    async fn record_history(&self, rows: Vec<HistoryRecord>) {
        if rows.is_empty() {
            return;
        }
        if let Err(error) = self.store.append_history(&rows).await {
            // The write the history describes is committed; a lost history
            // point shows as a gap in the trend, and the next change records
            // again.
            tracing::error!(%error, rows = rows.len(), "cannot record score history");
        }
    }

    /// Re-scores every account as of now (windows slide) and records history
    /// for those whose health moved. Run periodically.
    ///
    /// # Errors
    /// [`EngineError::Store`] when history cannot be written.
    pub async fn sweep(&self) -> Result<usize, EngineError> {
        let now = now_micros();
        let _serial = self.writes.lock().await;
        let rows = {
            let mut live = self.write();
            let Live {
                model, registry, ..
            } = &mut *live;
            registry.rescore_all(model, now);
            let ids: Vec<String> = registry.iter().map(|(id, _)| id.clone()).collect();
            history_due(model, registry, ids.iter().map(String::as_str), now)
        };
        self.store.append_history(&rows).await?;
        Ok(rows.len())
    }

    /// An account's fresh score, profile and trend.
    ///
    /// # Errors
    /// [`EngineError::NotFound`], [`EngineError::Unscorable`], or a store
    /// failure reading history.
    pub async fn account_health(&self, account_id: &str) -> Result<AccountHealth, EngineError> {
        let now = now_micros();
        let (model, scored, profile, updated_at) = {
            let live = self.read();
            let state = live
                .registry
                .get(account_id)
                .ok_or_else(|| EngineError::NotFound {
                    account_id: account_id.to_owned(),
                })?;
            let mut scored = Scored::default();
            accounts::score_state(
                &live.model,
                &state.features,
                &state.events,
                now,
                &mut scored,
            )
            .map_err(|error| EngineError::Unscorable {
                account_id: account_id.to_owned(),
                error,
            })?;
            let model = Arc::clone(&live.model);
            (model, scored, state.profile.clone(), state.updated_at)
        };
        // A change is measured only against a score from the same model, so a
        // model replacement never shows up as a change in health.
        let version = model.version();
        let change = |days: i64| async move {
            let before = now - days * DAY_MICROS;
            let rows = self.store.history(account_id, i64::MIN, before, 1).await?;
            Ok::<_, EngineError>(
                rows.last()
                    .filter(|h| h.model_version == version)
                    .map(|h| scored.health_score - h.health_score),
            )
        };
        let (change_7d, change_30d) = (change(7).await?, change(30).await?);
        let revenue_at_risk = scored.churn_probability * profile.annual_contract_value;
        Ok(AccountHealth {
            model,
            scored,
            profile,
            updated_at,
            change_7d,
            change_30d,
            revenue_at_risk,
        })
    }

    /// Routing priorities from memory, one per id, in order.
    pub fn priorities(
        &self,
        ids: &[String],
        cancellation_intent: bool,
    ) -> (Arc<Model>, Vec<PriorityAnswer>) {
        let live = self.read();
        let registry = &live.registry;
        let average = sigmoid(live.model.base_value());
        let answers = ids
            .iter()
            .map(|id| match registry.get(id) {
                None => PriorityAnswer {
                    account_id: id.clone(),
                    priority: accounts::DEFAULT_PRIORITY,
                    tier: Tier::of(accounts::DEFAULT_PRIORITY),
                    churn_probability: average,
                    band: None,
                    revenue_at_risk: 0.0,
                    known: false,
                },
                Some(state) => {
                    let revenue_at_risk = state.revenue_at_risk(average);
                    let mut priority = registry.priority(revenue_at_risk);
                    let mut tier = Tier::of(priority);
                    if cancellation_intent {
                        tier = tier.raised();
                        priority = priority.max(tier.floor());
                    }
                    PriorityAnswer {
                        account_id: id.clone(),
                        priority,
                        tier,
                        churn_probability: state.churn_probability(average),
                        band: state.score.as_ref().ok().map(|s| s.band),
                        revenue_at_risk,
                        known: true,
                    }
                }
            })
            .collect();
        (Arc::clone(&live.model), answers)
    }

    /// One page of scored accounts matching `query`.
    ///
    /// # Errors
    /// [`EngineError::InvalidArgument`] for a page token that is malformed
    /// or was issued for other filters.
    pub fn list(&self, query: &ListQuery) -> Result<ListPage, EngineError> {
        let filters = filter_fingerprint(query);
        let after = decode_cursor(&query.page_token, query.order, &filters)?;
        let live = self.read();
        let (model, registry) = (&live.model, &live.registry);
        let category_slot = query
            .category_below
            .map(|(c, level)| (model.categories().iter().position(|&x| x == c), level));
        let key_of = |state: &AccountState, score: &accounts::CachedScore| match query.order {
            Order::RevenueAtRisk => -score.churn_probability * state.profile.annual_contract_value,
            Order::HealthAscending => score.health_score,
            Order::HealthDescending => -score.health_score,
        };
        let mut matching: Vec<(f64, &String, &AccountState)> = registry
            .iter()
            .filter_map(|(id, state)| {
                let score = state.score.as_ref().ok()?;
                let keep = (query.bands.is_empty() || query.bands.contains(&score.band))
                    && query
                        .segment
                        .as_ref()
                        .is_none_or(|s| &state.profile.segment == s)
                    && query
                        .region
                        .as_ref()
                        .is_none_or(|r| &state.profile.region == r)
                    && query
                        .renewal_from
                        .is_none_or(|from| state.profile.renewal_date.is_some_and(|d| d >= from))
                    && query
                        .renewal_to
                        .is_none_or(|to| state.profile.renewal_date.is_some_and(|d| d <= to))
                    && category_slot.is_none_or(|(slot, level)| {
                        slot.is_some_and(|slot| {
                            let contribution = score.category_contributions[slot];
                            health_score(sigmoid(model.base_value() + contribution)) < level
                        })
                    });
                keep.then(|| (key_of(state, score), id, state))
            })
            .collect();
        let total_matching = matching.len();
        matching.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let start = after.map_or(0, |(key, id)| {
            matching.partition_point(|(k, i, _)| {
                k.total_cmp(&key).then_with(|| i.as_str().cmp(&id)).is_le()
            })
        });
        let page: Vec<_> = matching.iter().skip(start).take(query.page_size).collect();
        let next_page_token = if start + page.len() < matching.len() {
            let (key, id, _) = page.last().expect("a non-final page is not empty");
            encode_cursor(query.order, *key, id, &filters)
        } else {
            String::new()
        };
        let accounts = page
            .into_iter()
            .map(|(_, id, state)| {
                let score = state
                    .score
                    .as_ref()
                    .expect("only scored accounts are listed")
                    .clone();
                let revenue_at_risk = score.churn_probability * state.profile.annual_contract_value;
                Listed {
                    account_id: (*id).clone(),
                    profile: state.profile.clone(),
                    score,
                    revenue_at_risk,
                }
            })
            .collect();
        Ok(ListPage {
            model: Arc::clone(model),
            accounts,
            next_page_token,
            total_matching,
        })
    }

    /// Scored accounts grouped by segment or region, largest revenue at risk
    /// first, with the change in mean health since `since` when given.
    ///
    /// # Errors
    /// A store failure reading past scores.
    pub async fn summarize(
        &self,
        by: GroupBy,
        since: Option<i64>,
    ) -> Result<Vec<SegmentRow>, EngineError> {
        let past = match since {
            Some(t) => Some(self.store.latest_history_before(t).await?),
            None => None,
        };
        #[derive(Default)]
        struct Acc {
            n: u64,
            health: f64,
            at_risk: u64,
            risk: f64,
            change: f64,
            changed: u64,
        }
        let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
        {
            let live = self.read();
            for (id, state) in live.registry.iter() {
                let Ok(score) = &state.score else { continue };
                let key = match by {
                    GroupBy::Segment => &state.profile.segment,
                    GroupBy::Region => &state.profile.region,
                };
                let acc = groups.entry(key.clone()).or_default();
                acc.n += 1;
                acc.health += score.health_score;
                acc.at_risk += u64::from(score.band == Band::AtRisk);
                acc.risk += score.churn_probability * state.profile.annual_contract_value;
                let then = past.as_ref().and_then(|p| p.get(id));
                if let Some(then) = then.filter(|h| *h.model_version == *score.model_version) {
                    acc.change += score.health_score - then.health_score;
                    acc.changed += 1;
                }
            }
        }
        let mut rows: Vec<SegmentRow> = groups
            .into_iter()
            .map(|(key, a)| SegmentRow {
                key,
                accounts: a.n,
                mean_health: a.health / a.n as f64,
                share_at_risk: a.at_risk as f64 / a.n as f64,
                revenue_at_risk: a.risk,
                mean_health_change: (a.changed > 0).then(|| a.change / a.changed as f64),
            })
            .collect();
        rows.sort_by(|a, b| b.revenue_at_risk.total_cmp(&a.revenue_at_risk));
        Ok(rows)
    }

    /// One account's recorded history.
    ///
    /// # Errors
    /// [`EngineError::NotFound`] or a store failure.
    pub async fn history(
        &self,
        account_id: &str,
        from: i64,
        to: i64,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, EngineError> {
        if !self.read().registry.contains(account_id) {
            return Err(EngineError::NotFound {
                account_id: account_id.to_owned(),
            });
        }
        Ok(self.store.history(account_id, from, to, limit).await?)
    }
}

/// History rows for the given accounts whose health moved enough since
/// the last recorded row; marks them recorded.
fn history_due<'a>(
    model: &Model,
    registry: &mut Registry,
    ids: impl Iterator<Item = &'a str>,
    now: i64,
) -> Vec<HistoryRecord> {
    let mut rows = Vec::new();
    for id in ids {
        let Some(state) = registry.get(id) else {
            continue;
        };
        let Ok(score) = &state.score else { continue };
        let moved = state
            .last_recorded_health
            .is_none_or(|h| (h - score.health_score).abs() >= HISTORY_MIN_CHANGE);
        if moved {
            rows.push(history_row(model, id, score, now));
        }
    }
    for row in &rows {
        registry.set_recorded(&row.account_id, row.health_score);
    }
    rows
}

/// Checks one upsert against `model`: id, profile, and every feature value
/// as scoring would read it.
fn check_upsert(model: &Model, record: &AccountRecord) -> Result<(), ScoreError> {
    if record.account_id.is_empty() {
        return Err(ScoreError::MissingAccountId);
    }
    check_text(&record.account_id, MAX_ID_BYTES).map_err(|problem| {
        ScoreError::InvalidAccountId {
            account_id: record.account_id.clone(),
            problem,
        }
    })?;
    for (field, text) in [
        ("profile.name", &record.name),
        ("profile.segment", &record.segment),
        ("profile.region", &record.region),
        ("profile.plan", &record.plan),
    ] {
        check_text(text, MAX_TEXT_BYTES).map_err(|problem| ScoreError::InvalidValue {
            feature: field.into(),
            problem,
        })?;
    }
    let acv = record.annual_contract_value;
    if !(acv.is_finite() && acv >= 0.0) {
        return Err(ScoreError::InvalidValue {
            feature: "profile.annual_contract_value".into(),
            problem: format!("must be a finite number of at least 0, got {acv}"),
        });
    }
    if let Some(date) = &record.renewal_date {
        accounts::parse_day(date).map_err(|problem| ScoreError::InvalidValue {
            feature: "profile.renewal_date".into(),
            problem,
        })?;
    }
    for (name, value) in &record.features {
        let index = model
            .feature_index(name)
            .ok_or_else(|| ScoreError::UnknownFeature {
                feature: name.clone(),
            })?;
        if let StoredValue::Text(text) = value {
            check_text(text, MAX_TEXT_BYTES).map_err(|problem| ScoreError::InvalidValue {
                feature: name.clone(),
                problem,
            })?;
        }
        if let Some(signal) = &model.feature(index).signal {
            return Err(ScoreError::InvalidValue {
                feature: name.clone(),
                problem: format!(
                    "this feature is derived from {} signals; send them with RecordSignals",
                    signal.kind
                ),
            });
        }
        model.check_value(index, accounts::value_of(value))?;
    }
    Ok(())
}

fn check_signal(
    signal: &SignalInput,
    registry: &Registry,
    now: i64,
) -> Result<SignalRecord, SignalRejection> {
    if signal.event_id.is_empty() {
        return Err(SignalRejection::MissingEventId);
    }
    check_text(&signal.event_id, MAX_ID_BYTES).map_err(SignalRejection::InvalidEventId)?;
    if !registry.contains(&signal.account_id) {
        return Err(SignalRejection::UnknownAccount(signal.account_id.clone()));
    }
    let kind = signal.kind.ok_or(SignalRejection::UnknownKind)?;
    kind.check_value(signal.value)
        .map_err(SignalRejection::InvalidValue)?;
    let at = signal
        .occurred_at
        .ok_or_else(|| SignalRejection::InvalidTime("occurred_at is unset or invalid".into()))?;
    if at < EARLIEST_SIGNAL_MICROS {
        return Err(SignalRejection::InvalidTime(
            "occurred_at is before 2000-01-01T00:00:00Z; is it in the wrong unit?".into(),
        ));
    }
    if at > now + MAX_FUTURE_MICROS {
        return Err(SignalRejection::InvalidTime(format!(
            "occurred_at is {:.0} s in the future; at most {} s is allowed",
            (at - now) as f64 / 1e6,
            MAX_FUTURE_MICROS / 1_000_000
        )));
    }
    Ok(SignalRecord {
        event_id: signal.event_id.clone(),
        account_id: signal.account_id.clone(),
        kind: kind.as_str().to_owned(),
        value: signal.value,
        occurred_at_micros: at,
        received_at_micros: now,
    })
}

fn history_row(
    model: &Model,
    account_id: &str,
    score: &accounts::CachedScore,
    now: i64,
) -> HistoryRecord {
    let top: Vec<StoredAttribution> = score
        .top
        .iter()
        .map(|&(i, contribution)| StoredAttribution {
            feature: model.feature(i).name.clone(),
            category: model.feature(i).category,
            contribution,
        })
        .collect();
    HistoryRecord {
        account_id: account_id.to_owned(),
        model_version: score.model_version.to_string(),
        scored_at_micros: now,
        churn_probability: score.churn_probability,
        health_score: score.health_score,
        band: band_name(score.band).to_owned(),
        top_attributions: serde_json::to_string(&top).expect("attributions serialise"),
    }
}

/// The stored name of a band.
pub fn band_name(band: Band) -> &'static str {
    match band {
        Band::Healthy => "HEALTHY",
        Band::Watch => "WATCH",
        Band::AtRisk => "AT_RISK",
    }
}

/// The band of a stored name.
pub fn band_from_name(name: &str) -> Option<Band> {
    match name {
        "HEALTHY" => Some(Band::Healthy),
        "WATCH" => Some(Band::Watch),
        "AT_RISK" => Some(Band::AtRisk),
        _ => None,
    }
}

fn filter_fingerprint(q: &ListQuery) -> String {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        q.bands, q.segment, q.region, q.renewal_from, q.renewal_to, q.category_below, q.order
    );
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn encode_cursor(order: Order, key: f64, id: &str, filters: &str) -> String {
    let cursor = PageCursor {
        order,
        key_bits: key.to_bits(),
        id: id.to_owned(),
        filters: filters.to_owned(),
    };
    hex::encode(serde_json::to_vec(&cursor).expect("cursors serialise"))
}

fn decode_cursor(
    token: &str,
    order: Order,
    filters: &str,
) -> Result<Option<(f64, String)>, EngineError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid =
        || EngineError::InvalidArgument("page_token is not one this server issued".into());
    let bytes = hex::decode(token).map_err(|_| invalid())?;
    let cursor: PageCursor = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if cursor.order != order || cursor.filters != filters {
        return Err(EngineError::InvalidArgument(
            "page_token was issued for other filters or another order; repeat them unchanged"
                .into(),
        ));
    }
    Ok(Some((f64::from_bits(cursor.key_bits), cursor.id)))
}
