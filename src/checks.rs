//! Checks of the training data that warn before a model is trusted:
//! strongly skewed numeric features left untransformed, pairs of model
//! columns that move together, features that barely vary, and outcomes too
//! rare to learn from. They never stop training; their warnings are
//! printed and recorded in the artifact, each naming the feature and the
//! figure that tripped it.

use ndarray::{Array2, Axis};

use crate::{
    artifact::FeatureModel,
    dataset::Column,
    template::{ChecksSpec, FeatureKind, FeatureSpec, Transform},
};

/// Runs every check on the training rows. `columns` are the raw columns as
/// read, `groups` the [`correlated_groups`] of their design matrix (fitted
/// as averages when `checks.average_correlated`), `churned` their outcomes.
pub fn run(
    checks: &ChecksSpec,
    specs: &[FeatureSpec],
    features: &[FeatureModel],
    columns: &[Column],
    rows: &[usize],
    groups: &[CorrelatedGroup],
    churned: &[bool],
) -> Vec<String> {
    let mut warnings = Vec::new();
    for ((spec, feature), column) in specs.iter().zip(features).zip(columns) {
        if let Column::Numeric(values) = column {
            let present: Vec<f64> = rows.iter().filter_map(|&r| values[r]).collect();
            let g = skewness(&present);
            if spec.kind == FeatureKind::Numeric
                && spec.transform == Transform::None
                && g.abs() > checks.skewness
            {
                warnings.push(format!(
                    "feature {:?} is strongly skewed (skewness {g:.1}) and untransformed; \
                     consider transform = \"log1p\" or a clip",
                    feature.name
                ));
            }
        }
        if let Some(share) = dominant_share(column, rows)
            && share > checks.dominant_share
        {
            warnings.push(format!(
                "feature {:?} has almost no variance: one value covers {:.1} % of the training rows",
                feature.name,
                100.0 * share
            ));
        }
    }

    let labels: Vec<&str> = features
        .iter()
        .flat_map(|f| f.columns.iter().map(|c| c.label.as_str()))
        .collect();
    for group in groups {
        let names: Vec<String> = group
            .columns
            .iter()
            .map(|&i| format!("{:?}", labels[i]))
            .collect();
        let consequence = if checks.average_correlated {
            "they are fitted as one averaged column (checks.average_correlated)"
        } else {
            "their coefficients share one effect and their intervals widen \
             (checks.average_correlated = true fits them as one averaged column)"
        };
        warnings.push(format!(
            "model columns {} move together (|r| above {}, up to {:.2}); {consequence}",
            names.join(", "),
            checks.correlation,
            group.strongest
        ));
    }

    let positives = churned.iter().filter(|&&c| c).count();
    let minority = positives.min(churned.len() - positives);
    let share = minority as f64 / churned.len().max(1) as f64;
    if share < checks.minority_share {
        warnings.push(format!(
            "the rarer outcome is only {:.2} % of the training rows ({minority} rows); \
             probabilities near it are poorly estimated",
            100.0 * share
        ));
    }
    // Columns averaged together cost one coefficient between them.
    let fitted = if checks.average_correlated {
        labels.len() - groups.iter().map(|g| g.columns.len() - 1).sum::<usize>()
    } else {
        labels.len()
    };
    let per_column = minority as f64 / fitted.max(1) as f64;
    if per_column < checks.events_per_column {
        warnings.push(format!(
            "{minority} rows of the rarer outcome for {} model columns ({per_column:.1} per \
             column, fewer than {}): coefficients will be noisy; use fewer features or more data",
            fitted, checks.events_per_column
        ));
    }
    warnings
}

/// Model columns linked, directly or through each other, by correlations
/// beyond the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelatedGroup {
    /// Design-matrix column indices, ascending.
    pub columns: Vec<usize>,
    /// `1` or `-1` per column: the direction in which it moves with the
    /// group's first column.
    pub signs: Vec<f64>,
    /// The strongest |r| between two members.
    pub strongest: f64,
}

