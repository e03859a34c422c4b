//! The Confluent wire-format codec against a live registry: schema evolution across reader
//! versions, and the typed errors a consumer routes on (retry vs dead-letter).

use std::time::Duration;

use apache_avro::types::Value;
use orderflow_schemas::{Catalog, CodecError, EventCodec, wire};
use orderflow_tests::registry::TestRegistry;
use schema_registry_converter::{
    async_impl::{easy_avro::EasyAvroEncoder, schema_registry::SrSettings},
    schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema},
};

const TIMEOUT: Duration = Duration::from_secs(5);

fn money(amount: i64) -> Value {
    Value::Record(vec![("amount_minor".into(), Value::Long(amount)), ("currency".into(), Value::String("EUR".into()))])
}

fn order_placed(version: u32, order_id: uuid::Uuid) -> Value {
    let line = Value::Record(vec![
        ("sku".into(), Value::String("SKU-1".into())),
        ("quantity".into(), Value::Int(2)),
        ("unit_price_minor".into(), Value::Long(1250)),
    ]);
    let mut fields = vec![
        ("order_id".into(), Value::Uuid(order_id)),
        ("customer_id".into(), Value::String("c-42".into())),
        ("lines".into(), Value::Array(vec![line])),
        ("total".into(), money(2500)),
        ("placed_at".into(), Value::TimestampMillis(1_764_000_000_000)),
    ];
    if version >= 2 {
        fields.push(("customer_email".into(), Value::Union(1, Box::new(Value::String("ada@example.com".into())))));
    }
    Value::Record(fields)
}

fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let Value::Record(fields) = value else { panic!("not a record: {value:?}") };
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[tokio::test]
async fn a_v1_consumer_reads_v2_records_and_a_v2_consumer_reads_v1_records() {
    let registry = TestRegistry::spawn().await;
    let catalog = Catalog::embedded();
    let producer = EventCodec::new(registry.access(), TIMEOUT).unwrap();
    let v1_consumer =
        EventCodec::with_readers(registry.access(), TIMEOUT, EventCodec::readers_at(&[("OrderPlaced", 1)])).unwrap();
    let order_id = uuid::Uuid::new_v4();

    let v2_bytes = producer.encode(catalog.get("OrderPlaced", 2).unwrap(), order_placed(2, order_id)).await.unwrap();
    let seen_by_v1 = v1_consumer.decode(&v2_bytes).await.unwrap();
    assert_eq!(seen_by_v1.event_type, "OrderPlaced");
    assert!(seen_by_v1.resolved);
    assert!(field(&seen_by_v1.value, "customer_email").is_none(), "v1 has no such field");
    assert_eq!(field(&seen_by_v1.value, "customer_id"), Some(&Value::String("c-42".into())));

    let v1_bytes = producer.encode(catalog.get("OrderPlaced", 1).unwrap(), order_placed(1, order_id)).await.unwrap();
    let seen_by_v2 = producer.decode(&v1_bytes).await.unwrap();
    assert_eq!(
        field(&seen_by_v2.value, "customer_email"),
        Some(&Value::Union(0, Box::new(Value::Null))),
        "the v2 default"
    );
    assert_ne!(wire::split(&v1_bytes).unwrap().0, wire::split(&v2_bytes).unwrap().0, "two versions, two ids");
}

#[tokio::test]
async fn records_framed_by_schema_registry_converter_itself_decode_with_an_older_reader() {
    let registry = TestRegistry::spawn().await;
    let v2 = Catalog::embedded().get("OrderPlaced", 2).unwrap();
    let settings = SrSettings::new_builder(registry.url.clone())
        .set_basic_authorization(orderflow_tests::registry::WRITER, Some(&registry.password))
        .build()
        .unwrap();
    let encoder = EasyAvroEncoder::new(settings);
    let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
        "orders".into(),
        SuppliedSchema::new(Some(v2.full_name()), SchemaType::Avro, v2.text.clone()),
    );
    let bytes = encoder.encode_value(order_placed(2, uuid::Uuid::new_v4()), &strategy).await.unwrap();
    let subjects = registry.client().get("/subjects").await.body;
    assert_eq!(subjects, serde_json::json!(["orders-io.orderflow.events.OrderPlaced"]), "TopicRecordNameStrategy");

    let v1_consumer =
        EventCodec::with_readers(registry.access(), TIMEOUT, EventCodec::readers_at(&[("OrderPlaced", 1)])).unwrap();
    let decoded = v1_consumer.decode(&bytes).await.unwrap();
    assert!(field(&decoded.value, "customer_email").is_none());
}

