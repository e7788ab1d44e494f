//! Configuration: built-in defaults, then an optional TOML file (`--config`), then environment
//! variables, then command-line flags. Environment variables are named `IMAGE_MANAGER_`
//! followed by the section and key in upper case joined by a double underscore, e.g.
//! `IMAGE_MANAGER_REGISTRY__DELETE_ENABLED=false` sets `[registry] delete_enabled`.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub registry: RegistryConfig,
    pub log: LogConfig,
    pub gc: GcConfig,
    pub catalog: CatalogConfig,
    pub jobs: JobsConfig,
    pub secrets: SecretsConfig,
    pub distribution: DistributionConfig,
    pub relay: RelayConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub shutdown_timeout_secs: u64,
    /// `none` (loopback only) or `token` (Docker token authentication and HTTP Basic).
    pub auth: String,
    /// Lifetime of the tokens the token endpoint issues.
    pub token_ttl_secs: u64,
    /// The token endpoint's public URL in `WWW-Authenticate` challenges (behind a proxy);
    /// empty: `http(s)://<Host of the request>/token`.
    pub token_realm: Option<String>,
    /// Lifetime of refresh tokens (`access_type=offline` / `offline_token=true`); 0: none issued.
    pub refresh_token_ttl_secs: u64,
    /// PEM certificate chain and private key: serve HTTPS (rustls) when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address beyond loopback (behind a TLS-terminating proxy).
    /// Off by default: without TLS, only loopback addresses are served.
    pub allow_plain_http: bool,
    /// A client that has not sent a whole request head this long after its first byte is
    /// disconnected (seconds; plain HTTP and TLS alike).
    pub header_read_timeout_secs: u64,
    /// A connection with no request in flight and no byte in either direction for this long
    /// is closed (keep-alive idle timeout, seconds).
    pub idle_timeout_secs: u64,
    /// A request whose body sends no byte for this long fails (a slow but moving upload is
    /// fine), and so does a response the client stops reading (seconds).
    pub body_idle_timeout_secs: u64,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5000".into(),
            data_dir: PathBuf::from("./data"),
            shutdown_timeout_secs: 30,
            auth: "none".into(),
            token_ttl_secs: 300,
            token_realm: None,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            tls_cert: None,
            tls_key: None,
            allow_plain_http: false,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 75,
            body_idle_timeout_secs: 60,
            max_connections: 4096,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Metadata database URL; empty means `sqlite://<data_dir>/metadata.db`.
    pub database: String,
    /// Blob store URL; empty means `file://<data_dir>`.
    pub blobs: String,
    /// fsync blobs and database commits before acknowledging a write.
    pub fsync: bool,
    /// Answer blob GETs with a redirect to a presigned URL when the blob store offers one (S3).
    pub redirect: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            database: String::new(),
            blobs: String::new(),
            fsync: true,
            redirect: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    pub delete_enabled: bool,
    pub upload_expiry_secs: u64,
    pub upload_sweep_interval_secs: u64,
    pub max_manifest_bytes: usize,
    /// Storage quota of a namespace that has none set through the admin API (0: unlimited).
    pub default_quota_bytes: u64,
    /// Largest blob a push may store, on /v2 and through the catalog (0: no limit).
    pub max_blob_bytes: u64,
    /// How long a request's exclusive write lease on an upload session lasts unless renewed
    /// (renewed every third of it while the chunk streams); a stalled writer loses the session
    /// to the next request after this long.
    pub upload_lease_secs: u64,
    /// Below this many free bytes in the blob store (where it can tell: a filesystem), pushes
    /// are refused with 507 before they start and /readyz reports `degraded`; reads go on.
    pub min_free_bytes: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            delete_enabled: true,
            upload_expiry_secs: 24 * 3600,
            upload_sweep_interval_secs: 15 * 60,
            max_manifest_bytes: 4 * 1024 * 1024,
            default_quota_bytes: 0,
            max_blob_bytes: 256 * 1024 * 1024 * 1024,
            upload_lease_secs: 30,
            min_free_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `image_manager=debug,tower_http=info`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

/// Garbage collection (`image-manager gc`, and the server's own schedule).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// How often the server collects garbage on its own, in seconds; 0 turns it off.
    pub interval_secs: u64,
    /// Untagged manifests younger than this are kept, as if tagged.
    pub untagged_retention_secs: u64,
    /// Blobs linked to a repository more recently than this are kept even when no manifest
    /// references them yet (a push uploads blobs before its manifest).
    pub blob_grace_secs: u64,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            interval_secs: 0,
            untagged_retention_secs: 7 * 24 * 3600,
            blob_grace_secs: 3600,
        }
    }
}

