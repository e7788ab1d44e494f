//! Pure parsers of the byte-range request headers: `Range` on blob GETs and `Content-Range` on
//! chunked upload PATCHes (the `/v2` API and the catalog's upload API share the latter).

/// A client's byte range: `From(start, end)` (`bytes=start-end`, end optional) or
/// `Suffix(n)` (`bytes=-n`, the last n bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    From(u64, Option<u64>),
    Suffix(u64),
}

/// A `Content-Range` that is not `START-END` with `END >= START` and a length that fits in u64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Content-Range {0:?}")]
pub struct ContentRangeError(pub String);

/// `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`. Anything else, including several
/// ranges, is ignored and the whole blob is served, as RFC 9110 allows.
pub fn parse_range(v: &str) -> Option<RangeRequest> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    if start.trim().is_empty() {
        return end.trim().parse().ok().map(RangeRequest::Suffix);
    }
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        e => {
            let e: u64 = e.parse().ok()?;
            if e < start {
                return None;
            }
            Some(e)
        }
    };
    Some(RangeRequest::From(start, end))
}

/// A PATCH `Content-Range`: `START-END`, with an optional `bytes ` prefix and `/total` suffix;
/// returns the start and the length (an end of u64::MAX has no length that fits: refused).
pub fn parse_content_range(v: &str) -> Result<(u64, u64), ContentRangeError> {
    let bad = || ContentRangeError(v.to_string());
    let spec = v.trim();
    let spec = spec
        .strip_prefix("bytes ")
        .or_else(|| spec.strip_prefix("bytes="))
        .unwrap_or(spec);
    let spec = spec.split('/').next().unwrap_or(spec);
    let (s, e) = spec.split_once('-').ok_or_else(bad)?;
    let s: u64 = s.trim().parse().map_err(|_| bad())?;
    let e: u64 = e.trim().parse().map_err(|_| bad())?;
    if e < s {
        return Err(bad());
    }
    let len = (e - s).checked_add(1).ok_or_else(bad)?;
    Ok((s, len))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9"), Some(RangeRequest::From(0, Some(9))));
        assert_eq!(parse_range("bytes=5-"), Some(RangeRequest::From(5, None)));
        assert_eq!(parse_range("bytes=-5"), Some(RangeRequest::Suffix(5)));
        assert_eq!(parse_range("bytes=9-5"), None);
        assert_eq!(parse_range("bytes=0-1,3-4"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_content_range("0-99").ok(), Some((0, 100)));
        assert_eq!(parse_content_range("bytes 100-199/*").ok(), Some((100, 100)));
        assert!(parse_content_range("0-18446744073709551615").is_err());
        assert_eq!(
            parse_content_range("18446744073709551615-18446744073709551615").ok(),
            Some((u64::MAX, 1))
        );
        assert!(parse_content_range("x-1").is_err());
        assert!(parse_content_range("5-1").is_err());
    }
}
