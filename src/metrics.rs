//! Held-out evaluation of churn probabilities: discrimination (ROC AUC,
//! PR AUC), accuracy of the probabilities (log loss, Brier score) and a
//! calibration table. Definitions follow scikit-learn's `roc_auc_score`,
//! `average_precision_score`, `log_loss` and `brier_score_loss`.

use serde::{Deserialize, Serialize};

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
    pub fn evaluate(churned: &[bool], probabilities: &[f64]) -> Self {
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
        Self {
            roc_auc: roc_auc(churned, probabilities),
            pr_auc: average_precision(churned, probabilities),
            log_loss: log_loss(churned, probabilities),
            brier_score: brier_score(churned, probabilities),
            rows: churned.len() as u64,
            positives: positives as u64,
            calibration: calibration_table(churned, probabilities),
        }
    }
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
    let order = descending(scores);
    let positives = churned.iter().filter(|&&c| c).count() as f64;
    let (mut tp, mut seen, mut ap, mut last_recall) = (0.0, 0.0, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            tp += f64::from(u8::from(churned[order[i]]));
            seen += 1.0;
            i += 1;
        }
        let recall = tp / positives;
        ap += (recall - last_recall) * (tp / seen);
        last_recall = recall;
    }
    ap
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
