//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! One process-wide set ([`metrics`]): the HTTP layer counts requests by route, method and
//! status with their latency and the bytes in and out ([`crate::http::serve`]); every blob
//! store and metadata database call is timed by one wrapper per kind of store
//! ([`crate::storage::instrumented`]); the background loops
//! count garbage collections; gauges that describe state (free space, indexer lag, job queues)
//! are read when the endpoint is scraped.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub store: &'static str,
    pub op: &'static str,
}

/// A metadata store call: its role trait (`registry`, `accounts`, `gc`, `catalog`, `jobs`),
/// method and outcome (`ok` or the error's kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetaLabels {
    pub store: &'static str,
    pub op: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    pub store: &'static str,
    pub op: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub http_bytes_in: Counter,
    pub http_bytes_out: Counter,
    pub connections_open: Gauge,
    pub connections: Counter,
    pub upload_writes_in_flight: Gauge,
    pub store_duration: Family<StoreLabels, Histogram>,
    pub store_errors: Family<StoreErrorLabels, Counter>,
    pub store_read_bytes: Family<StoreLabels, Counter>,
    pub meta_duration: Family<MetaLabels, Histogram>,
    pub sqlite_reads: Family<OutcomeLabels, Counter>,
    pub sqlite_writes: Family<OutcomeLabels, Counter>,
    pub sqlite_wal_syncs: Counter,
    pub sqlite_wal_sync_commits: Counter,
    pub gc_runs: Family<OutcomeLabels, Counter>,
    pub gc_reclaimed_bytes: Counter,
    pub blob_free_bytes: Gauge,
    pub indexer_lag_events: Gauge,
    pub job_queue_depth: Family<QueueLabels, Gauge>,
    pub job_queue_oldest_seconds: Family<QueueLabels, Gauge>,
    pub download_bytes: Counter,
    pub relay_requests: Family<OutcomeLabels, Counter>,
    pub relay_fetched_bytes: Counter,
    pub relay_evictions: Counter,
    pub relay_cache_bytes: Gauge,
}

fn db_latency() -> Histogram {
    // 50 µs to about 26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn latency() -> Histogram {
    // 0.25 ms to about 4 min.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 20))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("image_manager");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's head to its response's head",
            http_duration.clone(),
        );
        let http_bytes_in = Counter::default();
        registry.register(
            "http_request_body_bytes",
            "Request body bytes read",
            http_bytes_in.clone(),
        );
        let http_bytes_out = Counter::default();
        registry.register(
            "http_response_body_bytes",
            "Response body bytes sent",
            http_bytes_out.clone(),
        );
        let connections_open = Gauge::default();
        registry.register("connections_open", "Client connections open", connections_open.clone());
        let connections = Counter::default();
        registry.register("connections", "Client connections accepted", connections.clone());
        let upload_writes_in_flight = Gauge::default();
        registry.register(
            "upload_writes_in_flight",
            "Request bodies being written into upload data right now",
            upload_writes_in_flight.clone(),
        );
        let store_duration = Family::<StoreLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "store_call_duration_seconds",
            "Latency of storage calls, by store and operation (streams: until opened)",
            store_duration.clone(),
        );
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        registry.register(
            "store_call_errors",
            "Failed storage calls, by store, operation and kind",
            store_errors.clone(),
        );
        let store_read_bytes = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_read_bytes",
            "Bytes read from the blob store, by operation",
            store_read_bytes.clone(),
        );
        let meta_duration = Family::<MetaLabels, Histogram>::new_with_constructor(db_latency as fn() -> Histogram);
        registry.register(
            "metadata_call_duration_seconds",
            "Latency of metadata database calls, by role (store), operation and outcome",
            meta_duration.clone(),
        );
        let sqlite_reads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sqlite_hot_reads",
            "SQLite registry reads run in place (in_place) or handed to sqlx (sqlx)",
            sqlite_reads.clone(),
        );
        let sqlite_writes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sqlite_hot_writes",
            "SQLite push writes run in place (in_place) or handed to sqlx (sqlx)",
            sqlite_writes.clone(),
        );
        let sqlite_wal_syncs = Counter::default();
        registry.register(
            "sqlite_wal_syncs",
            "fdatasyncs of the SQLite write-ahead log by the group commit (storage.fsync on)",
            sqlite_wal_syncs.clone(),
        );
        let sqlite_wal_sync_commits = Counter::default();
        registry.register(
            "sqlite_wal_sync_commits",
            "Writes made durable by those syncs (several share one sync)",
            sqlite_wal_sync_commits.clone(),
        );
        let gc_runs = Family::<OutcomeLabels, Counter>::default();
        registry.register("gc_runs", "Garbage collections run, by outcome", gc_runs.clone());
        let gc_reclaimed_bytes = Counter::default();
        registry.register(
            "gc_reclaimed_bytes",
            "Bytes of blobs and manifests garbage collection removed",
            gc_reclaimed_bytes.clone(),
        );
        let blob_free_bytes = Gauge::default();
        registry.register(
            "blob_store_free_bytes",
            "Free bytes in the blob store (-1: the backend does not tell)",
            blob_free_bytes.clone(),
        );
        let indexer_lag_events = Gauge::default();
        registry.register(
            "catalog_indexer_lag_events",
            "Registry events not yet applied to the catalog",
            indexer_lag_events.clone(),
        );
        let job_queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "job_queue_depth",
            "Jobs waiting or running, by queue",
            job_queue_depth.clone(),
        );
        let job_queue_oldest_seconds = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "job_queue_oldest_seconds",
            "Age of the oldest waiting job, by queue",
            job_queue_oldest_seconds.clone(),
        );
        let download_bytes = Counter::default();
        registry.register(
            "download_link_bytes",
            "Blob bytes sent through download links (/dl: Glance web-download, MultiCloud, relays)",
            download_bytes.clone(),
        );
        let relay_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "relay_requests",
            "Relay mode: blob requests by outcome (hit, miss, passthrough, refused)",
            relay_requests.clone(),
        );
        let relay_fetched_bytes = Counter::default();
        registry.register(
            "relay_upstream_bytes",
            "Relay mode: blob bytes fetched from the upstream",
            relay_fetched_bytes.clone(),
        );
        let relay_evictions = Counter::default();
        registry.register(
            "relay_evictions",
            "Relay mode: blobs evicted from the cache",
            relay_evictions.clone(),
        );
        let relay_cache_bytes = Gauge::default();
        registry.register(
            "relay_cache_bytes",
            "Relay mode: bytes of blobs cached",
            relay_cache_bytes.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            http_bytes_in,
            http_bytes_out,
            connections_open,
            connections,
            upload_writes_in_flight,
            store_duration,
            store_errors,
            store_read_bytes,
            meta_duration,
            sqlite_reads,
            sqlite_writes,
            sqlite_wal_syncs,
            sqlite_wal_sync_commits,
            gc_runs,
            gc_reclaimed_bytes,
            blob_free_bytes,
            indexer_lag_events,
            job_queue_depth,
            job_queue_oldest_seconds,
            download_bytes,
            relay_requests,
            relay_fetched_bytes,
            relay_evictions,
            relay_cache_bytes,
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Counts one thing as in flight while it lives.
pub struct InFlight(&'static Gauge);

impl InFlight {
    pub fn new(g: &'static Gauge) -> Self {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
