//! Parsing and validating `POST /orders` bodies. Every problem names its field as a JSON
//! pointer; unknown fields and server-computed fields are refused, not ignored.

use orderflow_schemas::events::OrderLine;
use serde::Serialize;
use serde_json::{Map, Value};

/// A valid order request, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRequest {
    pub customer_id: String,
    pub customer_email: Option<String>,
    pub currency: String,
    pub items: Vec<OrderLine>,
}

impl OrderRequest {
    /// Sum of the lines in minor units (bounded by validation, so it cannot overflow).
    pub fn total_minor(&self) -> i64 {
        self.items.iter().map(|l| i64::from(l.quantity) * l.unit_price_minor).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer, e.g. `/items/0/quantity`.
    pub field: String,
    pub message: String,
}

pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: i64 = 10_000;
pub const MAX_UNIT_PRICE_MINOR: i64 = 10_000_000_000;
const SERVER_FIELDS: [&str; 7] = ["order_id", "status", "total", "total_minor", "version", "created_at", "history"];
const FIELDS: [&str; 4] = ["customer_id", "customer_email", "currency", "items"];
const ITEM_FIELDS: [&str; 3] = ["sku", "quantity", "unit_price_minor"];

/// Validates a parsed JSON body; returns every problem found, not just the first.
pub fn parse(body: &Value) -> Result<OrderRequest, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: &str| errors.push(FieldError { field: field.into(), message: message.into() });
    let Some(object) = body.as_object() else {
        err("", "the body must be a JSON object");
        return Err(errors);
    };
    for key in object.keys() {
        if SERVER_FIELDS.contains(&key.as_str()) {
            err(&format!("/{key}"), "is computed by the server and cannot be set");
        } else if !FIELDS.contains(&key.as_str()) {
            err(&format!("/{key}"), "is not a field of an order");
        }
    }
    let customer_id = text(object, "customer_id", "/customer_id", 64, &mut err);
    let customer_email = match object.get("customer_email") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) if e.len() <= 254 && is_email(e) => Some(e.clone()),
        Some(_) => {
            err("/customer_email", "must be an e-mail address of at most 254 characters");
            None
        }
    };
    let currency = match object.get("currency") {
        Some(Value::String(c)) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Some(c.clone()),
        Some(_) => {
            err("/currency", "must be an ISO 4217 code of three upper-case letters, e.g. EUR");
            None
        }
        None => {
            err("/currency", "is required");
            None
        }
    };
    let items = match object.get("items") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_ITEMS => {
            items.iter().enumerate().filter_map(|(i, item)| line(i, item, &mut err)).collect::<Vec<_>>()
        }
        Some(Value::Array(_)) => {
            err("/items", &format!("must hold between 1 and {MAX_ITEMS} lines"));
            Vec::new()
        }
        Some(_) => {
            err("/items", "must be an array of lines");
            Vec::new()
        }
        None => {
            err("/items", "is required");
            Vec::new()
        }
    };
    match (customer_id, currency) {
        (Some(customer_id), Some(currency)) if errors.is_empty() => {
            Ok(OrderRequest { customer_id, customer_email, currency, items })
        }
        _ => Err(errors),
    }
}

fn text(
    object: &Map<String, Value>,
    key: &str,
    field: &str,
    max: usize,
    err: &mut impl FnMut(&str, &str),
) -> Option<String> {
    match object.get(key) {
        Some(Value::String(s))
            if !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) =>
        {
            Some(s.clone())
        }
        Some(_) => {
            err(field, &format!("must be a non-empty string of at most {max} characters without control characters"));
            None
        }
        None => {
            err(field, "is required");
            None
        }
    }
}

fn line(i: usize, item: &Value, err: &mut impl FnMut(&str, &str)) -> Option<OrderLine> {
    let at = |name: &str| format!("/items/{i}/{name}");
    let Some(object) = item.as_object() else {
        err(&format!("/items/{i}"), "must be an object with sku, quantity and unit_price_minor");
        return None;
    };
    for key in object.keys().filter(|k| !ITEM_FIELDS.contains(&k.as_str())) {
        err(&at(key), "is not a field of an order line");
    }
    let sku = text(object, "sku", &at("sku"), 64, err);
    let quantity = integer(object, "quantity", &at("quantity"), 1, MAX_QUANTITY, err);
    let price = integer(object, "unit_price_minor", &at("unit_price_minor"), 0, MAX_UNIT_PRICE_MINOR, err);
    Some(OrderLine { sku: sku?, quantity: i32::try_from(quantity?).ok()?, unit_price_minor: price? })
}

fn integer(
    object: &Map<String, Value>,
    key: &str,
    field: &str,
    min: i64,
    max: i64,
    err: &mut impl FnMut(&str, &str),
) -> Option<i64> {
    match object.get(key).and_then(Value::as_i64) {
        Some(n) if (min..=max).contains(&n) => Some(n),
        _ if !object.contains_key(key) => {
            err(field, "is required");
            None
        }
        _ => {
            err(field, &format!("must be a whole number from {min} to {max} (amounts are in minor units)"));
            None
        }
    }
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(body: Value) -> Vec<String> {
        parse(&body).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_order_parses_and_totals_in_minor_units() {
        let order = parse(&json!({"customer_id": "c-1", "currency": "EUR",
            "items": [{"sku": "A", "quantity": 2, "unit_price_minor": 1250}, {"sku": "B", "quantity": 1, "unit_price_minor": 99}]}))
        .unwrap();
        assert_eq!(order.total_minor(), 2599);
        assert_eq!(order.customer_email, None);
    }

    #[test]
    fn every_bad_field_is_named() {
        let found = fields(json!({"customer_id": "", "currency": "eur",
            "items": [{"sku": "A", "quantity": 0, "unit_price_minor": -1, "colour": "red"}]}));
        assert_eq!(
            found,
            vec!["/customer_id", "/currency", "/items/0/colour", "/items/0/quantity", "/items/0/unit_price_minor"]
        );
    }

    #[test]
    fn server_computed_and_unknown_fields_are_refused() {
        let body = json!({"customer_id": "c", "currency": "EUR", "status": "PAID", "total_minor": 1, "coupon": "X",
            "items": [{"sku": "A", "quantity": 1, "unit_price_minor": 1}]});
        let errors = parse(&body).unwrap_err();
        let status = errors.iter().find(|e| e.field == "/status").unwrap();
        assert!(status.message.contains("computed by the server"));
        assert!(errors.iter().any(|e| e.field == "/coupon" && e.message.contains("not a field")));
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        assert_eq!(fields(json!({})), vec!["/customer_id", "/currency", "/items"]);
        assert_eq!(fields(json!([])), vec![""]);
        let found = fields(
            json!({"customer_id": "c", "currency": "EUR", "items": [{"sku": "A", "quantity": "2", "unit_price_minor": 1.5}]}),
        );
        assert_eq!(found, vec!["/items/0/quantity", "/items/0/unit_price_minor"]);
        assert_eq!(fields(json!({"customer_id": "c", "currency": "EUR", "items": []})), vec!["/items"]);
    }
}
