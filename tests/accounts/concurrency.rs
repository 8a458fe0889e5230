//! Concurrent writers: eight clients, each on its own connection, upsert
//! accounts of their own and accounts they all share, and stream signals
//! whose ids partly repeat across clients. Every acknowledged write is
//! visible afterwards, and after a restart; every event is counted once.

use healthscore::grpc::pb;

use crate::{
    helpers::{Client, TestDb, TestServer, assert_all_upserted, login, record, upsert},
    models::{Served, saas_account, saas_derived},
};

on_both_backends!(concurrent_writers_lose_nothing_and_count_each_event_once);

const WRITERS: usize = 8;
const SHARED: usize = 4;
const OWN: usize = 3;
const PLANS: [&str; 3] = ["starter", "growth", "enterprise"];

/// Writer `k`'s version of shared account `i`: its plan, seats and name say
/// which writer sent it, so a torn record would show.
fn shared_variant(i: usize, k: usize) -> pb::AccountUpsert {
    let mut account = saas_account(&format!("shared-{i}"), PLANS[k % 3], 10.0 + k as f64);
    account.profile.as_mut().expect("a profile").name = format!("writer {k}");
    account
}

fn own_id(k: usize, m: usize) -> String {
    format!("own-{k}-{m}")
}

/// What one writer was told by the server.
#[derive(Debug, Default)]
struct Acks {
    upserts: Vec<pb::UpsertAccountsResponse>,
    signals: Vec<pb::RecordSignalsResponse>,
}

/// Writer `k`: upserts its accounts and the shared ones, streams five logins
/// per shared account (the same event ids as every other writer) and four
/// per own account, then a second stream repeating two of each own
/// account's logins with one new one, then upserts its own accounts again
/// with more seats.
async fn writer(k: usize, client: Client) -> Acks {
    let mut acks = Acks::default();
    let mut accounts: Vec<pb::AccountUpsert> = (0..SHARED).map(|i| shared_variant(i, k)).collect();
    accounts.extend((0..OWN).map(|m| saas_account(&own_id(k, m), "growth", 5.0)));
    acks.upserts.push(upsert(&client, accounts).await);

    let shared: Vec<pb::Signal> = (0..SHARED)
        .flat_map(|i| (0..5).map(move |j| (i, j)))
        .map(|(i, j)| {
            login(
                &format!("shared-{i}-{j}"),
                &format!("shared-{i}"),
                1.0 + j as f64,
            )
        })
        .collect();
    let own: Vec<pb::Signal> = (0..OWN)
        .flat_map(|m| (0..4).map(move |j| (m, j)))
        .map(|(m, j)| {
            login(
                &format!("{}-{j}", own_id(k, m)),
                &own_id(k, m),
                2.0 + j as f64,
            )
        })
        .collect();
    acks.signals.push(record(&client, vec![shared, own]).await);
    let again: Vec<pb::Signal> = (0..OWN)
        .flat_map(|m| {
            let id = own_id(k, m);
            [
                login(&format!("{id}-0"), &id, 2.0),
                login(&format!("{id}-extra"), &id, 7.5),
                login(&format!("{id}-3"), &id, 5.0),
            ]
        })
        .collect();
    acks.signals.push(record(&client, vec![again]).await);

    let more_seats = (0..OWN)
        .map(|m| saas_account(&own_id(k, m), "growth", 6.0))
        .collect();
    acks.upserts.push(upsert(&client, more_seats).await);
    acks
}

/// Asserts every account holds what its writers were acknowledged for.
async fn assert_everything_visible(server: &TestServer) {
    let listed = server.list(Default::default()).await;
    assert_eq!(listed.total_matching as usize, SHARED + WRITERS * OWN);
    for i in 0..SHARED {
        let id = format!("shared-{i}");
        let health = server.health(&id).await;
        let profile = health.profile.expect("a profile");
        let k: usize = profile
            .name
            .strip_prefix("writer ")
            .and_then(|k| k.parse().ok())
            .expect("one writer's version");
        assert_eq!(Some(profile), shared_variant(i, k).profile, "{id}");
        let expected = saas_derived(PLANS[k % 3], 10.0 + k as f64, 5.0, Some(1.0), 0.0, None);
        assert_eq!(
            health.score,
            Some(server.score_inline(&id, expected).await),
            "{id}: writer {k}'s features with every login"
        );
    }
    for k in 0..WRITERS {
        for m in 0..OWN {
            let id = own_id(k, m);
            let expected = saas_derived("growth", 6.0, 5.0, Some(1.0), 0.0, None);
            assert_eq!(
                server.score_of(&id).await,
                server.score_inline(&id, expected).await,
                "{id}"
            );
        }
    }
}

async fn concurrent_writers_lose_nothing_and_count_each_event_once(db: TestDb) {
    let server = db.serve(Served::Saas).await;
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(server.new_client().await);
    }

    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| tokio::spawn(writer(k, client)))
        .collect();
    let mut acks = Vec::new();
    for task in tasks {
        acks.push(task.await.expect("a writer does not panic"));
    }

    for response in acks.iter().flat_map(|a| &a.upserts) {
        assert_all_upserted(response);
    }
    let signals: Vec<&pb::RecordSignalsResponse> = acks.iter().flat_map(|a| &a.signals).collect();
    for response in &signals {
        assert_eq!(response.errors, []);
    }
    let accepted: u64 = signals.iter().map(|r| r.accepted).sum();
    let duplicates: u64 = signals.iter().map(|r| r.duplicates).sum();
    let unique = SHARED * 5 + WRITERS * OWN * 5;
    let sent = WRITERS * (SHARED * 5 + OWN * 4 + OWN * 3);
    assert_eq!(accepted as usize, unique, "each event id is stored once");
    assert_eq!(
        (accepted + duplicates) as usize,
        sent,
        "each signal is counted once"
    );
    assert_everything_visible(&server).await;

    let server = server.restart(&db, Served::Saas).await;
    assert_everything_visible(&server).await;
    server.stop().await;
}
