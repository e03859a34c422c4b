//! The lag exporter against a real broker: lag in records and in seconds per group, topic and
//! partition, read from the broker alone — a group with nobody consuming still shows its lag
//! growing — and the DLT triage group's lag is the untriaged dead letters. Each test's exporter
//! reads its test's namespace only.

use std::time::Duration;

use orderflow_consumer_runtime::dlt_tools;
use orderflow_lag_exporter::{ExporterSettings, broker_view::ReaderSettings};
use orderflow_tests::{Running, broker::TestBroker, consumer::metric, intake::eventually};

const WAIT: Duration = Duration::from_secs(60);

struct Exporter {
    url: String,
    _running: Running,
    http: reqwest::Client,
}

impl Exporter {
    async fn start(broker: &TestBroker, groups: &[&str]) -> Exporter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let settings = ExporterSettings {
            reader: ReaderSettings {
                kafka: broker.settings(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                triage_group: Some("orderflow-dlt-triage".into()),
                timeout: Duration::from_secs(5),
            },
            interval: Duration::from_millis(300),
        };
        let running = Running::spawn(move |stop| {
            orderflow_lag_exporter::run(settings, listener, prometheus::Registry::new(), stop)
        });
        Exporter { url, _running: running, http: orderflow_http::client().no_proxy().build().unwrap() }
    }

    async fn metrics(&self) -> String {
        self.http.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap()
    }

    async fn value(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines().any(|l| l.starts_with(series)).then(|| metric(&text, series))
    }
}

