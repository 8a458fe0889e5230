//! The training report: one self-contained HTML page (charts drawn as inline
//! SVG, no script, no network) and a JSON file of the same figures for
//! machines. It shows what a data scientist would otherwise assemble in a
//! notebook before trusting a model: held-out ROC and PR curves,
//! calibration, lift by decile, the band backtest, coefficients with their
//! intervals, the cross-validation of `C`, the data checks' warnings and,
//! when there is one, the champion beside the new model.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    artifact::{AveragedGroup, CoefficientStat, CrossValidation, ModelArtifact},
    error::TrainError,
    metrics::{self, Metric, TestMetrics},
    train::Trained,
};

/// Most points kept per curve; longer curves are thinned evenly (the
/// first and last points always stay).
const CURVE_POINTS: usize = 400;

/// The figures of the report, as written to `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report<'a> {
    /// The new model's version.
    pub model_version: &'a str,
    /// Its template name.
    pub name: &'a str,
    /// Training metadata, metrics included.
    pub training: &'a crate::artifact::TrainingMetadata,
    /// `(false positive rate, true positive rate)` on the test rows.
    pub roc_curve: Vec<(f64, f64)>,
    /// `(recall, precision)` on the test rows.
    pub pr_curve: Vec<(f64, f64)>,
    /// The champion on the same rows, when one was given.
    pub champion: Option<ChampionFigures<'a>>,
}

/// The champion's figures on the new model's test rows.
#[derive(Debug, Clone, Serialize)]
pub struct ChampionFigures<'a> {
    /// Its version.
    pub model_version: &'a str,
    /// Its metrics on the same test rows.
    pub metrics: &'a TestMetrics,
}

impl<'a> Report<'a> {
    /// The figures of `trained`, with `champion` (the artifact) when
    /// `trained` was compared with one.
    pub fn new(trained: &'a Trained, champion: Option<&'a ModelArtifact>) -> Self {
        let (y, p) = (&trained.test_churned, &trained.test_probabilities);
        Self {
            model_version: &trained.artifact.model_version,
            name: &trained.artifact.name,
            training: &trained.artifact.training,
            roc_curve: thin(metrics::roc_curve(y, p)),
            pr_curve: thin(metrics::pr_curve(y, p)),
            champion: champion
                .zip(trained.champion_metrics.as_ref())
                .map(|(artifact, metrics)| ChampionFigures {
                    model_version: &artifact.model_version,
                    metrics,
                }),
        }
    }

