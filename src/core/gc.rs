//! Garbage collection: delete what no tag reaches any more, while pushes go on.
//!
//! # What is kept
//!
//! Per repository, a manifest is *reachable* when a tag points at it, when it is younger than
//! the untagged retention window (`gc.untagged_retention_secs`, counted from its latest push
//! to the repository), when a reachable index lists it as a child, or when its subject is
//! reachable (a referrer: signature, SBOM, ... of a reachable manifest in the same
//! repository). Everything else the repository holds is garbage. A blob link stays while a
//! manifest the repository still holds references the blob, or while the link is younger than
//! the grace period (`gc.blob_grace_secs`): a push uploads its blobs before the manifest that
//! references them, so a blob is never collected inside the grace period of its last upload.
//!
//! # The run
//!
//! 1. Leftovers of an interrupted run (blob bytes still in the store's trash) are settled as
//!    in step 5.
//! 2. Mark: per repository, a snapshot of its manifests, tags, references and blob links;
//!    [`plan_repository`] computes the reachable set and the candidates.
//! 3. Sweep the repository: its unreachable manifests, index parents before their children,
//!    then the blob links no reachable manifest references and older than the grace period.
//! 4. Manifests no repository holds any more are deleted with their references.
//! 5. Blobs no repository links any more and recorded before the grace period: the row, then
//!    the bytes (below).
//!
//! A dry run does steps 2 and the predictions of 3–5 and changes nothing.
//!
//! # Why pushes can go on
//!
//! The mark phase only proposes. Every removal of step 3 runs in its own transaction that
//! first locks the row it removes, then re-checks, reading the latest committed state, that
//! the row is still garbage ([`GcStore::gc_remove_manifest`] walks up the subjects and
//! index parents, locking each, to the tags; [`GcStore::gc_unlink_blob`] looks for a
//! manifest of the repository that references the blob). A push locks the rows it relies on:
//! `manifest_put` locks the blob links and child manifests it checks (`FOR SHARE`) and upserts
//! its own repo_manifests row; `link_blob` upserts the blob row and refreshes the link. So for
//! any row, either the push committed before the collector's lock (the re-check sees it and
//! keeps the row) or the push waits for the collector's commit (and then finds the row gone:
//! a missing blob or child is reported to the client, who uploads it again; its own manifest
//! row is simply inserted anew). Steps 4 and 5 are single conditional deletes ("no
//! repository holds it"), and the foreign keys from repo_manifests and repo_blobs make a
//! push that holds the row again at that very moment either visible to the delete or fail it.
//! On SQLite every removal takes the write lock first (`BEGIN IMMEDIATE`), which serialises
//! it with every push, in this process or another.
//!
//! The one thing a push in flight can still lose: a referrer whose subject was not in the
//! repository, removed while the subject is being pushed with a tag. It referred to nothing
//! when it was judged, and no image is broken by its loss.
//!
//! # Bytes versus a concurrent upload of the same digest
//!
//! The core commits an upload ([`crate::core::Registry`], `commit_blob`) in this order:
//! U1 place the bytes (when the blob is already stored, keep the upload data instead);
//! U2 record the metadata (the blob row is created if missing); U3 check the bytes are at
//! their final location and place them (from the kept upload data) if not; U4 drop the upload
//! data. The collector, for one blob: G1 delete the blob row (conditional, committed);
//! G2 move the bytes to the trash ([`BlobStore::trash`]); G3 read whether the blob row exists
//! again; G4 if it does, restore the trashed bytes unless the blob is stored again already,
//! else purge them.
//!
//! Claim: once both are done, if the blob row exists the bytes are at their final location.
//! The row existing after G1 means U2 committed after G1. Either U3 ran after G2: then U3
//! found the final location empty or holding bytes placed after G2, and left complete bytes
//! there (the upload data is still there if U1 kept it, and if U1 did not keep it U1 placed
//! the bytes after G2, since before G2 the blob was still stored); G4 never removes bytes at
//! the final location. Or U3 ran before G2: then U2 committed before G2, so before G3, so G3
//! sees the row and G4 restores the trashed bytes. Purge only ever deletes the trashed copy.
//! A crash between G2 and G4 leaves the copy in the trash, where step 1 of the next run
//! settles it by the same rule (which is just another G3/G4, so the argument holds). A crash
//! between G1 and G2 leaves bytes without a row: never served, re-used by a later upload of
//! the same digest, otherwise not reclaimed.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use super::names::Digest;
use crate::error::Result;
use crate::storage::meta::{GcItem, GcOutcome, GcRepository, GcSnapshot};
use crate::storage::{now_ms, BlobStore, GcStore};

