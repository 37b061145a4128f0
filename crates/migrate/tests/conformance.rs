//! The public conformance suite (feature `testing`) against every target: memory,
//! PostgreSQL (a fresh schema per test), Redis standalone, a 3-master Redis Cluster and a
//! TLS Redis. One test per case and target.

use async_trait::async_trait;
use palisade_migrate::ScriptKind;
use palisade_migrate::testing::{Fixture, MemoryFixture};

palisade_migrate::conformance_tests!(memory, MemoryFixture::new());

#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use palisade_migrate::PostgresStore;
    use palisade_testkit::PgSchema;

    pub(crate) struct PgFixture {
        _schema: PgSchema,
        store: PostgresStore,
    }

    impl PgFixture {
        pub(crate) fn new() -> Self {
            let schema = PgSchema::create().expect("PostgreSQL at DATABASE_URL");
            let store = PostgresStore::from_url(&schema.url()).unwrap();
            Self {
                _schema: schema,
                store,
            }
        }
    }

    #[async_trait]
    impl Fixture for PgFixture {
        type Store = PostgresStore;
        fn store(&self) -> PostgresStore {
            self.store.clone()
        }
        fn kind(&self) -> ScriptKind {
            ScriptKind::Sql
        }
        fn create(&self, name: &str) -> String {
            format!("CREATE TABLE {name} (x int);")
        }
        fn remove(&self, name: &str) -> String {
            format!("DROP TABLE {name};")
        }
        fn fail(&self) -> String {
            "CREATE TABLE cf_half (x int);\nSELECT * FROM cf_no_such_table;".to_owned()
        }
        async fn exists(&self, name: &str) -> bool {
            let client = self.store.pool().get().await.unwrap();
            client
                .query_one(&format!("SELECT to_regclass('{name}') IS NOT NULL"), &[])
                .await
                .unwrap()
                .get(0)
        }
    }
}

#[cfg(feature = "postgres")]
palisade_migrate::conformance_tests!(postgres, crate::pg::PgFixture::new());

#[cfg(feature = "redis")]
mod redis_fixture {
    use super::*;
    use palisade_migrate::RedisStore;
    use palisade_testkit::redis::AsyncCommands;

    /// Keeps whatever server it runs on alive for the test.
    pub(crate) struct RedisFixture {
        _server: Box<dyn std::any::Any + Send + Sync>,
        store: RedisStore,
        prefix: String,
    }

    impl RedisFixture {
        pub(crate) fn standalone() -> Self {
            let redis = palisade_testkit::test_redis().expect("a test Redis");
            let prefix = redis.prefix().key("m");
            let store = RedisStore::new(redis.pool()).with_prefix(&prefix);
            Self {
                store,
                prefix,
                _server: Box::new(redis),
            }
        }

        pub(crate) async fn cluster() -> Self {
            let cluster = palisade_testkit::RedisCluster::start_async(3)
                .await
                .expect("a 3-master Redis Cluster");
            let store = RedisStore::cluster(cluster.pool());
            Self {
                store,
                prefix: "cluster".to_owned(),
                _server: Box::new(cluster),
            }
        }

        pub(crate) async fn tls() -> Self {
            let server = palisade_testkit::RedisServer::builder()
                .tls()
                .start_async()
                .await
                .expect("a TLS redis-server");
            assert!(server.url().starts_with("rediss://"));
            let store = RedisStore::new(server.pool());
            Self {
                store,
                prefix: "tls".to_owned(),
                _server: Box::new(server),
            }
        }

        fn key(&self, name: &str) -> String {
            // No hash tag: on a Cluster the data keys spread over the masters.
            format!("cf:{}:{name}", self.prefix)
        }
    }

    #[async_trait]
    impl Fixture for RedisFixture {
        type Store = RedisStore;
        fn store(&self) -> RedisStore {
            self.store.clone()
        }
        fn kind(&self) -> ScriptKind {
            ScriptKind::Redis
        }
        fn create(&self, name: &str) -> String {
            format!("SET {} 1", self.key(name))
        }
        fn remove(&self, name: &str) -> String {
            format!("DEL {}", self.key(name))
        }
        fn fail(&self) -> String {
            format!(
                "SET {} 1\nHSET {} field value",
                self.key("cf_half"),
                self.key("cf_half")
            )
        }
        async fn exists(&self, name: &str) -> bool {
            let key = self.key(name);
            match &self
                ._server
                .downcast_ref::<palisade_testkit::RedisCluster>()
            {
                Some(cluster) => {
                    let mut c = cluster.async_connection().await.unwrap();
                    c.exists(key).await.unwrap()
                }
                None => {
                    let client = if let Some(s) =
                        self._server.downcast_ref::<palisade_testkit::RedisServer>()
                    {
                        s.client()
                    } else {
                        self._server
                            .downcast_ref::<palisade_testkit::TestRedis>()
                            .unwrap()
                            .client()
                    };
                    let mut c = client.get_multiplexed_async_connection().await.unwrap();
                    c.exists(key).await.unwrap()
                }
            }
        }
    }
}

#[cfg(feature = "redis")]
palisade_migrate::conformance_tests!(redis, crate::redis_fixture::RedisFixture::standalone());
#[cfg(feature = "redis")]
palisade_migrate::conformance_tests!(
    redis_cluster,
    crate::redis_fixture::RedisFixture::cluster().await
);
#[cfg(feature = "redis")]
palisade_migrate::conformance_tests!(redis_tls, crate::redis_fixture::RedisFixture::tls().await);