/// Groups of the columns of `x` joined by |Pearson r| above `threshold`.
/// `owners[i]` names the feature of column `i`; the levels of one
/// categorical feature are tied by construction, so a pair of them does
/// not join a group. Groups come in the order of their first column.
pub fn correlated_groups(x: &Array2<f64>, owners: &[&str], threshold: f64) -> Vec<CorrelatedGroup> {
    let d = x.ncols();
    let mut links: Vec<Vec<(usize, f64)>> = vec![Vec::new(); d];
    for (i, j, r) in correlated_pairs(x, threshold) {
        if owners[i] != owners[j] {
            links[i].push((j, r));
            links[j].push((i, r));
        }
    }
    let mut sign = vec![0.0f64; d];
    let mut groups = Vec::new();
    for first in 0..d {
        if sign[first] != 0.0 || links[first].is_empty() {
            continue;
        }
        // Walk the links from the first column, each member taking its
        // direction from the member that reached it.
        sign[first] = 1.0;
        let (mut members, mut strongest) = (vec![first], 0.0f64);
        let mut next = 0;
        while next < members.len() {
            let i = members[next];
            next += 1;
            for &(j, r) in &links[i] {
                strongest = strongest.max(r.abs());
                if sign[j] == 0.0 {
                    sign[j] = sign[i] * r.signum();
                    members.push(j);
                }
            }
        }
        members.sort_unstable();
        groups.push(CorrelatedGroup {
            signs: members.iter().map(|&i| sign[i]).collect(),
            columns: members,
            strongest,
        });
    }
    groups
}

/// Sample skewness (the third standardised moment, population form as
/// scipy's default); 0 for fewer than three values or no spread.
fn skewness(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    if values.len() < 3 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / n;
    let (m2, m3) = values.iter().fold((0.0, 0.0), |(m2, m3), v| {
        let d = v - mean;
        (m2 + d * d, m3 + d * d * d)
    });
    let (m2, m3) = (m2 / n, m3 / n);
    if m2 <= 0.0 { 0.0 } else { m3 / m2.powf(1.5) }
}

/// Share of the rows (with a value) holding the most common value.
fn dominant_share(column: &Column, rows: &[usize]) -> Option<f64> {
    // Values are counted by reference (numbers by their bits), so a pass
    // over a million rows allocates nothing per row.
    fn top_share<K: std::hash::Hash + Eq>(keys: impl Iterator<Item = Option<K>>) -> Option<f64> {
        let mut counts = std::collections::HashMap::<K, usize>::new();
        let mut total = 0usize;
        for key in keys.flatten() {
            *counts.entry(key).or_default() += 1;
            total += 1;
        }
        let top = counts.values().copied().max()?;
        Some(top as f64 / total as f64)
    }
    match column {
        Column::Numeric(v) => top_share(rows.iter().map(|&r| v[r].map(f64::to_bits))),
        Column::Boolean(v) => top_share(rows.iter().map(|&r| v[r])),
        Column::Categorical(v) => top_share(rows.iter().map(|&r| v[r].as_deref())),
    }
}

/// Pairs of columns `(i, j, r)`, `i < j`, with |Pearson r| above
/// `threshold`; constant columns are skipped.
fn correlated_pairs(x: &Array2<f64>, threshold: f64) -> Vec<(usize, usize, f64)> {
    let n = x.nrows() as f64;
    if x.nrows() < 2 {
        return Vec::new();
    }
    // E[x xᵀ] − mean meanᵀ, without a centred copy of the matrix.
    let mean = x.mean_axis(Axis(0)).expect("rows are not empty");
    let mut covariance = x.t().dot(x) / n;
    for ((i, j), c) in covariance.indexed_iter_mut() {
        *c -= mean[i] * mean[j];
    }
    let d = x.ncols();
    let mut pairs = Vec::new();
    for i in 0..d {
        for j in i + 1..d {
            let scale = (covariance[[i, i]] * covariance[[j, j]]).sqrt();
            if scale > 0.0 {
                let r = covariance[[i, j]] / scale;
                if r.abs() > threshold {
                    pairs.push((i, j, r));
                }
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    #[test]
    fn skewness_matches_scipy() {
        // scipy.stats.skew([1, 2, 3, 10]) (bias=True, its default) = 1.01823...
        assert!((skewness(&[1.0, 2.0, 3.0, 10.0]) - 1.018_233_764_908_628).abs() < 1e-9);
        assert_eq!(skewness(&[5.0, 5.0, 5.0]), 0.0);
    }

    #[test]
    fn correlated_pairs_are_found_and_uncorrelated_ones_are_not() {
        let x = array![
            [1.0, 2.1, 5.0],
            [2.0, 3.9, 1.0],
            [3.0, 6.2, 4.0],
            [4.0, 8.0, 2.0]
        ];
        let pairs = correlated_pairs(&x, 0.9);
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].0, pairs[0].1), (0, 1));
        assert!(pairs[0].2 > 0.99);
    }

    #[test]
    fn dominant_share_counts_the_most_common_value() {
        let column = Column::Categorical(vec![
            Some("a".into()),
            Some("a".into()),
            None,
            Some("b".into()),
        ]);
        assert_eq!(dominant_share(&column, &[0, 1, 2, 3]), Some(2.0 / 3.0));
    }
}
