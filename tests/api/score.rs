//! ScoreAccounts against the shipped Telco model.

use std::collections::BTreeMap;

use healthscore::{
    SHIPPED_MODEL, SHIPPED_MODEL_PATH,
    artifact::ModelArtifact,
    grpc::pb::{self, AccountErrorReason, Direction, HealthBand, feature_value::Kind},
    scoring::transform_numeric,
    template::FeatureKind,
};
use tonic::Code;

use crate::helpers::{
    Features, account, assert_account_error, boolean, customer_7590_vhveg, features, number,
    spawn_app, telco_accounts, test_settings, text, unset,
};

const EPS: f64 = 1e-9;

/// A month-to-month fiber customer in their first month, paying by
/// electronic check: the textbook churner of the Telco data.
fn new_fiber_customer() -> Features {
    features([
        ("gender", text("Female")),
        ("SeniorCitizen", boolean(false)),
        ("Partner", text("No")),
        ("Dependents", text("No")),
        ("tenure", number(1.0)),
        ("PhoneService", text("Yes")),
        ("MultipleLines", text("No")),
        ("InternetService", text("Fiber optic")),
        ("OnlineSecurity", text("No")),
        ("OnlineBackup", text("No")),
        ("DeviceProtection", text("No")),
        ("TechSupport", text("No")),
        ("StreamingTV", text("No")),
        ("StreamingMovies", text("No")),
        ("Contract", text("Month-to-month")),
        ("PaperlessBilling", text("Yes")),
        ("PaymentMethod", text("Electronic check")),
        ("MonthlyCharges", number(70.7)),
        ("TotalCharges", number(70.7)),
    ])
}

/// A two-year-contract DSL customer of almost six years with every add-on.
fn loyal_two_year_customer() -> Features {
    features([
        ("gender", text("Male")),
        ("SeniorCitizen", boolean(false)),
        ("Partner", text("Yes")),
        ("Dependents", text("Yes")),
        ("tenure", number(70.0)),
        ("PhoneService", text("Yes")),
        ("MultipleLines", text("Yes")),
        ("InternetService", text("DSL")),
        ("OnlineSecurity", text("Yes")),
        ("OnlineBackup", text("Yes")),
        ("DeviceProtection", text("Yes")),
        ("TechSupport", text("Yes")),
        ("StreamingTV", text("No")),
        ("StreamingMovies", text("No")),
        ("Contract", text("Two year")),
        ("PaperlessBilling", text("No")),
        ("PaymentMethod", text("Bank transfer (automatic)")),
        ("MonthlyCharges", number(65.0)),
        ("TotalCharges", number(4550.0)),
    ])
}

fn with(mut base: Features, name: &str, value: pb::FeatureValue) -> Features {
    base.insert(name.to_owned(), value);
    base
}

fn without(mut base: Features, name: &str) -> Features {
    base.remove(name);
    base
}

fn expected_band(health: f64, thresholds: &pb::BandThresholds) -> HealthBand {
    if health >= thresholds.healthy_min {
        HealthBand::Healthy
    } else if health >= thresholds.watch_min {
        HealthBand::Watch
    } else {
        HealthBand::AtRisk
    }
}

fn fill_value(info: &pb::GetModelInfoResponse, feature: &str) -> String {
    let spec = info
        .features
        .iter()
        .find(|f| f.name == feature)
        .unwrap_or_else(|| panic!("the model has no feature {feature}"));
    assert!(spec.fills_missing, "{feature} should fill missing values");
    spec.fill_value.clone()
}

fn assert_same_score(a: &pb::AccountScore, b: &pb::AccountScore) {
    assert!(
        (a.churn_log_odds - b.churn_log_odds).abs() < EPS,
        "{} scored {} but {} scored {}",
        a.account_id,
        a.churn_log_odds,
        b.account_id,
        b.churn_log_odds
    );
}

