//! A real S3-compatible server for the Rust tests: moto (`python3 -m moto.server`, installed by
//! scripts/install-test-deps.sh), started on a free loopback port and killed when dropped.
//! Included by the test crates that need it (`#[path = "support/moto.rs"] mod moto;`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use image_manager::storage::s3::{client_for, Credentials, S3BlobStore, S3Url};
use image_manager::storage::BlobStore;

pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Start moto and wait until it answers; a moto that cannot start fails the test.
    pub async fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("its address")
            .port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/install-test-deps.sh installs moto)");
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto exited with {status}: is moto[server] installed?");
            }
            if let Ok(r) = http.get(&moto.endpoint).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    return moto;
                }
            }
            assert!(Instant::now() < deadline, "moto did not answer within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await; // readiness polling interval
        }
    }

    pub fn url(&self, bucket: &str, prefix: &str) -> S3Url {
        S3Url::parse(&format!(
            "s3://{bucket}/{prefix}?endpoint={}&region=us-east-1&path_style=true",
            self.endpoint
        ))
        .expect("S3 URL")
    }

    /// A store on `bucket`/`prefix` with its own client, as a separate replica would have.
    pub async fn store(&self, bucket: &str, prefix: &str, redirect: bool) -> S3BlobStore {
        let url = self.url(bucket, prefix);
        let client = client_for(&url, Some(Credentials::new("test", "test", None, None, "test"))).await;
        S3BlobStore::with_client(client, &url, redirect)
    }

    /// Create `bucket`; a store on it under the prefix `pre/fix`.
    pub async fn bucket(&self, bucket: &str) -> S3BlobStore {
        let store = self.store(bucket, "pre/fix", false).await;
        store
            .client()
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("create bucket");
        store.check().await.expect("bucket answers");
        store
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
