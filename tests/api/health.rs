//! The standard gRPC health and reflection services, and graceful shutdown.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::helpers::{account, customer_7590_vhveg, spawn_app, test_settings};

const SERVICE: &str = "healthscore.v1.HealthScoreService";

#[tokio::test]
async fn health_check_reports_serving_for_the_server_and_the_scoring_service() {
    let app = spawn_app(test_settings()).await;
    assert!(
        app.address.ip().is_loopback() && app.address.port() != 0,
        "{}",
        app.address
    );
    let mut health = HealthClient::new(app.channel.clone());

    let mut statuses = Vec::new();
    for service in ["", SERVICE] {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        statuses.push(health.check(request).await.unwrap().into_inner().status());
    }

    assert_eq!(statuses, [ServingStatus::Serving, ServingStatus::Serving]);
}

#[tokio::test]
async fn reflection_lists_the_scoring_service() {
    let app = spawn_app(test_settings()).await;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses
        .message()
        .await
        .unwrap()
        .expect("one reflection response");

    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!(
            "expected a list of services, got {:?}",
            response.message_response
        );
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&SERVICE), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
}

#[tokio::test]
async fn server_stops_gracefully_when_shutdown_fires() {
    let app = spawn_app(test_settings()).await;
    let before = app
        .score_one(account("7590-VHVEG", customer_7590_vhveg()))
        .await;
    assert!(before.churn_probability > 0.0);

    app.shutdown
        .send(())
        .expect("the server is still waiting for shutdown");
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.server)
        .await
        .expect("the server stops within 10 s of the shutdown signal");

    stopped
        .expect("the server task did not panic")
        .expect("the server stopped cleanly");
}
