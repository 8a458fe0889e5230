//! Tracing set-up shared by both binaries and the tests.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs a human-readable subscriber on standard error. The filter comes
/// from `HEALTHSCORE_LOG` (then `RUST_LOG`), default `info`. Calling it again
/// is harmless: only the first call installs.
pub fn init() {
    init_with(LogFormat::Text);
}

/// As [`init`], in the given format.
pub fn init_with(format: LogFormat) {
    let filter = std::env::var("HEALTHSCORE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let builder = fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

/// For tests: installs the subscriber only when `TEST_LOG` is set, so test
/// output stays quiet by default.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init();
    }
}
