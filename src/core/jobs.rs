//! The job runtime: workers that claim durable jobs from a queue and run them, and the
//! cluster-wide leases under which one replica at a time runs background work.
//!
//! A [`Worker`] runs up to `concurrency` jobs of one queue at once. It claims when a slot is
//! free: at once when a job was enqueued through its [`Enqueuer`] (in this process), else
//! every `poll_interval` (jobs enqueued by other replicas, retries coming due). While a
//! handler runs, its job's lease is renewed every `heartbeat_interval`; a worker that cannot
//! renew it (another worker took the job after the lease expired, or the database stayed out
//! of reach for a whole lease) drops the handler, since the job may now run elsewhere.
//! Handlers must therefore be idempotent: a job runs at least once, and more than once when
//! its worker dies or stalls mid-job.
//!
//! Each claim uses its own owner token (`OWNER/INSTANCE-N`), so even two claims of the same
//! job by one worker are fenced from each other in the store.
//!
//! Outcomes: `Ok` completes the job; [`JobError::Retry`] queues it again after an exponential
//! delay with full jitter ([`Backoff`]) until it is out of attempts, then it is dead;
//! [`JobError::Fatal`] makes it dead at once. Dead jobs stay in the store as dead letters.
//!
//! Shutdown ([`Worker::run`]'s token): no more claims; running handlers get
//! `shutdown_grace` to finish, and are then dropped with their jobs left to lease expiry.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::JobsConfig;
use crate::storage::jobs::{JobRecord, JobState, JobStore, NewJob};
use crate::storage::{now_ms, StoreError};

/// Exponential delays with full jitter: attempt `n` waits a random time between 0 and
/// `base * 2^(n-1)`, that ceiling capped at `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The longest delay of attempt `attempt` (1 for the first failure).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay of attempt `attempt` for a uniform random `unit` in [0, 1].
    pub fn delay_for(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// A random delay for attempt `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_for(attempt, random_unit())
    }
}

/// A uniform random number in [0, 1) (from the operating system's generator, through uuid).
fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// How a handler's attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt later (a remote end down, a timeout).
    #[error("{0}")]
    Retry(String),
    /// Will fail the same way again (bad payload, refused for good): the job is dead at once.
    #[error("{0}")]
    Fatal(String),
    /// Not now, but not a failure either (the resource it needs is busy): queue it again
    /// after this delay, without the backoff of a failed attempt. Its claim still counts
    /// against `max_attempts`, so jobs that may wait long get many.
    #[error("{1}")]
    Later(Duration, String),
}

/// What a handler gets: the job as claimed, and signals to stop early.
pub struct JobContext {
    pub job: JobRecord,
    lease_lost: CancellationToken,
    shutdown: CancellationToken,
}

impl JobContext {
    /// Cancelled when the worker lost the job's lease (it may run elsewhere now). The handler
    /// is dropped right after; long synchronous sections can check it.
    pub fn lease_lost(&self) -> &CancellationToken {
        &self.lease_lost
    }

    /// Cancelled when the worker shuts down: the handler has the grace period to finish, or
    /// may stop at a safe point and return [`JobError::Retry`].
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// Runs the jobs of one kind.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError>;
}

/// Handlers by job kind.
#[derive(Clone, Default)]
pub struct Handlers(HashMap<String, Arc<dyn JobHandler>>);

impl Handlers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Run jobs of `kind` with `handler`.
    pub fn on(mut self, kind: &str, handler: impl JobHandler) -> Self {
        self.0.insert(kind.to_string(), Arc::new(handler));
        self
    }

    fn get(&self, kind: &str) -> Option<Arc<dyn JobHandler>> {
        self.0.get(kind).cloned()
    }
}

/// How a worker runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerOptions {
    /// Jobs run at once.
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub lease_ttl: Duration,
    /// At most half the lease (a shorter one is used otherwise).
    pub heartbeat_interval: Duration,
    pub retry: Backoff,
    pub shutdown_grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self::from_config(&JobsConfig::default())
    }
}

impl WorkerOptions {
    pub fn from_config(c: &JobsConfig) -> Self {
        Self {
            concurrency: 4,
            poll_interval: Duration::from_millis(c.poll_interval_ms.max(10)),
            lease_ttl: Duration::from_secs(c.lease_ttl_secs.max(1)),
            heartbeat_interval: Duration::from_secs(c.heartbeat_secs.max(1)),
            retry: Backoff::new(
                Duration::from_millis(c.retry_base_ms),
                Duration::from_secs(c.retry_max_secs),
            ),
            shutdown_grace: Duration::from_secs(c.shutdown_grace_secs),
        }
    }

