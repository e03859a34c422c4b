//! The schema pull-request workflow behind `orderflow-schemas check|register`, as functions
//! so tests drive it against a live registry.

use crate::{
    Catalog, CompatibilityLevel,
    compat::Direction,
    registry_client::{RegistryCallError, RegistryClient},
};

/// What a check found: progress lines and failures, each naming the file, field and rule.
#[derive(Debug, Default)]
pub struct Report {
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Checks every version on disk against its earlier versions at `level`, and, with a registry,
/// every version not yet registered against the subject's registered history.
pub async fn check(
    catalog: &Catalog,
    level: CompatibilityLevel,
    registry: Option<&RegistryClient>,
) -> Result<Report, RegistryCallError> {
    let mut report = Report::default();
    for chain in catalog.chains() {
        for (i, new) in chain.iter().enumerate().skip(1) {
            let earlier: Vec<_> = chain[..i].iter().map(|s| &s.schema).collect();
            for found in level.check(&new.schema, &earlier) {
                let old = &chain[found.position - 1];
                let (reader, writer) = match found.direction {
                    Direction::NewReadsOld => (new.version, old.version),
                    Direction::OldReadsNew => (old.version, new.version),
                };
                report.failures.push(format!(
                    "{} ({level}): a consumer on v{reader} cannot read v{writer} data: {}",
                    new.origin, found.problem
                ));
            }
        }
    }
    if let Some(client) = registry {
        for schema in catalog.iter() {
            let subject = schema.subject();
            if let Some(found) = client.lookup(&subject, &schema.text).await? {
                report.notes.push(format!(
                    "{} is registered as {} version {} (id {})",
                    schema.origin, found.subject, found.version, found.id
                ));
                continue;
            }
            let registered = client.versions(&subject).await?;
            if registered.iter().any(|v| *v >= schema.version) {
                report.failures.push(format!(
                    "{}: {subject} already has a version {} that differs from this file; registered versions are \
                     immutable, add {}.v{}.avsc instead",
                    schema.origin,
                    schema.version,
                    schema.event,
                    registered.iter().max().map_or(1, |m| m + 1)
                ));
                continue;
            }
            if registered.is_empty() {
                report.notes.push(format!("{} is new (subject {subject} does not exist yet)", schema.origin));
                continue;
            }
            let answer = client.check_compatibility(&subject, &schema.text).await?;
            if answer.is_compatible {
                report.notes.push(format!("{} is compatible with what {subject} holds", schema.origin));
            } else {
                for message in answer.messages {
                    report.failures.push(format!("{} against the registry: {message}", schema.origin));
                }
            }
        }
    }
    Ok(report)
}

/// Registers every version, oldest first; returns (subject, version, id) per file.
pub async fn register(
    catalog: &Catalog,
    client: &RegistryClient,
) -> Result<Vec<(String, u32, u32)>, RegistryCallError> {
    let mut out = Vec::new();
    for schema in catalog.iter() {
        let id = client.register(&schema.subject(), &schema.text).await?;
        out.push((schema.subject(), schema.version, id));
    }
    Ok(out)
}
