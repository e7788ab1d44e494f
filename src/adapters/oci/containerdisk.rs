//! A VM disk image as a KubeVirt containerDisk: an OCI image of one uncompressed tar layer
//! holding `/disk/<name>.<format>` (owned by uid/gid 107, KubeVirt's `qemu` user, mode 0440,
//! in a directory `/disk` of mode 0555), its config (`amd64`, `linux`, the layer as its only
//! `diff_id`) and manifest.
//!
//! The tar is written here, by hand (a ustar header is 512 bytes; sizes beyond the 8 GiB of
//! ustar's octal field use the base-256 form GNU tar and Go's `archive/tar` read), and streamed
//! to the registry in one `PATCH` while it is hashed, then committed by `PUT ?digest=`. Every
//! field is fixed (mtime 0, no timestamps in the config), so the same disk always gives the
//! same image: the manifest carries the disk's digest as an annotation, and a disk already
//! at `repo:tag` is not sent again.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::Digest as _;
use tokio::sync::mpsc;

use super::auth::Scopes;
use super::{error_of, header_str, other, refused, Call, CallBody, ImageSource, Outgoing, RegistryClient};
use crate::adapters::AdapterResult;
use crate::oci::manifest::OCI_MANIFEST;
use crate::oci::names::{parse_tag, Digest};
use crate::storage::ByteStream;

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The manifest annotation naming the disk image the layer holds.
pub const DISK_DIGEST_ANNOTATION: &str = "org.onap.image-manager.disk.digest";
/// KubeVirt runs QEMU as uid and gid 107.
pub const QEMU_ID: u64 = 107;
pub const FILE_MODE: u64 = 0o440;
pub const DIR_MODE: u64 = 0o555;
const BLOCK: u64 = 512;

/// A VM disk image in the source, as a containerDisk will hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    /// The blob holding the disk in the [`ImageSource`].
    pub digest: Digest,
    pub size: u64,
    /// File extension, e.g. `qcow2` or `raw`.
    pub format: String,
    /// File name without extension.
    pub name: String,
}

impl DiskImage {
    /// `<name>.<format>`, checked to be one plain file name that fits a ustar header.
    pub fn file_name(&self) -> AdapterResult<String> {
        let plain = |s: &str| {
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) && !s.starts_with('.')
        };
        if !plain(&self.name) || !plain(&self.format) || self.format.contains('.') {
            return Err(refused(format!(
                "disk file name {:?}.{:?}: letters, digits, '.', '_' and '-' only, not starting with '.'",
                self.name, self.format
            )));
        }
        let file = format!("{}.{}", self.name, self.format);
        if file.len() + "disk/".len() > 100 {
            return Err(refused(format!("disk file name {file:?} is longer than 95 bytes")));
        }
        Ok(file)
    }
}

/// What [`push_container_disk`] left at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDisk {
    pub manifest: Digest,
    pub config: Digest,
    pub layer: Digest,
    pub layer_size: u64,
    /// `false` when the same disk was at `repo:tag` already (nothing was sent).
    pub pushed: bool,
}

fn octal(field: &mut [u8], value: u64) {
    // `width - 1` octal digits and a NUL.
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    field[width] = 0;
}

/// One ustar header block.
fn header(name: &str, mode: u64, size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], mode);
    octal(&mut h[108..116], QEMU_ID);
    octal(&mut h[116..124], QEMU_ID);
    if size < 0o77777777777 {
        octal(&mut h[124..136], size);
    } else {
        // base-256: the high bit of the first byte set, the value big-endian.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}");
    h[148..154].copy_from_slice(text.as_bytes());
    h[154] = 0;
    h[155] = b' ';
    h
}

