//! The `HealthScoreService` implementation: thin adapters that check the
//! request, call the scoring library or the engine, and convert the answer.

use std::{future::Future, sync::Arc};

use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, Span, field};

use super::{
    RequestError, convert,
    pb::{self, health_score_service_server::HealthScoreService},
};
use crate::{
    engine::{Engine, EngineError, EngineSlot, GroupBy, SignalOutcome, now_micros},
    observe::Metrics,
    scoring::Model,
};

/// Batches at least this large are scored on the blocking pool, so a big
/// request never stalls the runtime threads serving small ones.
const BLOCKING_BATCH: usize = 512;

/// Signals buffered from a stream before they are committed together.
const SIGNAL_CHUNK: usize = 1000;

/// Rejected signals listed one by one in a RecordSignals answer; the rest
/// are only counted.
pub const MAX_REPORTED_SIGNAL_ERRORS: usize = 1000;

/// Per-request limits of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most accounts or ids in one batch call.
    pub max_batch: usize,
    /// Most signals in one RecordSignals stream.
    pub max_stream_signals: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 10_000,
            max_stream_signals: 1_000_000,
        }
    }
}

/// The scoring service over one engine, which arrives once the account
/// store is loaded; until then the account RPCs answer UNAVAILABLE, while
/// ScoreAccounts and GetModelInfo already serve the model.
#[derive(Debug, Clone)]
pub struct HealthScoreApi {
    engine: Arc<EngineSlot>,
    initial_model: Arc<Model>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl HealthScoreApi {
    /// A service over the engine `engine` will hold, serving `model` until
    /// then, with `limits`, recording what it gives out in `metrics`.
    pub fn new(
        engine: Arc<EngineSlot>,
        model: Arc<Model>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            engine,
            initial_model: model,
            limits,
            metrics,
        }
    }

    /// A tonic server for this service.
    pub fn into_server(self) -> pb::health_score_service_server::HealthScoreServiceServer<Self> {
        pb::health_score_service_server::HealthScoreServiceServer::new(self)
    }

    /// The model now serving; a request keeps the one it started with.
    fn model(&self) -> Arc<Model> {
        match self.engine.get() {
            Some(engine) => engine.model(),
            None => Arc::clone(&self.initial_model),
        }
    }

    /// The engine, once the account store is loaded.
    fn engine(&self) -> Result<&Arc<Engine>, RequestError> {
        self.engine.get().ok_or(RequestError::Starting)
    }

    fn check_batch(&self, field: &'static str, count: usize) -> Result<(), RequestError> {
        if count == 0 {
            return Err(RequestError::EmptyBatch { field });
        }
        if count > self.limits.max_batch {
            return Err(RequestError::BatchTooLarge {
                field,
                count,
                limit: self.limits.max_batch,
            });
        }
        Ok(())
    }

