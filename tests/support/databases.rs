//! Per-test databases for the Rust tests: a fresh SQLite file, or a fresh database on the
//! PostgreSQL (127.0.0.1:5432, user postgres, trust) and MariaDB (127.0.0.1:3306, root, no
//! password) servers that `scripts/services.sh` starts; a server that does not answer fails the
//! test. Each database is dropped with its `TestDb`. Included by the test crates that need it
//! (`#[path = "support/databases.rs"] mod databases;`).

use sqlx::{Connection, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MariaDb,
}

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MARIADB_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

/// A database of its own for one test, dropped with it.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new database named `<prefix>_<random>`.
    pub async fn create(backend: Backend, prefix: &str) -> TestDb {
        sqlx::any::install_default_drivers();
        let name = format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (url, dir) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                (
                    format!("sqlite://{}", dir.path().join("metadata.db").display()),
                    Some(dir),
                )
            }
            Backend::Postgres | Backend::MariaDb => {
                let admin = if backend == Backend::Postgres {
                    PG_ADMIN
                } else {
                    MARIADB_ADMIN
                };
                let mut conn = sqlx::AnyConnection::connect(admin)
                    .await
                    .unwrap_or_else(|e| panic!("{backend:?} at {admin} is not reachable (scripts/services.sh): {e}"));
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("CREATE DATABASE");
                let _ = conn.close().await;
                (admin.replace("/test", &format!("/{name}")), None)
            }
        };
        TestDb {
            backend,
            url,
            name,
            _dir: dir,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, sql) = match self.backend {
            Backend::Sqlite => return,
            Backend::Postgres => (PG_ADMIN, format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)),
            Backend::MariaDb => (MARIADB_ADMIN, format!("DROP DATABASE IF EXISTS {}", self.name)),
        };
        // Drop runs inside the test's runtime (possibly while a failed test unwinds): use a
        // runtime of its own on another thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::AnyConnection::connect(admin).await.ok()?;
                conn.execute(sql.as_str()).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
