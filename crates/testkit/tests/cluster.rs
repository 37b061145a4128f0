//! A real 3-master Redis Cluster reaches `cluster_state:ok` and routes keys across its nodes.

use palisade_testkit::RedisCluster;
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_masters_reach_cluster_state_ok_and_serve_every_slot() {
    let cluster = RedisCluster::start(3).expect("cluster starts");
    assert_eq!(cluster.nodes().len(), 3);
    let info = cluster.info().unwrap();
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(info.contains("cluster_known_nodes:3"), "{info}");

    // Keys spread over all three nodes; the cluster connection follows MOVED for each.
    let mut conn = cluster.async_connection().await.unwrap();
    for i in 0..100 {
        let _: () = conn.set(format!("key-{i}"), i).await.unwrap();
    }
    for i in 0..100 {
        let value: i32 = conn.get(format!("key-{i}")).await.unwrap();
        assert_eq!(value, i);
    }
    let mut owners = std::collections::HashSet::new();
    for node in cluster.nodes() {
        let mut c = node.client().get_connection().unwrap();
        let keys: usize = redis::cmd("DBSIZE").query(&mut c).unwrap();
        if keys > 0 {
            owners.insert(node.port());
        }
    }
    assert_eq!(owners.len(), 3, "100 keys land on all three masters");

    // Keys sharing a hash tag live in one slot, so multi-key commands work.
    let _: () = redis::cmd("MSET")
        .arg("{user:1}:a")
        .arg(1)
        .arg("{user:1}:b")
        .arg(2)
        .query_async(&mut conn)
        .await
        .unwrap();

    // The deadpool cluster pool reaches it too.
    let pool = cluster.pool();
    let mut pooled = pool.get().await.unwrap();
    let value: i32 = pooled.get("key-42").await.unwrap();
    assert_eq!(value, 42);
}
