//! The durable job queue, cluster leases and outbox consumers on SQLite, PostgreSQL and
//! MariaDB. PostgreSQL (127.0.0.1:5432, user postgres, trust) and MariaDB (127.0.0.1:3306,
//! root, no password) must be running (`scripts/services.sh`): a test whose database is
//! missing fails. Each test creates a database of its own and drops it afterwards.
//!
//! Waits are on conditions with a deadline (`wait_until`), never on a fixed sleep.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use image_manager::core::jobs::{
    Backoff, Handlers, JobContext, JobError, JobHandler, Leadership, Worker, WorkerOptions,
};
use image_manager::core::outbox::OutboxConsumer;
use image_manager::storage::jobs::{JobState, JobStore, NewJob};
use image_manager::storage::now_ms;
use image_manager::storage::sql::SqlStore;
use sqlx::{Executor, Row};
use tokio_util::sync::CancellationToken;

#[path = "support/databases.rs"]
mod databases;
use databases::{Backend, TestDb};

impl TestDb {
    /// A store of its own (a pool of its own: one "replica"), migrated.
    async fn store(&self) -> Arc<SqlStore> {
        let store = SqlStore::connect(&self.url, false).await.expect("connecting the store");
        store.migrate().await.expect("migrations");
        Arc::new(store)
    }

    /// A plain pool on the test database, for what the store has no method for.
    async fn pool(&self, max: u32) -> sqlx::AnyPool {
        let url = if self.backend == Backend::Sqlite {
            format!("{}?mode=rwc", self.url)
        } else {
            self.url.clone()
        };
        sqlx::any::AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if url_is_sqlite(conn) {
                        conn.execute("PRAGMA busy_timeout = 30000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .expect("test pool")
    }
}

fn url_is_sqlite(conn: &sqlx::AnyConnection) -> bool {
    conn.backend_name().eq_ignore_ascii_case("sqlite")
}

/// Wait until `cond` holds, checking every 20 ms, failing after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling interval, bounded by the deadline
    }
}

fn job(queue: &str, kind: &str, max_attempts: u32) -> NewJob {
    NewJob::new(queue, kind, serde_json::json!({"n": 1}), max_attempts)
}

fn fast_options(concurrency: usize, lease: Duration) -> WorkerOptions {
    WorkerOptions {
        concurrency,
        poll_interval: Duration::from_millis(50),
        lease_ttl: lease,
        heartbeat_interval: lease / 4,
        retry: Backoff::new(Duration::from_millis(1), Duration::from_millis(20)),
        shutdown_grace: Duration::from_secs(5),
    }
}

/// Counts completed runs per job id, and which replica ran them.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<HashMap<i64, Vec<String>>>>);

impl Ledger {
    fn record(&self, id: i64, who: &str) {
        self.0.lock().unwrap().entry(id).or_default().push(who.to_string());
    }

    fn runs(&self) -> HashMap<i64, Vec<String>> {
        self.0.lock().unwrap().clone()
    }
}

/// Records the run, after a little work.
struct Record {
    ledger: Ledger,
    who: String,
}

#[async_trait]
impl JobHandler for Record {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let n = ctx.job.payload["n"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(n % 4)).await; // simulated work
        self.ledger.record(ctx.job.id, &self.who);
        Ok(())
    }
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::Backend::Postgres).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mariadb() {
                    super::$name(super::Backend::MariaDb).await
                }
            }
        )*
    };
}

on_every_backend!(
    two_replicas_run_every_job_once,
    a_killed_worker_s_job_is_finished_by_another,
    unique_keys_dedupe_until_done,
    jobs_die_after_their_attempts,
    a_stale_owner_is_fenced,
    leases_have_one_holder,
    cursors_only_advance_and_prune_the_outbox,
    migration_moves_the_indexer_setting,
    the_catalog_indexer_follows_the_outbox,
);

// ----- (a) two replicas, several workers each, 200 jobs ------------------------------------

