//! Replacing the model while serving: ReloadModel and the model-file watch.
//! A new version is validated, swapped in with every account re-scored and
//! recorded; a broken, weak or incompatible artifact is refused with its
//! reason and the old model keeps serving.

use std::{path::Path, time::Duration};

use healthscore::{artifact::ModelArtifact, grpc::pb, train::write_artifact};
use tonic::Code;

use crate::{
    helpers::{TestDb, assert_all_upserted},
    models::{Served, artifact_file, saas_account, saas_artifact},
};

on_both_backends!(
    reload_swaps_in_the_new_version_and_rescores_every_account,
    a_broken_artifact_is_refused_and_the_old_model_keeps_serving,
    a_model_below_the_metric_floor_is_refused,
    a_model_that_cannot_score_stored_accounts_is_refused,
    the_server_reloads_when_its_model_file_is_replaced,
);

async fn reload(
    server: &crate::helpers::TestServer,
) -> Result<pb::ReloadModelResponse, tonic::Status> {
    server
        .admin()
        .await
        .reload_model(pb::ReloadModelRequest {})
        .await
        .map(tonic::Response::into_inner)
}

/// Serves the SaaS model from `<dir>/saas.json` with three stored accounts.
async fn saas_server_with_accounts(
    db: &TestDb,
) -> (crate::helpers::TestServer, std::path::PathBuf) {
    let path = artifact_file(Served::Saas, db.dir()).expect("the SaaS model is a file");
    let server = db.serve_file(Some(path.clone())).await;
    let response = server
        .upsert(vec![
            saas_account("acct-a", "starter", 3.0),
            saas_account("acct-b", "growth", 40.0),
            saas_account("acct-c", "enterprise", 180.0),
        ])
        .await;
    assert_all_upserted(&response);
    (server, path)
}

fn edited(artifact: &ModelArtifact, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut json: serde_json::Value = serde_json::from_str(&artifact.to_json()).unwrap();
    edit(&mut json);
    serde_json::to_string_pretty(&json).unwrap()
}

/// Replaces `path` the way deployments do: write beside it, rename over.
fn replace_file(path: &Path, contents: &str) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, contents).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

async fn reload_swaps_in_the_new_version_and_rescores_every_account(db: TestDb) {
    let (server, path) = saas_server_with_accounts(&db).await;
    let old = saas_artifact(Served::Saas).model_version.clone();
    let new = saas_artifact(Served::SaasRefit).model_version.clone();
    let before = server.score_of("acct-a").await;
    assert_eq!(before.model_version, old);

    // Readers keep asking while the model is replaced: every answer names a
    // version, and only the two versions ever appear.
    let reader = {
        let client = server.new_client().await;
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..200 {
                let answer = client
                    .clone()
                    .get_priority(pb::GetPriorityRequest {
                        account_ids: vec!["acct-a".into(), "acct-b".into()],
                        context: None,
                    })
                    .await
                    .expect("GetPriority succeeds during a reload")
                    .into_inner();
                for p in answer.priorities {
                    seen.push(p.model_version);
                }
            }
            seen
        })
    };
    write_artifact(saas_artifact(Served::SaasRefit), &path).unwrap();
    let response = reload(&server).await.expect("ReloadModel succeeds");
    let seen = reader.await.unwrap();

    assert_eq!(response.previous_model_version, old);
    assert_eq!(response.model_version, new);
    assert!(response.changed);
    assert_eq!(response.accounts_rescored, 3);
    assert!(seen.iter().all(|v| *v == old || *v == new), "{seen:?}");
    assert_eq!(server.model_info().await.model_version, new);
    let after = server.score_of("acct-a").await;
    assert_eq!(after.model_version, new);
    assert_ne!(after.churn_probability, before.churn_probability);
    let versions: Vec<String> = server
        .history("acct-a")
        .await
        .into_iter()
        .map(|p| p.model_version)
        .collect();
    assert_eq!(versions, [old.clone(), new.clone()]);

    // The same file again changes nothing.
    let again = reload(&server).await.expect("ReloadModel succeeds");
    assert!(!again.changed);
    assert_eq!(again.accounts_rescored, 0);
    assert_eq!(server.history("acct-a").await.len(), 2);

    // A restart serves the file's model and finds every account.
    let server = server.restart(&db, Served::SaasRefit).await;
    assert_eq!(server.score_of("acct-c").await.model_version, new);
    assert_eq!(server.history("acct-a").await.len(), 2);
    server.stop().await;
}

