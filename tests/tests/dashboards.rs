//! The Grafana dashboards and the alert rules on a live Prometheus (Debian's `prometheus`)
//! scraping the real stack under load: every panel's query returns data, every metric an alert
//! reads exists, and the alerts behave — a group that stops consuming fires the lag alert
//! (pending, then firing) which resolves once it is back; records to one key fire the skew
//! alert; poison fires the dead-letter alert. The rules run with their windows scaled from
//! minutes to seconds (`scaled_rules`), so the test takes about a minute.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use orderflow_lag_exporter::{ExporterSettings, broker_view::ReaderSettings};
use orderflow_tests::{
    Running,
    broker::free_port,
    intake::{eventually, sample_order},
    stack::TestStack,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn files() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/orderflow/files")
}

/// The rules with every window, offset and `for` in minutes turned into as many seconds, and
/// the thresholds that are durations in seconds divided by 60 likewise.
fn scaled_rules(text: &str) -> String {
    let mut out = text.to_string();
    for prefix in ["[", "offset ", "for: "] {
        let mut scaled = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(prefix) {
            let (before, after) = rest.split_at(at + prefix.len());
            scaled.push_str(before);
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() && after[digits.len()..].starts_with('m') {
                scaled.push_str(&format!("{digits}s"));
                rest = &after[digits.len() + 1..];
            } else {
                rest = after;
            }
        }
        scaled.push_str(rest);
        out = scaled;
    }
    for (threshold, seconds) in [("> 900", "> 15"), ("> 120", "> 2"), ("> 60", "> 1")] {
        assert!(out.contains(threshold), "the rules no longer compare against {threshold}: update the scaling");
        out = out.replace(threshold, seconds);
    }
    out
}

struct Prometheus {
    url: String,
    dir: PathBuf,
    child: Child,
    http: reqwest::Client,
}

impl Prometheus {
    fn start(targets: &[String]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("orderflow-prometheus-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = std::fs::read_to_string(files().join("prometheus/orderflow-rules.yaml")).unwrap();
        std::fs::write(dir.join("rules.yaml"), scaled_rules(&rules)).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: ['{}']\nscrape_configs:\n  - job_name: orderflow\n    static_configs:\n      - targets: [{}]\n",
            dir.join("rules.yaml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus is not installed (scripts/test.sh installs Debian's prometheus package)");
        Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child,
            http: orderflow_http::client().no_proxy().build().unwrap(),
        }
    }

