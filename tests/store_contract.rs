//! One contract for every storage backend, as CNCF Distribution has for its storage drivers:
//! the same test functions run against every blob store (the filesystem in a temporary
//! directory, S3 against moto) and every metadata database (a SQLite file, PostgreSQL,
//! MariaDB, each in a fresh database), and the rules the core builds on them (commit only
//! under the digest the bytes hashed to; garbage collection's trash and restore) run on every
//! pairing of the two.
//!
//! Nothing is skipped: PostgreSQL (127.0.0.1:5432, user postgres, trust), MariaDB
//! (127.0.0.1:3306, root, no password) and moto (`python3 -m moto.server`, from
//! scripts/install-test-deps.sh) must be there, or the tests fail. The metadata stores are
//! used through [`InstrumentedMeta`], as the server uses them.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use image_manager::config::RegistryConfig;
use image_manager::core::gc::{collect, GcOptions};
use image_manager::core::names::{Digest, Reference, RepoName};
use image_manager::core::Registry;
use image_manager::error::Error;
use image_manager::storage::fs::FsBlobStore;
use image_manager::storage::instrumented::InstrumentedMeta;
use image_manager::storage::meta::{
    AuditFilter, AuditRecord, GcOutcome, NewManifest, PutOutcome, RobotRecord, UploadAdvance, UserRecord,
};
use image_manager::storage::s3::S3BlobStore;
use image_manager::storage::sql::SqlStore;
use image_manager::storage::{now_ms, BlobStore, ByteRange, ByteStream, MetadataStore};

#[path = "support/moto.rs"]
mod moto;
use moto::Moto;

// ----- backends -------------------------------------------------------------------------------

#[path = "support/databases.rs"]
mod databases;
use databases::{Backend, TestDb};

const DATABASES: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::MariaDb];

/// A fresh database of kind `db` behind a migrated store, used as the server uses it.
async fn fresh_store(db: Backend) -> (TestDb, Arc<dyn MetadataStore>) {
    let t = TestDb::create(db, "im_contract").await;
    let store = SqlStore::connect(&t.url, false).await.expect("connecting the store");
    store.migrate().await.expect("migrations");
    (t, InstrumentedMeta::wrap(Arc::new(store)))
}

