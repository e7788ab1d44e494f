//! Copying an image graph (one manifest, or an index and its manifests, recursively) from our
//! store to a target registry, and checking it is there.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::{other, RegistryClient, MAX_MANIFEST_BYTES};
use crate::adapters::AdapterResult;
use crate::oci::manifest;
use crate::oci::names::{parse_tag, Digest};
use crate::storage::ByteStream;

/// Deepest nesting of indexes followed, and most manifests in one graph.
const MAX_DEPTH: usize = 8;
const MAX_MANIFESTS: usize = 10_000;
/// Blobs uploaded at the same time.
const BLOB_CONCURRENCY: usize = 4;

/// Where the bytes come from (our store; the distribution engine implements it).
#[async_trait]
pub trait ImageSource: Send + Sync {
    /// Manifest `digest`: its media type and bytes.
    async fn manifest(&self, digest: &Digest) -> AdapterResult<(String, Bytes)>;
    /// Blob `digest`: its size and its bytes.
    async fn blob(&self, digest: &Digest) -> AdapterResult<(u64, ByteStream)>;
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub manifests_pushed: u64,
    pub manifests_present: u64,
    pub blobs_pushed: u64,
    pub blobs_present: u64,
    /// Bytes of blobs and manifests sent.
    pub bytes_sent: u64,
    pub root: Digest,
}

/// One manifest of the graph.
#[derive(Debug)]
struct Node {
    digest: Digest,
    media_type: String,
    bytes: Bytes,
}

/// An image graph read from the source: manifests children first (the root last), and the
/// blobs they need with their declared sizes, each once.
#[derive(Debug)]
struct Graph {
    manifests: Vec<Node>,
    blobs: Vec<(Digest, u64)>,
}

/// Declared sizes of a manifest's descriptors (the project's parser gives the digests).
#[derive(serde::Deserialize)]
struct Sizes {
    config: Option<Sized>,
    layers: Option<Vec<Sized>>,
    manifests: Option<Vec<Sized>>,
    blobs: Option<Vec<Sized>>,
}

#[derive(serde::Deserialize)]
struct Sized {
    digest: String,
    size: u64,
}

