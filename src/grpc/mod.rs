//! The `healthscore.v1` gRPC surface: generated types, the service adapter,
//! proto ↔ domain conversions and the one mapping of request errors to
//! `tonic::Status`. Nothing outside this module knows tonic types.

mod admin;
mod convert;
mod gate;
mod service;
mod status;

pub use admin::ModelAdminApi;
pub use gate::GateLayer;
pub use service::{HealthScoreApi, Limits, MAX_REPORTED_SIGNAL_ERRORS};
pub use status::RequestError;

/// Code generated from `proto/healthscore/v1/health_score.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("healthscore.v1");

    /// The encoded descriptors of the healthscore protos, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("healthscore_descriptor");
}
