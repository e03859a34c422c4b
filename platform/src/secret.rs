//! Secrets in settings: the `orderflow-settings` crate (small, so the schema tool builds without
//! the services' dependencies), re-exported for the services.

pub use orderflow_settings::*;