#[tokio::test]
async fn full_account_scores_with_consistent_probability_health_band_and_attributions() {
    let app = spawn_app(test_settings()).await;
    let info = app.model_info().await;
    let thresholds = info.band_thresholds.expect("band thresholds are set");

    let score = app
        .score_one(account("7590-VHVEG", customer_7590_vhveg()))
        .await;

    assert_eq!(score.account_id, "7590-VHVEG");
    assert_eq!(score.model_version, info.model_version);
    let p = score.churn_probability;
    assert!(p > 0.0 && p < 1.0, "churn probability {p}");
    assert!((score.health_score - 100.0 * (1.0 - p)).abs() < EPS);
    assert_eq!(score.band(), expected_band(score.health_score, &thresholds));
    assert!((score.base_value - info.base_value).abs() < EPS);
    assert!((1.0 / (1.0 + (-score.churn_log_odds).exp()) - p).abs() < EPS);
    assert!(
        score.imputed_features.is_empty(),
        "{:?}",
        score.imputed_features
    );

    // One attribution per model feature, exact Shapley values of a linear
    // model: they add up to the log-odds.
    assert_eq!(score.attributions.len(), info.features.len());
    let mut named: Vec<&str> = score
        .attributions
        .iter()
        .map(|a| a.feature.as_str())
        .collect();
    named.sort_unstable();
    let mut expected: Vec<&str> = info.features.iter().map(|f| f.name.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(named, expected);
    let total: f64 = score.attributions.iter().map(|a| a.contribution).sum();
    assert!((score.base_value + total - score.churn_log_odds).abs() < EPS);

    for pair in score.attributions.windows(2) {
        assert!(
            pair[0].contribution.abs() >= pair[1].contribution.abs(),
            "{} ({}) is ranked above {} ({})",
            pair[0].feature,
            pair[0].contribution,
            pair[1].feature,
            pair[1].contribution
        );
    }
    for a in &score.attributions {
        let direction = if a.contribution > 0.0 {
            Direction::RaisesChurn
        } else if a.contribution < 0.0 {
            Direction::LowersChurn
        } else {
            Direction::Neutral
        };
        assert_eq!(a.direction(), direction, "{}", a.feature);
        let spec = info.features.iter().find(|f| f.name == a.feature).unwrap();
        assert_eq!(a.category, spec.category, "{}", a.feature);
    }

    // Category scores: one per category the model uses, summing the
    // attributions of that category.
    let mut by_category: BTreeMap<i32, f64> = BTreeMap::new();
    for a in &score.attributions {
        *by_category.entry(a.category).or_default() += a.contribution;
    }
    assert_eq!(score.category_scores.len(), by_category.len());
    for c in &score.category_scores {
        let expected = by_category[&c.category];
        assert!(
            (c.contribution - expected).abs() < EPS,
            "{:?}",
            c.category()
        );
        let health = 100.0 * (1.0 - 1.0 / (1.0 + (-(score.base_value + c.contribution)).exp()));
        assert!((c.health_score - health).abs() < EPS, "{:?}", c.category());
    }
    let category_total: f64 = score.category_scores.iter().map(|c| c.contribution).sum();
    assert!((category_total - total).abs() < EPS);
}

#[tokio::test]
async fn log_odds_match_the_artifact_formula() {
    // Recomputes the log-odds straight from the artifact's columns,
    // intercept + Σ coefficient · (x − center) / scale, independently of the
    // compiled per-level lookups the server scores with.
    let artifact = ModelArtifact::from_json(SHIPPED_MODEL, SHIPPED_MODEL_PATH).unwrap();
    let app = spawn_app(test_settings()).await;
    let values = customer_7590_vhveg();

    let score = app.score_one(account("7590-VHVEG", values.clone())).await;

    let mut z = artifact.intercept;
    for feature in &artifact.features {
        let value = values[&feature.name].kind.as_ref().unwrap();
        for (k, column) in feature.columns.iter().enumerate() {
            let x = match (feature.kind, value) {
                (FeatureKind::Numeric, Kind::NumberValue(x)) => {
                    transform_numeric(*x, feature.clip, feature.transform).unwrap()
                }
                (FeatureKind::Boolean, Kind::StringValue(word)) => {
                    f64::from(u8::from(artifact.booleans.parse(word).unwrap()))
                }
                (FeatureKind::Categorical, Kind::StringValue(level)) => {
                    f64::from(u8::from(feature.levels[k] == *level))
                }
                other => panic!("unexpected fixture value {other:?}"),
            };
            z += column.coefficient * (x - column.center) / column.scale;
        }
    }
    assert!(
        (score.churn_log_odds - z).abs() < EPS,
        "served {} vs formula {z}",
        score.churn_log_odds
    );
}

#[tokio::test]
async fn new_month_to_month_fiber_customer_churns_more_than_loyal_two_year_customer() {
    // Churn is the positive class: a model with linfa's "majority class is
    // positive" orientation left in would rank these two the other way.
    let app = spawn_app(test_settings()).await;

    let response = app
        .score(vec![
            account("new-fiber", new_fiber_customer()),
            account("loyal-two-year", loyal_two_year_customer()),
        ])
        .await
        .unwrap();

    let (risky, loyal) = (&response.scores[0], &response.scores[1]);
    assert_eq!(risky.error, None);
    assert_eq!(loyal.error, None);
    assert!(
        risky.churn_probability > loyal.churn_probability,
        "new fiber {} vs loyal two-year {}",
        risky.churn_probability,
        loyal.churn_probability
    );
    assert!(risky.churn_probability > 0.5, "{}", risky.churn_probability);
    assert!(loyal.churn_probability < 0.1, "{}", loyal.churn_probability);
    assert_eq!(risky.band(), HealthBand::AtRisk);
    assert_eq!(loyal.band(), HealthBand::Healthy);
    let tenure = |s: &pb::AccountScore| {
        s.attributions
            .iter()
            .find(|a| a.feature == "tenure")
            .unwrap()
            .direction()
    };
    assert_eq!(tenure(risky), Direction::RaisesChurn);
    assert_eq!(tenure(loyal), Direction::LowersChurn);
}

#[tokio::test]
async fn absent_total_charges_is_filled_and_reported_as_imputed() {
    let app = spawn_app(test_settings()).await;
    let info = app.model_info().await;
    let median: f64 = fill_value(&info, "TotalCharges").parse().unwrap();

    let response = app
        .score(vec![
            account("absent", without(customer_7590_vhveg(), "TotalCharges")),
            account(
                "median",
                with(customer_7590_vhveg(), "TotalCharges", number(median)),
            ),
        ])
        .await
        .unwrap();

    let (absent, median) = (&response.scores[0], &response.scores[1]);
    assert_eq!(absent.error, None);
    assert_eq!(absent.imputed_features, vec!["TotalCharges"]);
    assert!(median.imputed_features.is_empty());
    assert_same_score(absent, median);
}

#[tokio::test]
async fn total_charges_with_no_value_set_is_filled_and_reported_as_imputed() {
    let app = spawn_app(test_settings()).await;

    let response = app
        .score(vec![
            account(
                "unset",
                with(customer_7590_vhveg(), "TotalCharges", unset()),
            ),
            account("absent", without(customer_7590_vhveg(), "TotalCharges")),
        ])
        .await
        .unwrap();

    let (unset, absent) = (&response.scores[0], &response.scores[1]);
    assert_eq!(unset.error, None);
    assert_eq!(unset.imputed_features, vec!["TotalCharges"]);
    assert_same_score(unset, absent);
}

#[tokio::test]
async fn empty_string_for_a_categorical_is_filled_and_reported_as_imputed() {
    let app = spawn_app(test_settings()).await;
    let info = app.model_info().await;
    let mode = fill_value(&info, "PaymentMethod");

    let response = app
        .score(vec![
            account(
                "blank",
                with(customer_7590_vhveg(), "PaymentMethod", text("")),
            ),
            account(
                "mode",
                with(customer_7590_vhveg(), "PaymentMethod", text(&mode)),
            ),
        ])
        .await
        .unwrap();

    let (blank, mode) = (&response.scores[0], &response.scores[1]);
    assert_eq!(blank.error, None);
    assert_eq!(blank.imputed_features, vec!["PaymentMethod"]);
    assert!(mode.imputed_features.is_empty());
    assert_same_score(blank, mode);
}

#[tokio::test]
async fn unseen_category_level_is_reported_as_imputed_and_still_scores() {
    let app = spawn_app(test_settings()).await;

    let score = app
        .score_one(account(
            "ten-year",
            with(customer_7590_vhveg(), "Contract", text("Ten year")),
        ))
        .await;

    assert_eq!(score.imputed_features, vec!["Contract"]);
    assert!(score.churn_probability > 0.0 && score.churn_probability < 1.0);
    assert_eq!(score.attributions.len(), 19);
    let total: f64 = score.attributions.iter().map(|a| a.contribution).sum();
    assert!((score.base_value + total - score.churn_log_odds).abs() < EPS);
}

#[tokio::test]
async fn bad_accounts_get_errors_while_good_ones_in_the_same_batch_score_in_order() {
    let app = spawn_app(test_settings()).await;
    let good = customer_7590_vhveg;
    let accounts = vec![
        account("good-1", good()),
        account("nan-tenure", with(good(), "tenure", number(f64::NAN))),
        account(
            "inf-charges",
            with(good(), "MonthlyCharges", number(f64::INFINITY)),
        ),
        account("typo", with(good(), "tenur", number(3.0))),
        account("string-tenure", with(good(), "tenure", text("12"))),
        account("no-tenure", without(good(), "tenure")),
        account("", good()),
        account("good-2", loyal_two_year_customer()),
        account("senior-2", with(good(), "SeniorCitizen", number(2.0))),
        account("good-3", new_fiber_customer()),
        account("bool-tenure", with(good(), "tenure", boolean(true))),
        account("number-contract", with(good(), "Contract", number(2.0))),
    ];
    let ids: Vec<String> = accounts.iter().map(|a| a.account_id.clone()).collect();

    let response = app
        .score(accounts)
        .await
        .expect("a batch with bad accounts still succeeds");

    let returned: Vec<&str> = response
        .scores
        .iter()
        .map(|s| s.account_id.as_str())
        .collect();
    assert_eq!(returned, ids);
    let s = &response.scores;
    for good in [&s[0], &s[7], &s[9]] {
        assert_eq!(good.error, None, "{}", good.account_id);
        assert!(good.churn_probability > 0.0 && good.churn_probability < 1.0);
        assert_eq!(good.attributions.len(), 19);
    }
    assert_account_error(&s[1], AccountErrorReason::InvalidValue, "tenure");
    assert_account_error(&s[2], AccountErrorReason::InvalidValue, "MonthlyCharges");
    assert_account_error(&s[3], AccountErrorReason::UnknownFeature, "tenur");
    assert_account_error(&s[4], AccountErrorReason::WrongType, "tenure");
    assert_account_error(&s[5], AccountErrorReason::MissingFeature, "tenure");
    assert_account_error(&s[6], AccountErrorReason::MissingAccountId, "");
    assert_account_error(&s[8], AccountErrorReason::InvalidValue, "SeniorCitizen");
    assert_account_error(&s[10], AccountErrorReason::WrongType, "tenure");
    assert_account_error(&s[11], AccountErrorReason::WrongType, "Contract");
}

#[tokio::test]
async fn duplicate_account_id_fails_only_the_second_occurrence() {
    let app = spawn_app(test_settings()).await;

    let response = app
        .score(vec![
            account("A-1", customer_7590_vhveg()),
            account("B-2", new_fiber_customer()),
            account("A-1", loyal_two_year_customer()),
        ])
        .await
        .unwrap();

    let s = &response.scores;
    assert_eq!(s[0].error, None);
    assert_eq!(s[1].error, None);
    assert_eq!(s[2].account_id, "A-1");
    assert_account_error(&s[2], AccountErrorReason::DuplicateAccountId, "");
    assert!(s[2].error.as_ref().unwrap().message.contains("A-1"));
}

#[tokio::test]
async fn boolean_features_accept_bools_zero_one_and_yes_no_words() {
    let app = spawn_app(test_settings()).await;
    let senior = |id: &str, value| account(id, with(customer_7590_vhveg(), "SeniorCitizen", value));

    let response = app
        .score(vec![
            senior("bool-true", boolean(true)),
            senior("one", number(1.0)),
            senior("yes", text("Yes")),
            senior("bool-false", boolean(false)),
            senior("zero", number(0.0)),
            senior("no", text("No")),
        ])
        .await
        .unwrap();

    let s = &response.scores;
    for score in s {
        assert_eq!(score.error, None, "{}", score.account_id);
    }
    assert_same_score(&s[0], &s[1]);
    assert_same_score(&s[0], &s[2]);
    assert_same_score(&s[3], &s[4]);
    assert_same_score(&s[3], &s[5]);
    assert!(
        (s[0].churn_log_odds - s[3].churn_log_odds).abs() > 1e-6,
        "true and false score alike"
    );
}

#[tokio::test]
async fn boolean_feature_rejects_numbers_other_than_zero_and_one() {
    let app = spawn_app(test_settings()).await;

    let response = app
        .score(vec![
            account("two", with(customer_7590_vhveg(), "Partner", number(2.0))),
            account(
                "maybe",
                with(customer_7590_vhveg(), "Partner", text("maybe")),
            ),
        ])
        .await
        .unwrap();

    assert_account_error(
        &response.scores[0],
        AccountErrorReason::InvalidValue,
        "Partner",
    );
    assert_account_error(
        &response.scores[1],
        AccountErrorReason::InvalidValue,
        "Partner",
    );
}

#[tokio::test]
async fn max_attributions_returns_only_the_largest_ones() {
    let app = spawn_app(test_settings()).await;
    let full = app
        .score_one(account("7590-VHVEG", customer_7590_vhveg()))
        .await;

    let response = app
        .score_with(vec![account("7590-VHVEG", customer_7590_vhveg())], 3)
        .await
        .unwrap();

    let top = &response.scores[0];
    assert_eq!(top.attributions.len(), 3);
    assert_eq!(top.attributions, full.attributions[..3]);
    let smallest_kept = top.attributions[2].contribution.abs();
    assert!(
        full.attributions[3..]
            .iter()
            .all(|a| a.contribution.abs() <= smallest_kept)
    );
    // Category scores still cover every feature.
    assert_eq!(top.category_scores, full.category_scores);
    assert_eq!(top.churn_log_odds, full.churn_log_odds);
}

#[tokio::test]
async fn empty_batch_is_an_invalid_argument() {
    let app = spawn_app(test_settings()).await;

    let status = app.score(Vec::new()).await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("accounts"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn batch_over_the_limit_is_an_invalid_argument() {
    let mut settings = test_settings();
    settings.max_batch = 5;
    let app = spawn_app(settings).await;
    let batch = |n: usize| -> Vec<pb::Account> {
        (0..n)
            .map(|i| account(&format!("acct-{i}"), customer_7590_vhveg()))
            .collect()
    };

    let over = app.score(batch(6)).await.unwrap_err();
    let at_limit = app.score(batch(5)).await;

    assert_eq!(over.code(), Code::InvalidArgument);
    assert!(over.message().contains("limit of 5"), "{}", over.message());
    assert!(over.message().contains('6'), "{}", over.message());
    assert_eq!(
        at_limit
            .expect("a batch at the limit is served")
            .scores
            .len(),
        5
    );
}

#[tokio::test]
async fn large_batch_scores_every_account_in_request_order() {
    // 2,000 real Telco rows: above the blocking-pool threshold (512).
    let app = spawn_app(test_settings()).await;
    let info = app.model_info().await;
    let accounts = telco_accounts(2_000, &info);
    let ids: Vec<String> = accounts.iter().map(|a| a.account_id.clone()).collect();
    assert_eq!(ids.len(), 2_000);

    let response = app.score(accounts).await.unwrap();

    let returned: Vec<&str> = response
        .scores
        .iter()
        .map(|s| s.account_id.as_str())
        .collect();
    assert_eq!(returned, ids);
    for score in &response.scores {
        assert_eq!(score.error, None, "{}", score.account_id);
        assert!(score.churn_probability > 0.0 && score.churn_probability < 1.0);
        assert_eq!(score.model_version, info.model_version);
    }
    // Rows with a blank TotalCharges (new customers) are filled, the rest are
    // complete.
    for (score, id) in response.scores.iter().zip(&ids) {
        assert!(
            score.imputed_features.is_empty() || score.imputed_features == ["TotalCharges"],
            "{id}: {:?}",
            score.imputed_features
        );
    }
    assert!(
        response
            .scores
            .iter()
            .any(|s| !s.imputed_features.is_empty())
    );
}
