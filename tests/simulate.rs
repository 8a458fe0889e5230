//! `healthscore-simulate` with `healthscore-rows` and `healthscore-train`, as
//! a data scientist runs them: the real binaries on real files.
//!
//! The recovery test is the point of the simulator: rows built from its raw
//! history, trained with its template, must give back the coefficients of
//! the model that generated the churn.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use healthscore::{
    artifact::ModelArtifact,
    simulate::{TrueSignalTerm, Truth},
    template::Transform,
};
use tempfile::TempDir;

const SIMULATE: &str = env!("CARGO_BIN_EXE_healthscore-simulate");
const ROWS: &str = env!("CARGO_BIN_EXE_healthscore-rows");
const TRAIN: &str = env!("CARGO_BIN_EXE_healthscore-train");

fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .expect("the binary runs")
}

fn succeed(binary: &str, args: &[&str]) -> String {
    let output = run(binary, args);
    assert!(
        output.status.success(),
        "{binary} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn simulate(dir: &Path, accounts: u64, seed: u64, months: u32) {
    succeed(
        SIMULATE,
        &[
            "--quiet",
            "--accounts",
            &accounts.to_string(),
            "--seed",
            &seed.to_string(),
            "--months",
            &months.to_string(),
            "--start",
            "2024-01-01",
            "--out",
            dir.to_str().unwrap(),
        ],
    );
}

fn build_rows(dir: &Path) -> PathBuf {
    let rows = dir.join("rows.csv");
    succeed(
        ROWS,
        &[
            "--quiet",
            "--input",
            dir.to_str().unwrap(),
            "--template",
            dir.join("template.toml").to_str().unwrap(),
            "--out",
            rows.to_str().unwrap(),
        ],
    );
    rows
}

fn truth(dir: &Path) -> Truth {
    serde_json::from_str(&std::fs::read_to_string(dir.join("truth.json")).unwrap()).unwrap()
}

const FILES: [&str; 5] = [
    "accounts.csv",
    "subscriptions.csv",
    "signals.csv",
    "truth.json",
    "template.toml",
];

#[test]
fn the_same_seed_writes_the_same_bytes() {
    let (a, b, c) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );

    simulate(a.path(), 300, 7, 12);
    simulate(b.path(), 300, 7, 12);
    simulate(c.path(), 300, 8, 12);

    for name in FILES {
        let first = std::fs::read(a.path().join(name)).unwrap();
        assert_eq!(first, std::fs::read(b.path().join(name)).unwrap(), "{name}");
        if name != "template.toml" {
            assert_ne!(first, std::fs::read(c.path().join(name)).unwrap(), "{name}");
        }
    }
}

#[test]
fn out_of_range_sizes_are_refused() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().to_str().unwrap();

    let few = run(SIMULATE, &["--quiet", "--accounts", "99", "--out", out]);
    let short = run(SIMULATE, &["--quiet", "--months", "5", "--out", out]);

    assert!(!few.status.success());
    assert_eq!(
        String::from_utf8_lossy(&few.stderr).trim(),
        "error: --accounts must be 100 to 1000000, got 99"
    );
    assert_eq!(
        String::from_utf8_lossy(&short.stderr).trim(),
        "error: --months must be 6 to 120, got 5"
    );
}

#[test]
fn rows_from_the_written_template_are_the_simulated_decisions() {
    // One row per churn decision and one positive per churn: the template's
    // [history] settings line the observation dates up with the decisions,
    // and the horizon is one decision interval.
    let dir = TempDir::new().unwrap();
    simulate(dir.path(), 1000, 3, 18);

    let rows = build_rows(dir.path());

    let truth = truth(dir.path());
    let mut reader = csv::Reader::from_path(&rows).unwrap();
    let churned = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "churned");
    let (mut n, mut positives) = (0, 0);
    for record in reader.records() {
        n += 1;
        positives += u64::from(&record.unwrap()[churned.unwrap()] == "yes");
    }
    assert_eq!(n, truth.decisions);
    assert_eq!(positives, truth.churns);
    assert!(truth.churns > 0 && truth.churns < truth.decisions);
}

/// Inverts a small symmetric positive definite matrix by Gauss-Jordan
/// elimination with partial pivoting.
fn invert(mut a: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut inv: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
            .unwrap();
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let p = a[col][col];
        assert!(p.abs() > 1e-12, "singular information matrix");
        for j in 0..n {
            a[col][j] /= p;
            inv[col][j] /= p;
        }
        for row in 0..n {
            if row != col {
                let f = a[row][col];
                for j in 0..n {
                    a[row][j] -= f * a[col][j];
                    inv[row][j] -= f * inv[col][j];
                }
            }
        }
    }
    inv
}

