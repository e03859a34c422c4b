//! Typed orderflow events: the Rust side of `avro/`. A service builds one of these, the codec
//! turns it into the Avro value of the version this binary writes; a consumer turns a decoded
//! value (already resolved to its reader version) back into the struct.

use apache_avro::types::Value;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::{Catalog, CodecError, EventSchema};

/// An event type and the version this build writes.
pub trait Event: Serialize + DeserializeOwned + crate::contract::Checked {
    const NAME: &'static str;
    const VERSION: u32;

    /// The partition key: the order id, so one order's events stay in order.
    fn key(&self) -> String;

    fn schema() -> &'static EventSchema {
        Catalog::embedded()
            .get(Self::NAME, Self::VERSION)
            .unwrap_or_else(|| panic!("{}.v{} is not in schemas/avro", Self::NAME, Self::VERSION))
    }

    fn to_avro(&self) -> Result<Value, CodecError> {
        let invalid = |detail: String| CodecError::InvalidValue { event: Self::NAME.into(), detail };
        apache_avro::to_value(self).and_then(|v| v.resolve(&Self::schema().schema)).map_err(|e| invalid(e.to_string()))
    }

    fn from_avro(value: &Value) -> Result<Self, CodecError> {
        apache_avro::from_value(value)
            .map_err(|e| CodecError::Undecodable { id: 0, detail: format!("{}: {e}", Self::NAME) })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    #[serde(with = "uuid_text")]
    pub order_id: Uuid,
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
    pub total: Money,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub placed_at: DateTime<Utc>,
    /// Since v2; `None` when read from v1 data.
    #[serde(default)]
    pub customer_email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaid {
    #[serde(with = "uuid_text")]
    pub order_id: Uuid,
    #[serde(with = "uuid_text")]
    pub payment_id: Uuid,
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
    pub amount: Money,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub paid_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeclineReason {
    Unknown,
    CardDeclined,
    InsufficientFunds,
    ExpiredCard,
    FraudSuspected,
    ProviderRejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaymentFailed {
    #[serde(with = "uuid_text")]
    pub order_id: Uuid,
    #[serde(with = "uuid_text")]
    pub payment_id: Uuid,
    pub customer_id: String,
    pub reason: DeclineReason,
    pub message: Option<String>,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub failed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    #[serde(with = "uuid_text")]
    pub order_id: Uuid,
    #[serde(with = "uuid_text")]
    pub payment_id: Uuid,
    pub provider_reference: String,
    pub amount: Money,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub authorized_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentDeclined {
    #[serde(with = "uuid_text")]
    pub order_id: Uuid,
    #[serde(with = "uuid_text")]
    pub payment_id: Uuid,
    pub reason: DeclineReason,
    pub message: Option<String>,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub declined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingStock {
    pub sku: String,
    pub requested: i32,
    pub available: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryShortage {
    #[serde(with = "uuid_text")]
    pub order_id: Uuid,
    pub missing: Vec<MissingStock>,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub detected_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelReason {
    Unknown,
    InventoryShortage,
    CustomerRequest,
    PaymentFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    #[serde(with = "uuid_text")]
    pub order_id: Uuid,
    pub customer_id: String,
    pub reason: CancelReason,
    /// True when money was taken and must be given back.
    pub refund_required: bool,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub cancelled_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    #[serde(with = "uuid_text")]
    pub order_id: Uuid,
    #[serde(with = "uuid_text")]
    pub payment_id: Uuid,
    pub refund_reference: String,
    pub amount: Money,
    #[serde(with = "chrono::serde::ts_milliseconds")]
    pub refunded_at: DateTime<Utc>,
}

/// UUIDs as their text form: the Avro schemas say `{"type": "string", "logicalType": "uuid"}`,
/// while uuid's own serde impl writes bytes to non-human-readable serializers such as Avro's.
mod uuid_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.hyphenated().to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let text = String::deserialize(d)?;
        Uuid::parse_str(&text).map_err(D::Error::custom)
    }
}

macro_rules! event {
    ($ty:ident, $version:literal) => {
        impl Event for $ty {
            const NAME: &'static str = stringify!($ty);
            const VERSION: u32 = $version;
            fn key(&self) -> String {
                self.order_id.to_string()
            }
        }
    };
}

event!(OrderPlaced, 2);
event!(OrderPaid, 1);
event!(OrderPaymentFailed, 1);
event!(PaymentAuthorized, 1);
event!(PaymentDeclined, 1);
event!(InventoryShortage, 1);
event!(OrderCancelled, 1);
event!(PaymentRefunded, 1);

#[cfg(test)]
mod tests {
    use super::*;

    fn placed() -> OrderPlaced {
        OrderPlaced {
            order_id: Uuid::new_v4(),
            customer_id: "c-1".into(),
            lines: vec![OrderLine { sku: "A".into(), quantity: 2, unit_price_minor: 150 }],
            total: Money { amount_minor: 300, currency: "EUR".into() },
            placed_at: DateTime::from_timestamp_millis(1_764_000_000_123).unwrap(),
            customer_email: Some("a@example.com".into()),
        }
    }

    #[test]
    fn an_event_survives_the_trip_through_its_avro_value() {
        let event = placed();
        let value = event.to_avro().unwrap();
        assert!(value.validate(&OrderPlaced::schema().schema));
        assert_eq!(OrderPlaced::from_avro(&value).unwrap(), event);
    }

    #[test]
    fn saga_events_round_trip() {
        let at = DateTime::from_timestamp_millis(1_764_000_000_000).unwrap();
        let shortage = InventoryShortage {
            order_id: Uuid::new_v4(),
            missing: vec![MissingStock { sku: "A".into(), requested: 2, available: 1 }],
            detected_at: at,
        };
        assert_eq!(InventoryShortage::from_avro(&shortage.to_avro().unwrap()).unwrap(), shortage);
        let cancelled = OrderCancelled {
            order_id: Uuid::new_v4(),
            customer_id: "c".into(),
            reason: CancelReason::InventoryShortage,
            refund_required: true,
            cancelled_at: at,
        };
        assert_eq!(OrderCancelled::from_avro(&cancelled.to_avro().unwrap()).unwrap(), cancelled);
        let refunded = PaymentRefunded {
            order_id: Uuid::new_v4(),
            payment_id: Uuid::new_v4(),
            refund_reference: "r".into(),
            amount: Money { amount_minor: 5, currency: "EUR".into() },
            refunded_at: at,
        };
        assert_eq!(PaymentRefunded::from_avro(&refunded.to_avro().unwrap()).unwrap(), refunded);
    }

    #[test]
    fn enums_and_missing_optionals_round_trip() {
        let event = PaymentDeclined {
            order_id: Uuid::new_v4(),
            payment_id: Uuid::new_v4(),
            reason: DeclineReason::InsufficientFunds,
            message: None,
            declined_at: DateTime::from_timestamp_millis(5).unwrap(),
        };
        let value = event.to_avro().unwrap();
        assert_eq!(PaymentDeclined::from_avro(&value).unwrap(), event);
    }
}