/// Rows fetched per page when listing unreferenced manifests and blobs.
const PAGE: u32 = 500;

/// What to collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcOptions {
    /// Report only; change nothing.
    pub dry_run: bool,
    /// Untagged manifests younger than this are kept.
    pub untagged_retention_secs: u64,
    /// Blobs linked more recently than this are kept even when unreferenced.
    pub blob_grace_secs: u64,
}

impl GcOptions {
    pub fn from_config(gc: &crate::config::GcConfig) -> Self {
        Self {
            dry_run: false,
            untagged_retention_secs: gc.untagged_retention_secs,
            blob_grace_secs: gc.blob_grace_secs,
        }
    }
}

/// One deleted (or, in a dry run, deletable) thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcEntry {
    /// `manifest-link` (a manifest taken out of a repository), `blob-link` (a blob a
    /// repository may no longer read), `manifest` (a manifest no repository holds, deleted)
    /// or `blob` (a blob no repository links, deleted with its bytes).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// What a collection did, or in a dry run would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Repositories looked at.
    pub repositories: usize,
    /// Manifests taken out of repositories.
    pub manifest_links: usize,
    /// Blob links removed from repositories.
    pub blob_links: usize,
    /// Manifests no repository holds any more, deleted.
    pub manifests: usize,
    pub manifest_bytes: u64,
    /// Blobs no repository links any more, deleted with their bytes.
    pub blobs: usize,
    pub blob_bytes: u64,
    /// Candidates a re-check kept, because a push made them live again.
    pub kept: usize,
    /// Candidates left for the next run because a concurrent transaction got in the way.
    pub conflicts: usize,
    /// Trashed blob bytes put back because a push recorded the blob again meanwhile.
    pub restored: usize,
    /// Trashed blob bytes from an interrupted run settled at the start.
    pub recovered: usize,
    /// The blob store cannot trash bytes: blobs were left alone.
    pub blobs_skipped: bool,
    /// The run was asked to stop before it finished.
    pub stopped: bool,
    pub deleted: Vec<GcEntry>,
}

impl GcReport {
    /// Manifest and blob bytes freed.
    pub fn bytes(&self) -> u64 {
        self.manifest_bytes + self.blob_bytes
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        let mut s = format!(
            "{verb} {} manifests ({} bytes) and {} blobs ({} bytes), {} bytes in all; \
             {} manifest and {} blob links removed from {} repositories",
            self.manifests,
            self.manifest_bytes,
            self.blobs,
            self.blob_bytes,
            self.bytes(),
            self.manifest_links,
            self.blob_links,
            self.repositories,
        );
        if self.kept + self.conflicts > 0 {
            s.push_str(&format!(
                "; {} kept by concurrent pushes, {} left for the next run",
                self.kept, self.conflicts
            ));
        }
        if self.blobs_skipped {
            s.push_str("; blobs not collected: the blob store cannot trash bytes");
        }
        if self.stopped {
            s.push_str("; stopped before the end");
        }
        s
    }
}

/// What the sweep of one repository is to try, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoPlan {
    /// Unreachable manifests (digest, size), every index before its children.
    pub manifests: Vec<(String, u64)>,
    /// Blob links no reachable manifest references, older than the grace period.
    pub blobs: Vec<String>,
}

