//! The in-memory view of every stored account: profile, feature values,
//! recent signals and the latest score. Routing priorities, listings and
//! summaries are answered from here, never from the database; the store is
//! written first and this view updated after the commit.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;

use crate::{
    scoring::{Band, Model, ScoreError, Scored, Value},
    signals::{DAY_MICROS, Event, SignalKind},
    store::{AccountRecord, StoredValue},
};

/// Priority given to an account the server does not know.
pub const DEFAULT_PRIORITY: f64 = 25.0;

/// Top attributions kept with each cached score.
pub const TOP_ATTRIBUTIONS: usize = 5;

/// Routing tier of a priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// 75 and above.
    P1,
    /// 50 to 75.
    P2,
    /// 25 to 50.
    P3,
    /// Below 25.
    P4,
}

impl Tier {
    /// The tier of a 0-100 priority.
    pub fn of(priority: f64) -> Tier {
        if priority >= 75.0 {
            Tier::P1
        } else if priority >= 50.0 {
            Tier::P2
        } else if priority >= 25.0 {
            Tier::P3
        } else {
            Tier::P4
        }
    }

    /// One tier more urgent (P1 stays P1).
    pub fn raised(self) -> Tier {
        match self {
            Tier::P1 | Tier::P2 => Tier::P1,
            Tier::P3 => Tier::P2,
            Tier::P4 => Tier::P3,
        }
    }

    /// The lowest priority within the tier.
    pub fn floor(self) -> f64 {
        match self {
            Tier::P1 => 75.0,
            Tier::P2 => 50.0,
            Tier::P3 => 25.0,
            Tier::P4 => 0.0,
        }
    }
}

/// What the business knows of an account beside its features.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profile {
    /// Display name.
    pub name: String,
    /// Market segment.
    pub segment: String,
    /// Region.
    pub region: String,
    /// Plan.
    pub plan: String,
    /// Annual contract value.
    pub annual_contract_value: f64,
    /// Next renewal.
    pub renewal_date: Option<NaiveDate>,
}

/// A score kept in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedScore {
    /// Churn probability.
    pub churn_probability: f64,
    /// Health score.
    pub health_score: f64,
    /// Band.
    pub band: Band,
    /// Contributions per model category, in [`Model::categories`] order.
    pub category_contributions: Vec<f64>,
    /// Largest attributions: (feature index, contribution).
    pub top: Vec<(usize, f64)>,
    /// Model that produced it (shared with every score of that model).
    pub model_version: std::sync::Arc<str>,
}

/// One account as the server holds it.
#[derive(Debug, Clone)]
pub struct AccountState {
    /// The profile.
    pub profile: Profile,
    /// Stored feature values by name.
    pub features: BTreeMap<String, StoredValue>,
    /// Signals within the model's longest window, sorted by time.
    pub events: Vec<Event>,
    /// Last change to profile, features or signals (µs since the epoch).
    pub updated_at: i64,
    /// The latest score, or why there is none.
    pub score: Result<CachedScore, ScoreError>,
    /// Health of the newest history row, to decide when to record again.
    pub last_recorded_health: Option<f64>,
}

impl AccountState {
    /// Revenue at risk, using the average account's churn probability when
    /// the account cannot be scored.
    pub fn revenue_at_risk(&self, fallback_probability: f64) -> f64 {
        self.churn_probability(fallback_probability) * self.profile.annual_contract_value
    }

    /// Whether `record` has exactly this account's profile and features.
    pub fn holds(&self, record: &AccountRecord) -> bool {
        let p = &self.profile;
        p.name == record.name
            && p.segment == record.segment
            && p.region == record.region
            && p.plan == record.plan
            && p.annual_contract_value == record.annual_contract_value
            && p.renewal_date.map(|d| d.to_string()) == record.renewal_date
            && self.features == record.features
    }

    /// Churn probability, or `fallback` when unscored.
    pub fn churn_probability(&self, fallback: f64) -> f64 {
        self.score
            .as_ref()
            .map_or(fallback, |s| s.churn_probability)
    }
}

