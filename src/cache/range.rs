//! Byte ranges (RFC 9110, 14) served from a stored whole response: one range of `bytes`,
//! under `If-Range`. Plain functions, no I/O.

use std::ops::Range;

use http::HeaderMap;

/// What to send of a stored body for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    /// All of it, as `200`: no `Range`, one this does not serve (several ranges, another
    /// unit, a malformed one), or an `If-Range` the stored response does not match.
    Whole,
    /// These bytes, as `206`.
    Part(Range<usize>),
    /// No byte of the range exists: `416`.
    Unsatisfiable,
}

/// What of a stored body of `len` bytes, with `stored` headers, `req` asks for.
pub fn wanted(req: &pingora_http::RequestHeader, stored: &HeaderMap, len: usize) -> Wanted {
    let Some(range) = req
        .headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return Wanted::Whole;
    };
    if let Some(condition) = req
        .headers
        .get(http::header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        && !if_range_holds(condition.trim(), stored)
    {
        return Wanted::Whole;
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole; // several ranges: the whole body is a valid answer
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let number = |s: &str| -> Option<Option<usize>> {
        let s = s.trim();
        if s.is_empty() {
            return Some(None);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Some(s.parse().unwrap_or(usize::MAX)))
    };
    let (Some(first), Some(last)) = (number(first), number(last)) else {
        return Wanted::Whole;
    };
    match (first, last) {
        (Some(first), _) if first >= len => Wanted::Unsatisfiable,
        (Some(first), Some(last)) if last < first => Wanted::Whole,
        (Some(first), last) => {
            Wanted::Part(first..last.map_or(len, |l| l.saturating_add(1).min(len)))
        }
        (None, Some(0)) => Wanted::Unsatisfiable,
        (None, Some(suffix)) => Wanted::Part(len.saturating_sub(suffix)..len),
        (None, None) => Wanted::Whole,
    }
}

/// `If-Range`: a strong `ETag` equal to the stored one, or a date equal to its
/// `Last-Modified` (RFC 9110, 13.1.5).
fn if_range_holds(condition: &str, stored: &HeaderMap) -> bool {
    let text = |name| {
        stored
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    if condition.starts_with('"') {
        return text("etag").is_some_and(|etag| etag.trim() == condition);
    }
    if condition.starts_with("W/") {
        return false;
    }
    let modified = text("last-modified").and_then(super::fields::parse_date);
    modified.is_some() && modified == super::fields::parse_date(condition)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(range: &str, if_range: Option<&str>) -> Wanted {
        let mut req = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("range", range).unwrap();
        if let Some(c) = if_range {
            req.insert_header("if-range", c).unwrap();
        }
        let mut stored = HeaderMap::new();
        stored.insert("etag", "\"v1\"".parse().unwrap());
        stored.insert(
            "last-modified",
            "Wed, 01 Jan 2020 00:00:00 GMT".parse().unwrap(),
        );
        wanted(&req, &stored, 10)
    }

    #[test]
    fn one_range_of_bytes() {
        assert_eq!(ask("bytes=0-1", None), Wanted::Part(0..2));
        assert_eq!(ask("bytes=1-", None), Wanted::Part(1..10));
        assert_eq!(ask("bytes=-1", None), Wanted::Part(9..10));
        assert_eq!(ask("bytes=-50", None), Wanted::Part(0..10));
        assert_eq!(ask("bytes=5-500", None), Wanted::Part(5..10));
        assert_eq!(ask("bytes=10-", None), Wanted::Unsatisfiable);
        assert_eq!(ask("bytes=-0", None), Wanted::Unsatisfiable);
        for whole in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=-",
        ] {
            assert_eq!(ask(whole, None), Wanted::Whole, "{whole}");
        }
    }

    #[test]
    fn if_range_must_match_the_stored_response() {
        assert_eq!(ask("bytes=0-1", Some("\"v1\"")), Wanted::Part(0..2));
        assert_eq!(ask("bytes=0-1", Some("\"v2\"")), Wanted::Whole);
        assert_eq!(
            ask("bytes=0-1", Some("W/\"v1\"")),
            Wanted::Whole,
            "weak never"
        );
        assert_eq!(
            ask("bytes=0-1", Some("Wed, 01 Jan 2020 00:00:00 GMT")),
            Wanted::Part(0..2)
        );
        assert_eq!(
            ask("bytes=0-1", Some("Thu, 02 Jan 2020 00:00:00 GMT")),
            Wanted::Whole
        );
    }
}
