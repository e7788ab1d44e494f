//! Start-up: open the stores named by the configuration, apply migrations, serve HTTP, run the
//! background maintenance, and shut down gracefully.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, AuthMode};
use crate::config::Config;
use crate::core::jobs::Leadership;
use crate::core::Registry;
use crate::storage::fs::FsBlobStore;
use crate::storage::instrumented::InstrumentedMeta;
use crate::storage::s3::S3BlobStore;
use crate::storage::sql::SqlStore;
use crate::storage::{now_ms, BlobStore, GcStore, JobStore, MetadataStore};

/// The metadata database as the server and the CLI use it: every call instrumented.
pub type Metadata = InstrumentedMeta<SqlStore>;

/// Open (and migrate) the metadata store named by the configuration, wrapped so that every
/// call is timed and traced ([`InstrumentedMeta`]).
pub async fn open_metadata(config: &Config) -> anyhow::Result<Arc<Metadata>> {
    if config.database_url().starts_with("sqlite://") {
        std::fs::create_dir_all(&config.server.data_dir)
            .with_context(|| format!("creating data directory {}", config.server.data_dir.display()))?;
    }
    let store = SqlStore::connect(&config.database_url(), config.storage.fsync)
        .await
        .context("connecting to the metadata database")?;
    store.migrate().await.context("applying database migrations")?;
    Ok(InstrumentedMeta::wrap(Arc::new(store)))
}

/// Open the blob store named by the configuration.
pub async fn open_blobs(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let url = config.blobs_url();
    let wrap = crate::storage::instrumented::InstrumentedBlobs::wrap;
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(wrap(Arc::new(
            FsBlobStore::open(path, config.storage.fsync).context("opening blob directory")?,
        )));
    }
    if url.starts_with("s3://") {
        return Ok(wrap(Arc::new(
            S3BlobStore::open(&url, config.storage.redirect)
                .await
                .context("opening S3 blob store")?,
        )));
    }
    bail!("unsupported blob store URL {url:?} (expected file:///path or s3://bucket/prefix)")
}

/// Bind `server.listen`.
async fn bind(config: &Config) -> anyhow::Result<(TcpListener, std::net::SocketAddr)> {
    let listener = TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Connections of `listener`, plain or TLS as `config.server` says; returns whether TLS.
fn accept(
    config: &Config,
    listener: TcpListener,
    local: std::net::SocketAddr,
) -> anyhow::Result<(crate::listener::Incoming, bool)> {
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => bail!("server.tls_cert and server.tls_key go together: set both or neither"),
    };
    if tls.is_none() && !local.ip().is_loopback() && !config.server.allow_plain_http {
        bail!(
            "refusing to serve plain HTTP on {local}: passwords and tokens would cross the network in \
             clear text. Give a certificate and key (--tls-cert/--tls-key, server.tls_cert/tls_key), \
             listen on loopback, or, behind a proxy that terminates TLS, set --allow-plain-http \
             (server.allow_plain_http = true)"
        );
    }
    let incoming = match &tls {
        Some((cert, key)) => crate::listener::Incoming::tls(listener, cert, key)?,
        None => crate::listener::Incoming::plain(listener)?,
    };
    Ok((incoming, tls.is_some()))
}

