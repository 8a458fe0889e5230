//! Conversions between the generated proto types and the domain: request
//! features into scoring values, scores and model facts into messages.

use std::collections::HashSet;

use super::pb;
use crate::{
    accounts::{Profile, Tier},
    artifact::{FeatureModel, ModelArtifact},
    engine::{
        AccountHealth, ListQuery, Listed, Order, PriorityAnswer, SegmentRow, SignalInput,
        SignalRejection, StoredAttribution, band_from_name,
    },
    metrics::{CalibrationBin, TestMetrics},
    scoring::{
        Band, MAX_ID_BYTES, Model, ScoreError, Scored, Value, check_text, health_score, sigmoid,
    },
    signals::SignalKind,
    store::{AccountRecord, HistoryRecord, StoredValue},
    template::{Category, FeatureKind},
};

/// Scores every account of a request; bad accounts get `error` set.
pub(super) fn score_batch(
    model: &Model,
    request: &pb::ScoreAccountsRequest,
) -> pb::ScoreAccountsResponse {
    let mut seen = HashSet::with_capacity(request.accounts.len());
    let mut slots: Vec<Option<Value<'_>>> = vec![None; model.feature_count()];
    let mut scored = Scored::default();
    let limit = match request.max_attributions {
        0 => usize::MAX,
        n => n as usize,
    };
    let scores = request
        .accounts
        .iter()
        .map(|account| {
            let outcome = check_id(account, &mut seen)
                .and_then(|()| fill_slots(model, account, &mut slots))
                .and_then(|()| model.score_into(&slots, &mut scored));
            match outcome {
                Ok(()) => account_score(model, &account.account_id, &scored, limit),
                Err(error) => account_error(model, &account.account_id, &error),
            }
        })
        .collect();
    pb::ScoreAccountsResponse { scores }
}

fn check_id<'a>(account: &'a pb::Account, seen: &mut HashSet<&'a str>) -> Result<(), ScoreError> {
    if account.account_id.is_empty() {
        return Err(ScoreError::MissingAccountId);
    }
    check_text(&account.account_id, MAX_ID_BYTES).map_err(|problem| {
        ScoreError::InvalidAccountId {
            account_id: account.account_id.clone(),
            problem,
        }
    })?;
    if !seen.insert(account.account_id.as_str()) {
        return Err(ScoreError::DuplicateAccountId {
            account_id: account.account_id.clone(),
        });
    }
    Ok(())
}

fn fill_slots<'a>(
    model: &Model,
    account: &'a pb::Account,
    slots: &mut [Option<Value<'a>>],
) -> Result<(), ScoreError> {
    slots.fill(None);
    for (name, value) in &account.features {
        let index = model
            .feature_index(name)
            .ok_or_else(|| ScoreError::UnknownFeature {
                feature: name.clone(),
            })?;
        slots[index] = value.kind.as_ref().map(|kind| match kind {
            pb::feature_value::Kind::NumberValue(x) => Value::Number(*x),
            pb::feature_value::Kind::StringValue(s) => Value::Text(s),
            pb::feature_value::Kind::BoolValue(b) => Value::Bool(*b),
        });
    }
    Ok(())
}

fn account_score(
    model: &Model,
    account_id: &str,
    scored: &Scored,
    limit: usize,
) -> pb::AccountScore {
    let attributions = model
        .ranked(&scored.attributions)
        .into_iter()
        .take(limit)
        .map(|i| {
            let contribution = scored.attributions[i];
            let feature = model.feature(i);
            pb::Attribution {
                feature: feature.name.clone(),
                category: category(feature.category) as i32,
                contribution,
                direction: direction(contribution) as i32,
            }
        })
        .collect();
    let category_scores =
        category_scores(model, &model.category_contributions(&scored.attributions));
    pb::AccountScore {
        account_id: account_id.to_owned(),
        churn_probability: scored.churn_probability,
        health_score: scored.health_score,
        band: band(model.band(scored.health_score)) as i32,
        attributions,
        base_value: model.base_value(),
        churn_log_odds: scored.log_odds,
        category_scores,
        model_version: model.version().to_owned(),
        imputed_features: scored
            .imputed
            .iter()
            .map(|&i| model.feature(i).name.clone())
            .collect(),
        error: None,
    }
}

