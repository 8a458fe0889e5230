//! The single mapping from request-level errors to gRPC status codes.
//! Per-account problems are not here: they travel inside the response as
//! `AccountError`, so one bad account never fails a batch.

use thiserror::Error;
use tonic::Status;

/// A request that cannot be served as a whole.
#[derive(Debug, Error)]
pub enum RequestError {
    /// A batch with no accounts.
    #[error("`accounts` is empty; send at least one account")]
    EmptyBatch,
    /// A batch above the server's limit.
    #[error("{count} accounts exceed the batch limit of {limit}; split the request")]
    BatchTooLarge {
        /// Accounts sent.
        count: usize,
        /// The server's `--max-batch`.
        limit: usize,
    },
    /// The scoring task died; the detail is logged, not sent.
    #[error("internal error while scoring")]
    Internal,
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::EmptyBatch | RequestError::BatchTooLarge { .. } => {
                Status::invalid_argument(error.to_string())
            }
            RequestError::Internal => Status::internal(error.to_string()),
        }
    }
}
