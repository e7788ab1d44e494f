//! The S3 blob store against a real S3-compatible server: moto (`python3 -m moto.server`,
//! installed by scripts/install-test-deps.sh), started per test on a free loopback port.
//! Each chunk of a chunked upload goes through a new store and client, as if another replica
//! served it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use image_manager::core::names::Digest;
use image_manager::storage::s3::S3BlobStore;
use image_manager::storage::{BlobStore, ByteRange, ByteStream};

#[path = "support/moto.rs"]
mod moto;
use moto::Moto;
use sha2::{Digest as _, Sha256};

const MIB: usize = 1024 * 1024;

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

async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Write `bytes` at `offset` in pieces of at most 100 000 bytes; returns the size finish reports.
async fn write_at(store: &S3BlobStore, id: &str, offset: u64, bytes: &[u8]) -> u64 {
    let mut w = store.upload_writer(id, offset).await.unwrap();
    for piece in bytes.chunks(100_000) {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    w.finish().await.unwrap()
}

async fn keys(store: &S3BlobStore, bucket: &str, prefix: &str) -> Vec<String> {
    let out = store
        .client()
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

async fn sha256_of(s: ByteStream) -> String {
    hex::encode(Sha256::digest(collect(s).await))
}

#[tokio::test]
async fn monolithic_upload_streams_commits_and_reads_ranges() {
    let moto = Moto::start().await;
    let store = moto.bucket("mono").await;
    let blob = data(20 * MIB + 12345, 1);
    let digest = Digest::sha256(&blob);
    let id = id();
    store.upload_create(&id).await.unwrap();
    assert_eq!(store.upload_size(&id).await.unwrap(), Some(0));

    // Parts go to S3 while the body is still arriving.
    let mut w = store.upload_writer(&id, 0).await.unwrap();
    let (first, rest) = blob.split_at(17 * MIB);
    for piece in first.chunks(64 * 1024) {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !keys(&store, "mono", &format!("pre/fix/uploads/{id}/seg-"))
        .await
        .iter()
        .any(|k| k.contains("seg-"))
    {
        assert!(
            Instant::now() < deadline,
            "no segment stored before the end of the body"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for piece in rest.chunks(64 * 1024) {
        w.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap(), blob.len() as u64);
    assert_eq!(store.upload_size(&id).await.unwrap(), Some(blob.len() as u64));

    assert_eq!(store.stat(&digest).await.unwrap(), None);
    store.upload_commit(&id, &digest).await.unwrap();
    store.upload_abort(&id).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(blob.len() as u64));
    assert!(keys(&store, "mono", "pre/fix/uploads/").await.is_empty());
    assert_eq!(
        keys(&store, "mono", "pre/fix/blobs/").await,
        vec![format!("pre/fix/blobs/sha256/{}/{}", &digest.hex()[..2], digest.hex())]
    );

    assert_eq!(sha256_of(store.get(&digest, None).await.unwrap()).await, digest.hex());
    for (start, end) in [
        (0, 0),
        (0, 99),
        (16 * MIB - 10, 16 * MIB + 10),
        (blob.len() - 1, blob.len() - 1),
    ] {
        let range = ByteRange {
            start: start as u64,
            end: end as u64,
        };
        let got = collect(store.get(&digest, Some(range)).await.unwrap()).await;
        assert_eq!(got, &blob[start..=end], "range {start}-{end}");
    }

    store.delete(&digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    store.delete(&digest).await.unwrap();
    assert!(store.get(&digest, None).await.is_err());
}

#[tokio::test]
async fn chunked_upload_across_replicas() {
    let moto = Moto::start().await;
    moto.bucket("chunks").await;
    let sizes = [MIB, 7 * MIB, 3, 12 * MIB];
    let total: usize = sizes.iter().sum();
    let blob = data(total, 2);
    let digest = Digest::sha256(&blob);
    let id = id();
    moto.store("chunks", "pre/fix", false)
        .await
        .upload_create(&id)
        .await
        .unwrap();

    let mut offset = 0usize;
    for size in sizes {
        // A new replica: rebuild the hash from the stored bytes, then append.
        let replica = moto.store("chunks", "pre/fix", false).await;
        assert_eq!(replica.upload_size(&id).await.unwrap(), Some(offset as u64));
        let stored = collect(replica.upload_read(&id, offset as u64).await.unwrap()).await;
        assert_eq!(stored.len(), offset);
        assert!(stored == blob[..offset], "upload_read after {offset} bytes");
        let end = write_at(&replica, &id, offset as u64, &blob[offset..offset + size]).await;
        offset += size;
        assert_eq!(end, offset as u64);
    }
    let replica = moto.store("chunks", "pre/fix", false).await;
    assert_eq!(
        sha256_of(replica.upload_read(&id, total as u64).await.unwrap()).await,
        digest.hex()
    );
    // A prefix only.
    let head = collect(replica.upload_read(&id, 8 * MIB as u64 + 1).await.unwrap()).await;
    assert!(head == blob[..8 * MIB + 1]);
    // Ranges of upload data, inside one segment and across segment boundaries.
    for (start, len) in [
        (0, 1),
        (MIB - 1, 2),
        (MIB + 5, 7 * MIB),
        (8 * MIB, 3),
        (8 * MIB + 1, 12 * MIB - 1),
        (total - 1, 1),
    ] {
        let got = collect(replica.upload_read_range(&id, start as u64, len as u64).await.unwrap()).await;
        assert!(got == blob[start..start + len], "upload range {start}+{len}");
    }
    assert!(replica.upload_read_range(&id, total as u64 - 1, 2).await.is_err());

    replica.upload_commit(&id, &digest).await.unwrap();
    let reader = moto.store("chunks", "pre/fix", false).await;
    assert_eq!(reader.stat(&digest).await.unwrap(), Some(total as u64));
    assert_eq!(sha256_of(reader.get(&digest, None).await.unwrap()).await, digest.hex());
    for (start, end) in [(MIB - 1, 8 * MIB + 2), (8 * MIB, 8 * MIB + 2), (total - 5, total - 1)] {
        let range = ByteRange {
            start: start as u64,
            end: end as u64,
        };
        let got = collect(reader.get(&digest, Some(range)).await.unwrap()).await;
        assert!(got == blob[start..=end], "range {start}-{end}");
    }
    reader.upload_abort(&id).await.unwrap();
    assert!(keys(&reader, "chunks", "pre/fix/uploads/").await.is_empty());
}

#[tokio::test]
async fn commit_of_a_stored_blob_keeps_the_upload_data() {
    let moto = Moto::start().await;
    let store = moto.bucket("dup").await;
    let blob = data(6 * MIB, 3);
    let digest = Digest::sha256(&blob);

    let first = id();
    store.upload_create(&first).await.unwrap();
    write_at(&store, &first, 0, &blob).await;
    store.upload_commit(&first, &digest).await.unwrap();
    store.upload_abort(&first).await.unwrap();

    let second = id();
    store.upload_create(&second).await.unwrap();
    write_at(&store, &second, 0, &blob).await;
    store.upload_commit(&second, &digest).await.unwrap();
    // The blob was there: the upload data stays for the caller to remove.
    assert_eq!(store.upload_size(&second).await.unwrap(), Some(blob.len() as u64));
    assert!(!keys(&store, "dup", &format!("pre/fix/uploads/{second}/"))
        .await
        .is_empty());
    assert!(collect(store.upload_read(&second, blob.len() as u64).await.unwrap()).await == blob);
    assert_eq!(sha256_of(store.get(&digest, None).await.unwrap()).await, digest.hex());

    // Committing again after the blob vanished (a concurrent collection) places it again.
    store.delete(&digest).await.unwrap();
    store.upload_commit(&second, &digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(blob.len() as u64));

    store.upload_abort(&second).await.unwrap();
    assert!(keys(&store, "dup", "pre/fix/uploads/").await.is_empty());
    assert_eq!(store.upload_size(&second).await.unwrap(), None);
}

#[tokio::test]
async fn writer_at_a_smaller_offset_discards_the_rest() {
    let moto = Moto::start().await;
    let store = moto.bucket("trunc").await;
    let old = data(22 * MIB, 4);
    let new = data(4 * MIB + 7, 5);
    let id = id();
    store.upload_create(&id).await.unwrap();
    write_at(&store, &id, 0, &old[..12 * MIB]).await;
    write_at(&store, &id, 12 * MIB as u64, &old[12 * MIB..]).await;
    assert_eq!(store.upload_size(&id).await.unwrap(), Some(22 * MIB as u64));

    // 15 MiB falls 3 MiB into the second segment: those 3 MiB become the tail of the next write.
    let replica = moto.store("trunc", "pre/fix", false).await;
    let end = write_at(&replica, &id, 15 * MIB as u64, &new).await;
    let mut expect = old[..15 * MIB].to_vec();
    expect.extend_from_slice(&new);
    assert_eq!(end, expect.len() as u64);
    assert!(collect(store.upload_read(&id, end).await.unwrap()).await == expect);

    // 10 MiB falls inside the first (12 MiB) segment; nothing more is written.
    let end = write_at(&replica, &id, 10 * MIB as u64, &[]).await;
    assert_eq!(end, 10 * MIB as u64);
    assert_eq!(store.upload_size(&id).await.unwrap(), Some(10 * MIB as u64));
    let expect = &old[..10 * MIB];
    assert!(collect(store.upload_read(&id, end).await.unwrap()).await == expect);
    // Only the objects still used remain: the state and the first segment.
    assert_eq!(keys(&store, "trunc", &format!("pre/fix/uploads/{id}/")).await.len(), 2);

    let digest = Digest::sha256(expect);
    store.upload_commit(&id, &digest).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(10 * MIB as u64));
    assert_eq!(sha256_of(store.get(&digest, None).await.unwrap()).await, digest.hex());

    // An offset beyond the stored data is refused.
    assert!(store.upload_writer(&id, 10 * MIB as u64 + 1).await.is_err());
    store.upload_abort(&id).await.unwrap();
    assert!(keys(&store, "trunc", "pre/fix/uploads/").await.is_empty());
}

#[tokio::test]
async fn abort_removes_everything_and_is_idempotent() {
    let moto = Moto::start().await;
    let store = moto.bucket("abort").await;
    let id = id();
    store.upload_create(&id).await.unwrap();
    assert!(store.upload_create(&id).await.is_err(), "an upload id is created once");
    write_at(&store, &id, 0, &data(17 * MIB, 6)).await;
    write_at(&store, &id, 17 * MIB as u64, &data(MIB, 7)).await;
    assert!(keys(&store, "abort", "pre/fix/uploads/").await.len() >= 3);

    // A writer abandoned half-way (a dropped request) leaves nothing behind after the abort.
    let mut w = store.upload_writer(&id, 18 * MIB as u64).await.unwrap();
    w.write(Bytes::from(data(17 * MIB, 8))).await.unwrap();
    drop(w);

    store.upload_abort(&id).await.unwrap();
    assert!(keys(&store, "abort", "pre/fix/uploads/").await.is_empty());
    assert_eq!(store.upload_size(&id).await.unwrap(), None);
    assert!(store.upload_writer(&id, 0).await.is_err());
    store.upload_abort(&id).await.unwrap();
    store.upload_abort(&uuid::Uuid::new_v4().to_string()).await.unwrap();
    assert!(store.upload_abort("not-a-uuid").await.is_err());
}

#[tokio::test]
async fn empty_blobs_stat_delete_and_redirects() {
    let moto = Moto::start().await;
    let store = moto.bucket("misc").await;
    let digest = Digest::sha256(b"");
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    store.delete(&digest).await.unwrap();

    let id = id();
    store.upload_create(&id).await.unwrap();
    assert_eq!(write_at(&store, &id, 0, &[]).await, 0);
    store.upload_commit(&id, &digest).await.unwrap();
    store.upload_abort(&id).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(0));
    assert!(collect(store.get(&digest, None).await.unwrap()).await.is_empty());

    let small = b"hello, s3".to_vec();
    let small_digest = Digest::sha256(&small);
    let id = self::id();
    store.upload_create(&id).await.unwrap();
    write_at(&store, &id, 0, &small).await;
    store.upload_commit(&id, &small_digest).await.unwrap();
    store.upload_abort(&id).await.unwrap();

    assert_eq!(store.redirect_url(&small_digest).await.unwrap(), None);
    let redirecting = moto.store("misc", "pre/fix", true).await;
    let url = redirecting.redirect_url(&small_digest).await.unwrap().unwrap();
    assert!(url.starts_with(&moto.endpoint), "{url}");
    assert!(url.contains("X-Amz-Expires=900"), "{url}");
    let got = reqwest::get(&url).await.unwrap();
    assert!(got.status().is_success());
    assert_eq!(got.bytes().await.unwrap().to_vec(), small);

    store.delete(&small_digest).await.unwrap();
    store.delete(&digest).await.unwrap();
    assert!(keys(&store, "misc", "pre/fix/").await.is_empty());
}

#[tokio::test]
async fn concurrent_writers_on_one_upload_cannot_both_record_data() {
    let moto = Moto::start().await;
    let store = moto.bucket("race").await;
    let id = id();
    store.upload_create(&id).await.unwrap();
    let other = moto.store("race", "pre/fix", false).await;
    let mut a = store.upload_writer(&id, 0).await.unwrap();
    let mut b = other.upload_writer(&id, 0).await.unwrap();
    a.write(Bytes::from(data(MIB, 9))).await.unwrap();
    b.write(Bytes::from(data(2 * MIB, 10))).await.unwrap();
    assert_eq!(a.finish().await.unwrap(), MIB as u64);
    assert!(
        b.finish().await.is_err(),
        "the second writer's state must not replace the first's"
    );
    assert_eq!(store.upload_size(&id).await.unwrap(), Some(MIB as u64));
    assert!(collect(store.upload_read(&id, MIB as u64).await.unwrap()).await == data(MIB, 9));
    store.upload_abort(&id).await.unwrap();
    assert!(keys(&store, "race", "pre/fix/uploads/").await.is_empty());
}

#[tokio::test]
async fn garbage_collection_trash_restore_and_purge() {
    let moto = Moto::start().await;
    let store = moto.bucket("trash").await;
    let blob = data(7 * MIB, 11);
    let digest = Digest::sha256(&blob);
    assert_eq!(store.trash(&digest).await.unwrap(), None);

    let id = id();
    store.upload_create(&id).await.unwrap();
    write_at(&store, &id, 0, &blob).await;
    store.upload_commit(&id, &digest).await.unwrap();

    // Trash: the blob is gone from its key, listed in the trash, and can come back.
    let token = store.trash(&digest).await.unwrap().unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert_eq!(store.trashed().await.unwrap(), vec![(digest.clone(), token.clone())]);
    store.restore(&digest, &token).await.unwrap();
    assert_eq!(store.stat(&digest).await.unwrap(), Some(blob.len() as u64));
    assert_eq!(sha256_of(store.get(&digest, None).await.unwrap()).await, digest.hex());
    assert!(store.trashed().await.unwrap().is_empty());
    store.restore(&digest, &token).await.unwrap();

    // Stored again while trashed: restore keeps the new bytes and drops the trashed copy.
    let token = store.trash(&digest).await.unwrap().unwrap();
    store.upload_commit(&id, &digest).await.unwrap();
    store.restore(&digest, &token).await.unwrap();
    assert!(store.trashed().await.unwrap().is_empty());
    assert_eq!(sha256_of(store.get(&digest, None).await.unwrap()).await, digest.hex());

    // Purge deletes for good; unknown tokens are no error, malformed ones are.
    let token = store.trash(&digest).await.unwrap().unwrap();
    store.purge(&token).await.unwrap();
    store.purge(&token).await.unwrap();
    assert!(store.trashed().await.unwrap().is_empty());
    assert_eq!(store.stat(&digest).await.unwrap(), None);
    assert!(store.purge("../x").await.is_err());

    store.upload_abort(&id).await.unwrap();
    assert!(keys(&store, "trash", "pre/fix/").await.is_empty());
}
