//! Readiness: the port answers at once, but the server reports NOT_SERVING
//! and the account RPCs UNAVAILABLE until every stored account is loaded;
//! ScoreAccounts serves the model meanwhile. PostgreSQL lets the test hold
//! the load back deterministically with a table lock.

use std::time::Duration;

use clap::Parser;
use healthscore::{
    app::{Application, Settings},
    grpc::pb::{self, health_score_service_client::HealthScoreServiceClient},
};
use sqlx::{Connection, Executor, postgres::PgConnection};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{TestDb, assert_all_upserted, profile, telco_customer, upsert_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_until_the_accounts_are_loaded() {
    crate::helpers::on_postgres(not_serving_until_loaded).await;
}

async fn status(health: &mut HealthClient<Channel>) -> ServingStatus {
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers while loading")
        .into_inner()
        .status()
}

async fn not_serving_until_loaded(db: TestDb) {
    let server = db.serve(crate::models::Served::Telco).await;
    let stored = upsert_of("known", profile("smb", "emea", 100.0, ""), telco_customer());
    assert_all_upserted(&server.upsert(vec![stored]).await);
    server.stop().await;

    // Hold the accounts table so the next start cannot read it.
    let mut lock = PgConnection::connect(db.url()).await.unwrap();
    lock.execute("BEGIN").await.unwrap();
    lock.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let mut settings = Settings::parse_from(["healthscore-server", "--listen", "127.0.0.1:0"]);
    settings.database_url = Some(db.url().to_owned());
    settings.data_dir = db.dir().join("data");
    let app = Application::build(settings).await.unwrap();
    let address = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut client = HealthScoreServiceClient::new(channel);

    let while_loading = status(&mut health).await;
    let account = client
        .get_account_health(pb::GetAccountHealthRequest {
            account_id: "known".into(),
        })
        .await
        .unwrap_err();
    let scored = client
        .score_accounts(pb::ScoreAccountsRequest {
            accounts: vec![pb::Account {
                account_id: "inline".into(),
                features: telco_customer(),
            }],
            max_attributions: 1,
        })
        .await;

    assert_eq!(while_loading, ServingStatus::NotServing);
    assert_eq!(account.code(), Code::Unavailable, "{account:?}");
    assert!(account.message().contains("starting"), "{account:?}");
    assert!(
        scored.is_ok(),
        "ScoreAccounts serves while loading: {scored:?}"
    );

    lock.execute("COMMIT").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status(&mut health).await != ServingStatus::Serving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let health_now = client
        .get_account_health(pb::GetAccountHealthRequest {
            account_id: "known".into(),
        })
        .await
        .expect("served once loaded");
    assert!(health_now.into_inner().score.is_some());

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
