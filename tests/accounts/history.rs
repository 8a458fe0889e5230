//! GetHealthHistory with the SaaS model: a point per change in health,
//! oldest first, each naming its model; and a restart with another model
//! records a fresh point for every stored account, so a trend never mixes
//! models silently.

use healthscore::grpc::pb::{self, Direction, GetHealthHistoryRequest, SignalKind};
use tonic::Code;

use crate::{
    helpers::{
        TestDb, TestServer, assert_all_upserted, assert_close, assert_status, days_ago, escalation,
        login, micros, signal, timestamp,
    },
    models::{Served, saas_account},
};

on_both_backends!(
    history_lists_each_change_oldest_first_with_its_model,
    a_restart_with_another_model_records_a_point_for_every_account,
);

/// Asserts `point` records `score`: the same health, churn, band, model and
/// top attributions.
fn assert_point_records(point: &pb::HealthPoint, score: &pb::AccountScore) {
    assert_eq!(point.model_version, score.model_version);
    assert_eq!(point.health_score, score.health_score);
    assert_eq!(point.churn_probability, score.churn_probability);
    assert_eq!(point.band, score.band);
    assert!(!point.top_attributions.is_empty());
    assert!(point.top_attributions.len() <= score.attributions.len());
    for (recorded, current) in point.top_attributions.iter().zip(&score.attributions) {
        assert_eq!(recorded.feature, current.feature);
        assert_eq!(recorded.category, current.category);
        // Stored as JSON text, which serde_json's default float parsing
        // may read back one ulp off.
        assert_close(
            recorded.contribution,
            current.contribution,
            &recorded.feature,
        );
        let direction = if recorded.contribution > 0.0 {
            Direction::RaisesChurn
        } else {
            Direction::LowersChurn
        };
        assert_eq!(recorded.direction(), direction);
    }
}

async fn history_lists_each_change_oldest_first_with_its_model(db: TestDb) {
    let server = db.serve(Served::Saas).await;
    let version = server.model_info().await.model_version;
    let mut scores = Vec::new();
    assert_all_upserted(
        &server
            .upsert(vec![saas_account("acme", "growth", 25.0)])
            .await,
    );
    scores.push(server.score_of("acme").await);
    let logins = (0..15)
        .map(|i| login(&format!("l{i}"), "acme", 1.0 + f64::from(i)))
        .collect();
    server.record(vec![logins]).await;
    scores.push(server.score_of("acme").await);
    server
        .record(vec![vec![
            escalation("x1", "acme", 3.0),
            escalation("x2", "acme", 9.0),
        ]])
        .await;
    scores.push(server.score_of("acme").await);
    // A kind no feature reads changes nothing, so records nothing.
    server
        .record(vec![vec![signal(
            "c1",
            "acme",
            SignalKind::CsatResponse,
            4.0,
            days_ago(1.0),
        )]])
        .await;

    let points = server.history("acme").await;

    assert_eq!(points.len(), 3);
    for (point, score) in points.iter().zip(&scores) {
        assert_eq!(point.model_version, version);
        assert_point_records(point, score);
    }
    let times: Vec<i64> = points
        .iter()
        .map(|p| micros(p.scored_at.as_ref().expect("a time")))
        .collect();
    assert!(
        times.windows(2).all(|t| t[0] < t[1]),
        "oldest first: {times:?}"
    );
    let request = |from: Option<i64>, to: Option<i64>, limit: u32| GetHealthHistoryRequest {
        account_id: "acme".to_owned(),
        from: from.map(timestamp),
        to: to.map(timestamp),
        limit,
    };
    let ranged = |from, to, limit| server.history_request(request(from, to, limit));
    assert_eq!(ranged(None, None, 1).await.expect("a range"), points[2..]);
    assert_eq!(
        ranged(Some(times[1]), None, 0).await.expect("a range"),
        points[1..]
    );
    assert_eq!(
        ranged(None, Some(times[1]), 0).await.expect("a range"),
        points[..1]
    );
    assert_eq!(
        ranged(Some(times[1]), Some(times[2]), 0)
            .await
            .expect("a range"),
        points[1..2]
    );
    assert_status(
        server.try_history("nobody").await,
        Code::NotFound,
        "\"nobody\"",
    );

    let server = server.restart(&db, Served::Saas).await;
    assert_eq!(
        server.history("acme").await,
        points,
        "same model, no new point"
    );
    server.stop().await;
}

const IDS: [&str; 3] = ["a", "b", "c"];

async fn histories(server: &TestServer) -> Vec<Vec<pb::HealthPoint>> {
    let mut all = Vec::new();
    for id in IDS {
        all.push(server.history(id).await);
    }
    all
}

/// Asserts each history is the earlier one plus one point from the model
/// now serving, recording the account's current score.
async fn assert_one_new_point_each(
    server: &TestServer,
    before: &[Vec<pb::HealthPoint>],
) -> Vec<Vec<pb::HealthPoint>> {
    let version = server.model_info().await.model_version;
    let after = histories(server).await;
    for ((id, old), new) in IDS.iter().zip(before).zip(&after) {
        assert_eq!(new.len(), old.len() + 1, "{id}");
        assert_eq!(new[..old.len()], old[..], "{id}: the past is kept");
        let point = new.last().expect("a new point");
        assert_eq!(point.model_version, version, "{id}");
        assert_point_records(point, &server.score_of(id).await);
    }
    after
}

async fn a_restart_with_another_model_records_a_point_for_every_account(db: TestDb) {
    let server = db.serve(Served::Saas).await;
    let first_version = server.model_info().await.model_version;
    let mut accounts: Vec<pb::AccountUpsert> = IDS
        .iter()
        .zip([3.0, 30.0, 150.0])
        .map(|(id, seats)| saas_account(id, "growth", seats))
        .collect();
    let mut unscorable = saas_account("unscorable", "growth", 1.0);
    unscorable.features.remove("seats");
    accounts.push(unscorable);
    assert_all_upserted(&server.upsert(accounts).await);
    server
        .record(vec![vec![login("l1", "a", 2.0), login("l2", "a", 4.0)]])
        .await;
    let first = histories(&server).await;
    assert_eq!(first.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1, 1]);

    let server = server.restart(&db, Served::SaasRefit).await;

    let second_version = server.model_info().await.model_version;
    assert_ne!(second_version, first_version, "the refit is another model");
    let second = assert_one_new_point_each(&server, &first).await;
    assert_eq!(server.history("unscorable").await, []);

    let server = server.restart(&db, Served::SaasRefit).await;
    assert_eq!(histories(&server).await, second, "same model, no new point");

    let server = server.restart(&db, Served::Saas).await;
    let third = assert_one_new_point_each(&server, &second).await;
    for points in &third {
        let versions: Vec<&str> = points.iter().map(|p| p.model_version.as_str()).collect();
        assert_eq!(versions.last(), Some(&first_version.as_str()));
        assert!(versions.contains(&second_version.as_str()));
    }
    server.stop().await;
}
