//! Postgres over TLS with the server's certificate and name verified (`sslmode=verify-full`),
//! against a server of the test's own whose certificate a test CA signed: the connection is
//! encrypted (the server says so in `pg_stat_ssl`), a server the CA did not sign is refused, and
//! a service binary migrates its database this way, its URL read from a `_FILE`.

use std::{process::Command, time::Duration};

use orderflow_tests::{
    binary,
    postgres::{PrivatePostgres, TestCa},
};
use sqlx::postgres::PgPoolOptions;

fn verify_full(base: &str, ca: &TestCa, database: &str) -> String {
    let base = base.rsplit_once('/').unwrap().0;
    format!("{base}/{database}?sslmode=verify-full&sslrootcert={}", ca.ca_file().display())
}

#[tokio::test]
async fn verify_full_connects_encrypted_to_the_server_the_ca_signed_and_refuses_another_ca() {
    let ca = TestCa::new();
    let server = PrivatePostgres::start_tls(&ca);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&verify_full(&server.admin_url, &ca, "postgres"))
        .await
        .expect("a verified TLS connection");
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ssl, "the server sees an encrypted connection");
    assert!(version.starts_with("TLSv1."), "{version}");

    // A certificate some other CA signed is not the server's: refused before any query.
    let stranger = TestCa::new();
    let refused = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&verify_full(&server.admin_url, &stranger, "postgres"))
        .await
        .expect_err("a server our CA did not sign");
    let message = format!("{refused:#}").to_lowercase();
    assert!(message.contains("certificate") || message.contains("tls"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_binary_migrates_its_database_over_verified_tls_from_a_url_file() {
    let ca = TestCa::new();
    let server = PrivatePostgres::start_tls(&ca);
    let admin = PgPoolOptions::new().max_connections(1).connect(&server.admin_url).await.unwrap();
    sqlx::query("CREATE DATABASE orders").execute(&admin).await.unwrap();
    let migrate = |url: String| {
        let file = ca.dir.join(format!("orders-url-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, format!("{url}\n")).unwrap();
        let output = Command::new(binary("orderflow-migrate"))
            .env_clear()
            .env("ORDERFLOW_ORDERS_DATABASE_URL_FILE", &file)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (ok, stderr) = migrate(verify_full(&server.admin_url, &ca, "orders"));
    assert!(ok, "{stderr}");
    let orders =
        PgPoolOptions::new().max_connections(1).connect(&verify_full(&server.admin_url, &ca, "orders")).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'orders'")
        .fetch_one(&orders)
        .await
        .unwrap();
    assert_eq!(tables, 1, "migrated over TLS");

    let stranger = TestCa::new();
    let (ok, stderr) = migrate(verify_full(&server.admin_url, &stranger, "orders"));
    assert!(!ok, "a server our CA did not sign is refused");
    assert!(stderr.contains("certificate"), "says why, at once rather than after retrying: {stderr}");
    assert!(stderr.contains("orders"), "names the database: {stderr}");
    assert!(!stderr.contains("postgres://"), "never the URL: {stderr}");
}
