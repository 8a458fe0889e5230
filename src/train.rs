//! The training pipeline: read the data as the template says, hold out a
//! test split, fit L2-regularised logistic regression (the Newton solver of
//! [`crate::solver`], through linfa's `Fit` on a linfa dataset) on
//! standardised features, evaluate on the held-out rows through the same
//! scoring code the server uses, and build the artifact.

use std::{
    fmt::Write as _,
    io::Read,
    path::{Path, PathBuf},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use linfa::traits::Fit;
use ndarray::{Array1, Array2, Axis};
use rand::{SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::{
    artifact::{
        AveragedGroup, AveragedMember, CoefficientStat, ColumnModel, CrossValidation, CvCandidate,
        FORMAT, FORMAT_VERSION, FeatureModel, FillValue, ModelArtifact, TrainingMetadata,
    },
    averaging::{Averaging, Param},
    checks::{self, CorrelatedGroup},
    dataset::{Column, Dataset},
    error::{DataError, TemplateError, TrainError},
    metrics::TestMetrics,
    scoring::{Model, Scored, Value, sigmoid, transform_numeric},
    solver,
    template::{ConstantFill, FeatureSpec, MissingPolicy, Template},
};

/// What to train on.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The training CSV.
    pub data: PathBuf,
    /// The template TOML.
    pub template: PathBuf,
    /// Draw progress bars on standard error (hidden anyway when it is not a
    /// terminal).
    pub progress: bool,
    /// The model serving now, to be scored on the same held-out rows as the
    /// new one.
    pub champion: Option<ModelArtifact>,
}

/// A trained model and the split it was evaluated on.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The artifact, metrics included.
    pub artifact: ModelArtifact,
    /// Account ids of the held-out test rows, in file order.
    pub test_ids: Vec<String>,
    /// Churn probability of each test row, in the same order.
    pub test_probabilities: Vec<f64>,
    /// Whether each test row churned, in the same order.
    pub test_churned: Vec<bool>,
    /// The champion's metrics on the same test rows, when one was given.
    pub champion_metrics: Option<TestMetrics>,
}

