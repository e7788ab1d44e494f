//! VNF package onboarding (ETSI SOL004 CSAR). The upload is streamed to a temporary file (zip
//! needs random access), opened and verified by [`super::csar`] (hostile archives refused,
//! every manifest hash checked), then each software image inside it is streamed out of the
//! zip through the VM image ingestion (three hashes, format inspection) and compared with what
//! the VNFD says about it. The package is stored as an OCI artifact whose config is the
//! package description (metadata, files, signatures, images, mismatches) and whose one layer
//! is the CSAR as uploaded; the images are linked to it in the catalog.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::catalog::{check_label, repository_of, ANN, ANN_TITLE, CSAR_LAYER, VNF_PACKAGE_ARTIFACT};
use super::csar;
use super::ingest::{ImageMeta, Origin};
use super::manifest::OCI_MANIFEST;
use super::names::{parse_tag, Digest, Reference, RepoName};
use super::Registry;
use crate::auth::{Action, Principal, Resource};
use crate::error::{Error, Result};
use crate::storage::catalog::{EntryRecord, LinkRecord};
use crate::storage::now_ms;

/// Media type of a VNF package's config: the package description as JSON.
pub const PACKAGE_CONFIG: &str = "application/vnd.image-manager.vnf-package.config.v1+json";

/// Parameters of `POST /api/v1/packages`; name and version default to the package's
/// `vnf_product_name` and `vnf_package_version`.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PackageParams {
    /// Namespace (default: the configured default namespace).
    pub namespace: Option<String>,
    /// Entry name (default: the manifest's vnf_product_name, made a valid name).
    pub name: Option<String>,
    /// Entry version (default: the manifest's vnf_package_version, made a valid tag).
    pub version: Option<String>,
    pub description: Option<String>,
    /// `key=value`; repeat for several.
    pub label: Option<Vec<String>>,
    /// File name recorded with the layer.
    pub file_name: Option<String>,
}

impl PackageParams {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self> {
        let mut p = PackageParams::default();
        for (k, v) in pairs {
            let some = Some(v.clone()).filter(|s| !s.is_empty());
            match k.as_str() {
                "namespace" => p.namespace = some,
                "name" => p.name = some,
                "version" => p.version = some,
                "description" => p.description = some,
                "file_name" => p.file_name = some,
                "label" => {
                    let (key, val) = v
                        .split_once('=')
                        .ok_or_else(|| Error::BadRequest(format!("label {v:?}: key=value")))?;
                    check_label(key, val)?;
                    p.label.get_or_insert_with(Vec::new).push(v.clone());
                }
                other => return Err(Error::BadRequest(format!("unknown query parameter {other:?}"))),
            }
        }
        Ok(p)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        self.label
            .iter()
            .flatten()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    }
}

/// A string made into a repository path component: lower case, `[a-z0-9._-]`, starting and
/// ending with a letter or digit.
fn name_component(s: &str) -> String {
    let mapped: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut out = String::new();
    let mut last_sep = false;
    for c in trimmed.chars() {
        let sep = !c.is_ascii_alphanumeric();
        if sep && last_sep {
            continue;
        }
        out.push(c);
        last_sep = sep;
    }
    out.chars().take(100).collect()
}

/// A string made into a tag.
fn tag_of(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    match t.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => t,
        _ => format!("v{}", t.chars().take(127).collect::<String>()),
    }
}

fn refused(e: csar::CsarError) -> Error {
    match e {
        csar::CsarError::Io(io) => Error::Storage(crate::storage::StoreError::Io(io)),
        csar::CsarError::ManifestVerification(list) => Error::Refused {
            reason: format!(
                "the VNF package was refused: {} file(s) failed manifest verification",
                list.len()
            ),
            problems: list.iter().map(ToString::to_string).collect(),
        },
        other => Error::Refused {
            reason: format!("the VNF package was refused: {other}"),
            problems: vec![other.to_string()],
        },
    }
}

