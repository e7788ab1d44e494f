//! The zip archive, checked against hostile content (unsafe names, duplicates, encryption, links and
//! special files, zip bombs, overlapping entries, entries inflating past their declared size), with
//! bounded reads; and the resource [`Limits`].

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom};

use serde::Serialize;
use zip::ZipArchive;

use super::manifest::HashAlgo;
use super::CsarError;

/// Resource limits applied while opening a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files and directories) the archive may hold.
    pub max_entries: usize,
    /// Most bytes all entries may inflate to, added up (declared sizes, which are enforced
    /// while reading).
    pub max_total_uncompressed: u64,
    /// Highest uncompressed/compressed ratio of one entry, for entries larger than
    /// [`Limits::ratio_min_size`].
    pub max_ratio: u64,
    /// Entries whose declared uncompressed size is at most this many bytes are exempt from the
    /// ratio check (small text files legitimately compress very well).
    pub ratio_min_size: u64,
    /// Most bytes of a text file read into memory: `TOSCA.meta`, the manifest, VNFD YAML files.
    pub max_text_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 10_000,
            max_total_uncompressed: 64 << 30,
            max_ratio: 100,
            ratio_min_size: 1 << 20,
            max_text_bytes: 16 << 20,
        }
    }
}

/// One file (non-directory) entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    pub path: String,
    /// Declared uncompressed size (enforced while reading).
    pub size: u64,
    pub compressed_size: u64,
}

pub(super) struct Archive<R> {
    zip: ZipArchive<R>,
    pub(super) files: Vec<FileEntry>,
    /// File name -> (zip index, declared size).
    index: HashMap<String, (usize, u64)>,
}

