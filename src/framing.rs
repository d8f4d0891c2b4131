//! HTTP/1 request framing, checked before anything routes on a request or forwards it
//! (RFC 9112 §6.3, §3.2). A shape one peer could read differently from another is how
//! requests are smuggled: the edge refuses it with 400 and closes the connection, so
//! nothing ambiguous reaches an origin or a region, and no pooled upstream connection
//! ever carries bytes of one client into another client's request.
//!
//! Pingora's HTTP/1 reader accepts more than this: it collapses `Content-Length: 3, 3` and
//! repeated equal lengths into one (yet forwards the header as it came), and when both
//! `Content-Length` and `Transfer-Encoding` arrive it drops the length and answers the
//! request. The second is seen here only in the raw header bytes, since Pingora has
//! already removed the length from the parsed header.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Version};

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the request has more than one Content-Length, or a list of them")]
    ManyLengths,
    #[error("the request's Content-Length is not a number")]
    BadLength,
    #[error("the request has both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("the request's Transfer-Encoding is not exactly \"chunked\"")]
    BadTransferEncoding,
    #[error("an HTTP/1.1 request must have exactly one Host")]
    Host,
}

/// What framing needs to know of a request.
pub struct Head<'a> {
    pub version: Version,
    pub headers: &'a HeaderMap,
    /// The request header as it came on the wire (HTTP/1 only).
    pub raw: Option<&'a [u8]>,
}

/// Checks one HTTP/1 request head; `Ok` means its body is framed one way only.
pub fn check(head: &Head<'_>) -> Result<(), Refusal> {
    let mut lengths = head.headers.get_all(CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        if lengths.next().is_some() || length.as_bytes().contains(&b',') {
            return Err(Refusal::ManyLengths);
        }
        let digits = length.as_bytes();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Refusal::BadLength);
        }
    }
    let mut codings = head.headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if codings.next().is_some() || !coding.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Refusal::BadTransferEncoding);
        }
        if head.headers.contains_key(CONTENT_LENGTH)
            || head.raw.is_some_and(has_content_length_line)
        {
            return Err(Refusal::LengthAndChunked);
        }
    }
    if head.version == Version::HTTP_11 {
        let mut hosts = head.headers.get_all(HOST).iter();
        if hosts.next().is_none() || hosts.next().is_some() {
            return Err(Refusal::Host);
        }
    }
    Ok(())
}

/// Whether a raw HTTP/1 header section has a `Content-Length` field line.
fn has_content_length_line(raw: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length";
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > NAME.len()
            && line[..NAME.len()].eq_ignore_ascii_case(NAME)
            && matches!(line[NAME.len()], b':' | b' ' | b'\t')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in list {
            headers.append(*name, value.parse().expect("a valid test header"));
        }
        headers
    }

    fn verdict(fields: &[(&'static str, &'static str)], raw: Option<&[u8]>) -> Result<(), Refusal> {
        let headers = self::fields(fields);
        check(&Head {
            version: Version::HTTP_11,
            headers: &headers,
            raw,
        })
    }

    #[test]
    fn one_plain_length_or_chunked_passes() {
        assert_eq!(
            verdict(&[("host", "a"), ("content-length", "3")], None),
            Ok(())
        );
        assert_eq!(
            verdict(&[("host", "a"), ("content-length", "0")], None),
            Ok(())
        );
        assert_eq!(
            verdict(&[("host", "a"), ("transfer-encoding", "Chunked")], None),
            Ok(())
        );
        assert_eq!(verdict(&[("host", "a")], None), Ok(()));
    }

    #[test]
    fn lists_and_repeats_of_the_length_are_refused() {
        let many = Err(Refusal::ManyLengths);
        assert_eq!(
            verdict(&[("host", "a"), ("content-length", "3, 3")], None),
            many
        );
        assert_eq!(
            verdict(&[("host", "a"), ("content-length", "3,3")], None),
            many
        );
        let twice = [
            ("host", "a"),
            ("content-length", "3"),
            ("content-length", "3"),
        ];
        assert_eq!(verdict(&twice, None), many);
        for bad in ["+3", "-1", "3 ", "0x3", "", "99999999999999999999"] {
            let mut headers = fields(&[("host", "a")]);
            headers.insert(CONTENT_LENGTH, bad.parse().expect("header value"));
            let verdict = check(&Head {
                version: Version::HTTP_11,
                headers: &headers,
                raw: None,
            });
            assert_eq!(verdict, Err(Refusal::BadLength), "{bad:?}");
        }
    }

    #[test]
    fn length_beside_chunked_is_refused_even_when_pingora_dropped_it() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let fields = [("host", "a"), ("transfer-encoding", "chunked")];
        assert_eq!(verdict(&fields, Some(raw)), Err(Refusal::LengthAndChunked));
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nx-content-length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(verdict(&fields, Some(raw)), Ok(()));
    }

    #[test]
    fn other_codings_are_refused() {
        for coding in ["gzip, chunked", "chunked, chunked", "identity", "xchunked"] {
            let headers = {
                let mut h = fields(&[("host", "a")]);
                h.insert(TRANSFER_ENCODING, coding.parse().expect("header value"));
                h
            };
            let verdict = check(&Head {
                version: Version::HTTP_11,
                headers: &headers,
                raw: None,
            });
            assert_eq!(verdict, Err(Refusal::BadTransferEncoding), "{coding:?}");
        }
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(verdict(&[], None), Err(Refusal::Host));
        assert_eq!(
            verdict(&[("host", "a"), ("host", "b")], None),
            Err(Refusal::Host)
        );
        let headers = HeaderMap::new();
        let http10 = Head {
            version: Version::HTTP_10,
            headers: &headers,
            raw: None,
        };
        assert_eq!(check(&http10), Ok(()));
    }
}