/// Runs the whole pipeline.
///
/// # Errors
/// [`TrainError`] naming the file, line, column or feature at fault.
pub fn train(options: &TrainOptions) -> Result<Trained, TrainError> {
    let template = Template::from_path(&options.template)?;
    let template_sha256 = sha256_file(&options.template).map_err(|error| TemplateError::Io {
        path: options.template.clone(),
        error,
    })?;
    let data_sha256 = sha256_file(&options.data).map_err(|error| DataError::Io {
        path: options.data.clone(),
        error,
    })?;

    let size = std::fs::metadata(&options.data)
        .map(|m| m.len())
        .unwrap_or(0);
    let bar = progress_bar(options.progress, size, "reading");
    let data = Dataset::read(&options.data, &template, |bytes| bar.set_position(bytes))?;
    bar.finish_and_clear();
    let classes = |rows_label, churned: &[bool]| {
        require_both_classes(&options.data, &template.outcome.column, rows_label, churned)
    };
    classes("the data", &data.churned)?;

    let mut purged_train_rows = 0;
    let reach = label_reach_seconds(&options.template, &template)?;
    let (train_rows, test_rows) = match &data.dates {
        Some(dates) => {
            let (train, test) = time_split(dates, template.split.test_fraction);
            let kept = purge(train.clone(), &test, dates, reach);
            purged_train_rows = (train.len() - kept.len()) as u64;
            (kept, test)
        }
        None => stratified_split(
            &data.churned,
            template.split.test_fraction,
            template.split.seed,
        ),
    };
    let pick = |rows: &[usize]| rows.iter().map(|&r| data.churned[r]).collect::<Vec<_>>();
    let (y_train, y_test) = (pick(&train_rows), pick(&test_rows));
    classes("the training split", &y_train)?;
    classes("the test split", &y_test)?;

    let mut features = template
        .features
        .iter()
        .zip(&data.columns)
        .map(|(spec, column)| encode_feature(&options.data, spec, column, &train_rows))
        .collect::<Result<Vec<_>, _>>()?;
    let x_train = design_matrix(&features, &data.columns, &train_rows);
    let (labels, owners): (Vec<String>, Vec<String>) = features
        .iter()
        .flat_map(|f| f.columns.iter().map(|c| (c.label.clone(), f.name.clone())))
        .unzip();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
    let groups = checks::correlated_groups(&x_train, &owners, template.checks.correlation);
    let warnings = checks::run(
        &template.checks,
        &template.features,
        &features,
        &data.columns,
        &train_rows,
        &groups,
        &y_train,
    );
    let averaged = if template.checks.average_correlated {
        groups.as_slice()
    } else {
        &[]
    };
    let averaging = Averaging::fit(&x_train, averaged, &labels).map_err(TrainError::Fit)?;

    let spinner = progress_bar(options.progress, 0, "fitting");
    spinner.enable_steady_tick(Duration::from_millis(100));
    let cross_validation = if template.fit.c_grid.is_none() {
        None
    } else {
        spinner.set_message("choosing C");
        Some(choose_c(
            &options.data,
            &template,
            &data,
            &train_rows,
            reach,
            (averaged, &labels),
        )?)
    };
    let c = cross_validation
        .as_ref()
        .map_or(template.fit.c, |cv| cv.chosen_c);
    spinner.set_message("fitting");
    let solution = fit(&averaging.apply(&x_train), &y_train, &template, c)?;
    spinner.finish_and_clear();

    let column_means = x_train
        .mean_axis(Axis(0))
        .expect("the training split is not empty");
    let column_sds = x_train.std_axis(Axis(0), 0.0);
    // The matrix is done with; the test rows' one below must not add to it.
    drop(x_train);
    let (coefficients, shift) = averaging.expand(&solution.coefficients);
    let intercept = solution.intercept + shift;
    for (k, column) in features
        .iter_mut()
        .flat_map(|f| f.columns.iter_mut())
        .enumerate()
    {
        column.coefficient = coefficients[k];
        column.training_mean = column_means[k];
    }
    let fitted = Fitted {
        solution: &solution,
        intercept,
        averaging: &averaging,
        labels: &labels,
        owners: &owners,
        sds: column_sds.as_slice().expect("contiguous"),
    };
    let averaged_groups = fitted.averaged_groups();
    let coefficients = fitted.coefficient_table(&features);

    let positives = data.churned.iter().filter(|&&c| c).count();
    let mut artifact = ModelArtifact {
        format: FORMAT.to_owned(),
        format_version: FORMAT_VERSION,
        model_version: String::new(),
        name: template.name.clone(),
        description: template.description.clone(),
        booleans: template.booleans.clone(),
        features,
        intercept,
        bands: template.bands,
        training: TrainingMetadata {
            data_file: options
                .data
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            data_sha256,
            template_sha256,
            trained_at: chrono::Utc::now(),
            trainer_version: env!("CARGO_PKG_VERSION").to_owned(),
            rows: data.len() as u64,
            train_rows: train_rows.len() as u64,
            test_rows: test_rows.len() as u64,
            positives: positives as u64,
            positive_rate: positives as f64 / data.len() as f64,
            split_method: if data.dates.is_some() {
                "time"
            } else {
                "stratified"
            }
            .to_owned(),
            test_fraction: template.split.test_fraction,
            purged_train_rows,
            seed: template.split.seed,
            c,
            // Filled in below, once the model can score the test rows.
            test_metrics: TestMetrics::default(),
            intercept_standard_error: solution.intercept_standard_error,
            coefficients,
            cross_validation,
            warnings,
            averaged_groups,
        },
    };
    artifact.model_version = model_version(&artifact);

    // Evaluate through the serving code path, so the reported metrics are
    // those of the model exactly as it will be served.
    let model = Model::new(artifact.clone());
    let test_probabilities = score_rows(&model, &data, &test_rows);
    // The served model must be the fitted one: averaged groups are served
    // through their members' shares, which must score as the group did.
    let fitted_probabilities = predict(
        &solution,
        &averaging.apply(&design_matrix(
            &artifact.features,
            &data.columns,
            &test_rows,
        )),
    );
    if let Some((r, (served, fitted))) = test_probabilities
        .iter()
        .zip(&fitted_probabilities)
        .enumerate()
        .find(|(_, (a, b))| (*a - *b).abs() > 1e-9)
    {
        return Err(TrainError::Fit(format!(
            "the served model scores test account {:?} {served}, the fitted one {fitted}",
            data.ids[test_rows[r]]
        )));
    }
    artifact.training.test_metrics =
        TestMetrics::evaluate(&y_test, &test_probabilities, &template.bands);
    artifact
        .check()
        .map_err(|message| TrainError::Fit(format!("the fitted model is unusable: {message}")))?;

    let champion_metrics = options
        .champion
        .as_ref()
        .map(|champion| {
            let probabilities = score_champion(champion, &template, &data, &test_rows)?;
            Ok::<_, TrainError>(TestMetrics::evaluate(
                &y_test,
                &probabilities,
                &champion.bands,
            ))
        })
        .transpose()?;

    Ok(Trained {
        artifact,
        test_ids: test_rows.iter().map(|&r| data.ids[r].clone()).collect(),
        test_probabilities,
        test_churned: y_test,
        champion_metrics,
    })
}

/// Scores `rows` with the champion: its features are looked up by name
/// among the template's, so the champion may use fewer features or another
/// order, but every one it needs must be read from this data.
fn score_champion(
    champion: &ModelArtifact,
    template: &Template,
    data: &Dataset,
    rows: &[usize],
) -> Result<Vec<f64>, TrainError> {
    let refuse = |reason: String| TrainError::Champion {
        champion: champion.model_version.clone(),
        reason,
    };
    let columns = champion
        .features
        .iter()
        .map(|feature| {
            template
                .features
                .iter()
                .position(|spec| spec.name == feature.name)
                .map(|i| &data.columns[i])
                .ok_or_else(|| {
                    refuse(format!(
                        "its feature {:?} is not in the new template, so it cannot be scored on \
                         the same rows; compare models trained on the same features",
                        feature.name
                    ))
                })
        })
        .collect::<Result<Vec<&Column>, _>>()?;
    let model = Model::new(champion.clone());
    let mut slots: Vec<Option<Value<'_>>> = vec![None; columns.len()];
    let mut scored = Scored::default();
    rows.iter()
        .map(|&r| {
            for (slot, column) in slots.iter_mut().zip(&columns) {
                *slot = column_value(column, r);
            }
            model
                .score_into(&slots, &mut scored)
                .map(|()| scored.churn_probability)
                .map_err(|error| {
                    refuse(format!(
                        "cannot score test account {:?}: {error}",
                        data.ids[r]
                    ))
                })
        })
        .collect()
}

