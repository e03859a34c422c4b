//! A Kafka Connect standalone worker of a test's own, running Debezium's Postgres connector with
//! the outbox EventRouter exactly as `connect/outbox-connector.json` configures it, on one test
//! database's `outbox` table, publishing into the test's namespace. The jars come from
//! `connect/pom.xml` (`scripts/test.sh` fetches them: `ORDERFLOW_CONNECT_LIBS`,
//! `ORDERFLOW_CONNECT_PLUGINS`). Dropping it kills the worker and drops its replication slot (a
//! slot left behind would hold WAL and keep the database from being dropped).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::{Process, TestDatabase, broker::TestBroker, broker::free_port, http};

pub struct ConnectWorker {
    process: Option<Process>,
    dir: PathBuf,
    /// The worker's REST API.
    pub url: String,
    /// The connector's name, slot and the database it reads.
    pub name: String,
    pub slot: String,
    db_url: String,
}

impl ConnectWorker {
    /// Starts a worker with the outbox connector on `db` and returns once its task runs.
    pub async fn spawn(broker: &TestBroker, db: &TestDatabase) -> ConnectWorker {
        let libs = env_dir("ORDERFLOW_CONNECT_LIBS");
        let plugins = env_dir("ORDERFLOW_CONNECT_PLUGINS");
        let dir = std::env::temp_dir().join(format!("oft-connect-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let worker = [
            ("bootstrap.servers", broker.bootstrap.clone()),
            ("key.converter", "org.apache.kafka.connect.storage.StringConverter".into()),
            ("value.converter", "org.apache.kafka.connect.json.JsonConverter".into()),
            ("offset.storage.file.filename", dir.join("offsets").display().to_string()),
            ("offset.flush.interval.ms", "1000".into()),
            ("plugin.path", plugins.display().to_string()),
            ("listeners", format!("http://127.0.0.1:{port}")),
        ];
        write_properties(&dir.join("worker.properties"), &worker);
        let connector = connector_config(broker, db);
        let name = connector["name"].as_str().unwrap().to_string();
        let slot = connector["slot.name"].as_str().unwrap().to_string();
        let entries: Vec<(&str, String)> =
            connector.as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v.as_str().unwrap().to_string())).collect();
        write_properties(&dir.join("connector.properties"), &entries);
        let java = std::env::var("ORDERFLOW_JAVA").unwrap_or_else(|_| "java".into());
        let log = std::fs::File::create(dir.join("connect.log")).unwrap();
        let log4j = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/kafka/log4j2.properties");
        let process = Process::spawn(
            Command::new(java)
                .args(["-Xms64m", "-Xmx512m", "-XX:+UseG1GC"])
                .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
                .arg("-cp")
                .arg(format!("{}/*", libs.display()))
                .arg("org.apache.kafka.connect.cli.ConnectStandalone")
                .arg(dir.join("worker.properties"))
                .arg(dir.join("connector.properties"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        let mut worker = ConnectWorker {
            process: Some(process),
            dir,
            url: format!("http://127.0.0.1:{port}"),
            name,
            slot,
            db_url: db.url.clone(),
        };
        worker.wait_running(Duration::from_secs(120)).await;
        worker
    }

    /// The connector's status (`GET /connectors/<name>/status`), if the worker answers.
    pub async fn status(&self) -> Option<Value> {
        let response = http().get(format!("{}/connectors/{}/status", self.url, self.name)).send().await.ok()?;
        response.status().is_success().then_some(())?;
        response.json().await.ok()
    }

    async fn wait_running(&mut self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status().await {
                let task = &status["tasks"][0];
                if status["connector"]["state"] == "RUNNING" && task["state"] == "RUNNING" {
                    return;
                }
                if task["state"] == "FAILED" {
                    panic!("the connector's task failed: {}\n{}", task["trace"], self.log_tail());
                }
            }
            if let Some(process) = &mut self.process
                && let Ok(Some(exit)) = process.0.try_wait()
            {
                panic!("Kafka Connect exited ({exit}) before its connector ran:\n{}", self.log_tail());
            }
            assert!(started.elapsed() < limit, "the connector was not running after {limit:?}:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The end of the worker's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("connect.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(40).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for ConnectWorker {
    fn drop(&mut self) {
        drop(self.process.take());
        let (url, slot) = (self.db_url.clone(), self.slot.clone());
        // Drop runs inside the test's runtime: the slot goes on a runtime of its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(drop_slot(&url, &slot))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("the replication slot {} was not dropped: {dropped:?}", self.slot);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Drops `slot`, ending the walsender that still holds it (its worker was just killed).
async fn drop_slot(db_url: &str, slot: &str) -> Result<(), String> {
    let mut conn = PgConnection::connect(db_url).await.map_err(|e| e.to_string())?;
    for _ in 0..100 {
        let (exists, active): (bool, Option<i32>) =
            sqlx::query_as("SELECT count(*) > 0, max(active_pid) FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
        match (exists, active) {
            (false, _) => return Ok(()),
            (true, Some(pid)) => {
                let _ = sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut conn).await;
            }
            (true, None) => {
                let _ = sqlx::query("SELECT pg_drop_replication_slot($1)").bind(slot).execute(&mut conn).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("slot {slot} still there"))
}

/// `connect/outbox-connector.json` with its `${OUTBOX_*}` placeholders filled in for `db`, named,
/// and routing to the test's namespace (as the relay's `namespace` setting does).
pub fn connector_config(broker: &TestBroker, db: &TestDatabase) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../connect/outbox-connector.json");
    let template = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let url = reqwest::Url::parse(&db.url).expect("the test database's URL");
    let filled = template
        .replace("${OUTBOX_DB_HOST}", url.host_str().unwrap())
        .replace("${OUTBOX_DB_PORT}", &url.port().unwrap_or(5432).to_string())
        .replace("${OUTBOX_DB_USER}", url.username())
        .replace("${OUTBOX_DB_PASSWORD}", url.password().unwrap_or(""))
        .replace("${OUTBOX_DATABASE}", &db.name);
    let mut config: Value = serde_json::from_str(&filled).unwrap();
    assert!(!filled.contains("${OUTBOX_"), "a placeholder the test does not fill: {filled}");
    config["name"] = format!("orderflow-outbox-{}", db.name).into();
    let route = config["transforms.outbox.route.topic.replacement"].as_str().unwrap().to_string();
    config["transforms.outbox.route.topic.replacement"] = format!("{}{route}", broker.namespace).into();
    config
}

fn env_dir(name: &str) -> PathBuf {
    let dir = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: run the suite with ./scripts/test.sh, which fetches Kafka Connect")
    });
    let dir = PathBuf::from(dir);
    assert!(dir.is_dir(), "{name}={} is not a directory: run ./scripts/test.sh again", dir.display());
    dir
}

/// A Java properties file: one `key=value` per line (the values here hold no newlines or
/// backslashes).
fn write_properties(path: &Path, entries: &[(&str, String)]) {
    let text: String = entries.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    assert!(!text.contains('\\'), "a backslash would need escaping: {text}");
    std::fs::write(path, text).unwrap();
}
