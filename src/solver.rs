//! L2-regularised logistic regression by Newton's method.
//!
//! The objective is scikit-learn's, scaled by the row count:
//!
//! ```text
//! f(w, b) = 1/n · Σ [ln(1 + e^{z_i}) − y_i z_i] + ‖w‖² / (2 C n),   z_i = x_i·w + b
//! ```
//!
//! with the intercept `b` not penalised. It is smooth and strictly convex,
//! and a model has at most a few hundred parameters, so each Newton step is
//! one pass over the rows (loss, gradient and the upper triangle of the
//! Hessian, fused, split over threads) plus a Cholesky solve of a small
//! system. Steps are damped by backtracking until the objective decreases
//! enough (Armijo). Convergence is declared when the largest gradient
//! component is below the tolerance, the test scikit-learn's lbfgs applies.
//!
//! The matrix is read in place (row-major), never copied. [`Options`]
//! implements linfa's [`Fit`] for a [`DatasetBase`] of boolean targets, so
//! callers hand it the same dataset type linfa-logistic takes.

use linfa::{DatasetBase, dataset::AsSingleTargets, traits::Fit};
use ndarray::{ArrayBase, ArrayView2, Data, Ix2};
use thiserror::Error;

/// Settings of [`fit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Inverse regularisation strength, as scikit-learn's `C`.
    pub c: f64,
    /// Stop when every gradient component of the scaled objective is at
    /// most this.
    pub tolerance: f64,
    /// Most Newton steps.
    pub max_iterations: usize,
    /// Threads for the passes over the rows (0: all available cores).
    pub threads: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            c: 1.0,
            tolerance: 1e-4,
            max_iterations: 100,
            threads: 0,
        }
    }
}

/// A fitted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    /// One coefficient per column; positive raises the probability of `true`.
    pub coefficients: Vec<f64>,
    /// The intercept.
    pub intercept: f64,
    /// Standard error of each coefficient, from the inverse of the
    /// penalised Fisher information at the solution (the Hessian of the
    /// summed log-loss plus `I / C`).
    pub standard_errors: Vec<f64>,
    /// Standard error of the intercept, likewise.
    pub intercept_standard_error: f64,
    /// Newton steps taken.
    pub iterations: usize,
    /// Largest gradient component at the solution.
    pub gradient_max: f64,
    /// Objective value at the solution.
    pub objective: f64,
}

/// Why a fit failed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SolverError {
    /// Shapes or settings are wrong.
    #[error("{0}")]
    Invalid(String),
    /// A value of the matrix is NaN or infinite.
    #[error("the design matrix holds a non-finite value at row {row}, column {column}")]
    NonFinite {
        /// Row, from 0.
        row: usize,
        /// Column, from 0.
        column: usize,
    },
    /// No convergence within the step budget.
    #[error(
        "no convergence in {iterations} Newton steps (largest gradient component {gradient_max:.3e}, \
         tolerance {tolerance:.1e})"
    )]
    NotConverged {
        /// Steps taken.
        iterations: usize,
        /// Where the gradient stood.
        gradient_max: f64,
        /// The tolerance asked for.
        tolerance: f64,
    },
}

/// Loss, gradient and Hessian of one pass, unscaled sums over rows.
struct Pass {
    loss: f64,
    /// d + 1 entries; the last is the intercept.
    gradient: Vec<f64>,
    /// (d + 1)² entries, upper triangle filled.
    hessian: Vec<f64>,
}

