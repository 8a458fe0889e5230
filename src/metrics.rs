//! Held-out evaluation of churn probabilities: discrimination (ROC AUC,
//! PR AUC), accuracy of the probabilities (log loss, Brier score) and a
//! calibration table; and what account teams act on: the lift of the
//! riskiest decile and a backtest of the health bands. Definitions follow
//! scikit-learn's `roc_auc_score`, `average_precision_score`, `log_loss` and
//! `brier_score_loss`.

use serde::{Deserialize, Serialize};

use crate::{
    scoring::{Band, health_score},
    template::BandThresholds,
};

/// Number of equal-width bins in the calibration table.
pub const CALIBRATION_BINS: usize = 10;

/// Metrics of a model on rows it was not fitted on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestMetrics {
    /// Area under the ROC curve; ties count one half.
    pub roc_auc: f64,
    /// Average precision: the step-wise area under the precision-recall curve.
    pub pr_auc: f64,
    /// Mean negative log-likelihood, probabilities clipped to [1e-15, 1 - 1e-15].
    pub log_loss: f64,
    /// Mean squared difference between probability and outcome.
    pub brier_score: f64,
    /// Rows evaluated.
    pub rows: u64,
    /// Churned rows evaluated.
    pub positives: u64,
    /// Ten equal-width bins of predicted probability.
    pub calibration: Vec<CalibrationBin>,
    /// Churn rate of the riskiest tenth of rows over the overall churn rate.
    #[serde(default)]
    pub top_decile_lift: f64,
    /// Rows in ten equal parts from the riskiest to the safest.
    #[serde(default)]
    pub lift: Vec<Decile>,
    /// How the rows fell into the health bands and how many of each churned:
    /// HEALTHY, WATCH, AT_RISK in that order.
    #[serde(default)]
    pub bands: Vec<BandOutcome>,
}

/// A held-out metric by which a new model is compared with the champion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// ROC AUC, higher is better.
    RocAuc,
    /// PR AUC (average precision), higher is better.
    PrAuc,
    /// Log loss, lower is better.
    LogLoss,
    /// Brier score, lower is better.
    Brier,
}

impl Metric {
    /// Every metric, in the order reports list them.
    pub const ALL: [Metric; 4] = [
        Metric::RocAuc,
        Metric::PrAuc,
        Metric::LogLoss,
        Metric::Brier,
    ];

    /// The name flags and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RocAuc => "roc_auc",
            Metric::PrAuc => "pr_auc",
            Metric::LogLoss => "log_loss",
            Metric::Brier => "brier",
        }
    }

    /// This metric's value in `metrics`.
    pub fn of(self, metrics: &TestMetrics) -> f64 {
        match self {
            Metric::RocAuc => metrics.roc_auc,
            Metric::PrAuc => metrics.pr_auc,
            Metric::LogLoss => metrics.log_loss,
            Metric::Brier => metrics.brier_score,
        }
    }

    /// Whether `challenger` is at least as good as `champion` by this
    /// metric.
    pub fn at_least_as_good(self, challenger: &TestMetrics, champion: &TestMetrics) -> bool {
        let (new, old) = (self.of(challenger), self.of(champion));
        match self {
            Metric::RocAuc | Metric::PrAuc => new >= old,
            Metric::LogLoss | Metric::Brier => new <= old,
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                format!("unknown metric {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// One tenth of the rows, ranked by predicted churn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decile {
    /// 1 for the riskiest tenth, 10 for the safest.
    pub decile: u32,
    /// Rows in it.
    pub count: u64,
    /// Mean predicted probability.
    pub mean_predicted: f64,
    /// Share that churned.
    pub observed_rate: f64,
    /// `observed_rate` over the churn rate of all rows.
    pub lift: f64,
}

/// Outcomes of the rows the model put in one health band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandOutcome {
    /// `HEALTHY`, `WATCH` or `AT_RISK`.
    pub band: String,
    /// Rows in the band.
    pub count: u64,
    /// Of them, rows that churned.
    pub churned: u64,
    /// `churned / count` (0 when empty): for AT_RISK, how often the alarm
    /// was right; for HEALTHY, how often green accounts churned anyway.
    pub churn_rate: f64,
    /// Of all churned rows, the share that were in this band beforehand.
    pub share_of_churned: f64,
}

/// Predicted against observed churn within one probability range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationBin {
    /// Inclusive lower edge.
    pub lower: f64,
    /// Exclusive upper edge (inclusive for the last bin).
    pub upper: f64,
    /// Rows in the bin.
    pub count: u64,
    /// Mean predicted probability in the bin (0 when empty).
    pub mean_predicted: f64,
    /// Share of churned rows in the bin (0 when empty).
    pub observed_rate: f64,
}

