//! VHD (Virtual Hard Disk Image Format Specification): fixed and dynamic disks.

use super::{be32, be64, detail, malformed, printable, slice, InspectError, Need, PResult, Parsed, Step, View, SECTOR};

pub(super) const VHD_COOKIE: &[u8] = b"conectix";

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

pub(super) fn parse_vhd(v: &View) -> PResult {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::testutil::*;
    use crate::inspect::*;

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
}