impl<R: Read + Seek> Archive<R> {
    pub(super) fn open(mut reader: R, limits: &Limits) -> Result<Archive<R>, CsarError> {
        precheck_entry_count(&mut reader, limits)?;
        reader.seek(SeekFrom::Start(0))?;
        let mut zip = ZipArchive::new(reader).map_err(|e| CsarError::NotZip(e.to_string()))?;
        if zip.offset() != 0 {
            return Err(CsarError::NotZip(format!(
                "{} bytes of unexpected data precede the archive",
                zip.offset()
            )));
        }
        if zip.len() > limits.max_entries {
            return Err(CsarError::TooManyEntries {
                count: zip.len() as u64,
                limit: limits.max_entries,
            });
        }
        if zip.has_duplicate_names() {
            let start = zip.central_directory_start();
            let name = find_duplicate_name(&mut zip.into_inner(), start, limits.max_entries)
                .unwrap_or_else(|| "<unknown>".to_string());
            return Err(CsarError::DuplicateEntry(name));
        }

        let mut files = Vec::new();
        let mut index = HashMap::new();
        let mut total: u64 = 0;
        for i in 0..zip.len() {
            let entry = zip.by_index_data(i).map_err(|e| CsarError::NotZip(e.to_string()))?;
            let name = match entry.name() {
                Ok(n) => n.into_owned(),
                Err(e) => return Err(CsarError::NotZip(e.to_string())),
            };
            if entry.name_raw().contains(&0) {
                return Err(CsarError::UnsafeEntryName {
                    name,
                    reason: "contains a NUL byte",
                });
            }
            if let Err(reason) = check_entry_name(&name) {
                return Err(CsarError::UnsafeEntryName { name, reason });
            }
            if entry.encrypted() {
                return Err(CsarError::EncryptedEntry(name));
            }
            let is_dir = name.ends_with('/');
            if let Some(mode) = entry.unix_mode() {
                match mode & 0o170000 {
                    0 | 0o100000 | 0o040000 => {}
                    0o120000 => return Err(CsarError::SymlinkEntry(name)),
                    _ => return Err(CsarError::SpecialFileEntry(name)),
                }
            }
            let method = entry.compression();
            if !zip::SUPPORTED_COMPRESSION_METHODS.contains(&method) {
                return Err(CsarError::UnsupportedCompression {
                    path: name,
                    method: format!("{method:?}"),
                });
            }
            let size = entry.size();
            let compressed = entry.compressed_size();
            if !is_dir && size > limits.ratio_min_size && size / limits.max_ratio.max(1) > compressed {
                return Err(CsarError::CompressionRatioExceeded {
                    path: name,
                    size,
                    compressed,
                    limit: limits.max_ratio,
                });
            }
            total = total.saturating_add(size);
            if total > limits.max_total_uncompressed {
                return Err(CsarError::TotalSizeExceeded {
                    limit: limits.max_total_uncompressed,
                });
            }
            if !is_dir {
                index.insert(name.clone(), (i, size));
                files.push(FileEntry {
                    path: name,
                    size,
                    compressed_size: compressed,
                });
            }
        }
        if zip
            .has_overlapping_files()
            .map_err(|e| CsarError::NotZip(e.to_string()))?
        {
            return Err(CsarError::OverlappingEntries);
        }
        Ok(Archive { zip, files, index })
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// A file, or a directory holding at least one file.
    pub(super) fn contains_file_or_dir(&self, name: &str) -> bool {
        if self.contains(name) {
            return true;
        }
        let prefix = format!("{}/", name.trim_end_matches('/'));
        self.files.iter().any(|f| f.path.starts_with(&prefix))
    }

    pub(super) fn stream<T, F>(&mut self, name: &str, f: F) -> Result<T, CsarError>
    where
        F: FnOnce(&mut dyn Read) -> io::Result<T>,
    {
        let (idx, declared) = *self
            .index
            .get(name)
            .ok_or_else(|| CsarError::EntryNotFound(name.to_string()))?;
        let mut zf = self.zip.by_index(idx).map_err(|e| CsarError::CorruptEntry {
            path: name.to_string(),
            reason: e.to_string(),
        })?;
        let mut guard = GuardedReader {
            inner: &mut zf,
            declared,
            read: 0,
            failure: None,
        };
        let result = match f(&mut guard) {
            Ok(v) => io::copy(&mut guard, &mut io::sink()).map(|_| v),
            Err(e) => Err(e),
        };
        if let Some(failure) = guard.failure.take() {
            return Err(match failure {
                GuardFailure::Overflow => CsarError::EntryLargerThanDeclared {
                    path: name.to_string(),
                    declared,
                },
                GuardFailure::Corrupt(reason) => CsarError::CorruptEntry {
                    path: name.to_string(),
                    reason,
                },
            });
        }
        result.map_err(CsarError::Io)
    }

    pub(super) fn read_text(&mut self, name: &str, limits: &Limits) -> Result<String, CsarError> {
        let (_, size) = *self
            .index
            .get(name)
            .ok_or_else(|| CsarError::EntryNotFound(name.to_string()))?;
        if size > limits.max_text_bytes {
            return Err(CsarError::TextTooLarge {
                path: name.to_string(),
                size,
                limit: limits.max_text_bytes,
            });
        }
        let bytes = self.stream(name, |r| {
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            r.read_to_end(&mut buf)?;
            Ok(buf)
        })?;
        let mut text = String::from_utf8(bytes).map_err(|_| CsarError::InvalidText { path: name.to_string() })?;
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        Ok(text)
    }

    pub(super) fn hash(&mut self, name: &str, algo: HashAlgo) -> Result<String, CsarError> {
        self.stream(name, |r| {
            let mut hasher = algo.hasher();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => hasher.update(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(hasher.finish_hex())
        })
    }
}

enum GuardFailure {
    Overflow,
    Corrupt(String),
}

/// Counts the bytes an entry yields and fails once they pass the declared size; records why the
/// inner reader failed so that the caller gets a precise error.
struct GuardedReader<'a> {
    inner: &'a mut dyn Read,
    declared: u64,
    read: u64,
    failure: Option<GuardFailure>,
}

impl Read for GuardedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "entry already failed"));
        }
        match self.inner.read(buf) {
            Ok(n) => {
                self.read = self.read.saturating_add(n as u64);
                if self.read > self.declared {
                    self.failure = Some(GuardFailure::Overflow);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "entry larger than its declared size",
                    ));
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let msg = e.to_string();
                // The zip crate enforces the declared size itself and reports it this way.
                if msg.to_ascii_lowercase().contains("declared uncompressed size") {
                    self.failure = Some(GuardFailure::Overflow);
                } else if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof {
                    let reason = if msg == "Invalid checksum" {
                        "CRC-32 mismatch".to_string()
                    } else {
                        msg
                    };
                    self.failure = Some(GuardFailure::Corrupt(reason));
                }
                Err(e)
            }
        }
    }
}