/// Mark one repository: the reachable set from `snap`, and what is garbage.
/// `young_since`: manifests that reached the repository at or after it are kept (ms);
/// `linked_before`: only blob links older than it may go (ms).
pub fn plan_repository(snap: &GcSnapshot, young_since: i64, linked_before: i64) -> RepoPlan {
    let held: HashMap<&str, u64> = snap.manifests.iter().map(|m| (m.digest.as_str(), m.size)).collect();
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in snap.refs.iter().filter(|r| r.manifest) {
        if held.contains_key(r.child.as_str()) {
            edges.entry(r.parent.as_str()).or_default().push(r.child.as_str());
        }
    }
    for m in &snap.manifests {
        if let Some(subject) = m.subject.as_deref().filter(|s| held.contains_key(s)) {
            edges.entry(subject).or_default().push(m.digest.as_str());
        }
    }
    let mut reachable: HashSet<&str> = HashSet::new();
    let mut todo: Vec<&str> = snap
        .manifests
        .iter()
        .filter(|m| m.tagged || m.created_at >= young_since)
        .map(|m| m.digest.as_str())
        .collect();
    while let Some(d) = todo.pop() {
        if reachable.insert(d) {
            todo.extend(edges.get(d).into_iter().flatten().copied());
        }
    }

    // Garbage manifests, each index before the children it lists (Kahn's algorithm; the
    // digests make cycles impossible, but a leftover would simply go last).
    let garbage: BTreeSet<&str> = held.keys().copied().filter(|d| !reachable.contains(d)).collect();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut parents_left: HashMap<&str, usize> = garbage.iter().map(|d| (*d, 0)).collect();
    for r in snap.refs.iter().filter(|r| r.manifest) {
        let (p, c) = (r.parent.as_str(), r.child.as_str());
        if p != c && garbage.contains(p) && garbage.contains(c) {
            children.entry(p).or_default().push(c);
            *parents_left.entry(c).or_default() += 1;
        }
    }
    let mut ready: BTreeSet<&str> = garbage.iter().copied().filter(|d| parents_left[d] == 0).collect();
    let mut order: Vec<&str> = Vec::with_capacity(garbage.len());
    while let Some(d) = ready.pop_first() {
        order.push(d);
        for c in children.get(d).into_iter().flatten() {
            if let Some(n) = parents_left.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(c);
                }
            }
        }
    }
    let placed: HashSet<&str> = order.iter().copied().collect();
    let rest: Vec<&str> = garbage.iter().copied().filter(|d| !placed.contains(d)).collect();
    order.extend(rest);

    let referenced: HashSet<&str> = snap
        .refs
        .iter()
        .filter(|r| reachable.contains(r.parent.as_str()))
        .map(|r| r.child.as_str())
        .collect();
    let mut blobs: Vec<String> = snap
        .blobs
        .iter()
        .filter(|b| b.created_at < linked_before && !referenced.contains(b.digest.as_str()))
        .map(|b| b.digest.clone())
        .collect();
    blobs.sort();
    RepoPlan {
        manifests: order.into_iter().map(|d| (d.to_string(), held[d])).collect(),
        blobs,
    }
}

/// Whether the caller asked the run to stop (server shutdown).
fn stopping(stop: Option<&tokio::sync::watch::Receiver<bool>>) -> bool {
    stop.is_some_and(|s| *s.borrow())
}

