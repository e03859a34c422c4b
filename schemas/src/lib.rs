//! orderflow's event contracts.
//!
//! - [`catalog`]: the `.avsc` files under `schemas/avro/<topic>/<Event>.v<N>.avsc`, one file per
//!   event type and version, loaded from disk (for the PR check) or embedded at build time (what
//!   a service was built with).
//! - [`compat`]: Avro schema-resolution compatibility with a readable reason per broken rule.
//! - [`contract`]: the limits every order and event meets, checked at intake, at encoding and
//!   by every consumer.
//! - [`codec`]: the Confluent wire format (magic 0 + 4-byte schema id + Avro body), encoded and
//!   decoded through `schema_registry_converter`, with errors a consumer can route on.
//! - [`headers`]: the Kafka record headers events carry, and those on retry and DLT copies.
//! - [`registry_client`]: the few registry REST calls the PR workflow needs.

pub mod catalog;
pub mod codec;
pub mod compat;
pub mod contract;
pub mod events;
pub mod headers;
pub mod registry_access;
pub mod registry_client;
pub mod wire;
pub mod workflow;

pub use catalog::{Catalog, CatalogError, EventSchema};
pub use codec::{CodecError, Decoded, EventCodec};
pub use compat::{CompatibilityLevel, Incompatibility};
pub use registry_access::{Credentials, RegistryAccess, RegistryArgs};

/// Avro namespace of every orderflow event.
pub const NAMESPACE: &str = "io.orderflow.events";

/// Topics and the events they carry, in the order an order lives through them.
pub mod topics {
    pub const ORDERS: &str = "orders";
    pub const PAYMENTS: &str = "payments";
}