/// The image catalog: VM image and VNF package ingestion limits, the indexer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// VM images whose virtual disk is larger than this are refused (0: no limit).
    pub max_virtual_size_bytes: u64,
    /// Namespace of images uploaded without one.
    pub default_namespace: String,
    /// How often the catalog indexer looks for registry changes made by other replicas.
    pub index_interval_secs: u64,
    /// VNF packages (CSAR zips): largest upload, most entries, largest total uncompressed
    /// size and highest compression ratio of an entry (zip bombs are refused).
    pub max_package_bytes: u64,
    pub max_package_entries: usize,
    pub max_package_uncompressed_bytes: u64,
    pub max_package_ratio: u64,
    /// Multipart uploads: most metadata fields, and largest metadata field read into memory
    /// (the `file` part is streamed, never held).
    pub max_fields: usize,
    pub max_field_bytes: usize,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            max_virtual_size_bytes: 4 << 40,
            default_namespace: "library".into(),
            index_interval_secs: 2,
            max_package_bytes: 64 << 30,
            max_package_entries: 10_000,
            max_package_uncompressed_bytes: 128 << 30,
            max_package_ratio: 500,
            max_fields: 200,
            max_field_bytes: 64 * 1024,
        }
    }
}

/// Durable jobs (`core::jobs`), the leases of once-per-cluster background work, and the
/// consumers of the event outbox (`core::outbox`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// How often an idle worker looks for jobs enqueued by other replicas (ms); a job enqueued
    /// by this process wakes it at once.
    pub poll_interval_ms: u64,
    /// How long a claimed job stays leased to its worker without a heartbeat; then another
    /// worker may take it up.
    pub lease_ttl_secs: u64,
    /// How often a worker renews the lease of a job it runs.
    pub heartbeat_secs: u64,
    /// Claims of a job before it is dead, unless its enqueuer says otherwise.
    pub max_attempts: u32,
    /// Delay before a failed job runs again: random between 0 and
    /// `retry_base_ms * 2^(attempt - 1)`, that ceiling at most `retry_max_secs`.
    pub retry_base_ms: u64,
    pub retry_max_secs: u64,
    /// On shutdown, how long running jobs may take to finish; those still running are left to
    /// their lease's expiry, and another replica takes them up.
    pub shutdown_grace_secs: u64,
    /// Lease of the work one replica runs for the whole cluster (garbage collection, upload
    /// sweeps, pruning), renewed every third of it while the replica runs.
    pub maintenance_lease_secs: u64,
    /// An outbox consumer steps past a missing event id after this long: a transaction that
    /// rolled back leaves its id missing for good.
    pub outbox_gap_timeout_secs: u64,
    /// How many events are kept below the slowest consumer's cursor when the outbox is pruned.
    pub event_retention: u64,
    /// How often the outbox and finished jobs are pruned; 0: never.
    pub prune_interval_secs: u64,
    /// Done jobs are deleted this long after they finished (dead ones are kept).
    pub done_retention_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            poll_interval_ms: 1000,
            lease_ttl_secs: 30,
            heartbeat_secs: 10,
            max_attempts: 10,
            retry_base_ms: 1000,
            retry_max_secs: 600,
            shutdown_grace_secs: 20,
            maintenance_lease_secs: 15,
            outbox_gap_timeout_secs: 10,
            event_retention: 100_000,
            prune_interval_secs: 3600,
            done_retention_secs: 7 * 24 * 3600,
        }
    }
}

const SECTIONS: [&str; 10] = [
    "server__",
    "storage__",
    "registry__",
    "log__",
    "gc__",
    "catalog__",
    "jobs__",
    "secrets__",
    "distribution__",
    "relay__",
];

/// A configured secret: shown as `***` in debug output and logs.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The key that seals VIM credentials at rest (`core::secrets`): AES-256-GCM, 32 random bytes
/// in base64 (`openssl rand -base64 32`), given inline (best from the environment:
/// `IMAGE_MANAGER_SECRETS__KEY`) or in a file. Without either, the server creates
/// `<data_dir>/secret.key` (mode 0600) on first use, which suits one machine only: replicas
/// must share the key. Rotation: make the new key the key, list the old one under
/// `old_keys` / `old_key_files`, and run `image-manager secrets rotate` (the server also
/// re-seals what it reads under an old key).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    pub key: Option<SecretString>,
    pub key_file: Option<PathBuf>,
    /// Keys that only decrypt (being rotated out).
    pub old_keys: Vec<SecretString>,
    pub old_key_files: Vec<PathBuf>,
}

