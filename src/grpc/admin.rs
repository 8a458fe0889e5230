//! The `ModelAdminService`: reloading the model on request.

use std::sync::{Arc, OnceLock};

use tonic::{Request, Response, Status};

use super::pb::{self, model_admin_service_server::ModelAdminService};
use crate::reload::{ReloadError, Reloader};

/// The admin service over the reloader that appears once the server has
/// loaded its account store.
#[derive(Debug, Clone)]
pub struct ModelAdminApi {
    reloader: Arc<OnceLock<Arc<Reloader>>>,
}

impl ModelAdminApi {
    /// A service reloading through whatever `reloader` will hold.
    pub fn new(reloader: Arc<OnceLock<Arc<Reloader>>>) -> Self {
        Self { reloader }
    }

    /// A tonic server for this service.
    pub fn into_server(self) -> pb::model_admin_service_server::ModelAdminServiceServer<Self> {
        pb::model_admin_service_server::ModelAdminServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl ModelAdminService for ModelAdminApi {
    async fn reload_model(
        &self,
        _request: Request<pb::ReloadModelRequest>,
    ) -> Result<Response<pb::ReloadModelResponse>, Status> {
        let Some(reloader) = self.reloader.get() else {
            return Err(Status::unavailable(
                "the server is starting: the account store is loading; retry shortly",
            ));
        };
        match reloader.reload("ReloadModel").await {
            Ok(done) => Ok(Response::new(pb::ReloadModelResponse {
                model_version: done.version,
                previous_model_version: done.previous_version,
                changed: done.changed,
                accounts_rescored: done.accounts_rescored as u64,
            })),
            Err(error @ (ReloadError::NoModelFile | ReloadError::Refused { .. })) => {
                Err(Status::failed_precondition(error.to_string()))
            }
            Err(ReloadError::Engine(_)) => Err(Status::internal(
                "storage error while re-scoring; the old model keeps serving",
            )),
        }
    }
}
