//! RecordSignals with the SaaS model: signals become the derived features
//! exactly as the template defines them, move the score the way the data
//! says, are stored once per event_id, and a bad signal is rejected on its
//! own with its reason and its position in the whole stream.

use healthscore::grpc::pb::{
    self, SignalErrorReason,
    SignalErrorReason::{InvalidTime, InvalidValue, MissingEventId, UnknownAccount, UnknownKind},
    SignalKind,
};

use crate::{
    helpers::{
        DAY_MICROS, TestDb, assert_all_upserted, contribution, days_ago, escalation, login,
        now_micros, signal, timestamp,
    },
    models::{Served, saas_account, saas_derived},
};

on_both_backends!(
    logins_and_escalations_move_the_derived_features_and_the_score,
    a_repeated_event_id_is_stored_once,
    bad_signals_are_rejected_one_by_one_and_the_good_ones_kept,
);

async fn logins_and_escalations_move_the_derived_features_and_the_score(db: TestDb) {
    let server = db.serve(Served::Saas).await;
    assert_all_upserted(
        &server
            .upsert(vec![saas_account("acme", "growth", 25.0)])
            .await,
    );
    let fresh = server.score_of("acme").await;
    // Twenty logins in the last 28 days and ten more before that, sent over
    // three messages in no particular time order.
    let recent: Vec<pb::Signal> = (0..20)
        .map(|i| login(&format!("login-{i}"), "acme", 1.5 + f64::from(i)))
        .collect();
    let older: Vec<pb::Signal> = (0..10)
        .map(|i| login(&format!("login-old-{i}"), "acme", 80.0 - 4.0 * f64::from(i)))
        .collect();
    let messages = vec![
        recent[10..].iter().rev().cloned().collect(),
        older,
        recent[..10].to_vec(),
    ];

    let logged_in = server.record(messages).await;

    assert_eq!((logged_in.accepted, logged_in.duplicates), (30, 0));
    assert_eq!(logged_in.errors, []);
    let active = server.score_of("acme").await;
    assert_eq!(
        fresh,
        server
            .score_inline("acme", saas_derived("growth", 25.0, 0.0, None, 0.0, None))
            .await,
        "no logins: a count of 0 and no trend (0 / 0)"
    );
    assert_eq!(
        active,
        server
            .score_inline(
                "acme",
                saas_derived("growth", 25.0, 20.0, Some(20.0 / 30.0), 0.0, None)
            )
            .await
    );
    assert!(active.churn_probability < fresh.churn_probability);
    assert!(active.health_score > fresh.health_score);
    assert!(contribution(&active, "logins_28d") < contribution(&fresh, "logins_28d"));

    // Three escalations within 90 days; one 120 days ago falls outside.
    let escalated = server
        .record(vec![vec![
            escalation("esc-1", "acme", 2.0),
            escalation("esc-2", "acme", 120.0),
            escalation("esc-3", "acme", 60.0),
            escalation("esc-4", "acme", 10.0),
        ]])
        .await;

    assert_eq!((escalated.accepted, escalated.duplicates), (4, 0));
    let worse = server.score_of("acme").await;
    assert_eq!(
        worse,
        server
            .score_inline(
                "acme",
                saas_derived("growth", 25.0, 20.0, Some(20.0 / 30.0), 3.0, None)
            )
            .await
    );
    assert!(worse.churn_probability > active.churn_probability);
    assert!(worse.health_score < active.health_score);
    assert!(contribution(&worse, "escalations_90d") > contribution(&active, "escalations_90d"));

    // The latest NPS answer counts, whatever order the answers arrive in.
    let surveyed = server
        .record(vec![vec![
            signal("nps-2", "acme", SignalKind::NpsResponse, 9.0, days_ago(5.0)),
            signal(
                "nps-1",
                "acme",
                SignalKind::NpsResponse,
                2.0,
                days_ago(30.0),
            ),
        ]])
        .await;

    assert_eq!(surveyed.accepted, 2);
    let answered = server.score_of("acme").await;
    assert_eq!(
        answered,
        server
            .score_inline(
                "acme",
                saas_derived("growth", 25.0, 20.0, Some(20.0 / 30.0), 3.0, Some(9.0))
            )
            .await
    );
    let before_restart = server.health("acme").await;

    let server = server.restart(&db, Served::Saas).await;

    assert_eq!(server.health("acme").await, before_restart);
    server.stop().await;
}

