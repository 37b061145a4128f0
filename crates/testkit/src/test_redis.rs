use crate::error::Result;
use crate::prefix::KeyPrefix;
use crate::server::RedisServer;

/// The Redis one test talks to: the server at `REDIS_URL` when that variable is set, otherwise
/// a fresh [`RedisServer`] owned by this value. Either way it comes with a [`KeyPrefix`] that
/// no other test shares.
#[derive(Debug)]
pub struct TestRedis {
    url: String,
    prefix: KeyPrefix,
    server: Option<RedisServer>,
}

/// A Redis for one test; see [`TestRedis`].
///
/// # Errors
/// When `REDIS_URL` is unset and no server can be started (for example
/// [`Error::RedisServerNotFound`](crate::Error::RedisServerNotFound)).
pub fn test_redis() -> Result<TestRedis> {
    test_redis_at(std::env::var("REDIS_URL").ok())
}

fn test_redis_at(redis_url: Option<String>) -> Result<TestRedis> {
    let prefix = KeyPrefix::unique();
    match redis_url {
        Some(url) if !url.trim().is_empty() => Ok(TestRedis {
            url,
            prefix,
            server: None,
        }),
        _ => {
            let server = RedisServer::start()?;
            Ok(TestRedis {
                url: server.url(),
                prefix,
                server: Some(server),
            })
        }
    }
}

impl TestRedis {
    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This test's key prefix.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    /// `name` under this test's prefix.
    pub fn key(&self, name: &str) -> String {
        self.prefix.key(name)
    }

    /// A `redis::Client` for the server.
    ///
    /// # Panics
    /// When `REDIS_URL` is not a valid Redis URL.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str())
            .unwrap_or_else(|e| panic!("REDIS_URL {:?} is not a Redis URL: {e}", self.url))
    }

    /// An async multiplexed connection to the server: what a test uses to look at or change
    /// the keys a backend wrote.
    ///
    /// # Errors
    /// When the server cannot be reached.
    ///
    /// # Panics
    /// When `REDIS_URL` is not a valid Redis URL.
    pub async fn async_connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        Ok(self.client().get_multiplexed_async_connection().await?)
    }

    /// A `deadpool_redis::Pool` for the server.
    ///
    /// # Panics
    /// When `REDIS_URL` is not a valid Redis URL.
    pub fn pool(&self) -> deadpool_redis::Pool {
        deadpool_redis::Config::from_url(self.url.as_str())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap_or_else(|e| panic!("REDIS_URL {:?} is not a Redis URL: {e}", self.url))
    }

    /// The server this value started, or `None` when it uses `REDIS_URL`'s. Fault tests
    /// (kill, restart, pause) need their own server: use [`RedisServer::start`] for those.
    pub fn server_mut(&mut self) -> Option<&mut RedisServer> {
        self.server.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_server_url_is_used_as_is() {
        let redis = test_redis_at(Some("redis://127.0.0.1:6399".to_owned())).unwrap();
        assert_eq!(redis.url(), "redis://127.0.0.1:6399");
        assert!(
            redis.server.is_none(),
            "no server is started when REDIS_URL is set"
        );
    }

    #[test]
    fn an_empty_url_starts_a_fresh_server() {
        let mut redis = test_redis_at(Some("  ".to_owned())).unwrap();
        let port = redis.server_mut().expect("a server was started").port();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    }
}
