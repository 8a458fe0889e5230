//! Closing the server to those with no business there, and keeping it up
//! under pressure: bearer tokens with scopes, TLS with client certificates,
//! load shedding, client deadlines, and the Prometheus metrics that show it.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use healthscore::{
    app::{Application, Settings},
    grpc::pb::{
        self, health_score_service_client::HealthScoreServiceClient,
        model_admin_service_client::ModelAdminServiceClient,
    },
};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{TestApp, account, customer_7590_vhveg, spawn_app, test_settings};

const READER: &str = "reader-secret-0123456789";
const WRITER: &str = "writer-secret-0123456789";
const OPS: &str = "ops-secret-0123456789abc";

fn settings_with_tokens() -> Settings {
    let mut settings = test_settings();
    settings.auth_tokens = Some(format!(
        "reader:read:{READER},writer:write:{WRITER},ops:admin+read:{OPS}"
    ));
    settings
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn score_request() -> pb::ScoreAccountsRequest {
    pb::ScoreAccountsRequest {
        accounts: vec![account("7590-VHVEG", customer_7590_vhveg())],
        max_attributions: 0,
    }
}

async fn score(app: &TestApp, token: Option<&str>) -> Result<(), tonic::Status> {
    app.client
        .clone()
        .score_accounts(with_token(score_request(), token))
        .await
        .map(drop)
}

#[tokio::test]
async fn a_request_without_a_known_token_is_unauthenticated() {
    let app = spawn_app(settings_with_tokens()).await;

    let missing = score(&app, None).await.unwrap_err();
    let unknown = score(&app, Some("not-a-token-of-this-server"))
        .await
        .unwrap_err();
    let mut basic = Request::new(score_request());
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {READER}").parse().unwrap());
    let not_bearer = app.client.clone().score_accounts(basic).await.unwrap_err();

    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(
        missing.message().contains("missing bearer token"),
        "{missing:?}"
    );
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert!(unknown.message().contains("not known"), "{unknown:?}");
    assert_eq!(not_bearer.code(), Code::Unauthenticated);
    assert!(
        not_bearer.message().contains("Bearer <token>"),
        "{not_bearer:?}"
    );
    // The secret is never echoed back.
    assert!(!not_bearer.message().contains(READER));
}

#[tokio::test]
async fn each_token_reaches_only_the_rpcs_of_its_scopes() {
    let app = spawn_app(settings_with_tokens()).await;
    let upsert = || pb::UpsertAccountsRequest {
        accounts: vec![pb::AccountUpsert {
            account_id: "acct-1".into(),
            profile: Some(pb::AccountProfile::default()),
            features: customer_7590_vhveg(),
        }],
    };
    let mut admin = ModelAdminServiceClient::new(app.channel.clone());

    score(&app, Some(READER)).await.expect("read may score");
    score(&app, Some(OPS)).await.expect("ops holds read too");
    let denied = score(&app, Some(WRITER)).await.unwrap_err();
    let reader_writes = app
        .client
        .clone()
        .upsert_accounts(with_token(upsert(), Some(READER)))
        .await
        .unwrap_err();
    let written = app
        .client
        .clone()
        .upsert_accounts(with_token(upsert(), Some(WRITER)))
        .await
        .expect("write may upsert")
        .into_inner();
    let reader_reloads = admin
        .reload_model(with_token(pb::ReloadModelRequest {}, Some(READER)))
        .await
        .unwrap_err();
    let ops_reloads = admin
        .reload_model(with_token(pb::ReloadModelRequest {}, Some(OPS)))
        .await
        .unwrap_err();

    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "token \"writer\" lacks the `read` scope that ScoreAccounts needs"
    );
    assert_eq!(reader_writes.code(), Code::PermissionDenied);
    assert!(
        reader_writes.message().contains("`write`"),
        "{reader_writes:?}"
    );
    assert_eq!(written.upserted, 1);
    assert_eq!(reader_reloads.code(), Code::PermissionDenied);
    // Past authorisation: this server serves its built-in model.
    assert_eq!(ops_reloads.code(), Code::FailedPrecondition);
    assert!(ops_reloads.message().contains("--model"), "{ops_reloads:?}");
}

