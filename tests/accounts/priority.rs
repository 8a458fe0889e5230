//! GetPriority with the Telco model: priority from revenue at risk relative
//! to the median account, tiers by the documented thresholds, the default
//! for unknown accounts, cancellation intent, and the batch limits.

use std::collections::HashMap;

use healthscore::grpc::pb::{self, PriorityTier};
use tonic::Code;

use crate::{
    helpers::{
        TestDb, assert_all_upserted, assert_close, assert_status, profile, telco_book,
        telco_customer, upsert_of,
    },
    models::Served,
};

on_both_backends!(
    priorities_rank_accounts_by_revenue_at_risk,
    cancellation_intent_raises_a_known_accounts_tier_by_one,
    empty_and_oversize_requests_are_invalid,
);

/// The tier of a priority, by the thresholds in the proto.
fn tier_of(priority: f64) -> PriorityTier {
    match priority {
        p if p >= 75.0 => PriorityTier::P1,
        p if p >= 50.0 => PriorityTier::P2,
        p if p >= 25.0 => PriorityTier::P3,
        _ => PriorityTier::P4,
    }
}

/// The Telco book plus an account worth nothing, so nothing is at risk.
fn accounts() -> Vec<pb::AccountUpsert> {
    let mut accounts = telco_book(9);
    accounts.push(upsert_of(
        "free-tier",
        profile("smb", "apac", 0.0, ""),
        telco_customer(),
    ));
    accounts
}

async fn priorities_rank_accounts_by_revenue_at_risk(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let accounts = accounts();
    assert_all_upserted(&server.upsert(accounts.clone()).await);
    let mut ids: Vec<&str> = accounts.iter().map(|a| a.account_id.as_str()).collect();
    ids.push("unknown-caller");
    ids.push(ids[0]);
    let mut health = HashMap::new();
    for account in &accounts {
        let id = account.account_id.as_str();
        health.insert(id, server.health(id).await);
    }
    // The reference is the median revenue at risk of the stored accounts
    // (the upper one of an even count, as the server picks it).
    let mut risks: Vec<f64> = health.values().map(|h| h.revenue_at_risk).collect();
    risks.sort_by(f64::total_cmp);
    let reference = risks[risks.len() / 2];
    let average_churn = 1.0 / (1.0 + (-server.model_info().await.base_value).exp());

    let answers = server.priority(&ids, false).await;

    assert_eq!(answers.len(), ids.len());
    for (answer, id) in answers.iter().zip(&ids) {
        assert_eq!(answer.account_id, *id, "answers follow the request");
        assert!(!answer.model_version.is_empty());
    }
    assert_eq!(
        answers[0],
        answers[ids.len() - 1],
        "a repeated id, the same answer"
    );
    let known = &answers[..accounts.len()];
    for answer in known {
        let id = answer.account_id.as_str();
        let h = &health[id];
        let score = h.score.as_ref().expect("a score");
        let value = h.profile.as_ref().expect("a profile").annual_contract_value;
        assert!(answer.known, "{id}");
        assert!(
            (0.0..=100.0).contains(&answer.priority),
            "{id}: {}",
            answer.priority
        );
        assert_eq!(
            answer.tier(),
            tier_of(answer.priority),
            "{id}: {}",
            answer.priority
        );
        assert_eq!(answer.churn_probability, score.churn_probability, "{id}");
        assert_eq!(answer.band, score.band, "{id}");
        assert_eq!(
            answer.revenue_at_risk,
            score.churn_probability * value,
            "{id}"
        );
        let r = answer.revenue_at_risk;
        let expected = if r > 0.0 {
            100.0 * r / (r + reference)
        } else {
            0.0
        };
        assert_close(answer.priority, expected, id);
    }
    let mut ranked: Vec<&pb::AccountPriority> = known.iter().collect();
    ranked.sort_by(|a, b| b.revenue_at_risk.total_cmp(&a.revenue_at_risk));
    for pair in ranked.windows(2) {
        assert!(
            pair[0].priority > pair[1].priority,
            "{} risks {} and ranks above {} risking {}",
            pair[0].account_id,
            pair[0].revenue_at_risk,
            pair[1].account_id,
            pair[1].revenue_at_risk
        );
    }
    let tiers: Vec<PriorityTier> = ranked.iter().map(|a| a.tier()).collect();
    assert!(tiers.contains(&PriorityTier::P2) && tiers.contains(&PriorityTier::P3));
    let median_account = known
        .iter()
        .find(|a| a.revenue_at_risk == reference)
        .expect("the median account is stored");
    assert_close(median_account.priority, 50.0, "the median account");
    let free = known
        .iter()
        .find(|a| a.account_id == "free-tier")
        .expect("asked for");
    assert_eq!((free.priority, free.tier()), (0.0, PriorityTier::P4));
    let unknown = &answers[accounts.len()];
    assert!(!unknown.known);
    assert_eq!(unknown.priority, 25.0);
    assert_eq!(unknown.tier(), PriorityTier::P3);
    assert_eq!(unknown.band(), pb::HealthBand::Unspecified);
    assert_eq!(unknown.revenue_at_risk, 0.0);
    assert_close(
        unknown.churn_probability,
        average_churn,
        "the average account",
    );
    server.stop().await;
}

async fn cancellation_intent_raises_a_known_accounts_tier_by_one(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let accounts = accounts();
    assert_all_upserted(&server.upsert(accounts.clone()).await);
    let mut ids: Vec<&str> = accounts.iter().map(|a| a.account_id.as_str()).collect();
    ids.push("unknown-caller");
    let calm = server.priority(&ids, false).await;

    let leaving = server.priority(&ids, true).await;

    for (before, after) in calm.iter().zip(&leaving) {
        let id = &before.account_id;
        if !before.known {
            assert_eq!(after, before, "an unknown account keeps the default");
            continue;
        }
        let (raised, floor) = match before.tier() {
            PriorityTier::P1 | PriorityTier::P2 => (PriorityTier::P1, 75.0),
            PriorityTier::P3 => (PriorityTier::P2, 50.0),
            PriorityTier::P4 => (PriorityTier::P3, 25.0),
            PriorityTier::Unspecified => panic!("{id}: a known account has a tier"),
        };
        assert_eq!(after.tier(), raised, "{id}");
        assert_eq!(after.priority, before.priority.max(floor), "{id}");
        assert_eq!(after.tier(), tier_of(after.priority), "{id}");
        assert_eq!(after.revenue_at_risk, before.revenue_at_risk, "{id}");
        assert_eq!(after.churn_probability, before.churn_probability, "{id}");
    }
    let tiers: Vec<PriorityTier> = calm.iter().map(|a| a.tier()).collect();
    assert!(
        tiers.contains(&PriorityTier::P2)
            && tiers.contains(&PriorityTier::P3)
            && tiers.contains(&PriorityTier::P4),
        "the book spans tiers: {tiers:?}"
    );
    server.stop().await;
}

async fn empty_and_oversize_requests_are_invalid(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let many: Vec<String> = (0..10_001).map(|i| format!("caller-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();

    let empty = server.try_priority(&[], false).await;
    let oversize = server.try_priority(&many, false).await;
    let largest = server.try_priority(&many[..10_000], false).await;

    assert_status(empty, Code::InvalidArgument, "empty");
    assert_status(oversize, Code::InvalidArgument, "10000");
    let largest = largest.expect("the batch limit itself is accepted");
    assert_eq!(largest.len(), 10_000);
    assert!(largest.iter().all(|a| !a.known && a.priority == 25.0));
    server.stop().await;
}