/// Row `r` of `column` as a scoring value.
fn column_value(column: &Column, r: usize) -> Option<Value<'_>> {
    match column {
        Column::Numeric(v) => v[r].map(Value::Number),
        Column::Boolean(v) => v[r].map(Value::Bool),
        Column::Categorical(v) => v[r].as_deref().map(Value::Text),
    }
}

/// Writes `artifact` to `path` through a temporary file and a rename, so a
/// crash never leaves a half-written model where a server may load it.
///
/// # Errors
/// [`TrainError::Write`] naming the file.
pub fn write_artifact(artifact: &ModelArtifact, path: &Path) -> Result<(), TrainError> {
    let write_error = |error| TrainError::Write {
        path: path.to_owned(),
        error,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_error)?;
    let temporary = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy())
    ));
    std::fs::write(&temporary, artifact.to_json()).map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(write_error)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn progress_bar(visible: bool, length: u64, label: &'static str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    let style = if length > 0 {
        ProgressStyle::with_template("{msg:>8} [{bar:30}] {bytes}/{total_bytes} ({eta})")
    } else {
        ProgressStyle::with_template("{msg:>8} {spinner} {elapsed}")
    };
    bar.set_style(style.expect("the progress templates are valid"));
    bar.set_message(label);
    bar
}

fn require_both_classes(
    path: &Path,
    column: &str,
    rows_label: &'static str,
    churned: &[bool],
) -> Result<(), TrainError> {
    let positives = churned.iter().filter(|&&c| c).count();
    if positives == 0 || positives == churned.len() {
        return Err(TrainError::OneClass {
            path: path.to_owned(),
            column: column.to_owned(),
            rows_label,
            class: if positives == 0 {
                "retained"
            } else {
                "churned"
            },
            rows: churned.len(),
        });
    }
    Ok(())
}

