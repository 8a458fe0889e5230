//! The training template: the health-score framework as a TOML file.
//!
//! A template names the columns of a training CSV (id, outcome, optional
//! date, ignored columns) and declares each feature: how it is read, which
//! category of the framework it belongs to, how it is transformed and how a
//! missing value is handled. This module parses and validates templates; it
//! knows nothing of data.

use std::{collections::HashSet, fmt, path::Path};

use serde::{Deserialize, Serialize};

use crate::{error::TemplateError, signals::SignalFeature};

/// A parsed, validated training template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Model name; the model version is derived from it.
    pub name: String,
    /// What the model predicts, for people.
    #[serde(default)]
    pub description: String,
    /// Column holding the account id; never a feature.
    pub id_column: String,
    /// The outcome column and which of its values mean churn.
    pub outcome: OutcomeSpec,
    /// Column holding the observation date; when set the test split is the
    /// latest rows instead of a stratified random sample.
    #[serde(default)]
    pub date_column: Option<String>,
    /// Columns present in the data that are neither features nor id/outcome.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Cell values (after trimming spaces) that mean "missing". Default: `[""]`.
    #[serde(default = "default_missing_values")]
    pub missing_values: Vec<String>,
    /// Words read as true/false for boolean features.
    #[serde(default)]
    pub booleans: BooleanWords,
    /// How the held-out test split is drawn.
    #[serde(default)]
    pub split: SplitSpec,
    /// Regularisation and solver settings.
    #[serde(default)]
    pub fit: FitSpec,
    /// Health-score thresholds between bands.
    #[serde(default)]
    pub bands: BandThresholds,
    /// Thresholds of the data checks that warn before training.
    #[serde(default)]
    pub checks: ChecksSpec,
    /// The features, in model order.
    #[serde(rename = "feature")]
    pub features: Vec<FeatureSpec>,
    /// Settings for building point-in-time training rows from raw history;
    /// training ignores them, and [`crate::history`] parses and checks them.
    #[serde(default)]
    pub history: Option<toml::Table>,
}

/// The outcome column and its labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeSpec {
    /// Column name.
    pub column: String,
    /// Values meaning the account churned.
    #[serde(deserialize_with = "one_or_many")]
    pub positive: Vec<String>,
    /// Values meaning the account stayed. Any other value is an error.
    #[serde(deserialize_with = "one_or_many")]
    pub negative: Vec<String>,
}

/// Words accepted as booleans (compared without regard to case).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BooleanWords {
    /// Read as true. Default: 1, true, yes, y, t.
    #[serde(default = "default_true_words")]
    pub true_values: Vec<String>,
    /// Read as false. Default: 0, false, no, n, f.
    #[serde(default = "default_false_words")]
    pub false_values: Vec<String>,
}

impl Default for BooleanWords {
    fn default() -> Self {
        Self {
            true_values: default_true_words(),
            false_values: default_false_words(),
        }
    }
}

impl BooleanWords {
    /// Reads `word` as a boolean, or `None` when it is neither word list.
    pub fn parse(&self, word: &str) -> Option<bool> {
        let word = word.trim();
        if self
            .true_values
            .iter()
            .any(|t| t.eq_ignore_ascii_case(word))
        {
            Some(true)
        } else if self
            .false_values
            .iter()
            .any(|f| f.eq_ignore_ascii_case(word))
        {
            Some(false)
        } else {
            None
        }
    }
}

/// Test split settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Share of rows held out for testing. Default 0.25.
    #[serde(default = "default_test_fraction")]
    pub test_fraction: f64,
    /// Seed of the stratified shuffle. Default 0.
    #[serde(default)]
    pub seed: u64,
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self {
            test_fraction: default_test_fraction(),
            seed: 0,
        }
    }
}

/// Logistic-regression settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitSpec {
    /// Inverse L2 strength, as scikit-learn's `C`. Default 1.0.
    #[serde(default = "default_c")]
    pub c: f64,
    /// Most Newton steps of the solver. Default 1000 (a fit takes 5-10).
    #[serde(default = "default_max_iterations")]
    pub max_iterations: u64,
    /// Stop when every component of the gradient of the objective (mean
    /// log-loss per training row plus the L2 penalty) is at most this, the
    /// test of scikit-learn's lbfgs. Default 1e-6.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Candidate values of `c`; when given, cross-validation on the training
    /// rows picks the one with the lowest mean validation log loss, and `c`
    /// is ignored. Default: none, `c` is used as it is.
    #[serde(default)]
    pub c_grid: Option<Vec<f64>>,
    /// Folds of that cross-validation: time-ordered when the template names
    /// a date column, stratified otherwise. Default 5.
    #[serde(default = "default_cv_folds")]
    pub cv_folds: u32,
}

