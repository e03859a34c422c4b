//! Modes: READONLY freezes a subject's (or, without its own, every subject's) registrations and
//! deletions; READWRITE (no row) does not.

use sqlx::{Postgres, Transaction};

use super::Store;
use crate::error::ApiError;

impl Store {
    /// The mode set for a subject (`None`: the global one), if any.
    pub async fn mode(&self, subject: Option<&str>) -> Result<Option<Mode>, ApiError> {
        let raw: Option<String> = sqlx::query_scalar("SELECT mode FROM registry_mode WHERE subject = $1")
            .bind(subject.unwrap_or(""))
            .fetch_optional(&self.pool)
            .await?;
        Ok(raw.and_then(|r| r.parse().ok()))
    }

    pub async fn set_mode(&self, subject: Option<&str>, mode: Mode) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO registry_mode (subject, mode) VALUES ($1, $2)
             ON CONFLICT (subject) DO UPDATE SET mode = EXCLUDED.mode",
        )
        .bind(subject.unwrap_or(""))
        .bind(mode.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a mode; returns what it was.
    pub async fn delete_mode(&self, subject: Option<&str>) -> Result<Option<Mode>, ApiError> {
        let raw: Option<String> = sqlx::query_scalar("DELETE FROM registry_mode WHERE subject = $1 RETURNING mode")
            .bind(subject.unwrap_or(""))
            .fetch_optional(&self.pool)
            .await?;
        Ok(raw.and_then(|r| r.parse().ok()))
    }
}

/// READONLY refuses registrations and deletions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    ReadWrite,
    ReadOnly,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReadWrite => "READWRITE",
            Mode::ReadOnly => "READONLY",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = ApiError;

    fn from_str(raw: &str) -> Result<Self, ApiError> {
        match raw.to_ascii_uppercase().as_str() {
            "READWRITE" => Ok(Mode::ReadWrite),
            "READONLY" => Ok(Mode::ReadOnly),
            _ => Err(ApiError::InvalidMode(raw.to_string())),
        }
    }
}

/// Refuses a change to `subject` while it (or, without a mode of its own, the registry) is
/// READONLY.
pub(super) async fn ensure_writable(tx: &mut Transaction<'_, Postgres>, subject: &str) -> Result<(), ApiError> {
    let raw: Option<String> =
        sqlx::query_scalar("SELECT mode FROM registry_mode WHERE subject IN ($1, '') ORDER BY subject = '' LIMIT 1")
            .bind(subject)
            .fetch_optional(&mut **tx)
            .await?;
    match raw.as_deref() {
        Some("READONLY") => Err(ApiError::ReadOnly(subject.to_string())),
        _ => Ok(()),
    }
}
