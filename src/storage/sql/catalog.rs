//! [`CatalogStore`] on the SQL databases: entries, labels, links.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::{long_text, SqlStore};
use crate::storage::catalog::{
    CatalogStore, Cursor, EntryQuery, EntryRecord, ImageUploadRecord, LinkRecord, SortKey, Upserted,
};
use crate::storage::StoreError;

const COLUMNS: &str = "id, namespace, name, version, type, repository, tag, digest, status, size, os, architecture, \
     disk_format, vendor, description, predecessor, source, details, labels, created_at, updated_at";

fn entry(r: &AnyRow) -> Result<EntryRecord, StoreError> {
    let details = long_text(r, 17)?.unwrap_or_default();
    let labels = long_text(r, 18)?.unwrap_or_default();
    Ok(EntryRecord {
        id: r.try_get(0)?,
        namespace: r.try_get(1)?,
        name: r.try_get(2)?,
        version: r.try_get(3)?,
        kind: r.try_get(4)?,
        repository: r.try_get(5)?,
        tag: r.try_get(6)?,
        digest: r.try_get(7)?,
        status: r.try_get(8)?,
        size: r.try_get::<i64, _>(9)?.max(0) as u64,
        os: r.try_get(10)?,
        architecture: r.try_get(11)?,
        disk_format: r.try_get(12)?,
        vendor: r.try_get(13)?,
        description: long_text(r, 14)?,
        predecessor: r.try_get(15)?,
        source: r.try_get(16)?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        created_at: r.try_get(19)?,
        updated_at: r.try_get(20)?,
    })
}

fn json_text<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Other(format!("encoding catalog JSON: {e}")))
}

/// `LIKE` pattern text with `!` as the escape character.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '!' | '%' | '_') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

/// One bound value of a built query.
enum Arg {
    Text(String),
    Int(i64),
}