    async fn score(
        &self,
        request: pb::ScoreAccountsRequest,
    ) -> Result<pb::ScoreAccountsResponse, RequestError> {
        self.check_batch("accounts", request.accounts.len())?;
        let model = self.model();
        if request.accounts.len() < BLOCKING_BATCH {
            return Ok(convert::score_batch(&model, &request));
        }
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

    async fn upsert(
        &self,
        request: pb::UpsertAccountsRequest,
    ) -> Result<pb::UpsertAccountsResponse, RequestError> {
        self.check_batch("accounts", request.accounts.len())?;
        let records = request
            .accounts
            .iter()
            .map(convert::account_record)
            .collect();
        let results = self
            .engine()?
            .upsert_accounts(records)
            .await
            .map_err(|e| self.logged(e))?;
        Ok(pb::UpsertAccountsResponse {
            upserted: results.iter().filter(|r| r.is_ok()).count() as u32,
            results: request
                .accounts
                .iter()
                .zip(&results)
                .map(|(a, r)| convert::upsert_result(&a.account_id, r))
                .collect(),
        })
    }

    async fn record(
        &self,
        mut stream: Streaming<pb::RecordSignalsRequest>,
    ) -> Result<pb::RecordSignalsResponse, Status> {
        let mut response = pb::RecordSignalsResponse::default();
        let mut buffer: Vec<pb::Signal> = Vec::with_capacity(SIGNAL_CHUNK);
        let mut first_index = 0u64;
        let limit = self.limits.max_stream_signals;
        loop {
            let message = stream.message().await?;
            let done = message.is_none();
            let mut over_limit = false;
            if let Some(message) = message {
                let room = limit - (first_index + buffer.len() as u64);
                if message.signals.len() as u64 > room {
                    // Commit what came before, so the error can say exactly
                    // how much of the stream is stored.
                    over_limit = true;
                } else {
                    buffer.extend(message.signals);
                }
            }
            if buffer.len() >= SIGNAL_CHUNK || ((done || over_limit) && !buffer.is_empty()) {
                let inputs: Vec<_> = buffer.iter().map(convert::signal_input).collect();
                let outcome = self
                    .engine()?
                    .record_signals(&inputs)
                    .await
                    .map_err(|e| Status::from(RequestError::from(self.logged(e))))?;
                merge(&mut response, &outcome, &buffer, first_index);
                first_index += buffer.len() as u64;
                buffer.clear();
            }
            if over_limit {
                return Err(Status::resource_exhausted(format!(
                    "the stream holds more than {limit} signals (--max-stream-signals); the first \
                     {first_index} were processed and the accepted ones committed; send the rest \
                     in a new stream (event ids make a resend safe)"
                )));
            }
            if done {
                return Ok(response);
            }
        }
    }

    /// Logs a store failure with its cause before it is hidden behind a
    /// generic status, and counts it.
    fn logged(&self, error: EngineError) -> EngineError {
        if let EngineError::Store(store) = &error {
            self.metrics.store_error();
            tracing::error!(error = %store, cause = ?store, "store operation failed");
        }
        error
    }

    fn observe_score(&self, score: &pb::AccountScore) {
        if score.error.is_none()
            && let Some(band) = convert::band_of(score.band)
        {
            self.metrics.score_given(score.health_score, band);
        }
    }
}

fn merge(
    response: &mut pb::RecordSignalsResponse,
    outcome: &SignalOutcome,
    batch: &[pb::Signal],
    first: u64,
) {
    response.accepted += outcome.accepted;
    response.duplicates += outcome.duplicates;
    response.rejected += outcome.rejected.len() as u64;
    let room = MAX_REPORTED_SIGNAL_ERRORS.saturating_sub(response.errors.len());
    response.errors.extend(
        outcome
            .rejected
            .iter()
            .take(room)
            .map(|(i, reason)| convert::signal_error(first + *i as u64, &batch[*i], reason)),
    );
}

/// Runs one RPC inside a span carrying its name and outcome, logging
/// client errors at info and server errors at error.
async fn traced<T>(
    rpc: &'static str,
    size: usize,
    work: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let span = tracing::info_span!("rpc", rpc, size, outcome = field::Empty);
    async move {
        let result = work.await;
        match &result {
            Ok(_) => {
                Span::current().record("outcome", "ok");
                tracing::debug!("done");
            }
            Err(status) => {
                Span::current().record("outcome", field::debug(status.code()));
                if matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown) {
                    tracing::error!(message = status.message(), "failed");
                } else {
                    tracing::info!(message = status.message(), "rejected");
                }
            }
        }
        result.map(Response::new)
    }
    .instrument(span)
    .await
}

#[tonic::async_trait]
impl HealthScoreService for HealthScoreApi {
    async fn score_accounts(
        &self,
        request: Request<pb::ScoreAccountsRequest>,
    ) -> Result<Response<pb::ScoreAccountsResponse>, Status> {
        let request = request.into_inner();
        traced("ScoreAccounts", request.accounts.len(), async move {
            let response = self.score(request).await?;
            response.scores.iter().for_each(|s| self.observe_score(s));
            Ok(response)
        })
        .await
    }

