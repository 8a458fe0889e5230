//! The model artifact: a versioned JSON file holding everything needed to
//! score exactly as training did. It is the project's own format: the
//! coefficients are copied out of the solver's solution, so serving needs
//! no solver and the file outlives solver upgrades.
//!
//! Each model input column is scored as `z = (x - center) / scale`; the churn
//! log-odds are `intercept + Σ coefficient · z`. `training_mean` is the mean
//! of `z` over the training rows, the reference point of attributions.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    error::ArtifactError,
    metrics::TestMetrics,
    scoring::transform_numeric,
    signals::SignalFeature,
    template::{BandThresholds, BooleanWords, Category, FeatureKind, Transform},
};

/// The `format` tag every artifact carries.
pub const FORMAT: &str = "healthscore.model";
/// The artifact layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A trained churn model as stored on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelArtifact {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`] for files this build writes.
    pub format_version: u32,
    /// Unique version: the template name and a digest of the fitted model.
    pub model_version: String,
    /// Model name from the template.
    pub name: String,
    /// What the model predicts.
    pub description: String,
    /// Boolean words accepted when a boolean feature arrives as text.
    pub booleans: BooleanWords,
    /// The model's inputs, in order.
    pub features: Vec<FeatureModel>,
    /// Intercept of the churn log-odds.
    pub intercept: f64,
    /// Health-score thresholds between bands.
    pub bands: BandThresholds,
    /// Where the model came from and how well it did.
    pub training: TrainingMetadata,
}

/// One source feature and the model columns it becomes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureModel {
    /// Feature name, as sent by clients.
    pub name: String,
    /// How the value is read.
    pub kind: FeatureKind,
    /// Framework category.
    pub category: Category,
    /// What it means.
    pub description: String,
    /// Clip range applied first (numeric only).
    pub clip: Option<[f64; 2]>,
    /// Transform applied after clipping (numeric only).
    pub transform: Transform,
    /// The template's missing-value policy, for people: reject, median,
    /// mode or constant.
    pub missing: String,
    /// The value that replaces a missing one; absent when missing rejects.
    pub fill: Option<FillValue>,
    /// Known levels, in column order (categorical only).
    pub levels: Vec<String>,
    /// Model columns: one for numeric and boolean features, one per level
    /// for categorical features.
    pub columns: Vec<ColumnModel>,
    /// The signal aggregate this feature is derived from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalFeature>,
}

/// A fill value, typed by the feature's kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FillValue {
    /// Numeric fill (after no transform: the raw value).
    Number(f64),
    /// Boolean fill.
    Bool(bool),
    /// A categorical level.
    Level(String),
}

impl std::fmt::Display for FillValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FillValue::Number(v) => write!(f, "{v}"),
            FillValue::Bool(b) => write!(f, "{b}"),
            FillValue::Level(level) => f.write_str(level),
        }
    }
}

/// One column of the design matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnModel {
    /// The feature name, or `feature=level` for a one-hot column.
    pub label: String,
    /// Subtracted before scaling (training mean; 0 for one-hot columns).
    pub center: f64,
    /// Divisor after centring (training standard deviation; 1 for one-hot).
    pub scale: f64,
    /// Coefficient on the scaled column, in churn log-odds.
    pub coefficient: f64,
    /// Mean of the scaled column over the training rows.
    pub training_mean: f64,
}

