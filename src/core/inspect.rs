//! Streaming disk-image format inspector.
//!
//! An upload is fed to an [`Inspector`] chunk by chunk (while the caller hashes and stores the very same bytes
//! elsewhere). At the end, [`Inspector::finish`] decides the disk format from the bytes alone (never from a file
//! name), reads the virtual size, and refuses images that are unsafe to hand to `qemu-img` or a hypervisor:
//! images that reference other files (qcow2 backing files and external data files, VMDK descriptors and split
//! extents, differencing VHD/VHDX), encrypted images, images using features we do not understand, formats we do
//! not accept, polyglots that match several formats, images whose bytes contradict the declared format, and
//! images above a virtual-size limit.
//!
//! # Memory bound
//!
//! The inspector never buffers the whole upload. It keeps:
//!
//! * the first [`PREFIX_LEN`] bytes (4 MiB). That covers the whole first cluster of any qcow2 image (cluster
//!   size is at most 2 MiB, and header extensions must end inside cluster 0), the VMDK sparse header and the
//!   embedded descriptor where every known writer puts it (sector 1), the VHD dynamic-disk header, the ISO 9660
//!   volume descriptor set (from 32 KiB on), the VHDX header section (first 1 MiB, with the region tables at
//!   192 KiB and 256 KiB) and, for the layout `qemu-img` writes by default, the whole VHDX metadata region
//!   (at 3 MiB, 1 MiB long).
//! * the last [`TAIL_LEN`] bytes (1536): the VHD footer lives in the last 512 bytes; a stream-optimized VMDK
//!   whose grain directory is "at end" keeps its authoritative header copy in a footer at `size - 1024`,
//!   between a footer marker and an end-of-stream marker (1536 bytes in all).
//! * a few small targeted captures of structures that lie beyond the prefix but whose location is known from
//!   the prefix before the stream reaches them: the VHDX metadata table (64 KiB) and its two 8-byte items
//!   (file parameters, virtual disk size) when a large BAT or log pushes the metadata region past 4 MiB, and
//!   a VMDK embedded descriptor placed past 4 MiB (at most [`MAX_VMDK_DESCRIPTOR`] = 1 MiB, the same cap
//!   qemu uses). Captures are limited to [`MAX_CAPTURES`] ranges and [`MAX_CAPTURE_BYTES`] bytes in all.
//!
//! So the worst case is about 5.2 MiB per upload. Anything an image would need us to read outside these
//! windows makes it refused with [`InspectError::OutsideWindow`] rather than accepted unchecked.
//!
//! # Decisions worth knowing
//!
//! * Raw is "no signature matched". When a format is declared and the bytes say otherwise, the image is
//!   refused, both ways (declared raw but qcow2 bytes is the classic attack; declared qcow2 but raw bytes is a
//!   mislabel). Declared raw with ISO 9660 bytes is refused too: an ISO is raw to qemu, but the catalog would
//!   then describe it wrongly, and the uploader can simply declare `iso`.
//! * A fixed VHD is recognised by its footer in the last 512 bytes (qemu itself probes only offset 0 and would
//!   call it raw); declaring such a file raw is therefore a contradiction as well.
//! * An image that matches several signatures (for example a qcow2 header with a VHD footer appended, or an
//!   ISO whose system area starts with a qcow2 magic) is refused as a possible polyglot.
//! * The VMDK virtual size is `capacity × 512` from the sparse header (from the footer copy when the grain
//!   directory is at the end of the stream); the single extent line of the descriptor must agree with it.
//! * The VHD virtual size is the footer's "current size" (what `qemu-img info` reports for images it wrote).
//!   The footer at offset 0 (dynamic disks) wins over the one at the end, as in qemu.
//! * `DiskFormat::parse` also accepts qemu's name `vpc` for VHD.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// How many bytes from the start of the upload are kept (4 MiB). See the module documentation.
pub const PREFIX_LEN: usize = 4 * 1024 * 1024;
/// How many bytes from the end of the upload are kept (VHD footer, stream-optimized VMDK footer).
pub const TAIL_LEN: usize = 1536;
/// Largest VMDK embedded descriptor we read (qemu caps it at 1 MiB as well).
pub const MAX_VMDK_DESCRIPTOR: u64 = 1024 * 1024;
/// Most targeted captures of structures beyond the prefix.
pub const MAX_CAPTURES: usize = 8;
/// Most bytes held in targeted captures beyond the prefix.
pub const MAX_CAPTURE_BYTES: usize = 1024 * 1024 + 128 * 1024;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;

/// Limits applied by [`Inspector::finish`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted virtual size in bytes; 0 means unlimited.
    pub max_virtual_size: u64,
}

/// The disk formats the catalog accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vhd,
    Vhdx,
    Iso,
}

impl DiskFormat {
    /// Every accepted format.
    pub const ALL: [DiskFormat; 6] = [
        DiskFormat::Qcow2,
        DiskFormat::Raw,
        DiskFormat::Vmdk,
        DiskFormat::Vhd,
        DiskFormat::Vhdx,
        DiskFormat::Iso,
    ];

    /// The canonical lower-case name: "qcow2", "raw", "vmdk", "vhd", "vhdx" or "iso".
    pub fn as_str(&self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vhd => "vhd",
            DiskFormat::Vhdx => "vhdx",
            DiskFormat::Iso => "iso",
        }
    }

    /// Parses a canonical name (exact, lower case); qemu's name "vpc" is accepted for VHD.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "qcow2" => Some(DiskFormat::Qcow2),
            "raw" => Some(DiskFormat::Raw),
            "vmdk" => Some(DiskFormat::Vmdk),
            "vhd" | "vpc" => Some(DiskFormat::Vhd),
            "vhdx" => Some(DiskFormat::Vhdx),
            "iso" => Some(DiskFormat::Iso),
            _ => None,
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the inspector found out about an accepted image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    pub format: DiskFormat,
    /// Size of the disk as the guest sees it, in bytes.
    pub virtual_size: u64,
    /// Number of bytes fed to the inspector.
    pub file_size: u64,
    /// Format-specific facts, e.g. ("version", "3"), ("cluster_size", "65536"), ("create_type", "streamOptimized").
    pub details: Vec<(String, String)>,
}

impl DiskInfo {
    /// The value of a detail by key.
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Why an upload was refused. Every refusal has its own variant.
#[derive(thiserror::Error, Debug)]
pub enum InspectError {
    #[error("the upload is empty (0 bytes)")]
    Empty,
    #[error(
        "{format} image is truncated: its {what} needs bytes {start}..{end} but the file has only {file_size} bytes"
    )]
    Truncated {
        format: &'static str,
        what: &'static str,
        start: u64,
        end: u64,
        file_size: u64,
    },
    #[error("{format} image header is malformed: {reason}")]
    Malformed { format: &'static str, reason: String },
    #[error(
        "{format} {what} at bytes {start}..{end} lies outside what the inspector keeps (the first {window} MiB, \
         the last {TAIL_LEN} bytes and small targeted captures); refusing an image it cannot check",
        window = PREFIX_LEN >> 20
    )]
    OutsideWindow {
        format: &'static str,
        what: &'static str,
        start: u64,
        end: u64,
    },
    #[error(
        "{format} image depends on a backing/parent file ({detail}); images that depend on other files are refused"
    )]
    BackingFile { format: &'static str, detail: String },
    #[error("qcow2 image keeps its data in an external data file ({detail}); refused")]
    ExternalDataFile { detail: String },
    #[error("{format} image is encrypted ({detail}); encrypted images are refused")]
    Encrypted { format: &'static str, detail: String },
    #[error("{format} image requires a feature this inspector does not know ({detail}); refused")]
    UnknownFeature { format: &'static str, detail: String },
    #[error("{format} image is marked corrupt ({detail}); refused")]
    MarkedCorrupt { format: &'static str, detail: String },
    #[error("vhdx image has a non-empty log that would be replayed (rewriting the file) when opened; refused")]
    VhdxLogNotEmpty,
    #[error("vmdk createType \"{0}\" is refused: only single-file monolithicSparse and streamOptimized are accepted")]
    VmdkCreateType(String),
    #[error("vmdk descriptor does not describe exactly the single sparse extent of this file: {0}")]
    VmdkExtent(String),
    #[error("vmdk sparse extent has no embedded descriptor: it is one piece of a multi-file disk; refused")]
    VmdkNoDescriptor,
    #[error(
        "the upload is a VMDK descriptor text file, i.e. a descriptor pointing at other files; upload a single-file \
         (monolithicSparse or streamOptimized) vmdk instead"
    )]
    VmdkDescriptorFile,
    #[error("image format {0} is recognised but not supported here; convert it to qcow2 or raw first")]
    UnsupportedFormat(&'static str),
    #[error("the bytes match several disk formats at once ({0}); refusing a possible polyglot image")]
    AmbiguousFormat(String),
    #[error("header contradicts declared format: declared {declared}, but the bytes are {detected}")]
    FormatMismatch { declared: DiskFormat, detected: DiskFormat },
    #[error("virtual size {virtual_size} bytes exceeds the limit of {limit} bytes")]
    VirtualSizeTooLarge { virtual_size: u64, limit: u64 },
    #[error("I/O error while reading the image: {0}")]
    Io(#[from] std::io::Error),
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming state
// ---------------------------------------------------------------------------------------------------------------

/// A byte range beyond the prefix that a parser asked for while the stream had not reached it yet.
#[derive(Debug)]
struct Capture {
    start: u64,
    len: usize,
    data: Vec<u8>,
}

impl Capture {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.len as u64)
    }
    fn complete(&self) -> bool {
        self.data.len() >= self.len
    }
}

/// Streaming inspector; see the module documentation.
pub struct Inspector {
    limits: Limits,
    prefix: Vec<u8>,
    tail: [u8; TAIL_LEN],
    total: u64,
    captures: Vec<Capture>,
    capture_bytes: usize,
}

impl fmt::Debug for Inspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspector")
            .field("limits", &self.limits)
            .field("prefix_len", &self.prefix.len())
            .field("total", &self.total)
            .field("captures", &self.captures.len())
            .finish()
    }
}

impl Inspector {
    pub fn new(limits: Limits) -> Self {
        Inspector {
            limits,
            prefix: Vec::new(),
            tail: [0; TAIL_LEN],
            total: 0,
            captures: Vec::new(),
            capture_bytes: 0,
        }
    }