/// Collect garbage once. `stop`, when it turns true, ends the run between two removals.
pub async fn collect(
    meta: &dyn GcStore,
    blobs: &dyn BlobStore,
    opts: &GcOptions,
    stop: Option<&tokio::sync::watch::Receiver<bool>>,
) -> Result<GcReport> {
    let started = now_ms();
    let young_since = started.saturating_sub(secs_to_ms(opts.untagged_retention_secs));
    let linked_before = started.saturating_sub(secs_to_ms(opts.blob_grace_secs));
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };

    // 1. Settle what an interrupted run left in the trash; learn whether bytes can be trashed.
    match blobs.trashed().await {
        Ok(left) if !opts.dry_run => {
            for (digest, token) in left {
                settle(meta, blobs, &digest, &token, &mut report).await?;
                report.recovered += 1;
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "garbage collection leaves blobs alone: the blob store cannot trash them");
            report.blobs_skipped = true;
        }
    }

    // 2–3. Mark and sweep, repository by repository.
    let mut removed_manifests: HashMap<String, (u64, HashSet<i64>)> = HashMap::new();
    let mut removed_blobs: HashMap<String, HashSet<i64>> = HashMap::new();
    for repo in meta.gc_repositories().await? {
        if stopping(stop) {
            report.stopped = true;
            return Ok(report);
        }
        report.repositories += 1;
        let snap = meta.gc_snapshot(repo.id).await?;
        let plan = plan_repository(&snap, young_since, linked_before);
        for (digest, size) in plan.manifests {
            let outcome = if opts.dry_run {
                GcOutcome::Removed
            } else {
                meta.gc_remove_manifest(&repo, &digest, young_since).await?
            };
            if tally(&mut report, outcome) {
                report.manifest_links += 1;
                report
                    .deleted
                    .push(entry("manifest-link", Some(&repo), &digest, Some(size)));
                removed_manifests
                    .entry(digest)
                    .or_insert_with(|| (size, HashSet::new()))
                    .1
                    .insert(repo.id);
            }
            if stopping(stop) {
                report.stopped = true;
                return Ok(report);
            }
        }
        for digest in plan.blobs {
            let outcome = if opts.dry_run {
                GcOutcome::Removed
            } else {
                meta.gc_unlink_blob(&repo, &digest, linked_before).await?
            };
            if tally(&mut report, outcome) {
                report.blob_links += 1;
                report.deleted.push(entry("blob-link", Some(&repo), &digest, None));
                removed_blobs.entry(digest).or_default().insert(repo.id);
            }
            if stopping(stop) {
                report.stopped = true;
                return Ok(report);
            }
        }
    }

    // 4. Manifests no repository holds.
    let mut orphans = list_all(|after| async move { meta.gc_orphan_manifests(&after, PAGE).await }).await?;
    if opts.dry_run {
        for (digest, (size, from)) in &removed_manifests {
            let holders = meta.gc_manifest_holders(digest).await?;
            if holders.iter().all(|h| from.contains(h)) {
                orphans.push(GcItem {
                    digest: digest.clone(),
                    size: *size,
                });
            }
        }
        orphans.sort_by(|a, b| a.digest.cmp(&b.digest));
    }
    for item in orphans {
        if stopping(stop) {
            report.stopped = true;
            return Ok(report);
        }
        let outcome = if opts.dry_run {
            GcOutcome::Removed
        } else {
            meta.gc_delete_manifest(&item.digest).await?
        };
        if tally(&mut report, outcome) {
            report.manifests += 1;
            report.manifest_bytes += item.size;
            report
                .deleted
                .push(entry("manifest", None, &item.digest, Some(item.size)));
        }
    }

    // 5. Blobs no repository links, with their bytes.
    if !report.blobs_skipped {
        let mut orphans =
            list_all(|after| async move { meta.gc_orphan_blobs(linked_before, &after, PAGE).await }).await?;
        if opts.dry_run {
            for (digest, from) in &removed_blobs {
                let holders = meta.gc_blob_holders(digest).await?;
                if !holders.iter().all(|h| from.contains(h)) {
                    continue;
                }
                if let Some(row) = meta.gc_blob(digest).await?.filter(|r| r.created_at < linked_before) {
                    orphans.push(GcItem {
                        digest: digest.clone(),
                        size: row.size,
                    });
                }
            }
            orphans.sort_by(|a, b| a.digest.cmp(&b.digest));
        }
        for item in orphans {
            if stopping(stop) {
                report.stopped = true;
                return Ok(report);
            }
            if opts.dry_run {
                report.blobs += 1;
                report.blob_bytes += item.size;
                report.deleted.push(entry("blob", None, &item.digest, Some(item.size)));
            } else {
                delete_blob(meta, blobs, &item, linked_before, &mut report).await?;
            }
        }
    }

    if !opts.dry_run {
        meta.gc_record_run(report.bytes()).await?;
    }
    Ok(report)
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

