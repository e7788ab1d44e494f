//! Real-client tests: the `oci-client` crate against a running image-manager.
//!
//! Every test starts its own server binary on a free loopback port with a fresh data
//! directory (`serve --listen 127.0.0.1:PORT --data-dir DIR`, plus `$IM_TEST_SERVER_ARGS`;
//! the binary is `$IMAGE_MANAGER_BIN` if set, else the one cargo built for this test),
//! waits for `GET /readyz` to answer 200 (polled with a deadline), and kills it on drop.
//! The server's output goes to `DIR/server.log`, which failing assertions print.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use oci_client::client::{linux_amd64_resolver, BlobResponse, ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, OciManifest, Platform,
    IMAGE_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
// Artifact types without '+': oci-client puts `?artifactType=` into the URL unencoded, and a
// '+' in a query string decodes to a space.
const SBOM_TYPE: &str = "application/vnd.example.sbom.v1";
const SIG_CONFIG_TYPE: &str = "application/vnd.example.signature.config.v1";

// ---------------------------------------------------------------------------------------------
// Server harness
// ---------------------------------------------------------------------------------------------

struct TestServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        let dir = tempfile::Builder::new()
            .prefix("im-oci-client-")
            .tempdir()
            .expect("tempdir");
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            l.local_addr().unwrap().port()
        };
        let log = std::fs::File::create(dir.path().join("server.log")).expect("server.log");
        // $IMAGE_MANAGER_BIN (as for the Python suites) or the binary cargo built for this test.
        let bin =
            std::env::var("IMAGE_MANAGER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_image-manager").to_string());
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.path());
        if let Ok(extra) = std::env::var("IM_TEST_SERVER_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn image-manager");
        let mut server = TestServer { child, port, dir };
        server.wait_ready(Duration::from_secs(30)).await;
        server
    }

    async fn wait_ready(&mut self, timeout: Duration) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.url());
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("image-manager exited early with {status}:\n{}", self.log());
            }
            if let Ok(resp) = http.get(&url).send().await {
                if resp.status() == reqwest::StatusCode::OK {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("image-manager not ready after {timeout:?}:\n{}", self.log());
            }
            // Polling interval while waiting for readiness, not a synchronisation sleep.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last 6000 characters of the server's log.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(6000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// `127.0.0.1:PORT/<rest>` parsed as an image reference.
    fn reference(&self, rest: &str) -> Reference {
        format!("{}/{}", self.host(), rest)
            .parse()
            .unwrap_or_else(|e| panic!("bad reference {rest}: {e}"))
    }

    /// Unwrap a client result, printing the server log on error.
    fn ok<T, E: std::fmt::Debug>(&self, what: &str, r: Result<T, E>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => panic!("{what} failed: {e:?}\n--- server log ---\n{}", self.log()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn client_with(mut config: ClientConfig) -> Client {
    config.protocol = ClientProtocol::Http;
    config.read_timeout = Some(Duration::from_secs(60));
    config.connect_timeout = Some(Duration::from_secs(10));
    Client::new(config)
}

fn client() -> Client {
    client_with(ClientConfig {
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        ..Default::default()
    })
}

const ANON: RegistryAuth = RegistryAuth::Anonymous;

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift64*), so layers are incompressible and distinct.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn annotations(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

fn image_config(arch: &str, seed: &str) -> Config {
    let data = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": [format!("SEED={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    Config::oci_v1(data, None)
}

/// An image: config + a >4 MiB uncompressed layer (oci-client pushes it in two PATCH chunks)
/// + a small layer with annotations.
fn sample_image(arch: &str, seed: u64) -> (Config, Vec<ImageLayer>) {
    let config = image_config(arch, &seed.to_string());
    let layers = vec![
        ImageLayer::oci_v1(noise(5 * 1024 * 1024 + 333, seed), None),
        ImageLayer::new(
            noise(1500, seed + 1000),
            IMAGE_LAYER_GZIP_MEDIA_TYPE.to_string(),
            annotations(&[("org.opencontainers.image.title", "small.tar.gz")]),
        ),
    ];
    (config, layers)
}

/// Push an image and return (manifest digest, manifest size) as the registry serves them.
async fn push_image(
    srv: &TestServer,
    client: &Client,
    reference: &Reference,
    config: &Config,
    layers: &[ImageLayer],
) -> (String, i64) {
    let manifest = OciImageManifest::build(layers, config, None);
    srv.ok(
        "push",
        client
            .push(reference, layers, config.clone(), &ANON, Some(manifest))
            .await,
    );
    let (raw, digest) = srv.ok(
        "pull_manifest_raw",
        client
            .pull_manifest_raw(reference, &ANON, &[OCI_IMAGE_MEDIA_TYPE])
            .await,
    );
    assert_eq!(digest, sha256_digest(&raw));
    (digest, raw.len() as i64)
}

/// Compare pulled layers with pushed ones by digest: `Client::pull` downloads layers
/// concurrently and returns them in completion order, not manifest order.
fn assert_same_layers(got: &[ImageLayer], want: &[ImageLayer]) {
    assert_eq!(got.len(), want.len(), "layer count");
    for w in want {
        let g = got
            .iter()
            .find(|g| g.sha256_digest() == w.sha256_digest())
            .unwrap_or_else(|| panic!("layer {} missing from pull", w.sha256_digest()));
        assert_eq!(g.media_type, w.media_type);
        assert_eq!(g.annotations, w.annotations);
        assert!(g.data == w.data, "layer bytes differ");
    }
}

async fn collect(mut stream: oci_client::client::SizedStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("blob stream chunk"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn push_and_pull_image_roundtrip() {
    let srv = TestServer::start().await;
    let client = client();
    let reference = srv.reference("it/app:v1");
    let (config, layers) = sample_image("amd64", 1);
    let manifest = OciImageManifest::build(
        &layers,
        &config,
        annotations(&[("org.opencontainers.image.version", "1.0")]),
    );

    let pushed = srv.ok(
        "push",
        client
            .push(&reference, &layers, config.clone(), &ANON, Some(manifest.clone()))
            .await,
    );

    // The Location of the config blob PUT serves the config bytes.
    let http = reqwest::Client::new();
    let config_resp = http.get(&pushed.config_url).send().await.unwrap();
    assert_eq!(config_resp.status(), 200, "GET {}", pushed.config_url);
    assert_eq!(config_resp.bytes().await.unwrap().as_ref(), config.data.as_slice());

    // Raw manifest: digest header, bytes and HEAD digest agree.
    let (raw, digest) = srv.ok(
        "pull_manifest_raw",
        client
            .pull_manifest_raw(&reference, &ANON, &[OCI_IMAGE_MEDIA_TYPE])
            .await,
    );
    assert_eq!(digest, sha256_digest(&raw));
    let sent: serde_json::Value = serde_json::to_value(&manifest).unwrap();
    let served: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(served, sent);
    assert_eq!(
        srv.ok(
            "fetch_manifest_digest",
            client.fetch_manifest_digest(&reference, &ANON).await
        ),
        digest
    );
    let by_location = http
        .get(&pushed.manifest_url)
        .header("Accept", OCI_IMAGE_MEDIA_TYPE)
        .send()
        .await
        .unwrap();
    assert_eq!(by_location.status(), 200, "GET {}", pushed.manifest_url);
    assert_eq!(sha256_digest(&by_location.bytes().await.unwrap()), digest);

    // Full pull: config and every layer byte-identical, digests verified by the client.
    let image = srv.ok(
        "pull",
        client
            .pull(
                &reference,
                &ANON,
                vec![IMAGE_LAYER_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE],
            )
            .await,
    );
    assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(image.config.data, config.data);
    assert_same_layers(&image.layers, &layers);
    let pulled_manifest = image.manifest.expect("manifest");
    assert_eq!(pulled_manifest.annotations, manifest.annotations);
    assert_eq!(pulled_manifest.layers[1].annotations, layers[1].annotations);

    // By digest.
    let by_digest = srv.reference(&format!("it/app@{digest}"));
    let (m, d) = srv.ok("pull_manifest by digest", client.pull_manifest(&by_digest, &ANON).await);
    assert_eq!(d, digest);
    match m {
        OciManifest::Image(m) => assert_eq!(m.config.digest, config.sha256_digest()),
        other => panic!("expected an image manifest, got {other}"),
    }

    // Ranged blob read: either the exact slice (206) or the whole blob (200).
    let big = &layers[0];
    let desc = OciDescriptor {
        media_type: big.media_type.clone(),
        digest: big.sha256_digest(),
        size: big.data.len() as i64,
        ..Default::default()
    };
    let partial = srv.ok(
        "pull_blob_stream_partial",
        client
            .pull_blob_stream_partial(&reference, &desc, 1_000_000, Some(4096))
            .await,
    );
    match partial {
        BlobResponse::Partial(s) => assert!(collect(s).await == big.data[1_000_000..1_004_096]),
        BlobResponse::Full(s) => assert!(collect(s).await == big.data),
    }
}

#[tokio::test]
async fn monolithic_push_roundtrip() {
    let srv = TestServer::start().await;
    let client = client_with(ClientConfig {
        use_monolithic_push: true,
        ..Default::default()
    });
    let reference = srv.reference("it/mono:v1");
    let (config, layers) = sample_image("amd64", 2);
    let (digest, _) = push_image(&srv, &client, &reference, &config, &layers).await;
    let image = srv.ok(
        "pull",
        client
            .pull(
                &reference,
                &ANON,
                vec![IMAGE_LAYER_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE],
            )
            .await,
    );
    assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(image.config.data, config.data);
    assert_same_layers(&image.layers, &layers);
}

#[tokio::test]
async fn artifact_referrers() {
    let srv = TestServer::start().await;
    let client = client();
    let base_ref = srv.reference("it/art:base");
    let (config, layers) = sample_image("amd64", 3);
    let (base_digest, base_size) = push_image(&srv, &client, &base_ref, &config, &layers).await;
    let base_by_digest = srv.reference(&format!("it/art@{base_digest}"));
    let subject = OciDescriptor {
        media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
        digest: base_digest.clone(),
        size: base_size,
        ..Default::default()
    };

    // No referrers yet: an empty index.
    let empty = srv.ok(
        "pull_referrers (none)",
        client.pull_referrers(&base_by_digest, None).await,
    );
    assert_eq!(empty.schema_version, 2);
    assert!(empty.manifests.is_empty(), "{:?}", empty.manifests);

    // Referrer 1: OCI 1.1 artifact with artifactType and the empty config, serialised by the
    // test (pretty-printed, not canonical) and PUT by digest with push_manifest_raw.
    let empty_config = b"{}".to_vec();
    let sbom = serde_json::to_vec(&serde_json::json!({"spdxVersion": "SPDX-2.3", "name": "app"})).unwrap();
    srv.ok(
        "push_blob config",
        client
            .push_blob(&base_ref, &empty_config, &sha256_digest(&empty_config))
            .await,
    );
    srv.ok(
        "push_blob sbom",
        client.push_blob(&base_ref, &sbom, &sha256_digest(&sbom)).await,
    );
    let sbom_annotations = annotations(&[
        ("org.opencontainers.image.created", "2024-01-01T00:00:00Z"),
        ("com.example.kind", "sbom"),
    ]);
    let sbom_manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: EMPTY_MEDIA_TYPE.to_string(),
            digest: sha256_digest(&empty_config),
            size: 2,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: "application/spdx+json".to_string(),
            digest: sha256_digest(&sbom),
            size: sbom.len() as i64,
            ..Default::default()
        }],
        subject: Some(subject.clone()),
        artifact_type: Some(SBOM_TYPE.to_string()),
        annotations: sbom_annotations.clone(),
    };
    let sbom_bytes = serde_json::to_vec_pretty(&sbom_manifest).unwrap();
    let sbom_digest = sha256_digest(&sbom_bytes);
    let sbom_ref = srv.reference(&format!("it/art@{sbom_digest}"));
    srv.ok(
        "push_manifest_raw sbom",
        client
            .push_manifest_raw(&sbom_ref, sbom_bytes.clone(), OCI_IMAGE_MEDIA_TYPE.parse().unwrap())
            .await,
    );
    let (raw, d) = srv.ok(
        "pull_manifest_raw sbom",
        client
            .pull_manifest_raw(&sbom_ref, &ANON, &[OCI_IMAGE_MEDIA_TYPE])
            .await,
    );
    assert_eq!(d, sbom_digest);
    assert!(raw == sbom_bytes, "registry did not store the manifest byte for byte");

    // Referrer 2: no artifactType, pushed by tag through Client::push; the referrers API must
    // report its config media type as the artifactType.
    let sig_config = Config::new(b"{\"signer\":\"ci\"}".to_vec(), SIG_CONFIG_TYPE.to_string(), None);
    let sig_layers = vec![ImageLayer::new(
        b"signature bytes".to_vec(),
        "application/vnd.example.signature.v1".to_string(),
        None,
    )];
    let mut sig_manifest = OciImageManifest::build(&sig_layers, &sig_config, None);
    sig_manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
    sig_manifest.subject = Some(subject.clone());
    let sig_ref = srv.reference("it/art:sig");
    srv.ok(
        "push sig",
        client
            .push(&sig_ref, &sig_layers, sig_config, &ANON, Some(sig_manifest))
            .await,
    );
    let (sig_raw, sig_digest) = srv.ok(
        "pull_manifest_raw sig",
        client.pull_manifest_raw(&sig_ref, &ANON, &[OCI_IMAGE_MEDIA_TYPE]).await,
    );

    let all = srv.ok("pull_referrers", client.pull_referrers(&base_by_digest, None).await);
    assert_eq!(all.schema_version, 2);
    assert_eq!(all.media_type.as_deref(), Some(OCI_IMAGE_INDEX_MEDIA_TYPE));
    let mut digests: Vec<&str> = all.manifests.iter().map(|m| m.digest.as_str()).collect();
    digests.sort();
    let mut want = vec![sbom_digest.as_str(), sig_digest.as_str()];
    want.sort();
    assert_eq!(digests, want, "referrers: {:?}", all.manifests);
    let sbom_entry = all.manifests.iter().find(|m| m.digest == sbom_digest).unwrap();
    assert_eq!(sbom_entry.media_type, OCI_IMAGE_MEDIA_TYPE);
    assert_eq!(sbom_entry.size, sbom_bytes.len() as i64);
    assert_eq!(sbom_entry.annotations, sbom_annotations);
    let sig_entry = all.manifests.iter().find(|m| m.digest == sig_digest).unwrap();
    assert_eq!(sig_entry.size, sig_raw.len() as i64);
    // ImageIndexEntry has no artifactType field; read it from the raw JSON.
    let raw_index: serde_json::Value = reqwest::get(format!("{}/v2/it/art/referrers/{base_digest}", srv.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let types: BTreeMap<String, String> = raw_index["manifests"]
        .as_array()
        .expect("manifests array")
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().unwrap().to_string(),
                m["artifactType"].as_str().unwrap_or("<missing>").to_string(),
            )
        })
        .collect();
    assert_eq!(types.get(&sbom_digest).map(String::as_str), Some(SBOM_TYPE));
    assert_eq!(types.get(&sig_digest).map(String::as_str), Some(SIG_CONFIG_TYPE));

    // artifactType filter.
    let only_sbom = srv.ok(
        "pull_referrers sbom",
        client.pull_referrers(&base_by_digest, Some(SBOM_TYPE)).await,
    );
    let got: Vec<&str> = only_sbom.manifests.iter().map(|m| m.digest.as_str()).collect();
    assert_eq!(got, vec![sbom_digest.as_str()]);
    let only_sig = srv.ok(
        "pull_referrers sig",
        client.pull_referrers(&base_by_digest, Some(SIG_CONFIG_TYPE)).await,
    );
    let got: Vec<&str> = only_sig.manifests.iter().map(|m| m.digest.as_str()).collect();
    assert_eq!(got, vec![sig_digest.as_str()]);
    let none = srv.ok(
        "pull_referrers other",
        client
            .pull_referrers(&base_by_digest, Some("application/vnd.example.other"))
            .await,
    );
    assert!(none.manifests.is_empty());

    // The artifact pulls back through the typed API with subject and artifactType.
    let (m, _) = srv.ok("pull_manifest sbom", client.pull_manifest(&sbom_ref, &ANON).await);
    match m {
        OciManifest::Image(m) => {
            assert_eq!(m.artifact_type.as_deref(), Some(SBOM_TYPE));
            assert_eq!(m.subject.map(|s| s.digest), Some(base_digest.clone()));
        }
        other => panic!("expected an image manifest, got {other}"),
    }
    let mut blob = Vec::new();
    srv.ok(
        "pull_blob sbom",
        client
            .pull_blob(&sbom_ref, sha256_digest(&sbom).as_str(), &mut blob)
            .await,
    );
    assert_eq!(blob, sbom);
}

#[tokio::test]
async fn list_tags_with_pagination() {
    let srv = TestServer::start().await;
    let client = client();
    let (config, layers) = sample_image("amd64", 4);
    let first = srv.reference("it/tags:v2");
    push_image(&srv, &client, &first, &config, &layers).await;
    let manifest = OciManifest::Image(OciImageManifest::build(&layers, &config, None));
    let others = ["v10", "alpha", "beta", "gamma", "1.0"];
    for tag in others {
        srv.ok(
            "push_manifest",
            client
                .push_manifest(&srv.reference(&format!("it/tags:{tag}")), &manifest)
                .await,
        );
    }
    let mut all: Vec<String> = others.iter().map(|s| s.to_string()).collect();
    all.push("v2".to_string());
    all.sort(); // all lower-case, so byte order is the spec's lexical order

    let listed = srv.ok("list_tags", client.list_tags(&first, &ANON, None, None).await);
    assert_eq!(listed.name, "it/tags");
    assert_eq!(listed.tags, all);

    let page1 = srv.ok("list_tags n=2", client.list_tags(&first, &ANON, Some(2), None).await);
    assert_eq!(page1.tags, all[..2].to_vec());
    let page2 = srv.ok(
        "list_tags n=2 last",
        client.list_tags(&first, &ANON, Some(2), Some(&all[1])).await,
    );
    assert_eq!(page2.tags, all[2..4].to_vec());
    let rest = srv.ok(
        "list_tags n=100 last",
        client.list_tags(&first, &ANON, Some(100), Some(&all[3])).await,
    );
    assert_eq!(rest.tags, all[4..].to_vec());
    let after_end = srv.ok(
        "list_tags past the end",
        client
            .list_tags(&first, &ANON, Some(10), Some(&all[all.len() - 1]))
            .await,
    );
    assert!(after_end.tags.is_empty(), "{:?}", after_end.tags);
}

#[tokio::test]
async fn image_index_and_platform_resolution() {
    let srv = TestServer::start().await;
    let client = client();
    let (amd_config, amd_layers) = sample_image("amd64", 5);
    let (arm_config, arm_layers) = sample_image("arm64", 6);
    let (amd_digest, amd_size) = push_image(
        &srv,
        &client,
        &srv.reference("it/multi:amd64"),
        &amd_config,
        &amd_layers,
    )
    .await;
    let (arm_digest, arm_size) = push_image(
        &srv,
        &client,
        &srv.reference("it/multi:arm64"),
        &arm_config,
        &arm_layers,
    )
    .await;
    let entry = |digest: &str, size: i64, arch: &str| ImageIndexEntry {
        media_type: OCI_IMAGE_MEDIA_TYPE.to_string(),
        digest: digest.to_string(),
        size,
        platform: Some(Platform {
            architecture: arch.to_string(),
            os: "linux".to_string(),
            os_version: None,
            os_features: None,
            variant: None,
            features: None,
        }),
        annotations: None,
    };
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_string()),
        manifests: vec![
            entry(&amd_digest, amd_size, "amd64"),
            entry(&arm_digest, arm_size, "arm64"),
        ],
        artifact_type: None,
        annotations: annotations(&[("org.opencontainers.image.description", "two platforms")]),
    };
    let index_ref = srv.reference("it/multi:v1");
    srv.ok(
        "push_manifest_list",
        client.push_manifest_list(&index_ref, &ANON, index.clone()).await,
    );

    let (raw, index_digest) = srv.ok(
        "pull_manifest_raw index",
        client
            .pull_manifest_raw(&index_ref, &ANON, &[OCI_IMAGE_INDEX_MEDIA_TYPE])
            .await,
    );
    assert_eq!(index_digest, sha256_digest(&raw));
    match srv
        .ok("pull_manifest index", client.pull_manifest(&index_ref, &ANON).await)
        .0
    {
        OciManifest::ImageIndex(got) => {
            let digests: Vec<&str> = got.manifests.iter().map(|m| m.digest.as_str()).collect();
            assert_eq!(digests, vec![amd_digest.as_str(), arm_digest.as_str()]);
            assert_eq!(got.manifests[1].platform.as_ref().unwrap().architecture, "arm64");
            assert_eq!(got.annotations, index.annotations);
        }
        other => panic!("expected an image index, got {other}"),
    }

    // The default resolver of `client()` picks linux/amd64 ...
    let (m, d) = srv.ok(
        "pull_image_manifest amd64",
        client.pull_image_manifest(&index_ref, &ANON).await,
    );
    assert_eq!(d, amd_digest);
    assert_eq!(m.config.digest, amd_config.sha256_digest());
    let image = srv.ok(
        "pull amd64",
        client
            .pull(
                &index_ref,
                &ANON,
                vec![IMAGE_LAYER_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE],
            )
            .await,
    );
    assert_eq!(image.config.data, amd_config.data);
    assert_same_layers(&image.layers, &amd_layers);

    // ... and a custom one picks linux/arm64.
    let arm_client = client_with(ClientConfig {
        platform_resolver: Some(Box::new(|entries: &[ImageIndexEntry]| {
            entries
                .iter()
                .find(|e| e.platform.as_ref().is_some_and(|p| p.architecture == "arm64"))
                .map(|e| e.digest.clone())
        })),
        ..Default::default()
    });
    let (m, d) = srv.ok(
        "pull_image_manifest arm64",
        arm_client.pull_image_manifest(&index_ref, &ANON).await,
    );
    assert_eq!(d, arm_digest);
    assert_eq!(m.config.digest, arm_config.sha256_digest());
}

