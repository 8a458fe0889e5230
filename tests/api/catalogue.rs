//! The catalogue of bad input: every RPC fed NaN and infinite values, empty
//! and huge strings, control characters, unknown accounts and features,
//! duplicate ids and wrong types. Each gets its exact status code (or
//! per-item reason) and a message naming the problem, and what was stored
//! before is unchanged afterwards.

use clap::Parser;
use healthscore::{
    app::Settings,
    grpc::pb::{
        self, AccountErrorReason, SignalErrorReason,
        model_admin_service_client::ModelAdminServiceClient,
    },
};
use tonic::Code;

use crate::helpers::{
    Features, TestApp, account, boolean, customer_7590_vhveg, number, spawn_app, text,
};

const STORED: &str = "stored-account";

fn upsert_of(id: &str, features: Features) -> pb::AccountUpsert {
    pb::AccountUpsert {
        account_id: id.to_owned(),
        profile: Some(pb::AccountProfile {
            name: "Stored Ltd".into(),
            segment: "smb".into(),
            region: "emea".into(),
            plan: "monthly".into(),
            annual_contract_value: 1200.0,
            renewal_date: "2027-03-31".into(),
        }),
        features,
    }
}

fn with(mut features: Features, name: &str, value: pb::FeatureValue) -> Features {
    features.insert(name.to_owned(), value);
    features
}

