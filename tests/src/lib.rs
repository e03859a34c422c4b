//! The harness every suite shares. Each test gets its own Postgres database (and, in later
//! suites, its own topics and consumer group), so tests run in parallel without meeting.
//!
//! Postgres comes from `ORDERFLOW_TEST_PG_ADMIN_URL`, which `scripts/test.sh` sets to the
//! project-local cluster it starts.

pub mod broker;
pub mod browser;
pub mod consumer;
pub mod history;
pub mod intake;
mod kafka_node;
pub mod postgres;
pub mod proxy;
pub mod registry;
pub mod stack;
pub mod tls;

use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{sync::oneshot, task::JoinHandle};

/// Admin URL of the Postgres the suites use.
pub fn admin_url() -> String {
    std::env::var("ORDERFLOW_TEST_PG_ADMIN_URL").unwrap_or_else(|_| {
        panic!("ORDERFLOW_TEST_PG_ADMIN_URL is not set: run the suite with ./scripts/test.sh, which starts Postgres")
    })
}

/// A workspace binary beside the test harness (`scripts/test.sh` builds them all first:
/// `cargo test` builds test harnesses, not plain binaries).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps").join(name);
    assert!(bin.exists(), "{} not built: run `cargo build --workspace --bins` (scripts/test.sh does)", bin.display());
    bin
}

/// The project's Python (a virtualenv with Confluent's client and schemathesis), which
/// `scripts/test.sh` installs and names in ORDERFLOW_PYTHON.
pub fn python() -> std::path::PathBuf {
    let python = std::env::var_os("ORDERFLOW_PYTHON").unwrap_or_else(|| {
        panic!("ORDERFLOW_PYTHON is not set: run the suite with ./scripts/test.sh, which installs it")
    });
    std::path::PathBuf::from(python)
}

/// A plain HTTP client (TLS as every orderflow binary has it); one per call, so no pooled
/// connection outlives the test's runtime.
pub fn http() -> reqwest::Client {
    orderflow_http::client().build().expect("an HTTP client")
}

/// A database made for one test.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates `oft_<random>` on the test server.
    pub async fn create() -> TestDatabase {
        Self::create_with("").await
    }

    /// Creates `oft_<random>` with extra `CREATE DATABASE` options (e.g. `TABLESPACE small`).
    pub async fn create_with(options: &str) -> TestDatabase {
        Self::create_on(&admin_url(), options).await
    }

    /// As [`Self::create_with`], on the server `admin` (e.g. a test's own).
    pub async fn create_on(admin: &str, options: &str) -> TestDatabase {
        let admin = admin.to_string();
        let name = format!("oft_{}", uuid::Uuid::new_v4().simple());
        let pool =
            PgPoolOptions::new().max_connections(1).connect(&admin).await.expect("connect to the admin database");
        sqlx::query(&format!("CREATE DATABASE \"{name}\" {options}"))
            .execute(&pool)
            .await
            .expect("create test database");
        pool.close().await;
        let base = admin.rsplit_once('/').map(|(base, _)| base.to_string()).unwrap_or(admin);
        TestDatabase { url: format!("{base}/{name}"), name }
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new().max_connections(20).connect(&self.url).await.expect("connect to the test database")
    }
}

/// A background task stopped (gracefully) on drop.
pub struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub fn spawn<F, Fut>(start: F) -> Running
    where
        F: FnOnce(futures::future::BoxFuture<'static, ()>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(start(Box::pin(async move {
            let _ = stopped.await;
        })));
        Running { stop: Some(stop), task: Some(task) }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("task panicked").expect("task failed");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A child process SIGKILLed (after a SIGCONT, should it be stopped) when the test ends,
/// however it ends.
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        if self.0.try_wait().is_ok_and(|exited| exited.is_none()) {
            let _ = self.signal("CONT");
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    pub fn spawn(command: &mut std::process::Command) -> Process {
        Process(command.spawn().unwrap_or_else(|e| panic!("starting {:?}: {e}", command.get_program())))
    }

    /// Sends a signal by name (`STOP`, `CONT`, `KILL`, …); true when it was delivered.
    pub fn signal(&self, name: &str) -> bool {
        std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.0.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }
}
