//! `healthscore-train`: fits a churn model from a CSV and a template and
//! writes the artifact, unless a champion given with `--champion` does
//! better on the same held-out rows.

use std::{
    io::{ErrorKind, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context;
use clap::Parser;
use healthscore::{
    artifact::ModelArtifact,
    cli::distinct_output,
    metrics::{Metric, TestMetrics},
    report::Report,
    train::{TrainOptions, Trained, summary, train, write_artifact},
};

/// Exit status when the challenger loses to the champion and is not written.
const KEPT_CHAMPION: u8 = 3;

/// Train a logistic churn model and write a versioned artifact.
#[derive(Debug, Parser)]
#[command(name = "healthscore-train", version)]
struct Args {
    /// Training data, a CSV with a header row.
    #[arg(long)]
    data: PathBuf,
    /// Feature template (TOML).
    #[arg(long)]
    template: PathBuf,
    /// Where to write the model artifact (JSON).
    #[arg(long)]
    out: PathBuf,
    /// The model serving now: it is scored on the same held-out rows, both
    /// are shown side by side, and the new model is written only when it is
    /// at least as good by --metric. Often the same file as --out.
    #[arg(long)]
    champion: Option<PathBuf>,
    /// The held-out metric that decides against the champion: roc_auc,
    /// pr_auc, log_loss or brier.
    #[arg(long, default_value = "roc_auc", value_parser = |s: &str| s.parse::<Metric>(), requires = "champion")]
    metric: Metric,
    /// Write the new model even when the champion does better.
    #[arg(long, requires = "champion")]
    force: bool,
    /// Write the training report here: report.html (self-contained, charts
    /// as SVG) and report.json (the same figures).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Also write the held-out rows' ids and churn probabilities as CSV, to
    /// compare with another tool on exactly the same split.
    #[arg(long)]
    test_predictions: Option<PathBuf>,
    /// Print no progress bars.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    healthscore::telemetry::init();
    let args = Args::parse();
    healthscore::cli::run(|| train_and_write(&args))
}

fn train_and_write(args: &Args) -> anyhow::Result<ExitCode> {
    let inputs = [
        ("--data", args.data.as_path()),
        ("--template", args.template.as_path()),
    ];
    // The report's two files are outputs of the same run: none may be
    // another output or an input.
    let report_files: Vec<PathBuf> = args
        .report
        .iter()
        .flat_map(|dir| [dir.join("report.html"), dir.join("report.json")])
        .collect();
    let mut others = inputs.to_vec();
    others.extend(report_files.iter().map(|f| ("--report", f.as_path())));
    distinct_output("--out", &args.out, &others)?;
    if let Some(path) = &args.test_predictions {
        others.push(("--out", args.out.as_path()));
        others.extend(args.champion.as_deref().map(|c| ("--champion", c)));
        distinct_output("--test-predictions", path, &others)?;
    }
    for file in &report_files {
        distinct_output("--report", file, &inputs)?;
    }
    let champion = args
        .champion
        .as_deref()
        .map(ModelArtifact::load)
        .transpose()?;
    let options = TrainOptions {
        data: args.data.clone(),
        template: args.template.clone(),
        progress: !args.quiet,
        champion,
    };
    let trained = train(&options)?;
    if let Some(path) = &args.test_predictions {
        write_test_predictions(&trained, path)?;
    }
    if let Some(dir) = &args.report {
        Report::new(&trained, options.champion.as_ref()).write(dir)?;
    }
    let mut report = summary(&trained.artifact);
    let verdict = trained.champion_metrics.as_ref().map(|champion| {
        let metrics = &trained.artifact.training.test_metrics;
        report.push_str(&side_by_side(metrics, champion, args.metric));
        args.metric.at_least_as_good(metrics, champion)
    });
    let write = verdict.unwrap_or(true) || args.force;
    if write {
        write_artifact(&trained.artifact, &args.out)?;
    }
    report.push('\n');
    report.push_str(&match (verdict, write) {
        (Some(false), true) => format!(
            "wrote {} although the champion does better by {} (--force)\n",
            args.out.display(),
            args.metric.name()
        ),
        (Some(false), false) => format!(
            "kept the champion: the new model does worse by {}; {} not written (--force writes it)\n",
            args.metric.name(),
            args.out.display()
        ),
        _ => format!("wrote {}\n", args.out.display()),
    });
    if let Some(dir) = &args.report {
        report.push_str(&format!(
            "report in {}\n",
            dir.join("report.html").display()
        ));
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    match std::io::stdout().lock().write_all(report.as_bytes()) {
        Err(error) if error.kind() != ErrorKind::BrokenPipe => return Err(error.into()),
        _ => {}
    }
    Ok(if write {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(KEPT_CHAMPION)
    })
}

fn write_test_predictions(trained: &Trained, path: &PathBuf) -> anyhow::Result<()> {
    let mut writer =
        csv::Writer::from_path(path).with_context(|| format!("cannot write {}", path.display()))?;
    writer.write_record(["account_id", "churn_probability"])?;
    for (id, p) in trained.test_ids.iter().zip(&trained.test_probabilities) {
        writer.write_record([id.as_str(), &p.to_string()])?;
    }
    writer
        .flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The new model's and the champion's held-out metrics, one line each.
fn side_by_side(new: &TestMetrics, champion: &TestMetrics, deciding: Metric) -> String {
    let mut out = String::from("\nchampion check on the same held-out rows\n");
    out.push_str(&format!(
        "  {:<10} {:>10} {:>10} {:>10}\n",
        "metric", "new", "champion", "new - old"
    ));
    for metric in Metric::ALL {
        let (a, b) = (metric.of(new), metric.of(champion));
        out.push_str(&format!(
            "  {:<10} {a:>10.4} {b:>10.4} {:>+10.4}{}\n",
            metric.name(),
            a - b,
            if metric == deciding {
                "  (decides)"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "  {:<10} {:>10.2} {:>10.2} {:>+10.2}\n",
        "top lift",
        new.top_decile_lift,
        champion.top_decile_lift,
        new.top_decile_lift - champion.top_decile_lift
    ));
    out
}
