//! Black-box integration tests for the `sluice` binary.
//!
//! Every test starts the real binary (see [`support::Gateway`]) in front of real upstream
//! servers ([`support::TestUpstream`]) on `127.0.0.1`, and checks behaviour over the
//! wire. Tests are grouped by feature, one module each; shared helpers live in
//! `support/`, config fixtures in `fixtures/`.

#![allow(clippy::unwrap_used)]

mod support;

mod access_auth;
mod access_edge;
mod access_jwt;
mod access_limits;
mod access_log;
mod admin;
mod architecture;
mod backends;
mod caching;
mod canary;
mod chaos;
mod compression;
mod config_center;
mod dashboard;
mod deploy;
mod discovery;
mod drain;
mod edge_identity;
mod edge_normalization;
mod edge_secrets;
mod error_pages;
mod errors;
mod gateway_api;
mod gateway_l4;
mod grpc_web;
mod hardening_conn;
mod hardening_framing;
mod kubernetes;
mod kubernetes_tls;
mod l4;
mod lifecycle;
mod load_balancing;
mod log_sinks;
mod mirror;
mod monitoring;
mod protocols;
mod quickstart;
mod refused_config;
mod reload_state;
mod resilience;
mod response_limits;
mod rollout;
mod rollout_replicas;
mod routing;
mod schema;
mod seam;
mod timeouts;
mod tracing;
mod transforms;
mod upstream_tls;
mod validate;
