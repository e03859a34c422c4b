//! One order is one trace: `POST /orders` (continuing the caller's traceparent), the outbox and
//! the relay carry it in the record headers, the payment consumer's span is a child of the
//! request's, the provider call a child of that, and order-service continues from payment's
//! event, notifications from order-service's, down to its email request. Spans go to the SDK's
//! in-memory exporter; `GET /orders/{id}` shows the trace id.

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use orderflow_tests::{
    intake::{eventually, sample_order},
    stack::TestStack,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn spans_of(exporter: &InMemorySpanExporter, trace: TraceId) -> Vec<SpanData> {
    orderflow_platform::telemetry::flush();
    exporter.get_finished_spans().unwrap().into_iter().filter(|s| s.span_context.trace_id() == trace).collect()
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_is_one_trace_from_post_orders_to_the_provider_call() {
    let exporter = InMemorySpanExporter::default();
    orderflow_platform::telemetry::init_with("orderflow-tests", Some(exporter.clone()));
    let mut stack = TestStack::spawn_without_inventory().await;
    stack.start_notifications(Duration::from_secs(5)).await;

    let response = stack
        .api
        .http
        .post(format!("{}/orders", stack.api.url))
        .header("Idempotency-Key", "traced-1")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&sample_order("c-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let order: uuid::Uuid = body["order_id"].as_str().unwrap().parse().unwrap();
    stack.wait_for_status(order, "PAID", WAIT).await;

    let view: Value = stack.api.get(&format!("/orders/{order}")).await.json().await.unwrap();
    assert_eq!(view["trace_id"], CLIENT_TRACE, "GET /orders/{{id}} shows the trace to jump to");

    let trace = TraceId::from_hex(CLIENT_TRACE).unwrap();
    // Consumer spans are named for the topic as the broker knows it (this test's namespace).
    let orders_process = format!("{} process", stack.broker.topic("orders"));
    let payments_process = format!("{} process", stack.broker.topic("payments"));
    let wanted = ["POST /orders", &orders_process, "provider charge", &payments_process, "notification email"];
    eventually(WAIT, "every hop's span exported", || async {
        let spans = spans_of(&exporter, trace);
        // A parent ends (and is exported) after its child: wait for the email's parent too.
        let emails_parented = named(&spans, "notification email")
            .iter()
            .all(|email| spans.iter().any(|s| s.span_context.span_id() == email.parent_span_id));
        wanted.iter().all(|name| !named(&spans, name).is_empty()) && emails_parented
    })
    .await;
    let spans = spans_of(&exporter, trace);
    let one = |name: &str| {
        let found = named(&spans, name);
        assert!(!found.is_empty(), "no {name} span in {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
        found[0].clone()
    };
    let intake = one("POST /orders");
    assert_eq!(intake.parent_span_id, SpanId::from_hex(CLIENT_SPAN).unwrap(), "the caller's span is the parent");

    // Every group that read OrderPlaced continued the request's span (payment, order-service
    // skipping it has no span: it handles only its own event types).
    let payment_group = stack.broker.group("payment");
    let payment = named(&spans, &orders_process)
        .into_iter()
        .find(|s| {
            s.attributes.iter().any(|kv| {
                kv.key.as_str() == "messaging.consumer.group.name" && kv.value.as_str() == payment_group.as_str()
            })
        })
        .expect("payment's span for OrderPlaced")
        .clone();
    assert_eq!(payment.parent_span_id, intake.span_context.span_id(), "payment continues the request");

    let charge = one("provider charge");
    assert_eq!(charge.parent_span_id, payment.span_context.span_id(), "the provider call is payment's child");
    assert!(charge.attributes.iter().any(|kv| kv.key.as_str() == "outcome" && kv.value.as_str() == "approved"));

    // PaymentAuthorized went through the payments outbox carrying payment's span.
    let settled = named(&spans, &payments_process);
    assert!(
        settled.iter().any(|s| s.parent_span_id == payment.span_context.span_id()),
        "order-service continues from payment's event"
    );
    // OrderPaid went through the orders outbox carrying order-service's span; notifications
    // continued it, and its email request is that record's child.
    let email = one("notification email");
    let parent = spans.iter().find(|s| s.span_context.span_id() == email.parent_span_id).expect("the email's parent");
    assert_eq!(parent.name, orders_process);
    assert!(
        settled.iter().any(|s| s.span_context.span_id() == parent.parent_span_id),
        "notifications continues from order-service's event"
    );
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace), "one trace");
}