    /// Number of bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.total
    }

    /// For a caller with random access to an input of `size` bytes: the next range, from the
    /// bytes fed so far on, whose bytes the inspector would keep (the prefix window, a pending
    /// targeted capture, the tail), or `None` once it has seen everything it needs. Feeding
    /// only these ranges (with [`Inspector::skip_to`] over the rest) gives the same verdict as
    /// feeding every byte: nothing outside them is looked at.
    pub fn wanted(&self, size: u64) -> Option<std::ops::Range<u64>> {
        if self.total >= size {
            return None;
        }
        if self.total < PREFIX_LEN as u64 {
            return Some(self.total..size.min(PREFIX_LEN as u64));
        }
        let tail = size.saturating_sub(TAIL_LEN as u64).max(self.total)..size;
        let capture = self
            .captures
            .iter()
            .filter(|c| !c.complete())
            .map(|c| c.start.saturating_add(c.data.len() as u64)..c.end().min(size))
            .filter(|r| r.start >= self.total && r.start < r.end)
            .min_by_key(|r| r.start);
        match capture {
            Some(c) if c.start < tail.start => Some(c),
            _ => Some(tail),
        }
    }

    /// Moves on to `offset` without being fed the bytes before it; only ever forward, and only
    /// over bytes outside what [`Inspector::wanted`] names.
    pub fn skip_to(&mut self, offset: u64) {
        if offset > self.total && self.total >= PREFIX_LEN as u64 {
            self.total = offset;
        }
    }

    /// Feeds the next chunk of the upload. Copies bytes only while they fall in the prefix window or in a
    /// pending targeted capture; always updates the (fixed-size) tail.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            // Stop at every point where new knowledge may appear: the end of the prefix window and the end of
            // each pending capture. A parser may then ask for more bytes before the stream passes them.
            let mut n = rest.len() as u64;
            if self.total < PREFIX_LEN as u64 {
                n = n.min(PREFIX_LEN as u64 - self.total);
            }
            for c in self.captures.iter().filter(|c| !c.complete()) {
                if c.end() > self.total {
                    n = n.min(c.end() - self.total);
                }
            }
            let n = usize::try_from(n.max(1)).unwrap_or(rest.len()).min(rest.len());
            let (piece, r) = rest.split_at(n);
            let completed = self.consume(piece);
            rest = r;
            if self.total == PREFIX_LEN as u64 || completed {
                self.plan();
            }
        }
    }

    /// Copies one piece into the windows; returns whether a capture became complete.
    fn consume(&mut self, piece: &[u8]) -> bool {
        let off = self.total;
        let n = piece.len() as u64;
        if self.prefix.len() < PREFIX_LEN {
            let take = (PREFIX_LEN - self.prefix.len()).min(piece.len());
            self.prefix.extend_from_slice(piece.get(..take).unwrap_or_default());
        }
        let mut completed = false;
        for c in self.captures.iter_mut().filter(|c| !c.complete()) {
            let want = c.start.saturating_add(c.data.len() as u64);
            if want >= off && want < off + n {
                let from = (want - off) as usize;
                let to = (c.end().min(off + n) - off) as usize;
                c.data.extend_from_slice(piece.get(from..to).unwrap_or_default());
                completed |= c.complete();
            }
        }
        // Ring buffer of the last TAIL_LEN bytes: position of absolute offset x is x % TAIL_LEN.
        let skip = piece.len().saturating_sub(TAIL_LEN);
        let mut src = piece.get(skip..).unwrap_or_default();
        let mut abs = off + skip as u64;
        while !src.is_empty() {
            let pos = (abs % TAIL_LEN as u64) as usize;
            let k = (TAIL_LEN - pos).min(src.len());
            if let (Some(dst), Some(s)) = (self.tail.get_mut(pos..pos + k), src.get(..k)) {
                dst.copy_from_slice(s);
            }
            src = src.get(k..).unwrap_or_default();
            abs += k as u64;
        }
        self.total = off + n;
        completed
    }

    /// Once the prefix is full, lets the parsers of formats whose structures may lie beyond it say which byte
    /// ranges they will need, and registers captures for those the stream has not passed yet.
    fn plan(&mut self) {
        let needs = {
            let view = View {
                prefix: &self.prefix,
                captures: &self.captures,
                tail: None,
            };
            let result = if self.prefix.starts_with(VHDX_MAGIC) {
                parse_vhdx(&view)
            } else if self.prefix.starts_with(VMDK_MAGIC) {
                parse_vmdk(&view)
            } else if self.prefix.starts_with(VHD_COOKIE) {
                parse_vhd(&view)
            } else {
                return;
            };
            match result {
                Ok(Step::Need(needs)) => needs,
                _ => return,
            }
        };
        for need in needs {
            self.register(need.off, need.len);
        }
    }

    fn register(&mut self, off: u64, len: usize) {
        let Some(end) = off.checked_add(len as u64) else { return };
        let start = off.max(PREFIX_LEN as u64);
        if end <= start || start < self.total {
            return; // inside the prefix, or already streamed past: finish() will report it
        }
        if self.captures.iter().any(|c| c.start <= start && c.end() >= end) {
            return;
        }
        let Ok(clen) = usize::try_from(end - start) else { return };
        if self.captures.len() >= MAX_CAPTURES || self.capture_bytes.saturating_add(clen) > MAX_CAPTURE_BYTES {
            return;
        }
        self.capture_bytes += clen;
        self.captures.push(Capture {
            start,
            len: clen,
            data: Vec::with_capacity(clen),
        });
    }

    fn tail_bytes(&self) -> Vec<u8> {
        let len = self.total.min(TAIL_LEN as u64);
        let start = self.total - len;
        (start..self.total)
            .map(|x| self.tail.get((x % TAIL_LEN as u64) as usize).copied().unwrap_or(0))
            .collect()
    }

    /// Decides the format and applies every rule; `declared` is the format the uploader claimed, if any.
    pub fn finish(self, declared: Option<DiskFormat>) -> Result<DiskInfo, InspectError> {
        let file_size = self.total;
        if file_size == 0 {
            return Err(InspectError::Empty);
        }
        let tail = self.tail_bytes();
        let view = View {
            prefix: &self.prefix,
            captures: &self.captures,
            tail: Some((&tail, file_size)),
        };

        let detected = detect(&self.prefix, &tail);
        let format = match detected.as_slice() {
            [] => DiskFormat::Raw,
            [Detected::Known(f)] => *f,
            [Detected::Unsupported(name)] => return Err(InspectError::UnsupportedFormat(name)),
            [Detected::VmdkDescriptor] => return Err(InspectError::VmdkDescriptorFile),
            many => {
                let names: Vec<&str> = many.iter().map(Detected::name).collect();
                return Err(InspectError::AmbiguousFormat(names.join(", ")));
            }
        };
        if let Some(declared) = declared {
            if declared != format {
                return Err(InspectError::FormatMismatch {
                    declared,
                    detected: format,
                });
            }
        }

        let step = match format {
            DiskFormat::Raw => Ok(Step::Done(Parsed {
                virtual_size: file_size,
                details: Vec::new(),
            })),
            DiskFormat::Qcow2 => parse_qcow2(&view),
            DiskFormat::Vmdk => parse_vmdk(&view),
            DiskFormat::Vhd => parse_vhd(&view),
            DiskFormat::Vhdx => parse_vhdx(&view),
            DiskFormat::Iso => parse_iso(&view),
        }?;
        let parsed = match step {
            Step::Done(p) => p,
            Step::Need(needs) => {
                let fmt_name = format.as_str();
                let Some(need) = needs.into_iter().next() else {
                    return Err(InspectError::Malformed {
                        format: fmt_name,
                        reason: "incomplete parse".into(),
                    });
                };
                let end = need.off.saturating_add(need.len as u64);
                return Err(if end > file_size {
                    InspectError::Truncated {
                        format: fmt_name,
                        what: need.what,
                        start: need.off,
                        end,
                        file_size,
                    }
                } else {
                    InspectError::OutsideWindow {
                        format: fmt_name,
                        what: need.what,
                        start: need.off,
                        end,
                    }
                });
            }
        };

        let limit = self.limits.max_virtual_size;
        if limit != 0 && parsed.virtual_size > limit {
            return Err(InspectError::VirtualSizeTooLarge {
                virtual_size: parsed.virtual_size,
                limit,
            });
        }
        Ok(DiskInfo {
            format,
            virtual_size: parsed.virtual_size,
            file_size,
            details: parsed.details,
        })
    }
}

/// Streams a file through an [`Inspector`] in 1 MiB chunks.
pub fn inspect_file(
    path: impl AsRef<Path>,
    limits: Limits,
    declared: Option<DiskFormat>,
) -> Result<DiskInfo, InspectError> {
    let mut file = std::fs::File::open(path)?;
    let mut inspector = Inspector::new(limits);
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        inspector.feed(buf.get(..n).unwrap_or_default());
    }
    inspector.finish(declared)
}

// ---------------------------------------------------------------------------------------------------------------
// Views over what was kept, and the parser protocol
// ---------------------------------------------------------------------------------------------------------------

/// Read access to the kept bytes. `tail` is `None` while streaming (the file size is not known yet).
struct View<'a> {
    prefix: &'a [u8],
    captures: &'a [Capture],
    tail: Option<(&'a [u8], u64)>,
}

impl<'a> View<'a> {
    fn file_size(&self) -> Option<u64> {
        self.tail.map(|(_, size)| size)
    }

    /// Bytes `off..off+len` if they were kept, else `None`.
    fn get(&self, off: u64, len: usize) -> Option<Cow<'a, [u8]>> {
        let end = off.checked_add(len as u64)?;
        if let Some(size) = self.file_size() {
            if end > size {
                return None;
            }
        }
        let plen = self.prefix.len() as u64;
        if end <= plen {
            return self.prefix.get(off as usize..end as usize).map(Cow::Borrowed);
        }
        if let Some((tail, size)) = self.tail {
            let tstart = size - tail.len() as u64;
            if off >= tstart {
                return tail
                    .get((off - tstart) as usize..(end - tstart) as usize)
                    .map(Cow::Borrowed);
            }
        }
        let mut out = Vec::with_capacity(len);
        let mut pos = off;
        if pos < plen {
            out.extend_from_slice(self.prefix.get(pos as usize..)?);
            pos = plen;
        }
        if let Some(c) = self
            .captures
            .iter()
            .find(|c| c.complete() && c.start <= pos && c.end() >= end)
        {
            out.extend_from_slice(c.data.get((pos - c.start) as usize..(end - c.start) as usize)?);
            return Some(Cow::Owned(out));
        }
        let (tail, size) = self.tail?;
        let tstart = size - tail.len() as u64;
        out.extend_from_slice(tail.get(pos.checked_sub(tstart)? as usize..(end - tstart) as usize)?);
        Some(Cow::Owned(out))
    }
}

/// A byte range a parser needs but does not have.
#[derive(Debug)]
struct Need {
    off: u64,
    len: usize,
    what: &'static str,
}

/// Outcome of a parser that did not refuse the image.
enum Step<T> {
    Done(T),
    /// More bytes are needed (all of them listed, so they can be captured together). Empty while streaming
    /// when the parser needs the file size to go on.
    Need(Vec<Need>),
}

struct Parsed {
    virtual_size: u64,
    details: Vec<(String, String)>,
}

type PResult = Result<Step<Parsed>, InspectError>;

/// Gets bytes from a view or returns `Step::Need` for them from the enclosing parser.
macro_rules! need {
    ($view:expr, $off:expr, $len:expr, $what:expr) => {{
        let (off, len): (u64, usize) = ($off, $len);
        match $view.get(off, len) {
            Some(bytes) => bytes,
            None => return Ok(Step::Need(vec![Need { off, len, what: $what }])),
        }
    }};
}

fn malformed(format: &'static str, reason: impl Into<String>) -> InspectError {
    InspectError::Malformed {
        format,
        reason: reason.into(),
    }
}

