//! ISO 9660 (ECMA-119).

use super::{at, be16, be32, detail, le16, le32, malformed, printable, slice, Need, PResult, Parsed, Step, View};

/// Where the volume descriptor set starts (sector 16 of 2048 bytes).
pub(super) const ISO_PVD_OFFSET: u64 = 16 * 2048;

const ISO_MAX_DESCRIPTORS: u64 = 64;

pub(super) fn parse_iso(v: &View) -> PResult {
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

#[cfg(test)]
mod tests {
    use crate::inspect::testutil::*;
    use crate::inspect::*;

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
}