/// Provenance and held-out quality of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingMetadata {
    /// File name of the training data.
    pub data_file: String,
    /// SHA-256 of the training data file, hex.
    pub data_sha256: String,
    /// SHA-256 of the template file, hex.
    pub template_sha256: String,
    /// When training finished.
    pub trained_at: DateTime<Utc>,
    /// healthscore version that trained the model.
    pub trainer_version: String,
    /// Data rows read.
    pub rows: u64,
    /// Rows used to fit.
    pub train_rows: u64,
    /// Rows held out.
    pub test_rows: u64,
    /// Churned rows among all rows.
    pub positives: u64,
    /// Share of churned rows.
    pub positive_rate: f64,
    /// `stratified` or `time`.
    pub split_method: String,
    /// Share of rows held out.
    pub test_fraction: f64,
    /// Training rows left out of a time split because their label window
    /// reaches into the test period (rows built from raw history).
    #[serde(default)]
    pub purged_train_rows: u64,
    /// Seed of the stratified split.
    pub seed: u64,
    /// Inverse L2 strength (scikit-learn's C).
    pub c: f64,
    /// Metrics on the held-out rows.
    pub test_metrics: TestMetrics,
    /// Standard error of the intercept (0 in artifacts from before it was
    /// recorded).
    #[serde(default)]
    pub intercept_standard_error: f64,
    /// Every fitted coefficient with its uncertainty and effect, in model
    /// column order: one per model column, except that an averaged group has
    /// one in its first member's place (empty in artifacts from before it
    /// was recorded).
    #[serde(default)]
    pub coefficients: Vec<CoefficientStat>,
    /// How `c` was chosen, when the template gave candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_validation: Option<CrossValidation>,
    /// What the data checks warned about.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Groups of correlated columns fitted as one averaged column
    /// (`checks.average_correlated`); their members' coefficients in
    /// `features` are the group's, shared out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub averaged_groups: Vec<AveragedGroup>,
}

/// A group of model columns fitted as one: the mean of its standardised
/// members, each turned to move with the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AveragedGroup {
    /// The fitted column, `mean(a, -b, ...)` (a minus marks a member that
    /// moves against the first).
    pub label: String,
    /// Churn log-odds per standard deviation of the averaged column.
    pub coefficient: f64,
    /// Standard deviation of the members' weighted sum on the training rows.
    pub scale: f64,
    /// The members, in model column order.
    pub members: Vec<AveragedMember>,
}

/// One member of an [`AveragedGroup`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AveragedMember {
    /// The model column's label.
    pub column: String,
    /// Its weight in the sum: its direction over the group's size times its
    /// standard deviation. Its coefficient is `coefficient · weight / scale`.
    pub weight: f64,
}

/// The cross-validation that chose the regularisation strength.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossValidation {
    /// `time` (each fold validates on a later block than it trains on) or
    /// `stratified`.
    pub method: String,
    /// Folds that were evaluated.
    pub folds: u32,
    /// Folds left out because they could not be fitted or validated (one
    /// outcome only, or a feature constant in their fit rows).
    #[serde(default)]
    pub skipped_folds: u32,
    /// Each candidate's mean validation figures.
    pub candidates: Vec<CvCandidate>,
    /// The `c` chosen: the lowest mean validation log loss.
    pub chosen_c: f64,
}

impl CrossValidation {
    /// A sentence on the folds that were skipped and why; `None` when none
    /// were.
    pub fn skipped_note(&self) -> Option<String> {
        (self.skipped_folds > 0).then(|| {
            format!(
                "{} more folds skipped: a fold needs both outcomes in its fit and validation \
                 rows, and every feature and averaged member varying in its fit rows",
                self.skipped_folds
            )
        })
    }
}

/// One candidate `c` and how it did across the folds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvCandidate {
    /// Inverse L2 strength.
    pub c: f64,
    /// Mean validation log loss over the folds.
    pub mean_log_loss: f64,
    /// Mean validation ROC AUC over the folds.
    pub mean_roc_auc: f64,
}

/// A fitted coefficient with its uncertainty and what it means for
/// retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoefficientStat {
    /// The source feature.
    pub feature: String,
    /// The model column (`tenure`, `Contract=Two year`).
    pub column: String,
    /// Churn log-odds per unit of the standardised column.
    pub coefficient: f64,
    /// Its standard error, from the inverse penalised Fisher information.
    pub standard_error: f64,
    /// `coefficient − 1.96 · standard_error`.
    pub lower_95: f64,
    /// `coefficient + 1.96 · standard_error`.
    pub upper_95: f64,
    /// Change in the average training account's retention probability when
    /// this column moves up by one standard deviation of its training values
    /// (negative: retention falls).
    pub retention_change_per_sd: f64,
}

