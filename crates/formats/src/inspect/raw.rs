//! Raw: what no signature matched; the virtual size is the file size.

use super::Parsed;

pub(super) fn parse_raw(file_size: u64) -> Parsed {
    Parsed {
        virtual_size: file_size,
        details: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use crate::inspect::testutil::*;
    use crate::inspect::*;

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
}