impl TestMetrics {
    /// Evaluates `probabilities` against `churned`.
    ///
    /// # Panics
    /// When the slices differ in length, are empty, or hold one class only;
    /// training checks all three before evaluating.
    pub fn evaluate(churned: &[bool], probabilities: &[f64], bands: &BandThresholds) -> Self {
        assert_eq!(
            churned.len(),
            probabilities.len(),
            "one probability per row"
        );
        let positives = churned.iter().filter(|&&c| c).count();
        assert!(
            positives > 0 && positives < churned.len(),
            "metrics need both classes"
        );
        let lift = lift_table(churned, probabilities);
        Self {
            roc_auc: roc_auc(churned, probabilities),
            pr_auc: average_precision(churned, probabilities),
            log_loss: log_loss(churned, probabilities),
            brier_score: brier_score(churned, probabilities),
            rows: churned.len() as u64,
            positives: positives as u64,
            calibration: calibration_table(churned, probabilities),
            top_decile_lift: lift[0].lift,
            lift,
            bands: band_backtest(churned, probabilities, bands),
        }
    }
}

/// Ten parts of near-equal size (sizes differ by at most one row), riskiest
/// first; ties in probability keep input order.
pub fn lift_table(churned: &[bool], probabilities: &[f64]) -> Vec<Decile> {
    let order = descending(probabilities);
    let n = order.len();
    let base = churned.iter().filter(|&&c| c).count() as f64 / n.max(1) as f64;
    (0..10)
        .map(|d| {
            let part = &order[d * n / 10..(d + 1) * n / 10];
            let count = part.len();
            let positives = part.iter().filter(|&&r| churned[r]).count();
            let mean = |total: f64| {
                if count == 0 {
                    0.0
                } else {
                    total / count as f64
                }
            };
            let observed_rate = mean(positives as f64);
            Decile {
                decile: d as u32 + 1,
                count: count as u64,
                mean_predicted: mean(part.iter().map(|&r| probabilities[r]).sum()),
                observed_rate,
                lift: if base > 0.0 {
                    observed_rate / base
                } else {
                    0.0
                },
            }
        })
        .collect()
}

/// Counts rows and churned rows per band of their health score.
pub fn band_backtest(
    churned: &[bool],
    probabilities: &[f64],
    thresholds: &BandThresholds,
) -> Vec<BandOutcome> {
    let all_churned = churned.iter().filter(|&&c| c).count();
    [
        (Band::Healthy, "HEALTHY"),
        (Band::Watch, "WATCH"),
        (Band::AtRisk, "AT_RISK"),
    ]
    .into_iter()
    .map(|(band, name)| {
        let (count, positives) = churned
            .iter()
            .zip(probabilities)
            .filter(|(_, p)| Band::of(health_score(**p), thresholds) == band)
            .fold((0u64, 0u64), |(n, k), (&c, _)| (n + 1, k + u64::from(c)));
        BandOutcome {
            band: name.to_owned(),
            count,
            churned: positives,
            churn_rate: if count == 0 {
                0.0
            } else {
                positives as f64 / count as f64
            },
            share_of_churned: if all_churned == 0 {
                0.0
            } else {
                positives as f64 / all_churned as f64
            },
        }
    })
    .collect()
}