async fn two_replicas_run_every_job_once(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let replicas = [db.store().await, db.store().await];
    let ledger = Ledger::default();
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    let mut enqueuers = Vec::new();
    for (r, store) in replicas.iter().enumerate() {
        let wake = Arc::new(tokio::sync::Notify::new());
        for w in 0..3 {
            let handlers = Handlers::new().on(
                "record",
                Record {
                    ledger: ledger.clone(),
                    who: format!("replica-{r}"),
                },
            );
            let worker = Worker::new(store.clone(), "q", &format!("replica-{r}.w{w}"), handlers)
                .with_options(fast_options(4, Duration::from_secs(10)))
                .with_wake(wake.clone());
            enqueuers.push(worker.enqueuer());
            workers.push(tokio::spawn(worker.run(stop.clone())));
        }
    }
    let mut ids = BTreeSet::new();
    for n in 0..200u64 {
        // Enqueued through both replicas, while the workers run.
        let e = &enqueuers[(n as usize) % enqueuers.len()];
        let (id, created) = e
            .enqueue(&NewJob::new("q", "record", serde_json::json!({ "n": n }), 3))
            .await
            .expect("enqueue");
        assert!(created);
        ids.insert(id);
    }
    assert_eq!(ids.len(), 200);
    let store = replicas[0].clone();
    wait_until("all 200 jobs done", Duration::from_secs(120), || {
        let store = store.clone();
        async move { store.queue_stats().await.expect("stats").is_empty() }
    })
    .await;
    stop.cancel();
    for w in workers {
        w.await.expect("worker");
    }
    let runs = ledger.runs();
    assert_eq!(runs.keys().copied().collect::<BTreeSet<_>>(), ids, "every job ran");
    let twice: Vec<_> = runs.iter().filter(|(_, who)| who.len() != 1).collect();
    assert!(twice.is_empty(), "jobs that ran more than once: {twice:?}");
    for id in &ids {
        let j = store.job(*id).await.expect("job").expect("job row");
        assert_eq!(
            (j.state, j.attempts, j.lease_owner.as_deref()),
            (JobState::Done, 1, None)
        );
    }
    let per_replica = runs.values().fold(HashMap::<&str, usize>::new(), |mut m, who| {
        *m.entry(who[0].as_str()).or_default() += 1;
        m
    });
    eprintln!("{backend:?}: jobs per replica {per_replica:?}");
}

// ----- (b) a worker killed mid-job ----------------------------------------------------------

const CHILD_URL: &str = "JOBS_TEST_CHILD_DATABASE";
const CHILD_MARK: &str = "JOBS_TEST_CHILD_MARK";

/// Runs only as the child process of `a_killed_worker_s_job_is_finished_by_another`: claims a
/// job, says so in the mark file, and never finishes it.
#[tokio::test]
async fn child_worker() {
    let (Ok(url), Ok(mark)) = (std::env::var(CHILD_URL), std::env::var(CHILD_MARK)) else {
        return; // not the child: nothing to do
    };
    struct Hang(String);
    #[async_trait]
    impl JobHandler for Hang {
        async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
            std::fs::write(&self.0, ctx.job.id.to_string()).expect("mark file");
            std::future::pending::<()>().await;
            Ok(())
        }
    }
    let store = Arc::new(SqlStore::connect(&url, false).await.expect("child store"));
    let worker = Worker::new(store, "kill", "child", Handlers::new().on("hang", Hang(mark)))
        .with_options(fast_options(1, Duration::from_millis(1500)));
    worker.run(CancellationToken::new()).await;
}

