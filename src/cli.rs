//! What the command-line tools share: how they end on an error, and the
//! guard that keeps an output path from clobbering an input.

use std::{path::Path, process::ExitCode};

/// Runs a tool's body and turns an error into one plain line on standard
/// error (the message and its causes, never a backtrace, whatever
/// `RUST_BACKTRACE` says) and exit status 1.
pub fn run(body: impl FnOnce() -> anyhow::Result<ExitCode>) -> ExitCode {
    match body() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses to write `output` (named by `flag`) when it is the same file as
/// one of `inputs` (each with its flag): writing it would destroy that
/// input.
///
/// # Errors
/// A message naming both flags and the file.
pub fn distinct_output(flag: &str, output: &Path, inputs: &[(&str, &Path)]) -> anyhow::Result<()> {
    let Ok(out) = output.canonicalize() else {
        // Not there yet, so no input can be it.
        return Ok(());
    };
    for (input_flag, input) in inputs {
        if input.canonicalize().is_ok_and(|i| i == out) {
            anyhow::bail!(
                "{flag} {} is the same file as {input_flag}; writing it would destroy the input",
                output.display()
            );
        }
    }
    Ok(())
}