async fn a_repeated_event_id_is_stored_once(db: TestDb) {
    let server = db.serve(Served::Saas).await;
    assert_all_upserted(
        &server
            .upsert(vec![saas_account("acme", "starter", 3.0)])
            .await,
    );

    let first = server
        .record(vec![
            vec![
                login("e1", "acme", 1.0),
                login("e2", "acme", 2.0),
                login("e1", "acme", 3.0),
            ],
            vec![login("e3", "acme", 4.0), login("e2", "acme", 2.0)],
        ])
        .await;
    let second = server
        .record(vec![vec![
            login("e1", "acme", 1.0),
            login("e4", "acme", 5.0),
        ]])
        .await;
    // The server commits a stream in chunks of about a thousand signals, so
    // these repeats reach the store in a later transaction than the first
    // sending of their ids.
    let bulk: Vec<pb::Signal> = (0..1200)
        .map(|i| login(&format!("bulk-{i}"), "acme", 30.0 + f64::from(i) / 30.0))
        .collect();
    let third = server
        .record(vec![
            bulk[..600].to_vec(),
            bulk[600..].to_vec(),
            vec![
                bulk[5].clone(),
                bulk[700].clone(),
                login("e4", "acme", 5.0),
                login("late", "ghost", 1.0),
            ],
        ])
        .await;

    assert_eq!((first.accepted, first.duplicates), (3, 2));
    assert_eq!((second.accepted, second.duplicates), (1, 1));
    assert_eq!((third.accepted, third.duplicates), (1200, 3));
    for response in [&first, &second] {
        assert_eq!(response.errors, []);
    }
    let late: Vec<(u64, &str)> = third
        .errors
        .iter()
        .map(|e| (e.index, e.event_id.as_str()))
        .collect();
    assert_eq!(late, [(1203, "late")], "indexed within the whole stream");
    let expected = saas_derived("starter", 3.0, 4.0, Some(4.0 / 1204.0), 0.0, None);
    assert_eq!(
        server.score_of("acme").await,
        server.score_inline("acme", expected.clone()).await
    );

    let server = server.restart(&db, Served::Saas).await;
    let resent = server
        .record(vec![vec![
            login("e1", "acme", 1.0),
            login("e4", "acme", 5.0),
        ]])
        .await;

    assert_eq!((resent.accepted, resent.duplicates), (0, 2));
    assert_eq!(
        server.score_of("acme").await,
        server.score_inline("acme", expected).await
    );
    server.stop().await;
}

/// A signal to reject, the reason it must get and a word its message must
/// contain.
struct BadSignal {
    signal: pb::Signal,
    reason: SignalErrorReason,
    needle: &'static str,
}