/// A temporary file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Registry {
    /// Onboard a VNF package as `p`; returns the package's entry.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn onboard_package<S, E>(&self, p: &Principal, params: &PackageParams, body: S) -> Result<EntryRecord>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let ns = params
            .namespace
            .clone()
            .unwrap_or_else(|| self.catalog.default_namespace.clone());
        let ns_name = RepoName::parse(&ns)?;
        if ns_name.as_str().contains('/') {
            return Err(Error::NameInvalid(format!("namespace {ns:?} must be one path segment")));
        }
        self.auth
            .authorize(&*self.accounts, p, Action::Push, Resource::Namespace(&ns))
            .await?;
        if params.description.as_ref().is_some_and(|d| d.chars().count() > 4096) {
            return Err(Error::BadRequest("description: at most 4096 characters".into()));
        }
        let (tmp, sha256, size) = self.spool(body).await?;
        let limits = csar::Limits {
            max_entries: self.catalog.max_package_entries,
            max_total_uncompressed: self.catalog.max_package_uncompressed_bytes,
            max_ratio: self.catalog.max_package_ratio,
            ..csar::Limits::default()
        };
        let path = tmp.0.clone();
        let lim = limits.clone();
        let package = tokio::task::spawn_blocking(move || csar::open(&path, &lim))
            .await
            .map_err(|_| Error::Internal("package reader failed".into()))?
            .map_err(refused)?;

        let name = match params.name.as_deref() {
            Some(n) => n.to_string(),
            None => name_component(package.metadata.vnf_product_name.as_deref().unwrap_or_default()),
        };
        let version = match params.version.as_deref() {
            Some(v) => v.to_string(),
            None => tag_of(package.metadata.vnf_package_version.as_deref().unwrap_or_default()),
        };
        if name.is_empty() || version.is_empty() || version == "v" {
            return Err(Error::BadRequest(
                "name and version are required: give them, or a manifest with vnf_product_name and vnf_package_version"
                    .into(),
            ));
        }
        let repo = RepoName::parse(&repository_of(&ns, &name))?;
        let tag = parse_tag(&version)?.to_string();
        if self.meta.manifest_by_tag(repo.as_str(), &tag, false).await?.is_some() {
            return Err(Error::Conflict(format!(
                "{repo}:{tag} exists: versions are immutable, onboard under a new version"
            )));
        }
        let claim = ImageMeta {
            vendor: package.metadata.vnf_provider_id.clone(),
            description: params.description.clone(),
            labels: params.labels(),
            ..Default::default()
        };
        self.claim_version(
            &repo,
            &tag,
            "vnf-package",
            "upload",
            &claim,
            json!({"upload": "direct"}),
        )
        .await?;
        let mut created: Vec<EntryRecord> = Vec::new();
        let done = self
            .onboard_claimed(
                p,
                params,
                &package,
                &tmp,
                &sha256,
                size,
                &limits,
                (&ns, &name, &version),
                &mut created,
            )
            .await;
        if done.is_err() {
            // Nothing of a refused package stays: the images it brought in go with it.
            for e in &created {
                self.meta.tag_delete(&e.repository, &e.tag).await?;
                self.entries.catalog_delete(&e.id).await?;
            }
            self.claim_status(repo.as_str(), &tag, None).await?;
            self.events.notify_one();
        }
        done
    }

    #[allow(clippy::too_many_arguments)]
    async fn onboard_claimed(
        &self,
        p: &Principal,
        params: &PackageParams,
        package: &csar::Package,
        tmp: &TempFile,
        sha256: &Digest,
        size: u64,
        limits: &csar::Limits,
        (ns, name, version): (&str, &str, &str),
        created: &mut Vec<EntryRecord>,
    ) -> Result<EntryRecord> {
        let (ns, name, version) = (ns.to_string(), name.to_string(), version.to_string());
        let repo = RepoName::parse(&repository_of(&ns, &name))?;
        let tag = parse_tag(&version)?.to_string();

        // The software images inside the package, each through the VM image ingestion.
        let pkg_ref = format!("{name}:{version}");
        let mut images = Vec::new();
        let mut links = Vec::new();
        for (i, sw) in package.software_images.iter().enumerate() {
            let mut info = serde_json::to_value(sw).unwrap_or_else(|_| json!({}));
            let file = match (&sw.file, sw.in_package) {
                (Some(f), true) => f.clone(),
                _ => {
                    info["reference"] = json!(true);
                    images.push(info);
                    continue;
                }
            };
            let base = file.rsplit('/').next().unwrap_or(&file);
            let stem = base.split('.').next().unwrap_or(base);
            let img_name = name_component(sw.name.as_deref().unwrap_or(stem));
            let img_name = if img_name.is_empty() {
                format!("image-{i}")
            } else {
                img_name
            };
            let meta = ImageMeta {
                namespace: Some(ns.clone()),
                name: format!("{name}/{img_name}"),
                version: tag_of(sw.version.as_deref().unwrap_or(&version)),
                disk_format: None,
                container_format: sw
                    .container_format
                    .clone()
                    .filter(|c| super::ingest::CONTAINER_FORMATS.contains(&c.as_str())),
                min_disk: sw.min_disk,
                min_ram: sw.min_ram,
                os_type: sw.operating_system.clone(),
                file_name: Some(base.to_string()),
                description: Some(format!("software image {} of VNF package {pkg_ref}", sw.node)),
                ..Default::default()
            };
            let (entry, new) = self.package_image(p, &tmp.0, &file, limits, &meta, &pkg_ref).await?;
            if new {
                created.push(entry.clone());
            }
            let mismatches = compare(sw, &entry);
            if !mismatches.is_empty() {
                self.flag_mismatches(&entry, &mismatches).await?;
            }
            info["entry_id"] = json!(entry.id);
            info["reference"] = json!(false);
            info["mismatches"] = json!(mismatches);
            links.push((entry.id.clone(), file.clone()));
            images.push(info);
        }

        // The package itself: description as config, the CSAR as the layer.
        let mut description = serde_json::to_value(package).unwrap_or_else(|_| json!({}));
        description["software_images"] = json!(images);
        description["certificates"] = json!(self.certificates(&tmp.0, package, limits).await);
        let config = serde_json::to_vec(&description).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        let config_digest = Digest::sha256(&config);
        let config_len = config.len();
        self.put_blob(
            &repo,
            &config_digest,
            futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(config))]),
        )
        .await?;
        let file = tokio::fs::File::open(&tmp.0)
            .await
            .map_err(crate::storage::StoreError::Io)?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        let staged = self.stage_blob(stream, None).await?;
        if staged.digest.as_str() != sha256.as_str() {
            self.discard_staged(&staged).await;
            return Err(Error::Internal("the spooled package changed while it was read".into()));
        }
        self.commit_staged(&repo, &staged).await?;

        let m = &package.metadata;
        let sha256 = sha256.clone();
        let mut ann = Map::new();
        for (k, v) in [
            ("provider", &m.vnf_provider_id),
            ("product-name", &m.vnf_product_name),
            ("package-version", &m.vnf_package_version),
            ("release-date-time", &m.vnf_release_date_time),
            ("vnfd-id", &m.vnfd_id),
            ("software-version", &m.vnf_software_version),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                ann.insert(format!("{ANN}{k}"), json!(v));
            }
        }
        ann.insert(format!("{ANN}entry-definitions"), json!(package.entry_definitions));
        ann.insert(
            "org.opencontainers.image.created".into(),
            json!(crate::storage::rfc3339(now_ms())),
        );
        ann.insert("org.opencontainers.image.version".into(), json!(version));
        if let Some(v) = m.vnf_provider_id.as_ref().filter(|v| !v.is_empty()) {
            ann.insert("org.opencontainers.image.vendor".into(), json!(v));
        }
        let title = params
            .file_name
            .clone()
            .unwrap_or_else(|| format!("{}-{version}.csar", name.replace('/', "-")));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": VNF_PACKAGE_ARTIFACT,
            "config": {"mediaType": PACKAGE_CONFIG, "digest": config_digest.to_string(), "size": config_len},
            "layers": [{
                "mediaType": CSAR_LAYER,
                "digest": sha256.to_string(),
                "size": size,
                "annotations": {ANN_TITLE: title},
            }],
            "annotations": Value::Object(ann),
        });
        let bytes = serde_json::to_vec(&manifest).map_err(|e| Error::ManifestInvalid(e.to_string()))?;
        self.put_manifest(&repo, &Reference::Tag(tag.clone()), OCI_MANIFEST, bytes, &[])
            .await?;
        let entry = self
            .derive_entry(repo.as_str(), &tag, "upload")
            .await?
            .ok_or_else(|| Error::Conflict(format!("{repo}:{tag} was deleted while it was being onboarded")))?;
        let entry = self
            .record_entry(entry, params.labels(), params.description.clone())
            .await?;
        for (child, path) in links {
            self.entries
                .catalog_link(&LinkRecord {
                    parent: entry.id.clone(),
                    child,
                    kind: "contains".into(),
                    path: Some(path),
                })
                .await?;
        }
        Ok(entry)
    }

    /// Write the upload to a temporary file, hashing it; refuse it past the size limit.
    async fn spool<S, E>(&self, mut body: S) -> Result<(TempFile, Digest, u64)>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let path = std::env::temp_dir().join(format!("image-manager-package-{}", uuid::Uuid::new_v4().simple()));
        let tmp = TempFile(path.clone());
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(crate::storage::StoreError::Io)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::Body(format!("reading request body: {e}")))?;
            size += chunk.len() as u64;
            if size > self.catalog.max_package_bytes {
                return Err(Error::TooLarge(format!(
                    "VNF packages are limited to {} bytes",
                    self.catalog.max_package_bytes
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(crate::storage::StoreError::Io)?;
        }
        file.flush().await.map_err(crate::storage::StoreError::Io)?;
        if size == 0 {
            return Err(Error::BadRequest(
                "the request body is empty: send the CSAR as the body".into(),
            ));
        }
        Ok((tmp, Digest::sha256_of_hex(&hex::encode(hasher.finalize())), size))
    }

    /// Ingest the image at `file` inside the package; an identical image already in the
    /// catalog under that name and version is reused.
    async fn package_image(
        &self,
        p: &Principal,
        zip: &std::path::Path,
        file: &str,
        limits: &csar::Limits,
        meta: &ImageMeta,
        pkg_ref: &str,
    ) -> Result<(EntryRecord, bool)> {
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Bytes, String>>(8);
        let (zip_path, name, lim) = (zip.to_path_buf(), file.to_string(), limits.clone());
        let reader = tokio::task::spawn_blocking(move || {
            let tx_err = tx.clone();
            let res = csar::with_entry(&zip_path, &name, &lim, |r| {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    if tx.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        return Err(std::io::Error::other("the image ingestion stopped"));
                    }
                }
            });
            if let Err(e) = &res {
                let _ = tx_err.blocking_send(Err(e.to_string()));
            }
            res
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let origin = Origin {
            source: "package",
            package: Some(pkg_ref.to_string()),
        };
        let ingested = self.ingest_vm_image(p, meta, stream, origin).await;
        let read = reader
            .await
            .map_err(|_| Error::Internal("package reader failed".into()))?;
        match ingested {
            Ok(e) => match read {
                Ok(()) => Ok((e, true)),
                Err(err) => {
                    // The entry's bytes failed the zip's own checks (CRC, size) after they were
                    // stored: the image goes again.
                    self.meta.tag_delete(&e.repository, &e.tag).await?;
                    self.entries.catalog_delete(&e.id).await?;
                    Err(refused(err))
                }
            },
            // Reading stopped because the ingestion stopped: the ingestion's reason counts.
            Err(Error::Body(_)) if read.is_err() => Err(refused(
                read.err().unwrap_or(csar::CsarError::EntryNotFound(file.into())),
            )),
            Err(Error::Conflict(msg)) => {
                // The same name and version exists: reuse it if it is these very bytes.
                let repo = repository_of(meta.namespace.as_deref().unwrap_or_default(), &meta.name);
                let existing = self.entries.catalog_by_ref(&repo, &meta.version).await?;
                let theirs = existing.as_ref().and_then(zip_digest_of);
                let ours = match theirs {
                    Some(_) => Some(entry_sha256(zip, file, limits).await?),
                    None => None,
                };
                match existing {
                    Some(e) if theirs.is_some() && theirs == ours => Ok((e, false)),
                    _ => Err(Error::Conflict(format!(
                        "software image {file}: {msg} (with other content)"
                    ))),
                }
            }
            Err(Error::Refused { reason, problems }) => Err(Error::Refused {
                reason: format!("the VNF package was refused: software image {file}: {reason}"),
                problems: problems.into_iter().map(|p| format!("{file}: {p}")).collect(),
            }),
            Err(e) => Err(e),
        }
    }

    async fn flag_mismatches(&self, entry: &EntryRecord, mismatches: &[String]) -> Result<()> {
        for _ in 0..5 {
            let Some(mut e) = self.entries.catalog_get(&entry.id).await? else {
                return Ok(());
            };
            let seen = e.updated_at;
            if let Some(vm) = e.details.get_mut("vm").and_then(Value::as_object_mut) {
                vm.insert("vnfd_mismatches".into(), json!(mismatches));
            }
            e.labels.insert("vnfd-mismatch".into(), "true".into());
            e.updated_at = now_ms().max(seen + 1);
            if self.entries.catalog_save(&e, seen).await? {
                return Ok(());
            }
        }
        Err(Error::Conflict(format!(
            "entry {} kept changing; onboard again",
            entry.id
        )))
    }

    /// Certificate files of the package (PEM text, at most 64 KiB each).
    async fn certificates(&self, zip: &std::path::Path, package: &csar::Package, limits: &csar::Limits) -> Vec<Value> {
        let mut out = Vec::new();
        let mut names: Vec<String> = package.signatures.clone();
        if let Some(c) = &package.certificate_path {
            if !names.contains(c) {
                names.push(c.clone());
            }
        }
        for name in names {
            let (zip, n, lim) = (zip.to_path_buf(), name.clone(), limits.clone());
            let text = tokio::task::spawn_blocking(move || {
                csar::with_entry(&zip, &n, &lim, |r| {
                    let mut buf = Vec::new();
                    r.take(64 * 1024 + 1).read_to_end(&mut buf)?;
                    Ok(buf)
                })
            })
            .await;
            let content = match text {
                Ok(Ok(b)) if b.len() <= 64 * 1024 => String::from_utf8(b).ok(),
                _ => None,
            };
            out.push(json!({"path": name, "content": content}));
        }
        out
    }
}

/// sha256 (hex) of an entry of the package.
async fn entry_sha256(zip: &std::path::Path, file: &str, limits: &csar::Limits) -> Result<String> {
    let (zip, name, lim) = (zip.to_path_buf(), file.to_string(), limits.clone());
    tokio::task::spawn_blocking(move || {
        csar::with_entry(&zip, &name, &lim, |r| {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(hex::encode(h.finalize()));
                }
                h.update(&buf[..n]);
            }
        })
    })
    .await
    .map_err(|_| Error::Internal("package reader failed".into()))?
    .map_err(refused)
}

