//! qcow2 (qemu docs/interop/qcow2.txt).

use super::{at, be32, be64, detail, malformed, printable, InspectError, Need, PResult, Parsed, Step, View};

pub(super) const QCOW_MAGIC: &[u8] = b"QFI\xfb";

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

pub(super) fn parse_qcow2(v: &View) -> PResult {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::testutil::*;
    use crate::inspect::*;

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
}