    async fn get_model_info(
        &self,
        _request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::GetModelInfoResponse>, Status> {
        traced("GetModelInfo", 0, async {
            Ok(convert::model_info(&self.model()))
        })
        .await
    }

    async fn upsert_accounts(
        &self,
        request: Request<pb::UpsertAccountsRequest>,
    ) -> Result<Response<pb::UpsertAccountsResponse>, Status> {
        let request = request.into_inner();
        traced("UpsertAccounts", request.accounts.len(), async move {
            Ok(self.upsert(request).await?)
        })
        .await
    }

    async fn record_signals(
        &self,
        request: Request<Streaming<pb::RecordSignalsRequest>>,
    ) -> Result<Response<pb::RecordSignalsResponse>, Status> {
        traced("RecordSignals", 0, self.record(request.into_inner())).await
    }

    async fn get_account_health(
        &self,
        request: Request<pb::GetAccountHealthRequest>,
    ) -> Result<Response<pb::GetAccountHealthResponse>, Status> {
        let id = request.into_inner().account_id;
        traced("GetAccountHealth", 1, async move {
            if id.is_empty() {
                return Err(RequestError::InvalidArgument("account_id is empty".into()).into());
            }
            let health = self
                .engine()?
                .account_health(&id)
                .await
                .map_err(|e| RequestError::from(self.logged(e)))?;
            let response = convert::account_health(&id, &health);
            if let Some(score) = &response.score {
                self.observe_score(score);
            }
            Ok(response)
        })
        .await
    }

    async fn get_priority(
        &self,
        request: Request<pb::GetPriorityRequest>,
    ) -> Result<Response<pb::GetPriorityResponse>, Status> {
        let request = request.into_inner();
        traced("GetPriority", request.account_ids.len(), async move {
            self.check_batch("account_ids", request.account_ids.len())?;
            let intent = request.context.is_some_and(|c| c.cancellation_intent);
            let (model, answers) = self.engine()?.priorities(&request.account_ids, intent);
            Ok(pb::GetPriorityResponse {
                priorities: answers
                    .iter()
                    .map(|a| convert::priority(&model, a))
                    .collect(),
            })
        })
        .await
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let request = request.into_inner();
        traced("ListAccounts", 1, async move {
            let query = convert::list_query(&request).map_err(RequestError::InvalidArgument)?;
            let page = self.engine()?.list(&query).map_err(RequestError::from)?;
            Ok(pb::ListAccountsResponse {
                accounts: page
                    .accounts
                    .iter()
                    .map(|a| convert::listed(&page.model, a))
                    .collect(),
                next_page_token: page.next_page_token,
                total_matching: page.total_matching as u64,
            })
        })
        .await
    }

    async fn summarize_segments(
        &self,
        request: Request<pb::SummarizeSegmentsRequest>,
    ) -> Result<Response<pb::SummarizeSegmentsResponse>, Status> {
        let request = request.into_inner();
        traced("SummarizeSegments", 1, async move {
            let by = match pb::GroupBy::try_from(request.group_by) {
                Ok(pb::GroupBy::Unspecified | pb::GroupBy::Segment) => GroupBy::Segment,
                Ok(pb::GroupBy::Region) => GroupBy::Region,
                Err(_) => {
                    return Err(RequestError::InvalidArgument(format!(
                        "group_by: {} is not a grouping",
                        request.group_by
                    ))
                    .into());
                }
            };
            let since = match &request.since {
                None => None,
                Some(t) => Some(convert::micros(t).ok_or_else(|| {
                    RequestError::InvalidArgument("since is not a valid timestamp".into())
                })?),
            };
            let rows = self
                .engine()?
                .summarize(by, since)
                .await
                .map_err(|e| RequestError::from(self.logged(e)))?;
            Ok(pb::SummarizeSegmentsResponse {
                segments: rows.iter().map(convert::segment).collect(),
            })
        })
        .await
    }

    async fn get_health_history(
        &self,
        request: Request<pb::GetHealthHistoryRequest>,
    ) -> Result<Response<pb::GetHealthHistoryResponse>, Status> {
        let request = request.into_inner();
        traced("GetHealthHistory", 1, async move {
            if request.account_id.is_empty() {
                return Err(RequestError::InvalidArgument("account_id is empty".into()).into());
            }
            let bound = |t: &Option<prost_types::Timestamp>, field: &str, default: i64| match t {
                None => Ok(default),
                Some(t) => convert::micros(t).ok_or_else(|| {
                    RequestError::InvalidArgument(format!("{field} is not a valid timestamp"))
                }),
            };
            let from = bound(&request.from, "from", i64::MIN)?;
            let to = bound(&request.to, "to", now_micros().saturating_add(1))?;
            let limit = match request.limit {
                0 => 1000,
                n => n.min(10_000),
            };
            let rows = self
                .engine()?
                .history(&request.account_id, from, to, limit)
                .await
                .map_err(|e| RequestError::from(self.logged(e)))?;
            Ok(pb::GetHealthHistoryResponse {
                points: rows.iter().map(convert::health_point).collect(),
            })
        })
        .await
    }
}
