//! Scoring: churn probability, health score, band and exact attributions for
//! one account. Pure code: no I/O, no async.
//!
//! # The mapping
//! - churn log-odds `z = intercept + Σ coefficient · (x − center) / scale`
//!   over the model columns, and `churn_probability = 1 / (1 + e^−z)`;
//! - `health_score = 100 · (1 − churn_probability)`, so health falls
//!   strictly as churn risk rises;
//! - the band is HEALTHY at or above `healthy_min`, WATCH at or above
//!   `watch_min`, AT_RISK below, with both thresholds from the artifact.
//!
//! # Attributions
//! A feature's attribution is its share of `z` relative to the average
//! training account: `Σ coefficient · (z_col − training_mean_col)` over its
//! columns. One-hot columns therefore attribute back to their source
//! feature. For a linear model with the average account as reference these
//! are the exact (interventional) Shapley values, and
//! `base_value + Σ attributions = z`, where `base_value` is the log-odds of
//! the average account. The identity is exact up to float rounding.

use std::collections::HashMap;

use thiserror::Error;

use crate::{
    artifact::{FeatureModel, FillValue, ModelArtifact},
    template::{BandThresholds, Category, FeatureKind, Transform},
};

/// One feature value as a caller supplies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A number (numeric features; 0/1 for booleans).
    Number(f64),
    /// Text (categorical levels; boolean words).
    Text(&'a str),
    /// A boolean.
    Bool(bool),
}

impl Value<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Number(_) => "a number",
            Value::Text(_) => "a string",
            Value::Bool(_) => "a boolean",
        }
    }
}

/// Longest identifier (account or event id) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Longest text value (profile field or categorical level) stored, in
/// bytes.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Checks text that will be stored or used as a key: at most `max` bytes
/// and no control characters (PostgreSQL cannot store NUL, and none of them
/// belongs in an id or a label).
///
/// # Errors
/// A sentence saying what is wrong.
pub fn check_text(text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!(
            "is {} bytes long; at most {max} are accepted",
            text.len()
        ));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!("holds the control character {c:?}"));
    }
    Ok(())
}

/// `text` for a message: whole when short, else its start and length.
pub fn shown(text: &str) -> String {
    const KEEP: usize = 64;
    if text.len() <= KEEP {
        return format!("{text:?}");
    }
    let mut end = KEEP;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..end], text.len())
}

/// Why a batch given to [`Model::score_rows`] could not be scored.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RowsError {
    /// The batch kernel takes numeric features only.
    #[error("feature {feature:?} is not numeric; score such models account by account")]
    NotNumeric {
        /// The first non-numeric feature.
        feature: String,
    },
    /// The slices do not fit the rows and features.
    #[error(
        "{rows} rows of {features} features need a matrix of {} values, got {matrix}, and \
         outputs of the same rows",
        rows * features
    )]
    Shape {
        /// Rows, from the probability slice.
        rows: usize,
        /// Features of the model.
        features: usize,
        /// Values in the matrix.
        matrix: usize,
    },
    /// One row cannot be scored.
    #[error("row {row}: {error}")]
    Row {
        /// The row, from 0.
        row: usize,
        /// Why.
        error: ScoreError,
    },
}

/// Why one account could not be scored.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ScoreError {
    /// The account has no id.
    #[error("account_id is empty")]
    MissingAccountId,
    /// The id is too long or holds control characters.
    #[error("account_id {}: {problem}", shown(account_id))]
    InvalidAccountId {
        /// The id sent.
        account_id: String,
        /// What is wrong.
        problem: String,
    },
    /// The id was already used earlier in the same batch.
    #[error("account_id {account_id:?} appears more than once in the request")]
    DuplicateAccountId {
        /// The repeated id.
        account_id: String,
    },
    /// A feature name the model does not know.
    #[error("unknown feature {feature:?}; the model's features are listed by GetModelInfo")]
    UnknownFeature {
        /// The name sent.
        feature: String,
    },
    /// A missing feature whose policy is to reject.
    #[error("feature {feature:?} is missing and the model does not fill it")]
    MissingFeature {
        /// The feature.
        feature: String,
    },
    /// A value of the wrong type.
    #[error("feature {feature:?} is {expected} but got {found}")]
    WrongType {
        /// The feature.
        feature: String,
        /// What the feature takes.
        expected: &'static str,
        /// What was sent.
        found: &'static str,
    },
    /// A value the model cannot use.
    #[error("feature {feature:?}: {problem}")]
    InvalidValue {
        /// The feature.
        feature: String,
        /// What is wrong, quoting the value.
        problem: String,
    },
}