impl ModelArtifact {
    /// Reads and checks an artifact file.
    ///
    /// # Errors
    /// [`ArtifactError`] naming the file, and the line and column or the
    /// inconsistent field.
    pub fn load(path: &Path) -> Result<Self, ArtifactError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ArtifactError::Io {
            path: shown.clone(),
            error,
        })?;
        Self::from_json(&text, &shown)
    }

    /// Parses and checks an artifact from JSON text; `origin` names it in
    /// errors.
    ///
    /// # Errors
    /// As [`ModelArtifact::load`].
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ArtifactError> {
        // Read the format tag first, so a file from a future version gets a
        // clear "unsupported format" rather than an unknown-field error.
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            format_version: Option<u32>,
        }
        let parse_error = |e: serde_json::Error| ArtifactError::Parse {
            path: origin.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        };
        let header: Header = serde_json::from_str(text).map_err(parse_error)?;
        if header.format.as_deref() != Some(FORMAT) || header.format_version != Some(FORMAT_VERSION)
        {
            return Err(ArtifactError::Format {
                path: origin.to_owned(),
                found: format!(
                    "{} v{}",
                    header.format.as_deref().unwrap_or("<none>"),
                    header
                        .format_version
                        .map_or("<none>".into(), |v| v.to_string())
                ),
                expected: format!("{FORMAT} v{FORMAT_VERSION}"),
            });
        }
        let artifact: ModelArtifact = serde_json::from_str(text).map_err(parse_error)?;
        artifact.check().map_err(|message| ArtifactError::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(artifact)
    }

    /// Whether `other` scores every account exactly as this artifact does:
    /// the same features, intercept, bands and boolean words.
    pub fn scores_like(&self, other: &ModelArtifact) -> bool {
        self.features == other.features
            && self.intercept == other.intercept
            && self.bands == other.bands
            && self.booleans == other.booleans
    }

    /// The artifact as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut text =
            serde_json::to_string_pretty(self).expect("an artifact holds only finite numbers");
        text.push('\n');
        text
    }

    /// Checks that the artifact can be served exactly.
    ///
    /// # Errors
    /// A sentence naming the first inconsistent field or feature.
    pub fn check(&self) -> Result<(), String> {
        if self.model_version.trim().is_empty() {
            return Err("model_version is empty".into());
        }
        if self.features.is_empty() {
            return Err("the model has no features".into());
        }
        if !self.intercept.is_finite() {
            return Err(format!("intercept is not finite ({})", self.intercept));
        }
        self.bands.check()?;
        let mut names = std::collections::HashSet::new();
        for feature in &self.features {
            if !names.insert(feature.name.as_str()) {
                return Err(format!("feature {:?} appears twice", feature.name));
            }
            feature
                .check()
                .map_err(|problem| format!("feature {:?}: {problem}", feature.name))?;
        }
        self.check_averaged_groups()?;
        let m = &self.training.test_metrics;
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        if !(unit(m.roc_auc) && unit(m.pr_auc) && unit(m.brier_score) && m.log_loss >= 0.0) {
            return Err("test metrics are out of range".into());
        }
        Ok(())
    }
}

