//! Helpers of the inspector's tests: real images made by qemu-img in a temporary directory, plus crafted ones.

use std::process::Command;

pub(super) use std::path::{Path, PathBuf};

use super::*;

pub(super) const GIB: u64 = 1024 * 1024 * 1024;

pub(super) fn qemu_img(args: &[&str]) -> String {
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
pub(super) fn create(dir: &Path, name: &str, fmt: &str, opts: &[&str], size: &str) -> PathBuf {
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
pub(super) fn qemu_virtual_size(path: &Path, fmt: &str) -> u64 {
    let out = qemu_img(&["info", "-f", fmt, path.to_str().unwrap()]);
    let line = out
        .lines()
        .find(|l| l.starts_with("virtual size:"))
        .expect("virtual size line");
    let inner = line.rsplit_once('(').unwrap().1;
    inner.split_whitespace().next().unwrap().parse().unwrap()
}

pub(super) fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A file streamed through the inspector, as the main crate's `core::inspect::inspect_file` does.
pub(super) fn inspect_file(
    path: impl AsRef<Path>,
    limits: Limits,
    declared: Option<DiskFormat>,
) -> Result<DiskInfo, InspectError> {
    inspect_reader(std::fs::File::open(path)?, limits, declared)
}

pub(super) fn inspect(path: &Path, declared: Option<DiskFormat>) -> Result<DiskInfo, InspectError> {
    inspect_file(path, Limits::default(), declared)
}

pub(super) fn inspect_bytes(
    bytes: &[u8],
    chunk: usize,
    declared: Option<DiskFormat>,
) -> Result<DiskInfo, InspectError> {
    let mut i = Inspector::new(Limits::default());
    for c in bytes.chunks(chunk.max(1)) {
        i.feed(c);
    }
    i.finish(declared)
}

pub(super) fn ok(r: Result<DiskInfo, InspectError>) -> DiskInfo {
    r.unwrap_or_else(|e| panic!("expected the image to be accepted, got: {e}"))
}

pub(super) fn err(r: Result<DiskInfo, InspectError>) -> InspectError {
    match r {
        Ok(info) => panic!("expected a refusal, got {info:?}"),
        Err(e) => e,
    }
}

pub(super) fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

pub(super) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}
pub(super) fn make_iso(blocks: u32, block_size: u16) -> Vec<u8> {
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

/// xorshift64*: deterministic, dependency-free.
pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
