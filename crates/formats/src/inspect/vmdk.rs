//! VMDK (VMware Virtual Disk Format 1.1): single-file monolithicSparse and streamOptimized.

use super::{
    detail, le16, le32, le64, malformed, printable, slice, InspectError, Need, PResult, Parsed, Step, View,
    MAX_VMDK_DESCRIPTOR, SECTOR,
};

pub(super) const VMDK_MAGIC: &[u8] = b"KDMV";

const VMDK_GD_AT_END: u64 = u64::MAX;
const VMDK_FLAG_NL_DETECT: u32 = 1;
const VMDK_MARKER_FOOTER: u32 = 3;

pub(super) fn parse_vmdk(v: &View) -> PResult {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::testutil::*;
    use crate::inspect::*;

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
