//! The PostgreSQL server the tests use, and a fresh schema per test.
//!
//! `$SALVAGE_TEST_POSTGRES` (default `postgres://root@127.0.0.1:5432/test`) names a database
//! the tests may create schemas in. Each test gets its own schema (`salvage_test_…`), selected
//! through the URL's `options=-csearch_path=…`, and drops it when it ends (even by a panic).
//!
//! When the server cannot be reached the PostgreSQL tests are skipped after a loud note on
//! stderr — unless `SALVAGE_REQUIRE_POSTGRES` is set (CI sets it), in which case they fail.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

/// The server URL the tests use.
pub fn postgres_url() -> String {
    std::env::var("SALVAGE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

fn required() -> bool {
    std::env::var_os("SALVAGE_REQUIRE_POSTGRES").is_some_and(|value| !value.is_empty() && value != "0")
}

/// Connects once, on a runtime of its own (tests each have theirs).
fn with_client<T: Send + 'static>(
    url: String,
    work: impl FnOnce(tokio_postgres::Client) -> std::pin::Pin<Box<dyn Future<Output = Result<T, String>> + Send>>
    + Send
    + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
        runtime.block_on(async move {
            let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
            config.connect_timeout(Duration::from_secs(5));
            let (client, connection) =
                config.connect(tokio_postgres::NoTls).await.map_err(|e| format!("cannot connect to {url}: {e:?}"))?;
            let driver = tokio::spawn(connection);
            let result = work(client).await;
            driver.abort();
            result
        })
    })
    .join()
    .map_err(|_| "the PostgreSQL helper thread panicked".to_owned())?
}

/// Whether the PostgreSQL tests can run (checked once per test binary). Prints the skip note
/// when they cannot, and panics instead when `SALVAGE_REQUIRE_POSTGRES` is set.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let status = AVAILABLE.get_or_init(|| {
        with_client(postgres_url(), |client| {
            Box::pin(async move {
                client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| format!("SELECT 1 failed: {e}"))
            })
        })
    });
    match status {
        Ok(()) => true,
        Err(error) if required() => {
            panic!("PostgreSQL is not usable ({error}) and SALVAGE_REQUIRE_POSTGRES is set")
        }
        Err(error) => {
            eprintln!("\n**************************************************************");
            eprintln!("SKIPPED: PostgreSQL tests: {error}");
            eprintln!("start the server or set SALVAGE_TEST_POSTGRES to a database URL");
            eprintln!("**************************************************************\n");
            false
        }
    }
}

/// A fresh schema in the test database, dropped (with everything in it) when this is dropped.
#[derive(Debug)]
pub struct TestSchema {
    pub name: String,
    /// The database URL with `options=-csearch_path=<name>`: a store opened on it lives in the
    /// schema.
    pub url: String,
    /// Dropped with this value (false for [`TestSchema::attach`]).
    owned: bool,
}

impl TestSchema {
    /// Creates the schema. Call [`available`] first: this panics when the server is not there.
    pub fn create() -> TestSchema {
        let name = format!("salvage_test_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let statement = format!("SET synchronous_commit = off; CREATE SCHEMA {name}");
        with_client(postgres_url(), move |client| {
            Box::pin(async move { client.batch_execute(&statement).await.map_err(|e| format!("{e:?}")) })
        })
        .unwrap_or_else(|error| panic!("cannot create schema {name}: {error}"));
        let base = postgres_url();
        let separator = if base.contains('?') { '&' } else { '?' };
        // Commits need not wait for the disk in tests (a session setting: durability after a
        // server crash is the one thing these tests do not look at).
        let url = format!("{base}{separator}options=-csearch_path%3D{name}%20-csynchronous_commit%3Doff");
        TestSchema { name, url, owned: true }
    }

    /// Another handle on a schema made by [`TestSchema::create`] (its URL), for another thread:
    /// it queries the schema and leaves it in place when dropped.
    pub fn attach(url: &str) -> TestSchema {
        let name =
            url.split("search_path%3D").nth(1).and_then(|rest| rest.split('%').next()).unwrap_or_default().to_owned();
        TestSchema { name, url: url.to_owned(), owned: false }
    }

    /// The schema's URL as a store spec.
    pub fn spec(&self) -> salvage::store::StoreSpec {
        salvage::store::StoreSpec::parse(&self.url).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn postgres_url(&self) -> salvage::store::PostgresUrl {
        salvage::store::PostgresUrl::parse(&self.url).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs statements in the schema (as an operator with psql would).
    pub fn execute(&self, statements: &str) {
        let (url, statements) = (self.url.clone(), statements.to_owned());
        with_client(url, move |client| {
            Box::pin(async move { client.batch_execute(&statements).await.map_err(|e| format!("{e:?}")) })
        })
        .unwrap_or_else(|error| panic!("{error}"));
    }

    /// The rows of a query in the schema, every column as text (NULL as `None`).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        with_client(url, move |client| {
            Box::pin(async move {
                let messages = client.simple_query(&sql).await.map_err(|e| format!("{e:?}"))?;
                Ok(messages
                    .into_iter()
                    .filter_map(|message| match message {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            Some((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect())
                        }
                        _ => None,
                    })
                    .collect())
            })
        })
        .unwrap_or_else(|error| panic!("{error}"))
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let statement = format!("SET synchronous_commit = off; DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        if let Err(error) = with_client(postgres_url(), move |client| {
            Box::pin(async move { client.batch_execute(&statement).await.map_err(|e| format!("{e:?}")) })
        }) {
            eprintln!("warning: could not drop test schema {}: {error}", self.name);
        }
    }
}