    fn heartbeat(&self) -> Duration {
        self.heartbeat_interval
            .min(self.lease_ttl / 2)
            .max(Duration::from_millis(1))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Enqueues jobs and wakes the workers of this process that share its [`Notify`].
#[derive(Clone)]
pub struct Enqueuer {
    store: Arc<dyn JobStore>,
    wake: Arc<Notify>,
}

impl Enqueuer {
    pub fn new(store: Arc<dyn JobStore>, wake: Arc<Notify>) -> Self {
        Self { store, wake }
    }

    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// [`JobStore::enqueue`], then wake a worker.
    pub async fn enqueue(&self, job: &NewJob) -> Result<(i64, bool), StoreError> {
        let out = self.store.enqueue(job).await?;
        self.wake.notify_one();
        Ok(out)
    }
}

/// Claims and runs the jobs of one queue (see the module comment).
pub struct Worker {
    store: Arc<dyn JobStore>,
    queue: String,
    owner: String,
    handlers: Arc<Handlers>,
    opts: WorkerOptions,
    wake: Arc<Notify>,
    /// Distinguishes this worker's claims from those of an earlier process with the same owner.
    instance: String,
    claims: AtomicU64,
}

impl Worker {
    /// A worker of `queue` claiming as `owner` (the replica's id), with default options.
    pub fn new(store: Arc<dyn JobStore>, queue: &str, owner: &str, handlers: Handlers) -> Self {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        Self {
            store,
            queue: queue.to_string(),
            owner: owner.to_string(),
            handlers: Arc::new(handlers),
            opts: WorkerOptions::default(),
            wake: Arc::new(Notify::new()),
            instance: nonce[..8].to_string(),
            claims: AtomicU64::new(0),
        }
    }

    pub fn with_options(mut self, opts: WorkerOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Share the wake-up signal of other workers (of the same queue in this process).
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// The signal that makes this worker claim at once.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// An enqueuer that wakes this worker.
    pub fn enqueuer(&self) -> Enqueuer {
        Enqueuer::new(self.store.clone(), self.wake.clone())
    }

    fn claim_token(&self) -> String {
        let n = self.claims.fetch_add(1, Ordering::Relaxed);
        format!("{}/{}-{n}", self.owner, self.instance)
    }

    /// Claim and run jobs until `shutdown` is cancelled, then wait up to the grace period for
    /// running jobs.
    pub async fn run(self, shutdown: CancellationToken) {
        let concurrency = self.opts.concurrency.max(1);
        let lease_ms = millis(self.opts.lease_ttl);
        let store_backoff = Backoff::new(self.opts.poll_interval, Duration::from_secs(30));
        let mut running: JoinSet<()> = JoinSet::new();
        let mut failures = 0u32;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let free = concurrency.saturating_sub(running.len());
            let mut pause = self.opts.poll_interval;
            if free > 0 {
                let token = self.claim_token();
                match self.store.claim(&self.queue, &token, lease_ms, free as u32).await {
                    Ok(jobs) => {
                        failures = 0;
                        let full = jobs.len() == free;
                        for job in jobs {
                            let handler = self.handlers.get(&job.kind);
                            let run = run_job(
                                self.store.clone(),
                                job,
                                handler,
                                token.clone(),
                                self.opts,
                                shutdown.clone(),
                            );
                            running.spawn(run);
                        }
                        if full {
                            // More may be waiting: claim again as soon as a slot frees up.
                            continue;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        pause = store_backoff.ceiling(failures);
                        tracing::warn!(queue = %self.queue, error = %e, "claiming jobs failed");
                    }
                }
            }
            let can_claim = running.len() < concurrency;
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(res) = running.join_next(), if !running.is_empty() => log_join(res),
                () = self.wake.notified(), if can_claim && failures == 0 => {}
                () = tokio::time::sleep(pause), if can_claim => {}
            }
        }
        if running.is_empty() {
            return;
        }
        tracing::info!(queue = %self.queue, jobs = running.len(), "worker stopping: waiting for running jobs");
        let drain = async {
            while let Some(res) = running.join_next().await {
                log_join(res);
            }
        };
        if tokio::time::timeout(self.opts.shutdown_grace, drain).await.is_err() {
            tracing::warn!(
                queue = %self.queue,
                jobs = running.len(),
                "jobs still running after the shutdown grace period: left to their leases' expiry"
            );
            running.abort_all();
            while running.join_next().await.is_some() {}
        }
    }
}

fn log_join(res: Result<(), tokio::task::JoinError>) {
    if let Err(e) = res {
        if e.is_panic() {
            tracing::error!(error = %e, "a job task panicked");
        }
    }
}

/// Run one claimed job with its heartbeat, then record the outcome.
async fn run_job(
    store: Arc<dyn JobStore>,
    job: JobRecord,
    handler: Option<Arc<dyn JobHandler>>,
    owner: String,
    opts: WorkerOptions,
    shutdown: CancellationToken,
) {
    let (id, attempt) = (job.id, job.attempts);
    let lease_lost = CancellationToken::new();
    let ctx = JobContext {
        job,
        lease_lost: lease_lost.clone(),
        shutdown,
    };
    let outcome = match handler {
        None => Err(JobError::Retry(format!(
            "no handler for job kind {:?} on this replica",
            ctx.job.kind
        ))),
        Some(handler) => {
            let work = AssertUnwindSafe(handler.run(&ctx)).catch_unwind();
            let beat = keep_job_lease(&*store, id, &owner, &opts);
            tokio::select! {
                res = work => res.unwrap_or_else(|_| Err(JobError::Retry("the job handler panicked".into()))),
                why = beat => {
                    lease_lost.cancel();
                    tracing::warn!(job = id, kind = %ctx.job.kind, reason = why, "job lease lost: handler stopped, the job is left to its new owner");
                    return;
                }
            }
        }
    };
    record_outcome(&*store, &ctx.job, &owner, attempt, outcome, &opts).await;
}

/// Renew a job's lease until it cannot be; returns why.
async fn keep_job_lease(store: &dyn JobStore, id: i64, owner: &str, opts: &WorkerOptions) -> &'static str {
    let every = opts.heartbeat();
    let lease_ms = millis(opts.lease_ttl);
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let asked = Instant::now();
        match store.heartbeat(id, owner, lease_ms).await {
            Ok(true) => renewed = asked,
            Ok(false) => return "another worker holds the lease",
            Err(e) => {
                tracing::warn!(job = id, error = %e, "job heartbeat failed");
                if asked.duration_since(renewed) + every >= opts.lease_ttl {
                    return "the lease expires before it could be renewed";
                }
            }
        }
    }
}