/// Thresholds of the checks that warn about the training data (warnings
/// are printed and recorded in the artifact; they never stop training).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksSpec {
    /// Warn when an untransformed numeric feature's skewness exceeds this
    /// in absolute value. Default 2.
    #[serde(default = "default_skewness")]
    pub skewness: f64,
    /// Warn about pairs of model columns correlated beyond this in absolute
    /// value. Default 0.9.
    #[serde(default = "default_correlation")]
    pub correlation: f64,
    /// Fit each group of columns correlated beyond `correlation` as one
    /// column: the mean of its standardised members, each turned to move
    /// with the first. The artifact keeps a coefficient per member (their
    /// shares of the group's), so scoring and attributions are unchanged.
    /// Default false: the groups are only warned about.
    #[serde(default)]
    pub average_correlated: bool,
    /// Warn when one value covers more than this share of a feature's
    /// training rows (almost no variance). Default 0.99.
    #[serde(default = "default_dominant_share")]
    pub dominant_share: f64,
    /// Warn when the rarer outcome is below this share of the rows.
    /// Default 0.02.
    #[serde(default = "default_minority_share")]
    pub minority_share: f64,
    /// Warn when there are fewer rarer-outcome rows than this many per model
    /// column (too few events to learn every coefficient). Default 10.
    #[serde(default = "default_events_per_column")]
    pub events_per_column: f64,
}

impl Default for ChecksSpec {
    fn default() -> Self {
        Self {
            skewness: default_skewness(),
            correlation: default_correlation(),
            average_correlated: false,
            dominant_share: default_dominant_share(),
            minority_share: default_minority_share(),
            events_per_column: default_events_per_column(),
        }
    }
}

impl Default for FitSpec {
    fn default() -> Self {
        Self {
            c: default_c(),
            max_iterations: default_max_iterations(),
            tolerance: default_tolerance(),
            c_grid: None,
            cv_folds: default_cv_folds(),
        }
    }
}

/// Cut points on the 0-100 health score between bands.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BandThresholds {
    /// Health at or above this is HEALTHY. Default 75 (churn below 25 %).
    #[serde(default = "default_healthy_min")]
    pub healthy_min: f64,
    /// Health at or above this, below `healthy_min`, is WATCH; below it is
    /// AT_RISK. Default 50 (churn below 50 %).
    #[serde(default = "default_watch_min")]
    pub watch_min: f64,
}

impl Default for BandThresholds {
    fn default() -> Self {
        Self {
            healthy_min: default_healthy_min(),
            watch_min: default_watch_min(),
        }
    }
}

impl BandThresholds {
    /// Checks that `0 <= watch_min <= healthy_min <= 100`.
    pub fn check(&self) -> Result<(), String> {
        let ordered = 0.0 <= self.watch_min
            && self.watch_min <= self.healthy_min
            && self.healthy_min <= 100.0;
        if ordered {
            Ok(())
        } else {
            Err(format!(
                "band thresholds must satisfy 0 <= watch_min <= healthy_min <= 100, \
                 got watch_min = {}, healthy_min = {}",
                self.watch_min, self.healthy_min
            ))
        }
    }
}

/// One feature of the template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// The CSV column and the feature name used by the API.
    pub name: String,
    /// How the value is read.
    pub kind: FeatureKind,
    /// Where the feature sits in the health-score framework.
    pub category: Category,
    /// Transform applied before standardisation (numeric features only).
    #[serde(default)]
    pub transform: Transform,
    /// Clip numeric values into `[low, high]` before the transform.
    #[serde(default)]
    pub clip: Option<[f64; 2]>,
    /// How a missing value is handled. Default: reject.
    #[serde(default)]
    pub missing: MissingPolicy,
    /// What the feature means, for people.
    #[serde(default)]
    pub description: String,
    /// When set, the feature is derived from signals (numeric only) rather
    /// than sent by clients: e.g. `{ kind = "login", aggregate = "count",
    /// window_days = 28 }`.
    #[serde(default)]
    pub signal: Option<SignalFeature>,
}