async fn a_killed_worker_s_job_is_finished_by_another(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let store = db.store().await;
    let (id, _) = store.enqueue(&job("kill", "hang", 5)).await.expect("enqueue");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mark = dir.path().join("claimed");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_worker", "--test-threads=1", "--nocapture"])
        .env(CHILD_URL, &db.url)
        .env(CHILD_MARK, &mark)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting the child worker");
    let s = store.clone();
    let m = mark.clone();
    wait_until("the child to run the job", Duration::from_secs(60), || {
        let (s, m) = (s.clone(), m.clone());
        async move {
            let running = s.job(id).await.expect("job").is_some_and(|j| {
                j.state == JobState::Running && j.lease_owner.is_some_and(|o| o.starts_with("child/"))
            });
            running && std::fs::read_to_string(&m).is_ok_and(|t| t == id.to_string())
        }
    })
    .await;
    child.kill().expect("SIGKILL the child"); // Child::kill is SIGKILL on Unix
    child.wait().expect("reaping the child");
    // No heartbeat can come any more: this is when the lease ends.
    let held = store.job(id).await.expect("job").expect("job row");
    let lease_until = held.lease_until.expect("a running job has a lease");
    assert_eq!((held.state, held.attempts), (JobState::Running, 1));

    let ledger = Ledger::default();
    let started = Arc::new(Mutex::new(None));
    struct Finish(Ledger, Arc<Mutex<Option<i64>>>);
    #[async_trait]
    impl JobHandler for Finish {
        async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
            *self.1.lock().unwrap() = Some(now_ms());
            self.0.record(ctx.job.id, "survivor");
            Ok(())
        }
    }
    let stop = CancellationToken::new();
    let worker = Worker::new(
        store.clone(),
        "kill",
        "survivor",
        Handlers::new().on("hang", Finish(ledger.clone(), started.clone())),
    )
    .with_options(fast_options(2, Duration::from_secs(5)));
    let running = tokio::spawn(worker.run(stop.clone()));
    let s = store.clone();
    wait_until("the survivor to finish the job", Duration::from_secs(60), || {
        let s = s.clone();
        async move { s.job(id).await.expect("job").is_some_and(|j| j.state == JobState::Done) }
    })
    .await;
    stop.cancel();
    running.await.expect("worker");
    let done = store.job(id).await.expect("job").expect("job row");
    assert_eq!(done.attempts, 2, "claimed by the child, then by the survivor");
    assert_eq!(ledger.runs().get(&id).map(Vec::len), Some(1));
    let started = started.lock().unwrap().expect("the survivor ran it");
    assert!(
        started >= lease_until,
        "taken over at {started}, before the killed worker's lease ended at {lease_until}"
    );
}

// ----- unique keys, dead letters, fencing -----------------------------------------------------

async fn unique_keys_dedupe_until_done(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let store = db.store().await;
    let (a, created) = store
        .enqueue(&job("u", "k", 3).unique("copy:x"))
        .await
        .expect("enqueue");
    assert!(created);
    let (again, created) = store
        .enqueue(&job("u", "k", 3).unique("copy:x"))
        .await
        .expect("enqueue");
    assert_eq!((again, created), (a, false), "queued: the same job");
    let (other, created) = store
        .enqueue(&job("u", "k", 3).unique("copy:y"))
        .await
        .expect("enqueue");
    assert!(created && other != a);
    let (plain1, _) = store.enqueue(&job("u", "k", 3)).await.expect("enqueue");
    let (plain2, _) = store.enqueue(&job("u", "k", 3)).await.expect("enqueue");
    assert_ne!(plain1, plain2, "no key: no dedupe");

    let claimed = store.claim("u", "w", 60_000, 10).await.expect("claim");
    assert_eq!(claimed.len(), 4);
    let (again, created) = store
        .enqueue(&job("u", "k", 3).unique("copy:x"))
        .await
        .expect("enqueue");
    assert_eq!((again, created), (a, false), "running: the same job");
    assert!(store.complete(a, "w").await.expect("complete"));
    let (fresh, created) = store
        .enqueue(&job("u", "k", 3).unique("copy:x"))
        .await
        .expect("enqueue");
    assert!(created && fresh != a, "done: a new job takes the key");
    assert_eq!(store.job(a).await.expect("job").expect("row").unique_key, None);
    assert_eq!(
        store.job(fresh).await.expect("job").expect("row").unique_key.as_deref(),
        Some("copy:x")
    );
    // Concurrent enqueues of one key make one job.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.enqueue(&job("u", "k", 3).unique("copy:z")).await.expect("enqueue")
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    let ids: BTreeSet<i64> = results.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|(_, c)| *c).count(), 1, "{results:?}");
}

