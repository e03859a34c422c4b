//! Database errors, provoked on a real Postgres, become the `Failure` their SQLSTATE class
//! means: an outage waits, a lost race runs again, the record's data is refused with its
//! SQLSTATE, a deployment problem waits for the operator.

use std::time::Duration;

use orderflow_consumer_runtime::Failure;
use orderflow_tests::TestDatabase;
use sqlx::postgres::PgPoolOptions;

fn kind(failure: &Failure) -> String {
    match failure {
        Failure::Unavailable(_) => "unavailable".into(),
        Failure::Conflict(_) => "conflict".into(),
        Failure::Retry(_) => "retry".into(),
        Failure::Rejected { class, .. } => class.clone(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn database_errors_become_the_failure_their_sqlstate_means() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE once (id int PRIMARY KEY, amount bigint CHECK (amount > 0))")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO once VALUES (1, 5)").execute(&pool).await.unwrap();
    let raise = |code: &str| format!("DO $$ BEGIN RAISE EXCEPTION 'provoked' USING ERRCODE = '{code}'; END $$");
    let cases: Vec<(String, &str)> = vec![
        ("SELECT 9223372036854775807::bigint + 1".into(), "sqlstate_22003"),
        ("SELECT 1 / 0".into(), "sqlstate_22012"),
        ("SELECT 'not a number'::int".into(), "sqlstate_22P02"),
        ("INSERT INTO once VALUES (1, 7)".into(), "sqlstate_23505"),
        ("INSERT INTO once VALUES (2, -1)".into(), "sqlstate_23514"),
        (raise("40001"), "conflict"),
        (raise("40P01"), "conflict"),
        (raise("53300"), "unavailable"),
        (raise("57P03"), "unavailable"),
        ("SELECT * FROM a_table_no_migration_made".into(), "unavailable"),
    ];
    for (statement, expected) in cases {
        let error = sqlx::query(&statement).execute(&pool).await.expect_err(&statement);
        assert_eq!(kind(&Failure::from(error)), expected, "{statement}");
    }

    // The server ends the session (admin shutdown, 57P01).
    let mut connection = pool.acquire().await.unwrap();
    let error =
        sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())").execute(&mut *connection).await.unwrap_err();
    assert_eq!(kind(&Failure::from(error)), "unavailable");
    drop(connection);

    // No connection to be had: nothing listening, and a pool with every connection taken.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(&format!("postgres://nobody@127.0.0.1:{closed}/nothing"))
        .await
        .unwrap_err();
    assert_eq!(kind(&Failure::from(unreachable)), "unavailable");
    let small = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect(&db.url)
        .await
        .unwrap();
    let _held = small.acquire().await.unwrap();
    let timed_out = small.acquire().await.unwrap_err();
    assert!(matches!(timed_out, sqlx::Error::PoolTimedOut), "{timed_out}");
    assert_eq!(kind(&Failure::from(timed_out)), "unavailable");

    // A row the handler expected and did not find: the record again later.
    let missing = sqlx::query("SELECT id FROM once WHERE id = 99").fetch_one(&pool).await.unwrap_err();
    assert_eq!(kind(&Failure::from(missing)), "retry");
}
