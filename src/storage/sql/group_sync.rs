//! Group commit for SQLite with `storage.fsync` on: many requests' commits made durable by one
//! `fdatasync` of the write-ahead log.
//!
//! With `PRAGMA synchronous = FULL` every commit syncs the WAL itself, and SQLite's single
//! writer holds its lock through that sync, so concurrent pushes queue behind one disk flush
//! each. Instead the connections run `synchronous = NORMAL` (a commit only `write`s its frames
//! to the `-wal` file), and a request that wrote calls [`GroupSync::wait`] before it answers:
//!
//! * `wait` takes a ticket, one more than every ticket handed out before, and wakes the sync
//!   thread; it returns once a sync that *started after the ticket was taken* has finished.
//! * The sync thread reads the highest ticket, `fdatasync`s the `-wal` file, and publishes
//!   that ticket as synced; every waiter at or below it is released. Tickets taken while a
//!   sync runs are covered by the next one, so N requests arriving during one flush share a
//!   single further flush instead of N.
//!
//! Why it is durable: a request takes its ticket after its commit returned, so the commit's
//! frames are in the `-wal` file (the page cache) before the sync that releases it begins,
//! and `fdatasync` on any descriptor of that file flushes them. The log holds frames in
//! commit order, so syncing it also keeps every earlier commit. Frames can leave the log only
//! by a checkpoint, which with `NORMAL` syncs the log before copying it and the database file
//! after, before the log may be reset: a commit is then durable in the database file. SQLite
//! syncs the log header (and, on the log's first sync, its directory) itself whenever it
//! starts the log anew. The `-wal` file is opened afresh for each sync; when it is missing
//! (every connection closed, which checkpoints it into the database and removes it) the
//! database file is synced instead.
//!
//! A failed sync fails every waiter it covered and every later one: after a failed
//! `fdatasync` the kernel may have dropped the dirty pages, so no later sync can vouch for
//! them (the process must restart, and SQLite recovers from what reached the disk).

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use crate::storage::StoreError;

/// What flushes the log (a test substitutes its own).
pub(crate) type SyncFn = Box<dyn FnMut() -> io::Result<()> + Send>;

/// The highest ticket synced, or the error that poisoned syncing.
#[derive(Clone, Debug, Default)]
struct Synced {
    ticket: u64,
    failed: Option<String>,
}

struct Shared {
    /// The highest ticket handed out; `None` once the store is dropped (the thread ends).
    requested: Mutex<Option<u64>>,
    wake: Condvar,
    synced: watch::Sender<Synced>,
    syncs: AtomicU64,
}

pub(crate) struct GroupSync {
    shared: Arc<Shared>,
}

impl GroupSync {
    /// Group sync of the database file `db` (its log is `db` + `-wal`).
    pub fn for_database(db: PathBuf) -> io::Result<Self> {
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        Self::with_sync(Box::new(move || sync_log(&wal, &db)))
    }

    /// Group sync running `sync` on its own thread.
    pub fn with_sync(mut sync: SyncFn) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            requested: Mutex::new(Some(0)),
            wake: Condvar::new(),
            synced: watch::Sender::new(Synced::default()),
            syncs: AtomicU64::new(0),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("sqlite-wal-sync".into())
            .spawn(move || {
                let m = crate::metrics::metrics();
                let mut done = 0u64;
                loop {
                    let target = {
                        let Ok(mut req) = worker.requested.lock() else { return };
                        loop {
                            match *req {
                                None => return,
                                Some(t) if t > done => break t,
                                Some(_) => match worker.wake.wait(req) {
                                    Ok(r) => req = r,
                                    Err(_) => return,
                                },
                            }
                        }
                    };
                    let outcome = sync();
                    worker.syncs.fetch_add(1, Ordering::Relaxed);
                    m.sqlite_wal_syncs.inc();
                    m.sqlite_wal_sync_commits.inc_by(target - done);
                    done = target;
                    match outcome {
                        Ok(()) => {
                            worker.synced.send_modify(|s| s.ticket = target);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "syncing the SQLite write-ahead log failed; no write is acknowledged any more");
                            worker.synced.send_modify(|s| s.failed = Some(e.to_string()));
                            return;
                        }
                    }
                }
            })?;
        Ok(GroupSync { shared })
    }

    /// Wait until every commit that returned before this call is on disk.
    pub async fn wait(&self) -> Result<(), StoreError> {
        let mut rx = self.shared.synced.subscribe();
        let ticket = {
            let mut req = self
                .shared
                .requested
                .lock()
                .map_err(|_| StoreError::Other("the SQLite log sync state is poisoned".into()))?;
            let t = req.as_mut().map(|t| {
                *t += 1;
                *t
            });
            t.ok_or_else(|| StoreError::Other("the SQLite log sync has stopped".into()))?
        };
        self.shared.wake.notify_one();
        let seen = rx
            .wait_for(|s| s.ticket >= ticket || s.failed.is_some())
            .await
            .map_err(|_| StoreError::Other("the SQLite log sync thread ended".into()))?;
        match &seen.failed {
            Some(e) => Err(StoreError::Io(io::Error::other(format!(
                "syncing the SQLite write-ahead log failed earlier: {e}"
            )))),
            None => Ok(()),
        }
    }

    /// How many syncs ran so far.
    #[cfg(test)]
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// How many tickets were handed out so far.
    #[cfg(test)]
    pub fn tickets(&self) -> u64 {
        self.shared.requested.lock().map(|r| r.unwrap_or(0)).unwrap_or(0)
    }
}