/// The tar around the disk's bytes: what comes before (the `disk/` directory and the file's
/// header), what comes after (padding and the two zero blocks that end an archive), and the
/// whole archive's size.
fn tar_frame(file: &str, size: u64) -> (Bytes, Bytes, u64) {
    let mut prefix = Vec::with_capacity(1024);
    prefix.extend_from_slice(&header("disk/", DIR_MODE, 0, b'5'));
    prefix.extend_from_slice(&header(&format!("disk/{file}"), FILE_MODE, size, b'0'));
    let pad = (BLOCK - size % BLOCK) % BLOCK;
    let suffix = vec![0u8; (pad + 2 * BLOCK) as usize];
    let total = prefix.len() as u64 + size + suffix.len() as u64;
    (Bytes::from(prefix), Bytes::from(suffix), total)
}

/// What a tar header says of its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub name: String,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub typeflag: u8,
}

/// Read a header block back; `None` when it is not a valid ustar header (magic or checksum
/// wrong).
pub fn parse_header(h: &[u8]) -> Option<TarEntry> {
    if h.len() < 512 || &h[257..263] != b"ustar\0" {
        return None;
    }
    let num = |f: &[u8]| -> Option<u64> {
        if f[0] & 0x80 != 0 {
            return Some(f[1..].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)));
        }
        let text = std::str::from_utf8(f).ok()?;
        let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
        u64::from_str_radix(text, 8).ok()
    };
    let stored = num(&h[148..156])?;
    let sum: u64 = h[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) })
        .sum();
    if sum != stored {
        return None;
    }
    let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
    let name = String::from_utf8(h[..name_end].to_vec()).ok()?;
    Some(TarEntry {
        name,
        mode: num(&h[100..108])?,
        uid: num(&h[108..116])?,
        gid: num(&h[116..124])?,
        size: num(&h[124..136])?,
        typeflag: h[156],
    })
}

/// Is the containerDisk of `disk` at `repo:tag` already, whole? Its manifest names the disk,
/// and its config and layer are there with their sizes.
async fn already_there(
    dst: &RegistryClient,
    repo: &str,
    tag: &str,
    disk: &DiskImage,
) -> AdapterResult<Option<ContainerDisk>> {
    let Some((_, digest, body)) = dst.manifest(repo, tag).await? else {
        return Ok(None);
    };
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Ok(None);
    };
    if m["annotations"][DISK_DIGEST_ANNOTATION].as_str() != Some(disk.digest.as_str()) {
        return Ok(None);
    }
    let desc = |v: &serde_json::Value| -> Option<(Digest, u64)> {
        Some((Digest::parse(v["digest"].as_str()?).ok()?, v["size"].as_u64()?))
    };
    let (Some((config, config_size)), Some((layer, layer_size))) = (desc(&m["config"]), desc(&m["layers"][0])) else {
        return Ok(None);
    };
    if dst.blob_size(repo, &config).await? != Some(config_size)
        || dst.blob_size(repo, &layer).await? != Some(layer_size)
    {
        return Ok(None);
    }
    Ok(Some(ContainerDisk {
        manifest: digest,
        config,
        layer,
        layer_size,
        pushed: false,
    }))
}