async fn a_broken_artifact_is_refused_and_the_old_model_keeps_serving(db: TestDb) {
    let (server, path) = saas_server_with_accounts(&db).await;
    let old = saas_artifact(Served::Saas).model_version.clone();
    let before = server.score_of("acct-b").await;
    let whole = saas_artifact(Served::SaasRefit).to_json();

    let cases = [
        (whole[..whole.len() / 3].to_owned(), "line"),
        (String::new(), "EOF"),
        (
            edited(saas_artifact(Served::SaasRefit), |j| {
                j["intercept"] = "NaN".into();
            }),
            "line",
        ),
        (
            edited(saas_artifact(Served::SaasRefit), |j| {
                j["features"][1]["name"] = j["features"][0]["name"].clone();
            }),
            "appears twice",
        ),
        (
            edited(saas_artifact(Served::SaasRefit), |j| {
                j["format_version"] = 99.into();
            }),
            "this build reads \"healthscore.model v1\"",
        ),
        // The serving version with other coefficients: an edit, not a model.
        (
            edited(saas_artifact(Served::Saas), |j| {
                let intercept = j["intercept"].as_f64().unwrap();
                j["intercept"] = (intercept + 0.5).into();
            }),
            "is the one serving, but its coefficients",
        ),
    ];
    for (contents, expected) in cases {
        replace_file(&path, &contents);
        let status = reload(&server)
            .await
            .expect_err("a broken artifact is refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(&path.display().to_string()),
            "{}",
            status.message()
        );
        assert!(
            status
                .message()
                .to_lowercase()
                .contains(&expected.to_lowercase()),
            "expected {expected:?} in {}",
            status.message()
        );
        assert_eq!(server.model_info().await.model_version, old);
        let now = server.score_of("acct-b").await;
        assert_eq!(now.model_version, old);
        assert_eq!(now.churn_probability, before.churn_probability);
    }
    assert_eq!(server.history("acct-b").await.len(), 1);
    server.stop().await;
}

async fn a_model_below_the_metric_floor_is_refused(db: TestDb) {
    let (server, path) = saas_server_with_accounts(&db).await;
    let weak = edited(saas_artifact(Served::SaasRefit), |j| {
        j["training"]["test_metrics"]["roc_auc"] = 0.45.into();
    });
    replace_file(&path, &weak);

    let status = reload(&server).await.expect_err("a weak model is refused");

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("ROC AUC 0.4500 is below the floor of 0.5000"),
        "{}",
        status.message()
    );
    assert_eq!(
        server.model_info().await.model_version,
        saas_artifact(Served::Saas).model_version
    );
    server.stop().await;
}

async fn a_model_that_cannot_score_stored_accounts_is_refused(db: TestDb) {
    let (server, path) = saas_server_with_accounts(&db).await;
    // The Telco model needs features no SaaS account has.
    replace_file(&path, healthscore::SHIPPED_MODEL);

    let status = reload(&server)
        .await
        .expect_err("an incompatible model is refused");

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("cannot score 3 account(s)"),
        "{}",
        status.message()
    );
    let old = &saas_artifact(Served::Saas).model_version;
    assert_eq!(&server.score_of("acct-a").await.model_version, old);
    server.stop().await;
}

async fn the_server_reloads_when_its_model_file_is_replaced(db: TestDb) {
    let (server, path) = saas_server_with_accounts(&db).await;
    let new = saas_artifact(Served::SaasRefit).model_version.clone();

    write_artifact(saas_artifact(Served::SaasRefit), &path).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if server.model_info().await.model_version == new {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not pick up the replaced model file within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.score_of("acct-b").await.model_version, new);

    // A broken file written over it is refused; the new model stays.
    replace_file(&path, "{ not json");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.model_info().await.model_version, new);
    server.stop().await;
}