/// Stratified hold-out as scikit-learn draws it: `ceil(n · test_fraction)`
/// test rows, shared among the classes in proportion (largest remainder
/// first), each class's rows picked by a seeded shuffle. Both lists come
/// back in file order.
pub fn stratified_split(
    churned: &[bool],
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let n = churned.len();
    let n_test = ((n as f64 * test_fraction).ceil() as usize).min(n);
    let classes: Vec<Vec<usize>> = [false, true]
        .iter()
        .map(|&class| (0..n).filter(|&r| churned[r] == class).collect())
        .collect();
    let exact: Vec<f64> = classes
        .iter()
        .map(|rows| rows.len() as f64 * n_test as f64 / n as f64)
        .collect();
    let mut quota: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut by_remainder: Vec<usize> = (0..classes.len()).collect();
    by_remainder
        .sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for &class in by_remainder
        .iter()
        .take(n_test - quota.iter().sum::<usize>())
    {
        quota[class] += 1;
    }

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (mut rows, n_class_test) in classes.into_iter().zip(quota) {
        rows.shuffle(&mut rng);
        test.extend_from_slice(&rows[..n_class_test]);
        train.extend_from_slice(&rows[n_class_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// How far past its date a row's label looks, in seconds: for rows built
/// by `healthscore-rows` (a template with a `[history]` table), the lead,
/// the horizon and the renewal gap; otherwise nothing is known and 0.
fn label_reach_seconds(path: &Path, template: &Template) -> Result<i64, TrainError> {
    if template.history.is_none() {
        return Ok(0);
    }
    let text = std::fs::read_to_string(path).map_err(|error| TemplateError::Io {
        path: path.to_owned(),
        error,
    })?;
    let history =
        crate::history::HistorySettings::from_toml(&text).map_err(|e| e.with_path(path))?;
    let days = i64::from(history.lead_days)
        + i64::from(history.horizon_days)
        + i64::from(history.renewal_gap_days);
    Ok(days * 86_400)
}

/// Drops the training rows whose label window reaches the first test date:
/// their outcomes were decided inside the test period, and training on
/// them would let the test period's events leak into the fit.
fn purge(train: Vec<usize>, test: &[usize], dates: &[i64], reach: i64) -> Vec<usize> {
    let Some(first_test) = test.iter().map(|&r| dates[r]).min() else {
        return train;
    };
    if reach == 0 {
        return train;
    }
    train
        .into_iter()
        .filter(|&r| dates[r].saturating_add(reach) <= first_test)
        .collect()
}

/// Time-based hold-out: the latest `round(n · test_fraction)` rows by date
/// (ties broken by file order) are the test rows.
pub fn time_split(dates: &[i64], test_fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..dates.len()).collect();
    order.sort_by_key(|&r| (dates[r], r));
    let n_test = (dates.len() as f64 * test_fraction).round() as usize;
    let (train, test) = order.split_at(dates.len() - n_test);
    let (mut train, mut test) = (train.to_vec(), test.to_vec());
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Learns fill value, standardisation and levels of one feature from the
/// training rows; coefficients are filled in after the fit.
fn encode_feature(
    path: &Path,
    spec: &FeatureSpec,
    column: &Column,
    train: &[usize],
) -> Result<FeatureModel, TrainError> {
    let all_missing = || TrainError::AllMissing {
        path: path.to_owned(),
        feature: spec.name.clone(),
    };
    let constant = |value: String| TrainError::ConstantFeature {
        path: path.to_owned(),
        feature: spec.name.clone(),
        value,
    };
    let (fill, levels, columns) = match column {
        Column::Numeric(values) => {
            let present: Vec<f64> = train.iter().filter_map(|&r| values[r]).collect();
            if present.is_empty() {
                return Err(all_missing());
            }
            let fill = match &spec.missing {
                MissingPolicy::Median => Some(median(present.clone())),
                MissingPolicy::Constant(ConstantFill::Number(v)) => Some(*v),
                _ => None,
            };
            let transformed: Vec<f64> = train
                .iter()
                .map(|&r| {
                    let raw = values[r]
                        .or(fill)
                        .expect("reject policy leaves no missing rows");
                    transform_numeric(raw, spec.clip, spec.transform)
                        .expect("values were checked against the transform when read")
                })
                .collect();
            let (center, scale) = mean_and_std(&transformed);
            // NaN-safe: a NaN scale is constant too.
            if scale.is_nan() || scale <= 1e-12 * center.abs().max(1.0) {
                return Err(constant(format!("{center}")));
            }
            (
                fill.map(FillValue::Number),
                Vec::new(),
                vec![column_model(&spec.name, center, scale)],
            )
        }
        Column::Boolean(values) => {
            let present: Vec<bool> = train.iter().filter_map(|&r| values[r]).collect();
            if present.is_empty() {
                return Err(all_missing());
            }
            let trues = present.iter().filter(|&&b| b).count();
            let fill = match &spec.missing {
                MissingPolicy::Mode => Some(trues * 2 > present.len()),
                MissingPolicy::Constant(ConstantFill::Bool(b)) => Some(*b),
                _ => None,
            };
            let encoded: Vec<f64> = train
                .iter()
                .map(|&r| {
                    f64::from(u8::from(
                        values[r]
                            .or(fill)
                            .expect("reject policy leaves no missing rows"),
                    ))
                })
                .collect();
            let (center, scale) = mean_and_std(&encoded);
            if scale == 0.0 {
                return Err(constant(format!("{}", encoded[0] == 1.0)));
            }
            (
                fill.map(FillValue::Bool),
                Vec::new(),
                vec![column_model(&spec.name, center, scale)],
            )
        }
        Column::Categorical(values) => {
            let present: Vec<&str> = train.iter().filter_map(|&r| values[r].as_deref()).collect();
            if present.is_empty() {
                return Err(all_missing());
            }
            let fill = match &spec.missing {
                MissingPolicy::Mode => Some(mode(&present)),
                MissingPolicy::Constant(ConstantFill::Text(level)) => Some(level.clone()),
                _ => None,
            };
            let mut levels: Vec<String> = train
                .iter()
                .filter_map(|&r| values[r].clone().or_else(|| fill.clone()))
                .collect();
            levels.sort_unstable();
            levels.dedup();
            if levels.len() < 2 {
                return Err(constant(format!("{:?}", levels[0])));
            }
            let columns = levels
                .iter()
                .map(|level| column_model(&format!("{}={level}", spec.name), 0.0, 1.0))
                .collect();
            (fill.map(FillValue::Level), levels, columns)
        }
    };
    Ok(FeatureModel {
        name: spec.name.clone(),
        kind: spec.kind,
        category: spec.category,
        description: spec.description.clone(),
        clip: spec.clip,
        transform: spec.transform,
        missing: match spec.missing {
            MissingPolicy::Reject => "reject",
            MissingPolicy::Median => "median",
            MissingPolicy::Mode => "mode",
            MissingPolicy::Constant(_) => "constant",
        }
        .to_owned(),
        fill,
        levels,
        columns,
        signal: spec.signal,
    })
}

fn column_model(label: &str, center: f64, scale: f64) -> ColumnModel {
    ColumnModel {
        label: label.to_owned(),
        center,
        scale,
        coefficient: 0.0,
        training_mean: 0.0,
    }
}

/// The standardised design matrix of `rows`, one column per model column.
fn design_matrix(features: &[FeatureModel], columns: &[Column], rows: &[usize]) -> Array2<f64> {
    let width: usize = features.iter().map(|f| f.columns.len()).sum();
    let mut x = Array2::zeros((rows.len(), width));
    let mut offset = 0;
    for (feature, column) in features.iter().zip(columns) {
        for (i, &r) in rows.iter().enumerate() {
            match column {
                Column::Numeric(values) => {
                    let raw = values[r]
                        .or_else(|| fill_number(feature))
                        .expect("filled or rejected");
                    let value = transform_numeric(raw, feature.clip, feature.transform)
                        .expect("values were checked against the transform when read");
                    let c = &feature.columns[0];
                    x[[i, offset]] = (value - c.center) / c.scale;
                }
                Column::Boolean(values) => {
                    let fill = match feature.fill {
                        Some(FillValue::Bool(b)) => Some(b),
                        _ => None,
                    };
                    let value =
                        f64::from(u8::from(values[r].or(fill).expect("filled or rejected")));
                    let c = &feature.columns[0];
                    x[[i, offset]] = (value - c.center) / c.scale;
                }
                Column::Categorical(values) => {
                    let level = values[r].as_deref().or(match &feature.fill {
                        Some(FillValue::Level(level)) => Some(level.as_str()),
                        _ => None,
                    });
                    if let Some(l) =
                        level.and_then(|level| feature.levels.iter().position(|x| x == level))
                    {
                        x[[i, offset + l]] = 1.0;
                    }
                }
            }
        }
        offset += feature.columns.len();
    }
    x
}

fn fill_number(feature: &FeatureModel) -> Option<f64> {
    match feature.fill {
        Some(FillValue::Number(v)) => Some(v),
        _ => None,
    }
}

/// Fits the logistic regression with churn as the positive class.
fn fit(
    x: &Array2<f64>,
    churned: &[bool],
    template: &Template,
    c: f64,
) -> Result<solver::Solution, TrainError> {
    let dataset = linfa::DatasetBase::new(x.view(), Array1::from(churned.to_vec()));
    solver::Options {
        c,
        tolerance: template.fit.tolerance,
        max_iterations: usize::try_from(template.fit.max_iterations).unwrap_or(usize::MAX),
        threads: 0,
    }
    .fit(&dataset)
    .map_err(|e| TrainError::Fit(e.to_string()))
}

/// Validation folds of the training rows: `(fit rows, validation rows)`.
/// With dates, the rows are ordered by date and cut into `k + 1` blocks;
/// fold `i` fits on blocks `0..i` and validates on block `i`, so no fold
/// learns from its future, and fit rows whose labels reach into the
/// validation block are left out as in the test split. Without dates, a
/// seeded stratified k-fold.
fn folds(
    rows: &[usize],
    data: &Dataset,
    k: usize,
    seed: u64,
    reach: i64,
) -> Vec<(Vec<usize>, Vec<usize>)> {
    match &data.dates {
        Some(dates) => {
            let mut ordered = rows.to_vec();
            ordered.sort_by_key(|&r| (dates[r], r));
            let cut = |b: usize| b * ordered.len() / (k + 1);
            (1..=k)
                .map(|i| {
                    let validation = ordered[cut(i)..cut(i + 1)].to_vec();
                    let fit = purge(ordered[..cut(i)].to_vec(), &validation, dates, reach);
                    (fit, validation)
                })
                .collect()
        }
        None => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut fold_of = vec![0usize; rows.len()];
            for class in [false, true] {
                let mut members: Vec<usize> = (0..rows.len())
                    .filter(|&i| data.churned[rows[i]] == class)
                    .collect();
                members.shuffle(&mut rng);
                for (n, i) in members.into_iter().enumerate() {
                    fold_of[i] = n % k;
                }
            }
            (0..k)
                .map(|f| {
                    let pick = |inside: bool| {
                        (0..rows.len())
                            .filter(|&i| (fold_of[i] == f) != inside)
                            .map(|i| rows[i])
                            .collect::<Vec<_>>()
                    };
                    (pick(true), pick(false))
                })
                .collect()
        }
    }
}

/// Cross-validates every candidate of `fit.c_grid` on the training rows and
/// picks the lowest mean validation log loss. Each fold learns its own
/// fills, scales and levels from its fit rows, as training does.
fn choose_c(
    path: &Path,
    template: &Template,
    data: &Dataset,
    train_rows: &[usize],
    reach: i64,
    (groups, column_labels): (&[CorrelatedGroup], &[&str]),
) -> Result<CrossValidation, TrainError> {
    let mut prepared = Vec::new();
    let mut skipped = 0u32;
    for (fit_rows, validation_rows) in folds(
        train_rows,
        data,
        template.fit.cv_folds as usize,
        template.split.seed,
        reach,
    ) {
        let labels = |rows: &[usize]| rows.iter().map(|&r| data.churned[r]).collect::<Vec<_>>();
        let (y_fit, y_validation) = (labels(&fit_rows), labels(&validation_rows));
        let both = |y: &[bool]| y.iter().any(|&c| c) && y.iter().any(|&c| !c);
        if !both(&y_fit) || !both(&y_validation) {
            skipped += 1;
            continue;
        }
        // A fold whose fit rows leave a feature constant or all missing
        // cannot be encoded; it is skipped like a fold with one outcome.
        let Ok(features) = template
            .features
            .iter()
            .zip(&data.columns)
            .map(|(spec, column)| encode_feature(path, spec, column, &fit_rows))
            .collect::<Result<Vec<_>, _>>()
        else {
            skipped += 1;
            continue;
        };
        // Averaged groups are averaged with the fold's own means and
        // scales; a fold on which a member does not vary is skipped too.
        // The fold learnt its own levels, so its columns can differ from
        // the training rows': members are found by label, and a level the
        // fold lacks is left out of its group there.
        let fold_labels: Vec<&str> = features
            .iter()
            .flat_map(|f| f.columns.iter().map(|c| c.label.as_str()))
            .collect();
        let fold_groups = relocate(groups, column_labels, &fold_labels);
        let x_fit = design_matrix(&features, &data.columns, &fit_rows);
        let Ok(averaging) = Averaging::fit(&x_fit, &fold_groups, &fold_labels) else {
            skipped += 1;
            continue;
        };
        prepared.push((
            averaging.apply_owned(x_fit),
            y_fit,
            averaging.apply_owned(design_matrix(&features, &data.columns, &validation_rows)),
            y_validation,
        ));
    }
    if prepared.is_empty() {
        return Err(TrainError::Fit(format!(
            "cross-validation over {} folds found no usable fold (each needs both outcomes in \
             its fit and validation rows, and every feature and averaged member varying in its \
             fit rows); use fewer folds or more data",
            template.fit.cv_folds
        )));
    }
    let mut candidates = Vec::new();
    for &c in template.fit.c_grid.iter().flatten() {
        let (mut loss, mut auc) = (0.0, 0.0);
        for (x_fit, y_fit, x_validation, y_validation) in &prepared {
            let solution = fit(x_fit, y_fit, template, c)?;
            let probabilities = predict(&solution, x_validation);
            loss += crate::metrics::log_loss(y_validation, &probabilities);
            auc += crate::metrics::roc_auc(y_validation, &probabilities);
        }
        let n = prepared.len() as f64;
        candidates.push(CvCandidate {
            c,
            mean_log_loss: loss / n,
            mean_roc_auc: auc / n,
        });
    }
    let chosen_c = candidates
        .iter()
        .min_by(|a, b| a.mean_log_loss.total_cmp(&b.mean_log_loss))
        .expect("the grid is not empty")
        .c;
    Ok(CrossValidation {
        method: if data.dates.is_some() {
            "time"
        } else {
            "stratified"
        }
        .to_owned(),
        folds: prepared.len() as u32,
        skipped_folds: skipped,
        candidates,
        chosen_c,
    })
}

/// `groups` (columns of a design labelled `from`) as columns of a design
/// labelled `to`; members missing from `to` are left out, and a group left
/// with fewer than two members is dropped.
fn relocate(groups: &[CorrelatedGroup], from: &[&str], to: &[&str]) -> Vec<CorrelatedGroup> {
    groups
        .iter()
        .filter_map(|group| {
            let mut members: Vec<(usize, f64)> = group
                .columns
                .iter()
                .zip(&group.signs)
                .filter_map(|(&i, &sign)| Some((to.iter().position(|l| *l == from[i])?, sign)))
                .collect();
            members.sort_unstable_by_key(|&(i, _)| i);
            (members.len() >= 2).then(|| CorrelatedGroup {
                columns: members.iter().map(|&(i, _)| i).collect(),
                signs: members.iter().map(|&(_, s)| s).collect(),
                strongest: group.strongest,
            })
        })
        .collect()
}

/// A fitted model in the full design's terms, for its records.
struct Fitted<'a> {
    /// The solver's answer on the reduced design.
    solution: &'a solver::Solution,
    /// The intercept after expanding averaged groups.
    intercept: f64,
    averaging: &'a Averaging,
    /// Label and feature of each full design column.
    labels: &'a [&'a str],
    owners: &'a [&'a str],
    /// Standard deviation of each full design column on the training rows.
    sds: &'a [f64],
}

