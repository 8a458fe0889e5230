//! Fitting a group of strongly correlated model columns as one column.
//!
//! Columns that move together share one effect between them: fitted
//! separately, their coefficients trade off against each other and their
//! intervals widen. Averaged, the group costs one coefficient. For a group
//! with members `z_i` (standardised design columns), training means `μ_i`,
//! standard deviations `σ_i` and directions `s_i` (±1, so that every member
//! moves with the first), the fitted column is
//!
//! ```text
//! a = Σ w_i (z_i − μ_i),  w_i = s_i / (k σ_i),   g = a / sd(a)
//! ```
//!
//! Because the model stays linear in the design columns, the group's
//! coefficient `β` expands exactly into one coefficient per member,
//! `β w_i / sd(a)`, and the intercept moves by `−Σ β w_i μ_i / sd(a)`. The
//! artifact stores the expanded coefficients, so serving scores and
//! attributes the averaged model with the same code as any other, and each
//! member's attribution is its exact share of the group's.

use std::borrow::Cow;

use ndarray::{Array2, Axis};

use crate::checks::CorrelatedGroup;

/// Where a fitted coefficient comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// A design column fitted on its own.
    Column(usize),
    /// The averaged column of group `g` of [`Averaging::groups`].
    Group(usize),
}

/// One group's averaging, learnt from the rows it was fitted on.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedGroup {
    /// Design-matrix column indices, ascending.
    pub columns: Vec<usize>,
    /// `w_i = s_i / (k σ_i)` per member.
    pub weights: Vec<f64>,
    /// `μ_i`: each member's mean over the fitting rows.
    pub means: Vec<f64>,
    /// Standard deviation of the weighted sum over the fitting rows.
    pub scale: f64,
}

/// The reduction of a design matrix with correlated groups to one column
/// per group.
#[derive(Debug, Clone, PartialEq)]
pub struct Averaging {
    /// The groups, in the order of their first column.
    pub groups: Vec<FittedGroup>,
    /// The fitted coefficients' sources, in reduced column order: a group
    /// takes the place of its first member.
    pub params: Vec<Param>,
    /// Columns of the full design matrix.
    pub width: usize,
}

impl Averaging {
    /// Learns each group's means, scales and weights from `x`, the design
    /// matrix of the rows to fit on. No groups gives the identity.
    ///
    /// # Errors
    /// A sentence naming the group whose members do not vary together on
    /// these rows (a member constant here, or the average constant).
    pub fn fit(
        x: &Array2<f64>,
        groups: &[CorrelatedGroup],
        labels: &[&str],
    ) -> Result<Self, String> {
        let width = x.ncols();
        let mean = x.mean_axis(Axis(0)).expect("rows are not empty");
        let sd = x.std_axis(Axis(0), 0.0);
        let mut fitted = Vec::with_capacity(groups.len());
        let mut group_of = vec![None; width];
        for (g, group) in groups.iter().enumerate() {
            let named = || {
                group
                    .columns
                    .iter()
                    .map(|&i| format!("{:?}", labels[i]))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let k = group.columns.len() as f64;
            let mut weights = Vec::with_capacity(group.columns.len());
            for (&i, &s) in group.columns.iter().zip(&group.signs) {
                if sd[i] <= 0.0 {
                    return Err(format!(
                        "cannot average model columns {}: {:?} does not vary on these rows",
                        named(),
                        labels[i]
                    ));
                }
                weights.push(s / (k * sd[i]));
                group_of[i] = Some(g);
            }
            let means: Vec<f64> = group.columns.iter().map(|&i| mean[i]).collect();
            let average = average_column(x, &group.columns, &weights, &means);
            let scale = average.std(0.0);
            if !(scale > 0.0 && scale.is_finite()) {
                return Err(format!(
                    "cannot average model columns {}: their average does not vary on these rows",
                    named()
                ));
            }
            fitted.push(FittedGroup {
                columns: group.columns.clone(),
                weights,
                means,
                scale,
            });
        }
        let params = (0..width)
            .filter_map(|i| match group_of[i] {
                None => Some(Param::Column(i)),
                Some(g) if fitted[g].columns[0] == i => Some(Param::Group(g)),
                Some(_) => None,
            })
            .collect();
        Ok(Self {
            groups: fitted,
            params,
            width,
        })
    }

    /// `x` with each group's members replaced by its standardised average,
    /// columns in [`Averaging::params`] order; `x` itself, not a copy, when
    /// there are no groups.
    pub fn apply<'x>(&self, x: &'x Array2<f64>) -> Cow<'x, Array2<f64>> {
        assert_eq!(x.ncols(), self.width, "design matrix width");
        if self.groups.is_empty() {
            return Cow::Borrowed(x);
        }
        let mut reduced = Array2::zeros((x.nrows(), self.params.len()));
        for (to, param) in self.params.iter().enumerate() {
            let mut target = reduced.column_mut(to);
            match *param {
                Param::Column(i) => target.assign(&x.column(i)),
                Param::Group(g) => {
                    let group = &self.groups[g];
                    let average = average_column(x, &group.columns, &group.weights, &group.means);
                    target.assign(&(average / group.scale));
                }
            }
        }
        Cow::Owned(reduced)
    }

    /// [`Averaging::apply`] on a matrix that is no longer needed: returned
    /// as it is when there are no groups.
    pub fn apply_owned(&self, x: Array2<f64>) -> Array2<f64> {
        if self.groups.is_empty() {
            x
        } else {
            self.apply(&x).into_owned()
        }
    }

    /// The full design's coefficients and the intercept shift that score
    /// exactly as `reduced` coefficients do on the reduced design.
    pub fn expand(&self, reduced: &[f64]) -> (Vec<f64>, f64) {
        assert_eq!(
            reduced.len(),
            self.params.len(),
            "one coefficient per param"
        );
        let mut full = vec![0.0; self.width];
        let mut shift = 0.0;
        for (&beta, param) in reduced.iter().zip(&self.params) {
            match *param {
                Param::Column(i) => full[i] = beta,
                Param::Group(g) => {
                    let group = &self.groups[g];
                    for ((&i, &w), &mu) in
                        group.columns.iter().zip(&group.weights).zip(&group.means)
                    {
                        full[i] = beta * w / group.scale;
                        shift -= full[i] * mu;
                    }
                }
            }
        }
        (full, shift)
    }
}

