//! [`JobStore`] on the SQL databases: jobs, leases, outbox cursors and the event feed.
//!
//! Claims: on PostgreSQL and MariaDB a transaction selects due jobs `FOR UPDATE SKIP LOCKED`
//! (rows another claimer has locked are passed over, not waited for) and marks them running;
//! MariaDB runs it at READ COMMITTED so that no gap locks hold up concurrent enqueues. On
//! SQLite the same transaction begins with `BEGIN IMMEDIATE`, which takes the database's one
//! write lock first, so no two claims (in this process or another) interleave.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{long_text, Dialect, SqlStore};
use crate::storage::jobs::{EventRecord, JobRecord, JobState, JobStore, NewJob, QueueStats};
use crate::storage::{now_ms, StoreError};

const COLUMNS: &str = "id, queue, kind, unique_key, payload, state, attempts, max_attempts, run_at, \
     lease_owner, lease_until, last_error, created_at, updated_at";

/// Longest error text kept with a job, in characters.
const MAX_ERROR_CHARS: usize = 4000;

/// Most events one prune statement deletes (ids per batch).
const PRUNE_BATCH: i64 = 10_000;

fn job_row(r: &AnyRow) -> Result<JobRecord, StoreError> {
    let payload = long_text(r, 4)?.unwrap_or_default();
    Ok(JobRecord {
        id: r.try_get(0)?,
        queue: r.try_get(1)?,
        kind: r.try_get(2)?,
        unique_key: r.try_get(3)?,
        // Always written as JSON; should a row hold anything else, the handler sees the text
        // rather than the queue stalling on a job nobody can claim.
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        state: JobState::parse(&r.try_get::<String, _>(5)?)?,
        attempts: small(r.try_get(6)?),
        max_attempts: small(r.try_get(7)?),
        run_at: r.try_get(8)?,
        lease_owner: r.try_get(9)?,
        lease_until: r.try_get(10)?,
        last_error: long_text(r, 11)?,
        created_at: r.try_get(12)?,
        updated_at: r.try_get(13)?,
    })
}

fn event_row(r: &AnyRow) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: r.try_get(0)?,
        kind: r.try_get(1)?,
        repository: r.try_get(2)?,
        digest: r.try_get(3)?,
        tag: r.try_get(4)?,
    })
}