/// Row order by descending score, ties kept in input order.
fn descending(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// ROC AUC by the Mann-Whitney statistic with tied scores counting one half.
pub fn roc_auc(churned: &[bool], scores: &[f64]) -> f64 {
    let order = descending(scores);
    let positives = churned.iter().filter(|&&c| c).count() as f64;
    let negatives = churned.len() as f64 - positives;
    // Walk thresholds from high to low; each group of tied scores adds the
    // trapezoid between the previous and the new (FPR, TPR) point.
    let (mut tp, mut fp, mut area) = (0.0, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let (tp0, fp0) = (tp, fp);
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            if churned[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        area += (fp - fp0) * (tp + tp0) / 2.0;
    }
    area / (positives * negatives)
}

/// Average precision: Σ (recall_n − recall_{n−1}) · precision_n over
/// distinct score thresholds, as scikit-learn computes it.
pub fn average_precision(churned: &[bool], scores: &[f64]) -> f64 {
    let positives = churned.iter().filter(|&&c| c).count() as f64;
    let (mut ap, mut last_recall) = (0.0, 0.0);
    for (tp, seen) in threshold_counts(churned, scores).into_iter().skip(1) {
        let recall = tp / positives;
        ap += (recall - last_recall) * (tp / seen);
        last_recall = recall;
    }
    ap
}

/// The points of the ROC curve, `(false positive rate, true positive
/// rate)`, one per distinct score from the highest down, starting at (0, 0).
pub fn roc_curve(churned: &[bool], scores: &[f64]) -> Vec<(f64, f64)> {
    let positives = churned.iter().filter(|&&c| c).count().max(1) as f64;
    let negatives = (churned.len() as f64 - positives).max(1.0);
    threshold_counts(churned, scores)
        .into_iter()
        .map(|(tp, seen)| ((seen - tp) / negatives, tp / positives))
        .collect()
}

/// The points of the precision-recall curve, `(recall, precision)`, one
/// per distinct score from the highest down.
pub fn pr_curve(churned: &[bool], scores: &[f64]) -> Vec<(f64, f64)> {
    let positives = churned.iter().filter(|&&c| c).count().max(1) as f64;
    threshold_counts(churned, scores)
        .into_iter()
        .skip(1)
        .map(|(tp, seen)| (tp / positives, tp / seen))
        .collect()
}

/// `(true positives, rows)` at or above each distinct score, from the
/// highest down, after a first `(0, 0)`.
fn threshold_counts(churned: &[bool], scores: &[f64]) -> Vec<(f64, f64)> {
    let order = descending(scores);
    let mut out = vec![(0.0, 0.0)];
    let (mut tp, mut seen) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            tp += f64::from(u8::from(churned[order[i]]));
            seen += 1.0;
            i += 1;
        }
        out.push((tp, seen));
    }
    out
}