    /// The samples an instant query returns (empty when Prometheus is not up yet).
    async fn query(&self, expr: &str) -> Vec<Value> {
        let Ok(response) =
            self.http.get(format!("{}/api/v1/query?query={}", self.url, percent_encoded(expr))).send().await
        else {
            return Vec::new();
        };
        let body: Value = response.json().await.unwrap_or_default();
        assert_ne!(body["status"], "error", "{expr}: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// (state, labels) of every active alert named `name`.
    async fn alerts(&self, name: &str) -> Vec<(String, Value)> {
        let Ok(response) = self.http.get(format!("{}/api/v1/alerts", self.url)).send().await else { return Vec::new() };
        let body: Value = response.json().await.unwrap_or_default();
        body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .map(|a| (a["state"].as_str().unwrap_or_default().to_string(), a["labels"].clone()))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("prometheus config, rules and log kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Serves a registry on `/metrics` at a free port; returns `host:port`.
async fn serve(registry: prometheus::Registry) -> (String, Running) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let running = Running::spawn(move |stop| orderflow_platform::metrics::serve(listener, registry, stop));
    (address, running)
}

/// Every panel query of every dashboard, with the group variable set to all groups.
fn panel_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(files().join("grafana")).unwrap() {
        let path = entry.unwrap().path();
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in board["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap().replace("$group", ".+");
                queries.push((board["title"].as_str().unwrap().into(), panel["title"].as_str().unwrap().into(), expr));
            }
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboards_and_alerts_answer_from_a_live_prometheus_under_load() {
    let mut stack = TestStack::spawn().await;
    // A group that never consumes, committed at the current end of `orders`: its lag is what
    // arrives from now on (the skew probe).
    let topic_end: Vec<i64> = {
        let consumer: rdkafka::consumer::BaseConsumer =
            stack.broker.settings().consumer("probe", &stack.broker.group("probe")).create().unwrap();
        let orders = stack.broker.topic("orders");
        (0..12)
            .map(|p| {
                rdkafka::consumer::Consumer::fetch_watermarks(&consumer, &orders, p, Duration::from_secs(5)).unwrap().1
            })
            .collect()
    };
    for (partition, end) in topic_end.iter().enumerate() {
        stack.broker.commit("skew-probe", "orders", partition as i32, *end);
    }

    let mut targets = vec![stack.api.url.trim_start_matches("http://").to_string()];
    let mut servers = Vec::new();
    let registries: Vec<prometheus::Registry> =
        stack.metrics.iter().map(|(_, r)| r.clone()).chain(stack.relays.iter().map(|r| r.registry.clone())).collect();
    for registry in registries {
        let (address, server) = serve(registry).await;
        targets.push(address);
        servers.push(server);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    targets.push(listener.local_addr().unwrap().to_string());
    let exporter_settings = ExporterSettings {
        reader: ReaderSettings {
            kafka: stack.broker.settings(),
            groups: ["payment", "order-service", "inventory", "skew-probe"].map(String::from).to_vec(),
            triage_group: Some(orderflow_consumer_runtime::dlt_tools::TRIAGE_GROUP.into()),
            timeout: Duration::from_secs(5),
        },
        interval: Duration::from_millis(500),
    };
    let _exporter = Running::spawn(move |stop| {
        orderflow_lag_exporter::run(exporter_settings, listener, prometheus::Registry::new(), stop)
    });
    let prometheus = Prometheus::start(&targets);
    let started = std::time::Instant::now();

    // Checkout traffic for the whole test, ~10 orders/s.
    let load_on = Arc::new(AtomicBool::new(true));
    let load = {
        let (url, on, http) = (stack.api.url.clone(), load_on.clone(), stack.api.http.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while on.load(Ordering::Relaxed) {
                n += 1;
                let _ = http
                    .post(format!("{url}/orders"))
                    .header("Idempotency-Key", format!("load-{n}"))
                    .json(&sample_order(&format!("c-{n}")))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Poison: every group dead-letters it; nobody triages.
    stack.broker.send_raw("orders", "poison", b"not an event").await;

    // Every panel answers.
    let queries = panel_queries();
    assert!(queries.len() >= 30, "{} panel queries", queries.len());
    let mut silent: BTreeSet<String> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        silent.clear();
        for (board, panel, expr) in &queries {
            if prometheus.query(expr).await.is_empty() {
                silent.insert(format!("{board} / {panel}: {expr}"));
            }
        }
        if silent.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(silent.is_empty(), "panels without data:\n{}", silent.into_iter().collect::<Vec<_>>().join("\n"));

    eprintln!("{:?} every panel answers", started.elapsed());
    // Every metric an alert reads exists.
    let rules = std::fs::read_to_string(files().join("prometheus/orderflow-rules.yaml")).unwrap();
    let mut in_expr = false;
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for line in rules.lines().map(str::trim) {
        if line.starts_with("expr:") {
            in_expr = true;
        } else if ["for:", "labels:", "annotations:", "- alert:", "- name:"].iter().any(|key| line.starts_with(key)) {
            in_expr = false;
        }
        if in_expr {
            names.extend(
                line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("orderflow_") && w.len() > "orderflow_".len()),
            );
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            !prometheus.query(&format!("count({name})")).await.is_empty(),
            "no series for {name}, which an alert reads"
        );
    }

    // Untriaged dead letters fire their alert.
    eventually(WAIT, "OrderflowDeadLettersUntriaged firing", || async {
        prometheus.alerts("OrderflowDeadLettersUntriaged").await.iter().any(|(state, _)| state == "firing")
    })
    .await;

    // Records to one key only: the probe group (its offsets moved to the end first, so the
    // background traffic does not dilute the skew) piles up lag on one partition.
    let consumer: rdkafka::consumer::BaseConsumer =
        stack.broker.settings().consumer("probe", &stack.broker.group("probe")).create().unwrap();
    let orders = stack.broker.topic("orders");
    for partition in 0..12 {
        let (_, end) =
            rdkafka::consumer::Consumer::fetch_watermarks(&consumer, &orders, partition, Duration::from_secs(5))
                .unwrap();
        stack.broker.commit("skew-probe", "orders", partition, end);
    }
    eprintln!("{:?} skew phase", started.elapsed());
    let producer = stack.broker.producer();
    let sends: Vec<_> = (0..300)
        .map(|i| {
            let payload = format!("hot {i}");
            let record = rdkafka::producer::FutureRecord::to(&orders).key("one-hot-key").payload(&payload);
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    for sent in sends {
        sent.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    eventually(WAIT, "OrderflowPartitionLagSkew firing for the probe", || async {
        prometheus
            .alerts("OrderflowPartitionLagSkew")
            .await
            .iter()
            .any(|(state, labels)| state == "firing" && labels["group"] == stack.broker.group("skew-probe"))
    })
    .await;

    eprintln!("{:?} skew fired", started.elapsed());
    // inventory stops under load: its lag grows, the alert goes pending, then fires.
    let inventory = stack.parts.pop().expect("inventory runs last");
    inventory.stop().await;
    let inventory_group = stack.broker.group("inventory");
    let inventory_alert = || async {
        prometheus
            .alerts("OrderflowConsumerLagGrowing")
            .await
            .into_iter()
            .filter(|(_, labels)| labels["group"] == inventory_group)
            .map(|(state, _)| state)
            .next()
    };
    let mut states: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while states.last().is_none_or(|s| s != "firing") {
        assert!(tokio::time::Instant::now() < deadline, "OrderflowConsumerLagGrowing for inventory: {states:?}");
        if let Some(state) = inventory_alert().await.filter(|s| states.last() != Some(s)) {
            states.push(state);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(states.first().map(String::as_str), Some("pending"), "pending before firing: {states:?}");

    eprintln!("{:?} lag alert {states:?}", started.elapsed());
    // Back: the lag returns to where it was and the alert resolves.
    stack.start_inventory();
    eventually(WAIT, "inventory caught up and its alert resolved", || async {
        let lag = prometheus.query(&format!(r#"sum(orderflow_group_lag_messages{{group="{inventory_group}"}})"#)).await;
        let caught_up = lag.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok()).is_some_and(|v| v < 50.0);
        caught_up && inventory_alert().await.is_none()
    })
    .await;

    load_on.store(false, Ordering::Relaxed);
    load.await.unwrap();
}

#[test]
fn the_rules_scale_from_minutes_to_seconds() {
    let scaled = scaled_rules("expr: rate(x[5m]) > 0 and y offset 10m > 900 > 120 > 60\nfor: 15m\n");
    assert_eq!(scaled, "expr: rate(x[5s]) > 0 and y offset 10s > 15 > 2 > 1\nfor: 15s\n");
}
