//! Request and response bodies as Poplar handles them whole: a leaf module, used by the
//! proxy phases, the cache and the refresh alike.

use bytes::{Bytes, BytesMut};

/// The body length a request declares before it is read: its `content-length`, zero when
/// it has neither that nor `transfer-encoding`, `None` when it is chunked.
pub fn declared_body_len(req: &pingora_http::RequestHeader) -> Option<u64> {
    match req.headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok()?.parse().ok(),
        None if req.headers.contains_key(http::header::TRANSFER_ENCODING) => None,
        None => Some(0),
    }
}

/// The `content-length` in `headers`, when there is exactly one and it is a number.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    value.to_str().ok()?.trim().parse().ok()
}

/// Joins body chunks into one, without copying when there is only one.
pub fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            chunks.iter().for_each(|c| all.extend_from_slice(c));
            all.freeze()
        }
    }
}