async fn jobs_die_after_their_attempts(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let store = db.store().await;
    // Through the store: three failed claims, then dead.
    let (id, _) = store.enqueue(&job("d", "k", 3)).await.expect("enqueue");
    for attempt in 1..=3 {
        let got = store.claim("d", "w", 60_000, 5).await.expect("claim");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attempts, attempt);
        let state = store
            .fail(id, "w", &format!("boom {attempt}"), Some(0))
            .await
            .expect("fail");
        let want = if attempt < 3 { JobState::Queued } else { JobState::Dead };
        assert_eq!(state, Some(want));
    }
    assert!(store.claim("d", "w", 60_000, 5).await.expect("claim").is_empty());
    let dead = store.job(id).await.expect("job").expect("row");
    assert_eq!(
        (dead.state, dead.attempts, dead.last_error.as_deref()),
        (JobState::Dead, 3, Some("boom 3"))
    );
    // A fatal error: dead at once.
    let (id, _) = store.enqueue(&job("d", "k", 3)).await.expect("enqueue");
    store.claim("d", "w", 60_000, 5).await.expect("claim");
    assert_eq!(
        store.fail(id, "w", "refused", None).await.expect("fail"),
        Some(JobState::Dead)
    );
    // Not due yet: not claimed.
    let (later, _) = store
        .enqueue(&job("d", "k", 3).at(now_ms() + 3_600_000))
        .await
        .expect("enqueue");
    assert!(store.claim("d", "w", 60_000, 5).await.expect("claim").is_empty());
    let stats = store.queue_stats().await.expect("stats");
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].queued, stats[0].ready, stats[0].dead), (1, 0, 2));
    assert_eq!(
        store.job(later).await.expect("job").expect("row").state,
        JobState::Queued
    );
    // A job whose worker died on its last attempt is buried when its lease expires.
    let (last, _) = store.enqueue(&job("d2", "k", 1)).await.expect("enqueue");
    assert_eq!(store.claim("d2", "w", 1, 5).await.expect("claim").len(), 1);
    let s = store.clone();
    wait_until("the expired last attempt to be buried", Duration::from_secs(10), || {
        let s = s.clone();
        async move {
            s.claim("d2", "w2", 60_000, 5).await.expect("claim").is_empty()
                && s.job(last)
                    .await
                    .expect("job")
                    .is_some_and(|j| j.state == JobState::Dead)
        }
    })
    .await;

    // Through a worker: a handler that always asks for a retry ends dead, with its error.
    struct Flaky;
    #[async_trait]
    impl JobHandler for Flaky {
        async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
            Err(JobError::Retry(format!("remote down (attempt {})", ctx.job.attempts)))
        }
    }
    struct Fatal;
    #[async_trait]
    impl JobHandler for Fatal {
        async fn run(&self, _: &JobContext) -> Result<(), JobError> {
            Err(JobError::Fatal("bad payload".into()))
        }
    }
    let stop = CancellationToken::new();
    let worker = Worker::new(
        store.clone(),
        "w",
        "worker",
        Handlers::new().on("flaky", Flaky).on("fatal", Fatal),
    )
    .with_options(fast_options(2, Duration::from_secs(5)));
    let e = worker.enqueuer();
    let running = tokio::spawn(worker.run(stop.clone()));
    let (flaky, _) = e.enqueue(&job("w", "flaky", 4)).await.expect("enqueue");
    let (fatal, _) = e.enqueue(&job("w", "fatal", 4)).await.expect("enqueue");
    let s = store.clone();
    wait_until("both jobs dead", Duration::from_secs(30), || {
        let s = s.clone();
        async move {
            let mut dead = 0;
            for id in [flaky, fatal] {
                if s.job(id).await.expect("job").is_some_and(|j| j.state == JobState::Dead) {
                    dead += 1;
                }
            }
            dead == 2
        }
    })
    .await;
    stop.cancel();
    running.await.expect("worker");
    let f = store.job(flaky).await.expect("job").expect("row");
    assert_eq!(
        (f.attempts, f.last_error.as_deref()),
        (4, Some("remote down (attempt 4)"))
    );
    let f = store.job(fatal).await.expect("job").expect("row");
    assert_eq!((f.attempts, f.last_error.as_deref()), (1, Some("bad payload")));
}

