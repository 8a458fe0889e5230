//! The `HealthScoreService` implementation: thin adapters that check the
//! request, call the scoring library and convert the answer.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, field};

use super::{
    RequestError, convert,
    pb::{self, health_score_service_server::HealthScoreService},
};
use crate::scoring::Model;

/// Batches at least this large are scored on the blocking pool, so a big
/// request never stalls the runtime threads serving small ones.
const BLOCKING_BATCH: usize = 512;

/// The scoring service over one loaded model.
#[derive(Debug, Clone)]
pub struct HealthScoreApi {
    model: Arc<Model>,
    max_batch: usize,
}

impl HealthScoreApi {
    /// A service scoring with `model`, accepting at most `max_batch`
    /// accounts per ScoreAccounts call.
    pub fn new(model: Arc<Model>, max_batch: usize) -> Self {
        Self { model, max_batch }
    }

    /// A tonic server for this service.
    pub fn into_server(self) -> pb::health_score_service_server::HealthScoreServiceServer<Self> {
        pb::health_score_service_server::HealthScoreServiceServer::new(self)
    }

    async fn score(
        &self,
        request: pb::ScoreAccountsRequest,
    ) -> Result<pb::ScoreAccountsResponse, RequestError> {
        let count = request.accounts.len();
        if count == 0 {
            return Err(RequestError::EmptyBatch);
        }
        if count > self.max_batch {
            return Err(RequestError::BatchTooLarge {
                count,
                limit: self.max_batch,
            });
        }
        if count < BLOCKING_BATCH {
            return Ok(convert::score_batch(&self.model, &request));
        }
        let model = Arc::clone(&self.model);
        let span = Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| convert::score_batch(&model, &request))
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "scoring task failed");
            RequestError::Internal
        })
    }
}

#[tonic::async_trait]
impl HealthScoreService for HealthScoreApi {
    async fn score_accounts(
        &self,
        request: Request<pb::ScoreAccountsRequest>,
    ) -> Result<Response<pb::ScoreAccountsResponse>, Status> {
        let request = request.into_inner();
        let span = tracing::info_span!(
            "rpc",
            rpc = "ScoreAccounts",
            batch_size = request.accounts.len(),
            account_errors = field::Empty,
            outcome = field::Empty,
        );
        async move {
            match self.score(request).await {
                Ok(response) => {
                    let errors = response.scores.iter().filter(|s| s.error.is_some()).count();
                    Span::current()
                        .record("account_errors", errors)
                        .record("outcome", "ok");
                    tracing::debug!("scored");
                    Ok(Response::new(response))
                }
                Err(error) => {
                    Span::current().record("outcome", field::display(&error));
                    tracing::info!(%error, "rejected");
                    Err(error.into())
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn get_model_info(
        &self,
        _request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::GetModelInfoResponse>, Status> {
        let span = tracing::info_span!("rpc", rpc = "GetModelInfo", outcome = "ok");
        let _entered = span.enter();
        Ok(Response::new(convert::model_info(&self.model)))
    }
}
