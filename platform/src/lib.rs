//! Plumbing every orderflow service shares, so each binary stays a thin `main`:
//! one way to stop ([`shutdown`]), one way to log and trace ([`telemetry`], [`trace`]), one way
//! to verify a bearer token ([`jwt`]) or a password ([`users_file`]) and to read a secret
//! ([`secret`]).

pub mod http_metrics;
pub mod jwt;
pub mod kafka;
pub mod metrics;
pub mod migrations;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod users_file;
