//! Application::build refuses broken model artifacts and unsafe addresses
//! with messages that say what to fix.

use std::{io::Write, path::Path};

use clap::Parser;
use healthscore::{
    SHIPPED_MODEL,
    app::{Application, Settings},
};
use tempfile::NamedTempFile;

use crate::helpers::spawn_app;

/// Settings as `healthscore-server --model <path> --listen 127.0.0.1:0`.
fn settings_with_model(path: &Path) -> Settings {
    Settings::parse_from([
        "healthscore-server",
        "--model",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ])
}

fn artifact_file(contents: &str) -> NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file.flush().unwrap();
    file
}

/// The shipped artifact with `edit` applied to its JSON.
fn edited_artifact(edit: impl FnOnce(&mut serde_json::Value)) -> NamedTempFile {
    let mut json: serde_json::Value = serde_json::from_str(SHIPPED_MODEL).unwrap();
    edit(&mut json);
    artifact_file(&serde_json::to_string_pretty(&json).unwrap())
}

async fn build_error(settings: Settings) -> String {
    let error = Application::build(settings)
        .await
        .expect_err("the application should refuse to start");
    format!("{error:#}")
}

#[tokio::test]
async fn artifact_given_with_model_flag_is_served() {
    let file = artifact_file(SHIPPED_MODEL);

    let app = spawn_app(settings_with_model(file.path())).await;

    let info = app.model_info().await;
    assert!(info.model_version.starts_with("telco-churn-"));
}

#[tokio::test]
async fn truncated_artifact_is_refused_naming_the_file_and_position() {
    let file = artifact_file(&SHIPPED_MODEL[..SHIPPED_MODEL.len() / 2]);

    let message = build_error(settings_with_model(file.path())).await;

    assert!(
        message.contains(&file.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("EOF while parsing"), "{message}");
    assert!(message.contains("line"), "{message}");
}

#[tokio::test]
async fn artifact_of_an_unknown_format_version_is_refused() {
    let file = edited_artifact(|json| json["format_version"] = 99.into());

    let message = build_error(settings_with_model(file.path())).await;

    assert!(
        message.contains(&file.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("v99"), "{message}");
    assert!(message.contains("healthscore.model v1"), "{message}");
}

#[tokio::test]
async fn artifact_with_a_zero_scale_is_refused_naming_the_feature() {
    let file = edited_artifact(|json| {
        let tenure = json["features"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["name"] == "tenure")
            .unwrap();
        tenure["columns"][0]["scale"] = 0.0.into();
    });

    let message = build_error(settings_with_model(file.path())).await;

    assert!(
        message.contains(&file.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("\"tenure\""), "{message}");
    assert!(message.contains("positive scale"), "{message}");
}

#[tokio::test]
async fn missing_artifact_file_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-model.json");

    let message = build_error(settings_with_model(&path)).await;

    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("cannot read model artifact"), "{message}");
}

// BUG (src/error.rs, `ArtifactError::Io`, line 218): the message embeds
// `{source}` and the field named `source` is also the error's `source()`
// (thiserror's convention), so any report that walks the cause chain (the
// server's `main` returning `anyhow::Result`, `{:#}`) prints the OS error
// twice. Fails until the message or the source stops carrying it.
#[tokio::test]
async fn missing_artifact_file_reports_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-model.json");

    let message = build_error(settings_with_model(&path)).await;

    assert_eq!(
        message.matches("No such file or directory").count(),
        1,
        "{message}"
    );
}

#[tokio::test]
async fn non_loopback_address_needs_insecure_allow_remote() {
    let settings = Settings::with_listen("0.0.0.0:0".parse().unwrap());

    let message = build_error(settings).await;

    assert!(message.contains("--insecure-allow-remote"), "{message}");
    assert!(message.contains("0.0.0.0:0"), "{message}");
}