fn series(name: &str, group: &str, topic: &str, partition: i32) -> String {
    format!(r#"{name}{{group="{group}",partition="{partition}",topic="{topic}"}}"#)
}

async fn produce(broker: &TestBroker, topic: &str, partition: i32, count: usize) {
    let producer = broker.producer();
    let topic = &broker.topic(topic);
    for i in 0..count {
        let payload = format!("record {i}");
        let record = rdkafka::producer::FutureRecord::to(topic).key("k").payload(&payload).partition(partition);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_with_nobody_consuming_shows_its_lag_growing_per_partition() {
    let broker = TestBroker::spawn();
    broker.create_topic("orders", 2).await;
    produce(&broker, "orders", 0, 10).await;
    produce(&broker, "orders", 1, 4).await;
    // The group consumed part of partition 0 and all of partition 1, then every member died.
    broker.commit("payment", "orders", 0, 6);
    broker.commit("payment", "orders", 1, 4);
    let exporter = Exporter::start(&broker, &["payment"]).await;
    let (group, topic) = (broker.group("payment"), broker.topic("orders"));

    let lag = |p| series("orderflow_group_lag_messages", &group, &topic, p);
    eventually(WAIT, "lag 4 on partition 0", || async { exporter.value(&lag(0)).await == Some(4.0) }).await;
    assert_eq!(exporter.value(&lag(1)).await, Some(0.0), "partition 1 is caught up");
    assert_eq!(exporter.value(&series("orderflow_group_lag_seconds", &group, &topic, 1)).await, Some(0.0));
    // The broker lists the group (it has commits) with no member.
    let members = exporter.value(&format!(r#"orderflow_group_members{{group="{group}"}}"#)).await;
    assert_eq!(members, Some(0.0), "nobody consuming");
    assert_eq!(exporter.value(&series("orderflow_group_committed_offset", &group, &topic, 0)).await, Some(6.0));
    assert_eq!(
        exporter.value(&format!(r#"orderflow_kafka_partition_high_watermark{{partition="0",topic="{topic}"}}"#)).await,
        Some(10.0)
    );

    // Nobody consumes: the lag in records and in seconds keeps growing.
    let seconds = series("orderflow_group_lag_seconds", &group, &topic, 0);
    eventually(WAIT, "lag in seconds reported", || async { exporter.value(&seconds).await.is_some_and(|s| s > 0.0) })
        .await;
    let first = exporter.value(&seconds).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    produce(&broker, "orders", 0, 5).await;
    eventually(WAIT, "lag 9 on partition 0", || async { exporter.value(&lag(0)).await == Some(9.0) }).await;
    let later = exporter.value(&seconds).await.unwrap();
    assert!(later >= first + 1.5, "the oldest unconsumed record ages: {first} then {later}");
    assert!(later < 60.0, "measured from the record's time, not from the epoch: {later}");

    // The group catches up: lag 0 in records and seconds.
    broker.commit("payment", "orders", 0, 15);
    eventually(WAIT, "lag 0 after the commit", || async { exporter.value(&lag(0)).await == Some(0.0) }).await;
    assert_eq!(exporter.value(&seconds).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consuming_group_and_untriaged_dead_letters_are_reported() {
    let broker = TestBroker::spawn();
    broker.create_topic("orders", 1).await;
    broker.create_topic("orders.analytics.DLT", 1).await;
    produce(&broker, "orders", 0, 3).await;
    produce(&broker, "orders.analytics.DLT", 0, 2).await;
    let exporter = Exporter::start(&broker, &["analytics"]).await;
    let (topic, dlt) = (broker.topic("orders"), broker.topic("orders.analytics.DLT"));

    let triage = series("orderflow_group_lag_messages", &broker.group("orderflow-dlt-triage"), &dlt, 0);
    eventually(WAIT, "two untriaged dead letters", || async { exporter.value(&triage).await == Some(2.0) }).await;

    // A live member consumes one record and commits.
    let consumer: rdkafka::consumer::StreamConsumer =
        broker.settings().consumer("a-member", &broker.group("analytics")).create().unwrap();
    rdkafka::consumer::Consumer::subscribe(&consumer, &[&topic]).unwrap();
    let message = tokio::time::timeout(WAIT, consumer.recv()).await.unwrap().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(rdkafka::Message::offset(&message) + 1)).unwrap();
    rdkafka::consumer::Consumer::commit(&consumer, &list, rdkafka::consumer::CommitMode::Sync).unwrap();
    let analytics = series("orderflow_group_lag_messages", &broker.group("analytics"), &topic, 0);
    eventually(WAIT, "the analytics group's lag 2", || async { exporter.value(&analytics).await == Some(2.0) }).await;

    // Triaged with the operator's tool (`orderflow-dlt triage`): one record, then the rest.
    let marks = dlt_tools::mark_triaged(&broker.settings(), &dlt, Some(0)).unwrap();
    assert_eq!(marks, vec![(0, 1)]);
    eventually(WAIT, "one left to triage", || async { exporter.value(&triage).await == Some(1.0) }).await;
    let marks = dlt_tools::mark_triaged(&broker.settings(), &dlt, None).unwrap();
    assert_eq!(marks, vec![(0, 2)]);
    let again = dlt_tools::mark_triaged(&broker.settings(), &dlt, Some(0)).unwrap();
    assert_eq!(again, vec![(0, 2)], "triage never moves backwards");
    eventually(WAIT, "nothing left to triage", || async { exporter.value(&triage).await == Some(0.0) }).await;
    let text = exporter.metrics().await;
    assert!(metric(&text, r#"orderflow_lag_exporter_polls_total{result="ok"}"#) >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_consumer_groups_and_the_exporter_agree_on_every_partition() {
    // Kafka's own `kafka-consumer-groups --describe` is the second opinion on what the exporter
    // reports: the same committed offset and lag on every partition the group committed.
    let broker = TestBroker::spawn();
    broker.create_topic("orders", 4).await;
    for (partition, count) in [(0, 7), (1, 3), (2, 12), (3, 0)] {
        produce(&broker, "orders", partition, count).await;
    }
    for (partition, offset) in [(0, 5), (1, 3), (2, 1), (3, 0)] {
        broker.commit("payment", "orders", partition, offset);
    }
    let exporter = Exporter::start(&broker, &["payment"]).await;
    let (group, topic) = (broker.group("payment"), broker.topic("orders"));
    let lag = |p| series("orderflow_group_lag_messages", &group, &topic, p);
    eventually(WAIT, "the exporter's first read", || async { exporter.value(&lag(2)).await == Some(11.0) }).await;

    let (bootstrap, described) = (broker.bootstrap.clone(), group.clone());
    let kafka = tokio::task::spawn_blocking(move || orderflow_tools::kafka_cli::describe_group(&bootstrap, &described))
        .await
        .unwrap()
        .expect("kafka-consumer-groups --describe");
    assert_eq!(kafka.len(), 4, "{kafka:?}");
    for row in kafka {
        assert_eq!(row.topic, topic);
        let committed = series("orderflow_group_committed_offset", &group, &topic, row.partition);
        assert_eq!(
            exporter.value(&committed).await,
            row.current_offset.map(|o| o as f64),
            "partition {}",
            row.partition
        );
        assert_eq!(exporter.value(&lag(row.partition)).await, row.lag.map(|l| l as f64), "partition {}", row.partition);
        let high =
            format!(r#"orderflow_kafka_partition_high_watermark{{partition="{}",topic="{topic}"}}"#, row.partition);
        assert_eq!(exporter.value(&high).await, Some(row.log_end_offset as f64), "partition {}", row.partition);
    }
}
