//! UpsertAccounts: what is stored survives a restart, a repeated request
//! changes nothing, an upsert replaces the whole feature set, and a bad
//! account is reported without touching the rest of the batch or what was
//! stored for it before.

use healthscore::grpc::pb::{self, AccountErrorReason};
use tonic::Code;

use crate::{
    helpers::{
        TestDb, TestServer, assert_all_upserted, assert_status, number, profile, telco_book,
        telco_customer, text, upsert_of,
    },
    models::{Served, saas_account, saas_derived},
};

on_both_backends!(
    upserted_accounts_are_all_found_after_a_restart,
    repeating_an_upsert_changes_nothing,
    an_upsert_replaces_the_profile_and_the_whole_feature_set,
    bad_accounts_are_reported_and_the_rest_of_the_batch_is_stored,
);

/// What the server says about a set of accounts through every read RPC.
#[derive(Debug, PartialEq)]
struct Snapshot {
    health: Vec<pb::GetAccountHealthResponse>,
    listing: Vec<pb::AccountSummary>,
    history: Vec<Vec<pb::HealthPoint>>,
    priorities: Vec<pb::AccountPriority>,
}

async fn snapshot(server: &TestServer, ids: &[&str]) -> Snapshot {
    let mut health = Vec::new();
    let mut history = Vec::new();
    for id in ids {
        health.push(server.health(id).await);
        history.push(server.history(id).await);
    }
    Snapshot {
        health,
        listing: server.list_all(Default::default()).await,
        history,
        priorities: server.priority(ids, false).await,
    }
}

async fn upserted_accounts_are_all_found_after_a_restart(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let book = telco_book(8);
    let ids: Vec<&str> = book.iter().map(|a| a.account_id.as_str()).collect();
    let response = server.upsert(book.clone()).await;
    assert_all_upserted(&response);
    let before = snapshot(&server, &ids).await;

    let server = server.restart(&db, Served::Telco).await;
    let after = snapshot(&server, &ids).await;

    assert_eq!(after, before);
    assert_eq!(after.listing.len(), book.len());
    for (account, health) in book.iter().zip(&after.health) {
        assert_eq!(health.profile.as_ref(), account.profile.as_ref());
        let score = health.score.as_ref().expect("a score");
        let inline = server
            .score_inline(&account.account_id, account.features.clone())
            .await;
        assert_eq!(score, &inline, "stored and inline scores agree");
    }
    for points in &after.history {
        assert_eq!(points.len(), 1, "one point, from the upsert");
    }
    server.stop().await;
}

async fn repeating_an_upsert_changes_nothing(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let book = telco_book(5);
    let ids: Vec<&str> = book.iter().map(|a| a.account_id.as_str()).collect();
    assert_all_upserted(&server.upsert(book.clone()).await);
    let once = snapshot(&server, &ids).await;

    let again = server.upsert(book.clone()).await;
    let twice = snapshot(&server, &ids).await;

    assert_all_upserted(&again);
    assert_eq!(again.upserted, 5);
    let listed = server.list(Default::default()).await;
    assert_eq!(listed.total_matching, 5, "no duplicate rows");
    assert_eq!(twice.listing, once.listing);
    assert_eq!(
        twice.history, once.history,
        "no history point for no change"
    );
    assert_eq!(twice.priorities, once.priorities);
    // Re-sending the stored state is no change: the time of the last change
    // stays.
    for (a, b) in once.health.iter().zip(&twice.health) {
        assert_eq!(a.score, b.score);
        assert_eq!(a.profile, b.profile);
        assert_eq!(a.features_updated_at, b.features_updated_at);
    }

    let server = server.restart(&db, Served::Telco).await;
    let restarted = snapshot(&server, &ids).await;

    assert_eq!(restarted.listing, once.listing);
    assert_eq!(restarted.history, once.history);
    assert_eq!(restarted.priorities, once.priorities);
    for (a, b) in once.health.iter().zip(&restarted.health) {
        assert_eq!(a.score, b.score);
        assert_eq!(a.profile, b.profile);
    }
    server.stop().await;
}

