//! `healthscore-rows`: builds point-in-time training rows from raw account
//! history (see `healthscore::history`).

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::Parser;
use healthscore::history::{RowsOptions, build_rows};

/// Build training rows from accounts, subscriptions and signals, as the
/// template's [history] table says.
#[derive(Debug, Parser)]
#[command(name = "healthscore-rows", version)]
struct Args {
    /// Directory holding accounts.csv, subscriptions.csv and signals.csv
    /// (only subscriptions.csv with --database-url).
    #[arg(long)]
    input: PathBuf,
    /// Read accounts and signals from the service's store instead
    /// (sqlite://PATH or postgres://HOST/DATABASE, as healthscore-server's
    /// --database-url); subscriptions still come from --input.
    #[arg(long)]
    database_url: Option<String>,
    /// Training template (TOML) with a [history] table.
    #[arg(long)]
    template: PathBuf,
    /// Where to write the rows (CSV), for healthscore-train --data.
    #[arg(long)]
    out: PathBuf,
    /// Print no progress bars.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    healthscore::cli::run(|| build(args))
}

fn build(args: Args) -> anyhow::Result<ExitCode> {
    let inputs: Vec<PathBuf> = ["accounts.csv", "subscriptions.csv", "signals.csv"]
        .iter()
        .map(|f| args.input.join(f))
        .collect();
    let mut named: Vec<(&str, &std::path::Path)> =
        inputs.iter().map(|p| ("--input", p.as_path())).collect();
    named.push(("--template", args.template.as_path()));
    // The store's files are inputs too (with its write-ahead log beside it).
    let store_files: Vec<PathBuf> = args
        .database_url
        .as_deref()
        .and_then(healthscore::cli::sqlite_file)
        .map(|db| {
            ["", "-wal", "-shm"]
                .iter()
                .map(|suffix| {
                    let mut name = db.clone().into_os_string();
                    name.push(suffix);
                    PathBuf::from(name)
                })
                .collect()
        })
        .unwrap_or_default();
    named.extend(store_files.iter().map(|p| ("--database-url", p.as_path())));
    healthscore::cli::distinct_output("--out", &args.out, &named)?;
    let options = RowsOptions {
        input: args.input,
        database_url: args.database_url,
        template: args.template,
        out: args.out,
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    let summary = build_rows(&options)?;
    let dates = &summary.observation_dates;
    println!(
        "{} rows ({} churned) for {} of {} accounts from {} signals{}; {} observation dates{}",
        summary.rows,
        summary.positives,
        summary.accounts_with_rows,
        summary.accounts,
        summary.signals,
        match summary.duplicate_signals {
            0 => String::new(),
            n => format!(" ({n} lines repeating an event id left out)"),
        },
        dates.len(),
        match (dates.first(), dates.last()) {
            (Some(first), Some(last)) => format!(", {first} to {last}"),
            _ => String::new(),
        }
    );
    println!("wrote {}", options.out.display());
    Ok(ExitCode::SUCCESS)
}
