//! The single mapping from request-level errors to gRPC status codes.
//! Per-account problems are not here: they travel inside the response as
//! `AccountError`, so one bad account never fails a batch.

use thiserror::Error;
use tonic::Status;

use crate::engine::EngineError;

/// A request that cannot be served as a whole.
#[derive(Debug, Error)]
pub enum RequestError {
    /// A batch with no entries.
    #[error("`{field}` is empty; send at least one")]
    EmptyBatch {
        /// The repeated field that is empty.
        field: &'static str,
    },
    /// A batch above the server's limit.
    #[error("{count} entries in `{field}` exceed the batch limit of {limit}; split the request")]
    BatchTooLarge {
        /// The repeated field that is too long.
        field: &'static str,
        /// Accounts sent.
        count: usize,
        /// The server's `--max-batch`.
        limit: usize,
    },
    /// A field of the request is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    /// The account store is still loading.
    #[error("the server is starting: the account store is loading; retry shortly")]
    Starting,
    /// The scoring task died; the detail is logged, not sent.
    #[error("internal error while scoring")]
    Internal,
    /// An engine operation failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::EmptyBatch { .. }
            | RequestError::BatchTooLarge { .. }
            | RequestError::InvalidArgument(_) => Status::invalid_argument(error.to_string()),
            RequestError::Internal => Status::internal(error.to_string()),
            RequestError::Starting => Status::unavailable(error.to_string()),
            RequestError::Engine(error) => match error {
                EngineError::NotFound { .. } => Status::not_found(error.to_string()),
                EngineError::Unscorable { .. } => Status::failed_precondition(error.to_string()),
                EngineError::InvalidArgument(_) => Status::invalid_argument(error.to_string()),
                EngineError::Incompatible(_) => Status::failed_precondition(error.to_string()),
                // The detail was logged where it happened; clients learn
                // only that storage failed.
                EngineError::Store(_) => {
                    Status::internal("storage error; the write was not stored")
                }
            },
        }
    }
}