fn arr<const N: usize>(b: &[u8], o: usize) -> [u8; N] {
    let mut a = [0u8; N];
    if let Some(s) = o.checked_add(N).and_then(|e| b.get(o..e)) {
        a.copy_from_slice(s);
    }
    a
}
fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes(arr(b, o))
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(arr(b, o))
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(arr(b, o))
}
fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(arr(b, o))
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(arr(b, o))
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(arr(b, o))
}
fn at(b: &[u8], o: usize) -> u8 {
    b.get(o).copied().unwrap_or(0)
}
fn slice(b: &[u8], from: usize, len: usize) -> &[u8] {
    from.checked_add(len).and_then(|e| b.get(from..e)).unwrap_or_default()
}
/// Printable rendering of an untrusted name, shortened.
fn printable(b: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(b)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    s
}
fn detail(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

// ---------------------------------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------------------------------

const QCOW_MAGIC: &[u8] = b"QFI\xfb";
const VMDK_MAGIC: &[u8] = b"KDMV";
const VHDX_MAGIC: &[u8] = b"vhdxfile";
const VHD_COOKIE: &[u8] = b"conectix";
const ISO_PVD_OFFSET: u64 = 16 * 2048;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detected {
    Known(DiskFormat),
    Unsupported(&'static str),
    VmdkDescriptor,
}

impl Detected {
    fn name(&self) -> &'static str {
        match self {
            Detected::Known(f) => f.as_str(),
            Detected::Unsupported(n) => n,
            Detected::VmdkDescriptor => "vmdk descriptor",
        }
    }
}

/// Every signature the bytes carry (deduplicated). Empty means raw.
fn detect(prefix: &[u8], tail: &[u8]) -> Vec<Detected> {
    let mut found = Vec::new();
    let p = prefix;
    if p.starts_with(QCOW_MAGIC) {
        // Version 1 is the old "qcow" format, which qemu supports and we do not.
        found.push(if p.len() >= 8 && be32(p, 4) == 1 {
            Detected::Unsupported("qcow (version 1)")
        } else {
            Detected::Known(DiskFormat::Qcow2)
        });
    }
    if p.starts_with(b"QED\0") {
        found.push(Detected::Unsupported("qed"));
    }
    if p.starts_with(b"<<< Oracle VM VirtualBox Disk Image >>>") || (p.len() >= 0x44 && le32(p, 0x40) == 0xbeda_107f) {
        found.push(Detected::Unsupported("vdi"));
    }
    if p.starts_with(b"LUKS\xba\xbe") {
        found.push(Detected::Unsupported("luks"));
    }
    if p.starts_with(b"Bochs Virtual HD Image") {
        found.push(Detected::Unsupported("bochs"));
    }
    if p.starts_with(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop") {
        found.push(Detected::Unsupported("cloop"));
    }
    if p.starts_with(b"WithoutFreeSpace") || p.starts_with(b"WithouFreSpacExt") {
        found.push(Detected::Unsupported("parallels"));
    }
    if p.starts_with(b"COWD") {
        found.push(Detected::Unsupported("vmdk version 3 (COWD)"));
    }
    if p.starts_with(VMDK_MAGIC) {
        found.push(Detected::Known(DiskFormat::Vmdk));
    }
    if looks_like_vmdk_descriptor(p) {
        found.push(Detected::VmdkDescriptor);
    }
    if p.starts_with(VHDX_MAGIC) {
        found.push(Detected::Known(DiskFormat::Vhdx));
    }
    let last_sector = tail.get(tail.len().saturating_sub(512)..).unwrap_or_default();
    if (tail.len() >= 512 && last_sector.starts_with(VHD_COOKIE)) || p.starts_with(VHD_COOKIE) {
        found.push(Detected::Known(DiskFormat::Vhd));
    }
    if tail.len() >= 512 && last_sector.starts_with(b"koly") {
        found.push(Detected::Unsupported("dmg"));
    }
    if slice(p, ISO_PVD_OFFSET as usize + 1, 5) == b"CD001" {
        found.push(Detected::Known(DiskFormat::Iso));
    }
    let mut unique: Vec<Detected> = Vec::new();
    for d in found {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

/// A VMDK descriptor text: starts with "# Disk DescriptorFile", or (qemu's own probe) its first line that is
/// neither a comment nor blank-prefixed is "version=1|2|3".
fn looks_like_vmdk_descriptor(p: &[u8]) -> bool {
    if p.starts_with(b"# Disk DescriptorFile") {
        return true;
    }
    let window = p.get(..p.len().min(64 * 1024)).unwrap_or_default();
    let mut i = 0usize;
    while i < window.len() {
        match window.get(i) {
            Some(b'#') => match window.get(i..).and_then(|r| r.iter().position(|&c| c == b'\n')) {
                Some(nl) => i += nl + 1,
                None => return false,
            },
            Some(b' ') => i += 1,
            _ => {
                let rest = window.get(i..).unwrap_or_default();
                return [b"version=1", b"version=2", b"version=3"].iter().any(|v| {
                    rest.starts_with(*v) && {
                        let after = rest.get(v.len()..).unwrap_or_default();
                        after.starts_with(b"\n") || after.starts_with(b"\r\n")
                    }
                });
            }
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------------------------
// qcow2 (qemu docs/interop/qcow2.txt)
// ---------------------------------------------------------------------------------------------------------------

const QCOW2_INCOMPAT_DIRTY: u64 = 1 << 0;
const QCOW2_INCOMPAT_CORRUPT: u64 = 1 << 1;
const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;
const QCOW2_INCOMPAT_COMPRESSION: u64 = 1 << 3;
const QCOW2_INCOMPAT_EXTL2: u64 = 1 << 4;
const QCOW2_INCOMPAT_KNOWN: u64 = 0b1_1111;
const QCOW2_EXT_END: u32 = 0;
const QCOW2_EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const QCOW2_EXT_FEATURE_TABLE: u32 = 0x6803_f857;
const QCOW2_EXT_BITMAPS: u32 = 0x2385_2875;
const QCOW2_EXT_CRYPTO: u32 = 0x0537_be77;
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
/// Upper bound on header extensions walked (each takes at least 8 bytes of cluster 0 anyway).
const QCOW2_MAX_EXTENSIONS: usize = 4096;

fn parse_qcow2(v: &View) -> PResult {
    const F: &str = "qcow2";
    let h = need!(v, 0, 72, "header");
    let version = be32(&h, 4);
    if version != 2 && version != 3 {
        return Err(malformed(
            F,
            format!("unsupported qcow2 version {version} (only 2 and 3 exist)"),
        ));
    }
    let backing_offset = be64(&h, 8);
    let backing_size = be32(&h, 16);
    let cluster_bits = be32(&h, 20);
    let size = be64(&h, 24);
    let crypt_method = be32(&h, 32);

    if !(9..=21).contains(&cluster_bits) {
        return Err(malformed(F, format!("cluster_bits {cluster_bits} is outside 9..=21")));
    }
    let cluster_size = 1u64 << cluster_bits;

    if backing_offset != 0 || backing_size != 0 {
        let mut detail = format!("backing_file_offset={backing_offset}, backing_file_size={backing_size}");
        if (1..=1023).contains(&backing_size) {
            if let Some(name) = v.get(backing_offset, backing_size as usize) {
                detail = format!("backing file \"{}\"", printable(&name));
            }
        }
        return Err(InspectError::BackingFile { format: F, detail });
    }
    if crypt_method != 0 {
        let method = match crypt_method {
            1 => "AES",
            2 => "LUKS",
            _ => "unknown method",
        };
        return Err(InspectError::Encrypted {
            format: F,
            detail: format!("crypt_method={crypt_method} ({method})"),
        });
    }

    let mut details = vec![detail("version", version), detail("cluster_size", cluster_size)];
    let header_length: u64;
    if version == 2 {
        header_length = 72;
        details.push(detail("compat", "0.10"));
    } else {
        let h3 = need!(v, 0, 104, "version 3 header");
        let incompat = be64(&h3, 72);
        let compat = be64(&h3, 80);
        let refcount_order = be32(&h3, 96);
        header_length = u64::from(be32(&h3, 100));
        if header_length < 104 || !header_length.is_multiple_of(8) || header_length > cluster_size {
            return Err(malformed(F, format!("header_length {header_length} is invalid")));
        }
        if refcount_order > 6 {
            return Err(malformed(F, format!("refcount_order {refcount_order} is above 6")));
        }
        if incompat & QCOW2_INCOMPAT_CORRUPT != 0 {
            return Err(InspectError::MarkedCorrupt {
                format: F,
                detail: "incompatible feature bit 1 is set".into(),
            });
        }
        if incompat & QCOW2_INCOMPAT_DATA_FILE != 0 {
            return Err(InspectError::ExternalDataFile {
                detail: "incompatible feature bit 2 (external data file) is set".into(),
            });
        }
        let unknown = incompat & !QCOW2_INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(InspectError::UnknownFeature {
                format: F,
                detail: format!("unknown incompatible feature bits {unknown:#x}"),
            });
        }
        let compression_type = if header_length > 104 {
            at(&need!(v, 0, 105, "compression type"), 104)
        } else {
            0
        };
        match (compression_type, incompat & QCOW2_INCOMPAT_COMPRESSION != 0) {
            (0, false) => details.push(detail("compression_type", "zlib")),
            (1, true) => details.push(detail("compression_type", "zstd")),
            (0, true) | (1, false) => {
                return Err(malformed(
                    F,
                    "compression type and its incompatible feature bit disagree",
                ));
            }
            (other, _) => {
                return Err(InspectError::UnknownFeature {
                    format: F,
                    detail: format!("compression type {other}"),
                })
            }
        }
        details.push(detail("compat", "1.1"));
        details.push(detail("refcount_bits", 1u32 << refcount_order));
        details.push(detail("dirty", incompat & QCOW2_INCOMPAT_DIRTY != 0));
        details.push(detail("extended_l2", incompat & QCOW2_INCOMPAT_EXTL2 != 0));
        details.push(detail("lazy_refcounts", compat & 1 != 0));
    }

    // Header extensions: from the end of the header to the end marker, never past cluster 0.
    let mut pos = header_length;
    let area_end = cluster_size;
    for _ in 0..QCOW2_MAX_EXTENSIONS {
        if pos.saturating_add(8) > area_end {
            break;
        }
        let eh = need!(v, pos, 8, "header extension");
        let ext_type = be32(&eh, 0);
        let ext_len = u64::from(be32(&eh, 4));
        if ext_type == QCOW2_EXT_END {
            break;
        }
        let data_start = pos + 8;
        let data_end = data_start
            .checked_add(ext_len)
            .filter(|e| *e <= area_end)
            .ok_or_else(|| {
                malformed(
                    F,
                    format!("header extension {ext_type:#x} at {pos} runs past cluster 0"),
                )
            })?;
        match ext_type {
            QCOW2_EXT_DATA_FILE => {
                let name = v
                    .get(data_start, ext_len as usize)
                    .map(|b| printable(&b))
                    .unwrap_or_default();
                return Err(InspectError::ExternalDataFile {
                    detail: format!("header extension 0x44415441 names data file \"{name}\""),
                });
            }
            QCOW2_EXT_CRYPTO => {
                return Err(InspectError::Encrypted {
                    format: F,
                    detail: "full disk encryption header extension present".into(),
                });
            }
            QCOW2_EXT_BITMAPS => details.push(detail("bitmaps", true)),
            QCOW2_EXT_BACKING_FORMAT | QCOW2_EXT_FEATURE_TABLE => {}
            _ => {} // optional by definition: unknown extensions are ignored, as qemu does
        }
        pos = data_end.checked_add(7).map(|e| e & !7).unwrap_or(u64::MAX);
    }

    Ok(Step::Done(Parsed {
        virtual_size: size,
        details,
    }))
}

// ---------------------------------------------------------------------------------------------------------------
// VMDK (VMware Virtual Disk Format 1.1)
// ---------------------------------------------------------------------------------------------------------------

const VMDK_GD_AT_END: u64 = u64::MAX;
const VMDK_FLAG_NL_DETECT: u32 = 1;
const VMDK_MARKER_FOOTER: u32 = 3;

fn parse_vmdk(v: &View) -> PResult {
    const F: &str = "vmdk";
    let h = need!(v, 0, 512, "sparse extent header");
    let version = le32(&h, 4);
    let flags = le32(&h, 8);
    let mut capacity = le64(&h, 12);
    let grain_size = le64(&h, 20);
    let desc_offset = le64(&h, 28);
    let desc_size = le64(&h, 36);
    let gd_offset = le64(&h, 56);
    let compress = le16(&h, 77);

    if !(1..=3).contains(&version) {
        return Err(malformed(
            F,
            format!("sparse extent version {version} is not 1, 2 or 3"),
        ));
    }
    if flags & VMDK_FLAG_NL_DETECT != 0 && slice(&h, 73, 4) != b"\n \r\n" {
        return Err(malformed(
            F,
            "newline detection bytes are damaged (file transferred in text mode?)",
        ));
    }
    if grain_size == 0 || !grain_size.is_power_of_two() || grain_size > 1 << 20 {
        return Err(malformed(F, format!("grain size {grain_size} sectors is invalid")));
    }
    if compress > 1 {
        return Err(InspectError::UnknownFeature {
            format: F,
            detail: format!("compression algorithm {compress}"),
        });
    }
    if desc_offset == 0 || desc_size == 0 {
        return Err(InspectError::VmdkNoDescriptor);
    }
    let desc_start = desc_offset
        .checked_mul(SECTOR)
        .ok_or_else(|| malformed(F, format!("descriptor offset {desc_offset} sectors overflows")))?;
    let desc_len = desc_size
        .checked_mul(SECTOR)
        .filter(|l| *l <= MAX_VMDK_DESCRIPTOR)
        .ok_or_else(|| malformed(F, format!("embedded descriptor of {desc_size} sectors exceeds 1 MiB")))?;
    let Some(desc) = v.get(desc_start, desc_len as usize) else {
        // Ask for the footer at the same time when it is known to be needed, so both can be captured.
        let mut needs = vec![Need {
            off: desc_start,
            len: desc_len as usize,
            what: "embedded descriptor",
        }];
        if let (VMDK_GD_AT_END, Some(size)) = (gd_offset, v.file_size()) {
            if let Some(off) = size.checked_sub(3 * SECTOR) {
                needs.push(Need {
                    off,
                    len: 3 * SECTOR as usize,
                    what: "stream footer",
                });
            }
        }
        return Ok(Step::Need(needs));
    };

    let mut details = vec![detail("version", version), detail("grain_size", grain_size * SECTOR)];
    if gd_offset == VMDK_GD_AT_END {
        // Stream-optimized with the grain directory at the end: the footer header is authoritative.
        let Some(size) = v.file_size() else {
            return Ok(Step::Need(Vec::new()));
        };
        let off = size
            .checked_sub(3 * SECTOR)
            .ok_or_else(|| malformed(F, "grain directory at end but no footer"))?;
        let footer = need!(v, off, 3 * SECTOR as usize, "stream footer");
        let marker_ok = le64(&footer, 0) == 0 && le32(&footer, 8) == 0 && le32(&footer, 12) == VMDK_MARKER_FOOTER;
        let header = slice(&footer, 512, 512);
        let eos = slice(&footer, 1024, 512);
        if !marker_ok || !header.starts_with(VMDK_MAGIC) || eos.iter().any(|&b| b != 0) {
            return Err(malformed(
                F,
                "grain directory is at the end of the stream but the footer is missing or invalid",
            ));
        }
        if le64(header, 56) == VMDK_GD_AT_END {
            return Err(malformed(F, "footer does not give the grain directory offset"));
        }
        capacity = le64(header, 12);
        details.push(detail("footer", true));
    }
    let virtual_size = capacity
        .checked_mul(SECTOR)
        .ok_or_else(|| malformed(F, format!("capacity {capacity} sectors overflows")))?;

    let text_end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    let text = String::from_utf8_lossy(desc.get(..text_end).unwrap_or_default());
    if text.trim().is_empty() {
        // qemu reserves the area in the extents of split disks but leaves it empty.
        return Err(InspectError::VmdkNoDescriptor);
    }
    let (create_type, extent_sectors) = check_vmdk_descriptor(&text)?;
    if extent_sectors != capacity {
        return Err(InspectError::VmdkExtent(format!(
            "extent covers {extent_sectors} sectors but the header capacity is {capacity} sectors"
        )));
    }
    details.insert(0, detail("create_type", create_type));
    Ok(Step::Done(Parsed { virtual_size, details }))
}

/// Checks an embedded descriptor; returns its createType and the sector count of its single extent.
fn check_vmdk_descriptor(text: &str) -> Result<(String, u64), InspectError> {
    const F: &str = "vmdk";
    let mut create_types: Vec<String> = Vec::new();
    let mut extents: Vec<&str> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or_default();
        if matches!(first, "RW" | "RDONLY" | "NOACCESS") {
            extents.push(line);
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "createType" => {
                    create_types.push(value.to_string());
                }
                "parentFileNameHint" => {
                    return Err(InspectError::BackingFile {
                        format: F,
                        detail: format!("descriptor parentFileNameHint=\"{}\"", printable(value.as_bytes())),
                    });
                }
                "parentCID" if !value.eq_ignore_ascii_case("ffffffff") => {
                    return Err(InspectError::BackingFile {
                        format: F,
                        detail: format!("descriptor parentCID={} (a delta disk)", printable(value.as_bytes())),
                    });
                }
                _ => {}
            }
        }
    }
    let create_type = match create_types.as_slice() {
        [] => return Err(InspectError::VmdkCreateType("(missing)".into())),
        [one] => one.clone(),
        _ => return Err(malformed(F, "descriptor has several createType lines")),
    };
    if create_type != "monolithicSparse" && create_type != "streamOptimized" {
        return Err(InspectError::VmdkCreateType(printable(create_type.as_bytes())));
    }
    let [extent] = extents.as_slice() else {
        return Err(InspectError::VmdkExtent(format!(
            "{} extent lines (exactly one is allowed)",
            extents.len()
        )));
    };
    // <access> <sectors> <type> "<file name>" [<offset>]
    let bad = |why: &str| InspectError::VmdkExtent(format!("{why}: `{}`", printable(extent.as_bytes())));
    let (head, quoted) = extent.split_once('"').ok_or_else(|| bad("unquoted file name"))?;
    let (file_name, trailing) = quoted.split_once('"').ok_or_else(|| bad("unterminated file name"))?;
    let fields: Vec<&str> = head.split_whitespace().collect();
    let [_access, sectors, kind] = fields.as_slice() else {
        return Err(bad("expected `<access> <sectors> <type> \"<file>\"`"));
    };
    let sectors: u64 = sectors.parse().map_err(|_| bad("unreadable sector count"))?;
    if *kind != "SPARSE" {
        return Err(bad("extent type is not SPARSE"));
    }
    if !trailing.trim().is_empty() {
        return Err(bad("unexpected fields after the file name"));
    }
    if file_name.is_empty() || file_name.contains(['/', '\\', ':']) || file_name.starts_with('.') {
        return Err(bad("extent file name is not a plain name of this file"));
    }
    Ok((create_type, sectors))
}

// ---------------------------------------------------------------------------------------------------------------
// VHD (Virtual Hard Disk Image Format Specification)
// ---------------------------------------------------------------------------------------------------------------

const VHD_FIXED: u32 = 2;
const VHD_DYNAMIC: u32 = 3;
const VHD_DIFFERENCING: u32 = 4;

fn vhd_checksum(footer: &[u8]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

fn parse_vhd(v: &View) -> PResult {
    const F: &str = "vhd";
    // qemu uses the copy at offset 0 when there is one (dynamic disks), else the footer at the end.
    let (footer, place) = if v.prefix.starts_with(VHD_COOKIE) {
        (need!(v, 0, 512, "footer copy"), "start")
    } else {
        let Some(size) = v.file_size() else {
            return Ok(Step::Need(Vec::new()));
        };
        (need!(v, size.saturating_sub(512), 512, "footer"), "end")
    };
    if !footer.starts_with(VHD_COOKIE) {
        return Err(malformed(F, "footer cookie missing"));
    }
    let stored = be32(&footer, 64);
    let computed = vhd_checksum(&footer);
    if stored != computed {
        return Err(malformed(
            F,
            format!("footer checksum {stored:#010x} does not match {computed:#010x}"),
        ));
    }
    let data_offset = be64(&footer, 16);
    let current_size = be64(&footer, 48);
    let disk_type = be32(&footer, 60);
    let geometry = be32(&footer, 56);
    let (cyls, heads, spt) = (
        u64::from(geometry >> 16),
        u64::from((geometry >> 8) & 0xff),
        u64::from(geometry & 0xff),
    );
    let mut details = vec![
        detail("creator", printable(slice(&footer, 28, 4)).trim().to_string()),
        detail("footer_at", place),
        detail("chs_size", cyls * heads * spt * SECTOR),
    ];
    match disk_type {
        VHD_FIXED => details.insert(0, detail("subformat", "fixed")),
        VHD_DYNAMIC => {
            let dh = need!(v, data_offset, 1024, "dynamic disk header");
            if !dh.starts_with(b"cxsparse") {
                return Err(malformed(
                    F,
                    format!("dynamic disk header cookie missing at {data_offset}"),
                ));
            }
            details.insert(0, detail("subformat", "dynamic"));
            details.push(detail("block_size", be32(&dh, 32)));
        }
        VHD_DIFFERENCING => {
            return Err(InspectError::BackingFile {
                format: F,
                detail: "differencing disk (disk type 4)".into(),
            });
        }
        other => {
            return Err(malformed(
                F,
                format!("disk type {other} is not fixed (2) or dynamic (3)"),
            ))
        }
    }
    Ok(Step::Done(Parsed {
        virtual_size: current_size,
        details,
    }))
}

// ---------------------------------------------------------------------------------------------------------------
// VHDX ([MS-VHDX])
// ---------------------------------------------------------------------------------------------------------------

/// GUID in its on-disk form: the first three fields little-endian, the last eight bytes as written.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7],
    ]
}

const VHDX_REGION_BAT: [u8; 16] = guid(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
const VHDX_REGION_METADATA: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const VHDX_META_FILE_PARAMETERS: [u8; 16] = guid(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
const VHDX_META_VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const VHDX_META_VIRTUAL_DISK_ID: [u8; 16] = guid(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
const VHDX_META_LOGICAL_SECTOR: [u8; 16] = guid(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
const VHDX_META_PHYSICAL_SECTOR: [u8; 16] = guid(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
const VHDX_META_PARENT_LOCATOR: [u8; 16] = guid(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);
const VHDX_HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
const VHDX_REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];

#[allow(clippy::indexing_slicing)] // const fn, indices bounded by the loop
const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}
static CRC32C_TABLE: [u32; 256] = crc32c_table();

fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC32C_TABLE
            .get(((c ^ u32::from(b)) & 0xff) as usize)
            .copied()
            .unwrap_or(0)
            ^ (c >> 8);
    }
    !c
}

/// CRC-32C over `block` with its 4-byte checksum field at offset 4 taken as zero.
fn vhdx_checksum_ok(block: &[u8]) -> bool {
    let mut copy = block.to_vec();
    if let Some(field) = copy.get_mut(4..8) {
        field.fill(0);
    }
    crc32c(&copy) == le32(block, 4)
}

fn parse_vhdx(v: &View) -> PResult {
    const F: &str = "vhdx";
    // Current header: the valid one with the larger sequence number.
    let mut current: Option<(u64, Vec<u8>)> = None;
    for off in VHDX_HEADER_OFFSETS {
        let h = need!(v, off, 4096, "header");
        if h.starts_with(b"head") && vhdx_checksum_ok(&h) {
            let seq = le64(&h, 8);
            if current.as_ref().is_none_or(|(s, _)| seq > *s) {
                current = Some((seq, h.into_owned()));
            }
        }
    }
    let Some((_, header)) = current else {
        return Err(malformed(
            F,
            "neither header copy has a valid signature and CRC-32C checksum",
        ));
    };
    let version = le16(&header, 66);
    if version != 1 {
        return Err(InspectError::UnknownFeature {
            format: F,
            detail: format!("format version {version}"),
        });
    }
    if slice(&header, 48, 16).iter().any(|&b| b != 0) {
        return Err(InspectError::VhdxLogNotEmpty);
    }

    // Region table: the first copy with a valid checksum.
    let mut table: Option<Cow<[u8]>> = None;
    for off in VHDX_REGION_TABLE_OFFSETS {
        let t = need!(v, off, 64 * KIB as usize, "region table");
        if t.starts_with(b"regi") && vhdx_checksum_ok(&t) {
            table = Some(t);
            break;
        }
    }
    let Some(table) = table else {
        return Err(malformed(
            F,
            "neither region table copy has a valid signature and CRC-32C checksum",
        ));
    };
    let count = le32(&table, 8);
    if count > 2047 {
        return Err(malformed(
            F,
            format!("region table claims {count} entries (at most 2047)"),
        ));
    }
    let (mut bat, mut metadata) = (false, None);
    for i in 0..count as usize {
        let e = slice(&table, 16 + i * 32, 32);
        let id: [u8; 16] = arr(e, 0);
        let (file_offset, length, required) = (le64(e, 16), le32(e, 24), le32(e, 28) & 1 != 0);
        if id == VHDX_REGION_BAT {
            bat = true;
        } else if id == VHDX_REGION_METADATA {
            if metadata.replace((file_offset, u64::from(length))).is_some() {
                return Err(malformed(F, "duplicate metadata region"));
            }
        } else if required {
            return Err(InspectError::UnknownFeature {
                format: F,
                detail: "unknown required region".into(),
            });
        }
    }
    let Some((meta_off, meta_len)) = metadata else {
        return Err(malformed(F, "region table has no metadata region"));
    };
    if !bat {
        return Err(malformed(F, "region table has no BAT region"));
    }
    if meta_off < MIB || !meta_off.is_multiple_of(MIB) || meta_len < 64 * KIB {
        return Err(malformed(
            F,
            format!("metadata region at {meta_off} of {meta_len} bytes is invalid"),
        ));
    }

    let mt = need!(v, meta_off, 64 * KIB as usize, "metadata table");
    if !mt.starts_with(b"metadata") {
        return Err(malformed(F, "metadata table signature missing"));
    }
    let entries = le16(&mt, 10);
    if entries > 2047 {
        return Err(malformed(
            F,
            format!("metadata table claims {entries} entries (at most 2047)"),
        ));
    }
    let (mut file_params, mut disk_size) = (None, None);
    for i in 0..usize::from(entries) {
        let e = slice(&mt, 32 + i * 32, 32);
        let id: [u8; 16] = arr(e, 0);
        let (item_off, item_len, flags) = (u64::from(le32(e, 16)), u64::from(le32(e, 20)), le32(e, 24));
        let slot = if id == VHDX_META_FILE_PARAMETERS {
            &mut file_params
        } else if id == VHDX_META_VIRTUAL_DISK_SIZE {
            &mut disk_size
        } else if id == VHDX_META_PARENT_LOCATOR {
            return Err(InspectError::BackingFile {
                format: F,
                detail: "parent locator metadata item".into(),
            });
        } else if [
            VHDX_META_VIRTUAL_DISK_ID,
            VHDX_META_LOGICAL_SECTOR,
            VHDX_META_PHYSICAL_SECTOR,
        ]
        .contains(&id)
        {
            continue;
        } else if flags & 4 != 0 {
            return Err(InspectError::UnknownFeature {
                format: F,
                detail: "unknown required metadata item".into(),
            });
        } else {
            continue;
        };
        if item_len < 8 || item_off < 64 * KIB || item_off.saturating_add(item_len) > meta_len {
            return Err(malformed(
                F,
                format!("metadata item at {item_off} of {item_len} bytes is invalid"),
            ));
        }
        let abs = meta_off
            .checked_add(item_off)
            .ok_or_else(|| malformed(F, "metadata item offset overflows"))?;
        if slot.replace(abs).is_some() {
            return Err(malformed(F, "duplicate metadata item"));
        }
    }
    let (Some(fp_off), Some(size_off)) = (file_params, disk_size) else {
        return Err(malformed(
            F,
            "file parameters or virtual disk size metadata item missing",
        ));
    };
    let (fp, size) = (v.get(fp_off, 8), v.get(size_off, 8));
    let (Some(fp), Some(size)) = (fp, size) else {
        let mut needs = Vec::new();
        if v.get(fp_off, 8).is_none() {
            needs.push(Need {
                off: fp_off,
                len: 8,
                what: "file parameters item",
            });
        }
        if v.get(size_off, 8).is_none() {
            needs.push(Need {
                off: size_off,
                len: 8,
                what: "virtual disk size item",
            });
        }
        return Ok(Step::Need(needs));
    };
    let block_size = le32(&fp, 0);
    if le32(&fp, 4) & 2 != 0 {
        return Err(InspectError::BackingFile {
            format: F,
            detail: "file parameters HasParent (differencing)".into(),
        });
    }
    if !block_size.is_power_of_two() || !(MIB..=256 * MIB).contains(&u64::from(block_size)) {
        return Err(malformed(F, format!("block size {block_size} is invalid")));
    }
    let virtual_size = le64(&size, 0);
    let details = vec![detail("block_size", block_size), detail("metadata_offset", meta_off)];
    Ok(Step::Done(Parsed { virtual_size, details }))
}

// ---------------------------------------------------------------------------------------------------------------
// ISO 9660 (ECMA-119)
// ---------------------------------------------------------------------------------------------------------------

const ISO_MAX_DESCRIPTORS: u64 = 64;

fn parse_iso(v: &View) -> PResult {
    const F: &str = "iso";
    for i in 0..ISO_MAX_DESCRIPTORS {
        let off = ISO_PVD_OFFSET + i * 2048;
        let d = need!(v, off, 2048, "volume descriptor");
        if slice(&d, 1, 5) != b"CD001" {
            return Err(malformed(
                F,
                format!("volume descriptor {} lacks the CD001 identifier", 16 + i),
            ));
        }
        match at(&d, 0) {
            1 => {
                if at(&d, 6) != 1 {
                    return Err(malformed(F, format!("primary volume descriptor version {}", at(&d, 6))));
                }
                let blocks = le32(&d, 80);
                let block_size = le16(&d, 128);
                if blocks != be32(&d, 84) || block_size != be16(&d, 130) {
                    return Err(malformed(
                        F,
                        "both-endian fields of the primary volume descriptor disagree",
                    ));
                }
                if !matches!(block_size, 512 | 1024 | 2048) {
                    return Err(malformed(F, format!("logical block size {block_size}")));
                }
                let details = vec![
                    detail("volume_id", printable(slice(&d, 40, 32)).trim().to_string()),
                    detail("logical_block_size", block_size),
                    detail("volume_space_size", blocks),
                ];
                let virtual_size = u64::from(blocks) * u64::from(block_size);
                return Ok(Step::Done(Parsed { virtual_size, details }));
            }
            255 => {
                return Err(malformed(
                    F,
                    "descriptor set terminated without a primary volume descriptor",
                ))
            }
            _ => {}
        }
    }
    Err(malformed(
        F,
        format!("no primary volume descriptor among the first {ISO_MAX_DESCRIPTORS} descriptors"),
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// Tests: real images made by qemu-img in a temporary directory, plus crafted ones
// ---------------------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn qemu_img(args: &[&str]) -> String {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("qemu-img is required for these tests and could not be run: {e}"));
        assert!(
            out.status.success(),
            "qemu-img {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `qemu-img create -f fmt [opts..] dir/name size`, returning the path.
    fn create(dir: &Path, name: &str, fmt: &str, opts: &[&str], size: &str) -> PathBuf {
        let path = dir.join(name);
        let p = path.to_str().unwrap().to_string();
        let mut args = vec!["create", "-q", "-f", fmt];
        args.extend_from_slice(opts);
        args.push(&p);
        args.push(size);
        qemu_img(&args);
        path
    }

    /// Virtual size as `qemu-img info` reports it.
    fn qemu_virtual_size(path: &Path, fmt: &str) -> u64 {
        let out = qemu_img(&["info", "-f", fmt, path.to_str().unwrap()]);
        let line = out
            .lines()
            .find(|l| l.starts_with("virtual size:"))
            .expect("virtual size line");
        let inner = line.rsplit_once('(').unwrap().1;
        inner.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn inspect(path: &Path, declared: Option<DiskFormat>) -> Result<DiskInfo, InspectError> {
        inspect_file(path, Limits::default(), declared)
    }

    fn inspect_bytes(bytes: &[u8], chunk: usize, declared: Option<DiskFormat>) -> Result<DiskInfo, InspectError> {
        let mut i = Inspector::new(Limits::default());
        for c in bytes.chunks(chunk.max(1)) {
            i.feed(c);
        }
        i.finish(declared)
    }

    fn ok(r: Result<DiskInfo, InspectError>) -> DiskInfo {
        r.unwrap_or_else(|e| panic!("expected the image to be accepted, got: {e}"))
    }

    fn err(r: Result<DiskInfo, InspectError>) -> InspectError {
        match r {
            Ok(info) => panic!("expected a refusal, got {info:?}"),
            Err(e) => e,
        }
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    // ----- qcow2 -------------------------------------------------------------------------------------------------

    #[test]
    fn qcow2_v2_compat_010() {
        let d = tmp();
        let p = create(d.path(), "v2.qcow2", "qcow2", &["-o", "compat=0.10"], "1G");
        let info = ok(inspect(&p, Some(DiskFormat::Qcow2)));
        assert_eq!(info.format, DiskFormat::Qcow2);
        assert_eq!(info.virtual_size, GIB);
        assert_eq!(info.virtual_size, qemu_virtual_size(&p, "qcow2"));
        assert_eq!(info.detail("version"), Some("2"));
        assert_eq!(info.detail("compat"), Some("0.10"));
        assert_eq!(info.file_size, std::fs::metadata(&p).unwrap().len());
        assert!(info.file_size < 1024 * 1024, "tiny file for a 1G disk");
    }

    #[test]
    fn qcow2_v3() {
        let d = tmp();
        let p = create(
            d.path(),
            "v3.qcow2",
            "qcow2",
            &["-o", "compat=1.1,cluster_size=2M,lazy_refcounts=on"],
            "3G",
        );
        let info = ok(inspect(&p, None));
        assert_eq!(info.format, DiskFormat::Qcow2);
        assert_eq!(info.virtual_size, 3 * GIB);
        assert_eq!(info.virtual_size, qemu_virtual_size(&p, "qcow2"));
        assert_eq!(info.detail("version"), Some("3"));
        assert_eq!(info.detail("cluster_size"), Some("2097152"));
        assert_eq!(info.detail("lazy_refcounts"), Some("true"));
        assert_eq!(info.detail("compression_type"), Some("zlib"));
    }

    #[test]
    fn qcow2_v3_zstd_extended_l2_accepted() {
        let d = tmp();
        let p = create(
            d.path(),
            "z.qcow2",
            "qcow2",
            &["-o", "compression_type=zstd,extended_l2=on"],
            "1G",
        );
        let info = ok(inspect(&p, Some(DiskFormat::Qcow2)));
        assert_eq!(info.detail("compression_type"), Some("zstd"));
        assert_eq!(info.detail("extended_l2"), Some("true"));
    }

    #[test]
    fn qcow2_backing_file_refused() {
        let d = tmp();
        create(d.path(), "base.qcow2", "qcow2", &[], "1G");
        let p = create(
            d.path(),
            "overlay.qcow2",
            "qcow2",
            &["-b", "base.qcow2", "-F", "qcow2"],
            "1G",
        );
        let e = err(inspect(&p, Some(DiskFormat::Qcow2)));
        assert!(
            matches!(&e, InspectError::BackingFile { format: "qcow2", detail } if detail.contains("base.qcow2")),
            "{e}"
        );
    }

    #[test]
    fn qcow2_external_data_file_refused() {
        let d = tmp();
        let ext = d.path().join("ext.raw");
        let opt = format!("data_file={}", ext.display());
        let p = create(d.path(), "dq.qcow2", "qcow2", &["-o", &opt], "1G");
        let e = err(inspect(&p, None));
        assert!(matches!(e, InspectError::ExternalDataFile { .. }), "{e}");

        // The extension alone (feature bit cleared) is refused as well ...
        let mut bytes = read(&p);
        bytes[72 + 7] &= !(QCOW2_INCOMPAT_DATA_FILE as u8);
        let e = err(inspect_bytes(&bytes, 1 << 20, None));
        assert!(
            matches!(&e, InspectError::ExternalDataFile { detail } if detail.contains("ext.raw")),
            "{e}"
        );

        // ... and so is the feature bit alone (extension type overwritten with an unknown one).
        let mut bytes = read(&p);
        let pos = bytes.windows(4).position(|w| w == b"DATA").unwrap();
        bytes[pos..pos + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        let e = err(inspect_bytes(&bytes, 1 << 20, None));
        assert!(
            matches!(&e, InspectError::ExternalDataFile { detail } if detail.contains("bit 2")),
            "{e}"
        );
    }

    #[test]
    fn qcow2_encrypted_refused() {
        let d = tmp();
        for (name, fmt) in [("luks.qcow2", "luks"), ("aes.qcow2", "aes")] {
            let opts = format!("encrypt.format={fmt},encrypt.key-secret=sec0");
            let p = create(
                d.path(),
                name,
                "qcow2",
                &["--object", "secret,id=sec0,data=x", "-o", &opts],
                "64M",
            );
            let e = err(inspect(&p, Some(DiskFormat::Qcow2)));
            assert!(
                matches!(e, InspectError::Encrypted { format: "qcow2", .. }),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn qcow2_unknown_incompatible_bits_and_corrupt_refused() {
        let d = tmp();
        let p = create(d.path(), "u.qcow2", "qcow2", &[], "1G");
        let mut bytes = read(&p);
        bytes[72 + 6] |= 0x04; // bit 10
        let e = err(inspect_bytes(&bytes, 4096, None));
        assert!(
            matches!(&e, InspectError::UnknownFeature { detail, .. } if detail.contains("0x400")),
            "{e}"
        );

        let mut bytes = read(&p);
        bytes[72 + 7] |= QCOW2_INCOMPAT_CORRUPT as u8;
        assert!(matches!(
            err(inspect_bytes(&bytes, 4096, None)),
            InspectError::MarkedCorrupt { .. }
        ));

        let mut bytes = read(&p);
        bytes[72 + 7] |= QCOW2_INCOMPAT_DIRTY as u8; // dirty is fine: qemu repairs refcounts
        assert_eq!(ok(inspect_bytes(&bytes, 4096, None)).detail("dirty"), Some("true"));
    }

    #[test]
    fn qcow2_truncated_or_garbled_header_refused() {
        let d = tmp();
        let p = create(d.path(), "t.qcow2", "qcow2", &[], "1G");
        let bytes = read(&p);
        let e = err(inspect_bytes(&bytes[..50], 7, None));
        assert!(
            matches!(
                e,
                InspectError::Truncated {
                    format: "qcow2",
                    file_size: 50,
                    ..
                }
            ),
            "{e}"
        );
        let e = err(inspect_bytes(&bytes[..80], 7, None));
        assert!(matches!(e, InspectError::Truncated { format: "qcow2", .. }), "{e}");

        for bits in [0u32, 8, 22, 30, 0xffff_ffff] {
            let mut b = bytes.clone();
            b[20..24].copy_from_slice(&bits.to_be_bytes());
            let e = err(inspect_bytes(&b, 1 << 20, None));
            assert!(
                matches!(&e, InspectError::Malformed { reason, .. } if reason.contains("cluster_bits")),
                "{e}"
            );
        }
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&4u32.to_be_bytes());
        assert!(matches!(
            err(inspect_bytes(&b, 1 << 20, None)),
            InspectError::Malformed { .. }
        ));

        // An extension whose length runs past cluster 0.
        let mut b = bytes.clone();
        let hl = be32(&b, 100) as usize;
        b[hl..hl + 4].copy_from_slice(&0x1111_1111u32.to_be_bytes());
        b[hl + 4..hl + 8].copy_from_slice(&0x00ff_ffffu32.to_be_bytes());
        let e = err(inspect_bytes(&b, 1 << 20, None));
        assert!(
            matches!(&e, InspectError::Malformed { reason, .. } if reason.contains("past cluster 0")),
            "{e}"
        );
    }

    // ----- raw ---------------------------------------------------------------------------------------------------

    #[test]
    fn raw_accepted_with_file_size() {
        let d = tmp();
        let p = create(d.path(), "r.raw", "raw", &[], "64M");
        let info = ok(inspect(&p, Some(DiskFormat::Raw)));
        assert_eq!(info.format, DiskFormat::Raw);
        assert_eq!(info.virtual_size, 64 * MIB);
        assert_eq!(info.file_size, 64 * MIB);

        // Non-zero content that matches nothing is raw too.
        let bytes: Vec<u8> = (0..3 * MIB as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let info = ok(inspect_bytes(&bytes, 65536, None));
        assert_eq!((info.format, info.virtual_size), (DiskFormat::Raw, 3 * MIB));
    }

    #[test]
    fn empty_upload_refused() {
        assert!(matches!(err(inspect_bytes(&[], 1, None)), InspectError::Empty));
    }

    // ----- vmdk --------------------------------------------------------------------------------------------------

    #[test]
    fn vmdk_monolithic_sparse_and_stream_optimized_accepted() {
        let d = tmp();
        for (sub, name) in [("monolithicSparse", "ms.vmdk"), ("streamOptimized", "so.vmdk")] {
            let opt = format!("subformat={sub}");
            let p = create(d.path(), name, "vmdk", &["-o", &opt], "1G");
            let info = ok(inspect(&p, Some(DiskFormat::Vmdk)));
            assert_eq!(info.format, DiskFormat::Vmdk);
            assert_eq!(info.virtual_size, GIB);
            assert_eq!(info.virtual_size, qemu_virtual_size(&p, "vmdk"));
            assert_eq!(info.detail("create_type"), Some(sub));
        }
        // A converted stream-optimized image with real (compressed) grains.
        let raw: Vec<u8> = (0..3 * MIB as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let rp = write(d.path(), "data.raw", &raw);
        let so = d.path().join("conv.vmdk");
        qemu_img(&[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            rp.to_str().unwrap(),
            so.to_str().unwrap(),
        ]);
        let info = ok(inspect(&so, None));
        assert_eq!((info.format, info.virtual_size), (DiskFormat::Vmdk, 3 * MIB));
    }

    #[test]
    fn vmdk_monolithic_flat_descriptor_refused() {
        let d = tmp();
        let p = create(d.path(), "mf.vmdk", "vmdk", &["-o", "subformat=monolithicFlat"], "1G");
        let e = err(inspect(&p, Some(DiskFormat::Vmdk)));
        assert!(matches!(e, InspectError::VmdkDescriptorFile), "{e}");
        assert!(e.to_string().contains("descriptor pointing at other files"));
        // Also when declared raw: never accepted as raw.
        assert!(matches!(
            err(inspect(&p, Some(DiskFormat::Raw))),
            InspectError::VmdkDescriptorFile
        ));
    }

    #[test]
    fn vmdk_two_gb_max_extent_sparse_refused() {
        let d = tmp();
        let p = create(
            d.path(),
            "tg.vmdk",
            "vmdk",
            &["-o", "subformat=twoGbMaxExtentSparse"],
            "3G",
        );
        assert!(matches!(err(inspect(&p, None)), InspectError::VmdkDescriptorFile));
        // The extents themselves are sparse files without an embedded descriptor.
        let e = err(inspect(&d.path().join("tg-s001.vmdk"), Some(DiskFormat::Vmdk)));
        assert!(matches!(e, InspectError::VmdkNoDescriptor), "{e}");
    }

    #[test]
    fn vmdk_descriptor_detection_like_qemu() {
        let text = b"# some comment\n   version=1\ncreateType=\"vmfs\"\nRW 100 VMFS \"/dev/sda\"\n";
        assert!(matches!(
            err(inspect_bytes(text, 3, None)),
            InspectError::VmdkDescriptorFile
        ));
        let not = b"# comment\nhello=1\n";
        assert_eq!(ok(inspect_bytes(not, 3, None)).format, DiskFormat::Raw);
    }

    /// A qemu-made monolithicSparse image with its embedded descriptor replaced.
    fn vmdk_with_descriptor(base: &[u8], text: &str) -> Vec<u8> {
        let mut b = base.to_vec();
        let off = le64(&b, 28) as usize * 512;
        let len = le64(&b, 36) as usize * 512;
        assert!(text.len() < len);
        b[off..off + len].fill(0);
        b[off..off + text.len()].copy_from_slice(text.as_bytes());
        b
    }

    fn descriptor(create_type: &str, extents: &str, extra: &str) -> String {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n{extra}createType=\"{create_type}\"\n\n\
             # Extent description\n{extents}\n\n# The Disk Data Base\n#DDB\nddb.adapterType = \"ide\"\n"
        )
    }

    #[test]
    fn vmdk_embedded_descriptor_rules() {
        let d = tmp();
        let p = create(d.path(), "m.vmdk", "vmdk", &[], "1G");
        let base = read(&p);
        let good = "RW 2097152 SPARSE \"m.vmdk\"";

        let b = vmdk_with_descriptor(&base, &descriptor("monolithicSparse", good, ""));
        assert_eq!(ok(inspect_bytes(&b, 1000, Some(DiskFormat::Vmdk))).virtual_size, GIB);

        for ct in [
            "twoGbMaxExtentSparse",
            "monolithicFlat",
            "twoGbMaxExtentFlat",
            "vmfs",
            "vmfsSparse",
            "fullDevice",
            "partitionedDevice",
        ] {
            let b = vmdk_with_descriptor(&base, &descriptor(ct, good, ""));
            let e = err(inspect_bytes(&b, 1000, None));
            assert!(matches!(&e, InspectError::VmdkCreateType(t) if t == ct), "{ct}: {e}");
        }
        let bad_extents = [
            "RW 2097152 FLAT \"other-flat.vmdk\" 0",
            "RW 2097152 SPARSE \"/etc/passwd\"",
            "RW 2097152 SPARSE \"../up.vmdk\"",
            "RW 1048576 SPARSE \"m.vmdk\"\nRW 1048576 SPARSE \"m-s002.vmdk\"",
            "RW 2097152 SPARSE \"m.vmdk\" 0",
            "RW 2097152 VMFS \"m.vmdk\"",
            "RW 1048576 SPARSE \"m.vmdk\"",
            "",
        ];
        for ext in bad_extents {
            let b = vmdk_with_descriptor(&base, &descriptor("monolithicSparse", ext, ""));
            let e = err(inspect_bytes(&b, 1000, None));
            assert!(matches!(e, InspectError::VmdkExtent(_)), "{ext}: {e}");
        }
        let b = vmdk_with_descriptor(
            &base,
            &descriptor("monolithicSparse", good, "parentFileNameHint=\"base.vmdk\"\n"),
        );
        let e = err(inspect_bytes(&b, 1000, None));
        assert!(
            matches!(&e, InspectError::BackingFile { format: "vmdk", detail } if detail.contains("base.vmdk")),
            "{e}"
        );
        let text = descriptor("monolithicSparse", good, "").replace("parentCID=ffffffff", "parentCID=1234abcd");
        assert!(matches!(
            err(inspect_bytes(&vmdk_with_descriptor(&base, &text), 1000, None)),
            InspectError::BackingFile { .. }
        ));
    }

    #[test]
    fn vmdk_stream_footer_is_authoritative() {
        let d = tmp();
        let p = create(d.path(), "so.vmdk", "vmdk", &["-o", "subformat=streamOptimized"], "1G");
        let base = read(&p);
        let header = base[..512].to_vec();
        let with_footer = |footer_capacity: u64| {
            let mut b = base.clone();
            b[56..64].copy_from_slice(&u64::MAX.to_le_bytes()); // grain directory at end
            b[12..20].copy_from_slice(&1u64.to_le_bytes()); // bogus capacity in the leading header
            let mut marker = [0u8; 512];
            marker[12..16].copy_from_slice(&VMDK_MARKER_FOOTER.to_le_bytes());
            let mut footer = header.clone();
            footer[12..20].copy_from_slice(&footer_capacity.to_le_bytes());
            b.extend_from_slice(&marker);
            b.extend_from_slice(&footer);
            b.extend_from_slice(&[0u8; 512]);
            b
        };
        let info = ok(inspect_bytes(&with_footer(2097152), 4096, None));
        assert_eq!((info.virtual_size, info.detail("footer")), (GIB, Some("true")));
        // A footer claiming 4G contradicts the single 1G extent of the descriptor.
        assert!(matches!(
            err(inspect_bytes(&with_footer(4 * 2097152), 4096, None)),
            InspectError::VmdkExtent(_)
        ));
        // Grain directory at end with no footer at all.
        let mut b = base.clone();
        b[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = err(inspect_bytes(&b, 4096, None));
        assert!(
            matches!(&e, InspectError::Malformed { reason, .. } if reason.contains("footer")),
            "{e}"
        );
    }

    // ----- vhd ---------------------------------------------------------------------------------------------------

    #[test]
    fn vhd_dynamic_and_fixed_accepted() {
        let d = tmp();
        let dynp = create(d.path(), "d.vhd", "vpc", &[], "1G");
        let info = ok(inspect(&dynp, Some(DiskFormat::Vhd)));
        assert_eq!(info.format, DiskFormat::Vhd);
        assert_eq!(info.detail("subformat"), Some("dynamic"));
        assert_eq!(info.virtual_size, qemu_virtual_size(&dynp, "vpc"));
        assert!(info.virtual_size >= GIB && info.virtual_size < GIB + 8 * MIB);

        let fixed = create(d.path(), "f.vhd", "vpc", &["-o", "subformat=fixed"], "64M");
        let info = ok(inspect(&fixed, DiskFormat::parse("vpc")));
        assert_eq!(info.detail("subformat"), Some("fixed"));
        assert_eq!(info.detail("footer_at"), Some("end"));
        assert_eq!(info.virtual_size, qemu_virtual_size(&fixed, "vpc"));
        assert_eq!(info.virtual_size + 512, info.file_size);
    }

    fn set_vhd_footer(footer: &mut [u8], f: impl Fn(&mut [u8])) {
        f(footer);
        footer[64..68].fill(0);
        let sum = vhd_checksum(footer);
        footer[64..68].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn vhd_differencing_and_bad_checksum_refused() {
        let d = tmp();
        let p = create(d.path(), "d.vhd", "vpc", &[], "1G");
        let mut b = read(&p);
        let n = b.len();
        set_vhd_footer(&mut b[..512], |f| {
            f[60..64].copy_from_slice(&VHD_DIFFERENCING.to_be_bytes())
        });
        set_vhd_footer(&mut b[n - 512..], |f| {
            f[60..64].copy_from_slice(&VHD_DIFFERENCING.to_be_bytes())
        });
        assert!(matches!(
            err(inspect_bytes(&b, 512, None)),
            InspectError::BackingFile { format: "vhd", .. }
        ));

        let mut b = read(&p);
        b[100] ^= 0x55;
        let e = err(inspect_bytes(&b, 512, None));
        assert!(
            matches!(&e, InspectError::Malformed { reason, .. } if reason.contains("checksum")),
            "{e}"
        );
    }

    // ----- vhdx --------------------------------------------------------------------------------------------------

    #[test]
    fn vhdx_accepted() {
        let d = tmp();
        let p = create(d.path(), "v.vhdx", "vhdx", &[], "1G");
        let info = ok(inspect(&p, Some(DiskFormat::Vhdx)));
        assert_eq!(info.format, DiskFormat::Vhdx);
        assert_eq!(info.virtual_size, GIB);
        assert_eq!(info.virtual_size, qemu_virtual_size(&p, "vhdx"));

        let fixed = create(d.path(), "f.vhdx", "vhdx", &["-o", "subformat=fixed"], "16M");
        assert_eq!(ok(inspect(&fixed, None)).virtual_size, 16 * MIB);
    }

    #[test]
    fn vhdx_metadata_beyond_prefix_is_captured() {
        let d = tmp();
        let p = create(d.path(), "big.vhdx", "vhdx", &["-o", "log_size=8M"], "2G");
        let bytes = read(&p);
        let info = ok(inspect(&p, None));
        let meta: u64 = info.detail("metadata_offset").unwrap().parse().unwrap();
        assert!(
            meta > PREFIX_LEN as u64,
            "metadata region at {meta} should lie beyond the prefix"
        );
        assert_eq!(info.virtual_size, 2 * GIB);
        for chunk in [7, 4096, 3 * 1024 * 1024 + 1, bytes.len()] {
            assert_eq!(ok(inspect_bytes(&bytes, chunk, None)), info, "chunk {chunk}");
        }
        let mut i = Inspector::new(Limits::default());
        for c in bytes.chunks(1 << 20) {
            i.feed(c);
        }
        assert!(i.prefix.len() <= PREFIX_LEN);
        assert!(i.capture_bytes <= MAX_CAPTURE_BYTES && i.captures.len() <= MAX_CAPTURES);
        assert!(i.capture_bytes > 0, "captures were used");
    }

    fn vhdx_fix_header(b: &mut [u8], off: usize) {
        b[off + 4..off + 8].fill(0);
        let crc = crc32c(&b[off..off + 4096]);
        b[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn vhdx_parent_log_and_corruption_refused() {
        let d = tmp();
        let p = create(d.path(), "v.vhdx", "vhdx", &[], "1G");
        let base = read(&p);
        let meta = 3 * MIB as usize;
        assert_eq!(&base[meta..meta + 8], b"metadata");

        // HasParent in the file parameters item.
        let mut b = base.clone();
        let count = le16(&b, meta + 10) as usize;
        let e = (0..count)
            .map(|i| meta + 32 + i * 32)
            .find(|&e| b[e..e + 16] == VHDX_META_FILE_PARAMETERS)
            .unwrap();
        let item = meta + le32(&b, e + 16) as usize;
        b[item + 4] |= 2;
        let e = err(inspect_bytes(&b, 1 << 20, None));
        assert!(matches!(e, InspectError::BackingFile { format: "vhdx", .. }), "{e}");

        // Non-empty log (LogGuid set, checksums fixed up).
        let mut b = base.clone();
        for off in [64 * 1024, 128 * 1024] {
            b[off + 48] = 1;
            vhdx_fix_header(&mut b, off);
        }
        assert!(matches!(
            err(inspect_bytes(&b, 1 << 20, None)),
            InspectError::VhdxLogNotEmpty
        ));

        // Region tables with broken checksums.
        let mut b = base.clone();
        b[192 * 1024 + 40] ^= 1;
        b[256 * 1024 + 40] ^= 1;
        let e = err(inspect_bytes(&b, 1 << 20, None));
        assert!(
            matches!(&e, InspectError::Malformed { reason, .. } if reason.contains("region table")),
            "{e}"
        );

        // Only the first region table broken: the second copy is used.
        let mut b = base.clone();
        b[192 * 1024 + 40] ^= 1;
        assert_eq!(ok(inspect_bytes(&b, 1 << 20, None)).virtual_size, GIB);

        // Truncated before the metadata region.
        let e = err(inspect_bytes(&base[..2 * MIB as usize], 1 << 20, None));
        assert!(matches!(e, InspectError::Truncated { format: "vhdx", .. }), "{e}");
    }

    // ----- iso ---------------------------------------------------------------------------------------------------

    fn make_iso(blocks: u32, block_size: u16) -> Vec<u8> {
        let sectors = 20usize;
        let mut b = vec![0u8; sectors * 2048];
        let pvd = &mut b[16 * 2048..17 * 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[40..72].fill(b' ');
        pvd[40..48].copy_from_slice(b"TEST_ISO");
        pvd[80..84].copy_from_slice(&blocks.to_le_bytes());
        pvd[84..88].copy_from_slice(&blocks.to_be_bytes());
        pvd[128..130].copy_from_slice(&block_size.to_le_bytes());
        pvd[130..132].copy_from_slice(&block_size.to_be_bytes());
        let term = &mut b[17 * 2048..18 * 2048];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        term[6] = 1;
        b
    }

    #[test]
    fn iso_accepted() {
        let iso = make_iso(20, 2048);
        let info = ok(inspect_bytes(&iso, 2048, Some(DiskFormat::Iso)));
        assert_eq!(info.format, DiskFormat::Iso);
        assert_eq!(info.virtual_size, 20 * 2048);
        assert_eq!(info.detail("volume_id"), Some("TEST_ISO"));
        // The size comes from the descriptor, not the file length.
        assert_eq!(
            ok(inspect_bytes(&make_iso(500_000, 2048), 1 << 20, None)).virtual_size,
            500_000 * 2048
        );
    }

    #[test]
    fn iso_garbled_refused() {
        let mut iso = make_iso(20, 2048);
        iso[16 * 2048 + 84] ^= 1; // both-endian halves disagree
        assert!(matches!(
            err(inspect_bytes(&iso, 2048, None)),
            InspectError::Malformed { format: "iso", .. }
        ));
        assert!(matches!(
            err(inspect_bytes(&make_iso(20, 3000), 2048, None)),
            InspectError::Malformed { .. }
        ));
        let mut iso = make_iso(20, 2048);
        iso[16 * 2048] = 255; // terminator first: no PVD
        assert!(matches!(
            err(inspect_bytes(&iso, 2048, None)),
            InspectError::Malformed { .. }
        ));
        let iso = make_iso(20, 2048);
        assert!(matches!(
            err(inspect_bytes(&iso[..33000], 2048, None)),
            InspectError::Truncated { format: "iso", .. }
        ));
    }

    // ----- unsupported, contradictions, polyglots, limits -------------------------------------------------------

    #[test]
    fn unsupported_formats_refused() {
        let d = tmp();
        let cases: Vec<(PathBuf, &str)> = vec![
            (create(d.path(), "x.qed", "qed", &[], "1G"), "qed"),
            (create(d.path(), "x.vdi", "vdi", &[], "1G"), "vdi"),
            (create(d.path(), "x.qcow", "qcow", &[], "16M"), "qcow (version 1)"),
            (create(d.path(), "x.hdd", "parallels", &[], "16M"), "parallels"),
            (
                create(
                    d.path(),
                    "x.luks",
                    "luks",
                    &["--object", "secret,id=sec0,data=x", "-o", "key-secret=sec0"],
                    "16M",
                ),
                "luks",
            ),
        ];
        for (p, name) in cases {
            for declared in [None, Some(DiskFormat::Raw)] {
                let e = err(inspect(&p, declared));
                assert!(
                    matches!(&e, InspectError::UnsupportedFormat(n) if *n == name),
                    "{name}: {e}"
                );
            }
        }
        let mut vbox = b"<<< Oracle VM VirtualBox Disk Image >>>\n".to_vec();
        vbox.resize(4096, 0);
        assert!(matches!(
            err(inspect_bytes(&vbox, 100, None)),
            InspectError::UnsupportedFormat("vdi")
        ));
        let mut dmg = vec![0u8; 8192];
        dmg[8192 - 512..8192 - 508].copy_from_slice(b"koly");
        assert!(matches!(
            err(inspect_bytes(&dmg, 100, None)),
            InspectError::UnsupportedFormat("dmg")
        ));
    }

    #[test]
    fn declared_format_contradictions_refused() {
        let d = tmp();
        let q = create(d.path(), "q.qcow2", "qcow2", &[], "1G");
        let r = create(d.path(), "r.raw", "raw", &[], "16M");
        let v = create(d.path(), "v.vhdx", "vhdx", &[], "1G");
        let mismatch = |res, want_declared, want_detected| match err(res) {
            InspectError::FormatMismatch { declared, detected } => {
                assert_eq!((declared, detected), (want_declared, want_detected));
            }
            e => panic!("expected a mismatch, got {e}"),
        };
        mismatch(inspect(&q, Some(DiskFormat::Raw)), DiskFormat::Raw, DiskFormat::Qcow2);
        mismatch(inspect(&r, Some(DiskFormat::Qcow2)), DiskFormat::Qcow2, DiskFormat::Raw);
        mismatch(inspect(&v, Some(DiskFormat::Vhd)), DiskFormat::Vhd, DiskFormat::Vhdx);
        mismatch(
            inspect_bytes(&make_iso(20, 2048), 4096, Some(DiskFormat::Raw)),
            DiskFormat::Raw,
            DiskFormat::Iso,
        );
        let e = err(inspect(&q, Some(DiskFormat::Raw)));
        assert!(e.to_string().contains("header contradicts declared format"), "{e}");
        // Consistent declarations pass.
        assert_eq!(ok(inspect(&r, Some(DiskFormat::Raw))).format, DiskFormat::Raw);
        assert_eq!(ok(inspect(&q, Some(DiskFormat::Qcow2))).format, DiskFormat::Qcow2);
    }

    #[test]
    fn polyglots_refused() {
        let d = tmp();
        let q = read(&create(d.path(), "q.qcow2", "qcow2", &[], "1G"));
        let f = read(&create(d.path(), "f.vhd", "vpc", &["-o", "subformat=fixed"], "1M"));
        let mut poly = q.clone();
        poly.extend_from_slice(&f[f.len() - 512..]);
        let e = err(inspect_bytes(&poly, 1 << 20, None));
        assert!(
            matches!(&e, InspectError::AmbiguousFormat(s) if s.contains("qcow2") && s.contains("vhd")),
            "{e}"
        );

        let mut iso = make_iso(20, 2048);
        iso[..512].copy_from_slice(&q[..512]);
        assert!(matches!(
            err(inspect_bytes(&iso, 4096, Some(DiskFormat::Iso))),
            InspectError::AmbiguousFormat(_)
        ));
    }

    #[test]
    fn virtual_size_limit() {
        let d = tmp();
        let q = create(d.path(), "q.qcow2", "qcow2", &[], "1G");
        let lim = |max| inspect_file(&q, Limits { max_virtual_size: max }, None);
        let e = err(lim(GIB - 1));
        assert!(matches!(e, InspectError::VirtualSizeTooLarge { virtual_size: GIB, limit } if limit == GIB - 1));
        assert_eq!(ok(lim(GIB)).virtual_size, GIB);
        assert_eq!(ok(lim(0)).virtual_size, GIB);
        // Raw: the file size is the virtual size.
        let r = create(d.path(), "r.raw", "raw", &[], "8M");
        assert!(matches!(
            err(inspect_file(&r, Limits { max_virtual_size: MIB }, None)),
            InspectError::VirtualSizeTooLarge { .. }
        ));
        // A huge sparse-looking vmdk.
        let v = create(d.path(), "v.vmdk", "vmdk", &[], "2T");
        assert!(matches!(
            err(inspect_file(&v, Limits { max_virtual_size: GIB }, None)),
            InspectError::VirtualSizeTooLarge { .. }
        ));
    }

    // ----- streaming behaviour ---------------------------------------------------------------------------------

    fn outcome(r: Result<DiskInfo, InspectError>) -> String {
        match r {
            Ok(info) => format!("{info:?}"),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn chunk_size_independence() {
        let d = tmp();
        let images: Vec<Vec<u8>> = vec![
            read(&create(d.path(), "a.qcow2", "qcow2", &[], "1G")),
            read(&create(
                d.path(),
                "b.vmdk",
                "vmdk",
                &["-o", "subformat=streamOptimized"],
                "1G",
            )),
            read(&create(d.path(), "c.vhd", "vpc", &[], "1G")),
            read(&create(d.path(), "e.vhdx", "vhdx", &[], "1G")),
            read(&create(
                d.path(),
                "f.qcow2",
                "qcow2",
                &["-b", "a.qcow2", "-F", "qcow2"],
                "1G",
            )),
            make_iso(20, 2048),
        ];
        for img in &images {
            let reference = outcome(inspect_bytes(img, 1 << 20, None));
            let small = img.len() <= 512 * 1024;
            for chunk in [1usize, 7, 4093, 1 << 20, img.len()] {
                if chunk == 1 && !small {
                    continue; // 1-byte feeding of the 8 MiB vhdx is covered with 7-byte chunks
                }
                assert_eq!(
                    outcome(inspect_bytes(img, chunk, None)),
                    reference,
                    "chunk size {chunk}"
                );
            }
        }
        assert!(outcome(inspect_bytes(&images[0], 1, None)).contains("Qcow2"));
        assert!(outcome(inspect_bytes(&images[4], 1, None)).contains("backing"));
    }

    /// Inspect `bytes` reading only the ranges [`Inspector::wanted`] names, in pieces of at
    /// most `piece` bytes; returns the verdict and how many bytes were read.
    fn inspect_sparse(
        bytes: &[u8],
        piece: usize,
        declared: Option<DiskFormat>,
    ) -> (Result<DiskInfo, InspectError>, u64) {
        let mut i = Inspector::new(Limits::default());
        let size = bytes.len() as u64;
        let mut read = 0;
        while let Some(r) = i.wanted(size) {
            assert!(r.start >= i.bytes_seen() && r.start < r.end && r.end <= size, "{r:?}");
            i.skip_to(r.start);
            assert_eq!(i.bytes_seen(), r.start);
            for c in bytes[r.start as usize..r.end as usize].chunks(piece) {
                i.feed(c);
                read += c.len() as u64;
            }
        }
        (i.finish(declared), read)
    }

    #[test]
    fn sparse_reading_gives_the_same_verdict() {
        let d = tmp();
        let mut big_raw = vec![0u8; 9 << 20];
        big_raw[5 << 20] = 1;
        let images: Vec<(&str, Vec<u8>)> = vec![
            ("qcow2", read(&create(d.path(), "a.qcow2", "qcow2", &[], "1G"))),
            (
                "vmdk",
                read(&create(
                    d.path(),
                    "b.vmdk",
                    "vmdk",
                    &["-o", "subformat=streamOptimized"],
                    "1G",
                )),
            ),
            ("vhd", read(&create(d.path(), "c.vhd", "vpc", &[], "1G"))),
            (
                "vhd fixed",
                read(&create(d.path(), "c2.vhd", "vpc", &["-o", "subformat=fixed"], "8M")),
            ),
            ("vhdx", read(&create(d.path(), "e.vhdx", "vhdx", &[], "1G"))),
            (
                "vhdx captures",
                read(&create(d.path(), "big.vhdx", "vhdx", &["-o", "log_size=8M"], "2G")),
            ),
            (
                "backing",
                read(&create(
                    d.path(),
                    "f.qcow2",
                    "qcow2",
                    &["-b", "a.qcow2", "-F", "qcow2"],
                    "1G",
                )),
            ),
            ("iso", make_iso(20, 2048)),
            ("raw", big_raw),
            ("tiny", vec![7u8; 100]),
        ];
        for (name, img) in &images {
            let reference = outcome(inspect_bytes(img, 1 << 20, None));
            for piece in [4093, 1 << 20] {
                let (sparse, read) = inspect_sparse(img, piece, None);
                assert_eq!(outcome(sparse), reference, "{name}, pieces of {piece}");
                let bound = (PREFIX_LEN + TAIL_LEN + MAX_CAPTURE_BYTES) as u64;
                assert!(read <= bound.min(img.len() as u64), "{name}: read {read} bytes");
            }
        }
        // The raw image of 9 MiB is read at its first 4 MiB and its tail only.
        assert_eq!(
            inspect_sparse(&images[8].1, 1 << 20, None).1,
            (PREFIX_LEN + TAIL_LEN) as u64
        );
        assert!(outcome(inspect_sparse(&images[6].1, 4096, None).0).contains("backing"));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut i = Inspector::new(Limits::default());
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..24 {
            i.feed(&chunk);
        }
        assert_eq!(i.prefix.len(), PREFIX_LEN);
        assert!(i.captures.is_empty());
        assert_eq!(i.bytes_seen(), 24 << 20);
        let info = ok(i.finish(None));
        assert_eq!((info.format, info.virtual_size), (DiskFormat::Raw, 24 << 20));
    }

    #[test]
    fn disk_format_names() {
        for f in DiskFormat::ALL {
            assert_eq!(DiskFormat::parse(f.as_str()), Some(f));
            assert_eq!(f.to_string(), f.as_str());
        }
        assert_eq!(DiskFormat::parse("vpc"), Some(DiskFormat::Vhd));
        assert_eq!(DiskFormat::parse("qcow"), None);
        assert_eq!(DiskFormat::parse("QCOW2"), None);
    }

    // ----- no panics -------------------------------------------------------------------------------------------

    /// xorshift64*: deterministic, dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn brute_force_no_panic() {
        let d = tmp();
        let mut images: Vec<Vec<u8>> = vec![
            read(&create(d.path(), "a.qcow2", "qcow2", &[], "1G")),
            read(&create(d.path(), "a2.qcow2", "qcow2", &["-o", "compat=0.10"], "1G")),
            read(&create(d.path(), "b.vmdk", "vmdk", &[], "1G")),
            read(&create(
                d.path(),
                "c.vmdk",
                "vmdk",
                &["-o", "subformat=streamOptimized"],
                "1G",
            )),
            read(&create(d.path(), "d.vhd", "vpc", &[], "1G")),
            read(&create(d.path(), "e.vhdx", "vhdx", &[], "1G")),
            make_iso(20, 2048),
        ];
        for magic in [
            &b"QFI\xfb"[..],
            b"KDMV",
            b"vhdxfile",
            b"conectix",
            b"QED\0",
            b"LUKS\xba\xbe",
            b"COWD",
        ] {
            let mut m = magic.to_vec();
            m.resize(70_000, 0);
            images.push(m);
        }
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let formats = [
            None,
            Some(DiskFormat::Raw),
            Some(DiskFormat::Qcow2),
            Some(DiskFormat::Vhdx),
        ];
        let mut runs = 0;
        for img in &images {
            // Truncations: every length up to 1 KiB, then random ones.
            let random: Vec<usize> = (0..150).map(|_| rng.below(img.len() + 1)).collect();
            for len in (0..=1024.min(img.len())).step_by(3).chain(random) {
                let declared = formats[rng.below(formats.len())];
                let _ = inspect_bytes(&img[..len], 1 + rng.below(70_000), declared);
                runs += 1;
            }
            // Mutations: random bytes, random words in header fields, mostly near the start.
            for _ in 0..250 {
                let mut m = img.clone();
                let hot = m.len().min(if rng.below(4) == 0 { 1 << 22 } else { 4096 });
                for _ in 0..1 + rng.below(8) {
                    let pos = rng.below(hot);
                    if rng.below(2) == 0 {
                        m[pos] = rng.next() as u8;
                    } else {
                        let pos = pos & !7;
                        let end = (pos + 8).min(m.len());
                        let word = rng.next().to_le_bytes();
                        m[pos..end].copy_from_slice(&word[..end - pos]);
                    }
                }
                if rng.below(3) == 0 {
                    let cut = rng.below(m.len() + 1);
                    m.truncate(cut);
                }
                let _ = inspect_bytes(&m, 1 + rng.below(1 << 20), formats[rng.below(formats.len())]);
                runs += 1;
            }
        }
        assert!(runs > 3000, "ran {runs} cases");
        // Sanity: the untouched images are still accepted after all that.
        assert_eq!(ok(inspect_bytes(&images[0], 4096, None)).format, DiskFormat::Qcow2);
    }

    /// Mutates the VHDX structures (fixing up the CRC-32C checksums so the mutations reach the parser), for both
    /// the default layout and one whose metadata region lies beyond the prefix (the capture path).
    #[test]
    fn vhdx_structure_fuzz_no_panic() {
        let d = tmp();
        let small = read(&create(d.path(), "a.vhdx", "vhdx", &[], "1G"));
        let big = read(&create(d.path(), "b.vhdx", "vhdx", &["-o", "log_size=8M"], "1G"));
        let mut rng = Rng(0x0123_4567_89AB_CDEF);
        let (mut accepted, mut refused) = (0, 0);
        for base in [&small, &big] {
            let meta = le64(base, 192 * 1024 + 16 + 32 + 16) as usize;
            assert_eq!(&base[meta..meta + 8], b"metadata");
            for _ in 0..150 {
                let mut m = base.clone();
                let (start, len, crc_block) = match rng.below(4) {
                    0 => (64 * 1024 + 8, 72, Some((64 * 1024, 4096))),
                    1 => (192 * 1024 + 8, 80, Some((192 * 1024, 65536))),
                    2 => (meta + 8, 32 + 6 * 32, None),
                    _ => (meta + 65536, 256, None),
                };
                for _ in 0..1 + rng.below(4) {
                    let pos = start + (rng.below(len) & !3);
                    let word = (rng.next() as u32).to_le_bytes();
                    m[pos..pos + 4].copy_from_slice(&word);
                }
                if let Some((off, size)) = crc_block {
                    m[off + 4..off + 8].fill(0);
                    let crc = crc32c(&m[off..off + size]);
                    m[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
                }
                match inspect_bytes(&m, 1 + rng.below(3 << 20), None) {
                    Ok(_) => accepted += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        assert!(accepted > 0 && refused > 0, "accepted {accepted}, refused {refused}");
    }

    #[test]
    fn vmdk_descriptor_beyond_prefix_is_captured_and_bounded() {
        let d = tmp();
        let base = read(&create(d.path(), "m.vmdk", "vmdk", &[], "1G"));
        let (off, len) = (le64(&base, 28) as usize * 512, le64(&base, 36) as usize * 512);
        let far = 6 * MIB as usize;
        let mut b = base.clone();
        b.resize(far + len, 0);
        b.copy_within(off..off + len, far);
        b[off..off + len].fill(0); // nothing useful left in the prefix
        b[28..36].copy_from_slice(&((far / 512) as u64).to_le_bytes());
        for chunk in [7, 65536, 1 << 20, b.len()] {
            let info = ok(inspect_bytes(&b, chunk, Some(DiskFormat::Vmdk)));
            assert_eq!(
                (info.virtual_size, info.detail("create_type")),
                (GIB, Some("monolithicSparse"))
            );
        }

        // With the capture budget used up, the descriptor cannot be kept: refused, never accepted unchecked.
        let mut i = Inspector::new(Limits::default());
        for k in 0..MAX_CAPTURES as u64 {
            i.captures.push(Capture {
                start: 1 << 40 | k,
                len: 1,
                data: Vec::new(),
            });
        }
        for c in b.chunks(1 << 20) {
            i.feed(c);
        }
        let e = err(i.finish(None));
        assert!(matches!(e, InspectError::OutsideWindow { format: "vmdk", .. }), "{e}");
    }
}
