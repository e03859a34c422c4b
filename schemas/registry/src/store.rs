//! Postgres storage for subjects, versions, schemas and compatibility levels.
//!
//! Guarantees: one global id per normalized schema, whatever the subject (a unique fingerprint
//! plus `ON CONFLICT DO NOTHING`); ids never change (they are rows, not memory); registrations
//! to one subject are serialised by a transaction-scoped advisory lock, so concurrent
//! registration of one schema yields one version and one id.

use apache_avro::Schema;
use orderflow_schemas::{CompatibilityLevel, compat::Direction};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::error::ApiError;

mod mode;
pub use mode::Mode;
use mode::ensure_writable;

/// A schema as submitted, parsed and normalized.
pub struct ParsedSchema {
    pub schema: Schema,
    /// The registry's canonical text: the parsed schema written back out, so whitespace and key
    /// order never create a second id, while defaults and docs (which matter) still do.
    pub normalized: String,
    fingerprint: Vec<u8>,
}

impl ParsedSchema {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if text.trim().is_empty() {
            return Err(ApiError::InvalidSchema("empty schema".into()));
        }
        let schema = Schema::parse_str(text).map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
        let normalized = serde_json::to_string(&schema).map_err(|e| ApiError::InvalidSchema(e.to_string()))?;
        let fingerprint = Sha256::digest(normalized.as_bytes()).to_vec();
        Ok(ParsedSchema { schema, normalized, fingerprint })
    }
}

/// A subject's version, as the API shows it.
pub struct VersionRow {
    pub subject: String,
    pub version: i32,
    pub schema_id: i32,
    pub schema_text: String,
}

/// Which version a path names.
#[derive(Clone, Copy)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        if raw == "latest" || raw == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match raw.parse::<i32>() {
            Ok(v) if v > 0 => Ok(VersionSpec::Number(v)),
            _ => Err(ApiError::InvalidVersion(raw.to_string())),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    default_level: CompatibilityLevel,
}

