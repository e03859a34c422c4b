//! The order contract: the limits every order and every event about it meets, written once.
//!
//! order-api refuses a request that breaks a rule (422, one problem per field, with the rule's
//! message); the codec refuses to encode an event that breaks one (no service can publish it);
//! every consumer checks the events it reads against the same rules and dead-letters a
//! violation as `contract_violation` with the fields named — so a record is judged the same way
//! at the edge and at every hop, and never reaches a database statement that would refuse it.
//!
//! The bounds leave headroom for every sum orderflow keeps in a 64-bit integer: an order's total
//! is at most [`MAX_TOTAL_MINOR`] (10^12 minor units), so a per-minute revenue counter holds more
//! than nine million maximal orders before it could overflow.

use std::fmt;

use crate::events::{
    InventoryShortage, Money, OrderCancelled, OrderLine, OrderPaid, OrderPaymentFailed, OrderPlaced, PaymentAuthorized,
    PaymentDeclined, PaymentRefunded,
};

/// Lines in one order.
pub const MAX_LINES: usize = 100;
/// Units of one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// A unit's price in minor units; 0 is a free line (the order's total must still be positive).
pub const MAX_UNIT_PRICE_MINOR: i64 = 10_000_000_000;
/// An order's total and any amount charged or refunded, in minor units: from 1 to this.
pub const MAX_TOTAL_MINOR: i64 = 1_000_000_000_000;
/// Customer ids and SKUs.
pub const MAX_ID_CHARS: usize = 64;
/// A provider's charge or refund reference (the provider chooses it).
pub const MAX_REFERENCE_CHARS: usize = 255;
/// An e-mail address (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// A free-text message on an event.
pub const MAX_MESSAGE_CHARS: usize = 1_000;

/// One broken rule: the field as a JSON pointer into the event (or request) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

/// Every rule an event breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContractViolation {
    pub event: String,
    pub violations: Vec<Violation>,
}

impl fmt::Display for ContractViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} breaks the order contract:", self.event)?;
        for (i, v) in self.violations.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{} {}", v.field, v.message)?;
        }
        Ok(())
    }
}

/// An event whose values the contract constrains.
pub trait Checked {
    /// Every rule this value breaks; empty when it meets the contract.
    fn violations(&self) -> Vec<Violation>;
}

/// A rule: `Ok` or the message naming the limit.
pub type Rule = Result<(), String>;

/// Ids, SKUs, references: non-blank, at most `max` characters, no control characters.
pub fn text(s: &str, max: usize) -> Rule {
    if !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(format!("must be a non-empty string of at most {max} characters without control characters"))
    }
}

pub fn currency(s: &str) -> Rule {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err("must be an ISO 4217 code of three upper-case letters, e.g. EUR".into())
    }
}

pub fn email(s: &str) -> Rule {
    let well_formed = s.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
    });
    if well_formed && s.chars().count() <= MAX_EMAIL_CHARS && !s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(format!("must be an e-mail address of at most {MAX_EMAIL_CHARS} characters"))
    }
}

fn within(n: i64, min: i64, max: i64) -> Rule {
    if (min..=max).contains(&n) {
        Ok(())
    } else {
        Err(format!("must be a whole number from {min} to {max} (amounts are in minor units)"))
    }
}

pub fn quantity(n: i64) -> Rule {
    within(n, 1, MAX_QUANTITY)
}

pub fn unit_price(n: i64) -> Rule {
    within(n, 0, MAX_UNIT_PRICE_MINOR)
}

/// An order's total, a charge or a refund.
pub fn amount(n: i64) -> Rule {
    within(n, 1, MAX_TOTAL_MINOR)
}

pub fn line_count(n: usize) -> Rule {
    if (1..=MAX_LINES).contains(&n) { Ok(()) } else { Err(format!("must hold between 1 and {MAX_LINES} lines")) }
}

