//! The test kit's own tests: real servers started, killed, restarted, paused and clustered.

use std::time::{Duration, Instant};

use palisade_testkit::{Error, KeyPrefix, RedisServer, test_redis};
use redis::Commands;

fn ping(server: &RedisServer) -> redis::RedisResult<String> {
    let mut conn = server
        .client()
        .get_connection_with_timeout(Duration::from_millis(500))?;
    redis::cmd("PING").query(&mut conn)
}

#[test]
fn start_answers_ping_and_keeps_nothing_on_disk() {
    let server = RedisServer::start().expect("redis-server starts");
    assert_eq!(ping(&server).unwrap(), "PONG");
    let mut conn = server.client().get_connection().unwrap();
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut conn)
        .unwrap();
    assert_eq!(save, ["save", ""]);
    let aof: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query(&mut conn)
        .unwrap();
    assert_eq!(aof, ["appendonly", "no"]);
}

#[test]
fn killed_server_refuses_connections_and_restart_brings_it_back_on_the_same_port() {
    let mut server = RedisServer::start().unwrap();
    let port = server.port();
    let mut conn = server.client().get_connection().unwrap();
    let _: () = conn.set("survives-restart?", "no").unwrap();

    server.kill();
    assert!(!server.is_running());
    assert!(ping(&server).is_err(), "a killed server must not answer");

    server.restart().unwrap();
    assert!(server.is_running());
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_eq!(ping(&server).unwrap(), "PONG");
    let mut conn = server.client().get_connection().unwrap();
    let value: Option<String> = conn.get("survives-restart?").unwrap();
    assert_eq!(
        value, None,
        "a restarted server starts empty: nothing is persisted"
    );
}

#[tokio::test]
async fn async_client_reconnects_after_restart() {
    let mut server = RedisServer::start().unwrap();
    let pool = server.pool();
    let mut conn = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");
    drop(conn);

    server.kill();
    // Recycling the idle connection fails its health check and a new one is refused.
    assert!(
        pool.get().await.is_err(),
        "a killed server yields no connection"
    );

    server.restart().unwrap();
    let mut conn = pool.get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(
        pong, "PONG",
        "a fresh pooled connection reaches the restarted server"
    );
}

#[test]
fn paused_server_times_out_a_client_then_answers_again() {
    let server = RedisServer::start().unwrap();
    let mut conn = server.client().get_connection().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut conn).unwrap(),
        "PONG"
    );

    server.pause(Duration::from_millis(1500));
    let started = Instant::now();
    let err = redis::cmd("PING").query::<String>(&mut conn).unwrap_err();
    assert!(
        err.is_timeout(),
        "expected a timeout from a paused server, got {err}"
    );
    assert!(started.elapsed() < Duration::from_millis(1000));

    // After the pause ends the server answers again (on a new connection: the old one holds
    // the late reply of the timed-out PING).
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(ping(&server).unwrap(), "PONG");
}

#[test]
fn resume_ends_a_pause_early() {
    let server = RedisServer::start().unwrap();
    server.pause(Duration::from_secs(60));
    assert!(ping(&server).is_err());
    server.resume();
    assert_eq!(ping(&server).unwrap(), "PONG");
}

#[test]
fn two_servers_run_at_once_on_different_ports_with_separate_data() {
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    let mut ca = a.client().get_connection().unwrap();
    let mut cb = b.client().get_connection().unwrap();
    let _: () = ca.set("k", "a").unwrap();
    let _: () = cb.set("k", "b").unwrap();
    assert_eq!(ca.get::<_, String>("k").unwrap(), "a");
    assert_eq!(cb.get::<_, String>("k").unwrap(), "b");
}

#[test]
fn dropping_a_server_kills_its_process() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    drop(server);
    let client = redis::Client::open(url).unwrap();
    assert!(
        client
            .get_connection_with_timeout(Duration::from_millis(300))
            .is_err()
    );
}

#[test]
fn missing_binary_fails_with_one_clear_line() {
    let err = RedisServer::builder()
        .binary("/nonexistent/redis-server")
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::RedisServerNotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("apt-get install redis-server"),
        "{message}"
    );
    assert!(message.contains("REDIS_URL"), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
}

#[test]
fn bad_configuration_reports_the_servers_log() {
    let err = RedisServer::builder()
        .config("maxmemory-policy", "not-a-policy")
        .start()
        .unwrap_err();
    assert!(matches!(err, Error::RedisStartFailed { .. }), "{err:?}");
}

#[test]
fn key_prefixes_are_unique_and_carry_no_hash_tag() {
    let prefixes: std::collections::HashSet<_> = (0..1000).map(|_| KeyPrefix::unique()).collect();
    assert_eq!(prefixes.len(), 1000);
    for prefix in &prefixes {
        assert!(!prefix.as_str().contains(['{', '}']));
        assert!(prefix.key("x").starts_with(prefix.as_str()));
    }
}

#[tokio::test]
async fn test_redis_gives_a_working_server_and_a_private_prefix() {
    let redis = test_redis().unwrap();
    let other = test_redis().unwrap();
    assert_ne!(redis.prefix(), other.prefix());
    let mut conn = redis.pool().get().await.unwrap();
    let key = redis.key("hello");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("world")
        .query_async(&mut *conn)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(value, "world");
}

#[tokio::test]
async fn a_tls_server_answers_rediss_clients_that_trust_its_ca() {
    let server = RedisServer::builder()
        .tls()
        .start_async()
        .await
        .expect("a TLS redis-server");
    assert!(server.url().starts_with("rediss://127.0.0.1:"));
    assert!(
        server
            .ca_cert_pem()
            .unwrap()
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    );

    // Through the pool the backends take, over TLS.
    let mut conn = server.pool().get().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    // A client that does not trust the test CA is refused, and so is plain text.
    let untrusted = redis::Client::open(server.url()).unwrap();
    assert!(untrusted.get_multiplexed_async_connection().await.is_err());
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", server.port())).unwrap();
    let plain_answer = async {
        let mut c = plain.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), plain_answer).await;
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "plain text must not be served"
    );
}