async fn an_upsert_replaces_the_profile_and_the_whole_feature_set(db: TestDb) {
    let server = db.serve(Served::Telco).await;
    let first = upsert_of(
        "7590-VHVEG",
        profile("smb", "emea", 358.2, "2026-06-30"),
        telco_customer(),
    );
    assert_all_upserted(&server.upsert(vec![first]).await);
    let mut fewer = telco_customer();
    fewer.remove("MonthlyCharges");
    fewer.remove("TotalCharges");
    fewer.insert("Contract".to_owned(), text("Two year"));
    fewer.insert("tenure".to_owned(), number(30.0));
    let mut new_profile = profile("mid-market", "amer", 12_000.0, "");
    new_profile.name = "Renamed Ltd".to_owned();
    new_profile.plan = "annual".to_owned();

    let response = server
        .upsert(vec![upsert_of(
            "7590-VHVEG",
            new_profile.clone(),
            fewer.clone(),
        )])
        .await;

    assert_all_upserted(&response);
    let expected = server.score_inline("7590-VHVEG", fewer.clone()).await;
    let health = server.health("7590-VHVEG").await;
    assert_eq!(health.profile, Some(new_profile.clone()));
    assert_eq!(health.score.as_ref(), Some(&expected));
    let mut imputed = expected.imputed_features.clone();
    imputed.sort();
    assert_eq!(
        imputed,
        ["MonthlyCharges", "TotalCharges"],
        "the dropped features are missing again, not kept from before"
    );
    assert_eq!(server.history("7590-VHVEG").await.len(), 2);

    let server = server.restart(&db, Served::Telco).await;
    let health = server.health("7590-VHVEG").await;
    assert_eq!(health.profile, Some(new_profile));
    assert_eq!(health.score, Some(expected));
    server.stop().await;
}

/// One bad account of a batch: the upsert, and the error it must get.
struct BadCase {
    upsert: pb::AccountUpsert,
    reason: AccountErrorReason,
    feature: &'static str,
}

fn bad_cases() -> Vec<BadCase> {
    let case = |upsert, reason, feature| BadCase {
        upsert,
        reason,
        feature,
    };
    let with_feature = |id: &str, name: &str, value| {
        let mut account = saas_account(id, "growth", 40.0);
        account.features.insert(name.to_owned(), value);
        account
    };
    let with_profile = |id: &str, edit: &dyn Fn(&mut pb::AccountProfile)| {
        let mut account = saas_account(id, "growth", 40.0);
        edit(account.profile.as_mut().expect("a profile"));
        account
    };
    vec![
        case(
            with_feature("unknown-feature", "sets", number(3.0)),
            AccountErrorReason::UnknownFeature,
            "sets",
        ),
        case(
            with_feature("nan", "seats", number(f64::NAN)),
            AccountErrorReason::InvalidValue,
            "seats",
        ),
        case(
            with_feature("infinite", "seats", number(f64::INFINITY)),
            AccountErrorReason::InvalidValue,
            "seats",
        ),
        case(
            with_feature("wrong-type", "seats", text("forty")),
            AccountErrorReason::WrongType,
            "seats",
        ),
        case(
            with_profile("negative-value", &|p| p.annual_contract_value = -1.0),
            AccountErrorReason::InvalidValue,
            "profile.annual_contract_value",
        ),
        case(
            with_profile("nan-value", &|p| p.annual_contract_value = f64::NAN),
            AccountErrorReason::InvalidValue,
            "profile.annual_contract_value",
        ),
        case(
            with_profile("no-such-day", &|p| p.renewal_date = "2027-02-30".to_owned()),
            AccountErrorReason::InvalidValue,
            "profile.renewal_date",
        ),
        case(
            with_profile("not-a-date", &|p| p.renewal_date = "next spring".to_owned()),
            AccountErrorReason::InvalidValue,
            "profile.renewal_date",
        ),
        // chrono parses unpadded fields; the store refuses them, so the
        // check must too or the whole batch fails in the store.
        case(
            with_profile("unpadded-date", &|p| p.renewal_date = "2027-3-5".to_owned()),
            AccountErrorReason::InvalidValue,
            "profile.renewal_date",
        ),
        case(
            with_feature("derived", "logins_28d", number(12.0)),
            AccountErrorReason::InvalidValue,
            "logins_28d",
        ),
    ]
}

