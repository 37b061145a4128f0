use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1/test";

/// `DATABASE_URL`, or `postgres://postgres@127.0.0.1/test` when it is unset.
pub fn database_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => DEFAULT_DATABASE_URL.to_owned(),
    }
}

/// A fresh PostgreSQL schema for one test, dropped (with everything in it) on drop.
///
/// The connection work runs on a short-lived thread of its own, so creating and dropping a
/// schema is safe inside an async runtime.
#[derive(Debug)]
pub struct PgSchema {
    database_url: String,
    name: String,
}

impl PgSchema {
    /// Create a schema named `palisade_test_<pid>_<n>_<random>` at [`database_url`].
    ///
    /// # Errors
    /// [`Error::Postgres`] when the server cannot be reached or refuses the statement.
    pub fn create() -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let random = RandomState::new().hash_one((n, std::time::SystemTime::now()));
        let name = format!("palisade_test_{}_{n}_{random:016x}", std::process::id());
        let database_url = database_url();
        execute(&database_url, format!("CREATE SCHEMA \"{name}\""))?;
        Ok(Self { database_url, name })
    }

    /// The schema's name (plain ASCII, no quoting needed).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database URL the schema lives in.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// A URL whose connections have `search_path` set to this schema, so unqualified table
    /// names land in it.
    pub fn url(&self) -> String {
        let separator = if self.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{separator}options=-c%20search_path%3D{}",
            self.database_url, self.name
        )
    }

    /// A blocking client connected with [`url`](Self::url). Use it from a plain test or from
    /// `tokio::task::spawn_blocking`, not directly on an async worker thread.
    ///
    /// # Errors
    /// [`Error::Postgres`] when the server cannot be reached.
    pub fn connect(&self) -> Result<postgres::Client> {
        let url = self.url();
        postgres::Client::connect(&url, postgres::NoTls).map_err(|source| Error::Postgres {
            url: self.database_url.clone(),
            source,
        })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let _ = execute(
            &self.database_url,
            format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
        );
    }
}

/// Run one statement on a thread of its own: the blocking `postgres` client starts its own
/// runtime, which must not happen on a thread that already drives one.
fn execute(url: &str, statement: String) -> Result<()> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let run = || -> std::result::Result<(), postgres::Error> {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
            client.batch_execute(&statement)
        };
        run().map_err(|source| Error::Postgres { url, source })
    })
    .join()
    .expect("the PostgreSQL helper thread does not panic")
}