async fn bad_signals_are_rejected_one_by_one_and_the_good_ones_kept(db: TestDb) {
    let server = db.serve(Served::Saas).await;
    assert_all_upserted(
        &server
            .upsert(vec![saas_account("acme", "growth", 12.0)])
            .await,
    );
    let bad = |signal, reason, needle| {
        Some(BadSignal {
            signal,
            reason,
            needle,
        })
    };
    // A login, good but for `edit`.
    let with = |edit: &dyn Fn(&mut pb::Signal)| {
        let mut s = login("bad", "acme", 1.0);
        edit(&mut s);
        s
    };
    // Each entry is a good signal (None) or a bad one; the outer vector is
    // the stream's messages.
    let stream: Vec<Vec<Option<BadSignal>>> = vec![
        vec![
            None,
            bad(login("ghost-1", "ghost", 1.0), UnknownAccount, "ghost"),
            None,
        ],
        vec![
            bad(
                with(&|s| s.kind = SignalKind::Unspecified as i32),
                UnknownKind,
                "kind",
            ),
            bad(with(&|s| s.value = f64::NAN), InvalidValue, "NaN"),
            None,
        ],
        vec![
            bad(
                signal(
                    "nps-11",
                    "acme",
                    SignalKind::NpsResponse,
                    11.0,
                    days_ago(1.0),
                ),
                InvalidValue,
                "11",
            ),
            bad(
                with(&|s| s.occurred_at = Some(timestamp(now_micros() + DAY_MICROS))),
                InvalidTime,
                "future",
            ),
            bad(with(&|s| s.occurred_at = None), InvalidTime, "occurred_at"),
            bad(with(&|s| s.event_id.clear()), MissingEventId, "event_id"),
            None,
            bad(
                with(&|s| s.occurred_at.as_mut().expect("a time").nanos = -1),
                InvalidTime,
                "occurred_at",
            ),
            bad(with(&|s| s.kind = 99), UnknownKind, "kind"),
            None,
            bad(
                signal(
                    "csat-0",
                    "acme",
                    SignalKind::CsatResponse,
                    0.0,
                    days_ago(1.0),
                ),
                InvalidValue,
                "csat",
            ),
            bad(with(&|s| s.value = -1.0), InvalidValue, "-1"),
            // Sums over a window must stay finite: 1e308 twice would not.
            bad(
                with(&|s| s.value = 1e308),
                InvalidValue,
                "from 0 to 1000000000",
            ),
            bad(with(&|s| s.value = 0.37), InvalidValue, "whole numbers"),
            bad(
                with(&|s| s.occurred_at = Some(timestamp(0))),
                InvalidTime,
                "before 2000-01-01",
            ),
        ],
    ];
    // The good ones, in stream order: logins 1, 2, 60 and 3 days ago, then
    // an NPS of 8 four days ago.
    let mut goods = vec![
        login("good-0", "acme", 1.0),
        login("good-1", "acme", 2.0),
        login("good-2", "acme", 60.0),
        login("good-3", "acme", 3.0),
        signal(
            "good-4",
            "acme",
            SignalKind::NpsResponse,
            8.0,
            days_ago(4.0),
        ),
    ]
    .into_iter();
    let mut expected_errors = Vec::new();
    let mut messages = Vec::new();
    let mut index = 0;
    for message in stream {
        let mut signals = Vec::new();
        for entry in message {
            match entry {
                None => signals.push(goods.next().expect("enough good signals")),
                Some(bad) => {
                    signals.push(bad.signal.clone());
                    expected_errors.push((index, bad));
                }
            }
            index += 1;
        }
        messages.push(signals);
    }
    assert_eq!(goods.next(), None, "every good signal is sent");

    let response = server.record(messages.clone()).await;

    assert_eq!((response.accepted, response.duplicates), (5, 0));
    assert_eq!(response.errors.len(), expected_errors.len());
    for (error, (index, bad)) in response.errors.iter().zip(&expected_errors) {
        assert_eq!(error.index, *index as u64, "{error:?}");
        assert_eq!(error.reason(), bad.reason, "{error:?}");
        assert_eq!(error.event_id, bad.signal.event_id);
        assert_eq!(error.account_id, bad.signal.account_id);
        assert!(
            error.message.contains(bad.needle),
            "message {:?} should mention {:?}",
            error.message,
            bad.needle
        );
    }
    let expected = saas_derived("growth", 12.0, 3.0, Some(3.0 / 4.0), 0.0, Some(8.0));
    assert_eq!(
        server.score_of("acme").await,
        server.score_inline("acme", expected.clone()).await
    );

    let nothing = server.record(vec![]).await;
    let empty_messages = server.record(vec![vec![], vec![]]).await;
    assert_eq!(nothing, pb::RecordSignalsResponse::default());
    assert_eq!(empty_messages, pb::RecordSignalsResponse::default());

    let server = server.restart(&db, Served::Saas).await;
    let resent = server.record(messages).await;

    assert_eq!(
        server.score_of("acme").await,
        server.score_inline("acme", expected).await
    );
    assert_eq!((resent.accepted, resent.duplicates), (0, 5));
    assert_eq!(resent.errors.len(), expected_errors.len());
    server.stop().await;
}
