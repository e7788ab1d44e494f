//! Filesystem blob store.
//!
//! Layout under the root: `blobs/<algorithm>/<first two hex>/<hex>` for committed blobs and
//! `uploads/<uuid>` for upload data. Only digests' hex and UUIDs ever become path components.
//! File I/O runs on blocking threads fed through small bounded channels, so a transfer holds a
//! bounded amount in memory whatever the blob size: a few 256 KiB chunks when reading, at most
//! five 1 MiB batches of received chunks when writing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::blob::{BlobStore, BlobWriter, ByteRange, ByteStream, ChunkBatch};
use super::StoreError;
use crate::oci::names::{Algorithm, Digest};

const READ_CHUNK: usize = 256 * 1024;
/// Chunks are handed to the writer thread in batches of at least this many bytes (written
/// with one vectored write each, no copy), at most `WRITE_QUEUE` batches ahead of the disk:
/// hashing and receiving go on while the disk catches up, in bounded memory per upload.
const WRITE_BATCH: usize = 1024 * 1024;
const WRITE_BATCH_CHUNKS: usize = 256;
const WRITE_QUEUE: usize = 4;
/// With fsync on, writeback of upload data is started every this many bytes, so the final
/// fdatasync finds little left to write.
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

pub struct FsBlobStore {
    root: PathBuf,
    fsync: bool,
}

impl FsBlobStore {
    pub fn open(root: impl Into<PathBuf>, fsync: bool) -> Result<Self, StoreError> {
        let root = root.into();
        fs::create_dir_all(root.join("uploads"))?;
        fs::create_dir_all(root.join("blobs"))?;
        Ok(Self { root, fsync })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let algo = match digest.algorithm() {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        };
        let hex = digest.hex();
        self.root.join("blobs").join(algo).join(&hex[..2]).join(hex)
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        uuid::Uuid::parse_str(id).map_err(|_| StoreError::Other(format!("bad upload id {id:?}")))?;
        Ok(self.root.join("uploads").join(id))
    }

    /// Where the trashed copy `token` lives: `trash/<algorithm>-<hex>.<uuid>`.
    fn trash_path(&self, token: &str) -> Result<PathBuf, StoreError> {
        trash_token_digest(token).ok_or_else(|| StoreError::Other(format!("bad trash token {token:?}")))?;
        Ok(self.root.join("trash").join(token))
    }
}

/// The digest a trash token `<algorithm>-<hex>.<uuid>` names, if it is one.
fn trash_token_digest(token: &str) -> Option<Digest> {
    let (name, id) = token.rsplit_once('.')?;
    uuid::Uuid::parse_str(id).ok()?;
    let (algo, hex) = name.split_once('-')?;
    Digest::parse(&format!("{algo}:{hex}")).ok()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("blocking task failed: {e}")))?
        .map_err(StoreError::from)
}

fn not_found_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stream `len` bytes of `file` from its current position, read on a blocking thread.
fn stream_file(mut file: File, mut len: u64) -> ByteStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1);
    tokio::task::spawn_blocking(move || {
        while len > 0 {
            let want = len.min(READ_CHUNK as u64);
            // read_to_end fills the spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(want as usize);
            let res = (&mut file).take(want).read_to_end(&mut buf).and_then(|n| {
                if n == 0 {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob shorter than expected",
                    ))
                } else {
                    Ok(n)
                }
            });
            let item = res.map(|n| {
                len -= n as u64;
                Bytes::from(buf)
            });
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    Box::pin(tokio_stream_from(rx))
}

