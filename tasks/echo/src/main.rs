//! `echo`: answers with the request body and a selection of the request's headers.
//!
//! The body comes back unchanged, with the request's `content-type`. The method and
//! path come back as `x-echo-method` and `x-echo-path`, the whole URI as the guest sees it
//! (scheme and authority included) as `x-echo-uri`, and every request header
//! whose name starts with `x-echo-` is returned as it was sent. `?sleep_ms=N` (or a request
//! header `x-echo-sleep-ms: N`, which leaves the URL alone) waits N milliseconds (on a WASI
//! clock) before answering: a slow task, for tests; and a request header
//! `x-echo-set-NAME: VALUE` becomes the response header `NAME: VALUE`.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let (parts, mut body) = request.into_parts();
    let bytes = body.bytes_contents().await?;
    let sleep_ms = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("sleep_ms="))
        .or_else(|| parts.headers.get("x-echo-sleep-ms")?.to_str().ok());
    if let Some(ms) = sleep_ms.and_then(|ms| ms.parse::<u64>().ok()) {
        wstd::task::sleep(wstd::time::Duration::from_millis(ms)).await;
    }

    let mut response = Response::builder()
        .header("x-echo-method", parts.method.as_str())
        .header("x-echo-path", parts.uri.path())
        .header("x-echo-uri", parts.uri.to_string());
    if let Some(content_type) = parts.headers.get("content-type") {
        response = response.header("content-type", content_type);
    }
    for (name, value) in &parts.headers {
        if name.as_str().starts_with("x-echo-") {
            response = response.header(name, value);
        }
        if let Some(set) = name.as_str().strip_prefix("x-echo-set-") {
            response = response.header(set, value);
        }
    }
    Ok(response.body(Body::from(bytes))?)
}
