//! Parsing and validating `POST /orders` bodies. Every problem names its field as a JSON
//! pointer; unknown fields and server-computed fields are refused, not ignored. The limits are
//! the order contract's ([`orderflow_schemas::contract`]), the same every consumer enforces, so
//! an accepted order is never dead-lettered downstream for its values.

use orderflow_schemas::{
    contract::{self, MAX_EMAIL_CHARS, MAX_ID_CHARS, Rule},
    events::OrderLine,
};
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
    /// Sum of the lines in minor units (at most the contract's `MAX_TOTAL_MINOR`).
    pub fn total_minor(&self) -> i64 {
        contract::lines_total(&self.items).expect("validated: the total is within the contract")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// JSON pointer, e.g. `/items/0/quantity`.
    pub field: String,
    pub message: String,
}

pub use contract::{MAX_LINES as MAX_ITEMS, MAX_QUANTITY, MAX_TOTAL_MINOR, MAX_UNIT_PRICE_MINOR};
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
    let customer_id = text(object, "customer_id", "/customer_id", MAX_ID_CHARS, &mut err);
    let customer_email = match object.get("customer_email") {
        None | Some(Value::Null) => None,
        Some(Value::String(e)) if contract::email(e).is_ok() => Some(e.clone()),
        Some(_) => {
            err("/customer_email", &format!("must be an e-mail address of at most {MAX_EMAIL_CHARS} characters"));
            None
        }
    };
    let currency = checked(object, "currency", "/currency", contract::currency, &mut err);
    let items = match object.get("items") {
        Some(Value::Array(items)) if contract::line_count(items.len()).is_ok() => {
            let lines: Vec<_> = items.iter().enumerate().filter_map(|(i, item)| line(i, item, &mut err)).collect();
            // The total only when every line is valid: a bad line is reported, not its sum.
            if lines.len() == items.len() {
                let total = contract::lines_total(&lines).unwrap_or(i64::MAX);
                if let Err(message) = contract::amount(total) {
                    err("/items", &format!("the order's total (quantity × unit_price_minor, summed) {message}"));
                }
            }
            lines
        }
        Some(Value::Array(items)) => {
            err("/items", &contract::line_count(items.len()).unwrap_err());
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
    checked(object, key, field, |s| contract::text(s, max), err)
}

/// A required string field that must meet `rule`.
fn checked(
    object: &Map<String, Value>,
    key: &str,
    field: &str,
    rule: impl Fn(&str) -> Rule,
    err: &mut impl FnMut(&str, &str),
) -> Option<String> {
    let Some(value) = object.get(key) else {
        err(field, "is required");
        return None;
    };
    // A non-string gets the rule's own message, computed on an empty string.
    match value.as_str().map(|s| (s, rule(s))) {
        Some((s, Ok(()))) => Some(s.to_string()),
        Some((_, Err(message))) => {
            err(field, &message);
            None
        }
        None => {
            err(field, &rule("").unwrap_err());
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
    let sku = text(object, "sku", &at("sku"), MAX_ID_CHARS, err);
    let quantity = integer(object, "quantity", &at("quantity"), contract::quantity, err);
    let price = integer(object, "unit_price_minor", &at("unit_price_minor"), contract::unit_price, err);
    Some(OrderLine { sku: sku?, quantity: i32::try_from(quantity?).ok()?, unit_price_minor: price? })
}

fn integer(
    object: &Map<String, Value>,
    key: &str,
    field: &str,
    rule: impl Fn(i64) -> Rule,
    err: &mut impl FnMut(&str, &str),
) -> Option<i64> {
    let Some(value) = object.get(key) else {
        err(field, "is required");
        return None;
    };
    // Not a whole number at all gets the rule's message for a value out of range.
    match value.as_i64().map(|n| (n, rule(n))).unwrap_or_else(|| (i64::MIN, rule(i64::MIN))) {
        (n, Ok(())) => Some(n),
        (_, Err(message)) => {
            err(field, &message);
            None
        }
    }
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

    #[test]
    fn a_zero_total_and_a_total_past_the_contract_are_refused_at_the_edge() {
        let free = json!({"customer_id": "c", "currency": "EUR", "items": [{"sku": "A", "quantity": 2, "unit_price_minor": 0}]});
        let errors = parse(&free).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "/items");
        assert!(errors[0].message.contains("total"), "{}", errors[0].message);
        let huge = json!({"customer_id": "c", "currency": "EUR",
            "items": [{"sku": "A", "quantity": MAX_QUANTITY, "unit_price_minor": MAX_UNIT_PRICE_MINOR}]});
        assert_eq!(fields(huge), vec!["/items"]);
        // A free line in a paid order is fine.
        let mixed = json!({"customer_id": "c", "currency": "EUR",
            "items": [{"sku": "A", "quantity": 1, "unit_price_minor": 0}, {"sku": "B", "quantity": 1, "unit_price_minor": 1}]});
        assert_eq!(parse(&mixed).unwrap().total_minor(), 1);
    }
}