#[tokio::test]
async fn health_checks_stay_open_when_tokens_are_required() {
    let app = spawn_app(settings_with_tokens()).await;
    let mut health = HealthClient::new(app.channel.clone());

    let status = health
        .check(HealthCheckRequest {
            service: "healthscore.v1.HealthScoreService".into(),
        })
        .await
        .expect("health needs no token")
        .into_inner();

    assert_eq!(
        status.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

#[tokio::test]
async fn a_remote_address_is_served_once_tokens_are_configured() {
    let mut open = test_settings();
    open.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let error = Application::build(open).await.unwrap_err().to_string();
    assert!(error.contains("without authentication"), "{error}");

    let mut guarded = settings_with_tokens();
    guarded.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let dir = tempfile::tempdir().unwrap();
    guarded.data_dir = dir.path().to_owned();
    Application::build(guarded)
        .await
        .expect("tokens make a remote address acceptable");
}

#[tokio::test]
async fn bad_token_settings_stop_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(
        &file,
        "[[tokens]]\nname = \"a\"\nsecret = \"short\"\nscopes = [\"read\"]\n",
    )
    .unwrap();
    let mut from_file = test_settings();
    from_file.data_dir = dir.path().to_owned();
    from_file.auth_tokens_file = Some(file.clone());
    let mut both = from_file.clone();
    both.auth_tokens = Some(format!("x:read:{READER}"));

    let short = Application::build(from_file).await.unwrap_err().to_string();
    let twice = Application::build(both).await.unwrap_err().to_string();

    assert!(short.contains(&file.display().to_string()), "{short}");
    assert!(
        short.contains("token 1 (\"a\"): secret is shorter than 16"),
        "{short}"
    );
    assert!(twice.contains("not both"), "{twice}");
}

/// A CA, a server certificate for `localhost` and a client certificate,
/// written as PEM files into `dir`.
struct Pki {
    ca: String,
    client_cert: String,
    client_key: String,
}

fn make_pki(dir: &std::path::Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |name: &str, purpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("routing-client", ExtendedKeyUsagePurpose::ClientAuth);
    for (name, pem) in [
        ("ca.pem", &ca),
        ("server.pem", &server_cert),
        ("server.key", &server_key),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    Pki {
        ca,
        client_cert,
        client_key,
    }
}

async fn tls_channel(address: SocketAddr, tls: ClientTlsConfig) -> Result<Channel, String> {
    Channel::from_shared(format!("https://localhost:{}", address.port()))
        .unwrap()
        .tls_config(tls.domain_name("localhost"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn tls_with_client_certificates_admits_only_certified_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut settings = Settings::parse_from([
        "healthscore-server",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        dir.path().join("server.pem").to_str().unwrap(),
        "--tls-key",
        dir.path().join("server.key").to_str().unwrap(),
        "--tls-client-ca",
        dir.path().join("ca.pem").to_str().unwrap(),
    ]);
    settings.data_dir = dir.path().join("data");
    let app = Application::build(settings).await.unwrap();
    let address = app.local_addr();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca));

    let certified = tls_channel(
        address,
        trust
            .clone()
            .identity(Identity::from_pem(&pki.client_cert, &pki.client_key)),
    )
    .await
    .expect("a client with a certificate from the CA connects");
    let scored = HealthScoreServiceClient::new(certified)
        .score_accounts(score_request())
        .await
        .expect("ScoreAccounts over mutual TLS")
        .into_inner();
    let anonymous = match tls_channel(address, trust).await {
        Err(error) => Err(error),
        Ok(channel) => HealthScoreServiceClient::new(channel)
            .score_accounts(score_request())
            .await
            .map(drop)
            .map_err(|s| format!("{s:?}")),
    };
    let plain = match Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
    {
        Err(error) => Err(format!("{error:?}")),
        Ok(channel) => HealthScoreServiceClient::new(channel)
            .score_accounts(score_request())
            .await
            .map(drop)
            .map_err(|s| format!("{s:?}")),
    };

    assert_eq!(scored.scores.len(), 1);
    assert!(anonymous.is_err(), "a client without a certificate got in");
    assert!(plain.is_err(), "a plaintext client got in");
}

#[tokio::test]
async fn beyond_the_concurrency_limit_requests_are_shed_and_health_still_answers() {
    let mut settings = test_settings();
    settings.max_concurrent_requests = 1;
    let app = spawn_app(settings).await;
    // An open RecordSignals stream holds the only slot.
    let (hold, held) = tokio::sync::mpsc::channel::<pb::RecordSignalsRequest>(1);
    let mut streamer = app.client.clone();
    let stream = tokio::spawn(async move {
        streamer
            .record_signals(tokio_stream::wrappers::ReceiverStream::new(held))
            .await
    });
    let mut shed = None;
    for _ in 0..200 {
        match score(&app, None).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                shed = Some(status);
                break;
            }
            // The stream has not reached the server yet.
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let shed = shed.expect("a second request is shed while the slot is held");
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest::default())
        .await;

    assert!(shed.message().contains("limit of 1 concurrent"), "{shed:?}");
    assert!(health.is_ok(), "health is never shed: {health:?}");

    drop(hold);
    let answer = stream.await.unwrap().expect("the held stream completes");
    assert_eq!(answer.into_inner().accepted, 0);
    score(&app, None)
        .await
        .expect("the slot is free again once the stream ends");
}

#[tokio::test]
async fn a_client_deadline_ends_the_call_and_frees_its_slot() {
    let mut settings = test_settings();
    settings.max_concurrent_requests = 1;
    let app = spawn_app(settings).await;
    let (_hold, held) = tokio::sync::mpsc::channel::<pb::RecordSignalsRequest>(1);
    let mut request = Request::new(tokio_stream::wrappers::ReceiverStream::new(held));
    request.set_timeout(Duration::from_millis(300));

    let started = std::time::Instant::now();
    let status = app
        .client
        .clone()
        .record_signals(request)
        .await
        .expect_err("the deadline passes while the stream stays open");

    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    score(&app, None)
        .await
        .expect("the expired call no longer holds the slot");
}

async fn http_get(address: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn metrics_count_requests_by_method_and_code_and_show_the_model() {
    let mut settings = settings_with_tokens();
    settings.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let app = spawn_app(settings).await;
    let metrics = app.metrics_address.expect("metrics are served");

    score(&app, Some(READER)).await.unwrap();
    score(&app, Some(READER)).await.unwrap();
    score(&app, None).await.unwrap_err();
    score(&app, Some(WRITER)).await.unwrap_err();
    let response = http_get(metrics, "/metrics").await;
    let version = app
        .client
        .clone()
        .get_model_info(with_token(pb::GetModelInfoRequest {}, Some(READER)))
        .await
        .unwrap()
        .into_inner()
        .model_version;

    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for line in [
        "healthscore_rpc_requests_total{rpc=\"ScoreAccounts\",code=\"OK\"} 2".to_owned(),
        "healthscore_rpc_requests_total{rpc=\"ScoreAccounts\",code=\"UNAUTHENTICATED\"} 1"
            .to_owned(),
        "healthscore_rpc_requests_total{rpc=\"ScoreAccounts\",code=\"PERMISSION_DENIED\"} 1"
            .to_owned(),
        "healthscore_rpc_duration_seconds_count{rpc=\"ScoreAccounts\"} 4".to_owned(),
        format!("healthscore_model_info{{model_version=\"{version}\"}} 1"),
        "healthscore_health_score_given_count 2".to_owned(),
        "healthscore_shed_requests_total 0".to_owned(),
        "healthscore_stored_accounts{band=\"AT_RISK\"} 0".to_owned(),
    ] {
        assert!(response.contains(&line), "{line} missing from\n{response}");
    }
    assert!(!response.contains(READER), "a secret leaked into metrics");
    assert!(
        http_get(metrics, "/other")
            .await
            .starts_with("HTTP/1.1 404")
    );
}

#[tokio::test]
async fn a_stream_over_the_signal_limit_is_cut_after_committing_what_came_before() {
    let mut settings = test_settings();
    settings.max_stream_signals = 5;
    let app = spawn_app(settings).await;
    let upserted = app
        .client
        .clone()
        .upsert_accounts(pb::UpsertAccountsRequest {
            accounts: vec![pb::AccountUpsert {
                account_id: "acct-1".into(),
                profile: Some(pb::AccountProfile::default()),
                features: customer_7590_vhveg(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upserted.upserted, 1);
    let now = chrono::Utc::now().timestamp();
    let batch = |from: usize, n: usize| pb::RecordSignalsRequest {
        signals: (from..from + n)
            .map(|i| pb::Signal {
                event_id: format!("e{i}"),
                account_id: "acct-1".into(),
                kind: pb::SignalKind::Login as i32,
                value: 1.0,
                occurred_at: Some(prost_types::Timestamp {
                    seconds: now - 60,
                    nanos: 0,
                }),
            })
            .collect(),
    };

    let cut = app
        .client
        .clone()
        .record_signals(tokio_stream::iter([batch(0, 3), batch(3, 4)]))
        .await
        .unwrap_err();
    let resent = app
        .client
        .clone()
        .record_signals(tokio_stream::iter([batch(0, 5)]))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(cut.code(), Code::ResourceExhausted, "{cut:?}");
    assert!(
        cut.message().contains("more than 5 signals")
            && cut.message().contains("the first 3 were processed"),
        "{cut:?}"
    );
    // The three before the cut were committed; the rest were not.
    assert_eq!((resent.duplicates, resent.accepted), (3, 2));
}