impl SqlStore {
    async fn replace_labels(&self, tx: &mut Transaction<'_, Any>, e: &EntryRecord) -> Result<(), StoreError> {
        sqlx::query(&self.q("DELETE FROM catalog_labels WHERE entry_id = ?"))
            .bind(e.id.as_str())
            .execute(&mut **tx)
            .await?;
        for (k, v) in &e.labels {
            sqlx::query(&self.q("INSERT INTO catalog_labels (entry_id, label, value) VALUES (?, ?, ?)"))
                .bind(e.id.as_str())
                .bind(k.as_str())
                .bind(v.as_str())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn entry_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        where_: &str,
        args: &[&str],
    ) -> Result<Option<EntryRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM catalog_entries WHERE {where_}{}",
            self.dialect.for_update()
        );
        let sql = self.q(&sql);
        let mut q = sqlx::query(&sql);
        for a in args {
            q = q.bind(*a);
        }
        q.fetch_optional(&mut **tx).await?.map(|r| entry(&r)).transpose()
    }

    async fn upsert_once(&self, e: &EntryRecord) -> Result<(EntryRecord, Upserted), StoreError> {
        let mut tx = self.begin().await?;
        let now = crate::storage::now_ms();
        if let Some(mut old) = self
            .entry_in(&mut tx, "repository = ? AND tag = ?", &[&e.repository, &e.tag])
            .await?
        {
            if old.digest == e.digest {
                tx.commit().await?;
                return Ok((old, Upserted::Unchanged));
            }
            old.kind = e.kind.clone();
            old.digest = e.digest.clone();
            old.size = e.size;
            old.os = e.os.clone();
            old.architecture = e.architecture.clone();
            old.disk_format = e.disk_format.clone();
            old.vendor = e.vendor.clone();
            old.details = e.details.clone();
            old.created_at = e.created_at;
            old.updated_at = now.max(old.updated_at + 1);
            sqlx::query(&self.q(
                "UPDATE catalog_entries SET type = ?, digest = ?, size = ?, os = ?, architecture = ?, disk_format = ?, \
                 vendor = ?, details = ?, created_at = ?, updated_at = ? WHERE id = ?",
            ))
            .bind(old.kind.as_str())
            .bind(old.digest.as_str())
            .bind(old.size as i64)
            .bind(old.os.as_deref())
            .bind(old.architecture.as_deref())
            .bind(old.disk_format.as_deref())
            .bind(old.vendor.as_deref())
            .bind(json_text(&old.details)?)
            .bind(old.created_at)
            .bind(old.updated_at)
            .bind(old.id.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok((old, Upserted::Updated));
        }
        let mut new = e.clone();
        let pred = sqlx::query(&self.q(
            "SELECT id FROM catalog_entries WHERE namespace = ? AND name = ? ORDER BY created_at DESC, id DESC LIMIT 1",
        ))
        .bind(e.namespace.as_str())
        .bind(e.name.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        new.predecessor = match pred {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        };
        new.updated_at = now;
        sqlx::query(&self.q(&format!(
            "INSERT INTO catalog_entries ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )))
        .bind(new.id.as_str())
        .bind(new.namespace.as_str())
        .bind(new.name.as_str())
        .bind(new.version.as_str())
        .bind(new.kind.as_str())
        .bind(new.repository.as_str())
        .bind(new.tag.as_str())
        .bind(new.digest.as_str())
        .bind(new.status.as_str())
        .bind(new.size as i64)
        .bind(new.os.as_deref())
        .bind(new.architecture.as_deref())
        .bind(new.disk_format.as_deref())
        .bind(new.vendor.as_deref())
        .bind(new.description.as_deref())
        .bind(new.predecessor.as_deref())
        .bind(new.source.as_str())
        .bind(json_text(&new.details)?)
        .bind(json_text(&new.labels)?)
        .bind(new.created_at)
        .bind(new.updated_at)
        .execute(&mut *tx)
        .await?;
        self.replace_labels(&mut tx, &new).await?;
        tx.commit().await?;
        Ok((new, Upserted::Created))
    }
}

fn is_unique_violation(e: &StoreError) -> bool {
    match e {
        StoreError::Db(sqlx::Error::Database(d)) => {
            let code = d.code();
            let code = code.as_deref().unwrap_or_default();
            // SQLite 2067/1555, PostgreSQL 23505, MySQL 1062.
            matches!(code, "2067" | "1555" | "23505" | "1062") || d.message().contains("UNIQUE constraint")
        }
        _ => false,
    }
}

#[async_trait]
impl CatalogStore for SqlStore {
    async fn image_upload_add(&self, rec: &ImageUploadRecord) -> Result<(), StoreError> {
        sqlx::query(
            &self.q("INSERT INTO image_uploads (id, repository, tag, metadata, created_at) VALUES (?, ?, ?, ?, ?)"),
        )
        .bind(rec.id.as_str())
        .bind(rec.repository.as_str())
        .bind(rec.tag.as_str())
        .bind(rec.metadata.as_str())
        .bind(rec.created_at)
        .execute(&self.write)
        .await?;
        self.synced(Ok(())).await
    }

    async fn image_upload_get(&self, id: &str) -> Result<Option<ImageUploadRecord>, StoreError> {
        let row =
            sqlx::query(&self.q("SELECT id, repository, tag, metadata, created_at FROM image_uploads WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
        row.map(|r| {
            Ok(ImageUploadRecord {
                id: r.try_get(0)?,
                repository: r.try_get(1)?,
                tag: r.try_get(2)?,
                metadata: long_text(&r, 3)?.unwrap_or_default(),
                created_at: r.try_get(4)?,
            })
        })
        .transpose()
    }

    async fn image_uploads(&self) -> Result<Vec<ImageUploadRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, repository, tag, metadata, created_at FROM image_uploads ORDER BY created_at")
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(ImageUploadRecord {
                    id: r.try_get(0)?,
                    repository: r.try_get(1)?,
                    tag: r.try_get(2)?,
                    metadata: long_text(r, 3)?.unwrap_or_default(),
                    created_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    async fn image_upload_delete(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(&self.q("DELETE FROM image_uploads WHERE id = ?"))
            .bind(id)
            .execute(&self.write)
            .await?;
        self.synced(Ok(())).await
    }

    async fn catalog_upsert(&self, e: &EntryRecord) -> Result<(EntryRecord, Upserted), StoreError> {
        // Two writers inserting the same new entry at once: the loser finds the winner's row.
        let mut tries = 0;
        loop {
            match self.retrying(|| Box::pin(self.upsert_once(e))).await {
                Err(err) if tries < 3 && is_unique_violation(&err) => tries += 1,
                other => return other,
            }
        }
    }

    async fn catalog_claim(&self, e: &EntryRecord) -> Result<bool, StoreError> {
        if self.catalog_by_ref(&e.repository, &e.tag).await?.is_some() {
            return Ok(false);
        }
        // Concurrent claims on MariaDB may deadlock on the gap lock: the retry then sees the
        // winner's row.
        match self.retrying(|| Box::pin(self.upsert_once(e))).await {
            Ok((_, Upserted::Created)) => Ok(true),
            Ok(_) => Ok(false),
            Err(err) if is_unique_violation(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn catalog_get(&self, id: &str) -> Result<Option<EntryRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM catalog_entries WHERE id = ?");
        let row = sqlx::query(&self.q(&sql)).bind(id).fetch_optional(&self.read).await?;
        row.map(|r| entry(&r)).transpose()
    }

    async fn catalog_by_ref(&self, repository: &str, tag: &str) -> Result<Option<EntryRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM catalog_entries WHERE repository = ? AND tag = ?");
        let row = sqlx::query(&self.q(&sql))
            .bind(repository)
            .bind(tag)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| entry(&r)).transpose()
    }

    async fn catalog_query(&self, q: &EntryQuery) -> Result<Vec<EntryRecord>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM catalog_entries e WHERE 1 = 1");
        let mut args: Vec<Arg> = Vec::new();
        if let Some(readable) = &q.readable {
            if readable.is_empty() {
                return Ok(Vec::new());
            }
            sql.push_str(" AND namespace IN (");
            for (i, ns) in readable.iter().enumerate() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
                args.push(Arg::Text(ns.clone()));
            }
            sql.push(')');
        }
        let eq = [
            ("namespace", &q.namespace),
            ("name", &q.name),
            ("version", &q.version),
            ("type", &q.kind),
            ("status", &q.status),
            ("vendor", &q.vendor),
            ("os", &q.os),
            ("architecture", &q.architecture),
            ("disk_format", &q.disk_format),
            ("digest", &q.digest),
        ];
        for (col, v) in eq {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                args.push(Arg::Text(v.clone()));
            }
        }
        if let Some(p) = q.name_prefix.as_deref().filter(|p| !p.is_empty()) {
            // A range on the name index: names are ASCII, so every name with the prefix sorts
            // below the prefix followed by DEL.
            sql.push_str(" AND name >= ? AND name < ?");
            args.push(Arg::Text(p.to_string()));
            args.push(Arg::Text(format!("{p}\u{7f}")));
        }
        if let Some(s) = q.name_contains.as_deref().filter(|s| !s.is_empty()) {
            sql.push_str(" AND name LIKE ? ESCAPE '!'");
            args.push(Arg::Text(format!("%{}%", like_escape(s))));
        }
        if let Some(vim) = &q.vim {
            sql.push_str(" AND EXISTS (SELECT 1 FROM vim_images v WHERE v.entry_id = e.id AND v.vim_id = ?)");
            args.push(Arg::Text(vim.clone()));
        }
        for (k, v) in &q.labels {
            match v {
                Some(v) => {
                    sql.push_str(
                        " AND EXISTS (SELECT 1 FROM catalog_labels l WHERE l.entry_id = e.id AND l.label = ? AND l.value = ?)",
                    );
                    args.push(Arg::Text(k.clone()));
                    args.push(Arg::Text(v.clone()));
                }
                None => {
                    sql.push_str(
                        " AND EXISTS (SELECT 1 FROM catalog_labels l WHERE l.entry_id = e.id AND l.label = ?)",
                    );
                    args.push(Arg::Text(k.clone()));
                }
            }
        }
        let ranges = [
            ("size >= ?", q.min_size.map(|v| v.min(i64::MAX as u64) as i64)),
            ("size <= ?", q.max_size.map(|v| v.min(i64::MAX as u64) as i64)),
            ("created_at >= ?", q.created_after),
            ("created_at <= ?", q.created_before),
        ];
        for (cond, v) in ranges {
            if let Some(v) = v {
                sql.push_str(" AND ");
                sql.push_str(cond);
                args.push(Arg::Int(v));
            }
        }
        let (gt, dir) = if q.descending { ("<", "DESC") } else { (">", "ASC") };
        // Row values make the cursor a range on the sort index (SQLite, PostgreSQL); MariaDB
        // gets the expanded form.
        let rows = self.dialect != super::Dialect::MySql;
        match &q.after {
            None => {}
            Some(Cursor::Name(name, version, id)) => {
                if rows {
                    sql.push_str(&format!(" AND (name, version, id) {gt} (?, ?, ?)"));
                    for v in [name, version, id] {
                        args.push(Arg::Text(v.clone()));
                    }
                } else {
                    sql.push_str(&format!(
                        " AND (name {gt} ? OR (name = ? AND (version {gt} ? OR (version = ? AND id {gt} ?))))"
                    ));
                    for v in [name, name, version, version, id] {
                        args.push(Arg::Text(v.clone()));
                    }
                }
            }
            Some(Cursor::Created(at, id)) => {
                if rows {
                    sql.push_str(&format!(" AND (created_at, id) {gt} (?, ?)"));
                    args.push(Arg::Int(*at));
                } else {
                    sql.push_str(&format!(" AND (created_at {gt} ? OR (created_at = ? AND id {gt} ?))"));
                    args.push(Arg::Int(*at));
                    args.push(Arg::Int(*at));
                }
                args.push(Arg::Text(id.clone()));
            }
            Some(Cursor::Size(size, id)) => {
                let size = (*size).min(i64::MAX as u64) as i64;
                if rows {
                    sql.push_str(&format!(" AND (size, id) {gt} (?, ?)"));
                    args.push(Arg::Int(size));
                } else {
                    sql.push_str(&format!(" AND (size {gt} ? OR (size = ? AND id {gt} ?))"));
                    args.push(Arg::Int(size));
                    args.push(Arg::Int(size));
                }
                args.push(Arg::Text(id.clone()));
            }
        }
        let order = match q.sort {
            SortKey::Name => format!("name {dir}, version {dir}, id {dir}"),
            SortKey::Created => format!("created_at {dir}, id {dir}"),
            SortKey::Size => format!("size {dir}, id {dir}"),
        };
        sql.push_str(&format!(" ORDER BY {order} LIMIT {}", q.limit.clamp(1, 10_000)));
        let sql = self.q(&sql);
        let mut query = sqlx::query(&sql);
        for a in args {
            query = match a {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(&self.read).await?;
        rows.iter().map(entry).collect()
    }

    async fn catalog_save(&self, e: &EntryRecord, seen: i64) -> Result<bool, StoreError> {
        self.retrying(|| {
            Box::pin(async move {
                let mut tx = self.begin().await?;
                let done = sqlx::query(&self.q(
                    "UPDATE catalog_entries SET status = ?, description = ?, labels = ?, details = ?, os = ?, \
                     architecture = ?, disk_format = ?, vendor = ?, updated_at = ? WHERE id = ? AND updated_at = ?",
                ))
                .bind(e.status.as_str())
                .bind(e.description.as_deref())
                .bind(json_text(&e.labels)?)
                .bind(json_text(&e.details)?)
                .bind(e.os.as_deref())
                .bind(e.architecture.as_deref())
                .bind(e.disk_format.as_deref())
                .bind(e.vendor.as_deref())
                .bind(e.updated_at)
                .bind(e.id.as_str())
                .bind(seen)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if done {
                    self.replace_labels(&mut tx, e).await?;
                }
                tx.commit().await?;
                Ok(done)
            })
        })
        .await
    }

    async fn catalog_delete(&self, id: &str) -> Result<bool, StoreError> {
        self.retrying(|| {
            Box::pin(async move {
                let mut tx = self.begin().await?;
                let gone = sqlx::query(&self.q("DELETE FROM catalog_entries WHERE id = ?"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
                sqlx::query(&self.q("DELETE FROM catalog_labels WHERE entry_id = ?"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&self.q("DELETE FROM catalog_links WHERE parent = ? OR child = ?"))
                    .bind(id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&self.q("UPDATE catalog_entries SET predecessor = NULL WHERE predecessor = ?"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(gone)
            })
        })
        .await
    }

    async fn catalog_delete_where(
        &self,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = String::from("SELECT id FROM catalog_entries WHERE repository = ?");
        if tag.is_some() {
            sql.push_str(" AND tag = ?");
        }
        if digest.is_some() {
            sql.push_str(" AND digest = ?");
        }
        let sql = self.q(&sql);
        let mut q = sqlx::query(&sql).bind(repository);
        if let Some(t) = tag {
            q = q.bind(t);
        }
        if let Some(d) = digest {
            q = q.bind(d);
        }
        let ids: Vec<String> = q
            .fetch_all(&self.write)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        for id in &ids {
            self.catalog_delete(id).await?;
        }
        Ok(ids)
    }

    async fn catalog_link(&self, link: &LinkRecord) -> Result<(), StoreError> {
        let ins = self
            .dialect
            .insert_ignore("catalog_links (parent, child, kind, path) VALUES (?, ?, ?, ?)");
        sqlx::query(&self.q(&ins))
            .bind(link.parent.as_str())
            .bind(link.child.as_str())
            .bind(link.kind.as_str())
            .bind(link.path.as_deref())
            .execute(&self.write)
            .await?;
        self.synced(Ok(())).await
    }

    async fn catalog_links(&self, id: &str) -> Result<Vec<LinkRecord>, StoreError> {
        let rows = sqlx::query(&self.q(
            "SELECT parent, child, kind, path FROM catalog_links WHERE parent = ? OR child = ? ORDER BY parent, child",
        ))
        .bind(id)
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LinkRecord {
                    parent: r.try_get(0)?,
                    child: r.try_get(1)?,
                    kind: r.try_get(2)?,
                    path: long_text(r, 3)?,
                })
            })
            .collect()
    }

    async fn catalog_versions(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        let rows = sqlx::query(&self.q(
            "SELECT id, version, status, created_at FROM catalog_entries WHERE namespace = ? AND name = ? \
             ORDER BY created_at, id LIMIT 1000",
        ))
        .bind(namespace)
        .bind(name)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect()
    }
}
