//! GetModelInfo describes the shipped Telco model.

use std::path::Path;

use healthscore::{
    SHIPPED_MODEL, SHIPPED_MODEL_PATH,
    artifact::ModelArtifact,
    grpc::pb::{FeatureCategory, FeatureKind},
    template::{self, Template},
};

use crate::helpers::{spawn_app, test_settings};

const TELCO_FEATURES: [&str; 19] = [
    "gender",
    "SeniorCitizen",
    "Partner",
    "Dependents",
    "tenure",
    "PhoneService",
    "MultipleLines",
    "InternetService",
    "OnlineSecurity",
    "OnlineBackup",
    "DeviceProtection",
    "StreamingTV",
    "StreamingMovies",
    "TechSupport",
    "Contract",
    "PaperlessBilling",
    "PaymentMethod",
    "MonthlyCharges",
    "TotalCharges",
];

fn telco_template() -> Template {
    Template::from_path(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("training/templates/telco.toml"),
    )
    .unwrap()
}

fn kind(kind: template::FeatureKind) -> FeatureKind {
    match kind {
        template::FeatureKind::Numeric => FeatureKind::Numeric,
        template::FeatureKind::Categorical => FeatureKind::Categorical,
        template::FeatureKind::Boolean => FeatureKind::Boolean,
    }
}

fn category(category: template::Category) -> FeatureCategory {
    match category {
        template::Category::Engagement => FeatureCategory::Engagement,
        template::Category::Satisfaction => FeatureCategory::Satisfaction,
        template::Category::Support => FeatureCategory::Support,
        template::Category::Adoption => FeatureCategory::Adoption,
        template::Category::Financial => FeatureCategory::Financial,
        template::Category::Profile => FeatureCategory::Profile,
    }
}

#[tokio::test]
async fn model_info_describes_the_shipped_model_version_and_quality() {
    let shipped = ModelArtifact::from_json(SHIPPED_MODEL, SHIPPED_MODEL_PATH).unwrap();
    let app = spawn_app(test_settings()).await;

    let info = app.model_info().await;

    assert_eq!(info.model_version, shipped.model_version);
    assert!(
        info.model_version.starts_with("telco-churn-"),
        "{}",
        info.model_version
    );
    assert_eq!(info.name, "telco-churn");
    let trained_at = info.trained_at.expect("trained_at is set");
    assert!(trained_at.seconds > 0);
    assert_eq!(trained_at.seconds, shipped.training.trained_at.timestamp());
    assert!(!info.trainer_version.is_empty());
    let metrics = info.test_metrics.expect("test metrics are set");
    // scikit-learn's LogisticRegression(C=1) on the same split scores 0.8438.
    assert!(metrics.roc_auc > 0.83, "ROC AUC {}", metrics.roc_auc);
    assert!(metrics.pr_auc > 0.0 && metrics.pr_auc < 1.0);
    assert_eq!(metrics.rows, 1761);
    assert_eq!(metrics.calibration.len(), 10);
    assert_eq!(
        metrics.calibration.iter().map(|b| b.count).sum::<u64>(),
        metrics.rows
    );
    let data = info.training_data.expect("training data is set");
    assert_eq!(data.rows, 7043);
    assert_eq!(data.train_rows + data.test_rows, data.rows);
    assert_eq!(data.split_method, "stratified");
    let bands = info.band_thresholds.expect("band thresholds are set");
    assert_eq!(bands.healthy_min, 75.0);
    assert_eq!(bands.watch_min, 50.0);
}

#[tokio::test]
async fn model_info_lists_the_telco_features_in_template_order() {
    let template = telco_template();
    let app = spawn_app(test_settings()).await;

    let info = app.model_info().await;

    let names: Vec<&str> = info.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, TELCO_FEATURES);
    assert_eq!(info.features.len(), template.features.len());
    for (served, declared) in info.features.iter().zip(&template.features) {
        assert_eq!(served.name, declared.name);
        assert_eq!(served.kind(), kind(declared.kind), "{}", served.name);
        assert_eq!(
            served.category(),
            category(declared.category),
            "{}",
            served.name
        );
        assert_eq!(served.description, declared.description, "{}", served.name);
        assert_eq!(served.transform, "", "{}", served.name);
        if served.kind() == FeatureKind::Categorical {
            assert!(
                served.levels.len() >= 2,
                "{}: {:?}",
                served.name,
                served.levels
            );
        } else {
            assert!(
                served.levels.is_empty(),
                "{}: {:?}",
                served.name,
                served.levels
            );
        }
    }
}

#[tokio::test]
async fn model_info_gives_levels_and_missing_value_policies() {
    let app = spawn_app(test_settings()).await;

    let info = app.model_info().await;

    let feature = |name: &str| info.features.iter().find(|f| f.name == name).unwrap();
    assert_eq!(
        feature("Contract").levels,
        ["Month-to-month", "One year", "Two year"]
    );
    assert_eq!(
        feature("InternetService").levels,
        ["DSL", "Fiber optic", "No"]
    );
    assert_eq!(feature("gender").levels, ["Female", "Male"]);
    assert_eq!(
        feature("PaymentMethod").levels,
        [
            "Bank transfer (automatic)",
            "Credit card (automatic)",
            "Electronic check",
            "Mailed check"
        ]
    );

    let total = feature("TotalCharges");
    assert!(total.fills_missing);
    let median: f64 = total.fill_value.parse().expect("a numeric fill value");
    assert!(median > 0.0, "{median}");
    let tenure = feature("tenure");
    assert!(!tenure.fills_missing);
    assert_eq!(tenure.fill_value, "");
    let contract = feature("Contract");
    assert!(contract.fills_missing);
    assert!(
        contract.levels.contains(&contract.fill_value),
        "{}",
        contract.fill_value
    );
}
