//! `healthscore-simulate`: writes a seeded, simulated SaaS data set whose
//! churn follows a known model (see `healthscore::simulate`).

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use chrono::NaiveDate;
use clap::Parser;
use healthscore::simulate::{SimulateOptions, simulate};

/// Simulate accounts, subscriptions and signals from a known churn model.
#[derive(Debug, Parser)]
#[command(name = "healthscore-simulate", version)]
struct Args {
    /// Number of accounts, 100 to 1,000,000.
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// Seed; the same flags give byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory for accounts.csv, subscriptions.csv, signals.csv,
    /// truth.json and template.toml (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// First day of the signal history (YYYY-MM-DD).
    #[arg(long, default_value = "2024-01-01")]
    start: NaiveDate,
    /// Months of history, 6 to 120.
    #[arg(long, default_value_t = 12)]
    months: u32,
    /// Print no progress bar.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    healthscore::cli::run(|| write(args))
}

fn write(args: Args) -> anyhow::Result<ExitCode> {
    let options = SimulateOptions {
        accounts: args.accounts,
        seed: args.seed,
        start: args.start,
        months: args.months,
        out: args.out,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    let summary = simulate(&options)?;
    let truth = &summary.truth;
    println!(
        "{} accounts, {} subscription periods, {} signals; {} churn decisions, {} churned",
        truth.accounts, truth.subscriptions, truth.signals, truth.decisions, truth.churns
    );
    for (name, bytes) in &summary.bytes {
        println!("  {name:<18} {bytes:>14} bytes");
    }
    println!("wrote {}", options.out.display());
    Ok(ExitCode::SUCCESS)
}