fn small(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn ms(d: u64) -> i64 {
    i64::try_from(d).unwrap_or(i64::MAX / 4)
}

/// `?, ?, ?` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// What one claim transaction did.
struct Claimed {
    jobs: Vec<JobRecord>,
    /// Expired jobs out of attempts that were made dead instead of claimed.
    buried: usize,
}

impl SqlStore {
    async fn enqueue_once(&self, job: &NewJob, payload: &str) -> Result<Option<(i64, bool)>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        if let Some(key) = &job.unique_key {
            // A finished job gives its key up to the new one.
            sqlx::query(&self.q(
                "UPDATE jobs SET unique_key = NULL, updated_at = ? WHERE unique_key = ? AND state IN ('done', 'dead')",
            ))
            .bind(now)
            .bind(key.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let values = "jobs (queue, kind, unique_key, payload, state, attempts, max_attempts, run_at, created_at, \
             updated_at) VALUES (?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?)";
        let mut sql = match job.unique_key {
            Some(_) => self.dialect.insert_ignore(values),
            None => format!("INSERT INTO {values}"),
        };
        // MariaDB has no RETURNING before 10.5 and MySQL none at all: it reports the id.
        let returning = self.dialect != Dialect::MySql;
        if returning {
            sql.push_str(" RETURNING id");
        }
        let sql = self.q(&sql);
        let q = sqlx::query(&sql)
            .bind(job.queue.as_str())
            .bind(job.kind.as_str())
            .bind(job.unique_key.as_deref())
            .bind(payload)
            .bind(i64::from(job.max_attempts.max(1)))
            .bind(job.run_at)
            .bind(now)
            .bind(now);
        let created = if returning {
            match q.fetch_optional(&mut *tx).await? {
                Some(row) => Some(row.try_get::<i64, _>(0)?),
                None => None,
            }
        } else {
            let res = q.execute(&mut *tx).await?;
            if res.rows_affected() == 1 {
                Some(
                    res.last_insert_id()
                        .ok_or_else(|| StoreError::Other("the database reported no id for a new job".into()))?,
                )
            } else {
                None
            }
        };
        if let Some(id) = created {
            tx.commit().await?;
            return Ok(Some((id, true)));
        }
        // The key is held by a queued or running job (committed: the insert waited for it).
        let row = sqlx::query(&self.q(&format!(
            "SELECT id FROM jobs WHERE unique_key = ?{}",
            self.dialect.for_share()
        )))
        .bind(job.unique_key.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
        let found = match row {
            Some(r) => Some((r.try_get::<i64, _>(0)?, false)),
            None => None,
        };
        tx.commit().await?;
        Ok(found)
    }

    async fn claim_once(&self, queue: &str, owner: &str, lease_ms: u64, limit: u32) -> Result<Claimed, StoreError> {
        let now = now_ms();
        let mut conn = self.write.acquire().await?;
        // SQLite: BEGIN IMMEDIATE; MariaDB: READ COMMITTED (see the module comment).
        let mut tx = self.gc_begin(&mut conn).await?;
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            _ => " FOR UPDATE SKIP LOCKED",
        };
        let rows = sqlx::query(&self.q(&format!(
            "SELECT id, state, attempts, max_attempts FROM jobs WHERE queue = ? \
             AND ((state = 'queued' AND run_at <= ?) OR (state = 'running' AND lease_until <= ?)) \
             ORDER BY run_at, id LIMIT ?{lock}"
        )))
        .bind(queue)
        .bind(now)
        .bind(now)
        .bind(i64::from(limit.max(1)))
        .fetch_all(&mut *tx)
        .await?;
        let mut claim = Vec::new();
        let mut bury = Vec::new();
        for r in &rows {
            let id: i64 = r.try_get(0)?;
            let state: String = r.try_get(1)?;
            let attempts: i64 = r.try_get(2)?;
            let max_attempts: i64 = r.try_get(3)?;
            if state == "running" && attempts >= max_attempts {
                bury.push(id);
            } else {
                claim.push(id);
            }
        }
        if !bury.is_empty() {
            let sql = format!(
                "UPDATE jobs SET state = 'dead', last_error = ?, lease_owner = NULL, lease_until = NULL, \
                 updated_at = ? WHERE id IN ({})",
                placeholders(bury.len())
            );
            let sql = self.q(&sql);
            let mut q = sqlx::query(&sql)
                .bind("the lease of its last attempt expired (its worker stopped or lost the database)")
                .bind(now);
            for id in &bury {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        let mut jobs = Vec::new();
        if !claim.is_empty() {
            let sql = format!(
                "UPDATE jobs SET state = 'running', lease_owner = ?, lease_until = ?, attempts = attempts + 1, \
                 updated_at = ? WHERE id IN ({})",
                placeholders(claim.len())
            );
            let sql = self.q(&sql);
            let mut q = sqlx::query(&sql)
                .bind(owner)
                .bind(now.saturating_add(ms(lease_ms)))
                .bind(now);
            for id in &claim {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            let sql = format!(
                "SELECT {COLUMNS} FROM jobs WHERE id IN ({}) ORDER BY run_at, id",
                placeholders(claim.len())
            );
            let sql = self.q(&sql);
            let mut q = sqlx::query(&sql);
            for id in &claim {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&mut *tx).await? {
                jobs.push(job_row(&r)?);
            }
        }
        tx.commit().await?;
        Ok(Claimed {
            jobs,
            buried: bury.len(),
        })
    }

    async fn fail_once(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<Option<JobState>, StoreError> {
        let mut tx: Transaction<'static, Any> = self.begin().await?;
        let error = truncate(error, MAX_ERROR_CHARS);
        let res = match retry_at {
            Some(at) => {
                sqlx::query(&self.q(
                    "UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
                     run_at = ?, last_error = ?, lease_owner = NULL, lease_until = NULL, updated_at = ? \
                     WHERE id = ? AND state = 'running' AND lease_owner = ?",
                ))
                .bind(at)
                .bind(error)
                .bind(now_ms())
                .bind(id)
                .bind(owner)
                .execute(&mut *tx)
                .await?
            }
            None => {
                sqlx::query(&self.q(
                    "UPDATE jobs SET state = 'dead', last_error = ?, lease_owner = NULL, lease_until = NULL, \
                     updated_at = ? WHERE id = ? AND state = 'running' AND lease_owner = ?",
                ))
                .bind(error)
                .bind(now_ms())
                .bind(id)
                .bind(owner)
                .execute(&mut *tx)
                .await?
            }
        };
        if res.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let row = sqlx::query(&self.q("SELECT state FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let state = JobState::parse(&row.try_get::<String, _>(0)?)?;
        tx.commit().await?;
        Ok(Some(state))
    }

    async fn events_where(&self, sql: &str, binds: &[i64]) -> Result<Vec<EventRecord>, StoreError> {
        let sql = self.q(sql);
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(*b);
        }
        let rows = q.fetch_all(&self.read).await?;
        rows.iter().map(event_row).collect()
    }
}

#[async_trait]
impl JobStore for SqlStore {
    async fn enqueue(&self, job: &NewJob) -> Result<(i64, bool), StoreError> {
        let payload = serde_json::to_string(&job.payload)
            .map_err(|e| StoreError::Other(format!("encoding a job payload: {e}")))?;
        // The key's holder can finish between our insert and our read: then try again.
        for _ in 0..5 {
            let payload = payload.as_str();
            if let Some(found) = self.retrying(|| Box::pin(self.enqueue_once(job, payload))).await? {
                return Ok(found);
            }
        }
        Err(StoreError::Other(format!(
            "enqueuing a job with unique key {:?} kept conflicting",
            job.unique_key
        )))
    }

    async fn claim(&self, queue: &str, owner: &str, lease_ms: u64, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = Vec::new();
        // Expired jobs out of attempts are buried on the way; claim on past them (a few rounds).
        for _ in 0..4 {
            let want = limit.max(1) - out.len() as u32;
            let got = self
                .retrying(|| Box::pin(self.claim_once(queue, owner, lease_ms, want)))
                .await?;
            out.extend(got.jobs);
            if got.buried == 0 || out.len() as u32 >= limit.max(1) {
                break;
            }
        }
        Ok(out)
    }

    async fn heartbeat(&self, id: i64, owner: &str, lease_ms: u64) -> Result<bool, StoreError> {
        let now = now_ms();
        let res = sqlx::query(&self.q(
            "UPDATE jobs SET lease_until = ?, updated_at = ? WHERE id = ? AND state = 'running' AND lease_owner = ?",
        ))
        .bind(now.saturating_add(ms(lease_ms)))
        .bind(now)
        .bind(id)
        .bind(owner)
        .execute(&self.write)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn complete(&self, id: i64, owner: &str) -> Result<bool, StoreError> {
        let res = sqlx::query(&self.q(
            "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = ? \
             WHERE id = ? AND state = 'running' AND lease_owner = ?",
        ))
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&self.write)
        .await?;
        self.synced(Ok(res.rows_affected() == 1)).await
    }

    async fn fail(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<Option<JobState>, StoreError> {
        self.retrying(|| Box::pin(self.fail_once(id, owner, error, retry_at)))
            .await
    }

    async fn job(&self, id: i64) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&self.q(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?")))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(job_row).transpose()
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(&self.q(
            "SELECT queue, state, COUNT(*), COUNT(CASE WHEN run_at <= ? THEN 1 END), \
             MIN(CASE WHEN run_at <= ? THEN run_at END) FROM jobs WHERE state <> 'done' \
             GROUP BY queue, state ORDER BY queue",
        ))
        .bind(now)
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        let mut out: Vec<QueueStats> = Vec::new();
        for r in &rows {
            let queue: String = r.try_get(0)?;
            let state = JobState::parse(&r.try_get::<String, _>(1)?)?;
            let n = count(r.try_get(2)?);
            if out.last().is_none_or(|s| s.queue != queue) {
                out.push(QueueStats {
                    queue: queue.clone(),
                    ..Default::default()
                });
            }
            let Some(s) = out.last_mut() else { continue };
            match state {
                JobState::Queued => {
                    s.queued = n;
                    s.ready = count(r.try_get(3)?);
                    let oldest: Option<i64> = r.try_get(4)?;
                    s.oldest_ready_age_ms = oldest.map_or(0, |at| (now - at).max(0));
                }
                JobState::Running => s.running = n,
                JobState::Dead => s.dead = n,
                JobState::Done => {}
            }
        }
        Ok(out)
    }

    async fn prune_jobs(&self, before: i64) -> Result<u64, StoreError> {
        let res = sqlx::query(&self.q("DELETE FROM jobs WHERE state = 'done' AND updated_at < ?"))
            .bind(before)
            .execute(&self.write)
            .await?;
        Ok(res.rows_affected())
    }

    async fn lease_acquire(&self, name: &str, owner: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let now = now_ms();
        let until = now.saturating_add(ms(ttl_ms));
        let taken = sqlx::query(
            &self.q("UPDATE leases SET owner = ?, expires_at = ? WHERE name = ? AND (owner = ? OR expires_at <= ?)"),
        )
        .bind(owner)
        .bind(until)
        .bind(name)
        .bind(owner)
        .bind(now)
        .execute(&self.write)
        .await?;
        if taken.rows_affected() == 1 {
            return Ok(true);
        }
        let ins = self
            .dialect
            .insert_ignore("leases (name, owner, expires_at) VALUES (?, ?, ?)");
        let res = sqlx::query(&self.q(&ins))
            .bind(name)
            .bind(owner)
            .bind(until)
            .execute(&self.write)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn lease_release(&self, name: &str, owner: &str) -> Result<bool, StoreError> {
        let res = sqlx::query(&self.q("DELETE FROM leases WHERE name = ? AND owner = ?"))
            .bind(name)
            .bind(owner)
            .execute(&self.write)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    async fn leases_held(&self, prefix: &str) -> Result<u64, StoreError> {
        // Lease names are ours: no LIKE wildcards in a prefix, but escape them anyway.
        let pattern = format!("{}%", prefix.replace('!', "!!").replace('%', "!%").replace('_', "!_"));
        let n: i64 =
            sqlx::query_scalar(&self.q("SELECT COUNT(*) FROM leases WHERE name LIKE ? ESCAPE '!' AND expires_at > ?"))
                .bind(pattern)
                .bind(now_ms())
                .fetch_one(&self.write)
                .await?;
        Ok(n.max(0) as u64)
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        self.events_where(
            &format!(
                "SELECT id, kind, repository, digest, tag FROM events WHERE id > ? ORDER BY id LIMIT {}",
                limit.clamp(1, 10_000)
            ),
            &[after],
        )
        .await
    }

    async fn events_between(&self, after: i64, upto: i64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        self.events_where(
            &format!(
                "SELECT id, kind, repository, digest, tag FROM events WHERE id > ? AND id <= ? ORDER BY id LIMIT {}",
                limit.clamp(1, 10_000)
            ),
            &[after, upto],
        )
        .await
    }

    async fn cursor_get(&self, consumer: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(&self.q("SELECT position FROM outbox_cursors WHERE consumer = ?"))
            .bind(consumer)
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    async fn cursor_set(&self, consumer: &str, position: i64) -> Result<(), StoreError> {
        let now = now_ms();
        let ins = self
            .dialect
            .insert_ignore("outbox_cursors (consumer, position, updated_at) VALUES (?, ?, ?)");
        let res = sqlx::query(&self.q(&ins))
            .bind(consumer)
            .bind(position)
            .bind(now)
            .execute(&self.write)
            .await?;
        if res.rows_affected() == 0 {
            sqlx::query(
                &self.q("UPDATE outbox_cursors SET position = ?, updated_at = ? WHERE consumer = ? AND position < ?"),
            )
            .bind(position)
            .bind(now)
            .bind(consumer)
            .bind(position)
            .execute(&self.write)
            .await?;
        }
        self.synced(Ok(())).await
    }

    async fn cursors(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT consumer, position FROM outbox_cursors ORDER BY consumer")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?)))
            .collect()
    }

    async fn prune_events(&self, keep_after: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let row = sqlx::query("SELECT MIN(id) FROM events").fetch_one(&self.write).await?;
            let Some(lowest) = row.try_get::<Option<i64>, _>(0)? else {
                break;
            };
            if lowest > keep_after {
                break;
            }
            let upto = keep_after.min(lowest.saturating_add(PRUNE_BATCH - 1));
            let res = sqlx::query(&self.q("DELETE FROM events WHERE id <= ?"))
                .bind(upto)
                .execute(&self.write)
                .await?;
            total += res.rows_affected();
        }
        Ok(total)
    }
}
