//! The schema catalog: one `.avsc` file per event type and version, laid out as
//! `avro/<topic>/<Event>.v<N>.avsc` so a reviewer sees an event's versions side by side.
//!
//! Loading checks the layout itself: the file name matches the record's name and namespace,
//! versions run 1..N without gaps, and every file is a valid Avro schema.

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
    sync::LazyLock,
};

use apache_avro::Schema;

use crate::NAMESPACE;

include!(concat!(env!("OUT_DIR"), "/embedded_schemas.rs"));

/// One version of one event type.
#[derive(Clone)]
pub struct EventSchema {
    pub topic: String,
    /// Unqualified record name, e.g. `OrderPlaced`; also the `event_type` header.
    pub event: String,
    pub version: u32,
    /// Where it came from: a path on disk or the embedded file name.
    pub origin: String,
    /// The file's text, as registered.
    pub text: String,
    pub schema: Schema,
    /// `<subject>#v<version>`: identifies this writer schema in the codec's caches without
    /// building a string per record.
    pub(crate) writer_key: String,
}

impl fmt::Debug for EventSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}.v{}", self.topic, self.event, self.version)
    }
}

impl EventSchema {
    /// Fully qualified record name, e.g. `io.orderflow.events.OrderPlaced`.
    pub fn full_name(&self) -> String {
        format!("{NAMESPACE}.{}", self.event)
    }

    /// Registry subject under TopicRecordNameStrategy: `<topic>-<full record name>`.
    pub fn subject(&self) -> String {
        subject_for(&self.topic, &self.event)
    }

    /// File name this version must have.
    pub fn file_name(&self) -> String {
        format!("{}.v{}.avsc", self.event, self.version)
    }
}

/// TopicRecordNameStrategy subject for an event type on a topic.
pub fn subject_for(topic: &str, event: &str) -> String {
    format!("{topic}-{NAMESPACE}.{event}")
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: file name must be <Event>.v<N>.avsc (e.g. OrderPlaced.v2.avsc)")]
    BadFileName { path: String },
    #[error("{path}: not a valid Avro schema: {reason}")]
    InvalidSchema { path: String, reason: String },
    #[error("{path}: the record is named {found:?}, the file name says {expected:?}")]
    NameMismatch { path: String, expected: String, found: String },
    #[error("{path}: events must be records in namespace {NAMESPACE:?}")]
    WrongShape { path: String },
    #[error("{topic}/{event}: versions must run 1..N without gaps; found {found:?}")]
    VersionGap { topic: String, event: String, found: Vec<u32> },
    #[error("{event} appears on topics {first:?} and {second:?}; an event type lives on one topic")]
    TwoTopics { event: String, first: String, second: String },
}

/// All versions of all events, ordered by topic, event, version.
#[derive(Debug, Clone)]
pub struct Catalog {
    schemas: Vec<EventSchema>,
}

static EMBEDDED_CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    Catalog::from_files(
        EMBEDDED.iter().map(|(topic, name, text)| (topic.to_string(), name.to_string(), text.to_string())),
    )
    .expect("the schemas embedded at build time are valid (checked by `orderflow-schemas check` in CI)")
});

