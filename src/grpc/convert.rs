//! Conversions between the generated proto types and the domain: request
//! features into scoring values, scores and model facts into messages.

use std::collections::HashSet;

use super::pb;
use crate::{
    artifact::{FeatureModel, ModelArtifact},
    metrics::{CalibrationBin, TestMetrics},
    scoring::{Band, Model, ScoreError, Scored, Value, health_score, sigmoid},
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
    let category_scores = model
        .categories()
        .iter()
        .zip(model.category_contributions(&scored.attributions))
        .map(|(&c, contribution)| pb::CategoryScore {
            category: category(c) as i32,
            contribution,
            health_score: health_score(sigmoid(model.base_value() + contribution)),
        })
        .collect();
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

fn account_error(model: &Model, account_id: &str, error: &ScoreError) -> pb::AccountScore {
    let reason = match error {
        ScoreError::MissingAccountId => pb::AccountErrorReason::MissingAccountId,
        ScoreError::DuplicateAccountId { .. } => pb::AccountErrorReason::DuplicateAccountId,
        ScoreError::UnknownFeature { .. } => pb::AccountErrorReason::UnknownFeature,
        ScoreError::MissingFeature { .. } => pb::AccountErrorReason::MissingFeature,
        ScoreError::WrongType { .. } => pb::AccountErrorReason::WrongType,
        ScoreError::InvalidValue { .. } => pb::AccountErrorReason::InvalidValue,
    };
    pb::AccountScore {
        account_id: account_id.to_owned(),
        model_version: model.version().to_owned(),
        error: Some(pb::AccountError {
            reason: reason as i32,
            feature: error.feature().unwrap_or_default().to_owned(),
            message: error.to_string(),
        }),
        ..Default::default()
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