/// How a feature's value is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// A finite real number.
    Numeric,
    /// One of a set of levels, one-hot encoded.
    Categorical,
    /// True or false, encoded as 1 or 0.
    Boolean,
}

/// The health-score framework's feature categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Use of the product: logins, active users, tenure.
    Engagement,
    /// Stated satisfaction: CSAT, NPS.
    Satisfaction,
    /// Support activity: tickets, escalations, time to resolve.
    Support,
    /// Breadth of products and features taken up.
    Adoption,
    /// Plan, contract, billing and value.
    Financial,
    /// Who the customer is.
    Profile,
}

impl Category {
    /// Every category, in display order.
    pub const ALL: [Category; 6] = [
        Category::Engagement,
        Category::Satisfaction,
        Category::Support,
        Category::Adoption,
        Category::Financial,
        Category::Profile,
    ];
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Category::Engagement => "engagement",
            Category::Satisfaction => "satisfaction",
            Category::Support => "support",
            Category::Adoption => "adoption",
            Category::Financial => "financial",
            Category::Profile => "profile",
        };
        f.write_str(name)
    }
}

/// A transform applied to a numeric value after clipping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// The value as it is.
    #[default]
    None,
    /// `ln(1 + x)`, for counts and amounts with a long right tail; needs
    /// `x > -1`.
    Log1p,
}

/// How a missing value is handled.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// A missing value is an error (in training data and when scoring).
    #[default]
    Reject,
    /// Fill with the training median (numeric features).
    Median,
    /// Fill with the most frequent training value (categorical, boolean).
    Mode,
    /// Fill with this value.
    Constant(ConstantFill),
}

/// A constant fill value; its type must match the feature's kind.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConstantFill {
    /// For numeric features.
    Number(f64),
    /// For boolean features.
    Bool(bool),
    /// For categorical features (or a boolean word).
    Text(String),
}

