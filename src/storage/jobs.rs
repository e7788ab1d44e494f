//! The job store: durable jobs that any replica may run, cluster-wide leases for work that must
//! run on one replica at a time, and the cursors of event outbox consumers.
//!
//! Jobs are claimed under a lease: a claim marks the job `running`, names the claimer in
//! `lease_owner` and sets `lease_until`; the claimer renews it with [`JobStore::heartbeat`]
//! while it works. A running job whose lease expired (its claimer died or lost the database)
//! is claimable again, so every job runs at least once and handlers must be idempotent.
//! Every change a claimer makes afterwards (heartbeat, complete, fail) names the owner it
//! claimed with and does nothing when the job is no longer leased to that owner (fencing): a
//! claimer that stalled past its lease cannot overwrite what the new claimer does. The core
//! gives each claim its own owner token ([`crate::core::jobs`]).
//!
//! Times are ms since the epoch on the clock of the replica that makes the call: replicas'
//! clocks are assumed synchronised to well under a lease's length.

use async_trait::async_trait;

use super::StoreError;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Workers claim jobs by queue.
    pub queue: String,
    /// Which handler runs it.
    pub kind: String,
    /// At most one job with this key is queued or running at a time: enqueuing another while
    /// one is returns the existing one. A done or dead job gives its key up to a new one.
    pub unique_key: Option<String>,
    pub payload: serde_json::Value,
    /// Not claimed before this time (ms since the epoch).
    pub run_at: i64,
    /// Claims before the job is dead (at least 1).
    pub max_attempts: u32,
}

impl NewJob {
    /// A job of `kind` on `queue` to run now, with at most `max_attempts` claims.
    pub fn new(queue: &str, kind: &str, payload: serde_json::Value, max_attempts: u32) -> Self {
        Self {
            queue: queue.to_string(),
            kind: kind.to_string(),
            unique_key: None,
            payload,
            run_at: super::now_ms(),
            max_attempts,
        }
    }

    pub fn unique(mut self, key: &str) -> Self {
        self.unique_key = Some(key.to_string());
        self
    }

    pub fn at(mut self, run_at: i64) -> Self {
        self.run_at = run_at;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for `run_at`, then for a worker.
    Queued,
    /// Claimed; leased to `lease_owner` until `lease_until`.
    Running,
    Done,
    /// Failed for good: out of attempts, or a fatal error (the dead letters).
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "dead" => JobState::Dead,
            other => return Err(StoreError::Other(format!("unknown job state {other:?}"))),
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub unique_key: Option<String>,
    pub payload: serde_json::Value,
    pub state: JobState,
    /// How many times it was claimed.
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What one queue holds (for metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub queue: String,
    /// Queued jobs, due or not.
    pub queued: u64,
    /// Queued jobs whose `run_at` has passed.
    pub ready: u64,
    pub running: u64,
    pub dead: u64,
    /// How long the longest-waiting ready job has been due (ms); 0 when none is.
    pub oldest_ready_age_ms: i64,
}

/// A registry event from the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub kind: String,
    pub repository: String,
    pub digest: Option<String>,
    pub tag: Option<String>,
}

#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    // ----- jobs -----

    /// Add a job; returns its id and whether it was created. With a unique key held by a job
    /// that is queued or running, that job's id is returned instead (and `false`).
    async fn enqueue(&self, job: &NewJob) -> Result<(i64, bool), StoreError>;
    /// Claim up to `limit` jobs of `queue` for `owner` for `lease_ms`: queued jobs that are
    /// due, and running jobs whose lease expired. Each claim counts as an attempt. A running
    /// job whose lease expired after its last attempt is made dead instead.
    async fn claim(&self, queue: &str, owner: &str, lease_ms: u64, limit: u32) -> Result<Vec<JobRecord>, StoreError>;
    /// Extend the lease of a running job `owner` holds to `lease_ms` from now; false (and
    /// nothing changed) when it does not hold it.
    async fn heartbeat(&self, id: i64, owner: &str, lease_ms: u64) -> Result<bool, StoreError>;
    /// Mark a running job `owner` holds done; false (and nothing changed) when it does not hold it.
    async fn complete(&self, id: i64, owner: &str) -> Result<bool, StoreError>;
    /// Record a failed attempt of a running job `owner` holds: queued again for `retry_at`, or
    /// dead when `retry_at` is `None` or it is out of attempts. Returns the new state; `None`
    /// (and nothing changed) when `owner` does not hold it.
    async fn fail(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<Option<JobState>, StoreError>;
    async fn job(&self, id: i64) -> Result<Option<JobRecord>, StoreError>;
    /// Every queue that has jobs not done, in name order.
    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError>;
    /// Delete done jobs last changed before `before` (ms); returns how many. Dead jobs stay.
    async fn prune_jobs(&self, before: i64) -> Result<u64, StoreError>;

    // ----- leases: work that runs on one replica at a time -----

    /// Take lease `name` for `owner` for `ttl_ms` from now: when nobody holds it, when it
    /// expired, or to renew it when `owner` holds it already. False when another owner holds it.
    async fn lease_acquire(&self, name: &str, owner: &str, ttl_ms: u64) -> Result<bool, StoreError>;
    /// Give lease `name` up if `owner` holds it; false when it did not.
    async fn lease_release(&self, name: &str, owner: &str) -> Result<bool, StoreError>;
    /// How many unexpired leases have a name starting with `prefix` (held slots of a
    /// cluster-wide limit).
    async fn leases_held(&self, prefix: &str) -> Result<u64, StoreError>;

    // ----- the event outbox and its consumers -----

    /// Events with an id greater than `after`, in id order, at most `limit`.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRecord>, StoreError>;
    /// Events with `after < id <= upto`, in id order, at most `limit`.
    async fn events_between(&self, after: i64, upto: i64, limit: u32) -> Result<Vec<EventRecord>, StoreError>;
    /// The stored position of `consumer`: every event up to it was handled.
    async fn cursor_get(&self, consumer: &str) -> Result<Option<i64>, StoreError>;
    /// Store `position` for `consumer` unless the stored one is already further (replicas
    /// sharing a consumer only move it forward).
    async fn cursor_set(&self, consumer: &str, position: i64) -> Result<(), StoreError>;
    /// Every consumer with its position.
    async fn cursors(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Delete the events with an id up to `keep_after` (in batches); returns how many.
    async fn prune_events(&self, keep_after: i64) -> Result<u64, StoreError>;
}