#[tokio::test]
async fn cross_repository_mount() {
    let srv = TestServer::start().await;
    let client = client();
    let src = srv.reference("it/source:v1");
    let (config, layers) = sample_image("amd64", 7);
    let (digest, _) = push_image(&srv, &client, &src, &config, &layers).await;

    let dst = srv.reference("other/dest:v1");
    for blob in layers
        .iter()
        .map(|l| l.sha256_digest())
        .chain(std::iter::once(config.sha256_digest()))
    {
        srv.ok(
            &format!("mount_blob {blob}"),
            client.mount_blob(&dst, &src, &blob).await,
        );
    }
    // Every blob is now in the destination, so the manifest can be pushed there directly.
    let manifest = OciManifest::Image(OciImageManifest::build(&layers, &config, None));
    srv.ok("push_manifest dest", client.push_manifest(&dst, &manifest).await);
    let image = srv.ok(
        "pull dest",
        client
            .pull(&dst, &ANON, vec![IMAGE_LAYER_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE])
            .await,
    );
    assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(image.config.data, config.data);
    assert_same_layers(&image.layers, &layers);
}

#[tokio::test]
async fn missing_content_is_an_error() {
    let srv = TestServer::start().await;
    let client = client();
    let missing = srv.reference("it/nothing:v1");
    let err = client
        .pull_manifest(&missing, &ANON)
        .await
        .expect_err("pulling a manifest that was never pushed must fail");
    let text = format!("{err:?}");
    assert!(
        text.contains("MANIFEST_UNKNOWN")
            || text.contains("NAME_UNKNOWN")
            || text.contains("ManifestUnknown")
            || text.contains("NameUnknown"),
        "expected an OCI MANIFEST_UNKNOWN/NAME_UNKNOWN error, got {text}"
    );
    let (config, layers) = sample_image("amd64", 8);
    let here = srv.reference("it/here:v1");
    push_image(&srv, &client, &here, &config, &layers).await;
    let mut out = Vec::new();
    let absent = sha256_digest(b"never uploaded");
    assert!(
        client.pull_blob(&here, absent.as_str(), &mut out).await.is_err(),
        "pulling an unknown blob must fail"
    );
    // A manifest that references a blob the registry does not have is refused.
    let mut broken = OciImageManifest::build(&layers, &config, None);
    broken.layers[0].digest = absent;
    assert!(
        client
            .push_manifest(&srv.reference("it/here:broken"), &OciManifest::Image(broken))
            .await
            .is_err(),
        "a manifest referencing a missing blob must be rejected (MANIFEST_BLOB_UNKNOWN)"
    );
}