async fn a_stale_owner_is_fenced(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let store = db.store().await;
    let (id, _) = store.enqueue(&job("f", "k", 5)).await.expect("enqueue");
    let got = store.claim("f", "old", 1, 1).await.expect("claim");
    assert_eq!(got.len(), 1);
    let s = store.clone();
    wait_until(
        "another owner to take the expired lease",
        Duration::from_secs(10),
        || {
            let s = s.clone();
            async move { !s.claim("f", "new", 60_000, 1).await.expect("claim").is_empty() }
        },
    )
    .await;
    let before = store.job(id).await.expect("job").expect("row");
    assert_eq!((before.attempts, before.lease_owner.as_deref()), (2, Some("new")));
    assert!(!store.heartbeat(id, "old", 60_000).await.expect("heartbeat"));
    assert!(!store.complete(id, "old").await.expect("complete"));
    assert_eq!(store.fail(id, "old", "late", Some(0)).await.expect("fail"), None);
    assert_eq!(store.fail(id, "old", "late", None).await.expect("fail"), None);
    assert_eq!(
        store.job(id).await.expect("job").expect("row"),
        before,
        "the stale owner changed nothing"
    );
    assert!(store.heartbeat(id, "new", 60_000).await.expect("heartbeat"));
    assert!(store.complete(id, "new").await.expect("complete"));
    assert!(!store.complete(id, "new").await.expect("complete"), "done once");
    assert!(!store.heartbeat(id, "new", 60_000).await.expect("heartbeat"));
}

// ----- leases ------------------------------------------------------------------------------

async fn leases_have_one_holder(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let (a, b) = (db.store().await, db.store().await);
    assert!(a.lease_acquire("gc", "a", 60_000).await.expect("acquire"));
    assert!(!b.lease_acquire("gc", "b", 60_000).await.expect("acquire"));
    assert!(a.lease_acquire("gc", "a", 60_000).await.expect("renew"));
    assert!(
        !b.lease_release("gc", "b").await.expect("release"),
        "not b's to release"
    );
    assert!(a.lease_release("gc", "a").await.expect("release"));
    assert!(b.lease_acquire("gc", "b", 1).await.expect("acquire"));
    let a2 = a.clone();
    wait_until("a to take b's expired lease", Duration::from_secs(10), || {
        let a = a2.clone();
        async move { a.lease_acquire("gc", "a", 60_000).await.expect("acquire") }
    })
    .await;
    assert!(!b.lease_acquire("gc", "b", 60_000).await.expect("acquire"));

    // Leadership: of two replicas one holds the lease; when it stops, the other takes over.
    let ttl = Duration::from_millis(600);
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let (la, ka) = Leadership::start(a.clone(), "sweep", "replica-a", ttl, stop_a.clone()).await;
    let (lb, kb) = Leadership::start(b.clone(), "sweep", "replica-b", ttl, stop_b.clone()).await;
    assert!(la.is_held() && !lb.is_held());
    stop_a.cancel();
    ka.await.expect("keeper");
    assert!(!la.is_held());
    let mut held = lb.subscribe();
    tokio::time::timeout(Duration::from_secs(10), held.wait_for(|h| *h))
        .await
        .expect("b takes over within a few renewals")
        .expect("keeper running");
    stop_b.cancel();
    kb.await.expect("keeper");
    assert!(
        a.lease_acquire("sweep", "someone", 1000).await.expect("acquire"),
        "released on shutdown"
    );
}

// ----- outbox cursors and pruning ----------------------------------------------------------

async fn insert_event(conn: &mut sqlx::AnyConnection, backend: Backend) -> i64 {
    let sql = "INSERT INTO events (kind, repository, created_at) VALUES ('test', 'r', 0)";
    match backend {
        Backend::Postgres | Backend::Sqlite => {
            let row = sqlx::query(&format!("{sql} RETURNING id"))
                .fetch_one(&mut *conn)
                .await
                .expect("insert event");
            row.try_get(0).expect("id")
        }
        _ => sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .expect("insert event")
            .last_insert_id()
            .expect("id"),
    }
}

