//! Detection: every signature the bytes carry.

use super::iso::ISO_PVD_OFFSET;
use super::qcow2::QCOW_MAGIC;
use super::vhd::VHD_COOKIE;
use super::vhdx::VHDX_MAGIC;
use super::vmdk::VMDK_MAGIC;
use super::{be32, le32, slice, DiskFormat};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Detected {
    Known(DiskFormat),
    Unsupported(&'static str),
    VmdkDescriptor,
}

impl Detected {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Detected::Known(f) => f.as_str(),
            Detected::Unsupported(n) => n,
            Detected::VmdkDescriptor => "vmdk descriptor",
        }
    }
}

/// Every signature the bytes carry (deduplicated). Empty means raw.
pub(super) fn detect(prefix: &[u8], tail: &[u8]) -> Vec<Detected> {
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
