//! The rows the store reads and writes, as plain values. Times are
//! microseconds since the Unix epoch, as in the database.

use std::collections::BTreeMap;

/// An account's profile and its current feature values.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRecord {
    /// The account's id; the primary key.
    pub account_id: String,
    /// Display name.
    pub name: String,
    /// Customer segment, e.g. `enterprise`.
    pub segment: String,
    /// Sales region.
    pub region: String,
    /// Subscription plan.
    pub plan: String,
    /// Annual contract value; must be finite.
    pub annual_contract_value: f64,
    /// Next renewal as `YYYY-MM-DD`, if one is scheduled.
    pub renewal_date: Option<String>,
    /// The account's whole set of current feature values, by feature name.
    pub features: BTreeMap<String, StoredValue>,
    /// When the caller last changed this record.
    pub updated_at_micros: i64,
}

/// One feature value, in the three kinds a model takes.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValue {
    /// A numeric feature; must be finite.
    Number(f64),
    /// A categorical feature's level.
    Text(String),
    /// A boolean feature.
    Bool(bool),
}

/// One usage or sentiment event about an account.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRecord {
    /// The sender's id for the event; the primary key, so a resent event is
    /// stored once.
    pub event_id: String,
    /// The account the event is about; it must be stored.
    pub account_id: String,
    /// What kind of event, e.g. `login` or `nps`.
    pub kind: String,
    /// The event's measurement; must be finite.
    pub value: f64,
    /// When the event happened.
    pub occurred_at_micros: i64,
    /// When the service received it.
    pub received_at_micros: i64,
}

/// One score the service produced for an account.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRecord {
    /// The scored account.
    pub account_id: String,
    /// The model that produced the score.
    pub model_version: String,
    /// When it was scored. With `account_id` and `model_version`, the
    /// primary key.
    pub scored_at_micros: i64,
    /// The churn probability, in [0, 1]; must be finite.
    pub churn_probability: f64,
    /// The 0-100 health score; must be finite.
    pub health_score: f64,
    /// The band name, e.g. `AT_RISK`.
    pub band: String,
    /// The strongest attributions, as JSON text; must parse as JSON.
    pub top_attributions: String,
}

/// The newest recorded score of an account, as far as start-up and
/// "change since" need it.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestScore {
    /// The model that produced the score.
    pub model_version: String,
    /// When it was scored.
    pub scored_at_micros: i64,
    /// The 0-100 health score.
    pub health_score: f64,
}

impl From<&HistoryRecord> for LatestScore {
    fn from(record: &HistoryRecord) -> Self {
        Self {
            model_version: record.model_version.clone(),
            scored_at_micros: record.scored_at_micros,
            health_score: record.health_score,
        }
    }
}
