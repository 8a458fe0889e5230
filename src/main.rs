//! `healthscore-server`: serves health scores over gRPC.

use clap::Parser;
use healthscore::app::{Application, Settings, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    healthscore::telemetry::init_with(settings.log_format);
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await
}