/// The sum of the lines, or `None` when it does not fit in 64 bits (which `amount` refuses).
pub fn lines_total(lines: &[OrderLine]) -> Option<i64> {
    lines.iter().try_fold(0i64, |sum, l| i64::from(l.quantity).checked_mul(l.unit_price_minor)?.checked_add(sum))
}

/// Collects broken rules under their JSON pointers.
#[derive(Default)]
pub struct Violations(Vec<Violation>);

impl Violations {
    pub fn check(&mut self, field: impl Into<String>, rule: Rule) -> &mut Self {
        if let Err(message) = rule {
            self.0.push(Violation { field: field.into(), message });
        }
        self
    }

    pub fn into_vec(self) -> Vec<Violation> {
        self.0
    }

    fn lines(&mut self, at: &str, lines: &[OrderLine]) -> &mut Self {
        self.check(at, line_count(lines.len()));
        for (i, line) in lines.iter().enumerate() {
            self.check(format!("{at}/{i}/sku"), text(&line.sku, MAX_ID_CHARS))
                .check(format!("{at}/{i}/quantity"), quantity(line.quantity.into()))
                .check(format!("{at}/{i}/unit_price_minor"), unit_price(line.unit_price_minor));
        }
        self
    }

    fn money(&mut self, at: &str, money: &Money) -> &mut Self {
        self.check(format!("{at}/amount_minor"), amount(money.amount_minor))
            .check(format!("{at}/currency"), currency(&money.currency))
    }

    /// The amount equals the lines' sum (checked only when each line is in range).
    fn priced(&mut self, at: &str, money: &Money, lines: &[OrderLine]) -> &mut Self {
        if self.0.is_empty() && lines_total(lines) != Some(money.amount_minor) {
            self.check(format!("{at}/amount_minor"), Err("must equal the sum of quantity × unit_price_minor".into()));
        }
        self
    }

    fn optional_message(&mut self, message: Option<&String>) -> &mut Self {
        if let Some(m) = message.filter(|m| m.chars().count() > MAX_MESSAGE_CHARS) {
            self.check("/message", Err(format!("must be at most {MAX_MESSAGE_CHARS} characters, has {}", m.len())));
        }
        self
    }
}

impl Checked for OrderPlaced {
    fn violations(&self) -> Vec<Violation> {
        let mut v = Violations::default();
        v.check("/customer_id", text(&self.customer_id, MAX_ID_CHARS)).lines("/lines", &self.lines);
        v.money("/total", &self.total).priced("/total", &self.total, &self.lines);
        if let Some(address) = &self.customer_email {
            v.check("/customer_email", email(address));
        }
        v.into_vec()
    }
}

impl Checked for OrderPaid {
    fn violations(&self) -> Vec<Violation> {
        let mut v = Violations::default();
        v.check("/customer_id", text(&self.customer_id, MAX_ID_CHARS)).lines("/lines", &self.lines);
        v.money("/amount", &self.amount).priced("/amount", &self.amount, &self.lines);
        v.into_vec()
    }
}

impl Checked for OrderPaymentFailed {
    fn violations(&self) -> Vec<Violation> {
        let mut v = Violations::default();
        v.check("/customer_id", text(&self.customer_id, MAX_ID_CHARS)).optional_message(self.message.as_ref());
        v.into_vec()
    }
}

impl Checked for PaymentAuthorized {
    fn violations(&self) -> Vec<Violation> {
        let mut v = Violations::default();
        v.check("/provider_reference", text(&self.provider_reference, MAX_REFERENCE_CHARS))
            .money("/amount", &self.amount);
        v.into_vec()
    }
}

impl Checked for PaymentDeclined {
    fn violations(&self) -> Vec<Violation> {
        let mut v = Violations::default();
        v.optional_message(self.message.as_ref());
        v.into_vec()
    }
}

impl Checked for InventoryShortage {
    fn violations(&self) -> Vec<Violation> {
        let mut v = Violations::default();
        v.check("/missing", line_count(self.missing.len()));
        for (i, m) in self.missing.iter().enumerate() {
            v.check(format!("/missing/{i}/sku"), text(&m.sku, MAX_ID_CHARS))
                .check(
                    format!("/missing/{i}/requested"),
                    within(m.requested.into(), 1, MAX_QUANTITY * MAX_LINES as i64),
                )
                .check(format!("/missing/{i}/available"), within(m.available.into(), 0, i64::from(m.requested) - 1));
        }
        v.into_vec()
    }
}