impl ModelArtifact {
    /// Every averaged group's members must be distinct model columns whose
    /// coefficients are the group's, shared out by weight, so the record of
    /// the fit and the served model agree.
    fn check_averaged_groups(&self) -> Result<(), String> {
        let columns: std::collections::HashMap<&str, (FeatureKind, &ColumnModel)> = self
            .features
            .iter()
            .flat_map(|f| {
                f.columns
                    .iter()
                    .map(move |c| (c.label.as_str(), (f.kind, c)))
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for group in &self.training.averaged_groups {
            let named = |problem: String| format!("averaged group {:?}: {problem}", group.label);
            if group.members.len() < 2 {
                return Err(named("it needs at least two members".into()));
            }
            let members: Vec<String> = group
                .members
                .iter()
                .map(|m| format!("{}{}", if m.weight < 0.0 { "-" } else { "" }, m.column))
                .collect();
            let label = format!("mean({})", members.join(", "));
            if group.label != label {
                return Err(named(format!(
                    "its members and their directions make it {label:?}"
                )));
            }
            if !(group.coefficient.is_finite() && group.scale.is_finite() && group.scale > 0.0) {
                return Err(named(
                    "it needs a finite coefficient and a positive scale".into(),
                ));
            }
            for member in &group.members {
                if !seen.insert(member.column.as_str()) {
                    return Err(named(format!(
                        "column {:?} is averaged twice",
                        member.column
                    )));
                }
                let Some(&(kind, column)) = columns.get(member.column.as_str()) else {
                    return Err(named(format!(
                        "member {:?} is not a model column",
                        member.column
                    )));
                };
                // A member's weight is its direction over the group's size
                // times its training standard deviation: 1 for standardised
                // columns, that of a 0/1 level for one-hot ones.
                let m = column.training_mean;
                let sd = if kind == FeatureKind::Categorical {
                    (m * (1.0 - m)).max(0.0).sqrt()
                } else {
                    1.0
                };
                let size = member.weight.abs() * group.members.len() as f64 * sd;
                if (size - 1.0).abs() > 1e-6 || size.is_nan() {
                    return Err(named(format!(
                        "column {:?} has weight {}, which does not fit a group of {} members \
                         (a member's weight is ±1 over the group size times its standard \
                         deviation)",
                        member.column,
                        shown(member.weight),
                        group.members.len()
                    )));
                }
                let served = column.coefficient;
                let shared = group.coefficient * member.weight / group.scale;
                if !(member.weight.is_finite()
                    && (served - shared).abs() <= 1e-9 * served.abs().max(1.0))
                {
                    return Err(named(format!(
                        "column {:?} has coefficient {}, but its share of the group's is {}",
                        member.column,
                        shown(served),
                        shown(shared)
                    )));
                }
            }
        }
        // One fitted coefficient per column, an averaged group counting once.
        let recorded = self.training.coefficients.len();
        let width: usize = self.features.iter().map(|f| f.columns.len()).sum();
        let fitted = width + self.training.averaged_groups.len() - seen.len();
        if recorded != 0 && recorded != fitted {
            return Err(format!(
                "training.coefficients lists {recorded} coefficients, but {} model columns \
                 with {} averaged groups fit {fitted}",
                width,
                self.training.averaged_groups.len()
            ));
        }
        Ok(())
    }
}

/// A number for a message: six decimals, or six significant digits in
/// scientific form when it is very large or very small.
fn shown(v: f64) -> String {
    if v != 0.0 && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:.5e}")
    } else {
        format!("{v:.6}")
    }
}

impl FeatureModel {
    fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("empty feature name".into());
        }
        let expected_columns = match self.kind {
            FeatureKind::Numeric | FeatureKind::Boolean => {
                if !self.levels.is_empty() {
                    return Err("only categorical features have levels".into());
                }
                1
            }
            FeatureKind::Categorical => {
                if self.levels.is_empty() {
                    return Err("a categorical feature needs at least one level".into());
                }
                let unique: std::collections::HashSet<_> = self.levels.iter().collect();
                if unique.len() != self.levels.len() {
                    return Err("levels repeat".into());
                }
                self.levels.len()
            }
        };
        if self.columns.len() != expected_columns {
            return Err(format!(
                "expected {expected_columns} model columns, found {}",
                self.columns.len()
            ));
        }
        if self.kind != FeatureKind::Numeric
            && (self.clip.is_some() || self.transform != Transform::None)
        {
            return Err("clip and transform apply to numeric features only".into());
        }
        if let Some([low, high]) = self.clip {
            if !(low.is_finite() && high.is_finite() && low < high) {
                return Err(format!(
                    "clip range [{low}, {high}] is not a finite low < high"
                ));
            }
        }
        for column in &self.columns {
            let finite = [
                column.center,
                column.scale,
                column.coefficient,
                column.training_mean,
            ]
            .iter()
            .all(|v| v.is_finite());
            if !finite || column.scale <= 0.0 {
                return Err(format!(
                    "column {:?} needs finite numbers and a positive scale",
                    column.label
                ));
            }
        }
        match (&self.fill, self.kind) {
            (None, _) => Ok(()),
            (Some(FillValue::Number(v)), FeatureKind::Numeric) if v.is_finite() => {
                transform_numeric(*v, self.clip, self.transform)
                    .map(drop)
                    .map_err(|problem| format!("fill value: {problem}"))
            }
            (Some(FillValue::Bool(_)), FeatureKind::Boolean) => Ok(()),
            // A constant level unseen in training scores as "no level", like
            // any unseen level.
            (Some(FillValue::Level(_)), FeatureKind::Categorical) => Ok(()),
            (Some(fill), kind) => Err(format!("fill {fill:?} does not suit a {kind:?} feature")),
        }
    }
}