fn rd16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}
fn rd32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}
fn rd64(b: &[u8], i: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?))
}

const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const CDFH_SIG: u32 = 0x0201_4b50;

/// Reads the entry count from the end-of-central-directory record before the zip crate loads the
/// whole central directory into memory, so that an archive with millions of entries is refused
/// cheaply. Best effort: anything it cannot make sense of is left to the zip crate.
fn precheck_entry_count<R: Read + Seek>(file: &mut R, limits: &Limits) -> Result<(), CsarError> {
    let len = file.seek(SeekFrom::End(0))?;
    let tail_len = len.min(22 + 0xFFFF);
    file.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    file.read_exact(&mut tail)?;
    if tail.len() < 22 {
        return Ok(());
    }
    let Some(pos) = (0..=tail.len() - 22).rev().find(|&i| rd32(&tail, i) == Some(EOCD_SIG)) else {
        return Ok(());
    };
    let (Some(entries), Some(cd_size), Some(cd_off)) =
        (rd16(&tail, pos + 10), rd32(&tail, pos + 12), rd32(&tail, pos + 16))
    else {
        return Ok(());
    };
    let mut count = u64::from(entries);
    if entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_off == 0xFFFF_FFFF {
        let eocd_abs = len - tail_len + pos as u64;
        if eocd_abs >= 20 {
            let mut loc = [0u8; 20];
            file.seek(SeekFrom::Start(eocd_abs - 20))?;
            file.read_exact(&mut loc)?;
            if rd32(&loc, 0) == Some(EOCD64_LOCATOR_SIG) {
                if let Some(off) = rd64(&loc, 8) {
                    let mut rec = [0u8; 56];
                    if off.checked_add(56).is_some_and(|end| end <= len) {
                        file.seek(SeekFrom::Start(off))?;
                        file.read_exact(&mut rec)?;
                        if rd32(&rec, 0) == Some(EOCD64_SIG) {
                            count = count.max(rd64(&rec, 32).unwrap_or(0));
                        }
                    }
                }
            }
        }
    }
    if count > limits.max_entries as u64 {
        return Err(CsarError::TooManyEntries {
            count,
            limit: limits.max_entries,
        });
    }
    Ok(())
}

/// Walks the central directory headers and returns the first name seen twice.
fn find_duplicate_name<R: Read + Seek>(r: &mut R, start: u64, max_entries: usize) -> Option<String> {
    r.seek(SeekFrom::Start(start)).ok()?;
    let mut seen = HashSet::new();
    for _ in 0..=max_entries {
        let mut hdr = [0u8; 46];
        r.read_exact(&mut hdr).ok()?;
        if rd32(&hdr, 0)? != CDFH_SIG {
            return None;
        }
        let name_len = usize::from(rd16(&hdr, 28)?);
        let skip = i64::from(rd16(&hdr, 30)?) + i64::from(rd16(&hdr, 32)?);
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name).ok()?;
        r.seek(SeekFrom::Current(skip)).ok()?;
        if !seen.insert(name.clone()) {
            return Some(String::from_utf8_lossy(&name).into_owned());
        }
    }
    None
}

