//! `Range` (blob GET) and `Content-Range` (upload PATCH) header parsing.
#![no_main]

use im_formats::ranges::{parse_content_range, parse_range, RangeRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = std::str::from_utf8(data) else { return };

    match parse_range(v) {
        Some(RangeRequest::From(start, Some(end))) => {
            assert!(end >= start, "{v:?}: end {end} before start {start}");
            assert_eq!(
                parse_range(&format!("bytes={start}-{end}")),
                Some(RangeRequest::From(start, Some(end)))
            );
        }
        Some(RangeRequest::From(start, None)) => {
            assert_eq!(
                parse_range(&format!("bytes={start}-")),
                Some(RangeRequest::From(start, None))
            );
        }
        Some(RangeRequest::Suffix(n)) => {
            assert_eq!(parse_range(&format!("bytes=-{n}")), Some(RangeRequest::Suffix(n)));
        }
        None => {}
    }

    if let Ok((start, len)) = parse_content_range(v) {
        assert!(len >= 1, "{v:?}: empty range");
        // The range START..START+LEN must be representable: START+LEN-1 fits in u64.
        let end = start
            .checked_add(len - 1)
            .unwrap_or_else(|| panic!("{v:?}: start {start} + len {len} overflows"));
        assert_eq!(parse_content_range(&format!("{start}-{end}")).ok(), Some((start, len)));
        assert_eq!(
            parse_content_range(&format!("bytes {start}-{end}/*")).ok(),
            Some((start, len))
        );
    }
});
