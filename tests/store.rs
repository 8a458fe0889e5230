//! The account store on both backends: every test body runs once against a
//! fresh SQLite file in a temporary directory and once against a fresh
//! PostgreSQL database.
//!
//! PostgreSQL databases come from `tests/support/postgres.rs`: one per test
//! on `HEALTHSCORE_TEST_POSTGRES`, dropped afterwards;
//! `HEALTHSCORE_SKIP_POSTGRES=1` skips them.

use std::collections::{BTreeMap, HashMap};

use healthscore::store::{
    AccountRecord, Backend, HistoryRecord, SignalRecord, Store, StoreError, StoredValue,
};
use tempfile::TempDir;

#[path = "support/postgres.rs"]
mod postgres;

/// An arbitrary fixed instant (2025-10-09T09:20:00Z) in microseconds, so
/// times in the tests read as offsets from it.
const T0: i64 = 1_760_001_600_000_000;

/// One empty database for one test body.
struct TestDb {
    url: String,
    backend: Backend,
    /// Keeps the SQLite file's directory alive for the test.
    _dir: Option<TempDir>,
}

impl TestDb {
    async fn connect(&self) -> Store {
        Store::connect(&self.url)
            .await
            .unwrap_or_else(|error| panic!("cannot open the store at {}: {error:?}", self.url))
    }
}

async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    healthscore::telemetry::init_for_tests();
    let dir = tempfile::tempdir().expect("a temporary directory can be created");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());

    test(TestDb {
        url,
        backend: Backend::Sqlite,
        _dir: Some(dir),
    })
    .await;
}

async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    healthscore::telemetry::init_for_tests();
    postgres::with_database("hs_test", |url| {
        test(TestDb {
            url,
            backend: Backend::Postgres,
            _dir: None,
        })
    })
    .await;
}

/// Declares `<test>::sqlite` and `<test>::postgres` for each test body.
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::on_sqlite(super::$test).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::on_postgres(super::$test).await;
            }
        }
    )+};
}

on_both_backends!(
    a_fresh_database_is_migrated_and_reconnecting_is_harmless,
    everything_written_survives_a_restart,
    upsert_is_idempotent_and_replaces_the_whole_feature_set,
    a_feature_may_change_type_between_batches,
    duplicate_event_ids_are_stored_once,
    signals_for_an_unknown_account_fail_and_store_nothing,
    invalid_values_are_refused_before_anything_is_written,
    finite_extremes_round_trip_bit_for_bit,
    history_is_oldest_first_within_the_range_and_capped_to_the_newest,
    latest_history_before_gives_each_accounts_newest_earlier_row,
    concurrent_writers_lose_nothing,
    text_sorts_bytewise_on_both_backends,
    large_batches_span_several_statements,
);

fn account(id: &str) -> AccountRecord {
    AccountRecord {
        account_id: id.to_owned(),
        name: format!("{id} Ltd"),
        segment: "enterprise".to_owned(),
        region: "emea".to_owned(),
        plan: "pro".to_owned(),
        annual_contract_value: 120_000.5,
        renewal_date: Some("2027-03-31".to_owned()),
        features: BTreeMap::from([
            ("tenure".to_owned(), StoredValue::Number(14.0)),
            (
                "Contract".to_owned(),
                StoredValue::Text("One year".to_owned()),
            ),
            ("SeniorCitizen".to_owned(), StoredValue::Bool(false)),
            ("PaperlessBilling".to_owned(), StoredValue::Bool(true)),
        ]),
        updated_at_micros: T0,
    }
}

fn signal(event_id: &str, account_id: &str, occurred_at_micros: i64) -> SignalRecord {
    SignalRecord {
        event_id: event_id.to_owned(),
        account_id: account_id.to_owned(),
        kind: "login".to_owned(),
        value: 1.0,
        occurred_at_micros,
        received_at_micros: occurred_at_micros + 250,
    }
}

