//! A schema registry per test: its own database, port 0, its own stop signal, and its own users
//! file with a writer and a reader whose passwords are made up per registry.

use std::path::PathBuf;

use orderflow_registry::AccessSettings;
use orderflow_schemas::{CompatibilityLevel, RegistryAccess};
use tokio::net::TcpListener;

use crate::{Running, TestDatabase};

/// The users in every test registry's users file.
pub const WRITER: &str = "schema-admin";
pub const READER: &str = "schema-reader";

pub struct TestRegistry {
    pub url: String,
    pub db_url: String,
    /// The users file (`WRITER` may write, `READER` only read) and the password of both.
    pub users_file: PathBuf,
    pub password: String,
    _users_file: TempFile,
    running: Running,
}

/// A users file for [`WRITER`] and [`READER`] with `password` (bcrypt at its least cost: the
/// check's speed is not what these tests are about).
pub fn write_users_file(password: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("orderflow-registry-users-{}", uuid::Uuid::new_v4().simple()));
    let hash = |_| bcrypt::hash(password, 4).unwrap();
    let text = format!("# test users\n{WRITER}:{}:write\n{READER}:{}:read\n", hash(0), hash(1));
    std::fs::write(&path, text).unwrap();
    path
}

impl TestRegistry {
    /// A registry on a fresh database, default level BACKWARD (Confluent's default).
    pub async fn spawn() -> TestRegistry {
        let db = TestDatabase::create().await;
        Self::spawn_on(&db.url).await
    }

    /// A registry holding every event schema this build knows, registered with the writer's
    /// credentials as the chart's hook does; the services then need no credentials of their own.
    pub async fn spawn_with_catalog() -> TestRegistry {
        let registry = Self::spawn().await;
        registry.register_catalog().await;
        registry
    }

    /// Registers every embedded schema version, oldest first (`orderflow-schemas register`).
    pub async fn register_catalog(&self) {
        let client = orderflow_schemas::registry_client::RegistryClient::new(self.access());
        orderflow_schemas::workflow::register(orderflow_schemas::Catalog::embedded(), &client)
            .await
            .expect("register the catalog");
    }

    /// A registry on an existing database (e.g. to restart one).
    pub async fn spawn_on(db_url: &str) -> TestRegistry {
        Self::spawn_with(db_url, |access| access).await
    }

    /// A registry on `db_url` whose access settings (users file, open reads) `adjust` may change.
    pub async fn spawn_with(db_url: &str, adjust: impl FnOnce(AccessSettings) -> AccessSettings) -> TestRegistry {
        let password = uuid::Uuid::new_v4().simple().to_string();
        let users_file = write_users_file(&password);
        let access = adjust(AccessSettings { users_file: Some(users_file.clone()), jwt: None, anonymous_reads: true });
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(db_url)
            .await
            .expect("connect registry db");
        orderflow_registry::migrate(&pool).await.expect("migrate registry db");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let running = Running::spawn(move |stop| {
            orderflow_registry::run(listener, pool, CompatibilityLevel::Backward, access, stop)
        });
        TestRegistry {
            url,
            db_url: db_url.to_string(),
            _users_file: TempFile(users_file.clone()),
            users_file,
            password,
            running,
        }
    }

    /// Access as the writer (what the schema workflow and a producer registering new schemas use).
    pub fn access(&self) -> RegistryAccess {
        RegistryAccess::basic(&self.url, WRITER, &self.password)
    }

    /// Access without credentials.
    pub fn anonymous(&self) -> RegistryAccess {
        RegistryAccess::anonymous(&self.url)
    }

    /// Stops it and waits until the port is closed.
    pub async fn stop(self) {
        let TestRegistry { running, _users_file, .. } = self;
        running.stop().await
    }

    /// Raw HTTP as the writer.
    pub fn client(&self) -> RegistryHttp {
        RegistryHttp::new(self.access())
    }

    /// Raw HTTP without credentials.
    pub fn anonymous_client(&self) -> RegistryHttp {
        RegistryHttp::new(self.anonymous())
    }
}

/// A file removed when the test is done with it.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Raw HTTP against the registry: tests see statuses and bodies exactly as clients do.
#[derive(Clone)]
pub struct RegistryHttp {
    pub base: String,
    access: RegistryAccess,
    http: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: serde_json::Value,
    pub text: String,
}

impl Answer {
    pub fn error_code(&self) -> i64 {
        self.body["error_code"].as_i64().unwrap_or_else(|| panic!("no error_code in {}", self.text))
    }
}

impl RegistryHttp {
    /// Raw HTTP with `access`'s credentials.
    pub fn new(access: RegistryAccess) -> RegistryHttp {
        RegistryHttp { base: access.url.clone(), access, http: crate::http() }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<String>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.access.authorize(self.http.request(method, format!("{}{path}", self.base)));
        if let Some(body) = body {
            request = request.header("Content-Type", "application/vnd.schemaregistry.v1+json").body(body);
        }
        let response = request.send().await.expect("registry answers");
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Answer { status, content_type, body, text }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None).await
    }

    pub async fn post_schema(&self, path: &str, schema: &str) -> Answer {
        self.send("POST", path, Some(serde_json::json!({ "schema": schema }).to_string())).await
    }

    /// Registers and returns the id, panicking on anything but 200.
    pub async fn register(&self, subject: &str, schema: &str) -> i64 {
        let answer = self.post_schema(&format!("/subjects/{subject}/versions"), schema).await;
        assert_eq!(answer.status, 200, "register {subject}: {}", answer.text);
        answer.body["id"].as_i64().unwrap()
    }

    pub async fn set_level(&self, subject: Option<&str>, level: &str) {
        let path = subject.map_or("/config".to_string(), |s| format!("/config/{s}"));
        let answer = self.send("PUT", &path, Some(serde_json::json!({ "compatibility": level }).to_string())).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
}