fn category_scores(model: &Model, contributions: &[f64]) -> Vec<pb::CategoryScore> {
    model
        .categories()
        .iter()
        .zip(contributions)
        .map(|(&c, &contribution)| pb::CategoryScore {
            category: category(c) as i32,
            contribution,
            health_score: health_score(sigmoid(model.base_value() + contribution)),
        })
        .collect()
}

fn account_error(model: &Model, account_id: &str, error: &ScoreError) -> pb::AccountScore {
    pb::AccountScore {
        account_id: account_id.to_owned(),
        model_version: model.version().to_owned(),
        error: Some(account_error_message(error)),
        ..Default::default()
    }
}

fn account_error_message(error: &ScoreError) -> pb::AccountError {
    let reason = match error {
        ScoreError::MissingAccountId => pb::AccountErrorReason::MissingAccountId,
        ScoreError::InvalidAccountId { .. } => pb::AccountErrorReason::InvalidAccountId,
        ScoreError::DuplicateAccountId { .. } => pb::AccountErrorReason::DuplicateAccountId,
        ScoreError::UnknownFeature { .. } => pb::AccountErrorReason::UnknownFeature,
        ScoreError::MissingFeature { .. } => pb::AccountErrorReason::MissingFeature,
        ScoreError::WrongType { .. } => pb::AccountErrorReason::WrongType,
        ScoreError::InvalidValue { .. } => pb::AccountErrorReason::InvalidValue,
    };
    pb::AccountError {
        reason: reason as i32,
        feature: error.feature().unwrap_or_default().to_owned(),
        message: error.to_string(),
    }
}

/// The GetModelInfo answer for `model`.
pub(super) fn model_info(model: &Model) -> pb::GetModelInfoResponse {
    let artifact: &ModelArtifact = model.artifact();
    let t = &artifact.training;
    pb::GetModelInfoResponse {
        model_version: artifact.model_version.clone(),
        name: artifact.name.clone(),
        trained_at: Some(prost_types::Timestamp {
            seconds: t.trained_at.timestamp(),
            nanos: t.trained_at.timestamp_subsec_nanos() as i32,
        }),
        trainer_version: t.trainer_version.clone(),
        test_metrics: Some(test_metrics(&t.test_metrics)),
        features: artifact.features.iter().map(feature_spec).collect(),
        band_thresholds: Some(pb::BandThresholds {
            healthy_min: artifact.bands.healthy_min,
            watch_min: artifact.bands.watch_min,
        }),
        training_data: Some(pb::TrainingData {
            sha256: t.data_sha256.clone(),
            rows: t.rows,
            train_rows: t.train_rows,
            test_rows: t.test_rows,
            positive_rate: t.positive_rate,
            split_method: t.split_method.clone(),
        }),
        base_value: model.base_value(),
    }
}

fn test_metrics(m: &TestMetrics) -> pb::TestMetrics {
    pb::TestMetrics {
        roc_auc: m.roc_auc,
        pr_auc: m.pr_auc,
        log_loss: m.log_loss,
        brier_score: m.brier_score,
        rows: m.rows,
        positives: m.positives,
        calibration: m.calibration.iter().map(calibration_bin).collect(),
    }
}

fn calibration_bin(bin: &CalibrationBin) -> pb::CalibrationBin {
    pb::CalibrationBin {
        lower: bin.lower,
        upper: bin.upper,
        count: bin.count,
        mean_predicted: bin.mean_predicted,
        observed_rate: bin.observed_rate,
    }
}

