//! `healthscore-train`: fits a churn model from a CSV and a template and
//! writes the artifact.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use healthscore::train::{TrainOptions, summary, train, write_artifact};

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
    /// Also write the held-out rows' ids and churn probabilities as CSV, to
    /// compare with another tool on exactly the same split.
    #[arg(long)]
    test_predictions: Option<PathBuf>,
    /// Print no progress bars.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    healthscore::telemetry::init();
    let args = Args::parse();
    let options = TrainOptions {
        data: args.data,
        template: args.template,
        progress: !args.quiet,
    };
    let trained = train(&options)?;
    write_artifact(&trained.artifact, &args.out)?;
    if let Some(path) = &args.test_predictions {
        let mut writer = csv::Writer::from_path(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        writer.write_record(["account_id", "churn_probability"])?;
        for (id, p) in trained.test_ids.iter().zip(&trained.test_probabilities) {
            writer.write_record([id.as_str(), &p.to_string()])?;
        }
        writer
            .flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    print!("{}", summary(&trained.artifact));
    println!("\nwrote {}", args.out.display());
    Ok(())
}
