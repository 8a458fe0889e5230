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

/// Runs every check on the training rows. `x` is their standardised design
/// matrix (one column per model column of `features`), `columns` the raw
/// columns as read, `churned` their outcomes.
pub fn run(
    checks: &ChecksSpec,
    specs: &[FeatureSpec],
    features: &[FeatureModel],
    columns: &[Column],
    rows: &[usize],
    x: &Array2<f64>,
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

    let labels: Vec<(&str, &str)> = features
        .iter()
        .flat_map(|f| {
            f.columns
                .iter()
                .map(move |c| (f.name.as_str(), c.label.as_str()))
        })
        .collect();
    // One warning per group of columns linked by strong correlations.
    let mut group: Vec<usize> = (0..labels.len()).collect();
    fn root(group: &mut [usize], mut i: usize) -> usize {
        while group[i] != i {
            group[i] = group[group[i]];
            i = group[i];
        }
        i
    }
    let mut strongest = vec![0.0f64; labels.len()];
    for (i, j, r) in correlated_pairs(x, checks.correlation) {
        // Levels of one categorical feature are tied by construction.
        if labels[i].0 != labels[j].0 {
            let (a, b) = (root(&mut group, i), root(&mut group, j));
            let top = strongest[a].max(strongest[b]).max(r.abs());
            group[b] = a;
            strongest[a] = top;
        }
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); labels.len()];
    for i in 0..labels.len() {
        let r = root(&mut group, i);
        members[r].push(i);
    }
    for (r, columns) in members.iter().enumerate().filter(|(_, m)| m.len() > 1) {
        let names: Vec<String> = columns
            .iter()
            .map(|&i| format!("{:?}", labels[i].1))
            .collect();
        warnings.push(format!(
            "model columns {} move together (|r| above {}, up to {:.2}); their coefficients \
             share one effect and their intervals widen",
            names.join(", "),
            checks.correlation,
            strongest[r]
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
    let per_column = minority as f64 / labels.len().max(1) as f64;
    if per_column < checks.events_per_column {
        warnings.push(format!(
            "{minority} rows of the rarer outcome for {} model columns ({per_column:.1} per \
             column, fewer than {}): coefficients will be noisy; use fewer features or more data",
            labels.len(),
            checks.events_per_column
        ));
    }
    warnings
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
