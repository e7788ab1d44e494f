//! The outbound OCI-registry adapter (`image_manager::adapters::oci`) against real targets: a
//! CNCF Distribution (`/usr/bin/docker-registry`, Debian's `docker-registry`, open and with
//! htpasswd Basic auth) and a second Image Manager (this build's binary, with the token
//! protocol). Each test starts what it needs on free loopback ports and stops it on drop; a
//! missing binary fails the test. Images come from an in-memory source built here (random
//! layers, a multi-arch index of two platforms, a Docker manifest list, a single manifest with
//! a foreign layer).

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use image_manager::adapters::oci::containerdisk::{push_container_disk, DiskImage};
use image_manager::adapters::oci::{copy_image, verify_image, CopyReport, ImageSource, RegistryClient, RegistryConfig};
use image_manager::adapters::{AdapterError, AdapterErrorKind, AdapterResult};
use image_manager::oci::Digest;
use image_manager::storage::ByteStream;
use serde_json::json;

const DISTRIBUTION_BIN: &str = "/usr/bin/docker-registry";
/// htpasswd entry (bcrypt) for user `docker`, made by docker-registry's own provisioning of a
/// missing htpasswd file; its password is HTPASSWD_PASSWORD. Test-only.
const HTPASSWD: &str = "docker:$2a$10$wYqSweiGC7nS59pGkbou6./t80Qwr.pnjPGm3SpVcB1uyYQ0TKUtK\n";
const HTPASSWD_USER: &str = "docker";
const HTPASSWD_PASSWORD: &str = "fPMCgfhxrsvqlpcvmdj9axyNzrDAuev2m6MGj1mqOds";
const IM_USER: &str = "distributor";
const IM_PASSWORD: &str = "distributor-password-1";

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Poll `url` until it answers one of `ok` (a readiness probe with a deadline), or fail with
/// the server's log.
async fn wait_ready(url: &str, ok: &[u16], child: &mut Child, log: &Path) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await {
            if ok.contains(&r.status().as_u16()) {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{url}: server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready in 30 s: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// CNCF Distribution on filesystem storage with deletes enabled (no blob descriptor
    /// cache: what is on disk is what it serves; foreign layers allowed at https URLs, which
    /// 2.8 refuses without an allow list), optionally behind htpasswd Basic auth.
    async fn distribution(basic_auth: bool) -> Server {
        assert!(
            Path::new(DISTRIBUTION_BIN).exists(),
            "{DISTRIBUTION_BIN} is missing: scripts/install-test-deps.sh installs Debian's docker-registry"
        );
        let dir = tempfile::Builder::new()
            .prefix("im-oci-dist-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let mut auth = String::new();
        if basic_auth {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, HTPASSWD).expect("htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\nvalidation:\n  manifests:\n    urls:\n      allow:\n        - ^https://\n{auth}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("config");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let mut child = Command::new(DISTRIBUTION_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        wait_ready(
            &format!("http://127.0.0.1:{port}/v2/"),
            &[200, 401],
            &mut child,
            &dir.path().join("server.log"),
        )
        .await;
        Server { child, port, dir }
    }

    /// A second Image Manager with the token protocol and one admin user.
    async fn image_manager() -> Server {
        let bin =
            std::env::var("IMAGE_MANAGER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_image-manager").to_string());
        let dir = tempfile::Builder::new()
            .prefix("im-oci-im-")
            .tempdir()
            .expect("tempdir");
        let mut add = Command::new(&bin)
            .args(["user", "add", IM_USER, "--admin", "--password-stdin", "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("image-manager user add");
        add.stdin
            .take()
            .expect("stdin")
            .write_all(format!("{IM_PASSWORD}\n").as_bytes())
            .expect("password");
        let out = add.wait_with_output().expect("user add");
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--auth", "token"])
            .env("IMAGE_MANAGER_STORAGE__FSYNC", "false")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start image-manager");
        wait_ready(
            &format!("http://127.0.0.1:{port}/readyz"),
            &[200],
            &mut child,
            &dir.path().join("server.log"),
        )
        .await;
        Server { child, port, dir }
    }

    /// Where Distribution keeps blob `d`'s bytes.
    fn distribution_blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir
            .path()
            .join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

fn client(url: &str, creds: Option<(&str, &str)>, namespace: Option<&str>) -> RegistryClient {
    let mut cfg = RegistryConfig::new(url);
    cfg.call_timeout = Duration::from_secs(20);
    cfg.connect_timeout = Duration::from_secs(5);
    if let Some((u, p)) = creds {
        cfg.username = Some(u.to_string());
        cfg.password = Some(p.to_string());
    }
    cfg.namespace = namespace.map(str::to_string);
    RegistryClient::new(cfg).expect("client")
}

// ---------------------------------------------------------------------------------------------
// The in-memory source
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct MemSource {
    manifests: HashMap<Digest, (String, Bytes)>,
    blobs: HashMap<Digest, Bytes>,
}

#[async_trait]
impl ImageSource for MemSource {
    async fn manifest(&self, digest: &Digest) -> AdapterResult<(String, Bytes)> {
        self.manifests
            .get(digest)
            .cloned()
            .ok_or_else(|| AdapterError::new(AdapterErrorKind::NotFound, format!("no manifest {digest}")))
    }

    async fn blob(&self, digest: &Digest) -> AdapterResult<(u64, ByteStream)> {
        let b = self
            .blobs
            .get(digest)
            .cloned()
            .ok_or_else(|| AdapterError::new(AdapterErrorKind::NotFound, format!("no blob {digest}")))?;
        // In 64 KiB chunks, as a store streams them.
        let chunks: Vec<std::io::Result<Bytes>> = (0..b.len())
            .step_by(64 * 1024)
            .map(|i| Ok(b.slice(i..(i + 64 * 1024).min(b.len()))))
            .collect();
        Ok((b.len() as u64, Box::pin(futures::stream::iter(chunks))))
    }
}

/// Random bytes (xorshift seeded from a v4 UUID).
fn random_bytes(n: usize) -> Bytes {
    let mut x = (uuid::Uuid::new_v4().as_u128() as u64) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    Bytes::from(out)
}

impl MemSource {
    fn add_blob(&mut self, b: Bytes) -> (Digest, u64) {
        let d = Digest::sha256(&b);
        let size = b.len() as u64;
        self.blobs.insert(d.clone(), b);
        (d, size)
    }

    fn add_manifest(&mut self, media_type: &str, v: serde_json::Value) -> (Digest, u64) {
        let bytes = Bytes::from(serde_json::to_vec_pretty(&v).expect("json"));
        let d = Digest::sha256(&bytes);
        let size = bytes.len() as u64;
        self.manifests.insert(d.clone(), (media_type.to_string(), bytes));
        (d, size)
    }

    /// An index (OCI, or a Docker manifest list with `docker`) of two platforms, each with its
    /// config and two layers, one of them shared by both. Returns the index digest.
    fn multi_arch(&mut self, docker: bool) -> Digest {
        let (index_t, manifest_t, config_t, layer_t) = if docker {
            (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        } else {
            (OCI_INDEX, OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
        };
        let shared = self.add_blob(random_bytes(3000));
        let mut entries = Vec::new();
        for (arch, big) in [("amd64", 300_000), ("arm64", 150_001)] {
            let own = self.add_blob(random_bytes(big));
            let config = self.add_blob(Bytes::from(
                serde_json::to_vec(&json!({
                    "architecture": arch, "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": [own.0.as_str(), shared.0.as_str()]},
                    "config": {"Labels": {"nonce": uuid::Uuid::new_v4().to_string()}},
                }))
                .expect("json"),
            ));
            let (d, size) = self.add_manifest(
                manifest_t,
                json!({
                    "schemaVersion": 2, "mediaType": manifest_t,
                    "config": {"mediaType": config_t, "digest": config.0.as_str(), "size": config.1},
                    "layers": [
                        {"mediaType": layer_t, "digest": own.0.as_str(), "size": own.1},
                        {"mediaType": layer_t, "digest": shared.0.as_str(), "size": shared.1},
                    ],
                }),
            );
            entries.push(json!({
                "mediaType": manifest_t, "digest": d.as_str(), "size": size,
                "platform": {"architecture": arch, "os": "linux"},
            }));
        }
        self.add_manifest(
            index_t,
            json!({"schemaVersion": 2, "mediaType": index_t, "manifests": entries}),
        )
        .0
    }

    /// One image manifest with a config, a layer and a foreign (non-distributable) layer that
    /// lives at its URL, not in any registry (nor in this source).
    fn with_foreign_layer(&mut self) -> Digest {
        let layer = self.add_blob(random_bytes(10_000));
        let config = self.add_blob(Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#));
        let foreign = Digest::sha256(&random_bytes(64));
        self.add_manifest(
            OCI_MANIFEST,
            json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config.0.as_str(), "size": config.1},
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": layer.0.as_str(), "size": layer.1},
                    {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                     "digest": foreign.as_str(), "size": 64, "urls": ["https://foreign.example/layer"]},
                ],
            }),
        )
        .0
    }

    /// Every blob digest and manifest digest below `root` (the test's own walk).
    fn graph(&self, root: &Digest) -> (Vec<Digest>, Vec<Digest>) {
        let mut manifests = vec![root.clone()];
        let mut blobs = Vec::new();
        let mut i = 0;
        while i < manifests.len() {
            let (_, bytes) = &self.manifests[&manifests[i]];
            let v: serde_json::Value = serde_json::from_slice(bytes).expect("json");
            for m in v["manifests"].as_array().into_iter().flatten() {
                manifests.push(Digest::parse(m["digest"].as_str().expect("digest")).expect("digest"));
            }
            for b in std::iter::once(&v["config"]).chain(v["layers"].as_array().into_iter().flatten()) {
                if let Some(d) = b["digest"].as_str() {
                    if b.get("urls").is_none() {
                        let d = Digest::parse(d).expect("digest");
                        if !blobs.contains(&d) {
                            blobs.push(d);
                        }
                    }
                }
            }
            i += 1;
        }
        (blobs, manifests)
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

async fn copy(src: &MemSource, dst: &RegistryClient, repo: &str, tag: &str, root: &Digest) -> (CopyReport, u64) {
    let last = AtomicU64::new(0);
    let report = copy_image(src, dst, repo, tag, root, &|n| {
        // A running total: never goes back.
        let before = last.swap(n, Ordering::SeqCst);
        assert!(n >= before, "progress went from {before} to {n}");
    })
    .await
    .unwrap_or_else(|e| panic!("copy {repo}:{tag}: {e} ({:?})", e.kind));
    (report, last.load(Ordering::SeqCst))
}

/// Everything below `root` reads back from the target byte-identical: manifests by digest
/// and the root by tag (digests of the GET bodies), blobs streamed and hashed.
async fn assert_pulls_back(src: &MemSource, dst: &RegistryClient, repo: &str, tag: &str, root: &Digest) {
    let (blobs, manifests) = src.graph(root);
    for m in &manifests {
        let (media_type, d, body) = dst.manifest(repo, m.as_str()).await.expect("get").expect("present");
        assert_eq!(&d, m);
        assert_eq!(body, src.manifests[m].1, "manifest {m} bytes");
        assert_eq!(media_type, src.manifests[m].0, "manifest {m} media type");
    }
    let (_, d, _) = dst.manifest(repo, tag).await.expect("get tag").expect("tag present");
    assert_eq!(&d, root, "tag {tag}");
    for b in &blobs {
        let mut stream = dst.blob(repo, b).await.expect("get blob").expect("blob present");
        let mut all = Vec::new();
        while let Some(chunk) = stream.next().await {
            all.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(&Digest::sha256(&all), b, "blob {b} bytes");
    }
}

/// `skopeo copy --all` of `repo:tag` into an OCI layout; every blob and manifest of ours is
/// in it, byte-identical, and its index names our root.
fn assert_skopeo_pulls(src: &MemSource, server: &Server, full_repo: &str, tag: &str, root: &Digest) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let layout = out_dir.path().join("layout");
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--all", "--preserve-digests", "--src-tls-verify=false"]);
    let out = cmd
        .arg(format!("docker://127.0.0.1:{}/{full_repo}:{tag}", server.port))
        .arg(format!("oci:{}:{tag}", layout.display()))
        .output()
        .expect("skopeo (scripts/install-test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let (blobs, manifests) = src.graph(root);
    for d in blobs.iter().chain(manifests.iter()) {
        let bytes = std::fs::read(layout.join("blobs/sha256").join(d.hex()))
            .unwrap_or_else(|e| panic!("{d} in the layout: {e}"));
        assert_eq!(&Digest::sha256(&bytes), d);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json")).expect("json");
    assert_eq!(index["manifests"][0]["digest"].as_str(), Some(root.as_str()), "{index}");
}

fn expect_kind<T: std::fmt::Debug>(r: AdapterResult<T>, kind: AdapterErrorKind, what: &str) -> AdapterError {
    match r {
        Err(e) if e.kind == kind => e,
        other => panic!("{what}: expected {kind:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// An OCI index to an open Distribution: copied, idempotent, verified, pulled back by us and
/// by skopeo; a blob removed from its disk and a child manifest deleted are both noticed by
/// `verify_image` and repaired by the next copy.
#[tokio::test]
async fn distribution_copy_verify_repair() {
    let dist = Server::distribution(false).await;
    let dst = client(&dist.url(), None, Some("onap"));
    dst.check().await.expect("check");
    let mut src = MemSource::default();
    let root = src.multi_arch(false);
    let (blobs, manifests) = src.graph(&root);
    assert_eq!((blobs.len(), manifests.len()), (5, 3));
    let blob_bytes: u64 = blobs.iter().map(|b| src.blobs[b].len() as u64).sum();

    let (first, progressed) = copy(&src, &dst, "app/multi", "1.0", &root).await;
    assert_eq!(
        first,
        CopyReport {
            manifests_pushed: 3,
            manifests_present: 0,
            blobs_pushed: 5,
            blobs_present: 0,
            bytes_sent: blob_bytes + manifests.iter().map(|m| src.manifests[m].1.len() as u64).sum::<u64>(),
            root: root.clone(),
        }
    );
    assert_eq!(progressed, blob_bytes, "progress ends at the blob bytes sent");

    let (second, progressed) = copy(&src, &dst, "app/multi", "1.0", &root).await;
    assert_eq!(
        (
            second.manifests_pushed,
            second.manifests_present,
            second.blobs_pushed,
            second.blobs_present,
            second.bytes_sent
        ),
        (0, 3, 0, 5, 0),
        "a second copy sends nothing"
    );
    assert_eq!(progressed, 0);
    assert!(verify_image(&src, &dst, "app/multi", "1.0", &root)
        .await
        .expect("verify"));
    assert!(!verify_image(&src, &dst, "app/multi", "2.0", &root)
        .await
        .expect("verify other tag"));
    assert_pulls_back(&src, &dst, "app/multi", "1.0", &root).await;
    assert_skopeo_pulls(&src, &dist, "onap/app/multi", "1.0", &root);
    assert_eq!(dst.tags("app/multi").await.expect("tags"), vec!["1.0".to_string()]);
    assert!(dst.tags("app/none").await.expect("tags of an unknown repo").is_empty());
    assert_eq!(
        dst.repositories().await.expect("catalog"),
        vec!["app/multi".to_string()]
    );
    let unscoped = client(&dist.url(), None, None);
    assert_eq!(
        unscoped.repositories().await.expect("catalog"),
        vec!["onap/app/multi".to_string()]
    );

    // A layer's bytes vanish from the target's disk.
    let victim = &blobs[1];
    std::fs::remove_file(dist.distribution_blob_path(victim)).expect("remove blob data");
    assert_eq!(dst.blob_size("app/multi", victim).await.expect("head"), None);
    assert!(!verify_image(&src, &dst, "app/multi", "1.0", &root)
        .await
        .expect("verify"));
    let (repair, _) = copy(&src, &dst, "app/multi", "1.0", &root).await;
    assert_eq!(
        (repair.blobs_pushed, repair.blobs_present, repair.manifests_pushed),
        (1, 4, 0)
    );
    assert_eq!(repair.bytes_sent, src.blobs[victim].len() as u64);
    assert!(verify_image(&src, &dst, "app/multi", "1.0", &root)
        .await
        .expect("verify"));

    // A platform manifest is deleted at the target.
    let child = &manifests[2];
    dst.delete_manifest("app/multi", child).await.expect("delete manifest");
    assert_eq!(
        dst.manifest_head("app/multi", child.as_str()).await.expect("head"),
        None
    );
    expect_kind(
        dst.delete_manifest("app/multi", child).await,
        AdapterErrorKind::NotFound,
        "second delete",
    );
    assert!(!verify_image(&src, &dst, "app/multi", "1.0", &root)
        .await
        .expect("verify"));
    let (repair, _) = copy(&src, &dst, "app/multi", "1.0", &root).await;
    assert_eq!(
        (repair.manifests_pushed, repair.manifests_present, repair.blobs_pushed),
        (1, 2, 0)
    );
    assert!(verify_image(&src, &dst, "app/multi", "1.0", &root)
        .await
        .expect("verify"));
    assert_pulls_back(&src, &dst, "app/multi", "1.0", &root).await;

    // A single manifest with a foreign layer: the layer is not sought anywhere.
    let single = src.with_foreign_layer();
    let (r, _) = copy(&src, &dst, "app/single", "v1", &single).await;
    assert_eq!((r.manifests_pushed, r.blobs_pushed), (1, 2));
    assert!(verify_image(&src, &dst, "app/single", "v1", &single)
        .await
        .expect("verify"));

    // Cross-repository mount of a blob we pushed, and of one that is nowhere.
    assert!(dst
        .mount_blob("app/mounted", &blobs[0], "app/multi")
        .await
        .expect("mount"));
    assert_eq!(
        dst.blob_size("app/mounted", &blobs[0]).await.expect("head"),
        Some(src.blobs[&blobs[0]].len() as u64)
    );
    let nowhere = Digest::sha256(b"nowhere");
    assert!(!dst
        .mount_blob("app/mounted", &nowhere, "app/multi")
        .await
        .expect("mount"));
}

/// A Docker manifest list to Distribution behind htpasswd Basic auth; wrong credentials are
/// `Auth`, none at all too.
#[tokio::test]
async fn distribution_basic_auth_docker_list() {
    let dist = Server::distribution(true).await;
    let dst = client(&dist.url(), Some((HTPASSWD_USER, HTPASSWD_PASSWORD)), None);
    dst.check().await.expect("check");
    let mut src = MemSource::default();
    let root = src.multi_arch(true);
    let (first, _) = copy(&src, &dst, "docker/list", "latest", &root).await;
    assert_eq!((first.manifests_pushed, first.blobs_pushed), (3, 5));
    let (second, _) = copy(&src, &dst, "docker/list", "latest", &root).await;
    assert_eq!(
        (
            second.manifests_pushed,
            second.blobs_pushed,
            second.manifests_present,
            second.blobs_present
        ),
        (0, 0, 3, 5)
    );
    assert!(verify_image(&src, &dst, "docker/list", "latest", &root)
        .await
        .expect("verify"));
    assert_pulls_back(&src, &dst, "docker/list", "latest", &root).await;
    // skopeo reads the list back byte-identical (an OCI layout would need a conversion).
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds"])
        .arg(format!("{HTPASSWD_USER}:{HTPASSWD_PASSWORD}"))
        .arg(format!("docker://127.0.0.1:{}/docker/list:latest", dist.port))
        .output()
        .expect("skopeo (scripts/install-test-deps.sh installs it)");
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(Digest::sha256(&out.stdout), root);

    let wrong = client(&dist.url(), Some((HTPASSWD_USER, "not-the-password")), None);
    let e = expect_kind(wrong.check().await, AdapterErrorKind::Auth, "wrong password");
    assert_eq!(e.status, Some(401));
    assert!(!e.message.contains("not-the-password"), "{e}");
    expect_kind(
        copy_image(&src, &wrong, "docker/list", "latest", &root, &|_| {}).await,
        AdapterErrorKind::Auth,
        "copy with a wrong password",
    );
    let anonymous = client(&dist.url(), None, None);
    expect_kind(anonymous.check().await, AdapterErrorKind::Auth, "no credentials");
}

/// An OCI index to another Image Manager through its token protocol (tokens cached: a second
/// copy asks the token service nothing), then a wrong password.
#[tokio::test]
async fn image_manager_token_protocol() {
    let im = Server::image_manager().await;
    let dst = client(&im.url(), Some((IM_USER, IM_PASSWORD)), Some("vims"));
    dst.check().await.expect("check");
    let mut src = MemSource::default();
    let root = src.multi_arch(false);
    let (first, _) = copy(&src, &dst, "site1/app", "1.0", &root).await;
    assert_eq!((first.manifests_pushed, first.blobs_pushed), (3, 5));
    let tokens_before = token_requests(&im).await;
    let (second, _) = copy(&src, &dst, "site1/app", "1.0", &root).await;
    assert_eq!(
        (
            second.manifests_pushed,
            second.blobs_pushed,
            second.manifests_present,
            second.blobs_present
        ),
        (0, 0, 3, 5)
    );
    assert_eq!(
        token_requests(&im).await,
        tokens_before,
        "the second copy reuses the cached tokens"
    );
    assert!(verify_image(&src, &dst, "site1/app", "1.0", &root)
        .await
        .expect("verify"));
    assert_pulls_back(&src, &dst, "site1/app", "1.0", &root).await;
    assert_eq!(dst.tags("site1/app").await.expect("tags"), vec!["1.0".to_string()]);
    assert!(dst
        .repositories()
        .await
        .expect("catalog")
        .contains(&"site1/app".to_string()));

    // A Docker manifest list too, to a fresh client (a cold token cache).
    let fresh = client(&im.url(), Some((IM_USER, IM_PASSWORD)), Some("vims"));
    let list = src.multi_arch(true);
    let (r, _) = copy(&src, &fresh, "site1/docker", "1", &list).await;
    assert_eq!((r.manifests_pushed, r.blobs_pushed), (3, 5));
    assert!(verify_image(&src, &fresh, "site1/docker", "1", &list)
        .await
        .expect("verify"));

    // A manifest deleted at the target is noticed and put back.
    let child = &src.graph(&root).1[1];
    dst.delete_manifest("site1/app", child).await.expect("delete");
    assert!(!verify_image(&src, &dst, "site1/app", "1.0", &root)
        .await
        .expect("verify"));
    let (repair, _) = copy(&src, &dst, "site1/app", "1.0", &root).await;
    assert_eq!(repair.manifests_pushed, 1);

    let wrong = client(&im.url(), Some((IM_USER, "wrong-password")), None);
    let e = expect_kind(wrong.check().await, AdapterErrorKind::Auth, "wrong password");
    assert!(!e.message.contains("wrong-password"), "{e}");
    expect_kind(
        copy_image(&src, &wrong, "site1/app", "1.0", &root, &|_| {}).await,
        AdapterErrorKind::Auth,
        "copy with a wrong password",
    );
}

/// `GET /token` requests the Image Manager answered so far (its Prometheus counter).
async fn token_requests(im: &Server) -> u64 {
    let text = reqwest::get(format!("{}/metrics", im.url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with("image_manager_http_requests_total{") && l.contains("route=\"token\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Nothing listening: `Transient`, for the check and for a copy.
#[tokio::test]
async fn refused_connection_is_transient() {
    let port = free_port();
    let dst = client(&format!("http://127.0.0.1:{port}"), None, None);
    expect_kind(dst.check().await, AdapterErrorKind::Transient, "check");
    let mut src = MemSource::default();
    let root = src.multi_arch(false);
    expect_kind(
        copy_image(&src, &dst, "a", "b", &root, &|_| {}).await,
        AdapterErrorKind::Transient,
        "copy",
    );
    expect_kind(dst.blob_size("a", &root).await, AdapterErrorKind::Transient, "head");
}

/// A VM disk as a KubeVirt containerDisk, to Distribution and to Image Manager: the layer
/// reads back as a tar whose one file is the disk, owned 107:107, mode 0440 (checked by
/// `tar` itself); pushing the same disk again sends nothing.
#[tokio::test]
async fn container_disk() {
    let dist = Server::distribution(false).await;
    let im = Server::image_manager().await;
    let mut src = MemSource::default();
    let disk_bytes = random_bytes(1_000_003);
    let (digest, size) = src.add_blob(disk_bytes.clone());
    let disk = DiskImage {
        digest,
        size,
        format: "qcow2".into(),
        name: "cirros-0.6.2".into(),
    };
    for dst in [
        client(&dist.url(), None, None),
        client(&im.url(), Some((IM_USER, IM_PASSWORD)), None),
    ] {
        let last = AtomicU64::new(0);
        let cd = push_container_disk(&src, &dst, "vm/cirros", "0.6.2", &disk, &|n| {
            last.store(n, Ordering::SeqCst)
        })
        .await
        .unwrap_or_else(|e| panic!("push container disk: {e}"));
        assert!(cd.pushed);
        assert_eq!(last.load(Ordering::SeqCst), cd.layer_size);
        let (_, got, manifest) = dst.manifest("vm/cirros", "0.6.2").await.expect("get").expect("tag");
        assert_eq!(got, cd.manifest);
        let m: serde_json::Value = serde_json::from_slice(&manifest).expect("json");
        assert_eq!(m["layers"][0]["digest"].as_str(), Some(cd.layer.as_str()));
        assert_eq!(
            m["layers"][0]["mediaType"].as_str(),
            Some("application/vnd.oci.image.layer.v1.tar")
        );

        let mut stream = dst.blob("vm/cirros", &cd.layer).await.expect("get").expect("layer");
        let mut layer = Vec::new();
        while let Some(chunk) = stream.next().await {
            layer.extend_from_slice(&chunk.expect("chunk"));
        }
        assert_eq!(Digest::sha256(&layer), cd.layer);
        assert_eq!(layer.len() as u64, cd.layer_size);
        assert_eq!(
            &layer[1024..1024 + disk_bytes.len()],
            &disk_bytes[..],
            "the disk's bytes follow the headers"
        );
        let mut config_stream = dst.blob("vm/cirros", &cd.config).await.expect("get").expect("config");
        let mut config = Vec::new();
        while let Some(chunk) = config_stream.next().await {
            config.extend_from_slice(&chunk.expect("chunk"));
        }
        let config: serde_json::Value = serde_json::from_slice(&config).expect("config json");
        assert_eq!(config["rootfs"]["diff_ids"][0].as_str(), Some(cd.layer.as_str()));
        assert_eq!(
            (config["architecture"].as_str(), config["os"].as_str()),
            (Some("amd64"), Some("linux"))
        );

        // GNU tar's own reading of the layer.
        let dir = tempfile::tempdir().expect("tempdir");
        let tar_path = dir.path().join("layer.tar");
        std::fs::write(&tar_path, &layer).expect("write layer");
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&tar_path)
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 2, "{listing}");
        assert!(
            lines[0].starts_with("dr-xr-xr-x 107/107") && lines[0].ends_with(" disk/"),
            "{listing}"
        );
        assert!(
            lines[1].starts_with("-r--r----- 107/107")
                && lines[1].contains(&format!(" {size} "))
                && lines[1].ends_with(" disk/cirros-0.6.2.qcow2"),
            "{listing}"
        );

        let again = push_container_disk(&src, &dst, "vm/cirros", "0.6.2", &disk, &|_| panic!("nothing to send"))
            .await
            .expect("again");
        assert!(!again.pushed);
        assert_eq!(again.manifest, cd.manifest);
    }
}
