//! Training speed: the Newton solver of `healthscore::solver` beside
//! linfa-logistic (the chosen dependency, with its gradient tolerance scaled
//! to the row count) and, when Python with scikit-learn is installed,
//! scikit-learn's LogisticRegression (lbfgs) on the same matrix, in one run.
//!
//! The data: BENCH_TRAIN_ROWS rows (default 1,000,000) of 30 correlated
//! features from a known logistic model, seeded; every fit sees those rows
//! and is scored by ROC AUC on a fifth as many more from the same model. Reported: wall time of
//! each fit, its steps, the largest coefficient difference from ours, the
//! test AUC, and peak resident memory against the size of the feature matrix
//! the fit reads (ours: this process; scikit-learn: its own process, beyond
//! what it held after loading the matrix).
//!
//! Run: `cargo bench --bench training`. BENCH_TRAIN_ROWS, BENCH_TRAIN_C
//! (default 1.0), BENCH_LINFA=0 and BENCH_SKLEARN=0 skip those fits.

use std::{io::Write, process::Command, time::Instant};

use healthscore::metrics::roc_auc;
use healthscore::solver::{self, Options};
use linfa::traits::Fit;
use ndarray::{Array2, ArrayView2, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FEATURES: usize = 30;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of this process, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Rows from a known logistic model: columns share a common factor, so they
/// correlate as real account features do.
fn simulate(rows: usize) -> (Array2<f64>, Vec<bool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let truth: Vec<f64> = (0..FEATURES).map(|_| rng.random_range(-0.8..0.8)).collect();
    let mut x = Array2::<f64>::zeros((rows, FEATURES));
    let mut y = Vec::with_capacity(rows);
    for mut row in x.rows_mut() {
        let shared: f64 = rng.random_range(-1.0..1.0);
        for v in row.iter_mut() {
            *v = rng.random_range(-1.7..1.7) + 0.3 * shared;
        }
        let z = -1.2 + row.iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>();
        y.push(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp()));
    }
    (x, y)
}

/// `x · coefficients + intercept` per row: the log-odds, which rank exactly
/// as the probabilities do.
fn log_odds(x: ArrayView2<'_, f64>, coefficients: &[f64], intercept: f64) -> Vec<f64> {
    x.rows()
        .into_iter()
        .map(|row| {
            intercept
                + row
                    .iter()
                    .zip(coefficients)
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
        })
        .collect()
}

