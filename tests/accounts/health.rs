//! GetAccountHealth with the Telco model: unknown accounts, accounts stored
//! without a feature the model requires, and a fresh account's trend.

use healthscore::{
    grpc::pb,
    store::{HistoryRecord, Store},
};
use tonic::Code;

use crate::{
    helpers::{
        DAY_MICROS, TestDb, assert_all_upserted, assert_close, assert_status, micros, now_micros,
        number, profile, telco_customer, upsert_of,
    },
    models::Served,
};

on_both_backends!(
    an_unknown_account_is_not_found,
    an_account_lacking_a_required_feature_is_a_failed_precondition,
    a_fresh_account_has_a_score_but_no_health_change,
    health_change_compares_with_the_newest_score_before_each_horizon,
);

async fn an_unknown_account_is_not_found(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let stored = upsert_of("known", profile("smb", "emea", 1.0, ""), telco_customer());
    assert_all_upserted(&server.upsert(vec![stored]).await);

    let unknown = server.try_health("nobody").await;
    let empty = server.try_health("").await;

    assert_status(unknown, Code::NotFound, "\"nobody\"");
    assert_status(empty, Code::InvalidArgument, "account_id is empty");
    server.stop().await;
}

async fn an_account_lacking_a_required_feature_is_a_failed_precondition(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let average_churn = 1.0 / (1.0 + (-server.model_info().await.base_value).exp());
    let mut without_tenure = telco_customer();
    without_tenure.remove("tenure");
    let account = upsert_of(
        "new-lead",
        profile("smb", "emea", 500.0, ""),
        without_tenure,
    );

    let upserted = server.upsert(vec![account]).await;

    assert_all_upserted(&upserted);
    assert_status(
        server.try_health("new-lead").await,
        Code::FailedPrecondition,
        "tenure",
    );
    let priority = &server.priority(&["new-lead"], false).await[0];
    assert!(priority.known);
    assert_eq!(priority.band(), pb::HealthBand::Unspecified);
    assert_close(priority.churn_probability, average_churn, "churn");
    assert_close(priority.revenue_at_risk, average_churn * 500.0, "risk");
    assert_eq!(server.list(Default::default()).await.total_matching, 0);
    assert_eq!(server.history("new-lead").await, []);

    let server = server.restart(&db, Served::Telco).await;
    assert_status(
        server.try_health("new-lead").await,
        Code::FailedPrecondition,
        "tenure",
    );

    let mut complete = telco_customer();
    complete.insert("tenure".to_owned(), number(3.0));
    let account = upsert_of(
        "new-lead",
        profile("smb", "emea", 500.0, ""),
        complete.clone(),
    );
    assert_all_upserted(&server.upsert(vec![account]).await);

    let score = server.score_of("new-lead").await;
    assert_eq!(score, server.score_inline("new-lead", complete).await);
    assert_eq!(server.history("new-lead").await.len(), 1);
    server.stop().await;
}

async fn a_fresh_account_has_a_score_but_no_health_change(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let sent = profile("smb", "emea", 358.2, "2026-06-30");
    let started = now_micros();
    assert_all_upserted(
        &server
            .upsert(vec![upsert_of(
                "7590-VHVEG",
                sent.clone(),
                telco_customer(),
            )])
            .await,
    );
    let finished = now_micros();

    let health = server.health("7590-VHVEG").await;

    let score = health.score.clone().expect("a score");
    assert_eq!(
        score,
        server.score_inline("7590-VHVEG", telco_customer()).await
    );
    assert_eq!(health.profile, Some(sent));
    assert_eq!(health.health_change_7d, None);
    assert_eq!(health.health_change_30d, None);
    assert_eq!(health.revenue_at_risk, score.churn_probability * 358.2);
    let updated = micros(&health.features_updated_at.expect("an update time"));
    assert!(
        (started..=finished).contains(&updated),
        "updated at {updated}, upserted within [{started}, {finished}]"
    );

    let server = server.restart(&db, Served::Telco).await;
    let again = server.health("7590-VHVEG").await;
    assert_eq!(again, health);
    server.stop().await;
}

async fn health_change_compares_with_the_newest_score_before_each_horizon(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let version = server.model_info().await.model_version;
    // Scores recorded 40, 20 and 10 days ago, written to the store as an
    // earlier server would have.
    let past = |days: i64, health: f64| HistoryRecord {
        account_id: "7590-VHVEG".to_owned(),
        model_version: version.clone(),
        scored_at_micros: now_micros() - days * DAY_MICROS,
        churn_probability: 1.0 - health / 100.0,
        health_score: health,
        band: "AT_RISK".to_owned(),
        top_attributions: "[]".to_owned(),
    };
    let store = Store::connect(db.url()).await.expect("the store opens");
    store
        .append_history(&[past(40, 10.0), past(20, 20.0), past(10, 30.0)])
        .await
        .expect("history is writable");
    store.close().await;
    let sent = profile("smb", "emea", 358.2, "");
    assert_all_upserted(
        &server
            .upsert(vec![upsert_of("7590-VHVEG", sent, telco_customer())])
            .await,
    );

    let health = server.health("7590-VHVEG").await;

    let now = health.score.expect("a score").health_score;
    assert_eq!(health.health_change_7d, Some(now - 30.0));
    assert_eq!(health.health_change_30d, Some(now - 10.0));
    let points = server.history("7590-VHVEG").await;
    let healths: Vec<f64> = points.iter().map(|p| p.health_score).collect();
    assert_eq!(healths, [10.0, 20.0, 30.0, now]);
    server.stop().await;
}
