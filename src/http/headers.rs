//! The byte-range request headers: `Range` on blob GETs and `Content-Range` on chunked upload
//! PATCHes (the `/v2` API and the catalog's upload API share the latter). The parsers are
//! [`im_formats::ranges`] (fuzzed on their own: `fuzz/fuzz_targets/http_ranges.rs`); these
//! wrappers speak the core's types.

use crate::core::uploads::RangeRequest;
use crate::error::Result;
use im_formats::ranges;

/// `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`. Anything else, including several
/// ranges, is ignored and the whole blob is served, as RFC 9110 allows.
pub fn parse_range(v: &str) -> Option<RangeRequest> {
    Some(match ranges::parse_range(v)? {
        ranges::RangeRequest::From(start, end) => RangeRequest::From(start, end),
        ranges::RangeRequest::Suffix(n) => RangeRequest::Suffix(n),
    })
}

/// A PATCH `Content-Range`: `START-END`, with an optional `bytes ` prefix and `/total` suffix;
/// returns the start and the length. Refused as [`crate::error::Error::BlobUploadInvalid`].
pub fn parse_content_range(v: &str) -> Result<(u64, u64)> {
    Ok(ranges::parse_content_range(v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrappers_keep_the_core_types() {
        assert_eq!(parse_range("bytes=0-9"), Some(RangeRequest::From(0, Some(9))));
        assert_eq!(parse_range("bytes=-5"), Some(RangeRequest::Suffix(5)));
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_content_range("bytes 100-199/*").ok(), Some((100, 100)));
        assert!(matches!(
            parse_content_range("5-1"),
            Err(crate::error::Error::BlobUploadInvalid(m)) if m == "invalid Content-Range \"5-1\""
        ));
    }
}