/// A store on a new bucket of its own.
async fn s3_store(moto: &Moto) -> S3BlobStore {
    let bucket = format!("contract-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    moto.bucket(&bucket).await
}

/// Fresh blob stores of each kind: a new temporary directory, a new bucket on one moto.
struct BlobBackends {
    moto: Moto,
    dirs: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl BlobBackends {
    async fn start() -> BlobBackends {
        BlobBackends {
            moto: Moto::start().await,
            dirs: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// One new, empty store of each kind, with its name.
    async fn fresh(&self) -> Vec<(&'static str, Arc<dyn BlobStore>)> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let fs = FsBlobStore::open(dir.path(), false).expect("filesystem blob store");
        self.dirs.lock().expect("dirs").push(dir);
        vec![("fs", Arc::new(fs)), ("s3", Arc::new(s3_store(&self.moto).await))]
    }
}

/// Run `f` against a fresh blob store of every kind.
macro_rules! on_every_blob_store {
    ($f:ident) => {
        let b = BlobBackends::start().await;
        for (name, store) in b.fresh().await {
            $f(name, &*store).await;
        }
    };
}

// ----- helpers --------------------------------------------------------------------------------

/// Deterministic, incompressible test data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn read_all(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.expect("stream chunk"));
    }
    out
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Write `bytes` at `offset` in pieces of at most 64 KiB; returns the size finish reports.
async fn write_at(store: &dyn BlobStore, id: &str, offset: u64, bytes: &[u8]) -> u64 {
    let mut w = store.upload_writer(id, offset).await.expect("writer");
    for piece in bytes.chunks(64 * 1024) {
        w.write(Bytes::copy_from_slice(piece)).await.expect("write");
    }
    w.finish().await.expect("finish")
}

/// Store `bytes` as a committed blob; returns its digest.
async fn put(store: &dyn BlobStore, bytes: &[u8]) -> Digest {
    let d = Digest::sha256(bytes);
    let up = id();
    store.upload_create(&up).await.expect("upload_create");
    write_at(store, &up, 0, bytes).await;
    store.upload_commit(&up, &d).await.expect("upload_commit");
    store.upload_abort(&up).await.expect("upload_abort");
    d
}

fn body(bytes: &[u8]) -> futures::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>> {
    futures::stream::iter(vec![Ok(Bytes::copy_from_slice(bytes))])
}

fn manifest(
    content: &str,
    blobs: &[&Digest],
    manifests: &[&str],
    subject: Option<&str>,
    at: Option<&str>,
) -> NewManifest {
    NewManifest {
        digest: Digest::sha256(content.as_bytes()).to_string(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        content: content.as_bytes().to_vec(),
        artifact_type: at.map(str::to_string),
        subject: subject.map(str::to_string),
        annotations: at.map(|a| format!("{{\"kind\":\"{a}\"}}")),
        blobs: blobs.iter().map(|d| d.to_string()).collect(),
        manifests: manifests.iter().map(|d| d.to_string()).collect(),
    }
}

// ----- blob stores ----------------------------------------------------------------------------

async fn blob_put_stat_ranges_delete(name: &str, store: &dyn BlobStore) {
    let bytes = data(300_000, 1);
    let d = Digest::sha256(&bytes);
    assert_eq!(store.stat(&d).await.expect("stat"), None, "{name}");
    let up = id();
    store.upload_create(&up).await.expect("upload_create");
    assert_eq!(store.upload_size(&up).await.expect("upload_size"), Some(0), "{name}");
    assert_eq!(write_at(store, &up, 0, &bytes).await, bytes.len() as u64, "{name}");
    assert_eq!(
        store.upload_size(&up).await.expect("upload_size"),
        Some(bytes.len() as u64),
        "{name}"
    );
    assert_eq!(
        read_all(store.upload_read(&up, 1000).await.expect("upload_read")).await,
        bytes[..1000],
        "{name}"
    );
    store.upload_commit(&up, &d).await.expect("upload_commit");
    store.upload_abort(&up).await.expect("upload_abort");
    assert_eq!(store.stat(&d).await.expect("stat"), Some(bytes.len() as u64), "{name}");
    assert_eq!(read_all(store.get(&d, None).await.expect("get")).await, bytes, "{name}");
    for (start, end) in [(0, 0), (10, 99_999), (299_999, 299_999), (123_456, 299_999)] {
        let got = read_all(store.get(&d, Some(ByteRange { start, end })).await.expect("get range")).await;
        assert_eq!(got, bytes[start as usize..=end as usize], "{name}: range {start}-{end}");
    }
    store.delete(&d).await.expect("delete");
    assert_eq!(store.stat(&d).await.expect("stat"), None, "{name}: deleted");
    store.delete(&d).await.expect("deleting an absent blob is no error");

    // The empty blob is a blob like any other.
    let empty = put(store, b"").await;
    assert_eq!(store.stat(&empty).await.expect("stat"), Some(0), "{name}");
    assert!(
        read_all(store.get(&empty, None).await.expect("get")).await.is_empty(),
        "{name}"
    );
}

#[tokio::test]
async fn blob_stores_put_stat_read_ranges_and_delete() {
    on_every_blob_store!(blob_put_stat_ranges_delete);
}

async fn blob_upload_data_rules(name: &str, store: &dyn BlobStore) {
    // A writer at a smaller offset discards what was stored beyond it.
    let up = id();
    store.upload_create(&up).await.expect("upload_create");
    let first = data(100_000, 2);
    write_at(store, &up, 0, &first).await;
    let tail = data(5_000, 3);
    assert_eq!(write_at(store, &up, 40_000, &tail).await, 45_000, "{name}");
    let mut want = first[..40_000].to_vec();
    want.extend_from_slice(&tail);
    assert_eq!(
        read_all(store.upload_read(&up, 45_000).await.expect("upload_read")).await,
        want,
        "{name}"
    );
    // Ranges of upload data, across the two writes and to the very end; beyond the end fails.
    for (from, len) in [
        (0u64, 1u64),
        (39_999, 2),
        (40_000, 5_000),
        (44_999, 1),
        (12_345, 30_000),
    ] {
        let got = read_all(
            store
                .upload_read_range(&up, from, len)
                .await
                .expect("upload_read_range"),
        )
        .await;
        assert_eq!(
            got,
            want[from as usize..(from + len) as usize],
            "{name}: range {from}+{len}"
        );
    }
    let beyond = match store.upload_read_range(&up, 44_999, 2).await {
        Err(_) => true,
        Ok(s) => futures::StreamExt::collect::<Vec<_>>(s)
            .await
            .iter()
            .any(|c| c.is_err()),
    };
    assert!(beyond, "{name}: a range beyond the upload data fails");

    // Committing a digest that is stored already keeps the stored bytes and the upload data,
    // for the caller to drop.
    let d = put(store, &want).await;
    store.upload_commit(&up, &d).await.expect("commit of a stored blob");
    assert_eq!(
        store.upload_size(&up).await.expect("upload_size"),
        Some(45_000),
        "{name}: upload data kept"
    );
    assert_eq!(read_all(store.get(&d, None).await.expect("get")).await, want, "{name}");

    // Upload data older than a cutoff is listed for the sweep; abort is idempotent.
    let stale = store
        .upload_list_stale(now_ms() + 60_000, 1000)
        .await
        .expect("list stale");
    assert!(stale.contains(&up), "{name}: {stale:?}");
    assert!(
        !store
            .upload_list_stale(0, 1000)
            .await
            .expect("list stale")
            .contains(&up),
        "{name}"
    );
    store.upload_abort(&up).await.expect("abort");
    store.upload_abort(&up).await.expect("abort again");
    assert_eq!(
        store.upload_size(&up).await.expect("upload_size"),
        None,
        "{name}: aborted"
    );
}

#[tokio::test]
async fn blob_stores_keep_the_upload_data_rules() {
    on_every_blob_store!(blob_upload_data_rules);
}

async fn blob_trash_restore_purge(name: &str, store: &dyn BlobStore) {
    let bytes = data(70_000, 4);
    let d = Digest::sha256(&bytes);
    assert_eq!(store.trash(&d).await.expect("trash of an absent blob"), None, "{name}");
    put(store, &bytes).await;

    // Trashed: absent, listed, and restorable.
    let token = store.trash(&d).await.expect("trash").expect("a token");
    assert_eq!(
        store.stat(&d).await.expect("stat"),
        None,
        "{name}: trashed blobs are absent"
    );
    assert_eq!(
        store.trashed().await.expect("trashed"),
        vec![(d.clone(), token.clone())],
        "{name}"
    );
    store.restore(&d, &token).await.expect("restore");
    assert_eq!(store.stat(&d).await.expect("stat"), Some(70_000), "{name}: restored");
    assert_eq!(read_all(store.get(&d, None).await.expect("get")).await, bytes, "{name}");
    assert!(store.trashed().await.expect("trashed").is_empty(), "{name}");

    // An upload of the same digest after the trash lands at the final location as for a blob
    // never stored; a restore then leaves it and drops the trashed copy.
    let token = store.trash(&d).await.expect("trash").expect("a token");
    put(store, &bytes).await;
    assert_eq!(
        store.stat(&d).await.expect("stat"),
        Some(70_000),
        "{name}: pushed again"
    );
    store.restore(&d, &token).await.expect("restore over a new copy");
    assert_eq!(read_all(store.get(&d, None).await.expect("get")).await, bytes, "{name}");
    assert!(store.trashed().await.expect("trashed").is_empty(), "{name}");

    // Purged: gone for good; unknown tokens are no error.
    let token = store.trash(&d).await.expect("trash").expect("a token");
    store.purge(&token).await.expect("purge");
    assert_eq!(store.stat(&d).await.expect("stat"), None, "{name}: purged");
    assert!(store.trashed().await.expect("trashed").is_empty(), "{name}");
    store.purge(&token).await.expect("purge of an unknown token");
    store.restore(&d, &token).await.expect("restore of an unknown token");
    assert_eq!(store.stat(&d).await.expect("stat"), None, "{name}: nothing to restore");
}

#[tokio::test]
async fn blob_stores_trash_restore_and_purge() {
    on_every_blob_store!(blob_trash_restore_purge);
}

// ----- metadata databases ---------------------------------------------------------------------

/// Run `f` against a fresh database of every kind.
macro_rules! on_every_database {
    ($f:ident) => {
        for db in DATABASES {
            let (_db, store) = fresh_store(db).await;
            $f(db, &*store).await;
        }
    };
}

async fn links_and_namespaces(db: Backend, m: &dyn MetadataStore) {
    let d = Digest::sha256(b"layer").to_string();
    assert_eq!(m.repo_blob_size("ns1/a", &d).await.expect("size"), None, "{db:?}");
    m.link_blob("ns1/a", &d, 5).await.expect("link");
    m.link_blob("ns1/a", &d, 5).await.expect("link again");
    m.link_blob("ns1/b", &d, 5).await.expect("link elsewhere");
    let other = Digest::sha256(b"other").to_string();
    m.link_blob("ns1/b", &other, 7).await.expect("link");
    assert_eq!(m.repo_blob_size("ns1/a", &d).await.expect("size"), Some(5), "{db:?}");
    assert_eq!(
        m.repo_blob_size("ns2/a", &d).await.expect("size"),
        None,
        "{db:?}: links are per repository"
    );
    assert_eq!(
        m.namespace_usage("ns1").await.expect("usage"),
        12,
        "{db:?}: distinct blobs count once"
    );
    assert!(m.namespace_has_blob("ns1", &d).await.expect("has"), "{db:?}");
    assert!(!m.namespace_has_blob("ns2", &d).await.expect("has"), "{db:?}");

    assert!(m.unlink_blob("ns1/a", &d).await.expect("unlink"), "{db:?}");
    assert!(!m.unlink_blob("ns1/a", &d).await.expect("unlink again"), "{db:?}");
    assert_eq!(m.repo_blob_size("ns1/a", &d).await.expect("size"), None, "{db:?}");
    assert_eq!(m.repo_blob_size("ns1/b", &d).await.expect("size"), Some(5), "{db:?}");

    assert_eq!(m.namespace_quota("ns3").await.expect("quota"), None, "{db:?}");
    m.set_namespace_quota("ns3", Some(1000)).await.expect("set quota");
    assert_eq!(m.namespace_quota("ns3").await.expect("quota"), Some(1000), "{db:?}");
    assert_eq!(m.namespaces().await.expect("namespaces"), vec!["ns1", "ns3"], "{db:?}");
    m.set_namespace_quota("ns3", None).await.expect("clear quota");
    assert_eq!(m.namespace_quota("ns3").await.expect("quota"), None, "{db:?}");
    m.check().await.expect("check");
}

#[tokio::test]
async fn databases_link_and_unlink_blobs_and_count_namespaces() {
    on_every_database!(links_and_namespaces);
}

async fn manifests_and_tags(db: Backend, m: &dyn MetadataStore) {
    let repo = "app/web";
    let layer = Digest::sha256(b"layer 1");
    let m1 = manifest("{\"v\":1}", &[&layer], &[], None, None);
    assert_eq!(
        m.manifest_put(repo, &m1, &["v1".into()]).await.expect("put"),
        PutOutcome::MissingBlobs(vec![layer.to_string()]),
        "{db:?}: blobs must be readable in the repository"
    );
    assert!(
        m.manifest_by_tag(repo, "v1", true).await.expect("by tag").is_none(),
        "{db:?}"
    );
    m.link_blob(repo, layer.as_str(), 7).await.expect("link");
    assert_eq!(
        m.manifest_put(repo, &m1, &["v1".into(), "latest".into()])
            .await
            .expect("put"),
        PutOutcome::Stored
    );

    let got = m
        .manifest_by_tag(repo, "v1", true)
        .await
        .expect("by tag")
        .expect("tagged");
    assert_eq!(
        (got.digest.as_str(), got.size, &got.content),
        (m1.digest.as_str(), 7, &m1.content),
        "{db:?}"
    );
    assert_eq!(got.media_type, m1.media_type, "{db:?}");
    let head = m
        .manifest_by_digest(repo, &m1.digest, false)
        .await
        .expect("by digest")
        .expect("there");
    assert_eq!((head.size, head.content.len()), (7, 0), "{db:?}: metadata only");
    assert!(
        m.manifest_by_digest("app/other", &m1.digest, true)
            .await
            .expect("by digest")
            .is_none(),
        "{db:?}"
    );

    // A tag moves; the manifest it left stays reachable by digest.
    let m2 = manifest("{\"v\":2}", &[&layer], &[], None, None);
    assert_eq!(
        m.manifest_put(repo, &m2, &["v1".into()]).await.expect("put"),
        PutOutcome::Stored
    );
    assert_eq!(
        m.manifest_by_tag(repo, "v1", false)
            .await
            .expect("by tag")
            .expect("tagged")
            .digest,
        m2.digest
    );
    assert_eq!(
        m.manifest_by_tag(repo, "latest", false)
            .await
            .expect("by tag")
            .expect("tagged")
            .digest,
        m1.digest
    );
    assert!(
        m.manifest_by_digest(repo, &m1.digest, false)
            .await
            .expect("by digest")
            .is_some(),
        "{db:?}"
    );

    // An index needs its children in the repository.
    let index = manifest("{\"index\":1}", &[], &[&m1.digest, "sha256:missing"], None, None);
    assert_eq!(
        m.manifest_put(repo, &index, &[]).await.expect("put"),
        PutOutcome::MissingManifests(vec!["sha256:missing".into()]),
        "{db:?}"
    );

    assert!(m.tag_delete(repo, "latest").await.expect("tag delete"), "{db:?}");
    assert!(!m.tag_delete(repo, "latest").await.expect("tag delete again"), "{db:?}");
    assert!(
        m.manifest_by_digest(repo, &m1.digest, false)
            .await
            .expect("by digest")
            .is_some(),
        "{db:?}"
    );
    // Deleting a manifest takes the tags pointing at it along.
    assert!(m.manifest_delete(repo, &m2.digest).await.expect("delete"), "{db:?}");
    assert!(
        !m.manifest_delete(repo, &m2.digest).await.expect("delete again"),
        "{db:?}"
    );
    assert!(
        m.manifest_by_tag(repo, "v1", false).await.expect("by tag").is_none(),
        "{db:?}"
    );
}

#[tokio::test]
async fn databases_store_manifests_and_move_tags() {
    on_every_database!(manifests_and_tags);
}

async fn pagination(db: Backend, m: &dyn MetadataStore) {
    let layer = Digest::sha256(b"paged");
    for repo in ["p/c", "p/a", "q/b", "p/b"] {
        m.link_blob(repo, layer.as_str(), 5).await.expect("link");
    }
    let man = manifest("{\"paged\":1}", &[&layer], &[], None, None);
    let tags: Vec<String> = ["v10", "v2", "a", "v1", "b"].iter().map(|t| t.to_string()).collect();
    assert_eq!(
        m.manifest_put("p/a", &man, &tags).await.expect("put"),
        PutOutcome::Stored
    );

    let all = m.tags("p/a", 100, None).await.expect("tags").expect("known");
    assert_eq!(all, vec!["a", "b", "v1", "v10", "v2"], "{db:?}: lexical order");
    assert_eq!(
        m.tags("p/a", 2, None).await.expect("tags").expect("known"),
        vec!["a", "b"],
        "{db:?}"
    );
    assert_eq!(
        m.tags("p/a", 2, Some("b")).await.expect("tags").expect("known"),
        vec!["v1", "v10"],
        "{db:?}"
    );
    assert_eq!(
        m.tags("p/a", 10, Some("v2")).await.expect("tags").expect("known"),
        Vec::<String>::new()
    );
    assert_eq!(
        m.tags("p/c", 10, None).await.expect("tags"),
        Some(vec![]),
        "{db:?}: known, untagged"
    );
    assert_eq!(
        m.tags("p/none", 10, None).await.expect("tags"),
        None,
        "{db:?}: unknown repository"
    );

    assert_eq!(
        m.repositories(100, None).await.expect("repos"),
        vec!["p/a", "p/b", "p/c", "q/b"],
        "{db:?}"
    );
    assert_eq!(
        m.repositories(2, Some("p/a")).await.expect("repos"),
        vec!["p/b", "p/c"],
        "{db:?}"
    );
    assert_eq!(
        m.repositories(2, Some("p/c")).await.expect("repos"),
        vec!["q/b"],
        "{db:?}"
    );
}

#[tokio::test]
async fn databases_page_tags_and_repositories() {
    on_every_database!(pagination);
}

async fn referrers(db: Backend, m: &dyn MetadataStore) {
    let repo = "ref/app";
    let layer = Digest::sha256(b"ref layer");
    m.link_blob(repo, layer.as_str(), 9).await.expect("link");
    let subject = manifest("{\"subject\":1}", &[&layer], &[], None, None);
    assert_eq!(
        m.manifest_put(repo, &subject, &["v1".into()]).await.expect("put"),
        PutOutcome::Stored
    );
    let sig = manifest(
        "{\"sig\":1}",
        &[&layer],
        &[],
        Some(&subject.digest),
        Some("application/x-sig"),
    );
    let sbom = manifest(
        "{\"sbom\":1}",
        &[&layer],
        &[],
        Some(&subject.digest),
        Some("application/x-sbom"),
    );
    for r in [&sig, &sbom] {
        assert_eq!(m.manifest_put(repo, r, &[]).await.expect("put"), PutOutcome::Stored);
    }
    let mut all: Vec<String> = m
        .referrers(repo, &subject.digest, None)
        .await
        .expect("referrers")
        .into_iter()
        .map(|r| r.digest)
        .collect();
    all.sort();
    let mut want = vec![sig.digest.clone(), sbom.digest.clone()];
    want.sort();
    assert_eq!(all, want, "{db:?}");
    let only = m
        .referrers(repo, &subject.digest, Some("application/x-sig"))
        .await
        .expect("referrers");
    assert_eq!(only.len(), 1, "{db:?}");
    assert_eq!(only[0].digest, sig.digest, "{db:?}");
    assert_eq!(only[0].artifact_type.as_deref(), Some("application/x-sig"), "{db:?}");
    assert_eq!(
        only[0].annotations.as_deref(),
        Some("{\"kind\":\"application/x-sig\"}"),
        "{db:?}"
    );
    assert_eq!(only[0].size, sig.content.len() as u64, "{db:?}");
    assert!(
        m.referrers("ref/other", &subject.digest, None)
            .await
            .expect("referrers")
            .is_empty(),
        "{db:?}"
    );
}

#[tokio::test]
async fn databases_list_referrers() {
    on_every_database!(referrers);
}

async fn upload_leases(db: Backend, m: &dyn MetadataStore) {
    let up = id();
    m.upload_create(&up, "up/app").await.expect("create");
    let rec = m.upload_get(&up).await.expect("get").expect("there");
    assert_eq!(
        (rec.repo.as_str(), rec.size, rec.writer.as_deref()),
        ("up/app", 0, None),
        "{db:?}"
    );
    let t0 = now_ms();

    // Compare-and-set: the first writer gets the lease, a second one is refused.
    assert!(
        m.upload_lock(&up, 0, None, "A", t0 + 60_000, t0).await.expect("lock"),
        "{db:?}"
    );
    assert!(
        !m.upload_lock(&up, 0, None, "B", t0 + 60_000, t0).await.expect("lock"),
        "{db:?}: held"
    );
    assert!(
        !m.upload_lock(&up, 0, Some("A"), "B", t0 + 60_000, t0 + 1)
            .await
            .expect("lock"),
        "{db:?}: a live lease is not taken over"
    );
    let held = m.upload_get(&up).await.expect("get").expect("there");
    assert_eq!(
        (held.writer.as_deref(), held.writer_until),
        (Some("A"), t0 + 60_000),
        "{db:?}"
    );

    // Only the holder advances, and only from the acknowledged size.
    let adv = |from, to| UploadAdvance {
        from,
        to,
        hash_state: "sha256:state",
        data_id: &up,
        release: false,
    };
    assert!(
        !m.upload_advance(&up, "B", &adv(0, 10)).await.expect("advance"),
        "{db:?}: not the holder"
    );
    assert!(
        !m.upload_advance(&up, "A", &adv(5, 10)).await.expect("advance"),
        "{db:?}: stale size"
    );
    assert!(
        m.upload_advance(&up, "A", &adv(0, 10)).await.expect("advance"),
        "{db:?}"
    );
    let rec = m.upload_get(&up).await.expect("get").expect("there");
    assert_eq!(
        (rec.size, rec.hash_state.as_deref()),
        (10, Some("sha256:state")),
        "{db:?}"
    );
    assert!(m.upload_renew(&up, "A", t0 + 90_000).await.expect("renew"), "{db:?}");
    assert!(!m.upload_renew(&up, "B", t0 + 90_000).await.expect("renew"), "{db:?}");

    // The lease lapses and another writer takes over: everything the first one does after
    // that is refused, its commit included.
    assert!(
        !m.upload_lock(&up, 0, Some("A"), "B", t0 + 200_000, t0 + 100_000)
            .await
            .expect("lock"),
        "{db:?}: size moved"
    );
    assert!(
        m.upload_lock(&up, 10, Some("A"), "B", t0 + 200_000, t0 + 100_000)
            .await
            .expect("lock"),
        "{db:?}: lapsed"
    );
    assert!(
        !m.upload_advance(&up, "A", &adv(10, 20)).await.expect("advance"),
        "{db:?}"
    );
    assert!(!m.upload_renew(&up, "A", t0 + 300_000).await.expect("renew"), "{db:?}");
    let d = Digest::sha256(b"uploaded").to_string();
    assert!(
        !m.upload_complete(&up, "A", "up/app", &d, 10).await.expect("complete"),
        "{db:?}: lapsed lease"
    );
    assert_eq!(m.repo_blob_size("up/app", &d).await.expect("size"), None, "{db:?}");
    m.upload_release(&up, "A")
        .await
        .expect("release by a non-holder changes nothing");
    assert_eq!(
        m.upload_get(&up).await.expect("get").expect("there").writer.as_deref(),
        Some("B")
    );

    // Release, and a writer may lock from free again.
    m.upload_release(&up, "B").await.expect("release");
    assert!(
        m.upload_lock(&up, 10, None, "C", t0 + 200_000, t0).await.expect("lock"),
        "{db:?}"
    );
    assert!(m.upload_data_in_use(&up).await.expect("in use"), "{db:?}");
    assert!(
        m.upload_complete(&up, "C", "up/app", &d, 10).await.expect("complete"),
        "{db:?}"
    );
    assert_eq!(
        m.repo_blob_size("up/app", &d).await.expect("size"),
        Some(10),
        "{db:?}: committed"
    );
    assert!(
        m.upload_get(&up).await.expect("get").is_none(),
        "{db:?}: session closed"
    );
    assert!(!m.upload_data_in_use(&up).await.expect("in use"), "{db:?}");

    // Idle sessions are found for expiry; delete answers whether one was there.
    let idle = id();
    m.upload_create(&idle, "up/app").await.expect("create");
    assert!(
        m.uploads_idle_since(now_ms() + 1000)
            .await
            .expect("idle")
            .contains(&idle),
        "{db:?}"
    );
    assert!(!m.uploads_idle_since(0).await.expect("idle").contains(&idle), "{db:?}");
    assert!(m.upload_delete(&idle).await.expect("delete"), "{db:?}");
    assert!(!m.upload_delete(&idle).await.expect("delete again"), "{db:?}");
}

#[tokio::test]
async fn databases_lease_upload_sessions() {
    on_every_database!(upload_leases);
}

async fn accounts(db: Backend, m: &dyn MetadataStore) {
    let user = |name: &str, admin| UserRecord {
        name: name.into(),
        password_hash: "hash".into(),
        admin,
        disabled: false,
        created_at: 1,
    };
    assert!(m.user_add(&user("alice", true)).await.expect("add"), "{db:?}");
    assert!(
        !m.user_add(&user("alice", false)).await.expect("add again"),
        "{db:?}: name taken"
    );
    assert!(m.user_add(&user("bob", false)).await.expect("add"), "{db:?}");
    assert_eq!(
        m.user_get("alice").await.expect("get"),
        Some(user("alice", true)),
        "{db:?}"
    );
    let names: Vec<String> = m.users().await.expect("users").into_iter().map(|u| u.name).collect();
    assert_eq!(names, vec!["alice", "bob"], "{db:?}");
    assert!(m.user_set_disabled("bob", true).await.expect("disable"), "{db:?}");
    assert!(m.user_get("bob").await.expect("get").expect("there").disabled, "{db:?}");
    assert!(!m.user_set_disabled("nobody", true).await.expect("disable"), "{db:?}");

    let robot = RobotRecord {
        name: "ci".into(),
        secret_hash: "h".into(),
        namespaces: vec!["team".into(), "other".into()],
        actions: vec!["pull".into(), "push".into()],
        expires_at: Some(5),
        disabled: false,
        created_at: 2,
    };
    assert!(m.robot_add(&robot).await.expect("add"), "{db:?}");
    assert!(!m.robot_add(&robot).await.expect("add again"), "{db:?}");
    assert_eq!(m.robot_get("ci").await.expect("get"), Some(robot.clone()), "{db:?}");
    assert_eq!(m.robots().await.expect("robots"), vec![robot], "{db:?}");
    assert!(m.robot_set_disabled("ci", true).await.expect("disable"), "{db:?}");
    assert!(m.robot_delete("ci").await.expect("delete"), "{db:?}");
    assert!(!m.robot_delete("ci").await.expect("delete again"), "{db:?}");

    assert!(
        m.set_member("team", "alice", Some("admin")).await.expect("member"),
        "{db:?}"
    );
    assert!(
        m.set_member("team", "bob", Some("reader")).await.expect("member"),
        "{db:?}"
    );
    assert!(
        m.set_member("team", "bob", Some("writer")).await.expect("role change"),
        "{db:?}"
    );
    assert!(
        m.set_member("lab", "bob", Some("reader")).await.expect("member"),
        "{db:?}"
    );
    assert_eq!(
        m.member_role("team", "bob").await.expect("role").as_deref(),
        Some("writer"),
        "{db:?}"
    );
    let mut members = m.members("team").await.expect("members");
    members.sort();
    assert_eq!(
        members,
        vec![("alice".into(), "admin".into()), ("bob".into(), "writer".into())],
        "{db:?}"
    );
    let mut of_bob = m.memberships_of("bob").await.expect("memberships");
    of_bob.sort();
    assert_eq!(
        of_bob,
        vec![("lab".into(), "reader".into()), ("team".into(), "writer".into())],
        "{db:?}"
    );
    assert!(m.set_member("lab", "bob", None).await.expect("remove"), "{db:?}");
    assert!(!m.set_member("lab", "bob", None).await.expect("remove again"), "{db:?}");
    // Deleting a user takes their memberships along.
    assert!(m.user_delete("bob").await.expect("delete"), "{db:?}");
    assert!(!m.user_delete("bob").await.expect("delete again"), "{db:?}");
    assert_eq!(m.member_role("team", "bob").await.expect("role"), None, "{db:?}");

    assert!(!m.namespace_public("team").await.expect("public"), "{db:?}");
    m.set_namespace_public("team", true).await.expect("make public");
    assert!(m.namespace_public("team").await.expect("public"), "{db:?}");
    assert_eq!(m.public_namespaces().await.expect("public"), vec!["team"], "{db:?}");
    m.set_namespace_public("team", false).await.expect("make private");
    assert!(m.public_namespaces().await.expect("public").is_empty(), "{db:?}");

    let rec = |at, actor: &str, ns: Option<&str>| AuditRecord {
        at,
        actor: actor.into(),
        action: "user.add".into(),
        target: "t".into(),
        namespace: ns.map(str::to_string),
        remote: Some("127.0.0.1".into()),
        outcome: "ok".into(),
        detail: Some("d".into()),
    };
    for r in [
        rec(10, "alice", Some("team")),
        rec(20, "bob", None),
        rec(30, "alice", None),
    ] {
        m.audit_add(&r).await.expect("audit");
    }
    let all = m.audit(&AuditFilter::default(), 100).await.expect("audit");
    assert_eq!(
        all.iter().map(|r| r.at).collect::<Vec<_>>(),
        vec![10, 20, 30],
        "{db:?}: oldest first"
    );
    assert_eq!(all[0], rec(10, "alice", Some("team")), "{db:?}");
    let f = |namespace: Option<&str>, actor: Option<&str>, since, until| AuditFilter {
        namespace: namespace.map(str::to_string),
        actor: actor.map(str::to_string),
        since,
        until,
    };
    let ats = |v: Vec<AuditRecord>| v.iter().map(|r| r.at).collect::<Vec<_>>();
    assert_eq!(
        ats(m.audit(&f(Some("team"), None, None, None), 100).await.expect("audit")),
        vec![10]
    );
    assert_eq!(
        ats(m.audit(&f(None, Some("alice"), None, None), 100).await.expect("audit")),
        vec![10, 30]
    );
    assert_eq!(
        ats(m.audit(&f(None, None, Some(15), Some(25)), 100).await.expect("audit")),
        vec![20]
    );
    assert_eq!(
        m.audit(&AuditFilter::default(), 2).await.expect("audit").len(),
        2,
        "{db:?}: limit"
    );

    assert_eq!(m.setting("key").await.expect("setting"), None, "{db:?}");
    assert_eq!(m.setting_init("key", "first").await.expect("init"), "first", "{db:?}");
    assert_eq!(
        m.setting_init("key", "second").await.expect("init"),
        "first",
        "{db:?}: first wins"
    );
    assert_eq!(
        m.setting("key").await.expect("setting").as_deref(),
        Some("first"),
        "{db:?}"
    );
}

#[tokio::test]
async fn databases_keep_accounts_members_and_the_audit_log() {
    on_every_database!(accounts);
}

async fn gc_guards(db: Backend, m: &dyn MetadataStore) {
    let d = Digest::sha256(b"guarded").to_string();
    m.link_blob("gc/app", &d, 7).await.expect("link");
    let future = now_ms() + 60_000;
    assert_eq!(
        m.gc_delete_blob(&d, future).await.expect("delete"),
        GcOutcome::Kept,
        "{db:?}: linked"
    );
    assert!(m.unlink_blob("gc/app", &d).await.expect("unlink"), "{db:?}");
    assert_eq!(
        m.gc_delete_blob(&d, 0).await.expect("delete"),
        GcOutcome::Kept,
        "{db:?}: too young"
    );
    assert!(m.gc_blob(&d).await.expect("blob").is_some(), "{db:?}");
    assert_eq!(
        m.gc_delete_blob(&d, future).await.expect("delete"),
        GcOutcome::Removed,
        "{db:?}"
    );
    // Deleting it again removes nothing (the SQL store answers Kept, not Gone, for a row that
    // is not there: one conditional statement cannot tell the two apart).
    assert_ne!(
        m.gc_delete_blob(&d, future).await.expect("delete"),
        GcOutcome::Removed,
        "{db:?}"
    );
    assert!(m.gc_blob(&d).await.expect("blob").is_none(), "{db:?}");
}

#[tokio::test]
async fn databases_guard_garbage_collection_removals() {
    on_every_database!(gc_guards);
}

// ----- the core's rules on every pairing ------------------------------------------------------

/// Run `f` on a registry over every blob store and every database.
macro_rules! on_every_pairing {
    ($f:ident) => {
        let b = BlobBackends::start().await;
        for db in DATABASES {
            for (name, blobs) in b.fresh().await {
                let (_db, store) = fresh_store(db).await;
                let reg = Registry::new(blobs.clone(), store.clone(), RegistryConfig::default());
                $f(&format!("{name}+{db:?}"), &reg, &*store, &*blobs).await;
            }
        }
    };
}

async fn commit_only_under_the_hashed_digest(on: &str, reg: &Registry, m: &dyn MetadataStore, blobs: &dyn BlobStore) {
    let repo = RepoName::parse("rule/app").expect("name");
    let bytes = data(50_000, 5);
    let actual = Digest::sha256(&bytes);
    let claimed = Digest::sha256(b"something else");

    // Monolithic: refused, and nothing is stored under either digest.
    let r = reg.put_blob(&repo, &claimed, body(&bytes)).await;
    assert!(matches!(r, Err(Error::DigestInvalid(_))), "{on}: {:?}", r.err());
    assert_eq!(blobs.stat(&claimed).await.expect("stat"), None, "{on}");
    assert_eq!(blobs.stat(&actual).await.expect("stat"), None, "{on}");
    assert_eq!(
        m.repo_blob_size(repo.as_str(), claimed.as_str()).await.expect("size"),
        None,
        "{on}"
    );

    // Chunked: refused, and the session is closed.
    let up = reg.start_upload(&repo).await.expect("start");
    let r = reg
        .finish_upload(&repo, &up.id, &claimed, None, Some(body(&bytes)))
        .await;
    assert!(matches!(r, Err(Error::DigestInvalid(_))), "{on}: {:?}", r.err());
    assert!(
        matches!(reg.upload_status(&repo, &up.id).await, Err(Error::BlobUploadUnknown)),
        "{on}"
    );
    assert_eq!(blobs.stat(&claimed).await.expect("stat"), None, "{on}");

    // Under its own digest it is stored, readable in the repository, whole and in ranges.
    let up = reg.start_upload(&repo).await.expect("start");
    reg.finish_upload(&repo, &up.id, &actual, None, Some(body(&bytes)))
        .await
        .expect("finish");
    assert_eq!(reg.stat_blob(&repo, &actual).await.expect("stat"), 50_000, "{on}");
    let got = reg.get_blob(&repo, &actual, None).await.expect("get");
    assert_eq!(read_all(got.stream).await, bytes, "{on}");
    let range = image_manager::core::uploads::RangeRequest::From(100, Some(199));
    let got = reg.get_blob(&repo, &actual, Some(range)).await.expect("get range");
    assert_eq!(read_all(got.stream).await, bytes[100..200], "{on}");
}

#[tokio::test]
async fn every_pairing_commits_only_under_the_hashed_digest() {
    on_every_pairing!(commit_only_under_the_hashed_digest);
}

const NOW: GcOptions = GcOptions {
    dry_run: false,
    untagged_retention_secs: 0,
    blob_grace_secs: 0,
};

/// Push an image (config + layers) under `tag`; returns the manifest's digest.
async fn push(reg: &Registry, repo: &RepoName, tag: &str, layers: &[&[u8]]) -> Digest {
    let config = format!("config of {tag} {layers:?}");
    let config_digest = Digest::sha256(config.as_bytes());
    reg.put_blob(repo, &config_digest, body(config.as_bytes()))
        .await
        .expect("config");
    let mut descs = Vec::new();
    for l in layers {
        let d = Digest::sha256(l);
        reg.put_blob(repo, &d, body(l)).await.expect("layer");
        descs.push(serde_json::json!({"mediaType": "l", "digest": d.as_str(), "size": l.len()}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": image_manager::core::manifest::OCI_MANIFEST,
        "config": {"mediaType": "c", "digest": config_digest.as_str(), "size": config.len()},
        "layers": descs,
    });
    let tag = Reference::parse(tag).expect("tag");
    reg.put_manifest(repo, &tag, "", manifest.to_string().into_bytes(), &[])
        .await
        .expect("manifest")
        .digest
}

async fn gc_trash_and_restore(on: &str, reg: &Registry, m: &dyn MetadataStore, blobs: &dyn BlobStore) {
    let repo = RepoName::parse("gc/app").expect("name");
    let old = push(reg, &repo, "v1", &[b"old layer", b"shared"]).await;
    let new = push(reg, &repo, "v1", &[b"new layer", b"shared"]).await;

    // What the moved tag left goes, bytes included; nothing else does. (Ages count in ms:
    // wait for the clock to pass the millisecond of the last push.)
    let pushed = now_ms();
    while now_ms() <= pushed {
        tokio::task::yield_now().await;
    }
    let report = collect(m, blobs, &NOW, None).await.expect("collect");
    assert_eq!(
        (report.manifests, report.blobs, report.blobs_skipped),
        (1, 2, false),
        "{on}: {report:?}"
    );
    assert!(
        reg.get_manifest(&repo, &Reference::Digest(old), false).await.is_err(),
        "{on}"
    );
    assert!(
        reg.get_manifest(&repo, &Reference::Digest(new), false).await.is_ok(),
        "{on}"
    );
    assert_eq!(
        blobs.stat(&Digest::sha256(b"old layer")).await.expect("stat"),
        None,
        "{on}"
    );
    assert_eq!(
        blobs.stat(&Digest::sha256(b"shared")).await.expect("stat"),
        Some(6),
        "{on}"
    );
    assert!(blobs.trashed().await.expect("trashed").is_empty(), "{on}");

    // A run interrupted after the trash (G1, G2) while a push recorded the blob again: the
    // next run puts the bytes back.
    let d = Digest::sha256(b"contested");
    reg.put_blob(&repo, &d, body(b"contested")).await.expect("push");
    assert!(m.unlink_blob(repo.as_str(), d.as_str()).await.expect("unlink"), "{on}");
    let before = now_ms() + 1000;
    assert_eq!(
        m.gc_delete_blob(d.as_str(), before).await.expect("G1"),
        GcOutcome::Removed,
        "{on}"
    );
    blobs.trash(&d).await.expect("G2").expect("bytes were stored");
    m.link_blob(repo.as_str(), d.as_str(), 9).await.expect("pushed again");
    // (Within its grace period the new link is not garbage itself.)
    let graced = GcOptions {
        blob_grace_secs: 3600,
        ..NOW
    };
    let report = collect(m, blobs, &graced, None).await.expect("collect");
    assert_eq!((report.recovered, report.restored), (1, 1), "{on}: {report:?}");
    assert_eq!(blobs.stat(&d).await.expect("stat"), Some(9), "{on}: restored");
    assert_eq!(reg.stat_blob(&repo, &d).await.expect("readable"), 9, "{on}");

    // The same interruption without a push: the next run purges the bytes.
    assert!(m.unlink_blob(repo.as_str(), d.as_str()).await.expect("unlink"), "{on}");
    assert_eq!(
        m.gc_delete_blob(d.as_str(), before).await.expect("G1"),
        GcOutcome::Removed,
        "{on}"
    );
    blobs.trash(&d).await.expect("G2").expect("bytes were stored");
    let report = collect(m, blobs, &graced, None).await.expect("collect");
    assert_eq!((report.recovered, report.restored), (1, 0), "{on}: {report:?}");
    assert_eq!(blobs.stat(&d).await.expect("stat"), None, "{on}: purged");
    assert!(blobs.trashed().await.expect("trashed").is_empty(), "{on}");
}

#[tokio::test]
async fn every_pairing_collects_garbage_through_the_trash() {
    on_every_pairing!(gc_trash_and_restore);
}