fn feature_spec(f: &FeatureModel) -> pb::FeatureSpec {
    pb::FeatureSpec {
        name: f.name.clone(),
        kind: match f.kind {
            FeatureKind::Numeric => pb::FeatureKind::Numeric,
            FeatureKind::Categorical => pb::FeatureKind::Categorical,
            FeatureKind::Boolean => pb::FeatureKind::Boolean,
        } as i32,
        category: category(f.category) as i32,
        levels: f.levels.clone(),
        fills_missing: f.fill.is_some(),
        fill_value: f.fill.as_ref().map(ToString::to_string).unwrap_or_default(),
        transform: crate::template::transform_label(f.clip, f.transform),
        description: f.description.clone(),
    }
}

fn category(c: Category) -> pb::FeatureCategory {
    match c {
        Category::Engagement => pb::FeatureCategory::Engagement,
        Category::Satisfaction => pb::FeatureCategory::Satisfaction,
        Category::Support => pb::FeatureCategory::Support,
        Category::Adoption => pb::FeatureCategory::Adoption,
        Category::Financial => pb::FeatureCategory::Financial,
        Category::Profile => pb::FeatureCategory::Profile,
    }
}

/// The band of a message's band number, if it is one.
pub(super) fn band_of(value: i32) -> Option<Band> {
    match pb::HealthBand::try_from(value).ok()? {
        pb::HealthBand::Healthy => Some(Band::Healthy),
        pb::HealthBand::Watch => Some(Band::Watch),
        pb::HealthBand::AtRisk => Some(Band::AtRisk),
        pb::HealthBand::Unspecified => None,
    }
}

fn band(b: Band) -> pb::HealthBand {
    match b {
        Band::Healthy => pb::HealthBand::Healthy,
        Band::Watch => pb::HealthBand::Watch,
        Band::AtRisk => pb::HealthBand::AtRisk,
    }
}

fn direction(contribution: f64) -> pb::Direction {
    if contribution > 0.0 {
        pb::Direction::RaisesChurn
    } else if contribution < 0.0 {
        pb::Direction::LowersChurn
    } else {
        pb::Direction::Neutral
    }
}

/// Microseconds since the epoch of a timestamp, or `None` when it is out
/// of range (nanos outside 0..1e9, or beyond year ±290,000).
pub(super) fn micros(t: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(t.nanos / 1000))
}

/// The timestamp of a microsecond instant.
pub(super) fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// The stored form of a request's features; unset values are left out
/// (missing).
pub(super) fn stored_features(
    features: &std::collections::HashMap<String, pb::FeatureValue>,
) -> std::collections::BTreeMap<String, StoredValue> {
    features
        .iter()
        .filter_map(|(name, value)| {
            let stored = match value.kind.as_ref()? {
                pb::feature_value::Kind::NumberValue(x) => StoredValue::Number(*x),
                pb::feature_value::Kind::StringValue(s) => StoredValue::Text(s.clone()),
                pb::feature_value::Kind::BoolValue(b) => StoredValue::Bool(*b),
            };
            Some((name.clone(), stored))
        })
        .collect()
}

/// The stored record of an upsert.
pub(super) fn account_record(upsert: &pb::AccountUpsert) -> AccountRecord {
    let profile = upsert.profile.clone().unwrap_or_default();
    AccountRecord {
        account_id: upsert.account_id.clone(),
        name: profile.name,
        segment: profile.segment,
        region: profile.region,
        plan: profile.plan,
        annual_contract_value: profile.annual_contract_value,
        renewal_date: (!profile.renewal_date.trim().is_empty())
            .then(|| profile.renewal_date.trim().to_owned()),
        features: stored_features(&upsert.features),
        updated_at_micros: 0,
    }
}

/// The message form of a profile.
pub(super) fn profile(p: &Profile) -> pb::AccountProfile {
    pb::AccountProfile {
        name: p.name.clone(),
        segment: p.segment.clone(),
        region: p.region.clone(),
        plan: p.plan.clone(),
        annual_contract_value: p.annual_contract_value,
        renewal_date: p.renewal_date.map(|d| d.to_string()).unwrap_or_default(),
    }
}

/// The per-account error of a failed upsert, as in ScoreAccounts.
pub(super) fn upsert_result(account_id: &str, result: &Result<(), ScoreError>) -> pb::UpsertResult {
    pb::UpsertResult {
        account_id: account_id.to_owned(),
        error: result.as_ref().err().map(account_error_message),
    }
}