/// The distribution engine (`core::distribution`): how images go to VIMs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributionConfig {
    /// This server's base URL as VIMs reach it (e.g. `https://images.example.net`), used to
    /// build web-download URLs; a VIM's own `download_url` overrides it. Empty: web-download
    /// only to VIMs that have one.
    pub public_url: Option<String>,
    /// Lifetime of a web-download URL (its token expires with it).
    pub download_url_ttl_secs: u64,
    /// Targets transferred at once by one replica, over all VIMs.
    pub concurrency: usize,
    /// Targets transferred at once to one VIM.
    pub per_vim_concurrency: usize,
    /// Bytes per second all transfers of this replica send together; 0: no cap.
    pub max_bytes_per_sec: u64,
    /// Bytes per second sent to one VIM; 0: no cap. A VIM's own `max_bytes_per_sec` overrides it.
    pub per_vim_bytes_per_sec: u64,
    /// Attempts of a target before it fails.
    pub max_attempts: u32,
    /// Longest one attempt may take, transfer and verification included.
    pub attempt_timeout_secs: u64,
    /// Delay between attempts: random up to `retry_base_ms * 2^(attempt-1)`, at most `retry_max_secs`.
    pub retry_base_ms: u64,
    pub retry_max_secs: u64,
    /// Timeout of one metadata call to a VIM (not of a transfer, which only has to keep moving).
    pub call_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// A transfer that moves no byte this long fails its attempt.
    pub stall_timeout_secs: u64,
    /// How often each VIM's health is checked; 0: only on demand.
    pub health_interval_secs: u64,
    /// How often each VIM's inventory is synced; 0: only on demand.
    pub inventory_interval_secs: u64,
    /// How often a target waiting for the VIM (an import, a verification) asks again (ms).
    pub poll_interval_ms: u64,
    /// Slowest a VIM's own download (Glance's web-download import) may be before its attempt
    /// fails: it gets `stall_timeout_secs` plus the image's size at this rate; 0: no floor.
    pub import_min_bytes_per_sec: u64,
    /// Regional relays (`image-manager serve --upstream`): a VIM whose labels match a relay's
    /// `selector` downloads through that relay's `url` (the first match wins; a VIM's own
    /// `relay_url` comes first), so each image crosses the central uplink once per region.
    pub relays: Vec<RelayRoute>,
}

/// One regional relay and the VIMs that download through it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayRoute {
    /// The relay's base URL as the VIMs reach it.
    pub url: String,
    /// VIM labels, `key=value[,key=value…]`, all of which must match.
    pub selector: String,
}

/// Relay mode (`image-manager serve --upstream URL`): this server is a pull-through cache of
/// another Image Manager. It serves download links and blob pulls from its own blob store,
/// fetching each blob from the upstream once; the upstream authorizes every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// The upstream Image Manager's base URL; set, the server runs as a relay.
    pub upstream: Option<String>,
    /// PEM bundle of extra roots trusted for the upstream's certificate.
    pub upstream_ca_file: Option<PathBuf>,
    /// Bytes of blobs kept; the least recently used go first. A blob larger than this is
    /// passed through from the upstream, not kept.
    pub cache_max_bytes: u64,
    pub connect_timeout_secs: u64,
    /// Timeout of one authorization call (HEAD) to the upstream.
    pub call_timeout_secs: u64,
    /// A fetch from the upstream that moves no byte this long fails.
    pub stall_timeout_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            upstream: None,
            upstream_ca_file: None,
            cache_max_bytes: 100 << 30,
            connect_timeout_secs: 10,
            call_timeout_secs: 30,
            stall_timeout_secs: 120,
        }
    }
}

impl Default for DistributionConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            download_url_ttl_secs: 3600,
            concurrency: 16,
            per_vim_concurrency: 2,
            max_bytes_per_sec: 0,
            per_vim_bytes_per_sec: 0,
            max_attempts: 5,
            attempt_timeout_secs: 6 * 3600,
            retry_base_ms: 2000,
            retry_max_secs: 300,
            call_timeout_secs: 30,
            connect_timeout_secs: 10,
            stall_timeout_secs: 120,
            health_interval_secs: 300,
            inventory_interval_secs: 3600,
            poll_interval_ms: 1000,
            import_min_bytes_per_sec: 256 * 1024,
            relays: Vec::new(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given), then `IMAGE_MANAGER_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            fig = fig.merge(Toml::file_exact(file));
        }
        let env = Env::prefixed("IMAGE_MANAGER_")
            .filter(|k| SECTIONS.iter().any(|s| k.as_str().to_ascii_lowercase().starts_with(s)))
            .split("__");
        fig.merge(env).extract().map_err(Box::new)
    }

    pub fn database_url(&self) -> String {
        if self.storage.database.is_empty() {
            format!("sqlite://{}", self.server.data_dir.join("metadata.db").display())
        } else {
            self.storage.database.clone()
        }
    }

    pub fn blobs_url(&self) -> String {
        if self.storage.blobs.is_empty() {
            format!("file://{}", self.server.data_dir.display())
        } else {
            self.storage.blobs.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_configuration_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/image-manager.toml");
        let c = Config::load(Some(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(c.relay.cache_max_bytes, RelayConfig::default().cache_max_bytes);
        assert!(c.relay.upstream.is_none() && c.distribution.relays.is_empty());
    }
}