fn score(account_id: &str, model_version: &str, scored_at_micros: i64) -> HistoryRecord {
    HistoryRecord {
        account_id: account_id.to_owned(),
        model_version: model_version.to_owned(),
        scored_at_micros,
        churn_probability: 0.25,
        health_score: 75.0,
        band: "HEALTHY".to_owned(),
        top_attributions: r#"[{"feature":"tenure","contribution":-0.4}]"#.to_owned(),
    }
}

async fn all_signals(store: &Store) -> Vec<SignalRecord> {
    store
        .load_signals_since(i64::MIN)
        .await
        .expect("signals are readable")
}

async fn a_fresh_database_is_migrated_and_reconnecting_is_harmless(db: TestDb) {
    let store = db.connect().await;

    assert_eq!(store.backend(), db.backend);
    assert_eq!(store.load_accounts().await.expect("readable"), []);
    assert_eq!(all_signals(&store).await, []);
    assert_eq!(
        store
            .history("a", i64::MIN, i64::MAX, 10)
            .await
            .expect("readable"),
        []
    );
    assert!(
        store
            .latest_history_before(i64::MAX)
            .await
            .expect("readable")
            .is_empty()
    );
    store
        .upsert_accounts(&[])
        .await
        .expect("an empty upsert is a no-op");
    assert_eq!(
        store.insert_signals(&[]).await.expect("a no-op"),
        Vec::<bool>::new()
    );
    store
        .append_history(&[])
        .await
        .expect("an empty append is a no-op");

    let second = db.connect().await;
    second
        .upsert_accounts(&[account("a")])
        .await
        .expect("writable");
    store.close().await;
    second.close().await;
    drop((store, second));
    let third = db.connect().await;

    assert_eq!(
        third.load_accounts().await.expect("readable"),
        [account("a")]
    );
    third.close().await;
}

async fn everything_written_survives_a_restart(db: TestDb) {
    let store = db.connect().await;
    let accounts = [account("acme"), account("globex"), account("initech")];
    let signals = [
        signal("e1", "acme", T0),
        signal("e2", "globex", T0 + 1),
        signal("e3", "acme", T0 + 2),
    ];
    let history = [score("acme", "m1", T0), score("globex", "m1", T0 + 5)];
    store.upsert_accounts(&accounts).await.expect("writable");
    store.insert_signals(&signals).await.expect("writable");
    store.append_history(&history).await.expect("writable");

    store.close().await;
    drop(store);
    let reopened = db.connect().await;

    assert_eq!(reopened.load_accounts().await.expect("readable"), accounts);
    assert_eq!(
        all_signals(&reopened).await,
        [signals[0].clone(), signals[2].clone(), signals[1].clone()]
    );
    assert_eq!(
        reopened
            .history("acme", i64::MIN, i64::MAX, 10)
            .await
            .expect("readable"),
        [history[0].clone()]
    );
    reopened.close().await;
}

async fn upsert_is_idempotent_and_replaces_the_whole_feature_set(db: TestDb) {
    let store = db.connect().await;
    let mut bare = account("bare");
    bare.features.clear();
    bare.renewal_date = None;
    let first = [account("a"), account("b"), bare.clone()];
    let mut changed = account("a");
    changed.name = "A Corp".to_owned();
    changed.annual_contract_value = 99.25;
    changed.renewal_date = None;
    changed.updated_at_micros = T0 + 1;
    changed.features = BTreeMap::from([
        ("tenure".to_owned(), StoredValue::Number(15.0)),
        // Same feature, new type: the old text value must not linger.
        ("Contract".to_owned(), StoredValue::Bool(true)),
        ("region_tier".to_owned(), StoredValue::Text("2".to_owned())),
    ]);
    let mut superseded = account("b");
    superseded.plan = "basic".to_owned();

    store.upsert_accounts(&first).await.expect("writable");
    store.upsert_accounts(&first).await.expect("writable");
    assert_eq!(store.load_accounts().await.expect("readable"), first);

    store
        .upsert_accounts(&[changed.clone()])
        .await
        .expect("writable");
    assert_eq!(
        store.load_accounts().await.expect("readable"),
        [changed.clone(), account("b"), bare.clone()]
    );

    // Within one batch the last record for an id wins.
    store
        .upsert_accounts(&[superseded, account("b")])
        .await
        .expect("writable");
    assert_eq!(
        store.load_accounts().await.expect("readable"),
        [changed, account("b"), bare]
    );
    store.close().await;
}