/// A signal as the engine takes it.
pub(super) fn signal_input(signal: &pb::Signal) -> SignalInput {
    let kind = match pb::SignalKind::try_from(signal.kind).unwrap_or(pb::SignalKind::Unspecified) {
        pb::SignalKind::Unspecified => None,
        pb::SignalKind::Login => Some(SignalKind::Login),
        pb::SignalKind::ActiveUsers => Some(SignalKind::ActiveUsers),
        pb::SignalKind::FeatureUsed => Some(SignalKind::FeatureUsed),
        pb::SignalKind::TicketOpened => Some(SignalKind::TicketOpened),
        pb::SignalKind::TicketResolved => Some(SignalKind::TicketResolved),
        pb::SignalKind::TicketEscalated => Some(SignalKind::TicketEscalated),
        pb::SignalKind::CsatResponse => Some(SignalKind::CsatResponse),
        pb::SignalKind::NpsResponse => Some(SignalKind::NpsResponse),
        pb::SignalKind::InvoicePaidLate => Some(SignalKind::InvoicePaidLate),
    };
    SignalInput {
        event_id: signal.event_id.clone(),
        account_id: signal.account_id.clone(),
        kind,
        value: signal.value,
        occurred_at: signal.occurred_at.as_ref().and_then(micros),
    }
}

/// The message form of a rejected signal.
pub(super) fn signal_error(
    index: u64,
    signal: &pb::Signal,
    rejection: &SignalRejection,
) -> pb::SignalError {
    let reason = match rejection {
        SignalRejection::MissingEventId => pb::SignalErrorReason::MissingEventId,
        SignalRejection::InvalidEventId(_) => pb::SignalErrorReason::InvalidEventId,
        SignalRejection::UnknownAccount(_) => pb::SignalErrorReason::UnknownAccount,
        SignalRejection::UnknownKind => pb::SignalErrorReason::UnknownKind,
        SignalRejection::InvalidValue(_) => pb::SignalErrorReason::InvalidValue,
        SignalRejection::InvalidTime(_) => pb::SignalErrorReason::InvalidTime,
    };
    pb::SignalError {
        index,
        event_id: signal.event_id.clone(),
        account_id: signal.account_id.clone(),
        reason: reason as i32,
        message: rejection.to_string(),
    }
}

/// The message form of an account's health.
pub(super) fn account_health(
    account_id: &str,
    health: &AccountHealth,
) -> pb::GetAccountHealthResponse {
    pb::GetAccountHealthResponse {
        score: Some(account_score(
            &health.model,
            account_id,
            &health.scored,
            usize::MAX,
        )),
        profile: Some(profile(&health.profile)),
        health_change_7d: health.change_7d,
        health_change_30d: health.change_30d,
        features_updated_at: Some(timestamp(health.updated_at)),
        revenue_at_risk: health.revenue_at_risk,
    }
}

/// The message form of a routing answer.
pub(super) fn priority(model: &Model, answer: &PriorityAnswer) -> pb::AccountPriority {
    pb::AccountPriority {
        account_id: answer.account_id.clone(),
        priority: answer.priority,
        tier: match answer.tier {
            Tier::P1 => pb::PriorityTier::P1,
            Tier::P2 => pb::PriorityTier::P2,
            Tier::P3 => pb::PriorityTier::P3,
            Tier::P4 => pb::PriorityTier::P4,
        } as i32,
        churn_probability: answer.churn_probability,
        band: answer.band.map_or(pb::HealthBand::Unspecified, band) as i32,
        revenue_at_risk: answer.revenue_at_risk,
        known: answer.known,
        model_version: model.version().to_owned(),
    }
}