#[tokio::test]
async fn several_event_types_share_one_topic_under_their_own_subjects() {
    let registry = TestRegistry::spawn().await;
    let codec = EventCodec::new(registry.access(), TIMEOUT).unwrap();
    let catalog = Catalog::embedded();
    let order_id = uuid::Uuid::new_v4();
    let cancelled = Value::Record(vec![
        ("order_id".into(), Value::Uuid(order_id)),
        ("customer_id".into(), Value::String("c-42".into())),
        ("reason".into(), Value::Enum(1, "INVENTORY_SHORTAGE".into())),
        ("refund_required".into(), Value::Boolean(true)),
        ("cancelled_at".into(), Value::TimestampMillis(1_764_000_000_000)),
    ]);
    let placed = codec.encode(catalog.latest("OrderPlaced").unwrap(), order_placed(2, order_id)).await.unwrap();
    let cancelled = codec.encode(catalog.latest("OrderCancelled").unwrap(), cancelled).await.unwrap();
    assert_eq!(codec.decode(&placed).await.unwrap().event_type, "OrderPlaced");
    assert_eq!(codec.decode(&cancelled).await.unwrap().event_type, "OrderCancelled");
    let subjects = registry.client().get("/subjects").await.body;
    assert_eq!(
        subjects,
        serde_json::json!(["orders-io.orderflow.events.OrderCancelled", "orders-io.orderflow.events.OrderPlaced"])
    );
}

#[tokio::test]
async fn an_unknown_schema_id_is_a_permanent_typed_error() {
    let registry = TestRegistry::spawn().await;
    let codec = EventCodec::new(registry.access(), TIMEOUT).unwrap();
    let err = codec.decode(&wire::frame(424_242, &[2, 4, 6])).await.unwrap_err();
    assert!(matches!(err, CodecError::UnknownSchemaId { id: 424_242, .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(err.class(), "unknown_schema_id");
}

#[tokio::test]
async fn bytes_without_the_magic_byte_or_with_a_broken_body_are_poison() {
    let registry = TestRegistry::spawn().await;
    let codec = EventCodec::new(registry.access(), TIMEOUT).unwrap();
    let err = codec.decode(b"{\"order_id\": 1}").await.unwrap_err();
    assert_eq!(err.class(), "bad_magic_byte");
    assert!(!err.is_retryable());
    assert_eq!(codec.decode(&[0, 0]).await.unwrap_err().class(), "truncated");

    let good = codec
        .encode(Catalog::embedded().latest("OrderPlaced").unwrap(), order_placed(2, uuid::Uuid::new_v4()))
        .await
        .unwrap();
    let (id, _) = wire::split(&good).unwrap();
    let err = codec.decode(&wire::frame(id, &[0xff, 0xff, 0xff])).await.unwrap_err();
    assert_eq!(err.class(), "undecodable_body", "{err}");
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(codec.decode(&trailing).await.unwrap_err().class(), "undecodable_body");
}

#[tokio::test]
async fn an_unreachable_registry_is_retryable() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let codec = EventCodec::new(&format!("http://127.0.0.1:{port}"), Duration::from_secs(2)).unwrap();
    let err = codec.decode(&wire::frame(1, &[0])).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.class(), "registry_unavailable");
    let err = codec
        .encode(Catalog::embedded().latest("OrderPlaced").unwrap(), order_placed(2, uuid::Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_value_that_does_not_match_its_schema_is_refused_before_it_is_sent() {
    let registry = TestRegistry::spawn().await;
    let codec = EventCodec::new(registry.access(), TIMEOUT).unwrap();
    let wrong = Value::Record(vec![("order_id".into(), Value::Int(7))]);
    let err = codec.encode(Catalog::embedded().latest("OrderPlaced").unwrap(), wrong).await.unwrap_err();
    assert_eq!(err.class(), "invalid_value");
    assert!(!err.is_retryable());
}
