//! VHDX ([MS-VHDX]).

use std::borrow::Cow;

use super::{
    arr, detail, le16, le32, le64, malformed, slice, InspectError, Need, PResult, Parsed, Step, View, KIB, MIB,
};

pub(super) const VHDX_MAGIC: &[u8] = b"vhdxfile";

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

pub(super) fn parse_vhdx(v: &View) -> PResult {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::testutil::*;
    use crate::inspect::*;

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
}