fn max_difference(a: &[f64], b: impl IntoIterator<Item = f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

fn row(name: &str, seconds: f64, steps: &str, difference: f64, auc: f64) {
    println!("{name:<36} {seconds:>8.2} {steps:>7} {difference:>17.2e} {auc:>9.5}");
}

fn main() {
    let rows: usize = env_or("BENCH_TRAIN_ROWS", 1_000_000);
    let c: f64 = env_or("BENCH_TRAIN_C", 1.0);
    let (x, y) = simulate(rows + rows / 5);
    let n_train = rows;
    let (x_train, x_test) = (x.slice(s![..n_train, ..]), x.slice(s![n_train.., ..]));
    let (y_train, y_test) = y.split_at(n_train);
    let matrix_bytes = (n_train * FEATURES * 8) as u64;
    let before = peak_rss().unwrap_or(0);

    let started = Instant::now();
    let ours = solver::fit(
        x_train,
        y_train,
        Options {
            c,
            ..Options::default()
        },
    )
    .expect("the fit converges");
    let ours_s = started.elapsed().as_secs_f64();
    let after_ours = peak_rss().unwrap_or(0);
    let ours_auc = roc_auc(
        y_test,
        &log_odds(x_test, &ours.coefficients, ours.intercept),
    );

    println!(
        "training: {n_train} rows x {FEATURES} features (feature matrix {:.0} MB), \
         {} test rows, C = {c}",
        matrix_bytes as f64 / 1e6,
        y_test.len()
    );
    println!(
        "{:<36} {:>8} {:>7} {:>17} {:>9}",
        "fit", "wall s", "steps", "max |coef - ours|", "test AUC"
    );
    row(
        "healthscore Newton",
        ours_s,
        &ours.iterations.to_string(),
        0.0,
        ours_auc,
    );

    if env_or("BENCH_LINFA", 1) == 1 {
        let started = Instant::now();
        let dataset =
            linfa::Dataset::new(x_train.to_owned(), ndarray::Array1::from(y_train.to_vec()));
        let fitted = linfa_logistic::LogisticRegression::default()
            .alpha(1.0 / c)
            .gradient_tolerance(1e-4 * n_train as f64)
            .max_iterations(200)
            .fit(&dataset)
            .expect("linfa converges");
        let seconds = started.elapsed().as_secs_f64();
        // linfa's positive class is the more frequent label.
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        let coefficients: Vec<f64> = fitted.params().iter().map(|v| sign * v).collect();
        let auc = roc_auc(
            y_test,
            &log_odds(x_test, &coefficients, sign * fitted.intercept()),
        );
        row(
            "linfa-logistic (tolerance x rows)",
            seconds,
            "-",
            max_difference(&ours.coefficients, coefficients),
            auc,
        );
    }

    let sklearn = if env_or("BENCH_SKLEARN", 1) == 1 {
        scikit_learn(x_train, y_train, x_test, y_test, c)
    } else {
        Err("BENCH_SKLEARN=0".into())
    };
    match &sklearn {
        Ok(fit) => row(
            "scikit-learn lbfgs",
            fit.seconds,
            &fit.iterations.to_string(),
            max_difference(&ours.coefficients, fit.coefficients.iter().copied()),
            fit.auc,
        ),
        Err(why) => println!("scikit-learn not run: {why}"),
    }

    println!(
        "peak memory of our fit: {:.2} x the feature matrix (process peak {:.0} MB before it, {:.0} MB after)",
        (after_ours.saturating_sub(before) + matrix_bytes) as f64 / matrix_bytes as f64,
        before as f64 / 1e6,
        after_ours as f64 / 1e6
    );
    if let Ok(fit) = &sklearn {
        println!(
            "peak memory of scikit-learn's fit: {:.2} x the feature matrix (its process: {:.0} MB after loading, {:.0} MB peak)",
            (fit.peak_bytes.saturating_sub(fit.loaded_bytes) + matrix_bytes) as f64
                / matrix_bytes as f64,
            fit.loaded_bytes as f64 / 1e6,
            fit.peak_bytes as f64 / 1e6
        );
        println!(
            "ours / scikit-learn wall time: {:.2}; test AUC ours - scikit-learn: {:+.5}",
            ours_s / fit.seconds,
            ours_auc - fit.auc
        );
    }
}

struct SklearnFit {
    seconds: f64,
    iterations: u64,
    coefficients: Vec<f64>,
    auc: f64,
    loaded_bytes: u64,
    peak_bytes: u64,
}

/// Fits scikit-learn's LogisticRegression (lbfgs, the same C) on the same
/// matrix, handed over as raw little-endian f64, in its own process.
fn scikit_learn(
    x_train: ArrayView2<'_, f64>,
    y_train: &[bool],
    x_test: ArrayView2<'_, f64>,
    y_test: &[bool],
    c: f64,
) -> Result<SklearnFit, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let write = |name: &str, x: ArrayView2<'_, f64>, y: &[bool]| -> std::io::Result<()> {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(dir.path().join(format!("{name}.x")))?);
        for v in x.iter() {
            f.write_all(&v.to_le_bytes())?;
        }
        f.flush()?;
        std::fs::write(
            dir.path().join(format!("{name}.y")),
            y.iter().map(|&b| u8::from(b)).collect::<Vec<u8>>(),
        )
    };
    write("train", x_train, y_train).map_err(|e| e.to_string())?;
    write("test", x_test, y_test).map_err(|e| e.to_string())?;
    let script = format!(
        r#"
import os, resource, time
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
def load(name):
    x = np.fromfile(os.path.join({dir:?}, name + ".x"), dtype="<f8").reshape(-1, {FEATURES})
    return x, np.fromfile(os.path.join({dir:?}, name + ".y"), dtype="u1")
x, y = load("train")
loaded = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
t = time.perf_counter()
m = LogisticRegression(C={c}, solver="lbfgs", max_iter=1000).fit(x, y)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
xt, yt = load("test")
auc = roc_auc_score(yt, m.decision_function(xt))
print(seconds, int(m.n_iter_[0]), float(auc), loaded, peak, " ".join(repr(float(v)) for v in m.coef_[0]))
"#,
        dir = dir.path().display().to_string(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("python3 failed")
            .to_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let number = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unexpected output from python3: {text}"))
    };
    Ok(SklearnFit {
        seconds: number(0)?,
        iterations: number(1)? as u64,
        auc: number(2)?,
        loaded_bytes: number(3)? as u64,
        peak_bytes: number(4)? as u64,
        coefficients: (5..fields.len()).map(number).collect::<Result<_, _>>()?,
    })
}