impl ScoreError {
    /// The feature at fault, if the error concerns one.
    pub fn feature(&self) -> Option<&str> {
        match self {
            ScoreError::MissingAccountId
            | ScoreError::InvalidAccountId { .. }
            | ScoreError::DuplicateAccountId { .. } => None,
            ScoreError::UnknownFeature { feature }
            | ScoreError::MissingFeature { feature }
            | ScoreError::WrongType { feature, .. }
            | ScoreError::InvalidValue { feature, .. } => Some(feature),
        }
    }
}

/// Health band of a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Band {
    /// At or above the healthy threshold.
    Healthy,
    /// Between the thresholds.
    Watch,
    /// Below the watch threshold.
    AtRisk,
}

impl Band {
    /// The band of `health` under `thresholds`.
    pub fn of(health: f64, thresholds: &BandThresholds) -> Band {
        if health >= thresholds.healthy_min {
            Band::Healthy
        } else if health >= thresholds.watch_min {
            Band::Watch
        } else {
            Band::AtRisk
        }
    }
}

/// The logistic function.
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Health score (0-100) for a churn probability: `100 · (1 − p)`.
pub fn health_score(churn_probability: f64) -> f64 {
    100.0 * (1.0 - churn_probability)
}

/// Applies a numeric feature's clip and transform.
///
/// # Errors
/// A sentence naming the problem when `x` is outside the transform's domain.
pub fn transform_numeric(
    x: f64,
    clip: Option<[f64; 2]>,
    transform: Transform,
) -> Result<f64, String> {
    let x = match clip {
        Some([low, high]) => x.clamp(low, high),
        None => x,
    };
    match transform {
        Transform::None => Ok(x),
        Transform::Log1p if x > -1.0 => Ok(x.ln_1p()),
        Transform::Log1p => Err(format!("log1p needs a value above -1, got {x}")),
    }
}

/// How a feature's value becomes its attribution.
#[derive(Debug, Clone)]
enum Encoding {
    /// `weight · (t(x) − mean)`, with `weight = coefficient / scale` and
    /// `mean` the training mean of `t(x)`.
    Numeric {
        clip: Option<[f64; 2]>,
        transform: Transform,
        weight: f64,
        mean: f64,
    },
    /// As numeric, with `x` 1 for true and 0 for false.
    Boolean { weight: f64, mean: f64 },
    /// A precomputed attribution per level, and one for "no level".
    Categorical {
        levels: HashMap<String, usize>,
        by_level: Vec<f64>,
        no_level: f64,
    },
}

/// How a present value scored.
enum Attributed {
    /// A usable value with its attribution.
    Known(f64),
    /// An unseen category level, scored as no level.
    Unseen(f64),
    /// Blank text: treated as missing.
    Missing,
}

#[derive(Debug, Clone)]
struct CompiledFeature {
    encoding: Encoding,
    /// Attribution of a missing value; `None` when missing rejects.
    fill: Option<f64>,
    category_slot: usize,
}

/// A model ready to score: the artifact compiled into per-feature lookups.
#[derive(Debug, Clone)]
pub struct Model {
    artifact: ModelArtifact,
    features: Vec<CompiledFeature>,
    index: HashMap<String, usize>,
    base_value: f64,
    categories: Vec<Category>,
    /// The artifact's version, shared by every score it produces.
    version: std::sync::Arc<str>,
}

/// A scored account.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scored {
    /// Churn log-odds.
    pub log_odds: f64,
    /// Churn probability.
    pub churn_probability: f64,
    /// `100 · (1 − churn_probability)`.
    pub health_score: f64,
    /// Attribution per model feature, in model order.
    pub attributions: Vec<f64>,
    /// Indices of features that were filled or had an unseen level.
    pub imputed: Vec<usize>,
}

impl Model {
    /// Compiles a checked artifact for scoring.
    ///
    /// The artifact must have passed [`ModelArtifact::check`], as
    /// [`ModelArtifact::load`] ensures.
    pub fn new(artifact: ModelArtifact) -> Self {
        let mut categories: Vec<Category> = artifact.features.iter().map(|f| f.category).collect();
        categories.sort();
        categories.dedup();
        let features: Vec<CompiledFeature> = artifact
            .features
            .iter()
            .map(|f| compile(f, &categories))
            .collect();
        let index = artifact
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        let base_value = artifact.intercept
            + artifact
                .features
                .iter()
                .flat_map(|f| &f.columns)
                .map(|c| c.coefficient * c.training_mean)
                .sum::<f64>();
        Self {
            version: artifact.model_version.as_str().into(),
            artifact,
            features,
            index,
            base_value,
            categories,
        }
    }

    /// The model version as a shared string, for scores that keep it.
    pub fn shared_version(&self) -> std::sync::Arc<str> {
        std::sync::Arc::clone(&self.version)
    }