    /// Writes `report.html` and `report.json` into `dir` (created if
    /// missing).
    ///
    /// # Errors
    /// [`TrainError::Write`] naming the file that could not be written.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let fail = |path: &Path| {
            let path = path.to_owned();
            move |error| TrainError::Write { path, error }
        };
        std::fs::create_dir_all(dir).map_err(fail(dir))?;
        let json = dir.join("report.json");
        let text = serde_json::to_string_pretty(self).expect("the report serialises");
        std::fs::write(&json, text + "\n").map_err(fail(&json))?;
        let html = dir.join("report.html");
        std::fs::write(&html, self.html()).map_err(fail(&html))
    }

    /// The HTML page.
    pub fn html(&self) -> String {
        let t = self.training;
        let m = &t.test_metrics;
        let mut page = String::new();
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
             <h1>{title}</h1>\n<p class=\"meta\">trained {trained} from {data} ({rows} rows, \
             {rate:.1} % churned; {train} fit, {test} held out by a {split} split); C = {c}; \
             healthscore {version}</p>\n",
            title = escape(&format!("Churn model {}", self.model_version)),
            trained = t.trained_at.format("%Y-%m-%d %H:%M UTC"),
            data = escape(&t.data_file),
            rows = t.rows,
            rate = 100.0 * t.positive_rate,
            train = t.train_rows,
            test = t.test_rows,
            split = escape(&t.split_method),
            c = t.c,
            version = escape(&t.trainer_version),
        );

        page.push_str("<h2>Held-out quality</h2>\n<table>\n<tr><th>metric</th><th>new model</th>");
        if let Some(champion) = &self.champion {
            let _ = write!(
                page,
                "<th>champion {}</th><th>new − champion</th>",
                escape(champion.model_version)
            );
        }
        page.push_str("</tr>\n");
        let rows = Metric::ALL
            .iter()
            .map(|metric| (metric.name(), |m: &TestMetrics| metric.of(m)))
            .map(|(name, of)| (name, of(m), self.champion.as_ref().map(|c| of(c.metrics))))
            .chain(std::iter::once((
                "top-decile lift",
                m.top_decile_lift,
                self.champion.as_ref().map(|c| c.metrics.top_decile_lift),
            )));
        for (name, new, old) in rows {
            let _ = write!(page, "<tr><td>{name}</td><td>{new:.4}</td>");
            if let Some(old) = old {
                let _ = write!(page, "<td>{old:.4}</td><td>{:+.4}</td>", new - old);
            }
            page.push_str("</tr>\n");
        }
        page.push_str("</table>\n");

        if !t.warnings.is_empty() {
            page.push_str("<h2>Data checks</h2>\n<ul class=\"warnings\">\n");
            for warning in &t.warnings {
                let _ = writeln!(page, "<li>{}</li>", escape(warning));
            }
            page.push_str("</ul>\n");
        }

        page.push_str("<h2>Discrimination</h2>\n<div class=\"row\">\n");
        page.push_str(&curve_chart(
            &format!("ROC curve (AUC {:.4})", m.roc_auc),
            "false positive rate",
            "true positive rate",
            &self.roc_curve,
            true,
        ));
        page.push_str(&curve_chart(
            &format!("Precision-recall (AP {:.4})", m.pr_auc),
            "recall",
            "precision",
            &self.pr_curve,
            false,
        ));
        page.push_str("</div>\n<h2>Calibration and lift</h2>\n<div class=\"row\">\n");
        let calibration: Vec<(f64, f64)> = m
            .calibration
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| (b.mean_predicted, b.observed_rate))
            .collect();
        page.push_str(&points_chart(
            "Calibration: observed against predicted churn",
            "mean predicted churn in bin",
            "observed churn rate",
            &calibration,
        ));
        let lift: Vec<(String, f64)> = m
            .lift
            .iter()
            .map(|d| (d.decile.to_string(), d.lift))
            .collect();
        page.push_str(&bar_chart(
            "Lift by decile (1 = riskiest tenth)",
            "lift over the base churn rate",
            &lift,
            Some(1.0),
        ));
        page.push_str("</div>\n<h2>Band backtest</h2>\n<div class=\"row\">\n");
        let bands: Vec<(String, f64)> = m
            .bands
            .iter()
            .map(|b| (b.band.clone(), b.churn_rate))
            .collect();
        page.push_str(&bar_chart(
            "Churn rate by band before the outcome",
            "share that churned",
            &bands,
            None,
        ));
        page.push_str(
            "<table>\n<tr><th>band</th><th>rows</th><th>churned</th><th>churn rate</th>\
             <th>share of all churners</th></tr>\n",
        );
        for b in &m.bands {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                escape(&b.band),
                b.count,
                b.churned,
                b.churn_rate,
                b.share_of_churned
            );
        }
        page.push_str("</table>\n</div>\n");

        page.push_str("<h2>Coefficients</h2>\n");
        page.push_str(&forest_chart(&t.coefficients));
        page.push_str(&coefficient_table(&t.coefficients));
        if !t.averaged_groups.is_empty() {
            page.push_str(&averaged_table(&t.averaged_groups));
        }
        if let Some(cv) = &t.cross_validation {
            page.push_str(&cv_table(cv));
        }
        page.push_str("</body>\n</html>\n");
        page
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
    h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}.meta{color:#555}\
    table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;\
    text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
    .row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}\
    .warnings li{color:#8a4b00}svg{background:#fff}svg text{font-size:11px;fill:#333}";

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Keeps at most [`CURVE_POINTS`] points, evenly spaced, first and last
/// included.
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= CURVE_POINTS {
        return points;
    }
    let last = points.len() - 1;
    (0..CURVE_POINTS)
        .map(|i| points[i * last / (CURVE_POINTS - 1)])
        .collect()
}