/// Accepts only plain relative paths: no absolute or drive paths, no backslashes, no control
/// characters, no empty, `.` or `..` components (a trailing `/` marks a directory).
fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    if name.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if name.contains('\\') {
        return Err("contains a backslash");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    let b = name.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return Err("drive-letter path");
    }
    let body = name.strip_suffix('/').unwrap_or(name);
    for comp in body.split('/') {
        match comp {
            "" => return Err("empty path component"),
            "." => return Err("'.' path component"),
            ".." => return Err("'..' path component"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csar::testutil::*;

    /// A zip with one entry of 100 MiB of zeros (about 100 KiB compressed), built once.
    fn bomb() -> &'static [u8] {
        static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
        BOMB.get_or_init(|| {
            let mut w = ZipWriter::new(Cursor::new(Vec::new()));
            let opts = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .compression_level(Some(1));
            w.start_file("Files/zeros.bin", opts).unwrap();
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..100 {
                w.write_all(&chunk).unwrap();
            }
            w.finish().unwrap().into_inner()
        })
    }

    /// Lowers the declared uncompressed size of `name` in both headers.
    fn shrink_declared_size(bytes: &mut [u8], name: &str, declared: u32) {
        let d = declared.to_le_bytes();
        patch_headers(
            bytes,
            name,
            |l| l[22..26].copy_from_slice(&d),
            |c| c[24..28].copy_from_slice(&d),
        );
    }

    #[test]
    fn parent_dir_entry_is_refused() {
        let mut bytes = small_zip(&["Definitions/a.yaml", "xx/evil"]);
        rename_raw(&mut bytes, "xx/evil", "../evil");
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::UnsafeEntryName { ref name, .. } if name == "../evil"),
            "{err:?}"
        );

        let mut bytes = small_zip(&["a/xx/b"]);
        rename_raw(&mut bytes, "a/xx/b", "a/../b");
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), "unsafe-entry-name");
    }

    #[test]
    fn absolute_entries_are_refused() {
        for (from, to) in [
            ("xetc/passwd", "/etc/passwd"),
            ("Cx/x", "C:/x"),
            ("xxsrv/x", "\\\\srv\\x"),
            ("ab", "a\0"),
        ] {
            let mut bytes = small_zip(&[from]);
            rename_raw(&mut bytes, from, to);
            let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
            assert!(matches!(err, CsarError::UnsafeEntryName { .. }), "{to:?}: {err:?}");
        }
        assert_eq!(check_entry_name("/x"), Err("absolute path"));
        assert_eq!(check_entry_name("C:\\x"), Err("contains a backslash"));
        assert_eq!(check_entry_name("C:x"), Err("drive-letter path"));
        assert_eq!(check_entry_name("a//b"), Err("empty path component"));
        assert_eq!(check_entry_name("./a"), Err("'.' path component"));
        assert_eq!(check_entry_name("Files/"), Ok(()));
        assert_eq!(check_entry_name("Files/a.txt"), Ok(()));
    }

    #[test]
    fn duplicate_entries_are_refused() {
        let mut bytes = small_zip(&["Files/AAAA.txt", "Files/BBBB.txt"]);
        rename_raw(&mut bytes, "Files/BBBB.txt", "Files/AAAA.txt");
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::DuplicateEntry(ref n) if n == "Files/AAAA.txt"),
            "{err:?}"
        );
    }

    #[test]
    fn encrypted_entry_is_refused() {
        let mut bytes = small_zip(&["Definitions/a.yaml", "Files/secret.bin"]);
        patch_headers(&mut bytes, "Files/secret.bin", |l| l[6] |= 1, |c| c[8] |= 1);
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::EncryptedEntry(ref n) if n == "Files/secret.bin"),
            "{err:?}"
        );
    }

    #[test]
    fn symlink_entry_is_refused() {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("a.yaml", SimpleFileOptions::default()).unwrap();
        w.write_all(b"x: 1\n").unwrap();
        w.add_symlink("Files/link", "/etc/passwd", SimpleFileOptions::default())
            .unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::SymlinkEntry(ref n) if n == "Files/link"),
            "{err:?}"
        );
    }

    #[test]
    fn zip_bomb_ratio_is_refused() {
        let bytes = bomb();
        assert!(bytes.len() < 1 << 20, "fixture should be small, is {}", bytes.len());
        let err = open_bytes(bytes, &Limits::default()).unwrap_err();
        match err {
            CsarError::CompressionRatioExceeded {
                path,
                size,
                compressed,
                limit,
            } => {
                assert_eq!(path, "Files/zeros.bin");
                assert_eq!(size, 100 << 20);
                assert!(compressed < size / 100);
                assert_eq!(limit, 100);
            }
            other => panic!("{other:?}"),
        }
        // The same archive passes the ratio check with a generous limit.
        let generous = Limits {
            max_ratio: 100_000,
            ..Limits::default()
        };
        assert!(matches!(
            open_bytes(bytes, &generous).unwrap_err(),
            CsarError::NoEntryDefinitions
        ));
    }

    #[test]
    fn total_size_limit_is_enforced() {
        let limits = Limits {
            max_total_uncompressed: 50 << 20,
            max_ratio: 100_000,
            ..Limits::default()
        };
        let err = open_bytes(bomb(), &limits).unwrap_err();
        assert!(
            matches!(err, CsarError::TotalSizeExceeded { limit } if limit == 50 << 20),
            "{err:?}"
        );
    }

    #[test]
    fn too_many_entries_is_refused() {
        let names: Vec<String> = (0..20).map(|i| format!("Files/f{i}.txt")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        let err = open_bytes(&small_zip(&refs), &limits).unwrap_err();
        assert!(
            matches!(err, CsarError::TooManyEntries { count: 20, limit: 10 }),
            "{err:?}"
        );
    }

    #[test]
    fn entry_larger_than_declared_is_refused() {
        let big: Vec<u8> = b"0123456789abcdef".repeat(10_000);
        let files: Files = vec![("Files/data.bin".to_string(), big)];
        let mut bytes = zip_bytes(&files, CompressionMethod::Deflated);
        shrink_declared_size(&mut bytes, "Files/data.bin", 1000);
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "x.zip", &bytes);
        let mut seen = 0usize;
        let err = with_entry(&p, "Files/data.bin", &Limits::default(), |r| {
            let mut buf = [0u8; 100];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                seen += n;
            }
        })
        .unwrap_err();
        assert!(
            matches!(err, CsarError::EntryLargerThanDeclared { ref path, declared: 1000 } if path == "Files/data.bin"),
            "{err:?}"
        );
        assert!(seen <= 1000, "read {seen} bytes past the declared size");

        // Inside a package, caught while verifying the manifest (a deflated, listed file).
        let mut files = base_files();
        files[3].1 = b"change log line\n".repeat(5_000);
        let mf = manifest_for(&files, "");
        files.push(("vnfd.mf".to_string(), mf.into_bytes()));
        let mut bytes = zip_bytes(&files, CompressionMethod::Deflated);
        shrink_declared_size(&mut bytes, "Files/ChangeLog.txt", 500);
        let err = open_bytes(&bytes, &Limits::default()).unwrap_err();
        assert!(
            matches!(err, CsarError::EntryLargerThanDeclared { declared: 500, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn crc_mismatch_is_corrupt_entry() {
        let files: Files = vec![("Files/data.bin".to_string(), b"hello world".to_vec())];
        let mut bytes = zip_bytes(&files, CompressionMethod::Stored);
        patch_headers(&mut bytes, "Files/data.bin", |l| l[14] ^= 0xff, |c| c[16] ^= 0xff);
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "x.zip", &bytes);
        let err = with_entry(&p, "Files/data.bin", &Limits::default(), |_| Ok(())).unwrap_err();
        assert!(
            matches!(err, CsarError::CorruptEntry { ref reason, .. } if reason.contains("CRC")),
            "{err:?}"
        );
    }

    #[test]
    fn text_limit_is_enforced() {
        let limits = Limits {
            max_text_bytes: 100,
            ..Limits::default()
        };
        let err = open_bytes(&standard_bytes(&[], ""), &limits).unwrap_err();
        assert!(matches!(err, CsarError::TextTooLarge { limit: 100, .. }), "{err:?}");
    }
}