/// `ln(1 + e^z)` without overflow.
fn log1p_exp(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// One pass over `rows`: the loss only, or with gradient and Hessian.
fn pass(
    x: &ArrayView2<'_, f64>,
    y: &[bool],
    w: &[f64],
    rows: std::ops::Range<usize>,
    full: bool,
) -> Pass {
    let d = x.ncols();
    let m = d + 1;
    let (weights, intercept) = (&w[..d], w[d]);
    let mut out = Pass {
        loss: 0.0,
        gradient: if full { vec![0.0; m] } else { Vec::new() },
        hessian: if full { vec![0.0; m * m] } else { Vec::new() },
    };
    for r in rows {
        let row = x.row(r);
        let row = row.as_slice().expect("rows are contiguous");
        let z = intercept + row.iter().zip(weights).map(|(a, b)| a * b).sum::<f64>();
        let target = f64::from(u8::from(y[r]));
        out.loss += log1p_exp(z) - target * z;
        if !full {
            continue;
        }
        let p = sigmoid(z);
        let residual = p - target;
        let s = p * (1.0 - p);
        for (g, a) in out.gradient[..d].iter_mut().zip(row) {
            *g += residual * a;
        }
        out.gradient[d] += residual;
        for j in 0..d {
            let sj = s * row[j];
            let h = &mut out.hessian[j * m + j..j * m + d];
            for (h, a) in h.iter_mut().zip(&row[j..]) {
                *h += sj * a;
            }
            out.hessian[j * m + d] += sj;
        }
        out.hessian[d * m + d] += s;
    }
    out
}

/// [`pass`] split over `threads` scoped threads and summed.
fn parallel_pass(
    x: &ArrayView2<'_, f64>,
    y: &[bool],
    w: &[f64],
    threads: usize,
    full: bool,
) -> Pass {
    let n = x.nrows();
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return pass(x, y, w, 0..n, full);
    }
    let chunk = n.div_ceil(threads);
    let parts: Vec<Pass> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let rows = t * chunk..((t + 1) * chunk).min(n);
                scope.spawn(move || pass(x, y, w, rows, full))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a pass thread panicked"))
            .collect()
    });
    let mut total = Pass {
        loss: 0.0,
        gradient: vec![0.0; parts[0].gradient.len()],
        hessian: vec![0.0; parts[0].hessian.len()],
    };
    for part in parts {
        total.loss += part.loss;
        for (a, b) in total.gradient.iter_mut().zip(&part.gradient) {
            *a += b;
        }
        for (a, b) in total.hessian.iter_mut().zip(&part.hessian) {
            *a += b;
        }
    }
    total
}

/// The lower Cholesky factor `L` of a symmetric positive definite `a`
/// (upper triangle given, `m × m`), with `a = L Lᵀ`; `None` when `a` is not
/// positive definite.
fn cholesky(a: &[f64], m: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; m * m];
    for i in 0..m {
        for j in 0..=i {
            let mut sum = a[j * m + i];
            for k in 0..j {
                sum -= l[i * m + k] * l[j * m + k];
            }
            if i == j {
                if sum <= 0.0 || !sum.is_finite() {
                    return None;
                }
                l[i * m + i] = sum.sqrt();
            } else {
                l[i * m + j] = sum / l[j * m + j];
            }
        }
    }
    Some(l)
}