/// Push `disk` from `src` as a KubeVirt containerDisk to `repo:tag`; `progress` gets the
/// running total of layer bytes sent. The layer is streamed while hashed, never held whole.
/// Afterwards the layer's size and its tar headers (read back from the target) and the
/// manifest are checked; a mismatch fails with kind `Other` ("verification failed: …").
pub async fn push_container_disk(
    src: &dyn ImageSource,
    dst: &RegistryClient,
    repo: &str,
    tag: &str,
    disk: &DiskImage,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> AdapterResult<ContainerDisk> {
    let name = dst.target_name(repo)?;
    parse_tag(tag).map_err(|e| refused(e.to_string()))?;
    let file = disk.file_name()?;
    if let Some(done) = already_there(dst, repo, tag, disk).await? {
        return Ok(done);
    }

    let (got, stream) = src.blob(&disk.digest).await?;
    if got != disk.size {
        return Err(other(format!(
            "the source's disk {} is {got} bytes, not {}",
            disk.digest, disk.size
        )));
    }
    let (prefix, suffix, total) = tar_frame(&file, disk.size);
    let header_len = prefix.len();
    let archive: ByteStream = Box::pin(
        futures::stream::once(async move { Ok::<Bytes, std::io::Error>(prefix) })
            .chain(stream)
            .chain(futures::stream::once(async move { Ok(suffix) })),
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let upload = upload_hashed(dst, &name, total, archive, tx);
    tokio::pin!(upload);
    let mut sent = 0u64;
    let layer = loop {
        tokio::select! {
            done = &mut upload => break done,
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
    let layer = layer?;

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.as_str()]},
    }))
    .map_err(|e| other(e.to_string()))?;
    let config_digest = Digest::sha256(&config);
    let config_size = config.len() as u64;
    if dst.blob_size(repo, &config_digest).await? != Some(config_size) {
        let body = Bytes::from(config);
        let one: ByteStream = Box::pin(futures::stream::once(async move { Ok(body) }));
        dst.push_blob(repo, &config_digest, config_size, one).await?;
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest.as_str(), "size": config_size},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer.as_str(), "size": total}],
        "annotations": {
            DISK_DIGEST_ANNOTATION: disk.digest.as_str(),
            "org.opencontainers.image.title": file.as_str(),
        },
    }))
    .map_err(|e| other(e.to_string()))?;
    let manifest_digest = dst.put_manifest(repo, tag, OCI_MANIFEST, Bytes::from(manifest)).await?;

    // Verify at the target: the manifest by tag, the layer's size and its headers.
    let mut problems = Vec::new();
    match dst.manifest(repo, tag).await? {
        Some((_, d, _)) if d == manifest_digest => {}
        Some((_, d, _)) => problems.push(format!("tag {tag} is {d}, not {manifest_digest}")),
        None => problems.push(format!("tag {tag} is missing")),
    }
    if dst.blob_size(repo, &config_digest).await? != Some(config_size) {
        problems.push(format!("config {config_digest} is missing or of another size"));
    }
    match dst.blob_size(repo, &layer).await? {
        Some(s) if s == total => {}
        other_size => problems.push(format!("layer {layer} has size {other_size:?}, not {total}")),
    }
    match dst.blob_prefix(repo, &layer, header_len).await? {
        Some(h) if h.len() == header_len => {
            let dir = parse_header(&h[..512]);
            let entry = parse_header(&h[512..1024]);
            let entry_of = |name: String, mode, size, typeflag| TarEntry {
                name,
                mode,
                uid: QEMU_ID,
                gid: QEMU_ID,
                size,
                typeflag,
            };
            let want_dir = Some(entry_of("disk/".to_string(), DIR_MODE, 0, b'5'));
            let want_file = Some(entry_of(format!("disk/{file}"), FILE_MODE, disk.size, b'0'));
            if dir != want_dir || entry != want_file {
                problems.push(format!("the layer's tar headers read back as {dir:?} and {entry:?}"));
            }
        }
        Some(h) => problems.push(format!("only {} bytes of the layer's headers read back", h.len())),
        None => problems.push(format!("layer {layer} cannot be read")),
    }
    if !problems.is_empty() {
        return Err(other(format!(
            "verification failed: {name}:{tag}: {}",
            problems.join("; ")
        )));
    }
    Ok(ContainerDisk {
        manifest: manifest_digest,
        config: config_digest,
        layer,
        layer_size: total,
        pushed: true,
    })
}

