//! End-to-end tests of `healthscore-server`: the real application on an
//! ephemeral loopback port, the shipped Telco model, a real tonic client.

mod catalogue;
mod health;
mod helpers;
mod model_info;
mod score;
mod security;
mod startup;