/// Regression: with a NULL `f64` bound for the unused value columns, a
/// statement cached on a pooled PostgreSQL connection rejected the next
/// batch whose value types fell differently (sqlx issue #4284).
async fn a_feature_may_change_type_between_batches(db: TestDb) {
    let store = db.connect().await;

    // Each feature cycles number, text, bool, a step apart from the other,
    // so every value position is bound as NULL before it holds a number.
    let kinds = [
        StoredValue::Number(1.5),
        StoredValue::Text("one".to_owned()),
        StoredValue::Bool(true),
    ];
    for round in 0..9 {
        let mut record = account("a");
        record.features = BTreeMap::from([
            ("x".to_owned(), kinds[round % 3].clone()),
            ("y".to_owned(), kinds[(round + 1) % 3].clone()),
        ]);
        store
            .upsert_accounts(&[record.clone()])
            .await
            .expect("writable");

        assert_eq!(
            store.load_accounts().await.expect("readable"),
            [record],
            "round {round}"
        );
    }
    store.close().await;
}

async fn duplicate_event_ids_are_stored_once(db: TestDb) {
    let store = db.connect().await;
    store
        .upsert_accounts(&[account("a")])
        .await
        .expect("writable");
    let mut resent = signal("e1", "a", T0 + 99);
    resent.value = 42.0;

    let first = store
        .insert_signals(&[signal("e1", "a", T0), signal("e2", "a", T0 + 1), resent])
        .await
        .expect("writable");
    let second = store
        .insert_signals(&[signal("e2", "a", T0 + 1), signal("e3", "a", T0 + 2)])
        .await
        .expect("writable");

    assert_eq!(first, [true, true, false]);
    assert_eq!(second, [false, true]);
    assert_eq!(
        all_signals(&store).await,
        [
            signal("e1", "a", T0),
            signal("e2", "a", T0 + 1),
            signal("e3", "a", T0 + 2)
        ]
    );
    store.close().await;
}

async fn signals_for_an_unknown_account_fail_and_store_nothing(db: TestDb) {
    let store = db.connect().await;
    store
        .upsert_accounts(&[account("a")])
        .await
        .expect("writable");

    let error = store
        .insert_signals(&[
            signal("e1", "a", T0),
            signal("e2", "ghost", T0),
            signal("e3", "phantom", T0),
            signal("e4", "ghost", T0),
        ])
        .await
        .expect_err("unknown accounts are refused");

    match &error {
        StoreError::UnknownAccounts { account_ids } => {
            assert_eq!(account_ids, &["ghost", "phantom"]);
        }
        other => panic!("expected UnknownAccounts, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("\"ghost\""), "{message}");
    assert!(!message.to_uppercase().contains("INSERT"), "{message}");
    assert_eq!(all_signals(&store).await, []);
    assert_eq!(
        store
            .insert_signals(&[signal("e1", "a", T0)])
            .await
            .expect("writable"),
        [true]
    );
    store.close().await;
}