/// Converts a stored value into a scoring value.
pub fn value_of(stored: &StoredValue) -> Value<'_> {
    match stored {
        StoredValue::Number(x) => Value::Number(*x),
        StoredValue::Text(t) => Value::Text(t),
        StoredValue::Bool(b) => Value::Bool(*b),
    }
}

/// Scores an account from its stored features and its signals as of `now`.
///
/// Stored features the model does not use are ignored (they may belong to
/// an earlier model); features the model derives from signals are computed
/// from `events`.
///
/// # Errors
/// The first [`ScoreError`] for the account's values.
pub fn score_state(
    model: &Model,
    features: &BTreeMap<String, StoredValue>,
    events: &[Event],
    now: i64,
    scored: &mut Scored,
) -> Result<(), ScoreError> {
    let artifact = model.artifact();
    let slots: Vec<Option<Value<'_>>> = artifact
        .features
        .iter()
        .map(|f| match &f.signal {
            Some(signal) => signal.value_at(events, now).map(Value::Number),
            None => features.get(&f.name).map(value_of),
        })
        .collect();
    model.score_into(&slots, scored)
}

/// Builds the cached form of a fresh score.
pub fn cache_score(model: &Model, scored: &Scored) -> CachedScore {
    CachedScore {
        churn_probability: scored.churn_probability,
        health_score: scored.health_score,
        band: model.band(scored.health_score),
        category_contributions: model.category_contributions(&scored.attributions),
        top: model
            .ranked(&scored.attributions)
            .into_iter()
            .take(TOP_ATTRIBUTIONS)
            .map(|i| (i, scored.attributions[i]))
            .collect(),
        model_version: model.shared_version(),
    }
}

/// The account registry.
#[derive(Debug, Default)]
pub struct Registry {
    accounts: HashMap<String, AccountState>,
    /// Median revenue at risk of scored accounts: the priority reference.
    reference_risk: f64,
    /// Accounts held when the reference was last computed.
    reference_count: usize,
}

impl Registry {
    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// Whether there are no accounts.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// The account, if known.
    pub fn get(&self, account_id: &str) -> Option<&AccountState> {
        self.accounts.get(account_id)
    }

    /// Whether the account is known.
    pub fn contains(&self, account_id: &str) -> bool {
        self.accounts.contains_key(account_id)
    }