impl Fitted<'_> {
    /// Each averaged group as the artifact records it.
    fn averaged_groups(&self) -> Vec<AveragedGroup> {
        self.averaging
            .params
            .iter()
            .zip(&self.solution.coefficients)
            .filter_map(|(param, &coefficient)| match *param {
                Param::Column(_) => None,
                Param::Group(g) => {
                    let group = &self.averaging.groups[g];
                    Some(AveragedGroup {
                        label: self.group_label(g),
                        coefficient,
                        scale: group.scale,
                        members: group
                            .columns
                            .iter()
                            .zip(&group.weights)
                            .map(|(&i, &weight)| AveragedMember {
                                column: self.labels[i].to_owned(),
                                weight,
                            })
                            .collect(),
                    })
                }
            })
            .collect()
    }

    /// `mean(a, -b)`: a minus marks a member moving against the first.
    fn group_label(&self, g: usize) -> String {
        let group = &self.averaging.groups[g];
        let members: Vec<String> = group
            .columns
            .iter()
            .zip(&group.weights)
            .map(|(&i, &w)| format!("{}{}", if w < 0.0 { "-" } else { "" }, self.labels[i]))
            .collect();
        format!("mean({})", members.join(", "))
    }

    /// Each fitted coefficient (a column's, or an averaged group's) with its
    /// 95 % interval and its effect on the retention of the average training
    /// account. `features` already carry the expanded coefficients and
    /// training means.
    fn coefficient_table(&self, features: &[FeatureModel]) -> Vec<CoefficientStat> {
        let base = self.intercept
            + features
                .iter()
                .flat_map(|f| &f.columns)
                .map(|c| c.coefficient * c.training_mean)
                .sum::<f64>();
        self.averaging
            .params
            .iter()
            .zip(&self.solution.coefficients)
            .zip(&self.solution.standard_errors)
            .map(|((param, &coefficient), &se)| {
                let (feature, column, sd) = match *param {
                    Param::Column(i) => (
                        self.owners[i].to_owned(),
                        self.labels[i].to_owned(),
                        self.sds[i],
                    ),
                    // The averaged column is standardised on the training rows.
                    Param::Group(g) => {
                        let mut owners: Vec<&str> = Vec::new();
                        for &i in &self.averaging.groups[g].columns {
                            if !owners.contains(&self.owners[i]) {
                                owners.push(self.owners[i]);
                            }
                        }
                        (owners.join(" + "), self.group_label(g), 1.0)
                    }
                };
                CoefficientStat {
                    feature,
                    column,
                    coefficient,
                    standard_error: se,
                    lower_95: coefficient - 1.96 * se,
                    upper_95: coefficient + 1.96 * se,
                    retention_change_per_sd: sigmoid(base) - sigmoid(base + coefficient * sd),
                }
            })
            .collect()
    }
}