impl Checked for OrderCancelled {
    fn violations(&self) -> Vec<Violation> {
        let mut v = Violations::default();
        v.check("/customer_id", text(&self.customer_id, MAX_ID_CHARS));
        v.into_vec()
    }
}

impl Checked for PaymentRefunded {
    fn violations(&self) -> Vec<Violation> {
        let mut v = Violations::default();
        v.check("/refund_reference", text(&self.refund_reference, MAX_REFERENCE_CHARS)).money("/amount", &self.amount);
        v.into_vec()
    }
}

/// `Ok` when `event` meets the contract, else every rule it breaks.
pub fn check<E: crate::events::Event>(event: &E) -> Result<(), ContractViolation> {
    let violations = event.violations();
    if violations.is_empty() { Ok(()) } else { Err(ContractViolation { event: E::NAME.into(), violations }) }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn placed(lines: Vec<(i32, i64)>) -> OrderPlaced {
        let lines: Vec<OrderLine> = lines
            .into_iter()
            .map(|(quantity, unit_price_minor)| OrderLine { sku: "A".into(), quantity, unit_price_minor })
            .collect();
        OrderPlaced {
            order_id: Uuid::new_v4(),
            customer_id: "c-1".into(),
            total: Money { amount_minor: lines_total(&lines).unwrap_or(i64::MAX), currency: "EUR".into() },
            lines,
            placed_at: Utc::now(),
            customer_email: None,
        }
    }

    fn fields(event: &impl Checked) -> Vec<String> {
        event.violations().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn an_order_within_every_limit_meets_the_contract() {
        assert!(check(&placed(vec![(1, 0), (2, 150)])).is_ok());
        assert!(check(&placed(vec![(100, MAX_TOTAL_MINOR / 100)])).is_ok());
    }

    #[test]
    fn a_zero_total_is_refused_even_though_free_lines_are_allowed() {
        assert_eq!(fields(&placed(vec![(3, 0)])), vec!["/total/amount_minor"]);
    }

    #[test]
    fn a_total_past_the_cap_is_refused_even_when_every_line_is_within_its_own() {
        let order = placed(vec![(MAX_QUANTITY as i32, MAX_UNIT_PRICE_MINOR)]);
        assert_eq!(fields(&order), vec!["/total/amount_minor"]);
    }

    #[test]
    fn a_total_that_does_not_match_its_lines_is_refused() {
        let mut order = placed(vec![(2, 150)]);
        order.total.amount_minor = 299;
        let error = check(&order).unwrap_err();
        assert_eq!(error.violations[0].field, "/total/amount_minor");
        assert!(error.to_string().contains("sum of quantity"), "{error}");
    }

    #[test]
    fn the_overflowing_paid_amount_is_a_violation_not_a_database_error() {
        let order = placed(vec![(1, 150)]);
        let paid = OrderPaid {
            order_id: order.order_id,
            payment_id: Uuid::new_v4(),
            customer_id: "c".into(),
            lines: order.lines,
            amount: Money { amount_minor: 1 << 62, currency: "EUR".into() },
            paid_at: Utc::now(),
        };
        assert_eq!(fields(&paid), vec!["/amount/amount_minor"]);
    }

    #[test]
    fn every_broken_rule_is_named_with_its_pointer() {
        let mut order = placed(vec![(0, -1)]);
        order.customer_id = " ".into();
        order.total.currency = "eur".into();
        order.customer_email = Some("nobody".into());
        assert_eq!(
            fields(&order),
            vec![
                "/customer_id",
                "/lines/0/quantity",
                "/lines/0/unit_price_minor",
                "/total/amount_minor",
                "/total/currency",
                "/customer_email"
            ]
        );
    }
}
