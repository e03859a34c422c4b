//! A schema registry per test: its own database, port 0, its own stop signal.

use orderflow_schemas::CompatibilityLevel;
use tokio::net::TcpListener;

use crate::{Running, TestDatabase};

pub struct TestRegistry {
    pub url: String,
    pub db_url: String,
    running: Running,
}

impl TestRegistry {
    /// A registry on a fresh database, default level BACKWARD (Confluent's default).
    pub async fn spawn() -> TestRegistry {
        let db = TestDatabase::create().await;
        Self::spawn_on(&db.url).await
    }

    /// A registry on an existing database (e.g. to restart one).
    pub async fn spawn_on(db_url: &str) -> TestRegistry {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(db_url)
            .await
            .expect("connect registry db");
        orderflow_registry::migrate(&pool).await.expect("migrate registry db");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let running =
            Running::spawn(move |stop| orderflow_registry::run(listener, pool, CompatibilityLevel::Backward, stop));
        TestRegistry { url, db_url: db_url.to_string(), running }
    }

    /// Stops it and waits until the port is closed.
    pub async fn stop(self) {
        self.running.stop().await
    }

    pub fn client(&self) -> RegistryHttp {
        RegistryHttp { base: self.url.clone(), http: reqwest::Client::new() }
    }
}

/// Raw HTTP against the registry: tests see statuses and bodies exactly as clients do.
#[derive(Clone)]
pub struct RegistryHttp {
    pub base: String,
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
    pub async fn send(&self, method: &str, path: &str, body: Option<String>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
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