impl Template {
    /// Reads and validates a template file.
    ///
    /// # Errors
    /// [`TemplateError`] naming the file and, for syntax and unknown keys,
    /// the line and column; or naming the inconsistent setting.
    pub fn from_path(path: &Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|error| TemplateError::Io {
            path: path.to_owned(),
            error,
        })?;
        Self::from_toml(&text).map_err(|e| e.with_path(path))
    }

    /// Parses and validates a template from TOML text.
    ///
    /// # Errors
    /// [`TemplateError::Parse`] for TOML and schema errors (with line and
    /// column), [`TemplateError::Invalid`] for inconsistent settings.
    pub fn from_toml(text: &str) -> Result<Self, TemplateError> {
        let template: Template = toml::from_str(text).map_err(|e| TemplateError::Parse {
            path: None,
            message: e.to_string(),
        })?;
        template.validate()?;
        Ok(template)
    }

    fn validate(&self) -> Result<(), TemplateError> {
        let invalid = |message: String| {
            Err(TemplateError::Invalid {
                path: None,
                message,
            })
        };
        if self.name.trim().is_empty() {
            return invalid("`name` must not be empty".into());
        }
        if self.features.is_empty() {
            return invalid("the template declares no [[feature]]".into());
        }
        if self.outcome.positive.is_empty() || self.outcome.negative.is_empty() {
            return invalid("`outcome.positive` and `outcome.negative` need a value each".into());
        }
        if let Some(shared) = self
            .outcome
            .positive
            .iter()
            .find(|p| self.outcome.negative.contains(p))
        {
            return invalid(format!(
                "outcome value {shared:?} is listed as both positive and negative"
            ));
        }
        if !(self.split.test_fraction > 0.0 && self.split.test_fraction < 1.0) {
            return invalid(format!(
                "`split.test_fraction` must be between 0 and 1, got {}",
                self.split.test_fraction
            ));
        }
        if !(self.fit.c.is_finite() && self.fit.c > 0.0) {
            return invalid(format!(
                "`fit.c` must be a positive number, got {}",
                self.fit.c
            ));
        }
        if !(self.fit.tolerance.is_finite() && self.fit.tolerance > 0.0) {
            return invalid(format!(
                "`fit.tolerance` must be a positive number, got {}",
                self.fit.tolerance
            ));
        }
        if self.fit.max_iterations == 0 {
            return invalid("`fit.max_iterations` must be at least 1".into());
        }
        if self.fit.c_grid.as_ref().is_some_and(Vec::is_empty) {
            return invalid("`fit.c_grid` is empty; list candidates of C, or leave it out".into());
        }
        if let Some(c) = self
            .fit
            .c_grid
            .iter()
            .flatten()
            .find(|c| !(c.is_finite() && **c > 0.0))
        {
            return invalid(format!(
                "`fit.c_grid` holds {c}; every candidate must be a positive number"
            ));
        }
        if !(2..=50).contains(&self.fit.cv_folds) {
            return invalid(format!(
                "`fit.cv_folds` must be 2 to 50, got {}",
                self.fit.cv_folds
            ));
        }
        let checks = &self.checks;
        for (name, value, low, high) in [
            ("skewness", checks.skewness, 0.0, f64::INFINITY),
            ("correlation", checks.correlation, 0.0, 1.0),
            ("dominant_share", checks.dominant_share, 0.0, 1.0),
            ("minority_share", checks.minority_share, 0.0, 0.5),
            (
                "events_per_column",
                checks.events_per_column,
                0.0,
                f64::INFINITY,
            ),
        ] {
            if !(value > low && value <= high) {
                return invalid(format!(
                    "`checks.{name}` must be above {low} and at most {high}, got {value}"
                ));
            }
        }
        self.bands.check().or_else(invalid)?;

        let mut seen = HashSet::new();
        let reserved = [
            Some(&self.id_column),
            Some(&self.outcome.column),
            self.date_column.as_ref(),
        ];
        for column in reserved.into_iter().flatten().chain(&self.ignore) {
            if !seen.insert(column.as_str()) {
                return invalid(format!("column {column:?} is named twice in the template"));
            }
        }
        for feature in &self.features {
            if !seen.insert(feature.name.as_str()) {
                return invalid(format!(
                    "feature {:?} is also named elsewhere in the template",
                    feature.name
                ));
            }
            feature.validate().or_else(invalid)?;
        }
        // One-hot columns are labelled `feature=level`: a feature named so
        // would share its label with a level's column.
        for feature in &self.features {
            if let Some((owner, level)) = feature.name.split_once('=')
                && self
                    .features
                    .iter()
                    .any(|f| f.name == owner && f.kind == FeatureKind::Categorical)
            {
                return invalid(format!(
                    "feature {:?} would share its model column label with level {level:?} of \
                     categorical feature {owner:?} (one-hot columns are labelled \
                     feature=level); rename it",
                    feature.name
                ));
            }
        }
        Ok(())
    }
}