fn entry(kind: &'static str, repo: Option<&GcRepository>, digest: &str, size: Option<u64>) -> GcEntry {
    GcEntry {
        kind,
        repository: repo.map(|r| r.name.clone()),
        digest: digest.to_string(),
        size,
    }
}

/// Count a removal's outcome; true when it removed.
fn tally(report: &mut GcReport, outcome: GcOutcome) -> bool {
    match outcome {
        GcOutcome::Removed => return true,
        GcOutcome::Kept => report.kept += 1,
        GcOutcome::Conflict => report.conflicts += 1,
        GcOutcome::Gone => {}
    }
    false
}

/// Every page of a digest-ordered listing.
async fn list_all<F, Fut>(mut page: F) -> Result<Vec<GcItem>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Vec<GcItem>, crate::storage::StoreError>>,
{
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let items = page(after.clone()).await?;
        let Some(last) = items.last() else { break };
        after = last.digest.clone();
        let full = items.len() >= PAGE as usize;
        all.extend(items);
        if !full {
            break;
        }
    }
    Ok(all)
}

/// G1–G4 of the module documentation for one blob.
async fn delete_blob(
    meta: &dyn GcStore,
    blobs: &dyn BlobStore,
    item: &GcItem,
    linked_before: i64,
    report: &mut GcReport,
) -> Result<()> {
    let outcome = meta.gc_delete_blob(&item.digest, linked_before).await?;
    if !tally(report, outcome) {
        return Ok(());
    }
    let digest = match Digest::parse(&item.digest) {
        Ok(d) => d,
        Err(_) => {
            tracing::warn!(digest = %item.digest, "blob row with an invalid digest deleted; no bytes to remove");
            return Ok(());
        }
    };
    let restored_before = report.restored;
    if let Some(token) = blobs.trash(&digest).await? {
        settle(meta, blobs, &digest, &token, report).await?;
    }
    if report.restored == restored_before {
        report.blobs += 1;
        report.blob_bytes += item.size;
        report.deleted.push(entry("blob", None, &item.digest, Some(item.size)));
    }
    Ok(())
}

