//! `trap`: an abusive task for tests. It panics, which traps the instance.
//!
//! Without a query it panics before answering. `?ok=1` answers `200 ok` instead (a run
//! that did not fail, for tests of pausing tasks that keep failing). `?after=N` first sends a `200` head and `N`
//! bytes of body, then panics mid-body: a response that did not complete. `&length=L` makes
//! the head declare `content-length: L` (the whole body the task promised).

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Trap;

wasip2::http::proxy::export!(Trap);

impl Guest for Trap {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let query = path.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<usize>().ok())
        };
        if param("ok").is_some() {
            let response = OutgoingResponse::new(Fields::new());
            let body = response.body().expect("body is taken once");
            ResponseOutparam::set(out, Ok(response));
            let stream = body.write().expect("stream is taken once");
            stream
                .blocking_write_and_flush(b"ok\n")
                .expect("host accepts the body");
            drop(stream);
            OutgoingBody::finish(body, None).expect("the body ends");
            return;
        }
        let Some(after) = param("after") else {
            panic!("the trap task always fails (asked for {path})");
        };
        let mut headers = vec![("content-type".to_string(), b"text/plain".to_vec())];
        if let Some(length) = param("length") {
            headers.push(("content-length".to_string(), length.to_string().into_bytes()));
        }
        let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid headers"));
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        let chunk = [b'x'; 4096];
        let mut left = after;
        while left > 0 {
            let n = left.min(chunk.len());
            stream
                .blocking_write_and_flush(&chunk[..n])
                .expect("host accepts the body");
            left -= n;
        }
        // The body is never finished: the trap leaves it cut short.
        drop(stream);
        let _unfinished = body;
        panic!("the trap task fails after {after} bytes of its body (asked for {path})");
    }
}

