//! CDC instead of the relay (`connect/`): the relay refuses a table Debezium captures, and its
//! prune mode keeps the table small only once a replication slot holds the WAL.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use chrono::Utc;
use orderflow_outbox::{OutboxEvent, cdc};
use orderflow_tests::{TestDatabase, binary, intake::eventually};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

async fn outbox_db() -> (TestDatabase, PgPool) {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    orderflow_outbox::migrate(&pool).await.unwrap();
    (db, pool)
}

/// `n` rows created `age` ago.
async fn seed(pool: &PgPool, n: usize, age: Duration) {
    let mut tx = pool.begin().await.unwrap();
    for _ in 0..n {
        let event = OutboxEvent {
            event_id: Uuid::now_v7(),
            topic: "orders".into(),
            key: Uuid::new_v4().to_string(),
            event_type: "OrderPlaced".into(),
            schema_version: 1,
            payload: vec![0, 0, 0, 0, 1],
            traceparent: None,
            occurred_at: Utc::now(),
        };
        orderflow_outbox::enqueue(&mut tx, &event).await.unwrap();
    }
    sqlx::query("update outbox set created_at = now() - make_interval(secs => $1) where created_at > now() - interval '1 minute'")
        .bind(age.as_secs_f64())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from outbox").fetch_one(pool).await.unwrap()
}

/// A temporary logical slot (what Debezium makes), gone when `conn` closes, even on a panic.
async fn temporary_slot(db: &TestDatabase) -> Option<PgConnection> {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let wal_level: String = sqlx::query_scalar("show wal_level").fetch_one(&mut conn).await.unwrap();
    if wal_level != "logical" {
        eprintln!(
            "wal_level is {wal_level}, not logical (scripts/lib.sh starts its cluster with logical): slot cases not run"
        );
        return None;
    }
    let name = format!("oft_slot_{}", Uuid::new_v4().simple());
    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput', true)")
        .bind(&name)
        .execute(&mut conn)
        .await
        .unwrap();
    Some(conn)
}

#[tokio::test]
async fn the_relay_refuses_a_table_that_cdc_captures() {
    let (db, pool) = outbox_db().await;
    assert!(cdc::ensure_not_captured(&pool).await.is_ok());
    sqlx::query("create publication dbz_publication for table outbox").execute(&pool).await.unwrap();
    assert_eq!(cdc::publications_covering_outbox(&pool).await.unwrap(), vec!["dbz_publication".to_string()]);

    // The real binary stops before it touches the broker (there is none at port 1).
    let output = Command::new(binary("outbox-relay"))
        .env("ORDERFLOW_OUTBOX_DATABASE_URL", &db.url)
        .env("ORDERFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .env_remove("ORDERFLOW_RELAY_MODE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the relay started on a captured table");
    assert!(stderr.contains("captured for CDC (publication dbz_publication)"), "{stderr}");
    assert!(stderr.contains("ORDERFLOW_RELAY_MODE=prune"), "the error says what to do: {stderr}");
}

#[tokio::test]
async fn prune_keeps_every_row_until_a_slot_holds_the_wal_then_only_old_ones_go() {
    let (db, pool) = outbox_db().await;
    seed(&pool, 30, Duration::from_secs(7200)).await;
    seed(&pool, 5, Duration::ZERO).await;

    // No slot: a connector created later would snapshot these rows, so none may go.
    assert_eq!(cdc::prune(&pool, Duration::from_secs(3600), 1000).await.unwrap(), None);
    assert_eq!(rows(&pool).await, 35);

    let Some(slot) = temporary_slot(&db).await else { return };
    // Batches of 20: two rounds take the 30 old rows; the 5 young ones stay.
    assert_eq!(cdc::prune(&pool, Duration::from_secs(3600), 20).await.unwrap(), Some(20));
    assert_eq!(cdc::prune(&pool, Duration::from_secs(3600), 20).await.unwrap(), Some(10));
    assert_eq!(cdc::prune(&pool, Duration::from_secs(3600), 20).await.unwrap(), Some(0));
    assert_eq!(rows(&pool).await, 5);
    slot.close().await.unwrap();
}

#[tokio::test]
async fn the_relay_binary_in_prune_mode_deletes_old_rows_and_publishes_nothing() {
    let (db, pool) = outbox_db().await;
    let Some(slot) = temporary_slot(&db).await else { return };
    sqlx::query("create publication dbz_publication for table outbox").execute(&pool).await.unwrap();
    seed(&pool, 50, Duration::from_secs(600)).await;
    seed(&pool, 3, Duration::ZERO).await;
    let mut child = Command::new(binary("outbox-relay"))
        .env("ORDERFLOW_OUTBOX_DATABASE_URL", &db.url)
        .env("ORDERFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .env("ORDERFLOW_METRICS_LISTEN", "127.0.0.1:0")
        .env("ORDERFLOW_RELAY_MODE", "prune")
        .env("ORDERFLOW_RELAY_PRUNE_AFTER_SECS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "the pruner deletes the 50 old rows", || async { rows(&pool).await == 3 })
        .await;
    assert!(child.try_wait().unwrap().is_none(), "the pruner exited");
    // The young rows are still there a poll later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rows(&pool).await, 3);
    let _ = child.kill();
    let _ = child.wait();
    slot.close().await.unwrap();
}
