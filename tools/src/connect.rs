//! A Kafka Connect standalone worker running Debezium's Postgres connector with the outbox
//! EventRouter exactly as `connect/outbox-connector.json` configures it, on one database's
//! `outbox` table, publishing into a namespace (as the relay's `namespace` setting does). The
//! jars come from `connect/pom.xml` (`ensure_connect` in `scripts/lib_kafka.sh` fetches them and
//! exports `ORDERFLOW_CONNECT_LIBS` and `ORDERFLOW_CONNECT_PLUGINS`). Dropping it kills the
//! worker and drops its replication slot (a slot left behind would hold WAL and keep the
//! database from being dropped). The test suite and the benchmark's `cdc` phase run it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// Where the connector reads and writes.
pub struct Outbox<'a> {
    /// The outbox database's URL, and its name.
    pub database_url: &'a str,
    pub database: &'a str,
    pub bootstrap: &'a str,
    /// Prefixed to every topic the connector routes to.
    pub namespace: &'a str,
}

pub struct ConnectWorker {
    process: Option<Child>,
    dir: PathBuf,
    /// The worker's REST API.
    pub url: String,
    /// The connector's name and replication slot.
    pub name: String,
    pub slot: String,
    database_url: String,
}

impl ConnectWorker {
    /// Starts a worker with the connector of `template` (`connect/outbox-connector.json`) on
    /// `outbox`; returns once its task runs.
    pub async fn spawn(template: &Path, outbox: &Outbox<'_>) -> anyhow::Result<ConnectWorker> {
        let libs = env_dir("ORDERFLOW_CONNECT_LIBS")?;
        let plugins = env_dir("ORDERFLOW_CONNECT_PLUGINS")?;
        let dir = std::env::temp_dir().join(format!("orderflow-connect-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let worker = [
            ("bootstrap.servers", outbox.bootstrap.to_string()),
            ("key.converter", "org.apache.kafka.connect.storage.StringConverter".into()),
            ("value.converter", "org.apache.kafka.connect.json.JsonConverter".into()),
            ("offset.storage.file.filename", dir.join("offsets").display().to_string()),
            ("offset.flush.interval.ms", "1000".into()),
            ("plugin.path", plugins.display().to_string()),
            ("listeners", format!("http://127.0.0.1:{port}")),
        ];
        write_properties(&dir.join("worker.properties"), &worker)?;
        let connector = connector_config(template, outbox)?;
        let text = |key: &str| connector[key].as_str().map(str::to_string).context(format!("no {key}"));
        let (name, slot) = (text("name")?, text("slot.name")?);
        let entries: Vec<(&str, String)> = connector
            .as_object()
            .context("the connector config is not an object")?
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
            .collect();
        write_properties(&dir.join("connector.properties"), &entries)?;
        let java = std::env::var("ORDERFLOW_JAVA").unwrap_or_else(|_| "java".into());
        let log = std::fs::File::create(dir.join("connect.log"))?;
        let mut command = Command::new(&java);
        command.args(["-Xms64m", "-Xmx512m", "-XX:+UseG1GC"]);
        if let Ok(config) = std::env::var("ORDERFLOW_KAFKA_CONFIG_DIR") {
            command.arg(format!("-Dlog4j2.configurationFile={config}/log4j2.properties"));
        }
        let process = command
            .arg("-cp")
            .arg(format!("{}/*", libs.display()))
            .arg("org.apache.kafka.connect.cli.ConnectStandalone")
            .arg(dir.join("worker.properties"))
            .arg(dir.join("connector.properties"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting Kafka Connect with {java}"))?;
        let mut worker = ConnectWorker {
            process: Some(process),
            dir,
            url: format!("http://127.0.0.1:{port}"),
            name,
            slot,
            database_url: outbox.database_url.to_string(),
        };
        worker.wait_running(Duration::from_secs(120)).await?;
        Ok(worker)
    }

    /// The connector's status (`GET /connectors/<name>/status`), if the worker answers.
    pub async fn status(&self) -> Option<Value> {
        let http = orderflow_http::client().no_proxy().build().ok()?;
        let response = http.get(format!("{}/connectors/{}/status", self.url, self.name)).send().await.ok()?;
        response.status().is_success().then_some(())?;
        response.json().await.ok()
    }

    async fn wait_running(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status().await {
                let task = &status["tasks"][0];
                if status["connector"]["state"] == "RUNNING" && task["state"] == "RUNNING" {
                    return Ok(());
                }
                if task["state"] == "FAILED" {
                    bail!("the connector's task failed: {}\n{}", task["trace"], self.log_tail());
                }
            }
            if let Some(process) = &mut self.process
                && let Ok(Some(exit)) = process.try_wait()
            {
                bail!("Kafka Connect exited ({exit}) before its connector ran:\n{}", self.log_tail());
            }
            if started.elapsed() > limit {
                bail!("the connector was not running after {limit:?}:\n{}", self.log_tail());
            }
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
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        let (url, slot) = (self.database_url.clone(), self.slot.clone());
        // Drop may run inside a runtime: the slot goes on a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.map_err(|e| e.to_string())?.block_on(drop_slot(&url, &slot))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("the replication slot {} was not dropped: {dropped:?}", self.slot);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Drops `slot`, ending the walsender that still holds it (its worker was just killed).
async fn drop_slot(database_url: &str, slot: &str) -> Result<(), String> {
    let mut conn = PgConnection::connect(database_url).await.map_err(|e| e.to_string())?;
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

/// The connector of `template` with its `${OUTBOX_*}` placeholders filled in for `outbox`, named
/// after its database, and routing into its namespace.
pub fn connector_config(template: &Path, outbox: &Outbox<'_>) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(template).with_context(|| format!("reading {}", template.display()))?;
    let url = reqwest::Url::parse(outbox.database_url).context("the outbox database's URL")?;
    let filled = text
        .replace("${OUTBOX_DB_HOST}", url.host_str().unwrap_or("localhost"))
        .replace("${OUTBOX_DB_PORT}", &url.port().unwrap_or(5432).to_string())
        .replace("${OUTBOX_DB_USER}", &decoded(url.username()))
        .replace("${OUTBOX_DB_PASSWORD}", &decoded(url.password().unwrap_or("")))
        .replace("${OUTBOX_DATABASE}", outbox.database);
    if filled.contains("${OUTBOX_") {
        bail!("{} has a placeholder this tool does not fill", template.display());
    }
    let mut config: Value = serde_json::from_str(&filled).with_context(|| format!("parsing {}", template.display()))?;
    config["name"] = format!("orderflow-outbox-{}", outbox.database).into();
    let route = config["transforms.outbox.route.topic.replacement"].as_str().unwrap_or("${routedByValue}");
    config["transforms.outbox.route.topic.replacement"] = format!("{}{route}", outbox.namespace).into();
    Ok(config)
}

/// A URL's user or password as written in the URL, percent-decoded.
fn decoded(part: &str) -> String {
    percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned()
}

fn env_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(std::env::var_os(name).with_context(|| {
        format!("{name} is not set: run this through scripts/ (ensure_connect fetches Kafka Connect and exports it)")
    })?);
    if !dir.is_dir() {
        bail!("{name}={} is not a directory: run the script again to fetch it", dir.display());
    }
    Ok(dir)
}

/// A Java properties file: one `key=value` per line.
fn write_properties(path: &Path, entries: &[(&str, String)]) -> anyhow::Result<()> {
    // Values with a backslash or a line break would need escaping; none of ours has one.
    if let Some((key, _)) = entries.iter().find(|(_, v)| v.contains(['\\', '\n', '\r'])) {
        bail!("{key} of {} would need escaping", path.display());
    }
    let text: String = entries.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    Ok(std::fs::write(path, text)?)
}