/// Relay mode (`relay.upstream` set): a pull-through cache of another Image Manager, with a
/// blob store and no metadata database of its own ([`crate::core::relay`]).
pub async fn serve_relay(config: Config) -> anyhow::Result<()> {
    if config.database_url().starts_with("sqlite://") || config.blobs_url().starts_with("file://") {
        std::fs::create_dir_all(&config.server.data_dir)
            .with_context(|| format!("creating data directory {}", config.server.data_dir.display()))?;
    }
    let blobs = open_blobs(&config).await?;
    let relay = Arc::new(crate::core::relay::Relay::open(config.relay.clone(), blobs).await?);
    let (listener, local) = bind(&config).await?;
    let (incoming, tls) = accept(&config, listener, local)?;
    tracing::info!(listen = %local, tls, upstream = relay.upstream(), "image-manager relay serving");
    let app = crate::http::relay::router(relay);
    crate::http::serve::serve(
        incoming,
        app,
        crate::http::serve::Limits::from_config(&config.server),
        async {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
        },
        Duration::from_secs(config.server.shutdown_timeout_secs),
    )
    .await;
    Ok(())
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    if config.relay.upstream.is_some() {
        return serve_relay(config).await;
    }
    for r in &config.distribution.relays {
        crate::core::vims::parse_selector(&r.selector)
            .map_err(|e| anyhow::anyhow!("distribution.relays: selector {:?}: {e}", r.selector))?;
        let url = reqwest::Url::parse(&r.url).with_context(|| format!("distribution.relays: url {:?}", r.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("distribution.relays: url {:?} is not an http(s) URL", r.url);
        }
    }
    let store = open_metadata(&config).await?;
    let meta: Arc<dyn MetadataStore> = store.clone();
    let gc_store: Arc<dyn GcStore> = store.clone();
    let jobs: Arc<dyn JobStore> = store.clone();
    let vim_store: Arc<dyn crate::storage::VimStore> = store.clone();
    let dist_store: Arc<dyn crate::storage::DistributionStore> = store;
    let blobs = open_blobs(&config).await?;
    let sealer = Arc::new(
        crate::core::secrets::Sealer::from_config(&config.secrets, &config.server.data_dir)
            .context("loading the secret key (secrets.key, secrets.key_file)")?,
    );
    let mode = AuthMode::parse(&config.server.auth).with_context(|| {
        format!(
            "server.auth (--auth) is {:?}: expected none or token",
            config.server.auth
        )
    })?;
    let (listener, local) = bind(&config).await?;
    if mode == AuthMode::None && !local.ip().is_loopback() {
        bail!(
            "refusing to serve {local} with --auth none: without authentication anyone who can reach \
             this address could push, overwrite and delete images. Listen on a loopback address \
             (127.0.0.1 or ::1), or use --auth token (server.auth = \"token\") after creating an \
             admin with `image-manager user add NAME --admin --password-stdin`"
        );
    }
    let (incoming, tls) = accept(&config, listener, local)?;
    let auth = match mode {
        AuthMode::None => Auth::none(),
        AuthMode::Token => {
            if meta.users().await?.is_empty() {
                tracing::warn!(
                    "no users exist yet: create the first admin with `echo PASSWORD | image-manager user add NAME \
                     --admin --password-stdin` and the same --data-dir/--database"
                );
            }
            Auth::token(
                &*meta,
                config.server.token_ttl_secs,
                config.server.refresh_token_ttl_secs,
            )
            .await
            .context("loading the token signing key")?
            .with_realm(config.server.token_realm.clone(), tls)
        }
    };
    let registry = Arc::new(
        Registry::new(blobs, meta, config.registry.clone())
            .with_catalog(config.catalog.clone())
            .with_auth(auth)
            .with_jobs(jobs.clone()),
    );
    let scheme = if tls { "https" } else { "http" };
    tracing::info!(listen = %local, scheme, auth = %config.server.auth, data_dir = %config.server.data_dir.display(), "image-manager serving");

    // Background work. The indexer runs on every replica (re-deriving an entry is idempotent);
    // the rest runs on one replica at a time, the one holding its cluster lease.
    let owner = crate::core::jobs::replica_id();
    let lease_ttl = Duration::from_secs(config.jobs.maintenance_lease_secs.max(1));
    let leases = CancellationToken::new();
    let mut keepers = Vec::new();
    let lease = |name: &'static str| {
        let (jobs, owner, leases) = (jobs.clone(), owner.clone(), leases.clone());
        async move { Leadership::start(jobs, name, &owner, lease_ttl, leases).await }
    };
    let (bg_stop, bg_stop_rx) = watch::channel(false);
    let mut loops = Vec::new();
    let (sweep_lease, keeper) = lease("upload-sweep").await;
    keepers.push(keeper);
    loops.push(tokio::spawn(sweep_uploads(
        registry.clone(),
        sweep_lease,
        bg_stop_rx.clone(),
    )));
    let indexer = tokio::spawn(crate::core::catalog::run_indexer(
        registry.clone(),
        jobs.clone(),
        Duration::from_secs(config.catalog.index_interval_secs.max(1)),
        Duration::from_secs(config.jobs.outbox_gap_timeout_secs),
        bg_stop_rx.clone(),
    ));
    if config.gc.interval_secs > 0 {
        let (gc_lease, keeper) = lease("gc").await;
        keepers.push(keeper);
        loops.push(tokio::spawn(collect_garbage(
            registry.clone(),
            gc_store,
            config.gc.clone(),
            gc_lease,
            bg_stop_rx.clone(),
        )));
    }
    if config.jobs.prune_interval_secs > 0 {
        let (prune_lease, keeper) = lease("outbox-prune").await;
        keepers.push(keeper);
        loops.push(tokio::spawn(prune_outbox(
            jobs.clone(),
            config.jobs.clone(),
            prune_lease,
            bg_stop_rx.clone(),
        )));
    }
    // The distribution engine: targets run on the durable job queue on every replica.
    let wake = Arc::new(tokio::sync::Notify::new());
    let vims = Arc::new(crate::core::vims::Vims::new(
        vim_store,
        registry.accounts.clone(),
        registry.auth.clone(),
        sealer,
        config.distribution.clone(),
    ));
    let engine = Arc::new(crate::core::distribution::Distribution::new(
        dist_store,
        vims.clone(),
        registry.entries.clone(),
        registry.meta.clone(),
        registry.blobs.clone(),
        registry.accounts.clone(),
        registry.auth.clone(),
        crate::core::jobs::Enqueuer::new(jobs.clone(), wake.clone()),
        crate::core::distribution::DownloadSigner::shared(&*registry.accounts)
            .await
            .context("loading the download link key")?,
        config.distribution.clone(),
    ));
    let _ = registry.distribution.set(engine.clone());
    loops.push(tokio::spawn(engine.clone().share_bandwidth(bg_stop_rx.clone())));
    let mut opts = crate::core::jobs::WorkerOptions::from_config(&config.jobs);
    opts.concurrency = config.distribution.concurrency.max(1);
    let worker = crate::core::jobs::Worker::new(
        jobs.clone(),
        crate::core::distribution::QUEUE,
        &owner,
        crate::core::jobs::Handlers::new().on(
            crate::core::distribution::KIND,
            crate::core::distribution::TargetHandler(engine.clone()),
        ),
    )
    .with_options(opts)
    .with_wake(wake);
    let worker_stop = CancellationToken::new();
    let worker_task = tokio::spawn(worker.run(worker_stop.clone()));
    if config.distribution.health_interval_secs > 0 {
        let (health_lease, keeper) = lease("vim-health").await;
        keepers.push(keeper);
        let every = Duration::from_secs(config.distribution.health_interval_secs);
        let vims = vims.clone();
        loops.push(tokio::spawn(on_lease_holder(
            health_lease,
            Duration::from_secs(5),
            every,
            bg_stop_rx.clone(),
            move |_| {
                let vims = vims.clone();
                async move { vims.check_all().await }
            },
        )));
    }
    if config.distribution.inventory_interval_secs > 0 {
        let (sync_lease, keeper) = lease("vim-inventory").await;
        keepers.push(keeper);
        let every = Duration::from_secs(config.distribution.inventory_interval_secs);
        let engine = engine.clone();
        loops.push(tokio::spawn(on_lease_holder(
            sync_lease,
            every,
            every,
            bg_stop_rx.clone(),
            move |_| {
                let engine = engine.clone();
                async move { engine.sync_all().await }
            },
        )));
    }
    let app = crate::http::router(registry);
    let grace = Duration::from_secs(config.server.shutdown_timeout_secs);
    let limits = crate::http::serve::Limits::from_config(&config.server);
    crate::http::serve::serve(
        incoming,
        app,
        limits,
        async {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
        },
        grace,
    )
    .await;
    indexer.abort();
    worker_stop.cancel();
    let _ = tokio::time::timeout(
        Duration::from_secs(config.jobs.shutdown_grace_secs.saturating_add(5)),
        worker_task,
    )
    .await;
    // A collection or sweep in progress stops between two removals; then the leases go, so
    // another replica takes the work over at once.
    let _ = bg_stop.send(true);
    for mut task in loops {
        if tokio::time::timeout(Duration::from_secs(10), &mut task).await.is_err() {
            task.abort();
        }
    }
    leases.cancel();
    for task in keepers {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(())
}

/// Every `every` (the first time after `first`), run `work` if this replica holds `lease`,
/// until `stop` turns true. Each run gets a stop signal of its own, raised on shutdown and when
/// the lease is lost while it runs.
async fn on_lease_holder<F, Fut>(
    lease: Leadership,
    first: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    mut work: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut wait = first;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        wait = every;
        if !lease.is_held() {
            tracing::debug!(lease = lease.name(), "another replica holds the lease of this work");
            continue;
        }
        let (run_stop, run_stop_rx) = watch::channel(false);
        let mut held = lease.subscribe();
        let run = work(run_stop_rx);
        tokio::pin!(run);
        tokio::select! {
            () = &mut run => continue,
            _ = stop.wait_for(|s| *s) => {}
            _ = held.wait_for(|h| !*h) => {
                tracing::warn!(lease = lease.name(), "cluster lease lost: stopping this run");
            }
        }
        let _ = run_stop.send(true);
        run.await;
    }
}