/// Complete or fail the job; store errors are retried a few times (after that the job is left
/// to lease expiry and runs again).
async fn record_outcome(
    store: &dyn JobStore,
    job: &JobRecord,
    owner: &str,
    attempt: u32,
    outcome: Result<(), JobError>,
    opts: &WorkerOptions,
) {
    let pause = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    for tries in 1..=5u32 {
        let res = match &outcome {
            Ok(()) => store
                .complete(job.id, owner)
                .await
                .map(|ok| ok.then_some(JobState::Done)),
            Err(JobError::Retry(msg)) => {
                let at = now_ms().saturating_add(millis(opts.retry.delay(attempt)) as i64);
                store.fail(job.id, owner, msg, Some(at)).await
            }
            Err(JobError::Fatal(msg)) => store.fail(job.id, owner, msg, None).await,
            Err(JobError::Later(after, msg)) => {
                let at = now_ms().saturating_add(millis(*after) as i64);
                store.fail(job.id, owner, msg, Some(at)).await
            }
        };
        match res {
            Ok(Some(state)) => {
                match (&outcome, state) {
                    (Ok(()), _) => tracing::debug!(job = job.id, kind = %job.kind, "job done"),
                    (Err(e), JobState::Dead) => {
                        tracing::warn!(job = job.id, kind = %job.kind, attempt, error = %e, "job failed for good (dead)")
                    }
                    (Err(e), _) => {
                        tracing::info!(job = job.id, kind = %job.kind, attempt, error = %e, "job failed; will retry")
                    }
                }
                return;
            }
            Ok(None) => {
                tracing::warn!(job = job.id, kind = %job.kind, "job finished after its lease was taken over: outcome not recorded");
                return;
            }
            Err(e) => {
                tracing::warn!(job = job.id, error = %e, tries, "recording a job's outcome failed");
                tokio::time::sleep(pause.ceiling(tries)).await;
            }
        }
    }
}