async fn invalid_values_are_refused_before_anything_is_written(db: TestDb) {
    let store = db.connect().await;
    let mut nan_feature = account("nan-feature");
    nan_feature
        .features
        .insert("tenure".to_owned(), StoredValue::Number(f64::NAN));
    let mut infinite_value = account("infinite-value");
    infinite_value.annual_contract_value = f64::INFINITY;
    let mut unpadded_date = account("unpadded-date");
    unpadded_date.renewal_date = Some("2027-3-31".to_owned());
    let mut no_date = account("no-date");
    no_date.renewal_date = Some("soon".to_owned());
    let mut nan_signal = signal("e2", "a", T0);
    nan_signal.value = f64::NAN;
    let mut infinite_score = score("a", "m1", T0 + 1);
    infinite_score.health_score = f64::NEG_INFINITY;
    let mut nan_probability = score("a", "m1", T0 + 2);
    nan_probability.churn_probability = f64::NAN;
    let mut not_json = score("a", "m1", T0 + 3);
    not_json.top_attributions = "{tenure: -0.4".to_owned();

    for bad in [nan_feature, infinite_value, unpadded_date, no_date] {
        let id = bad.account_id.clone();
        let error = store
            .upsert_accounts(&[account("ok"), bad])
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, StoreError::InvalidValue { account_id, .. } if *account_id == id),
            "{id}: {error:?}"
        );
    }
    assert_eq!(store.load_accounts().await.expect("readable"), []);

    store
        .upsert_accounts(&[account("a")])
        .await
        .expect("writable");
    let error = store
        .insert_signals(&[signal("e1", "a", T0), nan_signal])
        .await
        .expect_err("refused");
    assert!(
        matches!(error, StoreError::InvalidValue { .. }),
        "{error:?}"
    );
    assert_eq!(all_signals(&store).await, []);

    for bad in [infinite_score, nan_probability, not_json] {
        let error = store
            .append_history(&[score("a", "m1", T0), bad])
            .await
            .expect_err("refused");
        assert!(
            matches!(error, StoreError::InvalidValue { .. }),
            "{error:?}"
        );
    }
    assert_eq!(
        store
            .history("a", i64::MIN, i64::MAX, 10)
            .await
            .expect("readable"),
        []
    );
    store.close().await;
}

async fn finite_extremes_round_trip_bit_for_bit(db: TestDb) {
    let store = db.connect().await;
    // Largest, smallest normal, smallest subnormal, an integer SQLite stores
    // as INTEGER internally, and a sum with no short decimal form.
    let extremes = [f64::MAX, f64::MIN_POSITIVE, 5e-324, -1e15, 0.1 + 0.2];
    let mut record = account("a");
    record.annual_contract_value = f64::MIN;
    record.features = extremes
        .iter()
        .enumerate()
        .map(|(i, &x)| (format!("x{i}"), StoredValue::Number(x)))
        .collect();

    store.upsert_accounts(&[record]).await.expect("writable");
    let loaded = store.load_accounts().await.expect("readable");

    assert_eq!(
        loaded[0].annual_contract_value.to_bits(),
        f64::MIN.to_bits()
    );
    for (i, x) in extremes.iter().enumerate() {
        match loaded[0].features.get(&format!("x{i}")) {
            Some(StoredValue::Number(y)) => assert_eq!(y.to_bits(), x.to_bits(), "{x:e}"),
            other => panic!("x{i}: {other:?}"),
        }
    }
    store.close().await;
}