/// Collect garbage every `gc.interval_secs` (on the replica holding the `gc` lease) until
/// `stop` turns true.
async fn collect_garbage(
    registry: Arc<Registry>,
    store: Arc<dyn GcStore>,
    gc: crate::config::GcConfig,
    lease: Leadership,
    stop: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(gc.interval_secs.max(1));
    let opts = crate::core::gc::GcOptions::from_config(&gc);
    on_lease_holder(lease, every, every, stop, |run_stop| {
        let (registry, store) = (registry.clone(), store.clone());
        async move {
            let run = crate::core::gc::collect(&*store, &*registry.blobs, &opts, Some(&run_stop)).await;
            let m = crate::metrics::metrics();
            let outcome = if run.is_ok() { "ok" } else { "error" };
            m.gc_runs
                .get_or_create(&crate::metrics::OutcomeLabels { outcome })
                .inc();
            if let Ok(r) = &run {
                m.gc_reclaimed_bytes.inc_by(r.blob_bytes + r.manifest_bytes);
            }
            match run {
                Ok(r) => tracing::info!(
                    manifests = r.manifests,
                    manifest_bytes = r.manifest_bytes,
                    blobs = r.blobs,
                    blob_bytes = r.blob_bytes,
                    manifest_links = r.manifest_links,
                    blob_links = r.blob_links,
                    kept = r.kept,
                    conflicts = r.conflicts,
                    "garbage collection: {}",
                    r.summary()
                ),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    })
    .await;
}

/// Remove upload sessions that were abandoned, at start-up and then periodically (on the
/// replica holding the `upload-sweep` lease).
async fn sweep_uploads(registry: Arc<Registry>, lease: Leadership, stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(registry.config.upload_sweep_interval_secs.max(1));
    on_lease_holder(lease, Duration::ZERO, every, stop, |_| {
        let registry = registry.clone();
        async move {
            match registry.expire_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "removed expired upload sessions"),
                Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
            }
            match registry.sweep_orphaned_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "removed orphaned upload data"),
                Err(e) => tracing::warn!(error = %e, "orphaned upload sweep failed"),
            }
            match registry.expire_image_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "removed expired VM image upload sessions"),
                Err(e) => tracing::warn!(error = %e, "VM image upload expiry failed"),
            }
        }
    })
    .await;
}

/// Prune the events outbox and done jobs every `jobs.prune_interval_secs` (on the replica
/// holding the `outbox-prune` lease).
async fn prune_outbox(
    jobs: Arc<dyn JobStore>,
    config: crate::config::JobsConfig,
    lease: Leadership,
    stop: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(config.prune_interval_secs.max(1));
    on_lease_holder(lease, every, every, stop, |_| {
        let jobs = jobs.clone();
        let done_before = now_ms().saturating_sub(config.done_retention_secs.saturating_mul(1000) as i64);
        async move {
            match crate::core::outbox::prune(&*jobs, config.event_retention, done_before).await {
                Ok(p) if p.events + p.jobs > 0 => {
                    tracing::info!(
                        events = p.events,
                        jobs = p.jobs,
                        "pruned the events outbox and done jobs"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning the events outbox failed"),
            }
        }
    })
    .await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