/// Plot geometry: a 360 × 300 canvas with margins for the axis labels.
const W: f64 = 360.0;
const H: f64 = 300.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;

/// An open `<svg>` with its title and axis labels; the caller closes it.
fn canvas(title: &str, x_label: &str, y_label: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\">\n\
         <text x=\"{cx}\" y=\"16\" text-anchor=\"middle\" font-weight=\"bold\">{t}</text>\n\
         <text x=\"{cx}\" y=\"{xl}\" text-anchor=\"middle\">{x}</text>\n\
         <text transform=\"translate(13 {cy}) rotate(-90)\" text-anchor=\"middle\">{y}</text>\n",
        t = escape(title),
        x = escape(x_label),
        y = escape(y_label),
        cx = LEFT + (W - LEFT - RIGHT) / 2.0,
        cy = TOP + (H - TOP - BOTTOM) / 2.0,
        xl = H - 8.0,
    )
}

/// Maps a value in `[0, 1]` to canvas coordinates.
fn to_x(v: f64) -> f64 {
    LEFT + v.clamp(0.0, 1.0) * (W - LEFT - RIGHT)
}

fn to_y(v: f64) -> f64 {
    H - BOTTOM - v.clamp(0.0, 1.0) * (H - TOP - BOTTOM)
}

/// Axes of the unit square with ticks at every 0.2.
fn unit_axes() -> String {
    let mut svg = String::new();
    for i in 0..=5 {
        let v = f64::from(i) / 5.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{bottom}\" stroke=\"#eee\"/>\
             <line x1=\"{left}\" y1=\"{y}\" x2=\"{right}\" y2=\"{y}\" stroke=\"#eee\"/>\
             <text x=\"{x}\" y=\"{xt}\" text-anchor=\"middle\">{v:.1}</text>\
             <text x=\"{yt}\" y=\"{y}\" text-anchor=\"end\" dominant-baseline=\"middle\">{v:.1}</text>",
            x = to_x(v),
            y = to_y(v),
            top = TOP,
            bottom = H - BOTTOM,
            left = LEFT,
            right = W - RIGHT,
            xt = H - BOTTOM + 14.0,
            yt = LEFT - 5.0,
        );
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    svg
}

fn polyline(points: &[(f64, f64)], colour: &str, dashed: bool) -> String {
    let path: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", to_x(x), to_y(y)))
        .collect();
    format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"{}\"{}/>\n",
        path.join(" "),
        if dashed { 1 } else { 2 },
        if dashed {
            " stroke-dasharray=\"4 3\""
        } else {
            ""
        }
    )
}

/// A curve on the unit square, with the chance diagonal when asked.
fn curve_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
    diagonal: bool,
) -> String {
    let mut svg = canvas(title, x_label, y_label);
    svg.push_str(&unit_axes());
    if diagonal {
        svg.push_str(&polyline(&[(0.0, 0.0), (1.0, 1.0)], "#999", true));
    }
    svg.push_str(&polyline(points, "#1f5fa8", false));
    svg.push_str("</svg>\n");
    svg
}

