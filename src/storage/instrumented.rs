//! One wrapper that gives every blob store call its latency metric, its error count by kind
//! and a tracing span (under the request's span), whatever the backend: call sites stay bare.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;

use super::blob::{BlobStore, BlobWriter, ByteRange, ByteStream};
use super::{StoreError, StoreErrorKind};
use crate::metrics::{metrics, StoreErrorLabels, StoreLabels};
use crate::oci::names::Digest;

pub struct InstrumentedBlobs {
    inner: Arc<dyn BlobStore>,
}

impl InstrumentedBlobs {
    pub fn wrap(inner: Arc<dyn BlobStore>) -> Arc<dyn BlobStore> {
        Arc::new(InstrumentedBlobs { inner })
    }
}

fn kind_label(k: StoreErrorKind) -> &'static str {
    match k {
        StoreErrorKind::NotFound => "not_found",
        StoreErrorKind::Conflict => "conflict",
        StoreErrorKind::Transient => "transient",
        StoreErrorKind::Full => "full",
        StoreErrorKind::Other => "other",
    }
}

/// A stream of `op` whose bytes are counted as they are read.
async fn observe_stream(
    op: &'static str,
    call: impl Future<Output = Result<ByteStream, StoreError>>,
) -> Result<ByteStream, StoreError> {
    let stream = observe(op, call).await?;
    let counter = metrics()
        .store_read_bytes
        .get_or_create(&StoreLabels { store: "blob", op })
        .clone();
    Ok(Box::pin(futures::StreamExt::inspect(stream, move |item| {
        if let Ok(chunk) = item {
            counter.inc_by(chunk.len() as u64);
        }
    })))
}

/// Run one call of `op`, timed, counted and in its own span.
async fn observe<T>(op: &'static str, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.instrument(tracing::debug_span!("blob_store", op)).await;
    let m = metrics();
    m.store_duration
        .get_or_create(&StoreLabels { store: "blob", op })
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        m.store_errors
            .get_or_create(&StoreErrorLabels {
                store: "blob",
                op,
                kind: kind_label(e.kind()),
            })
            .inc();
    }
    result
}

#[async_trait]
impl BlobStore for InstrumentedBlobs {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        observe("stat", self.inner.stat(digest)).await
    }
    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, StoreError> {
        observe_stream("get", self.inner.get(digest, range)).await
    }
    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        observe("delete", self.inner.delete(digest)).await
    }
    async fn upload_create(&self, id: &str) -> Result<(), StoreError> {
        observe("upload_create", self.inner.upload_create(id)).await
    }
    async fn upload_size(&self, id: &str) -> Result<Option<u64>, StoreError> {
        observe("upload_size", self.inner.upload_size(id)).await
    }
    async fn upload_writer(&self, id: &str, offset: u64) -> Result<Box<dyn BlobWriter>, StoreError> {
        let inner = observe("upload_writer", self.inner.upload_writer(id, offset)).await?;
        Ok(Box::new(InstrumentedWriter { inner }))
    }
    async fn upload_read(&self, id: &str, len: u64) -> Result<ByteStream, StoreError> {
        observe_stream("upload_read", self.inner.upload_read(id, len)).await
    }
    async fn upload_read_range(&self, id: &str, offset: u64, len: u64) -> Result<ByteStream, StoreError> {
        observe_stream("upload_read_range", self.inner.upload_read_range(id, offset, len)).await
    }
    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<(), StoreError> {
        observe("upload_commit", self.inner.upload_commit(id, digest)).await
    }
    async fn upload_abort(&self, id: &str) -> Result<(), StoreError> {
        observe("upload_abort", self.inner.upload_abort(id)).await
    }
    async fn upload_list_stale(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        observe("upload_list_stale", self.inner.upload_list_stale(before_ms, limit)).await
    }
    async fn check(&self) -> Result<(), StoreError> {
        observe("check", self.inner.check()).await
    }
    async fn free_space(&self) -> Result<Option<u64>, StoreError> {
        observe("free_space", self.inner.free_space()).await
    }
    async fn redirect_url(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        observe("redirect_url", self.inner.redirect_url(digest)).await
    }
    async fn trash(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        observe("trash", self.inner.trash(digest)).await
    }
    async fn restore(&self, digest: &Digest, token: &str) -> Result<(), StoreError> {
        observe("restore", self.inner.restore(digest, token)).await
    }
    async fn purge(&self, token: &str) -> Result<(), StoreError> {
        observe("purge", self.inner.purge(token)).await
    }
    async fn trashed(&self) -> Result<Vec<(Digest, String)>, StoreError> {
        observe("trashed", self.inner.trashed()).await
    }
}

/// Writes are timed as a whole at `finish` (each chunk's wait is back-pressure, not latency).
struct InstrumentedWriter {
    inner: Box<dyn BlobWriter>,
}

#[async_trait]
impl BlobWriter for InstrumentedWriter {
    async fn write(&mut self, chunk: bytes::Bytes) -> Result<(), StoreError> {
        self.inner.write(chunk).await
    }
    async fn finish(self: Box<Self>) -> Result<u64, StoreError> {
        observe("upload_finish", self.inner.finish()).await
    }
}