/// `Σ w_i (x_i − μ_i)` over the given columns, one value per row.
fn average_column(
    x: &Array2<f64>,
    columns: &[usize],
    weights: &[f64],
    means: &[f64],
) -> ndarray::Array1<f64> {
    let mut average = ndarray::Array1::zeros(x.nrows());
    for ((&i, &w), &mu) in columns.iter().zip(weights).zip(means) {
        average.zip_mut_with(&x.column(i), |a, &v| *a += w * (v - mu));
    }
    average
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    fn x() -> Array2<f64> {
        // Column 1 is column 0 reversed and rescaled; column 2 stands alone.
        array![
            [1.0, -2.0, 0.5],
            [2.0, -4.1, -1.0],
            [3.0, -6.0, 2.0],
            [4.0, -7.9, 0.0],
            [5.0, -10.0, 1.0],
        ]
    }

    fn group() -> CorrelatedGroup {
        CorrelatedGroup {
            columns: vec![0, 1],
            signs: vec![1.0, -1.0],
            strongest: 0.99,
        }
    }

    #[test]
    fn a_group_becomes_one_standardised_column_in_its_first_members_place() {
        let averaging = Averaging::fit(&x(), &[group()], &["a", "b", "c"]).unwrap();
        assert_eq!(averaging.params, [Param::Group(0), Param::Column(2)]);
        let x = x();
        let reduced = averaging.apply(&x);
        assert_eq!(reduced.ncols(), 2);
        let g = reduced.column(0);
        assert!(g.mean().unwrap().abs() < 1e-12);
        assert!((g.std(0.0) - 1.0).abs() < 1e-12);
        // It rises with column 0 and falls with column 1.
        assert!(g[4] > g[0]);
        assert_eq!(reduced.column(1), x.column(2));
    }

    #[test]
    fn expanded_coefficients_score_exactly_as_the_reduced_ones() {
        let x = x();
        let averaging = Averaging::fit(&x, &[group()], &["a", "b", "c"]).unwrap();
        let reduced = averaging.apply(&x);
        let (beta, intercept) = ([0.7, -0.3], 0.25);
        let (full, shift) = averaging.expand(&beta);
        for r in 0..x.nrows() {
            let short: f64 = intercept + reduced.row(r).dot(&ndarray::arr1(&beta));
            let long: f64 = intercept + shift + x.row(r).dot(&ndarray::arr1(&full));
            assert!((short - long).abs() < 1e-12, "row {r}: {short} vs {long}");
        }
        // Members pull in their own directions.
        assert!(full[0] > 0.0 && full[1] < 0.0 && full[2] == -0.3);
    }

    #[test]
    fn no_groups_is_the_identity() {
        let averaging = Averaging::fit(&x(), &[], &["a", "b", "c"]).unwrap();
        let x = x();
        assert!(matches!(averaging.apply(&x), Cow::Borrowed(_)));
        assert_eq!(
            averaging.expand(&[1.0, 2.0, 3.0]),
            (vec![1.0, 2.0, 3.0], 0.0)
        );
    }

    #[test]
    fn a_member_constant_on_the_fitting_rows_is_named() {
        let mut x = x();
        x.column_mut(1).fill(3.0);
        let error = Averaging::fit(&x, &[group()], &["a", "b", "c"]).unwrap_err();
        assert!(error.contains("\"b\" does not vary"), "{error}");
    }
}