async fn history_is_oldest_first_within_the_range_and_capped_to_the_newest(db: TestDb) {
    let store = db.connect().await;
    let mut entries: Vec<HistoryRecord> = (1..=10).map(|i| score("a", "m1", T0 + i * 10)).collect();
    entries.push(score("a", "m2", T0 + 40));
    entries.push(score("b", "m1", T0 + 50));
    // A repeat within the batch, stored once.
    entries.push(score("a", "m1", T0 + 30));

    store.append_history(&entries).await.expect("writable");
    store
        .append_history(&entries)
        .await
        .expect("a retried append is harmless");
    let times = |rows: Vec<HistoryRecord>| -> Vec<(i64, String)> {
        rows.into_iter()
            .map(|row| (row.scored_at_micros - T0, row.model_version))
            .collect()
    };
    let read = |from: i64, to: i64, limit: u32| store.history("a", T0 + from, T0 + to, limit);

    assert_eq!(
        times(read(20, 80, 100).await.expect("readable")),
        [
            (20, "m1".to_owned()),
            (30, "m1".to_owned()),
            (40, "m1".to_owned()),
            (40, "m2".to_owned()),
            (50, "m1".to_owned()),
            (60, "m1".to_owned()),
            (70, "m1".to_owned()),
        ]
    );
    assert_eq!(
        times(read(20, 80, 3).await.expect("readable")),
        [
            (50, "m1".to_owned()),
            (60, "m1".to_owned()),
            (70, "m1".to_owned())
        ]
    );
    assert_eq!(read(20, 80, 0).await.expect("readable"), []);
    assert_eq!(read(50, 50, 10).await.expect("readable"), []);
    assert_eq!(
        store
            .history("nobody", i64::MIN, i64::MAX, 10)
            .await
            .expect("readable"),
        []
    );
    assert_eq!(
        store
            .history("b", i64::MIN, i64::MAX, 10)
            .await
            .expect("readable"),
        [score("b", "m1", T0 + 50)]
    );
    store.close().await;
}

async fn latest_history_before_gives_each_accounts_newest_earlier_row(db: TestDb) {
    let store = db.connect().await;
    store
        .append_history(&[
            score("a", "m1", T0 + 10),
            score("a", "m1", T0 + 30),
            score("a", "m1", T0 + 20),
            score("b", "m2", T0 + 25),
            score("b", "m1", T0 + 25),
            score("c", "m1", T0 + 40),
        ])
        .await
        .expect("writable");

    let before_30 = store
        .latest_history_before(T0 + 30)
        .await
        .expect("readable");
    let before_31 = store
        .latest_history_before(T0 + 31)
        .await
        .expect("readable");
    let before_all = store.latest_history_before(T0).await.expect("readable");

    assert_eq!(
        before_30,
        HashMap::from([
            ("a".to_owned(), (&score("a", "m1", T0 + 20)).into()),
            ("b".to_owned(), (&score("a", "m2", T0 + 25)).into()),
        ])
    );
    assert_eq!(before_31["a"], (&score("a", "m1", T0 + 30)).into());
    assert!(!before_31.contains_key("c"));
    assert!(before_all.is_empty());
    store.close().await;
}

async fn concurrent_writers_lose_nothing(db: TestDb) {
    const WRITERS: i64 = 8;
    const ROUNDS: i64 = 5;
    const ACCOUNTS_PER_ROUND: i64 = 10;
    let store = db.connect().await;

    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        writers.spawn(async move {
            let mut shared_events_stored = 0;
            for round in 0..ROUNDS {
                let ids: Vec<String> = (0..ACCOUNTS_PER_ROUND)
                    .map(|k| format!("w{writer}-r{round}-a{k}"))
                    .collect();
                let mut accounts: Vec<AccountRecord> = ids.iter().map(|id| account(id)).collect();
                // Every writer also rewrites one shared account each round.
                accounts.push(account("shared"));
                store
                    .upsert_accounts(&accounts)
                    .await
                    .expect("upsert under contention");

                let mut signals: Vec<SignalRecord> = ids
                    .iter()
                    .enumerate()
                    .map(|(k, id)| signal(&format!("{id}-e"), id, T0 + k as i64))
                    .collect();
                // The same event reported by every writer: stored once.
                signals.push(signal(&format!("shared-r{round}"), "shared", T0 + round));
                let stored = store
                    .insert_signals(&signals)
                    .await
                    .expect("insert under contention");
                assert!(stored[..ids.len()].iter().all(|&new| new));
                shared_events_stored += i64::from(stored[ids.len()]);

                let mut history: Vec<HistoryRecord> =
                    ids.iter().map(|id| score(id, "m1", T0 + round)).collect();
                history.push(score("shared", "m1", T0 + round));
                store
                    .append_history(&history)
                    .await
                    .expect("append under contention");
            }
            shared_events_stored
        });
    }
    let shared_events_stored: i64 = writers.join_all().await.into_iter().sum();

    let own = (WRITERS * ROUNDS * ACCOUNTS_PER_ROUND) as usize;
    assert_eq!(shared_events_stored, ROUNDS);
    assert_eq!(
        store.load_accounts().await.expect("readable").len(),
        own + 1
    );
    assert_eq!(all_signals(&store).await.len(), own + ROUNDS as usize);
    assert_eq!(
        store
            .latest_history_before(i64::MAX)
            .await
            .expect("readable")
            .len(),
        own + 1
    );
    assert_eq!(
        store
            .history("shared", i64::MIN, i64::MAX, 100)
            .await
            .expect("readable")
            .len(),
        ROUNDS as usize
    );
    store.close().await;
}

