//! [`VimStore`] and [`DistributionStore`] on the SQL databases.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{long_text, SqlStore};
use crate::storage::vims::{
    DistributionRecord, DistributionStore, TargetRecord, VimImageRecord, VimRecord, VimStore, FINAL_STATES,
};
use crate::storage::{StoreError, StoreErrorKind};

const VIM_COLUMNS: &str = "id, name, kind, config, secret, labels, health, created_at, updated_at";
const IMAGE_COLUMNS: &str = "vim_id, remote_id, name, status, size, digest, sha512, entry_id, meta, seen_at";
const JOB_COLUMNS: &str = "id, created_by, method, options, created_at, updated_at";
const TARGET_COLUMNS: &str = "job_id, entry_id, vim_id, state, method, remote_id, bytes_done, bytes_total, rate, \
     attempts, last_error, skipped, started_at, finished_at, updated_at";

/// Longest error text kept with a target, in characters.
const MAX_ERROR_CHARS: usize = 2000;

fn json_text<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Other(format!("encoding VIM JSON: {e}")))
}

fn json_value(text: Option<String>) -> serde_json::Value {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn unsigned(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn vim_row(r: &AnyRow) -> Result<VimRecord, StoreError> {
    let labels = long_text(r, 5)?.unwrap_or_default();
    Ok(VimRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        kind: r.try_get(2)?,
        config: json_value(long_text(r, 3)?),
        secret: long_text(r, 4)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        health: long_text(r, 6)?.and_then(|t| serde_json::from_str(&t).ok()),
        created_at: r.try_get(7)?,
        updated_at: r.try_get(8)?,
    })
}

fn image_row(r: &AnyRow) -> Result<VimImageRecord, StoreError> {
    Ok(VimImageRecord {
        vim_id: r.try_get(0)?,
        remote_id: r.try_get(1)?,
        name: long_text(r, 2)?,
        status: r.try_get(3)?,
        size: unsigned(r.try_get(4)?),
        digest: r.try_get(5)?,
        sha512: r.try_get(6)?,
        entry_id: r.try_get(7)?,
        meta: json_value(long_text(r, 8)?),
        seen_at: r.try_get(9)?,
    })
}

fn job_row(r: &AnyRow) -> Result<DistributionRecord, StoreError> {
    Ok(DistributionRecord {
        id: r.try_get(0)?,
        created_by: r.try_get(1)?,
        method: r.try_get(2)?,
        options: json_value(long_text(r, 3)?),
        created_at: r.try_get(4)?,
        updated_at: r.try_get(5)?,
    })
}

fn target_row(r: &AnyRow) -> Result<TargetRecord, StoreError> {
    Ok(TargetRecord {
        job_id: r.try_get(0)?,
        entry_id: r.try_get(1)?,
        vim_id: r.try_get(2)?,
        state: r.try_get(3)?,
        method: r.try_get(4)?,
        remote_id: r.try_get(5)?,
        bytes_done: unsigned(Some(r.try_get(6)?)).unwrap_or(0),
        bytes_total: unsigned(Some(r.try_get(7)?)).unwrap_or(0),
        rate: unsigned(Some(r.try_get(8)?)).unwrap_or(0),
        attempts: u32::try_from(r.try_get::<i64, _>(9)?.max(0)).unwrap_or(u32::MAX),
        last_error: long_text(r, 10)?,
        skipped: r.try_get::<i64, _>(11)? != 0,
        started_at: r.try_get(12)?,
        finished_at: r.try_get(13)?,
        updated_at: r.try_get(14)?,
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

impl SqlStore {
    async fn image_write(&self, conn: &mut sqlx::AnyConnection, image: &VimImageRecord) -> Result<(), StoreError> {
        let sql = self.dialect.upsert(
            &format!("vim_images ({IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
            "vim_id, remote_id",
            &[
                "name", "status", "size", "digest", "sha512", "entry_id", "meta", "seen_at",
            ],
        );
        sqlx::query(&self.q(&sql))
            .bind(image.vim_id.as_str())
            .bind(image.remote_id.as_str())
            .bind(image.name.as_deref())
            .bind(image.status.as_deref())
            .bind(image.size.map(signed))
            .bind(image.digest.as_deref())
            .bind(image.sha512.as_deref())
            .bind(image.entry_id.as_deref())
            .bind(json_text(&image.meta)?)
            .bind(image.seen_at)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn target_insert(&self, conn: &mut sqlx::AnyConnection, t: &TargetRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO distribution_targets ({TARGET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        sqlx::query(&self.q(&sql))
            .bind(t.job_id.as_str())
            .bind(t.entry_id.as_str())
            .bind(t.vim_id.as_str())
            .bind(t.state.as_str())
            .bind(t.method.as_deref())
            .bind(t.remote_id.as_deref())
            .bind(signed(t.bytes_done))
            .bind(signed(t.bytes_total))
            .bind(signed(t.rate))
            .bind(i64::from(t.attempts))
            .bind(t.last_error.as_deref().map(|e| truncate(e, MAX_ERROR_CHARS)))
            .bind(i64::from(t.skipped))
            .bind(t.started_at)
            .bind(t.finished_at)
            .bind(t.updated_at)
            .execute(conn)
            .await?;
        Ok(())
    }
}

fn is_conflict(e: &StoreError) -> bool {
    e.kind() == StoreErrorKind::Conflict
}

#[async_trait]
impl VimStore for SqlStore {
    async fn vim_add(&self, vim: &VimRecord) -> Result<bool, StoreError> {
        let sql = format!("INSERT INTO vims ({VIM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)");
        let health = vim.health.as_ref().map(json_text).transpose()?;
        let done = sqlx::query(&self.q(&sql))
            .bind(vim.id.as_str())
            .bind(vim.name.as_str())
            .bind(vim.kind.as_str())
            .bind(json_text(&vim.config)?)
            .bind(vim.secret.as_deref())
            .bind(json_text(&vim.labels)?)
            .bind(health)
            .bind(vim.created_at)
            .bind(vim.updated_at)
            .execute(&self.write)
            .await
            .map_err(StoreError::from);
        match done {
            Ok(_) => self.synced(Ok(true)).await,
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn vim_get(&self, id: &str) -> Result<Option<VimRecord>, StoreError> {
        let sql = format!("SELECT {VIM_COLUMNS} FROM vims WHERE id = ?");
        let row = sqlx::query(&self.q(&sql)).bind(id).fetch_optional(&self.read).await?;
        row.map(|r| vim_row(&r)).transpose()
    }

    async fn vims(&self) -> Result<Vec<VimRecord>, StoreError> {
        let sql = format!("SELECT {VIM_COLUMNS} FROM vims ORDER BY name, id");
        let rows = sqlx::query(&self.q(&sql)).fetch_all(&self.read).await?;
        rows.iter().map(vim_row).collect()
    }

    async fn vim_update(&self, vim: &VimRecord, expected_updated_at: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.q(
            "UPDATE vims SET name = ?, config = ?, secret = ?, labels = ?, updated_at = ? WHERE id = ? AND updated_at = ?",
        ))
        .bind(vim.name.as_str())
        .bind(json_text(&vim.config)?)
        .bind(vim.secret.as_deref())
        .bind(json_text(&vim.labels)?)
        .bind(vim.updated_at)
        .bind(vim.id.as_str())
        .bind(expected_updated_at)
        .execute(&self.write)
        .await?;
        self.synced(Ok(done.rows_affected() == 1)).await
    }

    async fn vim_set_health(&self, id: &str, health: &serde_json::Value) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.q("UPDATE vims SET health = ? WHERE id = ?"))
            .bind(json_text(health)?)
            .bind(id)
            .execute(&self.write)
            .await?;
        self.synced(Ok(done.rows_affected() == 1)).await
    }

    async fn vim_delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(&self.q("DELETE FROM vim_images WHERE vim_id = ?"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query(&self.q("DELETE FROM vims WHERE id = ?"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.synced(Ok(done.rows_affected() == 1)).await
    }

    async fn inventory_replace(&self, vim_id: &str, images: &[VimImageRecord], seen_at: i64) -> Result<(), StoreError> {
        // In batches, each its own transaction, so that a VIM with 100 000 images does not hold
        // the write lock for the whole sync; the sweep of unseen rows comes last.
        for batch in images.chunks(500) {
            let mut tx = self.begin().await?;
            for image in batch {
                self.image_write(&mut tx, image).await?;
            }
            tx.commit().await?;
        }
        sqlx::query(&self.q("DELETE FROM vim_images WHERE vim_id = ? AND seen_at < ?"))
            .bind(vim_id)
            .bind(seen_at)
            .execute(&self.write)
            .await?;
        self.synced(Ok(())).await
    }

    async fn inventory_put(&self, image: &VimImageRecord) -> Result<(), StoreError> {
        let mut conn = self.write.acquire().await?;
        let done = self.image_write(&mut conn, image).await;
        drop(conn);
        self.synced(done).await
    }

    async fn inventory_delete(&self, vim_id: &str, remote_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.q("DELETE FROM vim_images WHERE vim_id = ? AND remote_id = ?"))
            .bind(vim_id)
            .bind(remote_id)
            .execute(&self.write)
            .await?;
        self.synced(Ok(done.rows_affected() == 1)).await
    }

    async fn inventory_of_vim(&self, vim_id: &str) -> Result<Vec<VimImageRecord>, StoreError> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM vim_images WHERE vim_id = ? ORDER BY remote_id");
        let rows = sqlx::query(&self.q(&sql)).bind(vim_id).fetch_all(&self.read).await?;
        rows.iter().map(image_row).collect()
    }

    async fn inventory_of_entry(&self, entry_id: &str) -> Result<Vec<VimImageRecord>, StoreError> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM vim_images WHERE entry_id = ? ORDER BY vim_id, remote_id");
        let rows = sqlx::query(&self.q(&sql)).bind(entry_id).fetch_all(&self.read).await?;
        rows.iter().map(image_row).collect()
    }
}

#[async_trait]
impl DistributionStore for SqlStore {
    async fn distribution_add(&self, job: &DistributionRecord, targets: &[TargetRecord]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let sql = format!("INSERT INTO distributions ({JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)");
        sqlx::query(&self.q(&sql))
            .bind(job.id.as_str())
            .bind(job.created_by.as_str())
            .bind(job.method.as_str())
            .bind(json_text(&job.options)?)
            .bind(job.created_at)
            .bind(job.updated_at)
            .execute(&mut *tx)
            .await?;
        for t in targets {
            self.target_insert(&mut tx, t).await?;
        }
        tx.commit().await?;
        self.synced(Ok(())).await
    }

    async fn distribution_get(&self, id: &str) -> Result<Option<DistributionRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM distributions WHERE id = ?");
        let row = sqlx::query(&self.q(&sql)).bind(id).fetch_optional(&self.read).await?;
        row.map(|r| job_row(&r)).transpose()
    }

    async fn distributions(&self, limit: u32, before: Option<i64>) -> Result<Vec<DistributionRecord>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM distributions WHERE created_at < ? ORDER BY created_at DESC, id DESC LIMIT ?"
        );
        let rows = sqlx::query(&self.q(&sql))
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(job_row).collect()
    }

    async fn targets_of(&self, job_id: &str) -> Result<Vec<TargetRecord>, StoreError> {
        let sql =
            format!("SELECT {TARGET_COLUMNS} FROM distribution_targets WHERE job_id = ? ORDER BY entry_id, vim_id");
        let rows = sqlx::query(&self.q(&sql)).bind(job_id).fetch_all(&self.read).await?;
        rows.iter().map(target_row).collect()
    }

    async fn target_get(&self, job_id: &str, entry_id: &str, vim_id: &str) -> Result<Option<TargetRecord>, StoreError> {
        let sql = format!(
            "SELECT {TARGET_COLUMNS} FROM distribution_targets WHERE job_id = ? AND entry_id = ? AND vim_id = ?"
        );
        let row = sqlx::query(&self.q(&sql))
            .bind(job_id)
            .bind(entry_id)
            .bind(vim_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| target_row(&r)).transpose()
    }

    async fn target_update(&self, t: &TargetRecord, from: &[&str]) -> Result<bool, StoreError> {
        if from.is_empty() {
            return Ok(false);
        }
        let states = vec!["?"; from.len()].join(", ");
        let sql = format!(
            "UPDATE distribution_targets SET state = ?, method = ?, remote_id = ?, bytes_done = ?, bytes_total = ?, \
             rate = ?, attempts = ?, last_error = ?, skipped = ?, started_at = ?, finished_at = ?, updated_at = ? \
             WHERE job_id = ? AND entry_id = ? AND vim_id = ? AND state IN ({states})"
        );
        let sql = self.q(&sql);
        let mut q = sqlx::query(&sql)
            .bind(t.state.as_str())
            .bind(t.method.as_deref())
            .bind(t.remote_id.as_deref())
            .bind(signed(t.bytes_done))
            .bind(signed(t.bytes_total))
            .bind(signed(t.rate))
            .bind(i64::from(t.attempts))
            .bind(t.last_error.as_deref().map(|e| truncate(e, MAX_ERROR_CHARS)))
            .bind(i64::from(t.skipped))
            .bind(t.started_at)
            .bind(t.finished_at)
            .bind(t.updated_at)
            .bind(t.job_id.as_str())
            .bind(t.entry_id.as_str())
            .bind(t.vim_id.as_str());
        for s in from {
            q = q.bind(*s);
        }
        let done = q.execute(&self.write).await?;
        let mut updated = done.rows_affected() == 1;
        if !updated {
            // MariaDB counts only rows whose values changed: a write of what is already there
            // matched all the same when the row is in one of the states asked for.
            updated = self
                .target_get(&t.job_id, &t.entry_id, &t.vim_id)
                .await?
                .is_some_and(|now| now == *t && from.contains(&now.state.as_str()));
        }
        if updated {
            sqlx::query(&self.q("UPDATE distributions SET updated_at = ? WHERE id = ?"))
                .bind(t.updated_at)
                .bind(t.job_id.as_str())
                .execute(&self.write)
                .await?;
        }
        self.synced(Ok(updated)).await
    }

    async fn targets_in_flight(&self, entry_id: &str) -> Result<Vec<TargetRecord>, StoreError> {
        let finals = FINAL_STATES.map(|s| format!("'{s}'")).join(", ");
        let sql = format!(
            "SELECT {TARGET_COLUMNS} FROM distribution_targets WHERE entry_id = ? AND state NOT IN ({finals}) \
             ORDER BY job_id, vim_id"
        );
        let rows = sqlx::query(&self.q(&sql)).bind(entry_id).fetch_all(&self.read).await?;
        rows.iter().map(target_row).collect()
    }
}
