//! In-process scoring speed, one core, beside the practical limit.
//!
//! A model with 30 numeric features scores a batch of 100,000 accounts held
//! as a row-major f64 matrix, in the same run as a plain
//! dot-product-and-sigmoid loop over the same matrix (the limit), and a
//! plain loop that also writes the 30 per-feature contributions:
//!
//! - probability and health only, through [`Model::score_into`] with the
//!   attributions it always computes, and through [`Model::score_rows`],
//!   the batch kernel for all-numeric models;
//! - with full attributions, through both.
//!
//! Run: `cargo bench --bench scoring`. Sizes: BENCH_ROWS (100000),
//! BENCH_REPEATS (20). Figures are printed, nothing is asserted.

use std::{hint::black_box, time::Instant};

use healthscore::{
    SHIPPED_MODEL,
    artifact::ModelArtifact,
    scoring::{Model, Scored, Value},
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const FEATURES: usize = 30;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The shipped artifact with its features replaced by 30 numeric ones.
fn model(rng: &mut ChaCha8Rng) -> Model {
    let mut json: serde_json::Value = serde_json::from_str(SHIPPED_MODEL).unwrap();
    let features: Vec<serde_json::Value> = (0..FEATURES)
        .map(|i| {
            let category = [
                "engagement",
                "support",
                "satisfaction",
                "financial",
                "adoption",
            ][i % 5];
            serde_json::json!({
                "name": format!("f{i:02}"),
                "kind": "numeric",
                "category": category,
                "description": "",
                "clip": null,
                "transform": "none",
                "missing": "median",
                "fill": 0.0,
                "levels": [],
                "columns": [{
                    "label": format!("f{i:02}"),
                    "center": rng.random_range(-1.0..1.0),
                    "scale": rng.random_range(0.5..2.0),
                    "coefficient": rng.random_range(-1.0..1.0),
                    "training_mean": 0.0,
                }],
            })
        })
        .collect();
    json["features"] = features.into();
    // Made up, not fitted: no coefficient table describes it.
    json["training"]["coefficients"] = serde_json::json!([]);
    json["model_version"] = "bench-30".into();
    let artifact = ModelArtifact::from_json(&json.to_string(), "bench").unwrap();
    Model::new(artifact)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Best of `repeats` timings of `f`, in accounts per second.
fn rate(rows: usize, repeats: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut best = f64::INFINITY;
    let mut sink = 0.0;
    for _ in 0..repeats {
        let started = Instant::now();
        sink += f();
        best = best.min(started.elapsed().as_secs_f64());
    }
    black_box(sink);
    rows as f64 / best
}

fn main() {
    let rows = env_or("BENCH_ROWS", 100_000);
    let repeats = env_or("BENCH_REPEATS", 20);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let model = model(&mut rng);
    let matrix: Vec<f64> = (0..rows * FEATURES)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    // The plain loops use the same linear form the model scores with.
    let weights: Vec<f64> = (0..FEATURES)
        .map(|i| {
            let c = &model.artifact().features[i].columns[0];
            c.coefficient / c.scale
        })
        .collect();
    let offset = model.artifact().intercept
        - (0..FEATURES)
            .map(|i| {
                let c = &model.artifact().features[i].columns[0];
                c.coefficient * c.center / c.scale
            })
            .sum::<f64>();

    let mut probs = vec![0.0; rows];
    let mut health = vec![0.0; rows];
    let mut contributions = vec![0.0; rows * FEATURES];
    let plain = rate(rows, repeats, || {
        for (row, p) in matrix.chunks_exact(FEATURES).zip(probs.iter_mut()) {
            let z: f64 = offset + row.iter().zip(&weights).map(|(x, w)| x * w).sum::<f64>();
            *p = sigmoid(z);
        }
        probs[rows / 2]
    });
    let plain_contrib = rate(rows, repeats, || {
        for ((row, p), out) in matrix
            .chunks_exact(FEATURES)
            .zip(probs.iter_mut())
            .zip(contributions.chunks_exact_mut(FEATURES))
        {
            let mut z = offset;
            for ((x, w), c) in row.iter().zip(&weights).zip(out.iter_mut()) {
                *c = x * w;
                z += *c;
            }
            *p = sigmoid(z);
        }
        probs[rows / 2] + contributions[rows]
    });

    let mut slots: Vec<Option<Value<'_>>> = vec![None; FEATURES];
    let mut scored = Scored::default();
    let per_account = rate(rows, repeats, || {
        let mut sum = 0.0;
        for row in matrix.chunks_exact(FEATURES) {
            for (slot, &x) in slots.iter_mut().zip(row) {
                *slot = Some(Value::Number(x));
            }
            model.score_into(&slots, &mut scored).unwrap();
            sum += scored.churn_probability;
        }
        sum
    });
    let batch_probability = rate(rows, repeats, || {
        model
            .score_rows(&matrix, &mut probs, &mut health, None)
            .unwrap();
        probs[rows / 2] + health[rows / 3]
    });
    let batch_attributions = rate(rows, repeats, || {
        model
            .score_rows(&matrix, &mut probs, &mut health, Some(&mut contributions))
            .unwrap();
        probs[rows / 2] + contributions[rows]
    });

    // The kernels agree with the per-account path.
    for (r, row) in matrix.chunks_exact(FEATURES).enumerate().take(1000) {
        for (slot, &x) in slots.iter_mut().zip(row) {
            *slot = Some(Value::Number(x));
        }
        model.score_into(&slots, &mut scored).unwrap();
        assert!((scored.churn_probability - probs[r]).abs() < 1e-12);
        for (a, b) in scored
            .attributions
            .iter()
            .zip(&contributions[r * FEATURES..(r + 1) * FEATURES])
        {
            assert!((a - b).abs() < 1e-12);
        }
    }

    let m = |r: f64| r / 1e6;
    println!(
        "in-process scoring, one core, {rows} accounts x {FEATURES} numeric features, best of {repeats}"
    );
    println!("{:<46} {:>14} {:>10}", "path", "M accounts/s", "of limit");
    println!(
        "{:<46} {:>14.1} {:>10}",
        "plain dot + sigmoid (limit a)",
        m(plain),
        "1.00"
    );
    println!(
        "{:<46} {:>14.1} {:>10}",
        "plain, writing contributions (limit b)",
        m(plain_contrib),
        "1.00"
    );
    println!(
        "{:<46} {:>14.1} {:>10.2}",
        "(a) Model::score_rows, probability + health",
        m(batch_probability),
        batch_probability / plain
    );
    println!(
        "{:<46} {:>14.1} {:>10.2}",
        "(b) Model::score_rows, with attributions",
        m(batch_attributions),
        batch_attributions / plain_contrib
    );
    println!(
        "{:<46} {:>14.1} {:>10.2}",
        "(b) Model::score_into per account (serving)",
        m(per_account),
        per_account / plain_contrib
    );
}