async fn cursors_only_advance_and_prune_the_outbox(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let store = db.store().await;
    assert_eq!(store.cursor_get("c").await.expect("get"), None);
    store.cursor_set("c", 5).await.expect("set");
    store.cursor_set("c", 3).await.expect("set");
    assert_eq!(store.cursor_get("c").await.expect("get"), Some(5), "never back");
    store.cursor_set("c", 9).await.expect("set");
    store.cursor_set("d", 4).await.expect("set");
    assert_eq!(
        store.cursors().await.expect("cursors"),
        vec![("c".to_string(), 9), ("d".to_string(), 4)]
    );
    let pool = db.pool(2).await;
    let mut conn = pool.acquire().await.expect("connection");
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(insert_event(&mut conn, backend).await);
    }
    drop(conn);
    store.cursor_set("c", ids[20]).await.expect("set");
    store.cursor_set("d", ids[12]).await.expect("set");
    // The slowest consumer is at ids[12]; two more are kept below it.
    let pruned = image_manager::core::outbox::prune(&*store, 2, 0).await.expect("prune");
    assert_eq!(pruned.events, 11);
    let left = store.events_after(0, 100).await.expect("events");
    assert_eq!(left.first().map(|e| e.id), Some(ids[11]));
    assert_eq!(left.len(), 19);
    assert_eq!(
        store.events_between(ids[11], ids[14], 100).await.expect("events").len(),
        3
    );
    assert_eq!(store.prune_events(ids[29]).await.expect("prune"), 19);
    assert!(store.events_after(0, 100).await.expect("events").is_empty());
    // Done jobs older than the cut-off go, the others stay.
    let (done, _) = store.enqueue(&job("p", "k", 1)).await.expect("enqueue");
    let (dead, _) = store.enqueue(&job("p", "k", 1)).await.expect("enqueue");
    store.claim("p", "w", 60_000, 2).await.expect("claim");
    assert!(store.complete(done, "w").await.expect("complete"));
    store.fail(dead, "w", "x", None).await.expect("fail");
    assert_eq!(store.prune_jobs(now_ms() - 60_000).await.expect("prune"), 0);
    assert_eq!(store.prune_jobs(now_ms() + 1).await.expect("prune"), 1);
    assert!(store.job(done).await.expect("job").is_none());
    assert!(store.job(dead).await.expect("job").is_some(), "dead letters stay");
}