/// Churn probabilities of the rows of a design matrix under a solution.
fn predict(solution: &solver::Solution, x: &Array2<f64>) -> Vec<f64> {
    x.rows()
        .into_iter()
        .map(|row| {
            sigmoid(
                solution.intercept
                    + row
                        .iter()
                        .zip(&solution.coefficients)
                        .map(|(a, b)| a * b)
                        .sum::<f64>(),
            )
        })
        .collect()
}

fn score_rows(model: &Model, data: &Dataset, rows: &[usize]) -> Vec<f64> {
    let mut slots: Vec<Option<Value<'_>>> = vec![None; data.columns.len()];
    let mut scored = Scored::default();
    rows.iter()
        .map(|&r| {
            for (slot, column) in slots.iter_mut().zip(&data.columns) {
                *slot = column_value(column, r);
            }
            model
                .score_into(&slots, &mut scored)
                .expect("rows that trained the model score with it");
            scored.churn_probability
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The most frequent value; ties go to the smallest, as scikit-learn's
/// `most_frequent` imputer does.
fn mode(values: &[&str]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for v in values {
        *counts.entry(*v).or_insert(0usize) += 1;
    }
    let best = counts.values().copied().max().unwrap_or(0);
    counts
        .into_iter()
        .find(|&(_, n)| n == best)
        .map(|(v, _)| v.to_owned())
        .unwrap_or_default()
}

/// Mean and population standard deviation, as scikit-learn's StandardScaler.
fn mean_and_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, variance.sqrt())
}

/// `name-` followed by 12 hex digits of a digest of everything that affects
/// scores, so two artifacts share a version only if they score alike.
fn model_version(artifact: &ModelArtifact) -> String {
    let mut hasher = Sha256::new();
    let scoring_part = serde_json::json!({
        "features": artifact.features,
        "intercept": artifact.intercept,
        "bands": artifact.bands,
        "booleans": artifact.booleans,
    });
    hasher.update(scoring_part.to_string().as_bytes());
    let digest = hex::encode(hasher.finalize());
    format!("{}-{}", artifact.name, &digest[..12])
}

/// A human summary of a trained model: data, split, test metrics,
/// calibration and the strongest coefficients.
pub fn summary(artifact: &ModelArtifact) -> String {
    let t = &artifact.training;
    let m = &t.test_metrics;
    let mut out = String::new();
    let _ = writeln!(out, "model      {}", artifact.model_version);
    let _ = writeln!(
        out,
        "data       {} ({} rows, {:.1} % churned, sha256 {}…)",
        t.data_file,
        t.rows,
        100.0 * t.positive_rate,
        &t.data_sha256[..12]
    );
    let _ = writeln!(
        out,
        "split      {} {:.0}/{:.0}: {} train, {} test rows (seed {})",
        t.split_method,
        100.0 * (1.0 - t.test_fraction),
        100.0 * t.test_fraction,
        t.train_rows,
        t.test_rows,
        t.seed
    );
    if t.purged_train_rows > 0 {
        let _ = writeln!(
            out,
            "           {} earlier rows left out: their label windows reach into the test period",
            t.purged_train_rows
        );
    }
    let _ = writeln!(out, "fit        L2 logistic regression, C = {}", t.c);
    if let Some(cv) = &t.cross_validation {
        let _ = writeln!(
            out,
            "\nC chosen by {}-fold {} cross-validation on the training rows",
            cv.folds, cv.method
        );
        if let Some(note) = cv.skipped_note() {
            let _ = writeln!(out, "  ({note})");
        }
        let _ = writeln!(
            out,
            "  {:>10}   {:>13}   {:>12}",
            "C", "mean log loss", "mean ROC AUC"
        );
        for candidate in &cv.candidates {
            let _ = writeln!(
                out,
                "  {:>10}   {:>13.4}   {:>12.4}{}",
                candidate.c,
                candidate.mean_log_loss,
                candidate.mean_roc_auc,
                if candidate.c == cv.chosen_c {
                    "  chosen"
                } else {
                    ""
                }
            );
        }
        out.push('\n');
    }
    for warning in &t.warnings {
        let _ = writeln!(out, "warning    {warning}");
    }
    if m.roc_auc < 0.5 {
        let _ = writeln!(
            out,
            "warning    test ROC AUC {:.4} is below 0.5, worse than chance: healthscore-server \
             refuses such a model unless started with a lower --min-test-roc-auc",
            m.roc_auc
        );
    }
    let _ = writeln!(
        out,
        "test       ROC AUC {:.4}   PR AUC {:.4}   log loss {:.4}   Brier {:.4}",
        m.roc_auc, m.pr_auc, m.log_loss, m.brier_score
    );
    let _ = writeln!(out, "\ncalibration (predicted vs observed churn)");
    let _ = writeln!(out, "  bin          rows   predicted   observed");
    for bin in &m.calibration {
        let _ = writeln!(
            out,
            "  {:.1}-{:.1}  {:>9}   {:>9.3}   {:>8.3}",
            bin.lower, bin.upper, bin.count, bin.mean_predicted, bin.observed_rate
        );
    }
    let _ = writeln!(
        out,
        "\nlift: the riskiest tenth churns {:.2} times as often as all test rows",
        m.top_decile_lift
    );
    let _ = writeln!(
        out,
        "\nband backtest (test rows by band before the outcome)"
    );
    let _ = writeln!(
        out,
        "  band         rows   churned   churn rate   share of all churners"
    );
    for band in &m.bands {
        let _ = writeln!(
            out,
            "  {:<8} {:>8} {:>9}   {:>10.3}   {:>21.3}",
            band.band, band.count, band.churned, band.churn_rate, band.share_of_churned
        );
    }
    let mut columns: Vec<&CoefficientStat> = t.coefficients.iter().collect();
    columns.sort_by(|a, b| b.coefficient.abs().total_cmp(&a.coefficient.abs()));
    let _ = writeln!(
        out,
        "\nstrongest standardised coefficients (+ raises churn), 95 % intervals, and the change in\n\
         the average account's retention for a one-SD rise of the column"
    );
    for c in columns.iter().take(10) {
        let _ = writeln!(
            out,
            "  {:>+8.3} ± {:.3}  [{:+.3}, {:+.3}]  retention {:+6.1} pp  {}",
            c.coefficient,
            c.standard_error,
            c.lower_95,
            c.upper_95,
            100.0 * c.retention_change_per_sd,
            c.column
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use rand::Rng;

    use super::*;

    #[test]
    fn stratified_split_keeps_class_shares_and_is_seeded() {
        let churned: Vec<bool> = (0..1000).map(|i| i % 4 == 0).collect();
        let (train, test) = stratified_split(&churned, 0.25, 7);
        assert_eq!(test.len(), 250);
        // 250 positives · 250 / 1000 = 62.5 and 750 · 0.25 = 187.5: the tie in
        // remainders goes to the first class, as listed (retained).
        assert_eq!(test.iter().filter(|&&r| churned[r]).count(), 62);
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>(), "disjoint and complete");
        assert_eq!(stratified_split(&churned, 0.25, 7), (train, test.clone()));
        assert_ne!(stratified_split(&churned, 0.25, 8).1, test);
    }

    #[test]
    fn time_split_holds_out_the_latest_rows() {
        let dates = [50, 10, 40, 20, 30, 60, 0, 70];
        let (train, test) = time_split(&dates, 0.25);
        assert_eq!(test, vec![5, 7]);
        assert_eq!(train, vec![0, 1, 2, 3, 4, 6]);
    }

    #[test]
    fn median_and_mode_follow_scikit_learn() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(mode(&["b", "a", "b", "a", "c"]), "a");
    }

    /// Draws a standard normal by Box-Muller.
    fn normal(rng: &mut ChaCha8Rng) -> f64 {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn recovers_known_coefficients_from_simulated_accounts() {
        // Ground truth: churn log-odds = -1 + 0.8·usage − 1.2·nps
        //   + 0.6·escalated + {basic: 0, pro: −0.5, team: +0.7}[plan].
        let (b0, b_usage, b_nps, b_esc) = (-1.0, 0.8, -1.2, 0.6);
        let plans = [("basic", 0.0), ("pro", -0.5), ("team", 0.7)];
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("sim.csv");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
        writeln!(file, "id,usage,nps,escalated,plan,churned").unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        for i in 0..40_000 {
            let usage = 3.0 + 2.0 * normal(&mut rng);
            let nps = normal(&mut rng);
            let escalated = rng.random_bool(0.3);
            let (plan, effect) = plans[rng.random_range(0..3)];
            let z = b0
                + b_usage * usage
                + b_nps * nps
                + b_esc * f64::from(u8::from(escalated))
                + effect;
            let churned = rng.random::<f64>() < crate::scoring::sigmoid(z - b_usage * 3.0);
            writeln!(
                file,
                "a{i},{usage},{nps},{escalated},{plan},{}",
                if churned { "yes" } else { "no" }
            )
            .unwrap();
        }
        drop(file);
        let template = dir.path().join("sim.toml");
        std::fs::write(
            &template,
            r#"
            name = "sim"
            id_column = "id"
            outcome = { column = "churned", positive = "yes", negative = "no" }
            [[feature]]
            name = "usage"
            kind = "numeric"
            category = "engagement"
            [[feature]]
            name = "nps"
            kind = "numeric"
            category = "satisfaction"
            [[feature]]
            name = "escalated"
            kind = "boolean"
            category = "support"
            [[feature]]
            name = "plan"
            kind = "categorical"
            category = "financial"
            "#,
        )
        .unwrap();

        let trained = train(&TrainOptions {
            data,
            template,
            progress: false,
            champion: None,
        })
        .unwrap();

        // Coefficients are stored on the standardised scale; divide by the
        // scale to get back to raw units. With 30,000 training rows the
        // standard errors are about 0.01-0.03, so 0.1 is over 3 of them.
        let f = &trained.artifact.features;
        let raw = |i: usize| f[i].columns[0].coefficient / f[i].columns[0].scale;
        assert!((raw(0) - b_usage).abs() < 0.1, "usage {}", raw(0));
        assert!((raw(1) - b_nps).abs() < 0.1, "nps {}", raw(1));
        assert!((raw(2) - b_esc).abs() < 0.1, "escalated {}", raw(2));
        // One-hot levels are identified only up to a shared constant: compare
        // differences from "basic".
        let plan = &f[3].columns;
        assert!((plan[1].coefficient - plan[0].coefficient - (-0.5)).abs() < 0.1);
        assert!((plan[2].coefficient - plan[0].coefficient - 0.7).abs() < 0.1);
        assert!(trained.artifact.training.test_metrics.roc_auc > 0.75);
    }
}
