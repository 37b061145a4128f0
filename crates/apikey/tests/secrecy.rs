//! The plain text of a key is never stored nor logged: every key on every Redis Cluster
//! node is read back after a whole lifecycle, and everything `tracing` wrote is captured.
#![cfg(feature = "redis")]

use std::time::Duration;

use palisade_apikey::{ApiKeys, KeySpec, Pepper, Peppers, RedisStore, Refill, VerifyRequest};
use palisade_testkit::redis::{self, Value};

const PEPPER: &[u8; 32] = b"secrecy test pepper, version 1!!";

fn peppers() -> Peppers {
    Peppers::new(Pepper::new(1, *PEPPER).unwrap())
}

/// Everything one key holds, as text.
fn dump(conn: &mut redis::Connection, key: &str) -> String {
    let kind: String = redis::cmd("TYPE").arg(key).query(conn).unwrap();
    let v: Value = match kind.as_str() {
        "string" => redis::cmd("GET").arg(key).query(conn).unwrap(),
        "hash" => redis::cmd("HGETALL").arg(key).query(conn).unwrap(),
        "set" => redis::cmd("SMEMBERS").arg(key).query(conn).unwrap(),
        "stream" => redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(conn)
            .unwrap(),
        other => panic!("unexpected type {other} at {key}"),
    };
    format!("{key} {v:?}")
}

/// The secret part of a key (the 32 characters after id and version).
fn secret_of(text: &str) -> &str {
    let body = &text[text.len() - 56..];
    &body[18..50]
}

/// A whole lifecycle on a 3-master cluster (create, verify, charge with idempotency,
/// rotate, verify both, usage flush, rescope, revoke), then every key on every node is read:
/// no key text, no secret part, no pepper — and the HMACs are there (so the scan works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_never_reaches_any_redis_node() {
    let cluster = palisade_testkit::RedisCluster::start_async(3)
        .await
        .unwrap();
    let keys = ApiKeys::builder(peppers())
        .store(RedisStore::cluster(cluster.pool()))
        .build()
        .unwrap();
    let mut texts = Vec::new();
    let mut ids = Vec::new();
    for i in 0..12 {
        let k = keys
            .create(
                KeySpec::new(format!("owner-{}", i % 3), "k")
                    .scopes(["read:*"])
                    .credits(
                        100,
                        Some(Refill {
                            amount: 100,
                            interval: Duration::from_secs(60),
                        }),
                    ),
            )
            .await
            .unwrap();
        let text = k.key.expose_secret().to_owned();
        let v = keys
            .verify_with(
                &text,
                &VerifyRequest::new()
                    .scope("read:x")
                    .idempotency_key("req-1"),
            )
            .await
            .unwrap();
        assert!(v.is_verified());
        ids.push(k.record.id);
        texts.push(text);
    }
    for id in &ids[..4] {
        let new = keys.rotate(id, Duration::from_secs(60)).await.unwrap();
        let t = new.key.expose_secret().to_owned();
        assert!(keys.verify(&t, "read:y").await.unwrap().is_verified());
        texts.push(t);
    }
    keys.update_scopes(&ids[5], ["write:*"]).await.unwrap();
    keys.revoke(&ids[6]).await.unwrap();
    keys.flush_usage().await.unwrap();

    let mut all = String::new();
    let mut nodes_with_keys = 0;
    for node in cluster.nodes() {
        let mut conn = node.client().get_connection().unwrap();
        let names: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        if names.iter().any(|n| n.contains(":k:")) {
            nodes_with_keys += 1;
        }
        for n in &names {
            all.push_str(&dump(&mut conn, n));
            all.push('\n');
        }
    }
    assert!(nodes_with_keys >= 2, "records spread over the masters");
    for id in &ids {
        assert!(all.contains(id.as_str()), "the scan sees key {id}");
    }
    assert!(all.contains("\"h\""), "hashes are stored");
    for t in &texts {
        assert!(!all.contains(t.as_str()), "a key's text is in Redis");
        assert!(!all.contains(secret_of(t)), "a key's secret is in Redis");
    }
    assert!(!all.contains(std::str::from_utf8(PEPPER).unwrap()));
}

/// Everything `tracing` wrote during a lifecycle (created, verified, every kind of denial,
/// rotated, grace use, revoked, a failed backend) holds ids but no key text or secret.
#[tokio::test]
async fn plaintext_never_reaches_the_logs() {
    let logs = palisade_testkit::LogCapture::new();
    let _guard = logs.set_default();
    let redis = palisade_testkit::test_redis().unwrap();
    let keys = ApiKeys::builder(peppers())
        .store(RedisStore::new(redis.pool()).with_prefix(redis.key("")))
        .build()
        .unwrap();
    let k = keys
        .create(
            KeySpec::new("log-owner", "k")
                .scopes(["read:*"])
                .allowed_ips(["10.0.0.0/8"]),
        )
        .await
        .unwrap();
    let text = k.key.expose_secret().to_owned();
    let ip = "10.0.0.1".parse().unwrap();
    assert!(
        keys.verify_with(&text, &VerifyRequest::new().ip(ip))
            .await
            .unwrap()
            .is_verified()
    );
    let _ = keys.verify(&text, "").await.unwrap(); // IP not allowed
    let _ = keys
        .verify_with(&text, &VerifyRequest::new().ip(ip).scope("admin:x"))
        .await
        .unwrap();
    let mut typo = text.clone().into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let _ = keys.verify(&typo, "").await.unwrap();
    let _ = keys
        .verify(&format!("pk_live_{}", &text[8..text.len() - 1]), "")
        .await
        .unwrap();
    let new = keys
        .rotate(&k.record.id, Duration::from_secs(60))
        .await
        .unwrap();
    let new_text = new.key.expose_secret().to_owned();
    let _ = keys
        .verify_with(&text, &VerifyRequest::new().ip(ip))
        .await
        .unwrap(); // grace use
    keys.revoke(&new.record.id).await.unwrap();
    let _ = keys
        .verify_with(&new_text, &VerifyRequest::new().ip(ip))
        .await
        .unwrap();
    println!("{k:?} {new:?}"); // Debug of the created keys goes to stdout, checked below

    let written = logs.text();
    assert!(written.contains(k.record.id.as_str()), "{written}");
    for reason in [
        "created",
        "denied",
        "bad_checksum",
        "ip_not_allowed",
        "insufficient_scope",
        "rotated",
        "grace_use",
        "revoked",
    ] {
        assert!(written.contains(reason), "no {reason} event in:\n{written}");
    }
    for secret in [&text, &new_text, &typo] {
        assert!(
            !written.contains(secret.as_str()),
            "a key reached the logs:\n{written}"
        );
        assert!(
            !written.contains(secret_of(secret)),
            "a secret reached the logs:\n{written}"
        );
    }
    let debug = format!("{k:?} {new:?} {keys:?}");
    assert!(!debug.contains(secret_of(&text)) && !debug.contains(secret_of(&new_text)));
    assert!(debug.contains("[REDACTED]"));
}
