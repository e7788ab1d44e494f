//! Start-up: open the stores named by the configuration, apply migrations, serve HTTP, run the
//! background maintenance, and shut down gracefully.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::core::Registry;
use crate::storage::fs::FsBlobStore;
use crate::storage::sql::SqlStore;
use crate::storage::{BlobStore, MetadataStore};

/// Open (and migrate) the metadata store named by the configuration.
pub async fn open_metadata(config: &Config) -> anyhow::Result<Arc<SqlStore>> {
    if config.database_url().starts_with("sqlite://") {
        std::fs::create_dir_all(&config.server.data_dir)
            .with_context(|| format!("creating data directory {}", config.server.data_dir.display()))?;
    }
    let store = SqlStore::connect(&config.database_url(), config.storage.fsync)
        .await
        .context("connecting to the metadata database")?;
    store.migrate().await.context("applying database migrations")?;
    Ok(Arc::new(store))
}

/// Open the blob store named by the configuration.
pub fn open_blobs(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let url = config.blobs_url();
    match url.strip_prefix("file://") {
        Some(path) => Ok(Arc::new(
            FsBlobStore::open(path, config.storage.fsync).context("opening blob directory")?,
        )),
        None => bail!("unsupported blob store URL {url:?} (expected file:///path)"),
    }
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let meta: Arc<dyn MetadataStore> = open_metadata(&config).await?;
    let blobs = open_blobs(&config)?;
    let registry = Arc::new(Registry::new(blobs, meta, config.registry.clone()));

    let listener = TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    tracing::info!(listen = %listener.local_addr()?, data_dir = %config.server.data_dir.display(), "image-manager serving");

    let sweeper = tokio::spawn(sweep_uploads(registry.clone()));
    let app = crate::http::router(registry);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_wait = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        res = &mut server => res.context("server failed")?,
        () = shutdown_signal() => {
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop_tx.send(true);
            let grace = Duration::from_secs(config.server.shutdown_timeout_secs);
            if tokio::time::timeout(grace, &mut server).await.is_err() {
                tracing::warn!("in-flight requests still running after {grace:?}; exiting");
            }
        }
    }
    let _ = stop_wait.wait_for(|s| *s).await;
    sweeper.abort();
    Ok(())
}

/// Periodically remove upload sessions that were abandoned.
async fn sweep_uploads(registry: Arc<Registry>) {
    let every = Duration::from_secs(registry.config.upload_sweep_interval_secs.max(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match registry.expire_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "removed expired upload sessions"),
            Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
        }
    }
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