/// Upload `total` bytes of `body` to `name` whose digest is not known in advance: `POST`,
/// one streamed `PATCH` (`Content-Range: 0-<total-1>`) hashing as it goes, then
/// `PUT ?digest=` with the hash. Returns the digest.
async fn upload_hashed(
    dst: &RegistryClient,
    name: &str,
    total: u64,
    body: ByteStream,
    progress: mpsc::UnboundedSender<u64>,
) -> AdapterResult<Digest> {
    let location = dst.start_upload(name).await?;
    let hasher = Arc::new(Mutex::new(sha2::Sha256::new()));
    let h = hasher.clone();
    let hashed: ByteStream = Box::pin(body.map(move |item| {
        if let (Ok(chunk), Ok(mut h)) = (&item, h.lock()) {
            h.update(chunk);
        }
        item
    }));
    let moved = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(Mutex::new(None));
    let outgoing = Outgoing {
        inner: hashed,
        expected: total,
        sent: 0,
        moved: moved.clone(),
        progress: Some(progress),
        broken: broken.clone(),
        done: false,
    };
    let what = format!("PATCH containerDisk layer to {name}");
    let scopes = Scopes::repository(name, &["pull", "push"]);
    let range = if total == 0 {
        "0-0".to_string()
    } else {
        format!("0-{}", total - 1)
    };
    let mut call = Call::new(Method::PATCH, location.clone(), scopes.clone(), &*what)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))
        .header(CONTENT_LENGTH, HeaderValue::from(total))
        .header(
            reqwest::header::CONTENT_RANGE,
            HeaderValue::from_str(&range).map_err(|e| other(e.to_string()))?,
        );
    call.body = CallBody::Stream(Some(reqwest::Body::wrap_stream(outgoing)), moved);
    let result = dst.send(call).await;
    if let Some(why) = broken.lock().ok().and_then(|b| b.clone()) {
        dst.cancel_upload(name, location).await;
        return Err(other(format!("{what}: {why}")));
    }
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            dst.cancel_upload(name, location).await;
            return Err(e);
        }
    };
    if resp.status() != StatusCode::ACCEPTED {
        let e = error_of(resp, &what).await;
        dst.cancel_upload(name, location).await;
        return Err(e);
    }
    let next = header_str(&resp, LOCATION.as_str())
        .and_then(|l| location.join(l).ok())
        .unwrap_or(location);
    let digest = {
        let h = hasher.lock().map_err(|_| other("the layer hash was lost"))?;
        Digest::sha256_of_hex(&hex::encode(h.clone().finalize()))
    };
    let mut put = next.clone();
    put.query_pairs_mut().append_pair("digest", digest.as_str());
    let what = format!("PUT containerDisk layer {digest} to {name}");
    let resp = dst
        .send(Call::new(Method::PUT, put, scopes, &*what).header(CONTENT_LENGTH, HeaderValue::from(0u64)))
        .await?;
    if !resp.status().is_success() {
        let e = error_of(resp, &what).await;
        dst.cancel_upload(name, next).await;
        return Err(e);
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = header("disk/a.qcow2", FILE_MODE, 1234, b'0');
        assert_eq!(
            parse_header(&h),
            Some(TarEntry {
                name: "disk/a.qcow2".to_string(),
                mode: 0o440,
                uid: 107,
                gid: 107,
                size: 1234,
                typeflag: b'0'
            })
        );
        let big = 20 * 1024 * 1024 * 1024u64;
        let h = header("disk/b.raw", FILE_MODE, big, b'0');
        assert_eq!(parse_header(&h).map(|p| p.size), Some(big));
        let mut bad = h;
        bad[0] ^= 1;
        assert_eq!(parse_header(&bad), None, "checksum");
        let (prefix, suffix, total) = tar_frame("a.raw", 513);
        assert_eq!(prefix.len(), 1024);
        assert_eq!(suffix.len(), 511 + 1024);
        assert_eq!(total % 512, 0);
        assert_eq!(total, 1024 + 513 + 511 + 1024);
    }

    #[test]
    fn file_names() {
        let d = |name: &str, format: &str| DiskImage {
            digest: Digest::sha256(b""),
            size: 0,
            format: format.into(),
            name: name.into(),
        };
        assert_eq!(
            d("cirros-0.6", "qcow2").file_name().ok().as_deref(),
            Some("cirros-0.6.qcow2")
        );
        let long = "x".repeat(95);
        for (n, f) in [
            ("../x", "raw"),
            (".hidden", "raw"),
            ("a/b", "raw"),
            ("a", "q.cow"),
            ("", "raw"),
            (long.as_str(), "raw"),
        ] {
            assert!(d(n, f).file_name().is_err(), "{n}.{f}");
        }
    }
}