/// An id for this replica's leases and claims: host name, process id and a random suffix.
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "replica".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &nonce[..8])
}

/// A cluster-wide lease this replica tries to hold for as long as it runs: work for the whole
/// cluster (garbage collection, sweeps) runs only on the replica that holds it.
///
/// A keeper task takes the lease when it is free or expired and renews it every third of its
/// time to live; the replica counts it as held until a little before it would expire after the
/// last renewal that succeeded. On shutdown the lease is released, so another replica takes
/// over at its next attempt instead of after expiry.
pub struct Leadership {
    name: String,
    held: watch::Receiver<bool>,
}

impl Leadership {
    /// Try once, then keep trying in the background until `shutdown`.
    pub async fn start(
        store: Arc<dyn JobStore>,
        name: &str,
        owner: &str,
        ttl: Duration,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let mut keeper = LeaseKeeper {
            store,
            name: name.to_string(),
            owner: owner.to_string(),
            ttl: ttl.max(Duration::from_millis(30)),
            valid_until: None,
            tx,
        };
        keeper.renew().await;
        let task = tokio::spawn(keeper.run(shutdown));
        (
            Self {
                name: name.to_string(),
                held: rx,
            },
            task,
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Follows whether the lease is held.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.held.clone()
    }
}

struct LeaseKeeper {
    store: Arc<dyn JobStore>,
    name: String,
    owner: String,
    ttl: Duration,
    /// When this replica stops counting the lease as its own, if it holds it.
    valid_until: Option<Instant>,
    tx: watch::Sender<bool>,
}

impl LeaseKeeper {
    async fn renew(&mut self) {
        let asked = Instant::now();
        let call = self.store.lease_acquire(&self.name, &self.owner, millis(self.ttl));
        let res = match self.valid_until {
            // Held: the answer must come before the lease would lapse.
            Some(until) => tokio::time::timeout_at(until, call)
                .await
                .unwrap_or_else(|_| Err(StoreError::Other("lease renewal timed out".into()))),
            None => call.await,
        };
        let was_held = self.valid_until.is_some();
        match res {
            Ok(true) => self.valid_until = Some(asked + self.ttl - self.ttl / 10),
            Ok(false) => self.valid_until = None,
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "lease renewal failed"),
        }
        if self.valid_until.is_some_and(|u| u <= Instant::now()) {
            self.valid_until = None;
        }
        let held = self.valid_until.is_some();
        if held != was_held {
            if held {
                tracing::info!(lease = %self.name, owner = %self.owner, "holding the cluster lease");
            } else {
                tracing::info!(lease = %self.name, "cluster lease lost or held by another replica");
            }
        }
        self.tx.send_if_modified(|h| std::mem::replace(h, held) != held);
    }

    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let mut next = self.ttl / 3;
            if let Some(until) = self.valid_until {
                next = next.min(until.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(next) => {}
            }
            self.renew().await;
        }
        if self.valid_until.take().is_some() {
            self.tx.send_replace(false);
            if let Err(e) = self.store.lease_release(&self.name, &self.owner).await {
                tracing::warn!(lease = %self.name, error = %e, "releasing the cluster lease failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let ceilings: Vec<u128> = (1..=9).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5), "no overflow");
    }

    #[test]
    fn backoff_jitter_is_full() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(b.delay_for(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay_for(3, 0.5), Duration::from_millis(200));
        assert_eq!(b.delay_for(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay_for(3, 7.0), Duration::from_millis(400), "clamped");
        let mut below_half = 0;
        for _ in 0..1000 {
            let d = b.delay(4);
            assert!(d <= Duration::from_millis(800));
            if d < Duration::from_millis(400) {
                below_half += 1;
            }
        }
        // Uniform over [0, 800 ms]: about half below 400 ms (0.5 ± 0.1 has probability ~1 - 1e-9).
        assert!((400..=600).contains(&below_half), "{below_half} of 1000 below half");
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn heartbeat_is_at_most_half_the_lease() {
        let o = WorkerOptions {
            lease_ttl: Duration::from_secs(4),
            heartbeat_interval: Duration::from_secs(10),
            ..WorkerOptions::default()
        };
        assert_eq!(o.heartbeat(), Duration::from_secs(2));
    }
}
