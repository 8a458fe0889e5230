//! Properties that must hold for any input, checked on generated inputs:
//! the parsers of artifacts, templates and CSV files never panic (they
//! accept or refuse with an error), and scoring either refuses a value or
//! gives a probability whose attributions add up to its log-odds.

use std::path::PathBuf;

use healthscore::{
    SHIPPED_MODEL,
    artifact::ModelArtifact,
    dataset::Dataset,
    scoring::{Model, Value},
    template::{FeatureKind, Template},
};
use proptest::prelude::*;

fn telco_template_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("training/templates/telco.toml");
    std::fs::read_to_string(path).unwrap()
}

fn telco_model() -> &'static Model {
    static MODEL: std::sync::OnceLock<Model> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| Model::new(ModelArtifact::from_json(SHIPPED_MODEL, "shipped").unwrap()))
}

/// `text` with a few bytes replaced, removed or inserted at random places,
/// kept as valid UTF-8 where the parser takes `&str`.
fn mutated(text: &str) -> impl Strategy<Value = String> {
    let len = text.len();
    let text = text.to_owned();
    proptest::collection::vec((0..len, any::<u8>(), 0..3u8), 1..8).prop_map(move |edits| {
        let mut bytes = text.clone().into_bytes();
        for (at, byte, op) in edits {
            let at = at.min(bytes.len().saturating_sub(1));
            match op {
                0 => bytes[at] = byte,
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A value as a client might send it, hostile ones included.
fn any_value() -> impl Strategy<Value = Option<OwnedValue>> {
    prop_oneof![
        1 => Just(None),
        4 => prop_oneof![
            any::<f64>(),
            -1e6..1e6f64,
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(-0.0),
        ]
        .prop_map(|x| Some(OwnedValue::Number(x))),
        3 => prop_oneof![
            "[A-Za-z ()-]{0,24}",
            Just("Yes".to_owned()),
            Just("No".to_owned()),
            Just("Month-to-month".to_owned()),
            Just("Two year".to_owned()),
            Just(String::new()),
            Just(" ".to_owned()),
            ".{0,8}",
        ]
        .prop_map(|s| Some(OwnedValue::Text(s))),
        1 => any::<bool>().prop_map(|b| Some(OwnedValue::Bool(b))),
    ]
}

#[derive(Debug, Clone)]
enum OwnedValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl OwnedValue {
    fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Number(x) => Value::Number(*x),
            OwnedValue::Text(s) => Value::Text(s),
            OwnedValue::Bool(b) => Value::Bool(*b),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn artifact_parsing_never_panics_on_damaged_files(text in mutated(SHIPPED_MODEL)) {
        if let Ok(artifact) = ModelArtifact::from_json(&text, "damaged.json") {
            // Whatever loads must be servable.
            let model = Model::new(artifact);
            prop_assert!(model.feature_count() > 0);
        }
    }

    #[test]
    fn artifact_parsing_never_panics_on_any_text(text in ".{0,200}") {
        let _ = ModelArtifact::from_json(&text, "any.json");
    }

    #[test]
    fn template_parsing_never_panics(text in mutated(&telco_template_text())) {
        let _ = Template::from_toml(&text);
    }

    #[test]
    fn csv_reading_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400), keep_header in any::<bool>()) {
        let template = Template::from_toml(&telco_template_text()).unwrap();
        let csv = std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("training/data/telco-customer-churn/Telco-Customer-Churn.csv"))
            .unwrap();
        let header_end = csv.iter().position(|&b| b == b'\n').unwrap() + 1;
        let mut file = if keep_header { csv[..header_end].to_vec() } else { Vec::new() };
        file.extend_from_slice(&body);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzzed.csv");
        std::fs::write(&path, &file).unwrap();
        match Dataset::read(&path, &template, |_| {}) {
            Ok(data) => prop_assert!(data.len() <= body.len()),
            Err(error) => prop_assert!(error.to_string().contains("fuzzed.csv"), "{error}"),
        }
    }

    #[test]
    fn scoring_refuses_or_attributions_add_up_to_the_log_odds(
        values in proptest::collection::vec(any_value(), 19)
    ) {
        let model = telco_model();
        prop_assert_eq!(values.len(), model.feature_count());
        let slots: Vec<Option<Value<'_>>> = values
            .iter()
            .map(|v| v.as_ref().map(OwnedValue::as_value))
            .collect();
        let mut scored = healthscore::scoring::Scored::default();
        match model.score_into(&slots, &mut scored) {
            Ok(()) => {
                let sum: f64 = model.base_value() + scored.attributions.iter().sum::<f64>();
                prop_assert!((sum - scored.log_odds).abs() <= 1e-9 * (1.0 + scored.log_odds.abs()));
                prop_assert!(scored.log_odds.is_finite());
                prop_assert!((0.0..=1.0).contains(&scored.churn_probability));
                prop_assert!((0.0..=100.0).contains(&scored.health_score));
                // A non-finite number is never accepted for a numeric feature.
                for (i, v) in values.iter().enumerate() {
                    if let Some(OwnedValue::Number(x)) = v
                        && model.feature(i).kind == FeatureKind::Numeric
                    {
                        prop_assert!(x.is_finite());
                    }
                }
            }
            Err(error) => {
                // Refusals name the feature at fault.
                let feature = error.feature().map(str::to_owned);
                prop_assert!(feature.is_some_and(|f| model.feature_index(&f).is_some()), "{error}");
            }
        }
    }
}

/// For each Telco feature, a value of its kind: a finite number, a known
/// level or an unseen word, or a boolean; missing where the template fills.
fn valid_values() -> impl Strategy<Value = Vec<Option<OwnedValue>>> {
    let model = telco_model();
    let per_feature: Vec<BoxedStrategy<Option<OwnedValue>>> = (0..model.feature_count())
        .map(|i| {
            let feature = model.feature(i);
            let present: BoxedStrategy<OwnedValue> = match feature.kind {
                FeatureKind::Numeric => (-1e7..1e7f64).prop_map(OwnedValue::Number).boxed(),
                FeatureKind::Categorical => {
                    let levels = feature.levels.clone();
                    prop_oneof![
                        4 => proptest::sample::select(levels).prop_map(OwnedValue::Text),
                        1 => "[a-z]{1,12}".prop_map(OwnedValue::Text),
                    ]
                    .boxed()
                }
                FeatureKind::Boolean => any::<bool>().prop_map(OwnedValue::Bool).boxed(),
            };
            if feature.missing == "reject" {
                present.prop_map(Some).boxed()
            } else {
                proptest::option::weighted(0.8, present).boxed()
            }
        })
        .collect();
    per_feature
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_value_of_the_right_kind_scores_and_adds_up(values in valid_values()) {
        let model = telco_model();
        let slots: Vec<Option<Value<'_>>> = values
            .iter()
            .map(|v| v.as_ref().map(OwnedValue::as_value))
            .collect();
        let mut scored = healthscore::scoring::Scored::default();
        model.score_into(&slots, &mut scored).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let sum: f64 = model.base_value() + scored.attributions.iter().sum::<f64>();
        prop_assert!((sum - scored.log_odds).abs() <= 1e-9 * (1.0 + scored.log_odds.abs()));
        prop_assert!((0.0..=1.0).contains(&scored.churn_probability));
        prop_assert!((scored.health_score - 100.0 * (1.0 - scored.churn_probability)).abs() < 1e-9);
        // Whatever was missing or unseen is listed as imputed.
        for (i, v) in values.iter().enumerate() {
            let unseen = matches!(v, Some(OwnedValue::Text(t)) if !model.feature(i).levels.contains(t));
            if v.is_none() || unseen {
                prop_assert!(scored.imputed.contains(&i), "feature {i} not listed as imputed");
            }
        }
    }
}