/// A server with one stored account, and that account's health as stored.
async fn server_with_an_account() -> (TestApp, pb::GetAccountHealthResponse) {
    let settings = Settings::parse_from([
        "healthscore-server",
        "--listen",
        "127.0.0.1:0",
        "--max-batch",
        "100",
        "--max-message-bytes",
        "65536",
        "--rescore-interval-secs",
        "0",
    ]);
    let app = spawn_app(settings).await;
    let response = app
        .client
        .clone()
        .upsert_accounts(pb::UpsertAccountsRequest {
            accounts: vec![upsert_of(STORED, customer_7590_vhveg())],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.upserted, 1, "{response:?}");
    let health = stored_health(&app).await;
    (app, health)
}

async fn stored_health(app: &TestApp) -> pb::GetAccountHealthResponse {
    app.client
        .clone()
        .get_account_health(pb::GetAccountHealthRequest {
            account_id: STORED.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn assert_failed<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
) {
    match result {
        Ok(response) => panic!("{what}: expected {code:?}, got {response:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(
                status.message().contains(needle),
                "{what}: expected {needle:?} in {:?}",
                status.message()
            );
        }
    }
}

#[tokio::test]
async fn score_accounts_catalogue() {
    let (app, _) = server_with_an_account().await;
    let base = customer_7590_vhveg();
    let huge = "x".repeat(300);
    let cases: Vec<(&str, pb::Account, AccountErrorReason, &str, &str)> = vec![
        (
            "NaN number",
            account("a1", with(base.clone(), "tenure", number(f64::NAN))),
            AccountErrorReason::InvalidValue,
            "tenure",
            "NaN",
        ),
        (
            "infinite number",
            account(
                "a2",
                with(base.clone(), "MonthlyCharges", number(f64::INFINITY)),
            ),
            AccountErrorReason::InvalidValue,
            "MonthlyCharges",
            "inf",
        ),
        (
            "wrong type",
            account("a3", with(base.clone(), "tenure", text("twelve"))),
            AccountErrorReason::WrongType,
            "tenure",
            "a string",
        ),
        (
            "boolean for a category",
            account("a4", with(base.clone(), "Contract", boolean(true))),
            AccountErrorReason::WrongType,
            "Contract",
            "a boolean",
        ),
        (
            "unknown feature",
            account("a5", with(base.clone(), "tenrue", number(3.0))),
            AccountErrorReason::UnknownFeature,
            "tenrue",
            "unknown feature",
        ),
        (
            "empty id",
            account("", base.clone()),
            AccountErrorReason::MissingAccountId,
            "",
            "empty",
        ),
        (
            "huge id",
            account(&huge, base.clone()),
            AccountErrorReason::InvalidAccountId,
            "",
            "300 bytes long; at most 256",
        ),
        (
            "NUL in id",
            account("a\0b", base.clone()),
            AccountErrorReason::InvalidAccountId,
            "",
            "control character",
        ),
        (
            "duplicate id",
            account("a1", base.clone()),
            AccountErrorReason::DuplicateAccountId,
            "",
            "more than once",
        ),
    ];
    let accounts: Vec<pb::Account> = cases.iter().map(|c| c.1.clone()).collect();
    let response = app
        .client
        .clone()
        .score_accounts(pb::ScoreAccountsRequest {
            accounts,
            max_attributions: 0,
        })
        .await
        .expect("per-account problems never fail the call")
        .into_inner();

    for ((what, _, reason, feature, needle), score) in cases.iter().zip(&response.scores) {
        let error = score
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: scored {score:?}"));
        assert_eq!(error.reason(), *reason, "{what}: {error:?}");
        assert_eq!(error.feature, *feature, "{what}: {error:?}");
        assert!(error.message.contains(needle), "{what}: {error:?}");
        assert!(
            error.message.len() < 300,
            "{what}: message echoes the input"
        );
    }

    // A huge unseen level is no level: scored, and listed as imputed.
    let unseen = app
        .score_one(account(
            "a9",
            with(base.clone(), "Contract", text(&"y".repeat(30_000))),
        ))
        .await;
    assert!(unseen.imputed_features.contains(&"Contract".to_owned()));

    let empty = app
        .client
        .clone()
        .score_accounts(pb::ScoreAccountsRequest::default())
        .await;
    assert_failed(
        "empty batch",
        empty,
        Code::InvalidArgument,
        "`accounts` is empty",
    );
    let many = app
        .client
        .clone()
        .score_accounts(pb::ScoreAccountsRequest {
            accounts: (0..101)
                .map(|i| account(&format!("b{i}"), Features::new()))
                .collect(),
            max_attributions: 0,
        })
        .await;
    assert_failed(
        "batch over the limit",
        many,
        Code::InvalidArgument,
        "limit of 100",
    );
    let oversized = app
        .client
        .clone()
        .score_accounts(pb::ScoreAccountsRequest {
            accounts: vec![account(
                "big",
                with(base, "Contract", text(&"z".repeat(70_000))),
            )],
            max_attributions: 0,
        })
        .await;
    assert_failed(
        "message over --max-message-bytes",
        oversized,
        Code::ResourceExhausted,
        "message length too large",
    );
}

#[tokio::test]
async fn upsert_accounts_catalogue_changes_nothing_stored() {
    let (app, before) = server_with_an_account().await;
    let base = customer_7590_vhveg();
    let bad_profile = |edit: &dyn Fn(&mut pb::AccountProfile)| {
        let mut upsert = upsert_of(STORED, base.clone());
        edit(upsert.profile.as_mut().unwrap());
        upsert
    };
    let cases: Vec<(&str, pb::AccountUpsert, AccountErrorReason, &str)> = vec![
        (
            "NaN annual value",
            bad_profile(&|p| p.annual_contract_value = f64::NAN),
            AccountErrorReason::InvalidValue,
            "profile.annual_contract_value",
        ),
        (
            "negative annual value",
            bad_profile(&|p| p.annual_contract_value = -5.0),
            AccountErrorReason::InvalidValue,
            "profile.annual_contract_value",
        ),
        (
            "renewal date that does not parse",
            bad_profile(&|p| p.renewal_date = "31/03/2027".into()),
            AccountErrorReason::InvalidValue,
            "profile.renewal_date",
        ),
        (
            "NUL in the segment",
            bad_profile(&|p| p.segment = "sm\0b".into()),
            AccountErrorReason::InvalidValue,
            "profile.segment",
        ),
        (
            "huge region",
            bad_profile(&|p| p.region = "r".repeat(5000)),
            AccountErrorReason::InvalidValue,
            "profile.region",
        ),
    ];
    let mut feature_cases: Vec<(&str, pb::AccountUpsert, AccountErrorReason, &str)> = vec![
        (
            "infinite feature",
            upsert_of(
                STORED,
                with(base.clone(), "tenure", number(f64::NEG_INFINITY)),
            ),
            AccountErrorReason::InvalidValue,
            "tenure",
        ),
        (
            "unknown feature",
            upsert_of(STORED, with(base.clone(), "Tenure", number(1.0))),
            AccountErrorReason::UnknownFeature,
            "Tenure",
        ),
        (
            "control character in a level",
            upsert_of(STORED, with(base.clone(), "Contract", text("Two\u{7}year"))),
            AccountErrorReason::InvalidValue,
            "Contract",
        ),
        (
            "wrong type",
            upsert_of(STORED, with(base.clone(), "TotalCharges", boolean(false))),
            AccountErrorReason::WrongType,
            "TotalCharges",
        ),
    ];
    // Each bad upsert goes alone, so a refusal cannot hide behind a
    // duplicate-id error.
    let mut all = cases;
    all.append(&mut feature_cases);
    for (what, upsert, reason, feature) in all {
        let response = app
            .client
            .clone()
            .upsert_accounts(pb::UpsertAccountsRequest {
                accounts: vec![upsert],
            })
            .await
            .expect("per-account problems never fail the call")
            .into_inner();
        assert_eq!(response.upserted, 0, "{what}");
        let error = response.results[0].error.as_ref().expect(what);
        assert_eq!(error.reason(), reason, "{what}: {error:?}");
        assert_eq!(error.feature, feature, "{what}: {error:?}");
    }
    let huge_id = app
        .client
        .clone()
        .upsert_accounts(pb::UpsertAccountsRequest {
            accounts: vec![upsert_of(&"i".repeat(257), base.clone())],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        huge_id.results[0].error.as_ref().unwrap().reason(),
        AccountErrorReason::InvalidAccountId
    );

    // SQL in an id is data: stored and read back verbatim, tables intact.
    let hostile = "x'); DROP TABLE accounts; --";
    let stored = app
        .client
        .clone()
        .upsert_accounts(pb::UpsertAccountsRequest {
            accounts: vec![upsert_of(hostile, base)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.upserted, 1);
    let read = app
        .client
        .clone()
        .get_account_health(pb::GetAccountHealthRequest {
            account_id: hostile.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.score.unwrap().account_id, hostile);

    let after = stored_health(&app).await;
    assert_eq!(after.profile, before.profile);
    assert_eq!(after.features_updated_at, before.features_updated_at);
    assert_eq!(
        after.score.as_ref().unwrap().churn_probability,
        before.score.as_ref().unwrap().churn_probability
    );
}

#[tokio::test]
async fn record_signals_catalogue_keeps_the_good_events() {
    let (app, before) = server_with_an_account().await;
    let now = chrono::Utc::now().timestamp();
    let at = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let signal = |event: &str, account: &str, kind: i32, value: f64, when| pb::Signal {
        event_id: event.into(),
        account_id: account.into(),
        kind,
        value,
        occurred_at: when,
    };
    let login = pb::SignalKind::Login as i32;
    let cases = vec![
        (
            signal("", STORED, login, 1.0, at(now - 60)),
            SignalErrorReason::MissingEventId,
        ),
        (
            signal(&"e".repeat(300), STORED, login, 1.0, at(now - 60)),
            SignalErrorReason::InvalidEventId,
        ),
        (
            signal("e\0", STORED, login, 1.0, at(now - 60)),
            SignalErrorReason::InvalidEventId,
        ),
        (
            signal("e3", "nobody", login, 1.0, at(now - 60)),
            SignalErrorReason::UnknownAccount,
        ),
        (
            signal("e4", STORED, 0, 1.0, at(now - 60)),
            SignalErrorReason::UnknownKind,
        ),
        (
            signal("e5", STORED, 99, 1.0, at(now - 60)),
            SignalErrorReason::UnknownKind,
        ),
        (
            signal("e6", STORED, login, f64::NAN, at(now - 60)),
            SignalErrorReason::InvalidValue,
        ),
        (
            signal(
                "e7",
                STORED,
                pb::SignalKind::NpsResponse as i32,
                11.0,
                at(now - 60),
            ),
            SignalErrorReason::InvalidValue,
        ),
        (
            signal("e8", STORED, login, 1.0, at(now + 86_400)),
            SignalErrorReason::InvalidTime,
        ),
        (
            signal("e9", STORED, login, 1.0, None),
            SignalErrorReason::InvalidTime,
        ),
        (
            signal(
                "e10",
                STORED,
                login,
                1.0,
                Some(prost_types::Timestamp {
                    seconds: now,
                    nanos: 2_000_000_000,
                }),
            ),
            SignalErrorReason::InvalidTime,
        ),
    ];
    let mut signals: Vec<pb::Signal> = cases.iter().map(|c| c.0.clone()).collect();
    signals.push(signal("good-1", STORED, login, 1.0, at(now - 120)));
    signals.push(signal("good-1", STORED, login, 1.0, at(now - 120)));

    let response = app
        .client
        .clone()
        .record_signals(tokio_stream::iter([pb::RecordSignalsRequest { signals }]))
        .await
        .expect("per-event problems never fail the stream")
        .into_inner();

    assert_eq!(response.accepted, 1);
    assert_eq!(response.duplicates, 1);
    assert_eq!(response.rejected, cases.len() as u64);
    for (i, (_, reason)) in cases.iter().enumerate() {
        let error = response
            .errors
            .iter()
            .find(|e| e.index == i as u64)
            .unwrap_or_else(|| panic!("event {i} was not rejected: {response:?}"));
        assert_eq!(error.reason(), *reason, "event {i}: {error:?}");
        assert!(
            !error.message.is_empty() && error.message.len() < 300,
            "{error:?}"
        );
    }
    // The Telco model reads no signal, so the stored score is unchanged.
    let after = stored_health(&app).await;
    assert_eq!(after.score, before.score);
}

#[tokio::test]
async fn read_rpcs_catalogue() {
    let (app, _) = server_with_an_account().await;
    let mut client = app.client.clone();

    assert_failed(
        "GetAccountHealth of an unknown account",
        client
            .get_account_health(pb::GetAccountHealthRequest {
                account_id: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "\"nobody\" is not stored",
    );
    assert_failed(
        "GetAccountHealth with an empty id",
        client
            .get_account_health(pb::GetAccountHealthRequest::default())
            .await,
        Code::InvalidArgument,
        "account_id is empty",
    );
    assert_failed(
        "GetPriority with no ids",
        client.get_priority(pb::GetPriorityRequest::default()).await,
        Code::InvalidArgument,
        "`account_ids` is empty",
    );
    assert_failed(
        "GetPriority over the batch limit",
        client
            .get_priority(pb::GetPriorityRequest {
                account_ids: (0..101).map(|i| i.to_string()).collect(),
                context: None,
            })
            .await,
        Code::InvalidArgument,
        "limit of 100",
    );
    let unknown = client
        .get_priority(pb::GetPriorityRequest {
            account_ids: vec!["nobody".into(), "\0".into(), "q".repeat(10_000)],
            context: None,
        })
        .await
        .expect("unknown ids get the default priority")
        .into_inner();
    assert!(unknown.priorities.iter().all(|p| !p.known));
    let list_cases = [
        (
            "a page token this server did not issue",
            pb::ListAccountsRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            "a renewal date that does not parse",
            pb::ListAccountsRequest {
                renewal_from: "next week".into(),
                ..Default::default()
            },
            "renewal_from",
        ),
        (
            "an unknown band",
            pb::ListAccountsRequest {
                bands: vec![42],
                ..Default::default()
            },
            "band",
        ),
        (
            "a NaN category level",
            pb::ListAccountsRequest {
                category_below: Some(pb::CategoryFilter {
                    category: pb::FeatureCategory::Financial as i32,
                    health_below: f64::NAN,
                }),
                ..Default::default()
            },
            "health_below",
        ),
    ];
    for (what, request, needle) in list_cases {
        assert_failed(
            what,
            client.list_accounts(request).await,
            Code::InvalidArgument,
            needle,
        );
    }
    assert_failed(
        "SummarizeSegments with an unknown grouping",
        client
            .summarize_segments(pb::SummarizeSegmentsRequest {
                group_by: 7,
                since: None,
            })
            .await,
        Code::InvalidArgument,
        "group_by",
    );
    assert_failed(
        "SummarizeSegments with an invalid time",
        client
            .summarize_segments(pb::SummarizeSegmentsRequest {
                group_by: 0,
                since: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
            })
            .await,
        Code::InvalidArgument,
        "since",
    );
    assert_failed(
        "GetHealthHistory of an unknown account",
        client
            .get_health_history(pb::GetHealthHistoryRequest {
                account_id: "nobody".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "not stored",
    );
    assert_failed(
        "GetHealthHistory with an invalid bound",
        client
            .get_health_history(pb::GetHealthHistoryRequest {
                account_id: STORED.into(),
                from: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "from",
    );
    assert_failed(
        "ReloadModel on the built-in model",
        ModelAdminServiceClient::new(app.channel.clone())
            .reload_model(pb::ReloadModelRequest {})
            .await,
        Code::FailedPrecondition,
        "built-in model",
    );
}