impl FeatureSpec {
    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.trim().is_empty() {
            return Err("a feature has an empty name".into());
        }
        let numeric = self.kind == FeatureKind::Numeric;
        if let Some(signal) = &self.signal {
            if !numeric {
                return Err(format!("feature {name:?}: signal features are numeric"));
            }
            signal
                .check()
                .map_err(|problem| format!("feature {name:?}: {problem}"))?;
        }
        if !numeric && self.transform != Transform::None {
            return Err(format!(
                "feature {name:?}: transforms apply to numeric features only"
            ));
        }
        if let Some([low, high]) = self.clip {
            if !numeric {
                return Err(format!(
                    "feature {name:?}: clip applies to numeric features only"
                ));
            }
            if !(low.is_finite() && high.is_finite() && low < high) {
                return Err(format!(
                    "feature {name:?}: clip needs finite low < high, got [{low}, {high}]"
                ));
            }
        }
        match (&self.missing, self.kind) {
            (MissingPolicy::Median, FeatureKind::Numeric) => Ok(()),
            (MissingPolicy::Median, _) => Err(format!(
                "feature {name:?}: missing = \"median\" needs a numeric feature; use \"mode\""
            )),
            (MissingPolicy::Mode, FeatureKind::Numeric) => Err(format!(
                "feature {name:?}: missing = \"mode\" is for categorical and boolean features; \
                 use \"median\""
            )),
            (MissingPolicy::Constant(fill), kind) => {
                let fits = matches!(
                    (fill, kind),
                    (ConstantFill::Number(v), FeatureKind::Numeric) if v.is_finite()
                ) || matches!(
                    (fill, kind),
                    (ConstantFill::Text(_), FeatureKind::Categorical)
                        | (ConstantFill::Bool(_), FeatureKind::Boolean)
                );
                if fits {
                    Ok(())
                } else {
                    Err(format!(
                        "feature {name:?}: constant fill {fill:?} does not suit a {kind:?} feature"
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// The transform as text, e.g. `clip(0, 100) then log1p`; empty if none.
    pub fn transform_label(&self) -> String {
        transform_label(self.clip, self.transform)
    }
}

/// Describes a clip and transform pair for people, e.g. `clip(0, 5), log1p`.
pub fn transform_label(clip: Option<[f64; 2]>, transform: Transform) -> String {
    let mut parts = Vec::new();
    if let Some([low, high]) = clip {
        parts.push(format!("clip({low}, {high})"));
    }
    if transform == Transform::Log1p {
        parts.push("log1p".to_owned());
    }
    parts.join(", ")
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(value) => vec![value],
        OneOrMany::Many(values) => values,
    })
}

fn default_missing_values() -> Vec<String> {
    vec![String::new()]
}
fn default_true_words() -> Vec<String> {
    ["1", "true", "yes", "y", "t"].map(String::from).to_vec()
}
fn default_false_words() -> Vec<String> {
    ["0", "false", "no", "n", "f"].map(String::from).to_vec()
}
fn default_test_fraction() -> f64 {
    0.25
}
fn default_c() -> f64 {
    1.0
}
fn default_max_iterations() -> u64 {
    1000
}
fn default_cv_folds() -> u32 {
    5
}
fn default_skewness() -> f64 {
    2.0
}
fn default_correlation() -> f64 {
    0.9
}
fn default_dominant_share() -> f64 {
    0.99
}
fn default_minority_share() -> f64 {
    0.02
}
fn default_events_per_column() -> f64 {
    10.0
}
fn default_tolerance() -> f64 {
    1e-6
}
fn default_healthy_min() -> f64 {
    75.0
}
fn default_watch_min() -> f64 {
    50.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        name = "t"
        id_column = "id"
        outcome = { column = "churn", positive = "yes", negative = ["no"] }

        [[feature]]
        name = "logins"
        kind = "numeric"
        category = "engagement"
    "#;

    #[test]
    fn minimal_template_gets_sensible_defaults() {
        let t = Template::from_toml(MINIMAL).unwrap();
        assert_eq!(t.split.test_fraction, 0.25);
        assert_eq!(t.fit.c, 1.0);
        assert_eq!(t.features[0].missing, MissingPolicy::Reject);
        assert_eq!(t.outcome.positive, vec!["yes"]);
        assert_eq!(t.missing_values, vec![""]);
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let text = format!("{MINIMAL}\ncolour = \"red\"\n");
        let err = Template::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn missing_policy_must_suit_the_kind() {
        let text = MINIMAL.replace(
            "category = \"engagement\"",
            "category = \"engagement\"\nmissing = \"mode\"",
        );
        let err = Template::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("median"), "{err}");
    }

    #[test]
    fn constant_fill_parses_by_type() {
        let text = MINIMAL.replace(
            "category = \"engagement\"",
            "category = \"engagement\"\nmissing = { constant = 0 }",
        );
        let t = Template::from_toml(&text).unwrap();
        assert_eq!(
            t.features[0].missing,
            MissingPolicy::Constant(ConstantFill::Number(0.0))
        );

        let text = MINIMAL.replace(
            "category = \"engagement\"",
            "category = \"engagement\"\nmissing = { constant = \"none\" }",
        );
        let err = Template::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("does not suit"), "{err}");
    }

    #[test]
    fn duplicate_feature_is_an_error() {
        let text = format!(
            "{MINIMAL}\n[[feature]]\nname = \"logins\"\nkind = \"numeric\"\ncategory = \"support\"\n"
        );
        let err = Template::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("logins"), "{err}");
    }

    #[test]
    fn bad_thresholds_are_rejected() {
        let text = format!("{MINIMAL}\n[bands]\nhealthy_min = 40.0\nwatch_min = 60.0\n");
        assert!(Template::from_toml(&text).is_err());
    }

    #[test]
    fn boolean_words_ignore_case() {
        let words = BooleanWords::default();
        assert_eq!(words.parse("YES"), Some(true));
        assert_eq!(words.parse(" 0 "), Some(false));
        assert_eq!(words.parse("maybe"), None);
    }
}