    /// Every account, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &AccountState)> {
        self.accounts.iter()
    }

    /// Inserts or replaces an account's profile and features, keeping its
    /// signals, and re-scores it.
    pub fn upsert(&mut self, model: &Model, record: AccountRecord, now: i64) -> &AccountState {
        let AccountRecord {
            account_id,
            name,
            segment,
            region,
            plan,
            annual_contract_value,
            renewal_date,
            features,
            updated_at_micros,
        } = record;
        let profile = Profile {
            name,
            segment,
            region,
            plan,
            annual_contract_value,
            renewal_date: renewal_date
                .as_deref()
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
        };
        let (events, last_recorded_health) = self
            .accounts
            .remove(&account_id)
            .map_or((Vec::new(), None), |old| {
                (old.events, old.last_recorded_health)
            });
        let mut scored = Scored::default();
        let score = score_state(model, &features, &events, now, &mut scored)
            .map(|()| cache_score(model, &scored));
        let state = AccountState {
            profile,
            features,
            events,
            updated_at: updated_at_micros,
            score,
            last_recorded_health,
        };
        self.accounts
            .entry(account_id)
            .insert_entry(state)
            .into_mut()
    }

    /// Adds signals to a known account (ignored for an unknown one), keeps
    /// only those within `lookback_days`, and re-scores it.
    pub fn add_events(
        &mut self,
        model: &Model,
        account_id: &str,
        events: impl IntoIterator<Item = Event>,
        received_at: i64,
        lookback_days: u32,
        now: i64,
    ) {
        let Some(state) = self.accounts.get_mut(account_id) else {
            return;
        };
        state.events.extend(events);
        state.events.sort_by_key(|e| e.at);
        let horizon = now - i64::from(lookback_days) * DAY_MICROS;
        state.events.retain(|e| e.at >= horizon);
        state.updated_at = state.updated_at.max(received_at);
        rescore(model, state, now);
    }

    /// Re-scores every account (windows slide with time; models change).
    pub fn rescore_all(&mut self, model: &Model, now: i64) {
        let mut scored = Scored::default();
        for state in self.accounts.values_mut() {
            rescore_with(model, state, now, &mut scored);
        }
        self.refresh_reference(model);
    }

    /// Recomputes the median revenue at risk used as the priority reference.
    /// O(n): run on start-up, on each sweep, and after writes through
    /// [`Registry::refresh_reference_if_due`].
    pub fn refresh_reference(&mut self, model: &Model) {
        let fallback = crate::scoring::sigmoid(model.base_value());
        let mut risks: Vec<f64> = self
            .accounts
            .values()
            .map(|s| s.revenue_at_risk(fallback))
            .collect();
        self.reference_risk = if risks.is_empty() {
            0.0
        } else {
            let middle = risks.len() / 2;
            *risks.select_nth_unstable_by(middle, f64::total_cmp).1
        };
        self.reference_count = self.accounts.len();
    }

    /// Refreshes the reference after a write while the registry is small
    /// (at most 50,000 accounts, well under a millisecond) or when the
    /// number of accounts moved by more than 1 % since the last refresh;
    /// larger registries otherwise wait for the periodic sweep.
    pub fn refresh_reference_if_due(&mut self, model: &Model) {
        let moved = self.accounts.len().abs_diff(self.reference_count) * 100 > self.reference_count;
        if self.accounts.len() <= 50_000 || moved {
            self.refresh_reference(model);
        }
    }

    /// Sets the health last written to history for an account.
    pub fn set_recorded(&mut self, account_id: &str, health: f64) {
        if let Some(state) = self.accounts.get_mut(account_id) {
            state.last_recorded_health = Some(health);
        }
    }

    /// Priority 0-100 for a revenue at risk: `100 · R / (R + R_ref)`.
    pub fn priority(&self, revenue_at_risk: f64) -> f64 {
        // With no reference yet (no accounts of any value), any positive
        // risk is compared with one currency unit.
        let reference = if self.reference_risk > 0.0 {
            self.reference_risk
        } else {
            1.0
        };
        if revenue_at_risk <= 0.0 {
            0.0
        } else {
            100.0 * revenue_at_risk / (revenue_at_risk + reference)
        }
    }

    /// The priority reference (median revenue at risk).
    pub fn reference_risk(&self) -> f64 {
        self.reference_risk
    }
}

fn rescore(model: &Model, state: &mut AccountState, now: i64) {
    let mut scored = Scored::default();
    rescore_with(model, state, now, &mut scored);
}

fn rescore_with(model: &Model, state: &mut AccountState, now: i64, scored: &mut Scored) {
    state.score = score_state(model, &state.features, &state.events, now, scored)
        .map(|()| cache_score(model, scored));
}

/// Parses a `YYYY-MM-DD` date, treating an empty string as none.
///
/// # Errors
/// A sentence quoting the text.
pub fn parse_day(text: &str) -> Result<Option<NaiveDate>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    // chrono also accepts unpadded fields ("2027-3-5") and years beyond
    // four digits, which the store refuses; only the canonical ten-character
    // spelling is a date here.
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|day| text.len() == 10 && day.format("%Y-%m-%d").to_string() == text)
        .map(Some)
        .ok_or_else(|| format!("{text:?} is not a date (expected YYYY-MM-DD)"))
}

/// Every signal kind a model's features read.
pub fn kinds_used(model: &Model) -> Vec<SignalKind> {
    let mut kinds: Vec<SignalKind> = model
        .artifact()
        .features
        .iter()
        .filter_map(|f| f.signal.map(|s| s.kind))
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// The longest window any of the model's features looks back over, in days
/// (at least 1).
pub fn lookback_days(model: &Model) -> u32 {
    model
        .artifact()
        .features
        .iter()
        .filter_map(|f| f.signal.map(|s| s.lookback_days()))
        .max()
        .unwrap_or(1)
}
