//! The streaming disk-image inspector (qcow2, raw, vmdk, vhd, vhdx, iso).
//!
//! Input: a control byte, then (padded mode) two bytes of padding length, then the image bytes.
//! Control byte: bits 0-2 pick the declared format (0 none), bits 3-5 the chunk size fed at a
//! time, bit 6 a virtual-size limit, bit 7 padded mode: the first half of the bytes, then
//! `pad × 512` zero bytes (up to 32 MiB), then the second half, so that structures found through
//! the tail (VHD and VMDK footers) and beyond the 4 MiB prefix (targeted captures) are reached.
#![no_main]

use im_formats::inspect::{DiskFormat, DiskInfo, InspectError, Inspector, Limits, PREFIX_LEN};
use libfuzzer_sys::fuzz_target;

const CHUNKS: [usize; 8] = [1, 7, 512, 4096, 65536, 1 << 20, 3 << 20, usize::MAX];

fn run(bytes: &[u8], chunk: usize, limits: Limits, declared: Option<DiskFormat>) -> Result<DiskInfo, InspectError> {
    let mut ins = Inspector::new(limits);
    for c in bytes.chunks(chunk.min(bytes.len().max(1))) {
        ins.feed(c);
    }
    assert_eq!(ins.bytes_seen(), bytes.len() as u64);
    ins.finish(declared)
}

fn run_sparse(bytes: &[u8], chunk: usize, limits: Limits, declared: Option<DiskFormat>) -> Result<DiskInfo, InspectError> {
    let mut ins = Inspector::new(limits);
    let size = bytes.len() as u64;
    while let Some(r) = ins.wanted(size) {
        assert!(r.start >= ins.bytes_seen() && r.start < r.end && r.end <= size, "wanted {r:?}");
        ins.skip_to(r.start);
        assert_eq!(ins.bytes_seen(), r.start, "skip_to");
        let piece = &bytes[r.start as usize..r.end as usize];
        for c in piece.chunks(chunk.min(piece.len()).max(1)) {
            ins.feed(c);
        }
    }
    ins.finish(declared)
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let declared = match ctl & 7 {
        0 | 7 => None,
        n => Some(DiskFormat::ALL[usize::from(n - 1)]),
    };
    let chunk = CHUNKS[usize::from((ctl >> 3) & 7)];
    let bytes: Vec<u8> = if ctl & 0x80 != 0 {
        let Some((pad, body)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let pad = usize::from(u16::from_le_bytes(*pad)) * 512;
        let (a, b) = body.split_at(body.len() / 2);
        let mut v = Vec::with_capacity(a.len() + pad + b.len());
        v.extend_from_slice(a);
        v.resize(a.len() + pad, 0);
        v.extend_from_slice(b);
        v
    } else {
        rest.to_vec()
    };
    let size = bytes.len() as u64;
    let limit = if ctl & 0x40 != 0 { size.saturating_mul(2) } else { 0 };
    let limits = Limits {
        max_virtual_size: limit,
    };

    let result = run(&bytes, chunk, limits, declared);
    // Streaming: how the bytes are cut into chunks never changes the verdict.
    let whole = run(&bytes, usize::MAX, limits, declared);
    assert_eq!(
        format!("{result:?}"),
        format!("{whole:?}"),
        "chunk size {chunk} changed the verdict"
    );
    if chunk != 4096 {
        let other = run(&bytes, 4096, limits, declared);
        assert_eq!(
            format!("{result:?}"),
            format!("{other:?}"),
            "chunk size 4096 changed the verdict"
        );
    }

    // Random access: feeding only the ranges the inspector names (skipping the rest, as the end
    // of a resumable upload does) never changes the verdict either.
    let sparse = run_sparse(&bytes, chunk, limits, declared);
    assert_eq!(
        format!("{result:?}"),
        format!("{sparse:?}"),
        "reading only the wanted ranges changed the verdict"
    );

    match result {
        Ok(info) => {
            assert_eq!(info.file_size, size);
            if let Some(d) = declared {
                assert_eq!(info.format, d, "accepted as another format than declared");
            }
            if limit != 0 {
                assert!(
                    info.virtual_size <= limit,
                    "virtual size {} above limit {limit}",
                    info.virtual_size
                );
            }
            if info.format == DiskFormat::Raw {
                assert_eq!(info.virtual_size, size, "raw virtual size is the file size");
            }
            // Declaring what was detected changes nothing; an unlimited inspector agrees.
            let again = run(&bytes, usize::MAX, limits, Some(info.format)).expect("accepted when declared");
            assert_eq!(again, info);
            let unlimited = run(&bytes, usize::MAX, Limits::default(), None).expect("accepted without limit");
            assert_eq!(unlimited, info);
            assert!(size > 0);
        }
        Err(InspectError::Empty) => assert_eq!(size, 0),
        Err(InspectError::FormatMismatch { declared: d, detected }) => {
            assert_eq!(Some(d), declared);
            assert_ne!(d, detected);
        }
        Err(InspectError::VirtualSizeTooLarge { virtual_size, limit: l }) => {
            assert_eq!(l, limit);
            assert!(virtual_size > l);
        }
        Err(InspectError::Truncated {
            start, end, file_size, ..
        }) => {
            assert_eq!(file_size, size);
            assert!(end > file_size && start <= end);
        }
        Err(InspectError::OutsideWindow { start, end, .. }) => {
            assert!(start <= end && end <= size);
            // Everything in the prefix is kept, so a range inside it is never outside the window.
            assert!(end > PREFIX_LEN as u64, "{start}..{end} is inside the prefix");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