impl Catalog {
    /// The versions this binary was built with.
    pub fn embedded() -> &'static Catalog {
        &EMBEDDED_CATALOG
    }

    /// Loads `dir/<topic>/<Event>.v<N>.avsc`, e.g. `schemas/avro` in a checkout.
    pub fn load_dir(dir: &Path) -> Result<Catalog, CatalogError> {
        let read = |path: &Path| {
            fs::read_dir(path).map_err(|source| CatalogError::Read { path: path.display().to_string(), source })
        };
        let mut files = Vec::new();
        for topic in read(dir)? {
            let topic = topic.map_err(|source| CatalogError::Read { path: dir.display().to_string(), source })?.path();
            if !topic.is_dir() {
                continue;
            }
            let topic_name = topic.file_name().unwrap_or_default().to_string_lossy().into_owned();
            for file in read(&topic)? {
                let path: PathBuf =
                    file.map_err(|source| CatalogError::Read { path: topic.display().to_string(), source })?.path();
                if path.extension().is_none_or(|e| e != "avsc") {
                    continue;
                }
                let text = fs::read_to_string(&path)
                    .map_err(|source| CatalogError::Read { path: path.display().to_string(), source })?;
                files.push((topic_name.clone(), path.display().to_string(), text));
            }
        }
        Catalog::from_files(files)
    }

    /// Builds a catalog from (topic, path or file name, text) triples.
    pub fn from_files(files: impl IntoIterator<Item = (String, String, String)>) -> Result<Catalog, CatalogError> {
        let mut schemas = Vec::new();
        for (topic, origin, text) in files {
            schemas.push(parse_file(topic, origin, text)?);
        }
        schemas.sort_by(|a, b| (&a.topic, &a.event, a.version).cmp(&(&b.topic, &b.event, b.version)));
        let catalog = Catalog { schemas };
        catalog.check_layout()?;
        Ok(catalog)
    }

    fn check_layout(&self) -> Result<(), CatalogError> {
        let mut topic_of: BTreeMap<&str, &str> = BTreeMap::new();
        for chain in self.chains() {
            let first = &chain[0];
            if let Some(other) = topic_of.insert(&first.event, &first.topic) {
                return Err(CatalogError::TwoTopics {
                    event: first.event.clone(),
                    first: other.to_string(),
                    second: first.topic.clone(),
                });
            }
            let found: Vec<u32> = chain.iter().map(|s| s.version).collect();
            if found.iter().enumerate().any(|(i, v)| *v != i as u32 + 1) {
                return Err(CatalogError::VersionGap { topic: first.topic.clone(), event: first.event.clone(), found });
            }
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = &EventSchema> {
        self.schemas.iter()
    }

    /// Each event's versions, oldest first.
    pub fn chains(&self) -> impl Iterator<Item = &[EventSchema]> {
        self.schemas.chunk_by(|a, b| a.topic == b.topic && a.event == b.event)
    }

    /// Newest version of an event (by unqualified name).
    pub fn latest(&self, event: &str) -> Option<&EventSchema> {
        self.schemas.iter().filter(|s| s.event == event).max_by_key(|s| s.version)
    }

    pub fn get(&self, event: &str, version: u32) -> Option<&EventSchema> {
        self.schemas.iter().find(|s| s.event == event && s.version == version)
    }
}

fn parse_file(topic: String, origin: String, text: String) -> Result<EventSchema, CatalogError> {
    let file_name = Path::new(&origin).file_name().unwrap_or_default().to_string_lossy().into_owned();
    let (event, version) =
        parse_file_name(&file_name).ok_or_else(|| CatalogError::BadFileName { path: origin.clone() })?;
    let schema = Schema::parse_str(&text)
        .map_err(|e| CatalogError::InvalidSchema { path: origin.clone(), reason: e.to_string() })?;
    let Schema::Record(record) = &schema else {
        return Err(CatalogError::WrongShape { path: origin });
    };
    if record.name.namespace() != Some(NAMESPACE) {
        return Err(CatalogError::WrongShape { path: origin });
    }
    if record.name.name() != event {
        return Err(CatalogError::NameMismatch {
            path: origin,
            expected: event.to_string(),
            found: record.name.name().to_string(),
        });
    }
    let writer_key = format!("{}#v{version}", subject_for(&topic, event));
    Ok(EventSchema { topic, event: event.to_string(), version, origin, text, schema, writer_key })
}

/// `OrderPlaced.v2.avsc` → (`OrderPlaced`, 2).
fn parse_file_name(name: &str) -> Option<(&str, u32)> {
    let stem = name.strip_suffix(".avsc")?;
    let (event, version) = stem.rsplit_once(".v")?;
    let version: u32 = version.parse().ok().filter(|v| *v > 0)?;
    let valid = !event.is_empty()
        && event.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && event.chars().all(|c| c.is_ascii_alphanumeric());
    valid.then_some((event, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalog_loads_and_has_every_lifecycle_event() {
        let catalog = Catalog::embedded();
        for event in ["OrderPlaced", "OrderPaid", "OrderPaymentFailed", "OrderCancelled", "InventoryShortage"] {
            assert_eq!(catalog.latest(event).expect(event).topic, "orders");
        }
        for event in ["PaymentAuthorized", "PaymentDeclined", "PaymentRefunded"] {
            assert_eq!(catalog.latest(event).expect(event).topic, "payments");
        }
        assert_eq!(catalog.latest("OrderPlaced").unwrap().version, 2);
        assert_eq!(catalog.get("OrderPlaced", 1).unwrap().subject(), "orders-io.orderflow.events.OrderPlaced");
    }

    #[test]
    fn file_names_follow_event_dot_version() {
        assert_eq!(parse_file_name("OrderPlaced.v2.avsc"), Some(("OrderPlaced", 2)));
        assert_eq!(parse_file_name("OrderPlaced.v0.avsc"), None);
        assert_eq!(parse_file_name("orderPlaced.v1.avsc"), None);
        assert_eq!(parse_file_name("OrderPlaced.avsc"), None);
    }

    fn record(name: &str) -> String {
        format!(r#"{{"type":"record","name":"{name}","namespace":"{NAMESPACE}","fields":[]}}"#)
    }

    #[test]
    fn a_gap_in_versions_is_rejected() {
        let files = vec![
            ("orders".into(), "A.v1.avsc".into(), record("A")),
            ("orders".into(), "A.v3.avsc".into(), record("A")),
        ];
        let err = Catalog::from_files(files).unwrap_err();
        assert!(matches!(err, CatalogError::VersionGap { .. }), "{err}");
    }

    #[test]
    fn a_record_whose_name_differs_from_its_file_is_rejected() {
        let err = Catalog::from_files(vec![("orders".into(), "A.v1.avsc".into(), record("B"))]).unwrap_err();
        assert!(err.to_string().contains("named \"B\""), "{err}");
    }
}