/// Mean negative log-likelihood with probabilities clipped away from 0 and 1.
pub fn log_loss(churned: &[bool], probabilities: &[f64]) -> f64 {
    const EPS: f64 = 1e-15;
    let total: f64 = churned
        .iter()
        .zip(probabilities)
        .map(|(&c, &p)| {
            let p = p.clamp(EPS, 1.0 - EPS);
            if c { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / churned.len() as f64
}

/// Mean squared error of the probabilities.
pub fn brier_score(churned: &[bool], probabilities: &[f64]) -> f64 {
    let total: f64 = churned
        .iter()
        .zip(probabilities)
        .map(|(&c, &p)| (p - f64::from(u8::from(c))).powi(2))
        .sum();
    total / churned.len() as f64
}

/// Ten equal-width bins of predicted probability with observed churn rates.
pub fn calibration_table(churned: &[bool], probabilities: &[f64]) -> Vec<CalibrationBin> {
    let mut counts = [0u64; CALIBRATION_BINS];
    let mut predicted = [0.0; CALIBRATION_BINS];
    let mut observed = [0u64; CALIBRATION_BINS];
    for (&c, &p) in churned.iter().zip(probabilities) {
        let bin = ((p * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
        counts[bin] += 1;
        predicted[bin] += p;
        observed[bin] += u64::from(c);
    }
    (0..CALIBRATION_BINS)
        .map(|bin| {
            let n = counts[bin];
            let mean = |total: f64| if n == 0 { 0.0 } else { total / n as f64 };
            CalibrationBin {
                lower: bin as f64 / CALIBRATION_BINS as f64,
                upper: (bin + 1) as f64 / CALIBRATION_BINS as f64,
                count: n,
                mean_predicted: mean(predicted[bin]),
                observed_rate: mean(observed[bin] as f64),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values computed with scikit-learn 1.9.1:
    // y = [0,0,1,1,0,1,0,1], p = [.1,.4,.35,.8,.4,.9,.2,.6]
    const Y: [bool; 8] = [false, false, true, true, false, true, false, true];
    const P: [f64; 8] = [0.1, 0.4, 0.35, 0.8, 0.4, 0.9, 0.2, 0.6];

    #[test]
    fn lift_ranks_riskiest_first_and_covers_every_row() {
        // 20 rows, 4 churned; the two riskiest rows both churned, so the
        // first tenth churns at 1.0 against a base rate of 0.2: lift 5.
        let p: Vec<f64> = (0..20).map(|i| 1.0 - f64::from(i) / 20.0).collect();
        let y: Vec<bool> = (0..20).map(|i| [0, 1, 7, 15].contains(&i)).collect();
        let table = lift_table(&y, &p);
        assert_eq!(table.len(), 10);
        assert_eq!(table.iter().map(|d| d.count).sum::<u64>(), 20);
        assert!((table[0].lift - 5.0).abs() < 1e-12);
        assert!((table[0].mean_predicted - 0.975).abs() < 1e-12);
        assert_eq!(table[1].observed_rate, 0.0);
        assert!(
            (table[3].lift - 2.5).abs() < 1e-12,
            "row 7 is in the fourth tenth"
        );
        let metrics = TestMetrics::evaluate(&y, &p, &BandThresholds::default());
        assert_eq!(metrics.top_decile_lift, table[0].lift);
    }

    #[test]
    fn the_champion_comparison_knows_which_way_is_better() {
        let champion = TestMetrics {
            roc_auc: 0.80,
            pr_auc: 0.60,
            log_loss: 0.40,
            brier_score: 0.13,
            ..TestMetrics::default()
        };
        let better_auc_worse_loss = TestMetrics {
            roc_auc: 0.81,
            pr_auc: 0.60,
            log_loss: 0.45,
            brier_score: 0.12,
            ..TestMetrics::default()
        };
        let judged: Vec<bool> = Metric::ALL
            .iter()
            .map(|m| m.at_least_as_good(&better_auc_worse_loss, &champion))
            .collect();
        assert_eq!(
            judged,
            [true, true, false, true],
            "a tie counts as good enough"
        );
        assert_eq!("log_loss".parse::<Metric>(), Ok(Metric::LogLoss));
        assert_eq!(
            "auc".parse::<Metric>().unwrap_err(),
            "unknown metric \"auc\"; expected one of roc_auc, pr_auc, log_loss, brier"
        );
    }

    #[test]
    fn band_backtest_counts_where_churners_were() {
        // Health 100·(1-p): 90 and 80 are HEALTHY (>= 75), 60 WATCH, 30 and
        // 10 AT_RISK under the default 75 / 50 thresholds.
        let p = [0.1, 0.2, 0.4, 0.7, 0.9];
        let y = [false, true, false, true, true];
        let bands = band_backtest(&y, &p, &BandThresholds::default());
        let got: Vec<(&str, u64, u64)> = bands
            .iter()
            .map(|b| (b.band.as_str(), b.count, b.churned))
            .collect();
        assert_eq!(got, [("HEALTHY", 2, 1), ("WATCH", 1, 0), ("AT_RISK", 2, 2)]);
        assert!((bands[2].churn_rate - 1.0).abs() < 1e-12);
        assert!((bands[0].share_of_churned - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn curves_match_scikit_learn() {
        // roc_curve(y, p, drop_intermediate=False): fpr and tpr per threshold
        let roc = roc_curve(&Y, &P);
        let fpr = [0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.75, 1.0];
        let tpr = [0.0, 0.25, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0];
        assert_eq!(roc.len(), fpr.len());
        for ((x, y), (a, b)) in roc.iter().zip(fpr.iter().zip(&tpr)) {
            assert!((x - a).abs() < 1e-12 && (y - b).abs() < 1e-12, "{roc:?}");
        }
        // The trapezoids under the ROC points add up to the AUC.
        let area: f64 = roc
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - roc_auc(&Y, &P)).abs() < 1e-12);
        let pr = pr_curve(&Y, &P);
        assert_eq!(pr[0], (0.25, 1.0));
        assert_eq!(*pr.last().unwrap(), (1.0, 0.5));
    }

    #[test]
    fn roc_auc_matches_scikit_learn() {
        // roc_auc_score(y, p) = 0.875
        assert!((roc_auc(&Y, &P) - 0.875).abs() < 1e-12);
    }

    #[test]
    fn roc_auc_counts_ties_as_half() {
        let y = [true, false];
        assert!((roc_auc(&y, &[0.5, 0.5]) - 0.5).abs() < 1e-12);
        assert!((roc_auc(&y, &[0.9, 0.1]) - 1.0).abs() < 1e-12);
        assert!(roc_auc(&y, &[0.1, 0.9]).abs() < 1e-12);
    }

    #[test]
    fn average_precision_matches_scikit_learn() {
        // average_precision_score(y, p) = 0.9166666666666666
        assert!((average_precision(&Y, &P) - 0.916_666_666_666_666_6).abs() < 1e-12);
    }

    #[test]
    fn log_loss_and_brier_match_scikit_learn() {
        // log_loss(y, p) = 0.4049133912175903
        assert!((log_loss(&Y, &P) - 0.404_913_391_217_590_3).abs() < 1e-12);
        // brier_score_loss(y, p) = 0.12531250000000002
        assert!((brier_score(&Y, &P) - 0.125_312_5).abs() < 1e-12);
    }

    #[test]
    fn calibration_bins_cover_every_row_once() {
        let table = calibration_table(&Y, &P);
        assert_eq!(table.len(), 10);
        assert_eq!(table.iter().map(|b| b.count).sum::<u64>(), 8);
        // 0.9 falls into the last bin, whose upper edge is inclusive.
        assert_eq!(table[9].count, 1);
        assert_eq!(table[9].observed_rate, 1.0);
        assert_eq!(calibration_table(&[true], &[1.0])[9].count, 1);
    }
}