/// Points on the unit square joined by a line, beside the diagonal of
/// perfect calibration.
fn points_chart(title: &str, x_label: &str, y_label: &str, points: &[(f64, f64)]) -> String {
    let mut svg = canvas(title, x_label, y_label);
    svg.push_str(&unit_axes());
    svg.push_str(&polyline(&[(0.0, 0.0), (1.0, 1.0)], "#999", true));
    svg.push_str(&polyline(points, "#1f5fa8", false));
    for &(x, y) in points {
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#1f5fa8\"/>",
            to_x(x),
            to_y(y)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Vertical bars from 0, scaled to the largest value, with an optional
/// dashed reference line.
fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)], reference: Option<f64>) -> String {
    let mut svg = canvas(title, "", y_label);
    let top = bars
        .iter()
        .map(|b| b.1)
        .chain(reference)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.1;
    let scale = |v: f64| v / top;
    for i in 0..=4 {
        let v = top * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y}\" x2=\"{r}\" y2=\"{y}\" stroke=\"#eee\"/>\
             <text x=\"{t}\" y=\"{y}\" text-anchor=\"end\" dominant-baseline=\"middle\">{v:.2}</text>",
            y = to_y(scale(v)),
            r = W - RIGHT,
            t = LEFT - 5.0,
        );
    }
    let slot = 1.0 / bars.len().max(1) as f64;
    for (i, (label, value)) in bars.iter().enumerate() {
        let x0 = to_x(slot * (i as f64 + 0.15));
        let x1 = to_x(slot * (i as f64 + 0.85));
        let y = to_y(scale(*value));
        let _ = writeln!(
            svg,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#1f5fa8\">\
             <title>{}: {value:.3}</title></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            x1 - x0,
            (H - BOTTOM - y).max(0.0),
            escape(label),
            (x0 + x1) / 2.0,
            H - BOTTOM + 14.0,
            escape(label),
        );
    }
    if let Some(r) = reference {
        let y = to_y(scale(r));
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#b33\" \
             stroke-dasharray=\"4 3\"/>",
            W - RIGHT
        );
    }
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    svg.push_str("</svg>\n");
    svg
}

/// Every coefficient as a point with its 95 % interval, strongest first.
fn forest_chart(coefficients: &[CoefficientStat]) -> String {
    let mut sorted: Vec<&CoefficientStat> = coefficients.iter().collect();
    sorted.sort_by(|a, b| b.coefficient.abs().total_cmp(&a.coefficient.abs()));
    let row = 18.0;
    let (label_width, plot_width) = (260.0, 420.0);
    let height = TOP + row * sorted.len() as f64 + 30.0;
    let span = sorted
        .iter()
        .flat_map(|c| [c.lower_95.abs(), c.upper_95.abs()])
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let x = |v: f64| label_width + plot_width * (0.5 + 0.5 * v / span);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" \
         viewBox=\"0 0 {w} {height}\" role=\"img\" aria-label=\"coefficients\">\n\
         <text x=\"{label_width}\" y=\"16\" font-weight=\"bold\">Standardised coefficients \
         with 95 % intervals (right of 0 raises churn)</text>\n\
         <line x1=\"{zero}\" y1=\"{TOP}\" x2=\"{zero}\" y2=\"{bottom}\" stroke=\"#999\" \
         stroke-dasharray=\"4 3\"/>\n",
        w = label_width + plot_width + 20.0,
        zero = x(0.0),
        bottom = height - 24.0,
    );
    for (i, c) in sorted.iter().enumerate() {
        let y = TOP + row * (i as f64 + 0.5);
        let colour = if c.coefficient > 0.0 {
            "#b33"
        } else {
            "#1f7a3a"
        };
        let _ = writeln!(
            svg,
            "<text x=\"{lx}\" y=\"{y:.1}\" text-anchor=\"end\" dominant-baseline=\"middle\">{short}</text>\
             <line x1=\"{a:.1}\" y1=\"{y:.1}\" x2=\"{b:.1}\" y2=\"{y:.1}\" stroke=\"{colour}\"/>\
             <circle cx=\"{m:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{colour}\">\
             <title>{label}: {coef:+.3} [{lo:+.3}, {hi:+.3}]</title></circle>",
            lx = label_width - 8.0,
            short = escape(&shortened(&c.column, 38)),
            label = escape(&c.column),
            a = x(c.lower_95),
            b = x(c.upper_95),
            m = x(c.coefficient),
            coef = c.coefficient,
            lo = c.lower_95,
            hi = c.upper_95,
        );
    }
    for v in [-span, -span / 2.0, 0.0, span / 2.0, span] {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:+.2}</text>",
            x(v),
            height - 10.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// `text` cut to `limit` characters, an ellipsis marking the cut.