/// Serialises writers of one subject until the transaction ends.
async fn lock_subject(tx: &mut Transaction<'_, Postgres>, subject: &str) -> Result<(), ApiError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("orderflow-registry:{subject}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// (version, deleted) rows of a subject, oldest first.
async fn subject_rows(
    tx: &mut Transaction<'_, Postgres>,
    subject: &str,
) -> Result<Vec<sqlx::postgres::PgRow>, ApiError> {
    Ok(sqlx::query("SELECT version, deleted FROM registry_subject_versions WHERE subject = $1 ORDER BY version")
        .bind(subject)
        .fetch_all(&mut **tx)
        .await?)
}

impl Store {
    pub fn new(pool: PgPool, default_level: CompatibilityLevel) -> Self {
        Store { pool, default_level }
    }

    pub async fn ping(&self) -> Result<(), ApiError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Registers `parsed` under `subject` (or returns the id it already has there).
    pub async fn register(&self, subject: &str, parsed: &ParsedSchema) -> Result<i32, ApiError> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;
        let existing: Option<i32> = sqlx::query_scalar(
            "SELECT v.schema_id FROM registry_subject_versions v JOIN registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND NOT v.deleted AND s.fingerprint = $2",
        )
        .bind(subject)
        .bind(&parsed.fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = existing {
            tx.commit().await?;
            return Ok(id);
        }
        ensure_writable(&mut tx, subject).await?;
        let level = self.effective_level_in(&mut tx, subject).await?;
        let previous = live_versions(&mut tx, subject).await?;
        let problems = check_against(level, &parsed.schema, &previous)?;
        if !problems.is_empty() {
            return Err(ApiError::Incompatible { subject: subject.to_string(), details: problems });
        }
        let id = upsert_schema(&mut tx, parsed).await?;
        sqlx::query(
            "INSERT INTO registry_subject_versions (subject, version, schema_id)
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2 FROM registry_subject_versions WHERE subject = $1",
        )
        .bind(subject)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Checks `parsed` against one version, or (None) against the subject under its level.
    pub async fn check(
        &self,
        subject: &str,
        parsed: &ParsedSchema,
        version: Option<VersionSpec>,
    ) -> Result<Vec<String>, ApiError> {
        let mut tx = self.pool.begin().await?;
        let level = self.effective_level_in(&mut tx, subject).await?;
        let previous = match version {
            None => live_versions(&mut tx, subject).await?,
            Some(spec) => {
                let row = self.version(subject, spec, false).await?;
                vec![(row.version, row.schema_text)]
            }
        };
        tx.commit().await?;
        check_against(level, &parsed.schema, &previous)
    }

    /// Finds `parsed` among a subject's versions.
    pub async fn lookup(
        &self,
        subject: &str,
        parsed: &ParsedSchema,
        include_deleted: bool,
    ) -> Result<VersionRow, ApiError> {
        self.ensure_subject(subject, include_deleted).await?;
        let row = sqlx::query(
            "SELECT v.version, v.schema_id, s.schema_text FROM registry_subject_versions v
             JOIN registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND s.fingerprint = $2 AND ($3 OR NOT v.deleted)
             ORDER BY v.deleted, v.version DESC LIMIT 1",
        )
        .bind(subject)
        .bind(&parsed.fingerprint)
        .bind(include_deleted)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(ApiError::SchemaNotFound)?;
        Ok(VersionRow {
            subject: subject.to_string(),
            version: row.get(0),
            schema_id: row.get(1),
            schema_text: row.get(2),
        })
    }

    pub async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>, ApiError> {
        Ok(sqlx::query_scalar(
            "SELECT subject FROM registry_subject_versions GROUP BY subject
             HAVING $1 OR bool_or(NOT deleted) ORDER BY subject",
        )
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn ensure_subject(&self, subject: &str, include_deleted: bool) -> Result<(), ApiError> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM registry_subject_versions WHERE subject = $1 AND ($2 OR NOT deleted))",
        )
        .bind(subject)
        .bind(include_deleted)
        .fetch_one(&self.pool)
        .await?;
        if exists { Ok(()) } else { Err(ApiError::SubjectNotFound(subject.to_string())) }
    }

    pub async fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<i32>, ApiError> {
        let versions: Vec<i32> = sqlx::query_scalar(
            "SELECT version FROM registry_subject_versions WHERE subject = $1 AND ($2 OR NOT deleted) ORDER BY version",
        )
        .bind(subject)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?;
        if versions.is_empty() {
            return Err(ApiError::SubjectNotFound(subject.to_string()));
        }
        Ok(versions)
    }

    pub async fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<VersionRow, ApiError> {
        self.ensure_subject(subject, include_deleted).await?;
        let number = match spec {
            VersionSpec::Number(n) => Some(n),
            VersionSpec::Latest => None,
        };
        let row = sqlx::query(
            "SELECT v.version, v.schema_id, s.schema_text FROM registry_subject_versions v
             JOIN registry_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND ($2::int IS NULL OR v.version = $2) AND ($3 OR NOT v.deleted)
             ORDER BY v.version DESC LIMIT 1",
        )
        .bind(subject)
        .bind(number)
        .bind(include_deleted)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| ApiError::VersionNotFound(number.map_or("latest".into(), |n| n.to_string())))?;
        Ok(VersionRow {
            subject: subject.to_string(),
            version: row.get(0),
            schema_id: row.get(1),
            schema_text: row.get(2),
        })
    }

    pub async fn schema_by_id(&self, id: i32) -> Result<String, ApiError> {
        sqlx::query_scalar("SELECT schema_text FROM registry_schemas WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(ApiError::SchemaNotFound)
    }

    pub async fn usages_of_schema(&self, id: i32, include_deleted: bool) -> Result<Vec<(String, i32)>, ApiError> {
        self.schema_by_id(id).await?;
        let rows = sqlx::query(
            "SELECT subject, version FROM registry_subject_versions WHERE schema_id = $1 AND ($2 OR NOT deleted)
             ORDER BY subject, version",
        )
        .bind(id)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Soft-deletes a subject's live versions, or (permanent) removes a soft-deleted subject.
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<i32>, ApiError> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;
        ensure_writable(&mut tx, subject).await?;
        let rows = subject_rows(&mut tx, subject).await?;
        if rows.is_empty() {
            return Err(ApiError::SubjectNotFound(subject.to_string()));
        }
        let live: Vec<i32> = rows.iter().filter(|r| !r.get::<bool, _>(1)).map(|r| r.get(0)).collect();
        let versions = if permanent {
            if !live.is_empty() {
                return Err(ApiError::SubjectNotSoftDeleted(subject.to_string()));
            }
            sqlx::query("DELETE FROM registry_subject_versions WHERE subject = $1")
                .bind(subject)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM registry_config WHERE subject = $1").bind(subject).execute(&mut *tx).await?;
            rows.iter().map(|r| r.get(0)).collect()
        } else {
            if live.is_empty() {
                return Err(ApiError::SubjectSoftDeleted(subject.to_string()));
            }
            sqlx::query("UPDATE registry_subject_versions SET deleted = true WHERE subject = $1")
                .bind(subject)
                .execute(&mut *tx)
                .await?;
            live
        };
        tx.commit().await?;
        Ok(versions)
    }

    /// Soft-deletes one version, or (permanent) removes a soft-deleted one.
    pub async fn delete_version(&self, subject: &str, spec: VersionSpec, permanent: bool) -> Result<i32, ApiError> {
        let mut tx = self.pool.begin().await?;
        lock_subject(&mut tx, subject).await?;
        ensure_writable(&mut tx, subject).await?;
        let rows = subject_rows(&mut tx, subject).await?;
        if rows.is_empty() || (!permanent && rows.iter().all(|r| r.get::<bool, _>(1))) {
            return Err(ApiError::SubjectNotFound(subject.to_string()));
        }
        let target = match spec {
            VersionSpec::Number(n) => rows.iter().find(|r| r.get::<i32, _>(0) == n),
            // "latest" means the newest live version for a soft delete, the newest of all for a hard one.
            VersionSpec::Latest => rows.iter().rev().find(|r| permanent || !r.get::<bool, _>(1)),
        };
        let Some(target) = target else {
            return Err(ApiError::VersionNotFound(match spec {
                VersionSpec::Number(n) => n.to_string(),
                VersionSpec::Latest => "latest".into(),
            }));
        };
        let (version, deleted): (i32, bool) = (target.get(0), target.get(1));
        match (permanent, deleted) {
            (false, true) => return Err(ApiError::VersionSoftDeleted(subject.to_string(), version)),
            (true, false) => return Err(ApiError::VersionNotSoftDeleted(subject.to_string(), version)),
            (false, false) => {
                sqlx::query("UPDATE registry_subject_versions SET deleted = true WHERE subject = $1 AND version = $2")
                    .bind(subject)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
            (true, true) => {
                sqlx::query("DELETE FROM registry_subject_versions WHERE subject = $1 AND version = $2")
                    .bind(subject)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(version)
    }

    /// The level set for a subject (`None`: the global one), if any.
    pub async fn level(&self, subject: Option<&str>) -> Result<Option<CompatibilityLevel>, ApiError> {
        let raw: Option<String> = sqlx::query_scalar("SELECT compatibility FROM registry_config WHERE subject = $1")
            .bind(subject.unwrap_or(""))
            .fetch_optional(&self.pool)
            .await?;
        Ok(raw.and_then(|r| r.parse().ok()))
    }

    pub async fn global_level(&self) -> Result<CompatibilityLevel, ApiError> {
        Ok(self.level(None).await?.unwrap_or(self.default_level))
    }

    pub async fn set_level(&self, subject: Option<&str>, level: CompatibilityLevel) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO registry_config (subject, compatibility) VALUES ($1, $2)
             ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
        )
        .bind(subject.unwrap_or(""))
        .bind(level.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a level; returns what it was.
    pub async fn delete_level(&self, subject: Option<&str>) -> Result<Option<CompatibilityLevel>, ApiError> {
        let raw: Option<String> =
            sqlx::query_scalar("DELETE FROM registry_config WHERE subject = $1 RETURNING compatibility")
                .bind(subject.unwrap_or(""))
                .fetch_optional(&self.pool)
                .await?;
        Ok(raw.and_then(|r| r.parse().ok()))
    }

    async fn effective_level_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        subject: &str,
    ) -> Result<CompatibilityLevel, ApiError> {
        let raw: Option<String> = sqlx::query_scalar(
            "SELECT compatibility FROM registry_config WHERE subject IN ($1, '') ORDER BY subject = '' LIMIT 1",
        )
        .bind(subject)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(raw.and_then(|r| r.parse().ok()).unwrap_or(self.default_level))
    }
}

async fn live_versions(tx: &mut Transaction<'_, Postgres>, subject: &str) -> Result<Vec<(i32, String)>, ApiError> {
    let rows = sqlx::query(
        "SELECT v.version, s.schema_text FROM registry_subject_versions v JOIN registry_schemas s ON s.id = v.schema_id
         WHERE v.subject = $1 AND NOT v.deleted ORDER BY v.version",
    )
    .bind(subject)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn upsert_schema(tx: &mut Transaction<'_, Postgres>, parsed: &ParsedSchema) -> Result<i32, ApiError> {
    let inserted: Option<i32> = sqlx::query_scalar(
        "INSERT INTO registry_schemas (fingerprint, schema_text) VALUES ($1, $2)
         ON CONFLICT (fingerprint) DO NOTHING RETURNING id",
    )
    .bind(&parsed.fingerprint)
    .bind(&parsed.normalized)
    .fetch_optional(&mut **tx)
    .await?;
    match inserted {
        Some(id) => Ok(id),
        None => Ok(sqlx::query_scalar("SELECT id FROM registry_schemas WHERE fingerprint = $1")
            .bind(&parsed.fingerprint)
            .fetch_one(&mut **tx)
            .await?),
    }
}

/// Readable problems of `new` against stored versions (oldest first) at `level`.
fn check_against(level: CompatibilityLevel, new: &Schema, previous: &[(i32, String)]) -> Result<Vec<String>, ApiError> {
    let parsed: Vec<Schema> = previous
        .iter()
        .map(|(_, text)| {
            Schema::parse_str(text).map_err(|e| ApiError::Store(anyhow::anyhow!("stored schema no longer parses: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let refs: Vec<&Schema> = parsed.iter().collect();
    Ok(level
        .check(new, &refs)
        .into_iter()
        .map(|found| {
            let version = previous[found.position - 1].0;
            let direction = match found.direction {
                Direction::NewReadsOld => format!("the new schema cannot read data written with version {version}"),
                Direction::OldReadsNew => format!("version {version} cannot read data written with the new schema"),
            };
            format!(
                "{{errorType:'{}', description:'{direction}: {}: {}', additionalInfo:'{level}'}}",
                found.problem.rule.as_str(),
                found.problem.path,
                found.problem.detail
            )
        })
        .collect())
}
