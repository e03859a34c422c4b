//! Encoding and decoding orderflow events in the Confluent wire format.
//!
//! Producers encode with the schema version they were built with; the subject is chosen by
//! TopicRecordNameStrategy (`<topic>-<record full name>`), so one topic carries several event
//! types in order. The schema is registered (idempotently) on first use, and the id cached.
//!
//! Consumers decode with the writer's schema fetched by id (cached) and resolve it to their own
//! reader schema — the version they were built with — so a v1 consumer reads v2 records.
//!
//! Errors say whether to retry: only [`CodecError::RegistryUnavailable`] is worth retrying;
//! everything else is poison for a dead-letter topic.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use apache_avro::{Schema, reader::datum::GenericDatumReader, types::Value};
use schema_registry_converter::{
    async_impl::{
        avro::{AvroDecoder, AvroEncoder},
        schema_registry::SrSettings,
    },
    error::SRCError,
    schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema},
};

use crate::{
    Catalog, EventSchema,
    registry_access::{Credentials, RegistryAccess},
    wire,
};

/// Why a record could not be encoded or decoded, and whether a retry can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    #[error("not in the Confluent wire format: {0}")]
    BadFraming(#[from] wire::FrameError),
    #[error("schema id {id} is not known to the registry: {detail}")]
    UnknownSchemaId { id: u32, detail: String },
    #[error("the body does not decode with schema id {id}: {detail}")]
    Undecodable { id: u32, detail: String },
    #[error("the {event} value does not match its schema: {detail}")]
    InvalidValue { event: String, detail: String },
    #[error("the registry rejected {subject}: {detail}")]
    Rejected { subject: String, detail: String },
    #[error("the schema registry is unreachable: {detail}")]
    RegistryUnavailable { detail: String },
    /// The event's values break the order contract ([`crate::contract`]).
    #[error(transparent)]
    Contract(#[from] crate::contract::ContractViolation),
}

impl CodecError {
    /// True when the same call may succeed later (registry down or slow); false for poison.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable { .. })
    }

    /// A short, stable class name for DLT headers and metric labels.
    pub fn class(&self) -> &'static str {
        match self {
            CodecError::BadFraming(wire::FrameError::BadMagicByte(_)) => "bad_magic_byte",
            CodecError::BadFraming(wire::FrameError::TooShort(_)) => "truncated",
            CodecError::UnknownSchemaId { .. } => "unknown_schema_id",
            CodecError::Undecodable { .. } => "undecodable_body",
            CodecError::InvalidValue { .. } => "invalid_value",
            CodecError::Rejected { .. } => "schema_rejected",
            CodecError::RegistryUnavailable { .. } => "registry_unavailable",
            CodecError::Contract(_) => "contract_violation",
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Unqualified record name of the writer's schema, e.g. `OrderPlaced`.
    pub event_type: String,
    /// The writer's schema id.
    pub schema_id: u32,
    /// The value resolved to this consumer's reader schema, or in the writer's shape when the
    /// consumer has no reader schema for this type (an event it does not know).
    pub value: Value,
    /// Whether `value` was resolved to a reader schema.
    pub resolved: bool,
}

/// One writer schema's converter encoder and subject strategy, built once and reused.
struct Writer {
    encoder: AvroEncoder,
    subject: String,
    strategy: SubjectNameStrategy,
}

/// Encoder and decoder sharing one registry connection and its caches.
pub struct EventCodec {
    settings: SrSettings,
    /// One writer per (subject, version): the converter caches a subject's schema by subject
    /// alone, so one shared encoder would silently reuse the first version it saw.
    writers: Mutex<HashMap<String, Arc<Writer>>>,
    decoder: AvroDecoder,
    /// Reader schema by full record name.
    readers: HashMap<String, Schema>,
}

impl EventCodec {
    /// A codec whose reader schemas are the newest versions this binary was built with.
    pub fn new(registry: impl Into<RegistryAccess>, timeout: Duration) -> Result<Self, CodecError> {
        Self::with_readers(registry, timeout, Self::readers_at(&[]))
    }

    /// A codec reading with explicit reader schemas (by full record name): a consumer pinned to
    /// older versions, or a test playing one.
    pub fn with_readers(
        registry: impl Into<RegistryAccess>,
        timeout: Duration,
        readers: HashMap<String, Schema>,
    ) -> Result<Self, CodecError> {
        let registry = registry.into();
        let settings = || {
            let mut builder = SrSettings::new_builder(registry.url.clone());
            builder.set_timeout(timeout).no_proxy();
            match &registry.credentials {
                None => {}
                Some(Credentials::Basic { user, password }) => {
                    builder.set_basic_authorization(user, Some(password));
                }
                Some(Credentials::Bearer(token)) => {
                    builder.set_token_authorization(token);
                }
            }
            builder
                .build_with(orderflow_http::client())
                .map_err(|e| CodecError::RegistryUnavailable { detail: e.to_string() })
        };
        Ok(EventCodec {
            settings: settings()?,
            writers: Mutex::default(),
            decoder: AvroDecoder::new(settings()?),
            readers,
        })
    }

    /// Readers pinned to the given version of each listed event (others: newest built-in).
    pub fn readers_at(versions: &[(&str, u32)]) -> HashMap<String, Schema> {
        let catalog = Catalog::embedded();
        let mut readers: HashMap<String, Schema> =
            catalog.chains().filter_map(|chain| chain.last()).map(|s| (s.full_name(), s.schema.clone())).collect();
        for (event, version) in versions {
            if let Some(s) = catalog.get(event, *version) {
                readers.insert(s.full_name(), s.schema.clone());
            }
        }
        readers
    }

    /// Encodes `value` with `schema` for `topic`, registering the schema under
    /// `<topic>-<full name>` if it is not yet there. Returns the framed bytes.
    pub async fn encode(&self, schema: &EventSchema, value: Value) -> Result<Vec<u8>, CodecError> {
        if !value.validate(&schema.schema) {
            return Err(CodecError::InvalidValue {
                event: schema.event.clone(),
                detail: format!("value does not conform to {}.v{}", schema.event, schema.version),
            });
        }
        self.encode_valid(schema, value).await
    }

    /// Encodes a typed event with the version this build writes.
    pub async fn encode_event<E: crate::events::Event>(&self, event: &E) -> Result<Vec<u8>, CodecError> {
        // No service publishes what a consumer would refuse; `to_avro` resolves the value
        // against the schema, so it is valid by construction.
        crate::contract::check(event)?;
        self.encode_valid(E::schema(), event.to_avro()?).await
    }

    async fn encode_valid(&self, schema: &EventSchema, value: Value) -> Result<Vec<u8>, CodecError> {
        let writer = self.writer(schema);
        writer
            .encoder
            .encode_value(value, &writer.strategy)
            .await
            .map_err(|e| registry_error(e, |detail| CodecError::Rejected { subject: writer.subject.clone(), detail }))
    }

    /// Resolves the schema ids of the given writer schemas now, so later encodes need no
    /// registry round trip (a service calls this before it reports ready).
    pub async fn warm_up(&self, schemas: &[&EventSchema]) -> Result<(), CodecError> {
        for schema in schemas {
            self.schema_id(schema).await?;
        }
        Ok(())
    }

    /// The registry id of a writer schema (registered on first use, then cached).
    pub async fn schema_id(&self, schema: &EventSchema) -> Result<u32, CodecError> {
        let writer = self.writer(schema);
        writer
            .encoder
            .get_schema_and_id(&writer.subject, writer.strategy.clone())
            .await
            .map(|s| s.id)
            .map_err(|e| registry_error(e, |detail| CodecError::Rejected { subject: writer.subject.clone(), detail }))
    }

    fn writer(&self, schema: &EventSchema) -> Arc<Writer> {
        let mut writers = self.writers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(writer) = writers.get(schema.writer_key.as_str()) {
            return writer.clone();
        }
        let supplied = SuppliedSchema::new(Some(schema.full_name()), SchemaType::Avro, schema.text.clone());
        let writer = Arc::new(Writer {
            encoder: AvroEncoder::new(self.settings.clone()),
            subject: schema.subject(),
            strategy: SubjectNameStrategy::TopicRecordNameStrategyWithSchema(schema.topic.clone(), supplied),
        });
        writers.insert(schema.writer_key.clone(), writer.clone());
        writer
    }

    /// Decodes a framed record into the reader's shape.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Decoded, CodecError> {
        let (id, mut body) = wire::split(bytes)?;
        let writer = match self.decoder.get_schema(id).await {
            Ok(writer) => writer,
            Err(e) => {
                // A non-retryable miss is cached by the converter; drop it so that a replay after
                // the schema is registered (or a registry restored) succeeds.
                self.decoder.remove_errors_from_cache();
                return Err(registry_error(e, |detail| CodecError::UnknownSchemaId { id, detail }));
            }
        };
        let full_name = writer.parsed.name().map(|n| n.to_string()).unwrap_or_default();
        let event_type = writer.parsed.name().map(|n| n.name().to_string()).unwrap_or_default();
        let reader = self.readers.get(&full_name);
        let value = GenericDatumReader::builder(&writer.parsed)
            .maybe_reader_schema(reader)
            .build()
            .and_then(|datum| datum.read_value(&mut body))
            .map_err(|e| CodecError::Undecodable { id, detail: e.to_string() })?;
        if !body.is_empty() {
            return Err(CodecError::Undecodable { id, detail: format!("{} bytes left after the record", body.len()) });
        }
        Ok(Decoded { event_type, schema_id: id, value, resolved: reader.is_some() })
    }
}

/// Splits converter errors into "retry later" and the caller's permanent kind. The converter
/// only calls 502/503 and connection failures retriable; a registry answering 500 or 504 (its
/// store is down, it timed out) is just as temporary, so every 5xx counts as unavailable here.
fn registry_error(e: SRCError, permanent: impl FnOnce(String) -> CodecError) -> CodecError {
    let detail = match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    };
    if e.retriable || e.error.contains("failed with status 5") {
        CodecError::RegistryUnavailable { detail }
    } else {
        permanent(detail)
    }
}

/// Shared codec handle.
pub type SharedCodec = Arc<EventCodec>;