    /// The artifact the model was built from.
    pub fn artifact(&self) -> &ModelArtifact {
        &self.artifact
    }

    /// The model version echoed in every score.
    pub fn version(&self) -> &str {
        &self.artifact.model_version
    }

    /// Churn log-odds of the average training account.
    pub fn base_value(&self) -> f64 {
        self.base_value
    }

    /// Number of source features.
    pub fn feature_count(&self) -> usize {
        self.features.len()
    }

    /// The feature at `index`, in model order.
    pub fn feature(&self, index: usize) -> &FeatureModel {
        &self.artifact.features[index]
    }

    /// Position of the feature called `name`.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The categories the model's features use, in framework order.
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// The band of a health score under this model's thresholds.
    pub fn band(&self, health: f64) -> Band {
        Band::of(health, &self.artifact.bands)
    }

    /// Attributions summed per category, in [`Model::categories`] order.
    pub fn category_contributions(&self, attributions: &[f64]) -> Vec<f64> {
        let mut sums = vec![0.0; self.categories.len()];
        for (feature, a) in self.features.iter().zip(attributions) {
            sums[feature.category_slot] += a;
        }
        sums
    }

    /// Feature indices ordered by decreasing absolute attribution; ties keep
    /// model order.
    pub fn ranked(&self, attributions: &[f64]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..attributions.len()).collect();
        order.sort_by(|&a, &b| attributions[b].abs().total_cmp(&attributions[a].abs()));
        order
    }

    /// Scores one account whose values are given per feature in model order
    /// (`None` = missing), writing into `out` so that a batch reuses one
    /// buffer.
    ///
    /// # Errors
    /// [`ScoreError`] naming the first feature that cannot be used.
    ///
    /// # Panics
    /// When `values` does not have one entry per feature.
    pub fn score_into(
        &self,
        values: &[Option<Value<'_>>],
        out: &mut Scored,
    ) -> Result<(), ScoreError> {
        assert_eq!(
            values.len(),
            self.features.len(),
            "one value slot per feature"
        );
        out.attributions.clear();
        out.imputed.clear();
        let mut log_odds = self.base_value;
        for (i, (feature, value)) in self.features.iter().zip(values).enumerate() {
            let scored = match value {
                Some(value) => self.attribute(i, feature, *value)?,
                None => Attributed::Missing,
            };
            let attribution = match scored {
                Attributed::Known(a) => a,
                Attributed::Unseen(a) => {
                    out.imputed.push(i);
                    a
                }
                Attributed::Missing => {
                    out.imputed.push(i);
                    self.fill(i, feature)?
                }
            };
            log_odds += attribution;
            out.attributions.push(attribution);
        }
        out.log_odds = log_odds;
        out.churn_probability = sigmoid(log_odds);
        out.health_score = health_score(out.churn_probability);
        Ok(())
    }

    /// Scores a batch held as a row-major matrix, one column per feature in
    /// model order, for models whose features are all numeric: the churn
    /// probability and health score of each row and, when `attributions` is
    /// given (rows × features, row-major), every attribution. NaN marks a
    /// missing value (filled as the template says, or refused); nothing is
    /// allocated per row. Results equal [`Model::score_into`]'s.
    ///
    /// # Errors
    /// [`RowsError`] for a model with non-numeric features, slices of the
    /// wrong length, or the first row that cannot be scored (with the
    /// [`ScoreError`] naming its feature); rows before it are written.
    pub fn score_rows(
        &self,
        matrix: &[f64],
        churn_probability: &mut [f64],
        health: &mut [f64],
        attributions: Option<&mut [f64]>,
    ) -> Result<(), RowsError> {
        let d = self.features.len();
        let mut weights = Vec::with_capacity(d);
        let mut offset = self.base_value;
        let mut plain = true;
        for (i, feature) in self.features.iter().enumerate() {
            let Encoding::Numeric {
                clip,
                transform,
                weight,
                mean,
            } = &feature.encoding
            else {
                return Err(RowsError::NotNumeric {
                    feature: self.artifact.features[i].name.clone(),
                });
            };
            plain &= clip.is_none() && *transform == Transform::None;
            weights.push(*weight);
            offset -= weight * mean;
        }
        let n = churn_probability.len();
        let shapes_fit = matrix.len() == n * d
            && health.len() == n
            && attributions.as_ref().is_none_or(|a| a.len() == n * d);
        if !shapes_fit {
            return Err(RowsError::Shape {
                rows: n,
                features: d,
                matrix: matrix.len(),
            });
        }
        // The general path for one row: what score_into does.
        let row_error = |r: usize, error| RowsError::Row { row: r, error };
        let slow = |r: usize, row: &[f64], out: Option<&mut [f64]>| -> Result<f64, RowsError> {
            let mut z = self.base_value;
            let mut out = out;
            for (i, (&x, feature)) in row.iter().zip(&self.features).enumerate() {
                let a = if x.is_nan() {
                    self.fill(i, feature).map_err(|e| row_error(r, e))?
                } else {
                    match self.attribute(i, feature, Value::Number(x)) {
                        Ok(Attributed::Known(a) | Attributed::Unseen(a)) => a,
                        Ok(Attributed::Missing) => {
                            self.fill(i, feature).map_err(|e| row_error(r, e))?
                        }
                        Err(error) => return Err(row_error(r, error)),
                    }
                };
                if let Some(out) = out.as_deref_mut() {
                    out[i] = a;
                }
                z += a;
            }
            Ok(z)
        };
        match attributions {
            None => {
                for (r, ((row, p), h)) in matrix
                    .chunks_exact(d)
                    .zip(churn_probability.iter_mut())
                    .zip(health.iter_mut())
                    .enumerate()
                {
                    let mut z = offset;
                    let mut finite = true;
                    for (&x, &w) in row.iter().zip(&weights) {
                        z += w * x;
                        finite &= x.is_finite();
                    }
                    if !(plain && finite) {
                        z = slow(r, row, None)?;
                    }
                    *p = sigmoid(z);
                    *h = health_score(*p);
                }
            }
            Some(attributions) => {
                let means: Vec<f64> = self
                    .features
                    .iter()
                    .map(|f| match f.encoding {
                        Encoding::Numeric { weight, mean, .. } => weight * mean,
                        _ => unreachable!("checked above"),
                    })
                    .collect();
                for (r, (((row, p), h), out)) in matrix
                    .chunks_exact(d)
                    .zip(churn_probability.iter_mut())
                    .zip(health.iter_mut())
                    .zip(attributions.chunks_exact_mut(d))
                    .enumerate()
                {
                    let mut z = self.base_value;
                    let mut finite = true;
                    for (((&x, &w), &wm), a) in
                        row.iter().zip(&weights).zip(&means).zip(out.iter_mut())
                    {
                        *a = w * x - wm;
                        z += *a;
                        finite &= x.is_finite();
                    }
                    if !(plain && finite) {
                        z = slow(r, row, Some(out))?;
                    }
                    *p = sigmoid(z);
                    *h = health_score(*p);
                }
            }
        }
        Ok(())
    }

    /// Scores one account given as `(name, value)` pairs; absent features are
    /// missing.
    ///
    /// # Errors
    /// [`ScoreError::UnknownFeature`] for a name the model does not know, or
    /// any error of [`Model::score_into`].
    pub fn score<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a str, Value<'a>)>,
    ) -> Result<Scored, ScoreError> {
        let mut slots = vec![None; self.features.len()];
        for (name, value) in values {
            let i = self
                .feature_index(name)
                .ok_or_else(|| ScoreError::UnknownFeature {
                    feature: name.to_owned(),
                })?;
            slots[i] = Some(value);
        }
        let mut out = Scored::default();
        self.score_into(&slots, &mut out)?;
        Ok(out)
    }

    /// Checks that `value` can be used for the feature at `index`, as
    /// scoring would; blank text passes (it counts as missing).
    ///
    /// # Errors
    /// The [`ScoreError`] scoring would report for the value.
    pub fn check_value(&self, index: usize, value: Value<'_>) -> Result<(), ScoreError> {
        self.attribute(index, &self.features[index], value)
            .map(drop)
    }

    /// How a present value scores. Blank text counts as missing; an unseen
    /// category level scores as "no level" and is reported as imputed.
    fn attribute(
        &self,
        i: usize,
        feature: &CompiledFeature,
        value: Value<'_>,
    ) -> Result<Attributed, ScoreError> {
        let name = || self.artifact.features[i].name.clone();
        let wrong_type = |expected| ScoreError::WrongType {
            feature: name(),
            expected,
            found: value.type_name(),
        };
        let invalid = |problem: String| ScoreError::InvalidValue {
            feature: name(),
            problem,
        };
        if matches!(value, Value::Text(text) if text.trim().is_empty()) {
            return Ok(Attributed::Missing);
        }
        match &feature.encoding {
            Encoding::Numeric {
                clip,
                transform,
                weight,
                mean,
            } => {
                let Value::Number(x) = value else {
                    return Err(wrong_type("numeric"));
                };
                if !x.is_finite() {
                    return Err(invalid(format!("{x} is not a finite number")));
                }
                let x = transform_numeric(x, *clip, *transform).map_err(invalid)?;
                Ok(Attributed::Known(weight * (x - mean)))
            }
            Encoding::Boolean { weight, mean } => {
                let x = match value {
                    Value::Bool(b) => b,
                    Value::Number(n) if n == 0.0 || n == 1.0 => n == 1.0,
                    Value::Number(n) => {
                        return Err(invalid(format!("a boolean takes 0 or 1, got {n}")));
                    }
                    Value::Text(word) => self.artifact.booleans.parse(word).ok_or_else(|| {
                        let words = &self.artifact.booleans;
                        invalid(format!(
                            "{word:?} is not a boolean word (true: {:?}; false: {:?})",
                            words.true_values, words.false_values
                        ))
                    })?,
                };
                Ok(Attributed::Known(weight * (f64::from(u8::from(x)) - mean)))
            }
            Encoding::Categorical {
                levels,
                by_level,
                no_level,
            } => {
                let Value::Text(level) = value else {
                    return Err(wrong_type("categorical (a string level)"));
                };
                Ok(match levels.get(level) {
                    Some(&l) => Attributed::Known(by_level[l]),
                    None => Attributed::Unseen(*no_level),
                })
            }
        }
    }

    fn fill(&self, i: usize, feature: &CompiledFeature) -> Result<f64, ScoreError> {
        feature.fill.ok_or_else(|| ScoreError::MissingFeature {
            feature: self.artifact.features[i].name.clone(),
        })
    }
}

