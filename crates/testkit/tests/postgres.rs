//! A fresh PostgreSQL schema per test, dropped on drop (needs the server at DATABASE_URL).

use palisade_testkit::{PgSchema, database_url};

fn schema_exists(name: &str) -> bool {
    let mut client = postgres::Client::connect(&database_url(), postgres::NoTls).unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            &[&name],
        )
        .unwrap();
    row.get::<_, i64>(0) == 1
}

#[test]
fn schema_is_fresh_private_and_dropped() {
    let a = PgSchema::create().expect("PostgreSQL reachable at DATABASE_URL");
    let b = PgSchema::create().unwrap();
    assert_ne!(a.name(), b.name());
    assert!(schema_exists(a.name()));

    // Unqualified names land in the schema through the URL's search_path.
    let mut client = a.connect().unwrap();
    client
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = 't'",
            &[&a.name()],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    let mut other = b.connect().unwrap();
    assert!(
        other.query("SELECT * FROM t", &[]).is_err(),
        "b cannot see a's table"
    );

    let name = a.name().to_owned();
    drop(client);
    drop(a);
    assert!(!schema_exists(&name), "dropped with everything in it");
}

#[tokio::test]
async fn schema_can_be_created_and_dropped_inside_a_runtime() {
    let schema = PgSchema::create().unwrap();
    let name = schema.name().to_owned();
    drop(schema);
    // The blocking client used to check must not run on the runtime's thread either.
    let exists = std::thread::spawn(move || schema_exists(&name))
        .join()
        .unwrap();
    assert!(!exists);
}
