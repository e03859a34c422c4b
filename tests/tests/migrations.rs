//! The schema hand-over the Helm chart relies on: `orderflow-migrate` (the hook Job) brings each
//! database to this release's schema, and a service started with `ORDERFLOW_MIGRATIONS=verify`
//! refuses a database that is not there, changing nothing. Real binaries, real Postgres.

use std::process::{Command, Output};

use orderflow_tests::{TestDatabase, binary};

fn run(name: &str, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary(name));
    // Nothing from the caller's environment picks a database or a mode behind the test's back.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ORDERFLOW_")) {
        command.env_remove(key);
    }
    command.env("ORDERFLOW_MIGRATE_CONNECT_TIMEOUT_SECS", "5").envs(env.iter().copied());
    command.output().expect("run the binary")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

async fn tables(db: &TestDatabase) -> i64 {
    let pool = db.pool().await;
    let n = sqlx::query_scalar("select count(*) from pg_tables where schemaname = 'public'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test]
async fn migrate_applies_every_database_then_verify_accepts_them() {
    let (orders, payments, registry) =
        (TestDatabase::create().await, TestDatabase::create().await, TestDatabase::create().await);
    let env = [
        ("ORDERFLOW_ORDERS_DATABASE_URL", orders.url.as_str()),
        ("ORDERFLOW_PAYMENTS_DATABASE_URL", payments.url.as_str()),
        ("ORDERFLOW_REGISTRY_DATABASE_URL", registry.url.as_str()),
    ];
    let applied = run("orderflow-migrate", &env);
    assert!(applied.status.success(), "{}", text(&applied));
    let out = text(&applied);
    for line in ["orders: migrated", "payments: migrated", "registry: migrated"] {
        assert!(out.contains(line), "{line:?} missing from: {out}");
    }
    let pool = orders.pool().await;
    for table in ["orders", "outbox", "processed_events"] {
        let found: Option<String> =
            sqlx::query_scalar("select to_regclass($1)::text").bind(table).fetch_one(&pool).await.unwrap();
        assert_eq!(found.as_deref(), Some(table), "orders database lacks {table}");
    }

    // A second run (a retried hook Job) is a no-op; verify agrees the schema is complete.
    assert!(run("orderflow-migrate", &env).status.success());
    let mut verify = env.to_vec();
    verify.push(("ORDERFLOW_MIGRATIONS", "verify"));
    let verified = run("orderflow-migrate", &verify);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(text(&verified).contains("orders: verified"), "{}", text(&verified));

    // A migration file changed after it was applied is caught, not silently accepted.
    sqlx::query("update _sqlx_migrations set checksum = '\\x00'::bytea where version = 2001")
        .execute(&pool)
        .await
        .unwrap();
    let tampered = run("orderflow-migrate", &verify);
    assert!(!tampered.status.success());
    assert!(text(&tampered).contains("2001 (orders) was applied from a different file"), "{}", text(&tampered));
}

#[tokio::test]
async fn a_service_in_verify_mode_refuses_an_unmigrated_database_and_changes_nothing() {
    let db = TestDatabase::create().await;
    let issuer = orderflow_tests::intake::TestIssuer::new();
    let refused = run(
        "order-api",
        &[
            ("ORDERFLOW_ORDERS_DATABASE_URL", &db.url),
            ("ORDERFLOW_MIGRATIONS", "verify"),
            ("ORDERFLOW_API_LISTEN", "127.0.0.1:0"),
            ("ORDERFLOW_API_JWKS_FILE", issuer.jwks_path.to_str().unwrap()),
            ("ORDERFLOW_API_JWT_ISSUER", orderflow_tests::intake::ISSUER),
        ],
    );
    assert!(!refused.status.success(), "order-api started on an empty database: {}", text(&refused));
    let out = text(&refused);
    assert!(out.contains("1001 (outbox) is not applied"), "{out}");
    assert!(out.contains("orderflow-migrate"), "the error says what to run: {out}");
    assert_eq!(tables(&db).await, 0, "verify mode created tables");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let none = run("orderflow-migrate", &[]);
    assert!(!none.status.success());
    assert!(text(&none).contains("no database given"), "{}", text(&none));

    let db = TestDatabase::create().await;
    let typo =
        run("orderflow-migrate", &[("ORDERFLOW_ORDERS_DATABASE_URL", &db.url), ("ORDERFLOW_MIGRATIONS", "verfy")]);
    assert!(!typo.status.success());
    assert!(text(&typo).contains("expected \"apply\" or \"verify\""), "{}", text(&typo));
    assert_eq!(tables(&db).await, 0);

    let unreachable =
        run("orderflow-migrate", &[("ORDERFLOW_PAYMENTS_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")]);
    assert!(!unreachable.status.success());
    assert!(text(&unreachable).contains("connecting to the payments database"), "{}", text(&unreachable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_migrating_an_empty_database_at_once_all_start() {
    // Four payment instances at once on an empty database (the drain drill's start): one
    // migrates, the others wait for the lock without holding a snapshot, so the runtime's
    // CREATE INDEX CONCURRENTLY is not deadlocked by them.
    let db = TestDatabase::create().await;
    let mut starts = Vec::new();
    for _ in 0..4 {
        let pool = db.pool().await;
        starts.push(tokio::spawn(async move { orderflow_payment::migrate(&pool).await }));
    }
    for start in starts {
        start.await.unwrap().unwrap();
    }
    assert!(tables(&db).await >= 4);
}