async fn text_sorts_bytewise_on_both_backends(db: TestDb) {
    let store = db.connect().await;
    let ids = ["b", "B", "a", "Z", "é", "_x", "a b", "ab"];
    let accounts: Vec<AccountRecord> = ids.iter().map(|id| account(id)).collect();
    let signals: Vec<SignalRecord> = ids
        .iter()
        .flat_map(|id| {
            [
                signal(&format!("{id}/B"), id, T0),
                signal(&format!("{id}/a"), id, T0),
                signal(&format!("{id}/0"), id, T0 - 1),
            ]
        })
        .collect();
    let mut expected_ids = ids.map(str::to_owned);
    expected_ids.sort();
    let mut expected_signals = signals.clone();
    expected_signals.sort_by(|x, y| {
        (&x.account_id, x.occurred_at_micros, &x.event_id).cmp(&(
            &y.account_id,
            y.occurred_at_micros,
            &y.event_id,
        ))
    });

    store.upsert_accounts(&accounts).await.expect("writable");
    store.insert_signals(&signals).await.expect("writable");
    let loaded: Vec<String> = store
        .load_accounts()
        .await
        .expect("readable")
        .into_iter()
        .map(|account| account.account_id)
        .collect();

    assert_eq!(loaded, expected_ids);
    assert_eq!(all_signals(&store).await, expected_signals);
    assert_eq!(
        store.load_signals_since(T0).await.expect("readable").len(),
        2 * ids.len()
    );
    store.close().await;
}

async fn large_batches_span_several_statements(db: TestDb) {
    let store = db.connect().await;
    let accounts: Vec<AccountRecord> = (0..1_500)
        .map(|i| {
            let mut record = account(&format!("acct-{i:05}"));
            record.annual_contract_value = f64::from(i) * 10.5;
            record
        })
        .collect();
    let signals: Vec<SignalRecord> = (0..3_000)
        .map(|i| {
            signal(
                &format!("evt-{i:05}"),
                &format!("acct-{:05}", i % 1_500),
                T0 + i64::from(i),
            )
        })
        .collect();
    let history: Vec<HistoryRecord> = accounts
        .iter()
        .map(|a| score(&a.account_id, "m1", T0))
        .collect();

    store.upsert_accounts(&accounts).await.expect("writable");
    let first = store.insert_signals(&signals).await.expect("writable");
    let again = store.insert_signals(&signals).await.expect("writable");
    store.append_history(&history).await.expect("writable");

    assert_eq!(store.load_accounts().await.expect("readable"), accounts);
    assert!(first.iter().all(|&new| new));
    assert!(again.iter().all(|&new| !new));
    assert_eq!(all_signals(&store).await.len(), signals.len());
    assert_eq!(
        store
            .latest_history_before(T0 + 1)
            .await
            .expect("readable")
            .len(),
        history.len()
    );
    store.close().await;
}