/// Solves `L Lᵀ x = b` given the factor from [`cholesky`].
fn cholesky_solve(l: &[f64], b: &[f64]) -> Vec<f64> {
    let m = b.len();
    let mut y = vec![0.0; m];
    for i in 0..m {
        let s: f64 = (0..i).map(|k| l[i * m + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * m + i];
    }
    let mut x = vec![0.0; m];
    for i in (0..m).rev() {
        let s: f64 = (i + 1..m).map(|k| l[k * m + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * m + i];
    }
    x
}

/// The factor of `a`, or of `a` with a tiny jitter on its diagonal when
/// rounding left it singular (all probabilities saturated on separable
/// data).
fn cholesky_jittered(a: &[f64], m: usize) -> Result<Vec<f64>, SolverError> {
    cholesky(a, m)
        .or_else(|| {
            let mut jittered = a.to_vec();
            for j in 0..m {
                jittered[j * m + j] += 1e-10;
            }
            cholesky(&jittered, m)
        })
        .ok_or_else(|| SolverError::Invalid("the Hessian is not positive definite".into()))
}

/// Standard errors from the penalised Fisher information: the square roots
/// of the diagonal of the inverse of `Σ p(1-p) x xᵀ + I / C` (`hessian` is
/// the scaled Hessian of the objective, which is that matrix divided by n).
fn standard_errors(hessian: &[f64], m: usize, n: usize) -> Result<Vec<f64>, SolverError> {
    let l = cholesky_jittered(hessian, m)?;
    Ok((0..m)
        .map(|j| {
            let mut unit = vec![0.0; m];
            unit[j] = 1.0;
            (cholesky_solve(&l, &unit)[j] / n as f64).sqrt()
        })
        .collect())
}

impl From<linfa::Error> for SolverError {
    fn from(error: linfa::Error) -> Self {
        Self::Invalid(error.to_string())
    }
}

impl<S, T> Fit<ArrayBase<S, Ix2>, T, SolverError> for Options
where
    S: Data<Elem = f64>,
    T: AsSingleTargets<Elem = bool>,
{
    type Object = Solution;

    /// Fits the records against the targets; `true` is the positive class,
    /// whichever label is more frequent.
    fn fit(&self, dataset: &DatasetBase<ArrayBase<S, Ix2>, T>) -> Result<Solution, SolverError> {
        let targets = dataset.as_single_targets();
        let labels: Vec<bool> = targets.iter().copied().collect();
        fit(dataset.records().view(), &labels, *self)
    }
}

/// Fits the model to rows `x` (row-major, contiguous) and labels `y`.
///
/// # Errors
/// [`SolverError`] for mismatched shapes, a non-finite value, a
/// non-positive `c`, or no convergence within `max_iterations`.
pub fn fit(x: ArrayView2<'_, f64>, y: &[bool], options: Options) -> Result<Solution, SolverError> {
    let (n, d) = x.dim();
    if n == 0 || n != y.len() {
        return Err(SolverError::Invalid(format!(
            "{n} rows of features and {} labels; they must match and not be empty",
            y.len()
        )));
    }
    if !(options.c > 0.0 && options.c.is_finite()) {
        return Err(SolverError::Invalid(format!(
            "C must be a positive number, got {}",
            options.c
        )));
    }
    if !x.is_standard_layout() {
        return Err(SolverError::Invalid(
            "the design matrix must be row-major and contiguous".into(),
        ));
    }
    if let Some(at) = x.iter().position(|v| !v.is_finite()) {
        return Err(SolverError::NonFinite {
            row: at / d.max(1),
            column: at % d.max(1),
        });
    }
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        t => t,
    };
    // Below this many rows a pass is too short to be worth a thread.
    let threads = if n < 20_000 { 1 } else { threads };
    let m = d + 1;
    let scale = 1.0 / n as f64;
    let ridge = 1.0 / (options.c * n as f64);
    let objective = |w: &[f64], loss: f64| {
        loss * scale + 0.5 * ridge * w[..d].iter().map(|v| v * v).sum::<f64>()
    };

    let mut w = vec![0.0; m];
    let mut current = parallel_pass(&x, y, &w, threads, true);
    let mut iterations = 0;
    loop {
        let f = objective(&w, current.loss);
        let mut gradient: Vec<f64> = current.gradient.iter().map(|g| g * scale).collect();
        for (g, v) in gradient[..d].iter_mut().zip(&w[..d]) {
            *g += ridge * v;
        }
        let gradient_max = gradient.iter().fold(0.0f64, |a, g| a.max(g.abs()));
        let mut hessian: Vec<f64> = current.hessian.iter().map(|h| h * scale).collect();
        for j in 0..d {
            hessian[j * m + j] += ridge;
        }
        let done = |w: &[f64], iterations| -> Result<Solution, SolverError> {
            let mut standard_errors = standard_errors(&hessian, m, n)?;
            let intercept_standard_error = standard_errors.pop().expect("m = d + 1");
            Ok(Solution {
                coefficients: w[..d].to_vec(),
                intercept: w[d],
                standard_errors,
                intercept_standard_error,
                iterations,
                gradient_max,
                objective: f,
            })
        };
        if gradient_max <= options.tolerance {
            return done(&w, iterations);
        }
        if iterations == options.max_iterations {
            return Err(SolverError::NotConverged {
                iterations,
                gradient_max,
                tolerance: options.tolerance,
            });
        }
        iterations += 1;
        let minus_gradient: Vec<f64> = gradient.iter().map(|g| -g).collect();
        let step = cholesky_solve(&cholesky_jittered(&hessian, m)?, &minus_gradient);
        let slope: f64 = gradient.iter().zip(&step).map(|(g, s)| g * s).sum();
        let armijo =
            |trial: &[f64], loss: f64, t: f64| objective(trial, loss) <= f + 1e-4 * t * slope;
        // The full step nearly always passes near the optimum, so it is
        // tried with a full pass whose gradient and Hessian then serve the
        // next step; shorter steps are tried on the loss alone.
        let full: Vec<f64> = w.iter().zip(&step).map(|(v, s)| v + s).collect();
        let pass = parallel_pass(&x, y, &full, threads, true);
        if armijo(&full, pass.loss, 1.0) {
            w = full;
            current = pass;
            continue;
        }
        let mut t = 0.5;
        let mut moved = false;
        for _ in 0..40 {
            let trial: Vec<f64> = w.iter().zip(&step).map(|(v, s)| v + t * s).collect();
            let loss = parallel_pass(&x, y, &trial, threads, false).loss;
            if armijo(&trial, loss, t) {
                current = parallel_pass(&x, y, &trial, threads, true);
                w = trial;
                moved = true;
                break;
            }
            t *= 0.5;
        }
        if !moved {
            // The objective cannot be lowered any more in floating point:
            // this is the optimum to machine precision.
            return done(&w, iterations);
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Rows from a known logistic model with correlated columns.
    fn data(n: usize, d: usize, seed: u64) -> (Array2<f64>, Vec<bool>, Vec<f64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let truth: Vec<f64> = (0..d).map(|j| (j as f64 - d as f64 / 2.0) * 0.3).collect();
        let mut x = Array2::zeros((n, d));
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let shared: f64 = rng.random_range(-1.0..1.0);
            for j in 0..d {
                x[[i, j]] = rng.random_range(-2.0..2.0) + 0.5 * shared;
            }
            let z = -0.7 + x.row(i).iter().zip(&truth).map(|(a, b)| a * b).sum::<f64>();
            y.push(rng.random::<f64>() < sigmoid(z));
        }
        (x, y, truth)
    }

    /// The gradient of the scaled objective, the long way.
    fn gradient(x: &Array2<f64>, y: &[bool], s: &Solution, c: f64) -> Vec<f64> {
        let (n, d) = x.dim();
        let mut g = vec![0.0; d + 1];
        for (row, &label) in x.rows().into_iter().zip(y) {
            let z = s.intercept
                + row
                    .iter()
                    .zip(&s.coefficients)
                    .map(|(a, b)| a * b)
                    .sum::<f64>();
            let r = sigmoid(z) - f64::from(u8::from(label));
            for (g, a) in g.iter_mut().zip(row) {
                *g += r * a / n as f64;
            }
            g[d] += r / n as f64;
        }
        for (g, w) in g.iter_mut().zip(&s.coefficients) {
            *g += w / (c * n as f64);
        }
        g
    }

    #[test]
    fn newton_reaches_the_optimum_to_a_tight_tolerance() {
        let (x, y, _) = data(5000, 8, 1);
        let options = Options {
            c: 0.5,
            tolerance: 1e-10,
            ..Options::default()
        };
        let s = fit(x.view(), &y, options).unwrap();
        let g = gradient(&x, &y, &s, 0.5);
        assert!(g.iter().all(|v| v.abs() < 1e-9), "{g:?}");
        assert!(s.iterations <= 10, "{} steps", s.iterations);
    }

    #[test]
    fn threads_do_not_change_the_answer() {
        let (x, y, _) = data(50_000, 5, 2);
        let one = fit(
            x.view(),
            &y,
            Options {
                threads: 1,
                tolerance: 1e-10,
                ..Options::default()
            },
        )
        .unwrap();
        let two = fit(
            x.view(),
            &y,
            Options {
                threads: 2,
                tolerance: 1e-10,
                ..Options::default()
            },
        )
        .unwrap();
        for (a, b) in one.coefficients.iter().zip(&two.coefficients) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        assert!((one.intercept - two.intercept).abs() < 1e-9);
    }

    #[test]
    fn a_large_sample_recovers_the_true_coefficients() {
        let (x, y, truth) = data(200_000, 6, 3);
        let s = fit(
            x.view(),
            &y,
            Options {
                c: 1e6,
                ..Options::default()
            },
        )
        .unwrap();
        for (a, b) in s.coefficients.iter().zip(&truth) {
            assert!((a - b).abs() < 0.03, "{a} vs {b}");
        }
        assert!((s.intercept + 0.7).abs() < 0.03, "{}", s.intercept);
    }

    #[test]
    fn agrees_with_linfa_on_the_same_objective() {
        use linfa::traits::Fit;
        let (x, y, _) = data(4000, 6, 4);
        let c = 0.2;
        let ours = fit(
            x.view(),
            &y,
            Options {
                c,
                tolerance: 1e-10,
                ..Options::default()
            },
        )
        .unwrap();
        let dataset = linfa::Dataset::new(x.clone(), ndarray::Array1::from(y.clone()));
        let theirs = linfa_logistic::LogisticRegression::default()
            .alpha(1.0 / c)
            .gradient_tolerance(1e-8)
            .max_iterations(1000)
            .fit(&dataset)
            .unwrap();
        // linfa's positive class is the more frequent label.
        let sign = if theirs.labels().pos.class { 1.0 } else { -1.0 };
        for (a, b) in ours.coefficients.iter().zip(theirs.params().iter()) {
            assert!((a - sign * b).abs() < 1e-4, "{a} vs {}", sign * b);
        }
        assert!((ours.intercept - sign * theirs.intercept()).abs() < 1e-4);
    }

    #[test]
    fn standard_errors_cover_the_truth_at_their_stated_rate() {
        // 40 independent samples of 6 coefficients: a 95 % interval should
        // miss the true value in about 5 % of 240 cases (12); more than 30
        // misses means the errors are too small, fewer than 2 too large.
        let mut misses = 0;
        let mut total = 0;
        for seed in 0..40 {
            let (x, y, truth) = data(3000, 6, 100 + seed);
            let s = fit(
                x.view(),
                &y,
                Options {
                    c: 1e6,
                    tolerance: 1e-9,
                    ..Options::default()
                },
            )
            .unwrap();
            for ((b, se), t) in s.coefficients.iter().zip(&s.standard_errors).zip(&truth) {
                total += 1;
                if (b - t).abs() > 1.96 * se {
                    misses += 1;
                }
            }
        }
        assert_eq!(total, 240);
        assert!(
            (2..=30).contains(&misses),
            "{misses} of {total} intervals missed"
        );
    }

    #[test]
    fn separable_data_still_converges_under_regularisation() {
        let x = Array2::from_shape_vec((6, 1), vec![-3.0, -2.0, -1.0, 1.0, 2.0, 3.0]).unwrap();
        let y = [false, false, false, true, true, true];
        let s = fit(x.view(), &y, Options::default()).unwrap();
        assert!(s.coefficients[0] > 0.0 && s.coefficients[0].is_finite());
    }

    #[test]
    fn bad_input_is_refused_with_where() {
        let mut x = Array2::zeros((3, 2));
        x[[2, 1]] = f64::NAN;
        let error = fit(x.view(), &[true, false, true], Options::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the design matrix holds a non-finite value at row 2, column 1"
        );
        let shape = fit(x.view(), &[true], Options::default()).unwrap_err();
        assert!(
            shape
                .to_string()
                .contains("3 rows of features and 1 labels")
        );
        let c = fit(
            Array2::zeros((2, 1)).view(),
            &[true, false],
            Options {
                c: 0.0,
                ..Options::default()
            },
        );
        assert!(
            c.unwrap_err()
                .to_string()
                .contains("C must be a positive number")
        );
    }
}