async fn bad_accounts_are_reported_and_the_rest_of_the_batch_is_stored(db: TestDb) {
    let server = db.serve(Served::Saas).await;
    let cases = bad_cases();
    let mut before = Vec::new();
    let stored: Vec<pb::AccountUpsert> = cases
        .iter()
        .map(|c| saas_account(&c.upsert.account_id, "starter", 5.0))
        .chain([saas_account("updated", "starter", 5.0)])
        .collect();
    assert_all_upserted(&server.upsert(stored.clone()).await);
    for account in &stored {
        let id = &account.account_id;
        before.push((server.health(id).await, server.history(id).await));
    }
    let mut batch = vec![saas_account("new", "enterprise", 120.0)];
    batch.extend(cases.iter().map(|c| c.upsert.clone()));
    batch.push(upsert_of(
        "",
        profile("smb", "emea", 1.0, ""),
        Default::default(),
    ));
    batch.push(saas_account("new", "starter", 1.0));
    batch.push(saas_account("updated", "growth", 60.0));
    // A good account under the id of a bad one earlier in the batch is
    // still a repeat of that id.
    batch.push(saas_account("nan", "enterprise", 9.0));

    let response = server.upsert(batch.clone()).await;

    assert_eq!(response.upserted, 2);
    assert_eq!(response.results.len(), batch.len());
    for (result, sent) in response.results.iter().zip(&batch) {
        assert_eq!(
            result.account_id, sent.account_id,
            "results follow the request"
        );
    }
    assert_eq!(response.results[0].error, None);
    for (case, result) in cases.iter().zip(&response.results[1..]) {
        let error = result
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{} should be refused", result.account_id));
        assert_eq!(
            error.reason(),
            case.reason,
            "{}: {}",
            result.account_id,
            error.message
        );
        assert_eq!(error.feature, case.feature, "{}", result.account_id);
        assert!(
            error.message.contains(case.feature),
            "{}: {:?} should name {}",
            result.account_id,
            error.message,
            case.feature
        );
    }
    let tail = &response.results[cases.len() + 1..];
    let reason = |r: &pb::UpsertResult| r.error.as_ref().map(|e| e.reason());
    assert_eq!(reason(&tail[0]), Some(AccountErrorReason::MissingAccountId));
    assert_eq!(
        reason(&tail[1]),
        Some(AccountErrorReason::DuplicateAccountId)
    );
    assert_eq!(tail[2].error, None);
    assert_eq!(
        reason(&tail[3]),
        Some(AccountErrorReason::DuplicateAccountId)
    );

    assert_batch_outcome(&server, &stored, &before).await;
    let empty = server
        .client
        .clone()
        .upsert_accounts(pb::UpsertAccountsRequest::default())
        .await;
    assert_status(empty, Code::InvalidArgument, "empty");

    let server = server.restart(&db, Served::Saas).await;
    assert_batch_outcome(&server, &stored, &before).await;
    server.stop().await;
}

/// Asserts the good accounts of the batch are stored and the bad ones keep
/// what was stored before, to the last field.
async fn assert_batch_outcome(
    server: &TestServer,
    stored: &[pb::AccountUpsert],
    before: &[(pb::GetAccountHealthResponse, Vec<pb::HealthPoint>)],
) {
    for (account, (earlier, earlier_points)) in stored.iter().zip(before) {
        let now = server.health(&account.account_id).await;
        let points = server.history(&account.account_id).await;
        if account.account_id == "updated" {
            let expected = saas_account("updated", "growth", 60.0);
            assert_eq!(now.profile, expected.profile);
            let derived = saas_derived("growth", 60.0, 0.0, None, 0.0, None);
            let inline = server.score_inline("updated", derived).await;
            assert_eq!(now.score, Some(inline));
            assert_eq!(points.len(), 2);
        } else {
            assert_eq!(&now, earlier, "{} is untouched", account.account_id);
            assert_eq!(&points, earlier_points, "{}", account.account_id);
        }
    }
    let new = server.health("new").await.profile.expect("a profile");
    assert_eq!(
        new.plan, "enterprise",
        "the first of two same-id accounts is kept"
    );
    let listed = server.list(Default::default()).await;
    assert_eq!(listed.total_matching as usize, stored.len() + 1);
}