/// The true model's inputs for one row: intercept, the signal terms
/// (transformed, missing filled as the truth says), the non-baseline plans,
/// ln(1 + seats).
fn inputs(truth: &Truth, plans: &[String], row: &HashMap<&str, &str>) -> Vec<f64> {
    let mut x = vec![1.0];
    for term in &truth.signal_terms {
        let TrueSignalTerm {
            name,
            fill,
            transform,
            ..
        } = term;
        let cell = row[name.as_str()];
        let raw = if cell.is_empty() {
            fill.expect("only filled features are missing")
        } else {
            cell.parse().unwrap()
        };
        x.push(match transform {
            Transform::None => raw,
            Transform::Log1p => raw.ln_1p(),
        });
    }
    for plan in &plans[1..] {
        x.push(f64::from(u8::from(row["plan"] == plan)));
    }
    x.push(row["seats"].parse::<f64>().unwrap().ln_1p());
    x
}

#[test]
fn training_on_the_rows_recovers_the_true_coefficients() {
    // 20,000 accounts over 18 months: about 190,000 decisions and 7,000
    // churns, under a minute in a debug build.
    let dir = TempDir::new().unwrap();
    simulate(dir.path(), 20_000, 11, 18);
    let rows = build_rows(dir.path());
    let model = dir.path().join("model.json");
    succeed(
        TRAIN,
        &[
            "--quiet",
            "--data",
            rows.to_str().unwrap(),
            "--template",
            dir.path().join("template.toml").to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
        ],
    );
    let truth = truth(dir.path());
    let artifact = ModelArtifact::load(&model).unwrap();

    // Fitted coefficients on the raw (transformed, unstandardised) scale, in
    // the truth's parametrisation: plan effects relative to the baseline.
    let feature = |name: &str| artifact.features.iter().find(|f| f.name == name).unwrap();
    let slope = |name: &str| {
        let c = &feature(name).columns[0];
        c.coefficient / c.scale
    };
    let mut plans: Vec<String> = truth.plan_effects.keys().cloned().collect();
    plans.sort_by(|a, b| truth.plan_effects[b].total_cmp(&truth.plan_effects[a]));
    let level = |plan: &str| {
        let plan_feature = feature("plan");
        let i = plan_feature.levels.iter().position(|l| l == plan).unwrap();
        plan_feature.columns[i].coefficient
    };
    let mut names: Vec<String> = truth.signal_terms.iter().map(|t| t.name.clone()).collect();
    let mut fitted: Vec<f64> = names.iter().map(|n| slope(n)).collect();
    let mut true_values: Vec<f64> = truth.signal_terms.iter().map(|t| t.coefficient).collect();
    for plan in &plans[1..] {
        names.push(format!("plan={plan} - plan={}", plans[0]));
        fitted.push(level(plan) - level(&plans[0]));
        true_values.push(truth.plan_effects[plan] - truth.plan_effects[&plans[0]]);
    }
    names.push("seats (log1p)".into());
    fitted.push(slope("seats"));
    true_values.push(truth.log_seats_coefficient);

    // Standard errors from the Fisher information at the true coefficients
    // over the training split (the earliest 75 % of rows by date, as the
    // trainer's time split takes them).
    let mut reader = csv::Reader::from_path(&rows).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let date = header.iter().position(|h| h == "observed_at").unwrap();
    let dates: Vec<i64> = records
        .iter()
        .map(|r| healthscore::dataset::parse_date(&r[date]).unwrap())
        .collect();
    let (train_rows, _) = healthscore::train::time_split(&dates, 0.25);
    let beta: Vec<f64> = std::iter::once(truth.intercept)
        .chain(true_values.iter().copied())
        .collect();
    let k = beta.len();
    let mut information = vec![vec![0.0; k]; k];
    for &r in &train_rows {
        let row: HashMap<&str, &str> = header
            .iter()
            .map(String::as_str)
            .zip(records[r].iter())
            .collect();
        let x = inputs(&truth, &plans, &row);
        let eta: f64 = x.iter().zip(&beta).map(|(a, b)| a * b).sum();
        let p = 1.0 / (1.0 + (-eta).exp());
        for i in 0..k {
            for j in 0..k {
                information[i][j] += p * (1.0 - p) * x[i] * x[j];
            }
        }
    }
    let covariance = invert(information);

    let mut report = String::new();
    let mut failures = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let se = covariance[i + 1][i + 1].sqrt();
        let (got, want) = (fitted[i], true_values[i]);
        report.push_str(&format!(
            "{name:<32} true {want:+.4}  fitted {got:+.4}  se {se:.4}  z {:+.2}\n",
            (got - want) / se
        ));
        // Four standard errors: a correct estimator strays further about
        // once in 16,000 coefficients. The truth is a per-decision hazard
        // and each row is exactly one decision (horizon = interval), so the
        // fitted logistic model is the true model, up to sampling error and
        // the L2 penalty (C = 1 against ~140,000 training rows: negligible).
        if (got - want).abs() > 4.0 * se {
            failures.push(format!("{name}: outside 4 standard errors"));
        }
        if got.signum() != want.signum() {
            failures.push(format!("{name}: wrong sign"));
        }
        // The test has power only if the true effect is clearly nonzero.
        assert!(
            want.abs() > 4.0 * se,
            "{name}: too few rows to test\n{report}"
        );
    }
    eprintln!("{report}");
    assert!(failures.is_empty(), "{failures:?}\n{report}");
}