/// The engine's list query for a request.
///
/// # Errors
/// A sentence naming the bad field.
pub(super) fn list_query(request: &pb::ListAccountsRequest) -> Result<ListQuery, String> {
    let bands = request
        .bands
        .iter()
        .map(|&b| match pb::HealthBand::try_from(b) {
            Ok(pb::HealthBand::Healthy) => Ok(Band::Healthy),
            Ok(pb::HealthBand::Watch) => Ok(Band::Watch),
            Ok(pb::HealthBand::AtRisk) => Ok(Band::AtRisk),
            _ => Err(format!("bands: {b} is not a health band")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let day = |field: &str, text: &str| {
        crate::accounts::parse_day(text).map_err(|problem| format!("{field}: {problem}"))
    };
    let category_below = match &request.category_below {
        None => None,
        Some(filter) => {
            let category = category_of(filter.category).ok_or_else(|| {
                format!(
                    "category_below.category: {} is not a category",
                    filter.category
                )
            })?;
            if !filter.health_below.is_finite() {
                return Err("category_below.health_below must be a finite number".into());
            }
            Some((category, filter.health_below))
        }
    };
    let order = match pb::AccountOrder::try_from(request.order_by) {
        Ok(pb::AccountOrder::Unspecified | pb::AccountOrder::RevenueAtRisk) => Order::RevenueAtRisk,
        Ok(pb::AccountOrder::HealthAscending) => Order::HealthAscending,
        Ok(pb::AccountOrder::HealthDescending) => Order::HealthDescending,
        Err(_) => return Err(format!("order_by: {} is not an order", request.order_by)),
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(ListQuery {
        bands,
        segment: non_empty(&request.segment),
        region: non_empty(&request.region),
        renewal_from: day("renewal_from", &request.renewal_from)?,
        renewal_to: day("renewal_to", &request.renewal_to)?,
        category_below,
        order,
        page_size: match request.page_size {
            0 => 50,
            n => n.min(1000) as usize,
        },
        page_token: request.page_token.clone(),
    })
}

/// The message form of a listed account.
pub(super) fn listed(model: &Model, account: &Listed) -> pb::AccountSummary {
    pb::AccountSummary {
        account_id: account.account_id.clone(),
        profile: Some(profile(&account.profile)),
        churn_probability: account.score.churn_probability,
        health_score: account.score.health_score,
        band: band(account.score.band) as i32,
        revenue_at_risk: account.revenue_at_risk,
        category_scores: category_scores(model, &account.score.category_contributions),
    }
}

/// The message form of a segment row.
pub(super) fn segment(row: &SegmentRow) -> pb::SegmentSummary {
    pb::SegmentSummary {
        key: row.key.clone(),
        accounts: row.accounts,
        mean_health: row.mean_health,
        share_at_risk: row.share_at_risk,
        revenue_at_risk: row.revenue_at_risk,
        mean_health_change: row.mean_health_change,
    }
}

/// The message form of a history row.
pub(super) fn health_point(row: &HistoryRecord) -> pb::HealthPoint {
    let top: Vec<StoredAttribution> =
        serde_json::from_str(&row.top_attributions).unwrap_or_default();
    pb::HealthPoint {
        scored_at: Some(timestamp(row.scored_at_micros)),
        model_version: row.model_version.clone(),
        churn_probability: row.churn_probability,
        health_score: row.health_score,
        band: band_from_name(&row.band).map_or(pb::HealthBand::Unspecified, band) as i32,
        top_attributions: top
            .into_iter()
            .map(|a| pb::Attribution {
                feature: a.feature,
                category: category(a.category) as i32,
                contribution: a.contribution,
                direction: direction(a.contribution) as i32,
            })
            .collect(),
    }
}

fn category_of(value: i32) -> Option<Category> {
    Some(match pb::FeatureCategory::try_from(value).ok()? {
        pb::FeatureCategory::Unspecified => return None,
        pb::FeatureCategory::Engagement => Category::Engagement,
        pb::FeatureCategory::Satisfaction => Category::Satisfaction,
        pb::FeatureCategory::Support => Category::Support,
        pb::FeatureCategory::Adoption => Category::Adoption,
        pb::FeatureCategory::Financial => Category::Financial,
        pb::FeatureCategory::Profile => Category::Profile,
    })
}