/// G3–G4: restore trashed bytes whose blob was recorded again meanwhile, purge the others.
async fn settle(
    meta: &dyn GcStore,
    blobs: &dyn BlobStore,
    digest: &Digest,
    token: &str,
    report: &mut GcReport,
) -> Result<()> {
    if meta.gc_blob(digest.as_str()).await?.is_some() {
        tracing::debug!(%digest, "blob pushed again during garbage collection: bytes restored");
        blobs.restore(digest, token).await?;
        report.restored += 1;
    } else {
        blobs.purge(token).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::meta::{GcBlobLink, GcManifest, GcRef};

    fn m(digest: &str, created_at: i64, tagged: bool, subject: Option<&str>) -> GcManifest {
        GcManifest {
            digest: digest.into(),
            size: 10,
            created_at,
            tagged,
            subject: subject.map(Into::into),
        }
    }

    fn r(parent: &str, child: &str, manifest: bool) -> GcRef {
        GcRef {
            parent: parent.into(),
            child: child.into(),
            manifest,
        }
    }

    fn b(digest: &str, created_at: i64) -> GcBlobLink {
        GcBlobLink {
            digest: digest.into(),
            created_at,
        }
    }

    fn digests(plan: &RepoPlan) -> Vec<&str> {
        plan.manifests.iter().map(|(d, _)| d.as_str()).collect()
    }

    #[test]
    fn tags_retention_children_and_referrers() {
        let snap = GcSnapshot {
            manifests: vec![
                m("tagged", 0, true, None),
                m("young", 100, false, None),
                m("old", 0, false, None),
                m("index", 0, true, None),
                m("child", 0, false, None),
                m("sig", 0, false, Some("tagged")),
                m("sig-of-sig", 0, false, Some("sig")),
                m("sig-of-old", 0, false, Some("old")),
                m("sig-of-absent", 0, false, Some("absent")),
                m("sig-of-young", 0, false, Some("young")),
            ],
            refs: vec![
                r("index", "child", true),
                r("tagged", "l1", false),
                r("old", "l2", false),
            ],
            blobs: vec![b("l1", 0), b("l2", 0), b("l3", 0), b("fresh", 50)],
        };
        let plan = plan_repository(&snap, 100, 50);
        let mut got = digests(&plan);
        got.sort();
        assert_eq!(got, ["old", "sig-of-absent", "sig-of-old"]);
        assert_eq!(plan.blobs, ["l2", "l3"]);
    }

    #[test]
    fn indexes_go_before_their_children() {
        let snap = GcSnapshot {
            manifests: vec![
                m("a-child", 0, false, None),
                m("b-index", 0, false, None),
                m("c-top", 0, false, None),
            ],
            refs: vec![
                r("c-top", "b-index", true),
                r("b-index", "a-child", true),
                r("c-top", "a-child", true),
                r("b-index", "layer", false),
            ],
            blobs: vec![b("layer", 0)],
        };
        let plan = plan_repository(&snap, 1, 1);
        assert_eq!(digests(&plan), ["c-top", "b-index", "a-child"]);
        assert_eq!(plan.blobs, ["layer"]);
    }

    #[test]
    fn children_of_a_reachable_index_and_their_blobs_stay() {
        let snap = GcSnapshot {
            manifests: vec![m("index", 0, true, None), m("child", 0, false, None)],
            refs: vec![r("index", "child", true), r("child", "layer", false)],
            blobs: vec![b("layer", 0), b("other", 0)],
        };
        let plan = plan_repository(&snap, 1, 1);
        assert!(plan.manifests.is_empty());
        assert_eq!(plan.blobs, ["other"]);
    }

    mod stores {
        use std::sync::Arc;

        use bytes::Bytes;

        use super::super::*;
        use crate::config::RegistryConfig;
        use crate::core::names::{Reference, RepoName};
        use crate::core::Registry;
        use crate::storage::fs::FsBlobStore;
        use crate::storage::sql::SqlStore;
        use crate::storage::RegistryStore;

        const NOW: GcOptions = GcOptions {
            dry_run: false,
            untagged_retention_secs: 0,
            blob_grace_secs: 0,
        };

        async fn registry(dir: &std::path::Path) -> (Registry, Arc<SqlStore>, Arc<FsBlobStore>) {
            let url = format!("sqlite://{}", dir.join("metadata.db").display());
            let meta = Arc::new(SqlStore::connect(&url, false).await.expect("database"));
            meta.migrate().await.expect("migrations");
            let blobs = Arc::new(FsBlobStore::open(dir, false).expect("blob store"));
            let reg = Registry::new(blobs.clone(), meta.clone(), RegistryConfig::default());
            (reg, meta, blobs)
        }

        async fn put_blob(reg: &Registry, repo: &RepoName, data: &[u8]) -> Digest {
            let d = Digest::sha256(data);
            let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
            reg.put_blob(repo, &d, body).await.expect("blob push");
            d
        }

        /// Push an image (config + layers) under `tag`; returns the manifest's digest.
        async fn push(reg: &Registry, repo: &RepoName, tag: &str, layers: &[&[u8]]) -> Digest {
            let config = put_blob(reg, repo, format!("config of {tag} {layers:?}").as_bytes()).await;
            let mut descs = Vec::new();
            for l in layers {
                let d = put_blob(reg, repo, l).await;
                descs.push(serde_json::json!({"mediaType": "l", "digest": d.as_str(), "size": l.len()}));
            }
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": crate::core::manifest::OCI_MANIFEST,
                "config": {"mediaType": "c", "digest": config.as_str(), "size": 1},
                "layers": descs,
            });
            let tag = Reference::parse(tag).expect("tag");
            let pushed = reg
                .put_manifest(repo, &tag, "", body.to_string().into_bytes(), &[])
                .await
                .expect("manifest push");
            pushed.digest
        }

        #[tokio::test]
        async fn collects_what_a_moved_tag_left_and_nothing_else() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (reg, meta, blobs) = registry(dir.path()).await;
            let repo = RepoName::parse("gc/unit").expect("name");
            let old = push(&reg, &repo, "v1", &[b"old layer", b"shared"]).await;
            let new = push(&reg, &repo, "v1", &[b"new layer", b"shared"]).await;

            let dry = collect(&*meta, &*blobs, &GcOptions { dry_run: true, ..NOW }, None)
                .await
                .expect("dry run");
            let real = collect(&*meta, &*blobs, &NOW, None).await.expect("run");
            assert_eq!((dry.manifests, dry.blobs, dry.blob_bytes), (1, 2, real.blob_bytes));
            assert_eq!(dry.deleted, real.deleted);
            assert!(reg.get_manifest(&repo, &Reference::Digest(old), false).await.is_err());
            assert!(reg.get_manifest(&repo, &Reference::Digest(new), false).await.is_ok());
            assert!(blobs.stat(&Digest::sha256(b"old layer")).await.expect("stat").is_none());
            assert!(blobs.stat(&Digest::sha256(b"shared")).await.expect("stat").is_some());
            let again = collect(&*meta, &*blobs, &NOW, None).await.expect("run");
            assert_eq!((again.manifests, again.blobs, again.blob_links), (0, 0, 0));
        }

        #[tokio::test]
        async fn trashed_bytes_come_back_when_the_blob_is_pushed_again() {
            let dir = tempfile::tempdir().expect("tempdir");
            let (reg, meta, blobs) = registry(dir.path()).await;
            let repo = RepoName::parse("gc/bytes").expect("name");
            let d = put_blob(&reg, &repo, b"contested").await;
            assert!(meta.unlink_blob(repo.as_str(), d.as_str()).await.expect("unlink"));

            // G1, G2; then a push records the blob again (U2) before G3.
            let before = now_ms() + 1000;
            assert_eq!(
                meta.gc_delete_blob(d.as_str(), before).await.expect("G1"),
                GcOutcome::Removed
            );
            let token = blobs.trash(&d).await.expect("G2").expect("bytes were stored");
            assert!(blobs.stat(&d).await.expect("stat").is_none());
            meta.link_blob(repo.as_str(), d.as_str(), 9).await.expect("U2");
            let mut report = GcReport::default();
            settle(&*meta, &*blobs, &d, &token, &mut report).await.expect("G3, G4");
            assert_eq!(report.restored, 1);
            assert_eq!(blobs.stat(&d).await.expect("stat"), Some(9));
            assert!(blobs.trashed().await.expect("trash").is_empty());

            // Left in the trash by an interrupted run, blob row gone: the next run purges it.
            assert!(meta.unlink_blob(repo.as_str(), d.as_str()).await.expect("unlink"));
            assert_eq!(
                meta.gc_delete_blob(d.as_str(), before).await.expect("G1"),
                GcOutcome::Removed
            );
            blobs.trash(&d).await.expect("G2").expect("bytes were stored");
            let report = collect(&*meta, &*blobs, &NOW, None).await.expect("run");
            assert_eq!((report.recovered, report.restored), (1, 0));
            assert!(blobs.trashed().await.expect("trash").is_empty());
            assert!(blobs.stat(&d).await.expect("stat").is_none());
        }
    }

    #[test]
    fn report_summary_counts_bytes() {
        let report = GcReport {
            dry_run: true,
            manifests: 1,
            manifest_bytes: 5,
            blobs: 2,
            blob_bytes: 7,
            ..Default::default()
        };
        assert_eq!(report.bytes(), 12);
        assert!(report
            .summary()
            .starts_with("would delete 1 manifests (5 bytes) and 2 blobs (7 bytes)"));
    }
}