/// Read the graph below `root` from the source, checking every manifest against its digest
/// and every child's declared size.
async fn walk(src: &dyn ImageSource, root: &Digest) -> AdapterResult<Graph> {
    struct Frame {
        digest: Digest,
        node: Option<(Node, Vec<Digest>)>,
        next: usize,
    }
    let mut done: HashSet<Digest> = HashSet::new();
    let mut on_stack: HashSet<Digest> = HashSet::new();
    let mut declared: HashMap<Digest, u64> = HashMap::new();
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut blob_seen: HashSet<Digest> = HashSet::new();
    let mut manifests = Vec::new();
    let mut stack = vec![Frame {
        digest: root.clone(),
        node: None,
        next: 0,
    }];
    on_stack.insert(root.clone());
    while let Some(top) = stack.last_mut() {
        if top.node.is_none() {
            let digest = top.digest.clone();
            let (media_type, bytes) = src.manifest(&digest).await?;
            if bytes.len() > MAX_MANIFEST_BYTES {
                return Err(other(format!(
                    "manifest {digest} is larger than {MAX_MANIFEST_BYTES} bytes"
                )));
            }
            if super::digest_with(digest.algorithm(), &bytes)? != digest {
                return Err(other(format!(
                    "the source's manifest {digest} does not match its digest"
                )));
            }
            if let Some(size) = declared.get(&digest) {
                if *size != bytes.len() as u64 {
                    return Err(other(format!(
                        "manifest {digest} is {} bytes, its index declares {size}",
                        bytes.len()
                    )));
                }
            }
            let parsed = manifest::parse(&bytes, &media_type)
                .map_err(|e| other(format!("manifest {digest} cannot be copied: {e}")))?;
            let sizes: Sizes = serde_json::from_slice(&bytes)
                .map_err(|e| other(format!("manifest {digest}: descriptor sizes: {e}")))?;
            let mut size_of: HashMap<String, u64> = HashMap::new();
            for d in sizes
                .config
                .into_iter()
                .chain(sizes.layers.into_iter().flatten())
                .chain(sizes.manifests.into_iter().flatten())
                .chain(sizes.blobs.into_iter().flatten())
            {
                size_of.entry(d.digest).or_insert(d.size);
            }
            for b in &parsed.blobs {
                let size = *size_of
                    .get(b.as_str())
                    .ok_or_else(|| other(format!("manifest {digest}: no size for {b}")))?;
                if blob_seen.insert(b.clone()) {
                    blobs.push((b.clone(), size));
                } else if blobs.iter().any(|(d, s)| d == b && *s != size) {
                    return Err(other(format!("blob {b} is declared with two sizes")));
                }
            }
            for m in &parsed.manifests {
                if let Some(size) = size_of.get(m.as_str()) {
                    declared.insert(m.clone(), *size);
                }
            }
            let node = Node {
                digest,
                media_type: parsed.media_type.clone(),
                bytes,
            };
            top.node = Some((node, parsed.manifests));
        }
        let child = match &top.node {
            Some((_, children)) if top.next < children.len() => Some(children[top.next].clone()),
            _ => None,
        };
        if let Some(c) = child {
            top.next += 1;
            if done.contains(&c) {
                continue;
            }
            if on_stack.contains(&c) {
                return Err(other(format!("manifest {c} refers to itself")));
            }
            if stack.len() >= MAX_DEPTH {
                return Err(other(format!("indexes nested deeper than {MAX_DEPTH} below {root}")));
            }
            on_stack.insert(c.clone());
            stack.push(Frame {
                digest: c,
                node: None,
                next: 0,
            });
            continue;
        }
        // Every child is done: this manifest follows them.
        if let Some(Frame {
            digest,
            node: Some((node, _)),
            ..
        }) = stack.pop()
        {
            on_stack.remove(&digest);
            done.insert(digest);
            manifests.push(node);
            if manifests.len() > MAX_MANIFESTS {
                return Err(other(format!("more than {MAX_MANIFESTS} manifests below {root}")));
            }
        }
    }
    Ok(Graph { manifests, blobs })
}

