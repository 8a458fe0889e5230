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
/// one of `others` (each with its flag: inputs, or other outputs of the same
/// run), hard links included: writing it would destroy that file.
///
/// # Errors
/// A message naming both flags and the file.
pub fn distinct_output(flag: &str, output: &Path, others: &[(&str, &Path)]) -> anyhow::Result<()> {
    for (other_flag, other) in others {
        // An existing file may have two names (links); a path not written
        // yet is compared by where it would be.
        let same = same_file::is_same_file(output, other)
            .unwrap_or_else(|_| resolved(output).is_some_and(|o| resolved(other) == Some(o)));
        if same {
            anyhow::bail!(
                "{flag} {} is the same file as {other_flag}; writing it would destroy that file",
                output.display()
            );
        }
    }
    Ok(())
}

/// Where `path` is or would be: canonical when it exists, else its
/// canonical parent (or its absolute form) joined with its name.
fn resolved(path: &Path) -> Option<std::path::PathBuf> {
    path.canonicalize().ok().or_else(|| {
        let name = path.file_name()?;
        match path.parent().map(Path::canonicalize) {
            Some(Ok(parent)) => Some(parent.join(name)),
            _ => std::path::absolute(path).ok(),
        }
    })
}

/// The database file of a `sqlite:` store URL (`sqlite://PATH` or
/// `sqlite:PATH`, options after `?` ignored); `None` for other URLs and
/// in-memory databases.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| path.into())
}