async fn migration_moves_the_indexer_setting(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let store = db.store().await;
    let pool = db.pool(1).await;
    // Undo 0007 as if the database was at 0006 with the indexer's setting, then migrate again.
    for sql in [
        "DROP TABLE jobs",
        "DROP TABLE leases",
        "DROP TABLE outbox_cursors",
        "DELETE FROM _sqlx_migrations WHERE version = 7",
        "INSERT INTO settings (name, value) VALUES ('catalog.indexed_event', '42')",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    store.migrate().await.expect("migrating again");
    assert_eq!(store.cursor_get("catalog-indexer").await.expect("cursor"), Some(42));
    use image_manager::storage::AccountStore;
    assert_eq!(store.setting("catalog.indexed_event").await.expect("setting"), None);
}

// ----- (c) out-of-order commits ---------------------------------------------------------------

/// What a consumer task handled, in order.
#[derive(Default)]
struct Seen {
    ids: Vec<i64>,
    max_missing: u64,
}

/// Poll `consumer` until `stop`, recording every event it hands out.
async fn consume(mut consumer: OutboxConsumer, seen: Arc<Mutex<Seen>>, stop: CancellationToken) -> OutboxConsumer {
    while !stop.is_cancelled() {
        let events = consumer.poll().await.expect("poll");
        for e in &events {
            seen.lock().unwrap().ids.push(e.id);
            consumer.ack(e.id);
        }
        consumer.commit().await.expect("commit");
        let missing = consumer.tracker().map_or(0, |t| t.missing());
        {
            let mut s = seen.lock().unwrap();
            s.max_missing = s.max_missing.max(missing);
        }
        if events.is_empty() {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await; // idle poll interval
        }
    }
    consumer
}

fn random_below(n: usize) -> usize {
    (uuid::Uuid::new_v4().as_u128() % n as u128) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_consumer_sees_out_of_order_commits_postgres() {
    out_of_order_commits(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_consumer_sees_out_of_order_commits_mariadb() {
    out_of_order_commits(Backend::MariaDb).await
}

async fn out_of_order_commits(backend: Backend) {
    let db = TestDb::create(backend, "im_jobs").await;
    let store = db.store().await;
    let pool = db.pool(24).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = CancellationToken::new();
    let consumer = OutboxConsumer::new(store.clone(), "test", Duration::from_secs(600)).with_batch(7);
    let task = tokio::spawn(consume(consumer, seen.clone(), stop.clone()));
    let mut committed = BTreeSet::new();
    let mut rolled_back = BTreeSet::new();
    for round in 0..6 {
        // Twenty transactions insert events and stay open; ids are taken in this order.
        let mut open = Vec::new();
        for _ in 0..20 {
            let mut tx = pool.begin().await.expect("begin");
            let mut ids = Vec::new();
            for _ in 0..1 + random_below(3) {
                ids.push(insert_event(&mut tx, backend).await);
            }
            open.push((tx, ids));
        }
        // The one that took the highest ids commits first, and the consumer sees it: every
        // other one is a gap below the frontier now.
        let (tx, ids) = open.pop().expect("a transaction");
        tx.commit().await.expect("commit");
        let top = *ids.last().expect("ids");
        committed.extend(ids);
        let s = seen.clone();
        wait_until(
            "the consumer to see the last transaction",
            Duration::from_secs(30),
            || {
                let s = s.clone();
                async move { s.lock().unwrap().ids.contains(&top) }
            },
        )
        .await;
        // The rest in random order; one of them rolls back (a permanent gap).
        let doomed = random_below(open.len());
        let mut order: Vec<usize> = (0..open.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, random_below(i + 1));
        }
        let mut slots: Vec<Option<(sqlx::Transaction<'static, sqlx::Any>, Vec<i64>)>> =
            open.into_iter().map(Some).collect();
        for i in order {
            let Some((tx, ids)) = slots[i].take() else { continue };
            if i == doomed {
                tx.rollback().await.expect("rollback");
                rolled_back.extend(ids);
            } else {
                tx.commit().await.expect("commit");
                committed.extend(ids);
            }
            tokio::task::yield_now().await;
        }
        eprintln!(
            "{backend:?}: round {round} committed, {} events so far",
            committed.len()
        );
    }
    let s = seen.clone();
    let want = committed.clone();
    wait_until(
        "the consumer to see every committed event",
        Duration::from_secs(60),
        || {
            let (s, want) = (s.clone(), want.clone());
            async move { s.lock().unwrap().ids.iter().collect::<BTreeSet<_>>().len() >= want.len() }
        },
    )
    .await;
    stop.cancel();
    let consumer = task.await.expect("consumer");
    let (ids, max_missing) = {
        let s = seen.lock().unwrap();
        (s.ids.clone(), s.max_missing)
    };
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was handed out twice");
    assert_eq!(unique, committed, "missed or invented events");
    assert!(max_missing > 0, "the consumer never saw a gap");
    // The rolled-back ids stay gaps (the timeout is long): the cursor waits below the first.
    let first_gap = *rolled_back.first().expect("a rolled back id");
    // (No row while the cursor never moved past 0: the first id rolled back.)
    let stored = store.cursor_get("test").await.expect("cursor").unwrap_or(0);
    assert_eq!(stored, first_gap - 1);
    assert_eq!(consumer.tracker().map(|t| t.missing()), Some(rolled_back.len() as u64));

    // A consumer with a short gap timeout reads everything again from 0 and steps past them.
    let mut quick = OutboxConsumer::new(store.clone(), "quick", Duration::from_millis(300));
    let mut again = Vec::new();
    let last = *committed.last().expect("events");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for e in quick.poll().await.expect("poll") {
            again.push(e.id);
            quick.ack(e.id);
        }
        quick.commit().await.expect("commit");
        if store.cursor_get("quick").await.expect("cursor") == Some(last) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the quick consumer never stepped past the gaps"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // polling interval
    }
    assert_eq!(again.iter().copied().collect::<BTreeSet<_>>(), committed);
    assert_eq!(again.len(), committed.len());
}

// ----- the catalog indexer on the outbox consumer ----------------------------------------------

async fn the_catalog_indexer_follows_the_outbox(backend: Backend) {
    use image_manager::core::names::{Reference, RepoName};
    use image_manager::core::Registry;
    use image_manager::storage::fs::FsBlobStore;
    use image_manager::storage::CatalogStore;

    let db = TestDb::create(backend, "im_jobs").await;
    let store = db.store().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let blobs = Arc::new(FsBlobStore::open(dir.path(), false).expect("blob store"));
    let reg = Registry::new(blobs, store.clone(), Default::default()).with_jobs(store.clone());
    let repo = RepoName::parse("onap/app").expect("name");
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let cd = image_manager::core::names::Digest::sha256(config);
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(config))]);
    reg.put_blob(&repo, &cd, body).await.expect("config blob");
    for tag in ["1.0", "2.0"] {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.as_str(), "size": config.len()},
            "layers": [],
            "annotations": {"v": tag},
        });
        reg.put_manifest(
            &repo,
            &Reference::parse(tag).expect("tag"),
            "",
            manifest.to_string().into_bytes(),
            &[],
        )
        .await
        .expect("push");
    }
    assert!(
        reg.indexer_lag().await.expect("lag") >= 3,
        "blob push and two tags not indexed yet"
    );
    let mut consumer = OutboxConsumer::new(
        store.clone(),
        image_manager::core::catalog::INDEXER,
        Duration::from_secs(10),
    );
    let mut handled = 0;
    loop {
        match reg.index_events(&mut consumer).await.expect("indexing") {
            0 => break,
            n => handled += n,
        }
    }
    assert!(handled >= 3, "blob push and two tags: {handled}");
    let entries = store
        .catalog_query(&image_manager::storage::catalog::EntryQuery {
            namespace: Some("onap".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("query");
    let mut versions: Vec<_> = entries
        .iter()
        .map(|e| (e.version.as_str(), e.architecture.as_deref()))
        .collect();
    versions.sort();
    assert_eq!(versions, vec![("1.0", Some("arm64")), ("2.0", Some("arm64"))]);
    let last = store.events_after(0, 100).await.expect("events").last().map(|e| e.id);
    assert_eq!(
        store
            .cursor_get(image_manager::core::catalog::INDEXER)
            .await
            .expect("cursor"),
        last
    );
    assert_eq!(reg.indexer_lag().await.expect("lag"), 0);
    // A restarted indexer starts from the stored cursor: nothing to do.
    let mut restarted = OutboxConsumer::new(
        store.clone(),
        image_manager::core::catalog::INDEXER,
        Duration::from_secs(10),
    );
    assert_eq!(reg.index_events(&mut restarted).await.expect("indexing"), 0);
}

// ----- metrics --------------------------------------------------------------------------------

/// `/metrics` shows each queue's depth and the age of its oldest ready job, read at scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_depth_and_age_reach_the_metrics() {
    use image_manager::core::Registry;
    use image_manager::storage::fs::FsBlobStore;

    let db = TestDb::create(Backend::Sqlite, "im_jobs").await;
    let store = db.store().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let blobs = Arc::new(FsBlobStore::open(dir.path(), false).expect("blob store"));
    let reg = Registry::new(blobs, store.clone(), Default::default()).with_jobs(store.clone());
    for _ in 0..3 {
        let mut j = job("metrics-q", "noop", 3);
        j.run_at = image_manager::storage::now_ms() - 5_000;
        store.enqueue(&j).await.expect("enqueue");
    }
    reg.observe_state().await;
    let text = image_manager::metrics::metrics().encode();
    assert!(
        text.contains(r#"image_manager_job_queue_depth{queue="metrics-q"} 3"#),
        "{text}"
    );
    let age_line = text
        .lines()
        .find(|l| l.starts_with(r#"image_manager_job_queue_oldest_seconds{queue="metrics-q"}"#))
        .expect("the oldest-age gauge");
    let age: i64 = age_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(age >= 5, "{age_line}");
}