/// The sha256 (hex) recorded for a VM image entry's bytes.
fn zip_digest_of(e: &EntryRecord) -> Option<String> {
    e.details
        .pointer("/vm/checksums/sha256")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// What the VNFD says about an image and what the image is, where they differ.
fn compare(sw: &csar::SwImage, e: &EntryRecord) -> Vec<String> {
    let mut out = Vec::new();
    let vm = e.details.get("vm").cloned().unwrap_or(Value::Null);
    let actual = |k: &str| vm.get(k).cloned().unwrap_or(Value::Null);
    if let Some((algo, hash)) = &sw.checksum {
        let key = match algo.as_str() {
            "sha-256" | "sha256" => Some("sha256"),
            "sha-512" | "sha512" => Some("sha512"),
            "md5" => Some("md5"),
            _ => None,
        };
        match key {
            Some(k) => {
                let have = vm
                    .pointer(&format!("/checksums/{k}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !have.eq_ignore_ascii_case(hash) {
                    out.push(format!("checksum: VNFD says {algo} {hash}, the image has {have}"));
                }
            }
            None => out.push(format!(
                "checksum: algorithm {algo:?} cannot be compared (sha-256, sha-512, md5)"
            )),
        }
    }
    if let Some(df) = &sw.disk_format {
        let have = actual("disk_format");
        if have.as_str().is_some_and(|h| !h.eq_ignore_ascii_case(df)) {
            out.push(format!(
                "disk_format: VNFD says {df}, the image is {}",
                have.as_str().unwrap_or_default()
            ));
        }
    }
    if let Some(cf) = &sw.container_format {
        let have = actual("container_format");
        if have.as_str().is_some_and(|h| !h.eq_ignore_ascii_case(cf)) {
            out.push(format!(
                "container_format: VNFD says {cf}, recorded {}",
                have.as_str().unwrap_or_default()
            ));
        }
    }
    if let Some(size) = sw.size {
        let file = actual("file_size").as_u64().unwrap_or(0);
        if size != file {
            out.push(format!("size: VNFD says {size} bytes, the image file is {file} bytes"));
        }
    }
    if let Some(min_disk) = sw.min_disk {
        let virt = actual("virtual_size").as_u64().unwrap_or(0);
        if min_disk < virt {
            out.push(format!(
                "min_disk: VNFD says {min_disk} bytes, less than the image's virtual size of {virt} bytes"
            ));
        }
    }
    out
}

use std::io::Read as _;
