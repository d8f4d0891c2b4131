//! `hello`: greets the caller and echoes the path and query it was asked for.
//!
//! `GET /hello?name=Ada` answers `Hello, Ada!` followed by the path and query.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Hello;

wasip2::http::proxy::export!(Hello);

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        let name = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("name="))
            .filter(|name| !name.is_empty())
            .unwrap_or("world");
        let text = format!("Hello, {name}!\npath: {path}\nquery: {query}\n");

        let headers = Fields::from_list(&[
            (
                "content-type".to_string(),
                b"text/plain; charset=utf-8".to_vec(),
            ),
            (
                "content-length".to_string(),
                text.len().to_string().into_bytes(),
            ),
        ])
        .expect("static headers are valid");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        // The host takes at most 4,096 bytes per blocking write.
        for piece in text.as_bytes().chunks(4096) {
            stream
                .blocking_write_and_flush(piece)
                .expect("host accepts the body");
        }
        drop(stream);
        OutgoingBody::finish(body, None).expect("body is complete");
    }
}