fn shortened(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_owned()
    } else {
        let kept: String = text.chars().take(limit - 1).collect();
        format!("{kept}…")
    }
}

/// Each averaged group's members, weights and the coefficients they serve.
fn averaged_table(groups: &[AveragedGroup]) -> String {
    let mut html = String::from(
        "<h2>Averaged groups</h2>\n<p>Each group was fitted as one column, the mean of its \
         standardised members (a minus turns a member that moves against the first); each \
         member serves its share of the group's coefficient, so attributions split the \
         group's effect between them.</p>\n<table>\n<tr><th>group</th><th>group coefficient</th>\
         <th>member</th><th>weight</th><th>served coefficient</th></tr>\n",
    );
    for group in groups {
        for (i, member) in group.members.iter().enumerate() {
            // The group's label and coefficient once, across its rows.
            let head = if i == 0 {
                format!(
                    "<td rowspan=\"{n}\">{}</td><td rowspan=\"{n}\">{:+.4}</td>",
                    escape(&group.label),
                    group.coefficient,
                    n = group.members.len()
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                html,
                "<tr>{head}<td>{}</td><td>{:+.4}</td><td>{:+.4}</td></tr>",
                escape(&member.column),
                member.weight,
                group.coefficient * member.weight / group.scale
            );
        }
    }
    html.push_str("</table>\n");
    html
}

fn coefficient_table(coefficients: &[CoefficientStat]) -> String {
    let mut html = String::from(
        "<table>\n<tr><th>model column</th><th>coefficient</th><th>standard error</th>\
         <th>95 % interval</th><th>retention change for +1 SD</th></tr>\n",
    );
    for c in coefficients {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{:+.4}</td><td>{:.4}</td><td>[{:+.3}, {:+.3}]</td>\
             <td>{:+.1} pp</td></tr>",
            escape(&c.column),
            c.coefficient,
            c.standard_error,
            c.lower_95,
            c.upper_95,
            100.0 * c.retention_change_per_sd
        );
    }
    html.push_str("</table>\n");
    html
}

fn cv_table(cv: &CrossValidation) -> String {
    let skipped = cv
        .skipped_note()
        .map_or_else(String::new, |note| format!(" {}.", escape(&note)));
    let mut html = format!(
        "<h2>Choice of C</h2>\n<p>{}-fold {} cross-validation on the training rows; \
         the lowest mean validation log loss wins.{skipped}</p>\n<table>\n<tr><th>C</th>\
         <th>mean log loss</th><th>mean ROC AUC</th><th></th></tr>\n",
        cv.folds,
        escape(&cv.method)
    );
    for candidate in &cv.candidates {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
            candidate.c,
            candidate.mean_log_loss,
            candidate.mean_roc_auc,
            if candidate.c == cv.chosen_c {
                "chosen"
            } else {
                ""
            }
        );
    }
    html.push_str("</table>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn thin_keeps_the_ends_and_the_limit() {
        let points: Vec<(f64, f64)> = (0..10_001).map(|i| (f64::from(i), 0.0)).collect();
        let thinned = thin(points);
        assert_eq!(thinned.len(), CURVE_POINTS);
        assert_eq!(thinned[0].0, 0.0);
        assert_eq!(thinned[CURVE_POINTS - 1].0, 10_000.0);
    }
}