fn compile(feature: &FeatureModel, categories: &[Category]) -> CompiledFeature {
    let category_slot = categories
        .iter()
        .position(|&c| c == feature.category)
        .expect("categories are collected from the features");
    let single = || {
        let column = &feature.columns[0];
        let weight = column.coefficient / column.scale;
        let mean = column.center + column.scale * column.training_mean;
        (weight, mean)
    };
    let encoding = match feature.kind {
        FeatureKind::Numeric => {
            let (weight, mean) = single();
            Encoding::Numeric {
                clip: feature.clip,
                transform: feature.transform,
                weight,
                mean,
            }
        }
        FeatureKind::Boolean => {
            let (weight, mean) = single();
            Encoding::Boolean { weight, mean }
        }
        FeatureKind::Categorical => {
            // For one-hot columns the attribution of level k is
            // Σ_l coef_l · (1[k = l] − mean_l) = coef_k − Σ_l coef_l · mean_l.
            let offset: f64 = feature
                .columns
                .iter()
                .map(|c| c.coefficient * (c.center / c.scale + c.training_mean))
                .sum();
            let by_level = feature
                .columns
                .iter()
                .map(|c| c.coefficient / c.scale - offset)
                .collect();
            Encoding::Categorical {
                levels: feature
                    .levels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), i))
                    .collect(),
                by_level,
                no_level: -offset,
            }
        }
    };
    let fill = feature.fill.as_ref().map(|fill| match (&encoding, fill) {
        (
            Encoding::Numeric {
                clip,
                transform,
                weight,
                mean,
            },
            FillValue::Number(x),
        ) => {
            let x = transform_numeric(*x, *clip, *transform)
                .expect("checked artifacts fill inside the transform's domain");
            weight * (x - mean)
        }
        (Encoding::Boolean { weight, mean }, FillValue::Bool(b)) => {
            weight * (f64::from(u8::from(*b)) - mean)
        }
        (
            Encoding::Categorical {
                levels,
                by_level,
                no_level,
            },
            FillValue::Level(level),
        ) => levels.get(level).map_or(*no_level, |&l| by_level[l]),
        _ => unreachable!("checked artifacts fill with a value of the feature's kind"),
    });
    CompiledFeature {
        encoding,
        fill,
        category_slot,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        artifact::{ColumnModel, FORMAT, FORMAT_VERSION, TrainingMetadata},
        metrics::TestMetrics,
        template::BooleanWords,
    };

    fn column(
        label: &str,
        center: f64,
        scale: f64,
        coefficient: f64,
        training_mean: f64,
    ) -> ColumnModel {
        ColumnModel {
            label: label.into(),
            center,
            scale,
            coefficient,
            training_mean,
        }
    }

    fn feature(
        name: &str,
        kind: FeatureKind,
        category: Category,
        columns: Vec<ColumnModel>,
    ) -> FeatureModel {
        FeatureModel {
            name: name.into(),
            kind,
            category,
            description: String::new(),
            clip: None,
            transform: Transform::None,
            missing: "reject".into(),
            fill: None,
            levels: Vec::new(),
            columns,
            signal: None,
        }
    }

    /// A small hand-made model: logins (log1p, clipped, median-filled),
    /// a boolean and a three-level plan.
    fn artifact() -> ModelArtifact {
        let mut logins = feature(
            "logins",
            FeatureKind::Numeric,
            Category::Engagement,
            vec![column("logins", 2.0, 0.8, -0.9, 0.01)],
        );
        logins.clip = Some([0.0, 1000.0]);
        logins.transform = Transform::Log1p;
        logins.missing = "median".into();
        logins.fill = Some(FillValue::Number(5.0));
        let escalated = feature(
            "escalated",
            FeatureKind::Boolean,
            Category::Support,
            vec![column("escalated", 0.2, 0.4, 0.6, 0.0)],
        );
        let mut plan = feature(
            "plan",
            FeatureKind::Categorical,
            Category::Financial,
            vec![
                column("plan=basic", 0.0, 1.0, 0.5, 0.5),
                column("plan=pro", 0.0, 1.0, -0.2, 0.3),
                column("plan=team", 0.0, 1.0, -0.4, 0.2),
            ],
        );
        plan.levels = vec!["basic".into(), "pro".into(), "team".into()];
        plan.missing = "mode".into();
        plan.fill = Some(FillValue::Level("basic".into()));
        ModelArtifact {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            model_version: "test-1".into(),
            name: "test".into(),
            description: String::new(),
            booleans: BooleanWords::default(),
            features: vec![logins, escalated, plan],
            intercept: -1.1,
            bands: BandThresholds::default(),
            training: TrainingMetadata {
                data_file: "t.csv".into(),
                data_sha256: "0".repeat(64),
                template_sha256: "0".repeat(64),
                trained_at: chrono::Utc::now(),
                trainer_version: "0".into(),
                rows: 10,
                train_rows: 8,
                test_rows: 2,
                positives: 3,
                positive_rate: 0.3,
                split_method: "stratified".into(),
                test_fraction: 0.25,
                purged_train_rows: 0,
                seed: 0,
                c: 1.0,
                test_metrics: TestMetrics::evaluate(
                    &[true, false],
                    &[0.7, 0.2],
                    &BandThresholds::default(),
                ),
                intercept_standard_error: 0.0,
                coefficients: Vec::new(),
                cross_validation: None,
                warnings: Vec::new(),
                averaged_groups: Vec::new(),
            },
        }
    }

    /// The churn log-odds computed the long way, straight from the artifact's
    /// design-matrix definition, independently of the compiled scorer.
    fn reference_log_odds(
        a: &ModelArtifact,
        logins: f64,
        escalated: bool,
        plan: Option<&str>,
    ) -> f64 {
        let [l, e, p] = &a.features[..] else {
            unreachable!()
        };
        let z = |c: &ColumnModel, x: f64| c.coefficient * (x - c.center) / c.scale;
        let logins = logins.clamp(0.0, 1000.0).ln_1p();
        let mut total = a.intercept
            + z(&l.columns[0], logins)
            + z(&e.columns[0], f64::from(u8::from(escalated)));
        for (level, c) in p.levels.iter().zip(&p.columns) {
            total += z(c, f64::from(u8::from(plan == Some(level.as_str()))));
        }
        total
    }

    fn score(
        model: &Model,
        logins: Option<f64>,
        escalated: bool,
        plan: Option<&str>,
    ) -> Result<Scored, ScoreError> {
        let mut values = vec![("escalated", Value::Bool(escalated))];
        if let Some(x) = logins {
            values.push(("logins", Value::Number(x)));
        }
        if let Some(p) = plan {
            values.push(("plan", Value::Text(p)));
        }
        model.score(values)
    }

    #[test]
    fn attributions_sum_to_the_log_odds() {
        let a = artifact();
        let model = Model::new(a.clone());
        for logins in [0.0, 1.0, 7.5, 40.0, 999.0, 5000.0] {
            for escalated in [false, true] {
                for plan in ["basic", "pro", "team"] {
                    let s = score(&model, Some(logins), escalated, Some(plan)).unwrap();
                    let sum: f64 = s.attributions.iter().sum();
                    assert!((model.base_value() + sum - s.log_odds).abs() < 1e-9);
                    let reference = reference_log_odds(&a, logins, escalated, Some(plan));
                    assert!(
                        (s.log_odds - reference).abs() < 1e-9,
                        "{} vs {reference}",
                        s.log_odds
                    );
                    assert!((s.churn_probability - sigmoid(reference)).abs() < 1e-12);
                }
            }
        }
    }

    #[test]
    fn average_account_scores_the_base_value() {
        // The base value is the log-odds at the training means of every
        // model column, i.e. intercept + Σ coef · training_mean.
        let a = artifact();
        let expected = a.intercept
            + a.features
                .iter()
                .flat_map(|f| &f.columns)
                .map(|c| c.coefficient * c.training_mean)
                .sum::<f64>();
        assert!((Model::new(a).base_value() - expected).abs() < 1e-12);
    }

    #[test]
    fn health_falls_as_churn_risk_rises() {
        let model = Model::new(artifact());
        // logins has a negative coefficient: fewer logins, more churn.
        let mut last_p = -1.0;
        let mut last_health = f64::INFINITY;
        for logins in (0..200).rev().map(f64::from) {
            let s = score(&model, Some(logins), false, Some("pro")).unwrap();
            assert!(s.churn_probability > last_p);
            assert!(s.health_score < last_health);
            assert!((s.health_score - 100.0 * (1.0 - s.churn_probability)).abs() < 1e-12);
            last_p = s.churn_probability;
            last_health = s.health_score;
        }
    }

    #[test]
    fn bands_follow_the_thresholds() {
        let t = BandThresholds {
            healthy_min: 75.0,
            watch_min: 50.0,
        };
        assert_eq!(Band::of(75.0, &t), Band::Healthy);
        assert_eq!(Band::of(74.99, &t), Band::Watch);
        assert_eq!(Band::of(50.0, &t), Band::Watch);
        assert_eq!(Band::of(49.99, &t), Band::AtRisk);
    }

    #[test]
    fn one_hot_columns_attribute_to_their_feature() {
        let a = artifact();
        let model = Model::new(a.clone());
        let s = score(&model, Some(3.0), false, Some("team")).unwrap();
        assert_eq!(s.attributions.len(), 3);
        let plan = &a.features[2];
        let expected: f64 = plan
            .columns
            .iter()
            .zip(&plan.levels)
            .map(|(c, l)| c.coefficient * (f64::from(u8::from(l == "team")) - c.training_mean))
            .sum();
        assert!((s.attributions[2] - expected).abs() < 1e-12);
    }

    #[test]
    fn missing_values_are_filled_and_reported() {
        let a = artifact();
        let model = Model::new(a.clone());
        let filled = score(&model, None, false, None).unwrap();
        assert_eq!(filled.imputed, vec![0, 2]);
        let explicit = score(&model, Some(5.0), false, Some("basic")).unwrap();
        assert!((filled.log_odds - explicit.log_odds).abs() < 1e-12);
        // Blank text counts as missing, too.
        let blank = score(&model, Some(5.0), false, Some("  ")).unwrap();
        assert_eq!(blank.imputed, vec![2]);
    }

    #[test]
    fn unseen_level_scores_as_no_level() {
        let a = artifact();
        let model = Model::new(a.clone());
        let s = score(&model, Some(3.0), true, Some("enterprise")).unwrap();
        assert_eq!(s.imputed, vec![2]);
        let reference = reference_log_odds(&a, 3.0, true, None);
        assert!((s.log_odds - reference).abs() < 1e-9);
    }

    #[test]
    fn bad_values_are_errors_naming_the_feature() {
        let model = Model::new(artifact());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = score(&model, Some(bad), false, Some("pro")).unwrap_err();
            assert!(
                matches!(err, ScoreError::InvalidValue { ref feature, .. } if feature == "logins")
            );
        }
        let err = model
            .score([("escalated", Value::Number(2.0))])
            .unwrap_err();
        assert_eq!(err.feature(), Some("escalated"));
        let err = model.score([("logins", Value::Text("many"))]).unwrap_err();
        assert!(matches!(err, ScoreError::WrongType { .. }), "{err}");
        let err = model
            .score([
                ("escalated", Value::Bool(true)),
                ("plan", Value::Number(1.0)),
            ])
            .unwrap_err();
        assert!(matches!(err, ScoreError::WrongType { .. }), "{err}");
        let err = model
            .score([("logins_7d", Value::Number(1.0))])
            .unwrap_err();
        assert_eq!(
            err,
            ScoreError::UnknownFeature {
                feature: "logins_7d".into()
            }
        );
        // escalated has missing = reject.
        let err = model.score([("logins", Value::Number(1.0))]).unwrap_err();
        assert_eq!(
            err,
            ScoreError::MissingFeature {
                feature: "escalated".into()
            }
        );
    }

    #[test]
    fn log1p_domain_is_checked_after_clipping() {
        assert_eq!(
            transform_numeric(-5.0, Some([0.0, 10.0]), Transform::Log1p),
            Ok(0.0)
        );
        assert!(transform_numeric(-1.0, None, Transform::Log1p).is_err());
        assert_eq!(
            transform_numeric(50.0, Some([0.0, 10.0]), Transform::None),
            Ok(10.0)
        );
    }

    #[test]
    fn boolean_words_and_numbers_are_accepted() {
        let model = Model::new(artifact());
        let base = [("logins", Value::Number(3.0)), ("plan", Value::Text("pro"))];
        let scored = |v| {
            model
                .score(base.into_iter().chain([("escalated", v)]))
                .unwrap()
                .log_odds
        };
        assert_eq!(scored(Value::Bool(true)), scored(Value::Text("Yes")));
        assert_eq!(scored(Value::Bool(true)), scored(Value::Number(1.0)));
        assert_eq!(scored(Value::Bool(false)), scored(Value::Text("no")));
    }

    #[test]
    fn artifact_round_trip_scores_identically() {
        let a = artifact();
        let text = a.to_json();
        let back = ModelArtifact::from_json(&text, "memory").unwrap();
        assert_eq!(back, a);
        let (m1, m2) = (Model::new(a), Model::new(back));
        let s1 = score(&m1, Some(12.0), true, Some("team")).unwrap();
        let s2 = score(&m2, Some(12.0), true, Some("team")).unwrap();
        assert_eq!(s1, s2);
    }

    #[test]
    fn broken_artifacts_are_refused_with_the_reason() {
        let a = artifact();
        let mut bad = a.clone();
        bad.features[0].columns[0].scale = 0.0;
        let err = ModelArtifact::from_json(&bad.to_json(), "bad.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.json") && err.contains("logins") && err.contains("scale"),
            "{err}"
        );

        let mut bad = a.clone();
        bad.features[2].columns.pop();
        let err = ModelArtifact::from_json(&bad.to_json(), "bad.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("plan"), "{err}");

        let text = a.to_json();
        let err = ModelArtifact::from_json(&text[..text.len() / 2], "cut.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cut.json") && err.contains("line"), "{err}");

        let future = text.replace("\"format_version\": 1", "\"format_version\": 2");
        let err = ModelArtifact::from_json(&future, "new.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("v2") && err.contains("v1"), "{err}");
    }

    /// A numeric-only model: the clipped log1p logins of [`artifact`], and a
    /// plain tenure that rejects a missing value.
    fn numeric_artifact() -> ModelArtifact {
        let mut a = artifact();
        let tenure = feature(
            "tenure",
            FeatureKind::Numeric,
            Category::Financial,
            vec![column("tenure", 30.0, 20.0, -0.7, 0.05)],
        );
        a.features = vec![a.features[0].clone(), tenure];
        a
    }

    #[test]
    fn score_rows_matches_score_into_with_clips_transforms_and_missing_values() {
        let model = Model::new(numeric_artifact());
        let matrix = [
            3.0,
            12.0, // plain values
            5000.0,
            0.0, // logins clipped to 1000
            f64::NAN,
            40.0, // logins missing: filled
            0.0,
            -3.5, // negative tenure is a value
        ];
        let (mut p, mut h, mut a) = ([0.0; 4], [0.0; 4], [0.0; 8]);
        model
            .score_rows(&matrix, &mut p, &mut h, Some(&mut a))
            .unwrap();
        let (mut p2, mut h2) = ([0.0; 4], [0.0; 4]);
        model.score_rows(&matrix, &mut p2, &mut h2, None).unwrap();

        let mut scored = Scored::default();
        for (r, row) in matrix.chunks_exact(2).enumerate() {
            let slots: Vec<Option<Value<'_>>> = row
                .iter()
                .map(|&x| (!x.is_nan()).then_some(Value::Number(x)))
                .collect();
            model.score_into(&slots, &mut scored).unwrap();
            assert!((p[r] - scored.churn_probability).abs() < 1e-15, "row {r}");
            assert_eq!(p[r], p2[r]);
            assert!((h[r] - scored.health_score).abs() < 1e-12);
            assert_eq!(h[r], h2[r]);
            for (x, y) in a[2 * r..2 * r + 2].iter().zip(&scored.attributions) {
                assert!((x - y).abs() < 1e-15, "row {r}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn score_rows_refuses_what_score_into_refuses_naming_the_row() {
        let model = Model::new(numeric_artifact());
        let (mut p, mut h) = ([0.0; 2], [0.0; 2]);

        let infinite = model.score_rows(&[1.0, 2.0, f64::INFINITY, 2.0], &mut p, &mut h, None);
        let missing = model.score_rows(&[1.0, f64::NAN, 1.0, 2.0], &mut p, &mut h, None);
        let shape = model.score_rows(&[1.0, 2.0, 3.0], &mut p, &mut h, None);
        let mixed = Model::new(artifact()).score_rows(&[0.0; 6], &mut p, &mut h, None);

        assert!(
            matches!(&infinite, Err(RowsError::Row { row: 1, error: ScoreError::InvalidValue { feature, .. } }) if feature == "logins"),
            "{infinite:?}"
        );
        assert!(
            matches!(&missing, Err(RowsError::Row { row: 0, error: ScoreError::MissingFeature { feature } }) if feature == "tenure"),
            "{missing:?}"
        );
        assert!(matches!(shape, Err(RowsError::Shape { .. })), "{shape:?}");
        assert_eq!(
            mixed.unwrap_err().to_string(),
            "feature \"escalated\" is not numeric; score such models account by account"
        );
    }
}
