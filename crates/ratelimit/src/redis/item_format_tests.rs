//! The packed batch item (`pack.rs`, `src/lua/batch.lua`) against a real Redis: what Lua
//! unpacks is what was packed, and an item of another format fails with a clear error
//! without touching any key.

use std::time::Duration;

use palisade_testkit::test_redis;

use super::*;
use crate::Quota;
use crate::store::Store;

/// Every value as Lua sees it after `cmsgpack.unpack`: numbers as '%.0f', strings quoted.
const ECHO: &str = "local format, name, a = cmsgpack.unpack(ARGV[1]) \
    local out = { format, name } \
    for i = 1, #a do \
      if type(a[i]) == 'number' then out[#out + 1] = string.format('%.0f', a[i]) \
      else out[#out + 1] = '\"' .. a[i] .. '\"' end \
    end \
    return out";

/// Integers at each MessagePack width's edges and the largest a script is sent (2^53: times
/// are clamped to it), strings, and an owner id above 2^53 kept as its decimal text.
#[tokio::test]
async fn redis_unpacks_every_value_as_packed() {
    let redis = test_redis().unwrap();
    let mut conn = redis.async_connection().await.unwrap();
    let numbers: [u64; 11] = [
        0,
        127,
        128,
        255,
        256,
        65_535,
        65_536,
        u64::from(u32::MAX),
        1 << 32,
        crate::quota::MAX_LIMIT,
        crate::algorithm::MAX_MICROS,
    ];
    let mut packed = Pack::default();
    packed
        .text(ITEM_FORMAT)
        .text("gcra:lease")
        .array(numbers.len() + 3);
    for v in numbers {
        packed.number(v);
    }
    packed.text("gcra").decimal(u64::MAX).decimal(7);
    let got: Vec<String> = redis::cmd("EVAL")
        .arg(ECHO)
        .arg(0)
        .arg(packed.into_bytes())
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut want: Vec<String> = vec![ITEM_FORMAT.into(), "gcra:lease".into()];
    want.extend(numbers.iter().map(u64::to_string));
    want.extend([
        "\"gcra\"".into(),
        format!("\"{}\"", u64::MAX),
        "\"7\"".into(),
    ]);
    assert_eq!(got, want);
}

/// What a process of the version before packed items sent for one lease item: its name,
/// key and argument counts, then each argument as its own string.
fn unpacked_lease_item(inv: &mut ScriptInvocation<'_>, keys: &[String], ledger: &str) {
    inv.arg("gcra:lease").arg(2).arg(22);
    for k in keys {
        inv.key(k);
    }
    inv.key(ledger);
    inv.arg(0)
        .arg("gcra")
        .arg(1)
        .arg(1)
        .arg(1_000_000_000)
        .arg(1_000_000_000)
        .arg(3_600_000_000_u64)
        .arg(4);
    for v in [0, 0, 16, 10_000_000, 100, 7, 0, 0, 1_000_000, 1, 0, 0, 0, 0] {
        inv.arg(v);
    }
}

/// A fleet mid-deploy: an item of the unpacked format (an older process's) in a batch of
/// this version's script fails with an error naming the item format, so do the items
/// after it (where their keys start is unknown), and none of their keys is written; the
/// item before it runs. Also a whole batch of an older process, and a packed item of
/// another item format: an error each, nothing written.
#[tokio::test]
async fn an_item_of_another_format_fails_clearly_and_writes_nothing() {
    let redis = test_redis().unwrap();
    let mut conn = redis.async_connection().await.unwrap();
    let store = RedisStore::new(redis.pool()).with_prefix(redis.prefix().as_str());
    let policy = Policy::single(
        "format",
        Algorithm::Gcra,
        // One unit back a day: what the item took still shows when it is peeked.
        Quota::new(1_000, Duration::from_secs(86_400)),
    )
    .unwrap();
    let request = LeaseRequest::new(1)
        .want(16, Duration::from_secs(10))
        .owner(7, Duration::from_secs(1));
    let calls: Vec<LeaseCall<'_>> = ["before", "after"]
        .iter()
        .map(|k| LeaseCall::new(k, &policy, request))
        .collect();
    let script = Script::new(&BATCH_TEXTS[algorithm_index(Algorithm::Gcra)]);

    let mut inv = script.prepare_invoke();
    inv.arg(3);
    store.batch_item(&mut inv, &Item::Lease(&calls[0]));
    let old_keys = store.keys_for("old", &policy);
    let old_ledger = store.ledger_key("old", &policy);
    unpacked_lease_item(&mut inv, &old_keys, &old_ledger);
    store.batch_item(&mut inv, &Item::Lease(&calls[1]));
    let replies: Vec<redis::Value> = inv.invoke_async(&mut conn).await.unwrap();
    assert_eq!(replies.len(), 3, "{replies:?}");
    let first: Vec<i64> = redis::from_redis_value(replies[0].clone()).unwrap();
    let lease = lease_of(&policy, &first).unwrap();
    assert!(lease.decision.allowed && lease.granted > 0, "{lease:?}");
    for (i, reply) in replies.into_iter().enumerate().skip(1) {
        let shown = format!("{reply:?}");
        let reply: Vec<String> = redis::from_redis_value(reply)
            .unwrap_or_else(|e| panic!("item {i}: not an error reply: {shown} ({e})"));
        assert_eq!(reply[0], "error", "item {i}: {reply:?}");
        assert!(
            reply[1].contains("item format pb2") && reply[1].contains("batch item 2"),
            "item {i}: {reply:?}"
        );
    }

    // An older process's whole batch (one item) on this version's script.
    let mut inv = script.prepare_invoke();
    inv.arg(1);
    unpacked_lease_item(&mut inv, &old_keys, &old_ledger);
    let replies: Vec<Vec<String>> = inv.invoke_async(&mut conn).await.unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0][0], "error");
    assert!(replies[0][1].contains("item format pb2"), "{replies:?}");

    // A packed item of another item format (a later version's, say), well-formed otherwise.
    let mut inv = script.prepare_invoke();
    inv.arg(1);
    let mut item = Pack::default();
    item.text("pb9")
        .text("gcra:lease")
        .array(4 + 4 + LEASE_ARGS);
    store.common_args(&mut item, &policy, 1);
    lease_args(&mut item, &request);
    for k in &old_keys {
        inv.key(k);
    }
    inv.key(&old_ledger);
    inv.arg(item.into_bytes());
    let replies: Vec<Vec<String>> = inv.invoke_async(&mut conn).await.unwrap();
    assert_eq!(replies[0][0], "error", "{replies:?}");
    assert!(replies[0][1].contains("item format pb2"), "{replies:?}");

    let mut untouched = old_keys;
    untouched.push(old_ledger);
    untouched.extend(store.keys_for("after", &policy));
    untouched.push(store.ledger_key("after", &policy));
    for k in untouched {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "{k} was written");
    }
    let before = store.peek("before", &policy).await.unwrap();
    assert_eq!(
        before.quota(0).unwrap().remaining,
        1_000 - 1 - lease.granted,
        "the item before the unreadable one ran"
    );
}
