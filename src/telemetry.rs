//! Tracing set-up shared by both binaries and the tests.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// Installs a human-readable subscriber on standard error. The filter comes
/// from `HEALTHSCORE_LOG` (then `RUST_LOG`), default `info`. Calling it again
/// is harmless: only the first call installs.
pub fn init() {
    let filter = std::env::var("HEALTHSCORE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// For tests: installs the subscriber only when `TEST_LOG` is set, so test
/// output stays quiet by default.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init();
    }
}
