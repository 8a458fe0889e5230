//! SummarizeSegments over the Telco book: each group's count, mean health,
//! share at risk and revenue at risk are what the listing of the same
//! accounts adds up to; the change in mean health needs `since`.

use std::collections::BTreeMap;

use healthscore::grpc::pb::{self, GroupBy, HealthBand};
use tonic::Code;

use crate::{
    helpers::{
        TestDb, assert_all_upserted, assert_close, assert_status, now_micros, profile, telco_book,
        telco_customer, text, timestamp, upsert_of,
    },
    models::Served,
};

on_both_backends!(
    summaries_add_up_the_listed_accounts,
    mean_health_change_compares_with_scores_recorded_before_since,
    a_bad_grouping_or_time_is_invalid,
);

#[derive(Debug, Default)]
struct Group {
    accounts: u64,
    health: f64,
    at_risk: u64,
    risk: f64,
}

/// The groups of `listing` by `key`, summed in the test.
fn groups(
    listing: &[pb::AccountSummary],
    key: impl Fn(&pb::AccountProfile) -> &str,
) -> BTreeMap<String, Group> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for account in listing {
        let group = groups
            .entry(key(account.profile.as_ref().expect("a profile")).to_owned())
            .or_default();
        group.accounts += 1;
        group.health += account.health_score;
        group.at_risk += u64::from(account.band() == HealthBand::AtRisk);
        group.risk += account.revenue_at_risk;
    }
    groups
}

async fn summaries_add_up_the_listed_accounts(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let mut book = telco_book(23);
    // Stored but not scorable: counted nowhere, like in the listing.
    let mut without_tenure = telco_customer();
    without_tenure.remove("tenure");
    book.push(upsert_of(
        "unscored",
        profile("smb", "emea", 9e9, ""),
        without_tenure,
    ));
    assert_all_upserted(&server.upsert(book).await);
    let listing = server.list_all(Default::default()).await;
    assert_eq!(listing.len(), 23);

    let by_segment = server.summarize(GroupBy::Segment, None).await;
    let by_default = server.summarize(GroupBy::Unspecified, None).await;
    let by_region = server.summarize(GroupBy::Region, None).await;

    assert_eq!(by_default, by_segment, "segment is the default grouping");
    let cases = [
        (by_segment, groups(&listing, |p| &p.segment)),
        (by_region, groups(&listing, |p| &p.region)),
    ];
    for (rows, expected) in cases {
        let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort_unstable();
        assert_eq!(sorted_keys, expected.keys().collect::<Vec<_>>());
        assert_eq!(rows.iter().map(|r| r.accounts).sum::<u64>(), 23);
        for row in &rows {
            let group = &expected[&row.key];
            assert_eq!(row.accounts, group.accounts, "{}", row.key);
            assert_close(
                row.mean_health,
                group.health / group.accounts as f64,
                &row.key,
            );
            assert_eq!(
                row.share_at_risk,
                group.at_risk as f64 / group.accounts as f64,
                "{}",
                row.key
            );
            assert_close(row.revenue_at_risk, group.risk, &row.key);
            assert_eq!(
                row.mean_health_change, None,
                "{}: no since, no change",
                row.key
            );
        }
        for pair in rows.windows(2) {
            assert!(
                pair[0].revenue_at_risk >= pair[1].revenue_at_risk,
                "largest revenue at risk first: {keys:?}"
            );
        }
        assert!(rows.iter().any(|r| r.share_at_risk > 0.0));
    }
    server.stop().await;
}

async fn mean_health_change_compares_with_scores_recorded_before_since(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let before_any_score = now_micros();
    let mut book = telco_book(12);
    assert_all_upserted(&server.upsert(book.clone()).await);
    let after_first_scores = now_micros();
    // Every enterprise account moves to a two-year contract, which the
    // Telco model scores as much healthier.
    let mut old_health = BTreeMap::new();
    let mut changed = Vec::new();
    for account in book.iter_mut().filter(|a| {
        a.profile
            .as_ref()
            .is_some_and(|p| p.segment == "enterprise")
    }) {
        let old = server.score_of(&account.account_id).await.health_score;
        account
            .features
            .insert("Contract".to_owned(), text("Two year"));
        changed.push(account.clone());
        old_health.insert(account.account_id.clone(), old);
    }
    assert_all_upserted(&server.upsert(changed.clone()).await);
    let mut total_change = 0.0;
    for account in &changed {
        let new = server.score_of(&account.account_id).await.health_score;
        total_change += new - old_health[&account.account_id];
    }

    let since_start = server
        .summarize(GroupBy::Segment, Some(timestamp(before_any_score)))
        .await;
    let since_first = server
        .summarize(GroupBy::Segment, Some(timestamp(after_first_scores)))
        .await;
    let since_now = server
        .summarize(GroupBy::Segment, Some(timestamp(now_micros())))
        .await;

    for row in &since_start {
        assert_eq!(
            row.mean_health_change, None,
            "{}: nothing recorded before",
            row.key
        );
    }
    for row in &since_first {
        let change = row
            .mean_health_change
            .expect("every account was scored before");
        if row.key == "enterprise" {
            assert_close(change, total_change / changed.len() as f64, &row.key);
            assert!(change > 0.0);
        } else {
            assert_eq!(change, 0.0, "{}", row.key);
        }
    }
    for row in &since_now {
        assert_eq!(row.mean_health_change, Some(0.0), "{}", row.key);
    }
    server.stop().await;
}

async fn a_bad_grouping_or_time_is_invalid(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let request = |group_by: i32, nanos: i32| pb::SummarizeSegmentsRequest {
        group_by,
        since: Some(prost_types::Timestamp { seconds: 0, nanos }),
    };

    let grouping = server
        .client
        .clone()
        .summarize_segments(request(99, 0))
        .await;
    let time = server
        .client
        .clone()
        .summarize_segments(request(1, -1))
        .await;
    let empty = server.summarize(GroupBy::Region, None).await;

    assert_status(grouping, Code::InvalidArgument, "group_by");
    assert_status(time, Code::InvalidArgument, "since");
    assert_eq!(empty, [], "no accounts, no groups");
    server.stop().await;
}