/// What is wrong with the image at the target, each problem in words (empty: all there).
async fn problems_at(
    dst: &RegistryClient,
    repo: &str,
    tag: &str,
    graph: &Graph,
    root: &Digest,
) -> AdapterResult<Vec<String>> {
    let mut problems = Vec::new();
    // Owned items: closures over borrowed ones make the future Send for one lifetime only,
    // and the distribution engine runs it on a multi-threaded runtime.
    let sizes = futures::stream::iter(graph.blobs.iter().cloned())
        .map(|(d, size)| async move { dst.blob_size(repo, &d).await.map(|got| (d, size, got)) })
        .buffered(BLOB_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    for (d, size, got) in sizes {
        match got {
            None => problems.push(format!("blob {d} is missing")),
            Some(g) if g != size => problems.push(format!("blob {d} is {g} bytes, not {size}")),
            Some(_) => {}
        }
    }
    for node in &graph.manifests {
        match dst.manifest(repo, node.digest.as_str()).await? {
            None => problems.push(format!("manifest {} is missing", node.digest)),
            Some((_, got, _)) if got != node.digest => {
                problems.push(format!("manifest {} reads back as {got}", node.digest))
            }
            Some(_) => {}
        }
    }
    match dst.manifest(repo, tag).await? {
        None => problems.push(format!("tag {tag} is missing")),
        Some((_, got, _)) if &got != root => problems.push(format!("tag {tag} is {got}, not {root}")),
        Some(_) => {}
    }
    Ok(problems)
}

/// Copy `root` (a manifest or index; children first, then the index) to `repo:tag` at the
/// target. Blobs already there with their size, and manifests already there by digest, are
/// not sent again; `progress` is called with the running total of blob bytes sent as they go
/// out. Then everything is checked at the target (HEAD of every blob, GET of every manifest
/// and of the tag, digests of the bytes compared): a registry that acknowledged something it
/// does not serve fails the copy with [`AdapterErrorKind::Other`]("verification failed: …").
///
/// [`AdapterErrorKind::Other`]: crate::adapters::AdapterErrorKind::Other
pub async fn copy_image(
    src: &dyn ImageSource,
    dst: &RegistryClient,
    repo: &str,
    tag: &str,
    root: &Digest,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> AdapterResult<CopyReport> {
    dst.target_name(repo)?;
    parse_tag(tag).map_err(|e| super::refused(e.to_string()))?;
    let graph = walk(src, root).await?;
    let mut report = CopyReport {
        manifests_pushed: 0,
        manifests_present: 0,
        blobs_pushed: 0,
        blobs_present: 0,
        bytes_sent: 0,
        root: root.clone(),
    };

    // Blobs, a few at a time, reporting progress from the byte counts the uploads send here.
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let uploads = futures::stream::iter(graph.blobs.iter().cloned())
        .map(|(digest, size)| {
            let tx = tx.clone();
            async move {
                let (digest, size) = (&digest, &size);
                if dst.blob_size(repo, digest).await? == Some(*size) {
                    return Ok::<bool, crate::adapters::AdapterError>(false);
                }
                let (got, stream) = src.blob(digest).await?;
                if got != *size {
                    return Err(other(format!(
                        "the source's blob {digest} is {got} bytes, its manifest says {size}"
                    )));
                }
                dst.push_blob_counted(repo, digest, *size, stream, Some(tx)).await?;
                Ok(true)
            }
        })
        .buffer_unordered(BLOB_CONCURRENCY)
        .try_collect::<Vec<bool>>();
    tokio::pin!(uploads);
    let mut sent = 0u64;
    let pushed = loop {
        tokio::select! {
            done = &mut uploads => break done,
            Some(n) = rx.recv() => {
                sent += n;
                progress(sent);
            }
        }
    };
    while let Ok(n) = rx.try_recv() {
        sent += n;
        progress(sent);
    }
    let pushed = pushed?;
    report.blobs_pushed = pushed.iter().filter(|p| **p).count() as u64;
    report.blobs_present = pushed.len() as u64 - report.blobs_pushed;
    report.bytes_sent = sent;

    // Manifests, children first; the root by its tag.
    for (i, node) in graph.manifests.iter().enumerate() {
        let is_root = i + 1 == graph.manifests.len();
        let reference = if is_root { tag } else { node.digest.as_str() };
        let present = match dst.manifest_head(repo, reference).await? {
            Some((d, _)) => d == node.digest,
            None => false,
        };
        if present {
            report.manifests_present += 1;
            continue;
        }
        let d = dst
            .put_manifest(repo, reference, &node.media_type, node.bytes.clone())
            .await?;
        if d != node.digest {
            return Err(other(format!("manifest {} was stored as {d}", node.digest)));
        }
        report.manifests_pushed += 1;
        report.bytes_sent += node.bytes.len() as u64;
    }

    let problems = problems_at(dst, repo, tag, &graph, root).await?;
    if !problems.is_empty() {
        return Err(other(format!(
            "verification failed: {} at {}: {}",
            dst.target_name(repo)?,
            dst.inner.base,
            problems.join("; ")
        )));
    }
    Ok(report)
}

/// Check without sending: is `repo:tag` at the target exactly `root`, with every manifest
/// below it readable and byte-identical and every blob present with its size?
pub async fn verify_image(
    src: &dyn ImageSource,
    dst: &RegistryClient,
    repo: &str,
    tag: &str,
    root: &Digest,
) -> AdapterResult<bool> {
    dst.target_name(repo)?;
    parse_tag(tag).map_err(|e| super::refused(e.to_string()))?;
    let graph = walk(src, root).await?;
    let problems = problems_at(dst, repo, tag, &graph, root).await?;
    if !problems.is_empty() {
        tracing::debug!(repo, tag, problems = %problems.join("; "), "image not intact at the target");
    }
    Ok(problems.is_empty())
}