impl Drop for GroupSync {
    fn drop(&mut self) {
        if let Ok(mut req) = self.shared.requested.lock() {
            *req = None;
        }
        self.shared.wake.notify_all();
    }
}

/// `fdatasync` the log `wal`; the database file `db` when there is no log.
fn sync_log(wal: &std::path::Path, db: &std::path::Path) -> io::Result<()> {
    match File::open(wal) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => File::open(db)?.sync_data(),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sync function that reports each call on `entered` and then waits for a go on `go`.
    fn gated() -> (SyncFn, mpsc::Receiver<()>, mpsc::Sender<io::Result<()>>) {
        let (entered_tx, entered) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<io::Result<()>>();
        let f: SyncFn = Box::new(move || {
            let _ = entered_tx.send(());
            go_rx.recv().unwrap_or(Ok(()))
        });
        (f, entered, go)
    }

    async fn until_tickets(g: &GroupSync, n: u64) {
        while g.tickets() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_waiting_during_a_sync_share_the_next_one() {
        let (f, entered, go) = gated();
        let g = Arc::new(GroupSync::with_sync(f).unwrap());
        let wait = |g: &Arc<GroupSync>| {
            let g = g.clone();
            tokio::spawn(async move { g.wait().await })
        };
        let entered_once = |entered: mpsc::Receiver<()>| {
            tokio::task::spawn_blocking(move || {
                entered.recv().unwrap();
                entered
            })
        };
        // The first commit's sync starts and is held.
        let first = wait(&g);
        let entered = entered_once(entered).await.unwrap();
        // Eight more commits arrive while it runs.
        let waiters: Vec<_> = (0..8).map(|_| wait(&g)).collect();
        until_tickets(&g, 9).await;
        assert!(!first.is_finished());
        go.send(Ok(())).unwrap();
        first.await.unwrap().unwrap();
        // One more sync covers the eight.
        let _entered = entered_once(entered).await.unwrap();
        go.send(Ok(())).unwrap();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(g.syncs(), 2, "nine commits, two syncs");
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_waiters_and_every_later_one() {
        let g = GroupSync::with_sync(Box::new(|| Err(io::Error::other("disk gone")))).unwrap();
        assert!(matches!(g.wait().await, Err(StoreError::Io(_))));
        assert!(matches!(g.wait().await, Err(StoreError::Io(_))));
    }

    #[tokio::test]
    async fn a_wait_with_nothing_running_syncs_once() {
        let g = GroupSync::with_sync(Box::new(|| Ok(()))).unwrap();
        g.wait().await.unwrap();
        g.wait().await.unwrap();
        assert_eq!(g.syncs(), 2);
    }

    #[tokio::test]
    async fn syncs_the_log_of_a_real_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("meta.db");
        let g = GroupSync::for_database(db.clone()).unwrap();
        // No file at all yet: an error, and syncing is poisoned.
        assert!(g.wait().await.is_err());
        std::fs::write(&db, b"").unwrap();
        let g = GroupSync::for_database(db.clone()).unwrap();
        g.wait().await.unwrap();
        std::fs::write(dir.path().join("meta.db-wal"), b"frames").unwrap();
        g.wait().await.unwrap();
        assert_eq!(g.syncs(), 2);
    }
}