fn tokio_stream_from(mut rx: mpsc::Receiver<io::Result<Bytes>>) -> impl futures::Stream<Item = io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Ask the kernel to start writing a range of `file` to disk without waiting for it.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor and integers; a failure is harmless
    // (the final fdatasync still makes the data durable).
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Bytes available to unprivileged users on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> io::Result<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("blob directory path holds a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid NUL-terminated string and `st` is written by statvfs
    // before it is read, only when the call succeeds.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(digest);
        blocking(move || not_found_is_none(fs::metadata(path)).map(|m| m.map(|m| m.len()))).await
    }

    async fn get(&self, digest: &Digest, range: Option<ByteRange>) -> Result<ByteStream, StoreError> {
        let path = self.blob_path(digest);
        let (file, len) = blocking(move || {
            let mut file = File::open(path)?;
            let size = file.metadata()?.len();
            let len = match range {
                Some(r) => {
                    file.seek(SeekFrom::Start(r.start))?;
                    r.byte_count()
                }
                None => size,
            };
            Ok((file, len))
        })
        .await?;
        Ok(stream_file(file, len))
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        blocking(move || not_found_is_none(fs::remove_file(path)).map(|_| ())).await
    }

    async fn upload_create(&self, id: &str) -> Result<(), StoreError> {
        let path = self.upload_path(id)?;
        blocking(move || OpenOptions::new().write(true).create_new(true).open(path).map(|_| ())).await
    }

    async fn upload_size(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let path = self.upload_path(id)?;
        blocking(move || not_found_is_none(fs::metadata(path)).map(|m| m.map(|m| m.len()))).await
    }

    async fn upload_writer(&self, id: &str, offset: u64) -> Result<Box<dyn BlobWriter>, StoreError> {
        let path = self.upload_path(id)?;
        Ok(Box::new(FsWriter {
            target: Some((path, offset, self.fsync)),
            tx: None,
            pending: ChunkBatch::default(),
            done: None,
        }))
    }

    async fn upload_read_range(&self, id: &str, offset: u64, len: u64) -> Result<ByteStream, StoreError> {
        let path = self.upload_path(id)?;
        let file = blocking(move || {
            let mut f = File::open(path)?;
            if offset > 0 {
                f.seek(SeekFrom::Start(offset))?;
            }
            Ok(f)
        })
        .await?;
        Ok(stream_file(file, len))
    }

    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<(), StoreError> {
        let src = self.upload_path(id)?;
        let dst = self.blob_path(digest);
        let fsync = self.fsync;
        blocking(move || {
            if fsync {
                File::open(&src)?.sync_data()?;
            }
            let dir = dst
                .parent()
                .ok_or_else(|| io::Error::other("blob path has no parent"))?;
            fs::create_dir_all(dir)?;
            if dst.exists() {
                // Same content already stored: keep it, and the upload data for the caller.
                return Ok(());
            }
            fs::rename(&src, &dst)?;
            if fsync {
                sync_dir(dir)?;
            }
            Ok(())
        })
        .await
    }

    async fn upload_abort(&self, id: &str) -> Result<(), StoreError> {
        let path = self.upload_path(id)?;
        blocking(move || not_found_is_none(fs::remove_file(path)).map(|_| ())).await
    }

    async fn upload_list_stale(&self, before_ms: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("uploads");
        blocking(move || {
            let before = std::time::UNIX_EPOCH + std::time::Duration::from_millis(before_ms.max(0) as u64);
            let mut out = Vec::new();
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if uuid::Uuid::parse_str(&name).is_err() {
                    continue;
                }
                let Some(meta) = not_found_is_none(entry.metadata())? else {
                    continue;
                };
                if meta.modified()? < before {
                    out.push(name);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn free_space(&self) -> Result<Option<u64>, StoreError> {
        // Every push asks, and statvfs of a local directory answers from memory: called in
        // place rather than through a blocking thread (two thread hand-offs per call).
        Ok(Some(free_bytes(&self.root.join("blobs"))?))
    }

    async fn check(&self) -> Result<(), StoreError> {
        let root = self.root.clone();
        blocking(move || {
            let meta = fs::metadata(root.join("uploads"))?;
            if meta.permissions().readonly() {
                return Err(io::Error::other("upload directory is read-only"));
            }
            Ok(())
        })
        .await
    }

    async fn trash(&self, digest: &Digest) -> Result<Option<String>, StoreError> {
        let algo = match digest.algorithm() {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        };
        let token = format!("{algo}-{}.{}", digest.hex(), uuid::Uuid::new_v4());
        let src = self.blob_path(digest);
        let dst = self.trash_path(&token)?;
        blocking(move || {
            if let Some(dir) = dst.parent() {
                fs::create_dir_all(dir)?;
            }
            // One rename: whatever is at the final location moves, atomically.
            match fs::rename(&src, &dst) {
                Ok(()) => Ok(Some(token)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn restore(&self, digest: &Digest, token: &str) -> Result<(), StoreError> {
        let src = self.trash_path(token)?;
        let dst = self.blob_path(digest);
        let fsync = self.fsync;
        blocking(move || {
            if !src.exists() {
                return Ok(());
            }
            if dst.exists() {
                // Stored again meanwhile (same content): the trashed copy is not needed.
                return not_found_is_none(fs::remove_file(&src)).map(|_| ());
            }
            let dir = dst
                .parent()
                .ok_or_else(|| io::Error::other("blob path has no parent"))?;
            fs::create_dir_all(dir)?;
            // A concurrent upload may place the same content here too: either rename leaves
            // a complete copy.
            match fs::rename(&src, &dst) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            if fsync {
                sync_dir(dir)?;
            }
            Ok(())
        })
        .await
    }

    async fn purge(&self, token: &str) -> Result<(), StoreError> {
        let path = self.trash_path(token)?;
        blocking(move || not_found_is_none(fs::remove_file(path)).map(|_| ())).await
    }

    async fn committed(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
        let root = self.root.join("blobs");
        blocking(move || {
            let mut found = Vec::new();
            for algo in ["sha256", "sha512"] {
                let Some(fans) = not_found_is_none(fs::read_dir(root.join(algo)))? else {
                    continue;
                };
                for fan in fans {
                    let fan = fan?;
                    if !fan.file_type()?.is_dir() {
                        continue;
                    }
                    for entry in fs::read_dir(fan.path())? {
                        let entry = entry?;
                        let Some(hex) = entry.file_name().to_str().map(str::to_owned) else {
                            continue;
                        };
                        let Ok(digest) = Digest::parse(&format!("{algo}:{hex}")) else {
                            continue; // a temporary file, or something not ours
                        };
                        if let Some(meta) = not_found_is_none(entry.metadata())? {
                            found.push((digest, meta.len()));
                        }
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn trashed(&self) -> Result<Vec<(Digest, String)>, StoreError> {
        let dir = self.root.join("trash");
        blocking(move || {
            let Some(entries) = not_found_is_none(fs::read_dir(dir))? else {
                return Ok(Vec::new());
            };
            let mut found = Vec::new();
            for entry in entries {
                let name = entry?.file_name();
                let Some(token) = name.to_str() else { continue };
                if let Some(digest) = trash_token_digest(token) {
                    found.push((digest, token.to_string()));
                }
            }
            Ok(found)
        })
        .await
    }
}

/// Open upload data `path` for writing at `offset` (cutting off what lies beyond it).
fn open_at(path: &Path, offset: u64) -> io::Result<File> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len();
    if len < offset {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "upload data shorter than its offset",
        ));
    }
    if len > offset {
        file.set_len(offset)?;
    }
    file.seek(SeekFrom::Start(offset))?;
    Ok(file)
}

/// Writes upload data. Nothing happens until the first full batch: then a thread opens the
/// data and writes the batches handed to it. A body that never fills a batch (most pushes:
/// configs, manifests' blobs, small layers) is written by one blocking call at `finish`, with
/// no thread of its own.
struct FsWriter {
    /// Where to write and whether to start writeback early, until the thread is started.
    target: Option<(PathBuf, u64, bool)>,
    tx: Option<mpsc::Sender<Vec<Bytes>>>,
    pending: ChunkBatch,
    /// The writer thread's result; taken once awaited.
    done: Option<oneshot::Receiver<io::Result<u64>>>,
}

impl FsWriter {
    /// Start the writer thread (once).
    fn start(&mut self) {
        let Some((path, offset, early_writeback)) = self.target.take() else {
            return;
        };
        let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(WRITE_QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let res = (|| {
                let mut file = open_at(&path, offset)?;
                let mut total = offset;
                let mut flushed_to = offset;
                while let Some(batch) = rx.blocking_recv() {
                    total += write_batch(&mut file, &batch)?;
                    if early_writeback && total - flushed_to >= WRITEBACK_EVERY {
                        start_writeback(&file, flushed_to, total - flushed_to);
                        flushed_to = total;
                    }
                }
                Ok(total)
            })();
            let _ = done_tx.send(res);
        });
        self.tx = Some(tx);
        self.done = Some(done_rx);
    }

    async fn send_pending(&mut self) -> Result<(), StoreError> {
        self.start();
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::Other("writer finished".into()))?;
        if tx.send(self.pending.take()).await.is_err() {
            // The writer thread stopped: its error is in `done`.
            self.tx = None;
            return match self.done.take() {
                Some(done) => match done.await {
                    Ok(Err(e)) => Err(e.into()),
                    _ => Err(StoreError::Other("upload writer stopped".into())),
                },
                None => Err(StoreError::Other("upload writer stopped".into())),
            };
        }
        Ok(())
    }
}

/// Write all of `batch` at the file's position with vectored writes; returns the bytes written.
fn write_batch(file: &mut File, batch: &[Bytes]) -> io::Result<u64> {
    let mut slices: Vec<io::IoSlice<'_>> = batch.iter().map(|b| io::IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    let mut written = 0u64;
    while !rest.is_empty() {
        let n = file.write_vectored(rest)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n as u64;
        io::IoSlice::advance_slices(&mut rest, n);
    }
    Ok(written)
}

#[async_trait]
impl BlobWriter for FsWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.pending.push(chunk);
        if self.pending.reached(WRITE_BATCH, WRITE_BATCH_CHUNKS) {
            self.send_pending().await?;
        }
        Ok(())
    }

    /// Also after a failed write: then it returns that the writer stopped, its thread done.
    async fn finish(mut self: Box<Self>) -> Result<u64, StoreError> {
        if let Some((path, offset, _)) = self.target.take() {
            // No thread was started: the whole body is pending (or there is none).
            let batch = self.pending.take();
            return blocking(move || {
                let mut file = open_at(&path, offset)?;
                Ok(offset + write_batch(&mut file, &batch)?)
            })
            .await;
        }
        if !self.pending.is_empty() && self.tx.is_some() {
            self.send_pending().await?;
        }
        self.tx = None;
        match self.done.take() {
            Some(done) => match done.await {
                Ok(res) => Ok(res?),
                Err(_) => Err(StoreError::Other("upload writer vanished".into())),
            },
            None => Err(StoreError::Other("upload writer stopped".into())),
        }
    }
}
