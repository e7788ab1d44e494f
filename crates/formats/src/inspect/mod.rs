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
//!
//! # Layout
//!
//! This file holds the streaming state ([`Inspector`]), the verdict ([`Inspector::finish`]) and what
//! the parsers share; `detect.rs` finds the signatures, and each format has its own parser file
//! (`qcow2.rs`, `raw.rs`, `vmdk.rs`, `vhd.rs`, `vhdx.rs`, `iso.rs`) with its tests.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

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
                vhdx::parse_vhdx(&view)
            } else if self.prefix.starts_with(VMDK_MAGIC) {
                vmdk::parse_vmdk(&view)
            } else if self.prefix.starts_with(VHD_COOKIE) {
                vhd::parse_vhd(&view)
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
            DiskFormat::Raw => Ok(Step::Done(raw::parse_raw(file_size))),
            DiskFormat::Qcow2 => qcow2::parse_qcow2(&view),
            DiskFormat::Vmdk => vmdk::parse_vmdk(&view),
            DiskFormat::Vhd => vhd::parse_vhd(&view),
            DiskFormat::Vhdx => vhdx::parse_vhdx(&view),
            DiskFormat::Iso => iso::parse_iso(&view),
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

/// Streams `reader` through an [`Inspector`] in 1 MiB chunks (a file, or anything else that reads).
pub fn inspect_reader<R: Read>(
    mut reader: R,
    limits: Limits,
    declared: Option<DiskFormat>,
) -> Result<DiskInfo, InspectError> {
    let mut inspector = Inspector::new(limits);
    let mut buf = vec![0u8; MIB as usize];
    loop {
        let n = match reader.read(&mut buf) {
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

mod detect;
mod iso;
mod qcow2;
mod raw;
#[cfg(test)]
mod testutil;
mod vhd;
mod vhdx;
mod vmdk;

use detect::{detect, Detected};
use vhd::VHD_COOKIE;
use vhdx::VHDX_MAGIC;
use vmdk::VMDK_MAGIC;

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

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
}
