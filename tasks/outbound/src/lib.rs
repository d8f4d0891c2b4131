//! `outbound`: a task for tests that tries to call out over HTTP. The target comes from the
//! query (`?to=127.0.0.1:9000`); the answer says what happened, so a test can check that
//! the host refused.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Outbound;

wasip2::http::proxy::export!(Outbound);

fn attempt(authority: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    if request.set_scheme(Some(&Scheme::Http)).is_err()
        || request.set_authority(Some(authority)).is_err()
    {
        return "bad target".to_string();
    }
    if request.set_path_with_query(Some("/from-a-guest")).is_err() {
        return "bad path".to_string();
    }
    match outgoing_handler::handle(request, None) {
        Err(code) => format!("refused: {code:?}"),
        Ok(future) => {
            future.subscribe().block();
            match future.get() {
                Some(Ok(Ok(response))) => format!("reached: status {}", response.status()),
                Some(Ok(Err(code))) => format!("refused: {code:?}"),
                other => format!("failed: {other:?}"),
            }
        }
    }
}

impl Guest for Outbound {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let query = request.path_with_query().unwrap_or_default();
        let target = query
            .split_once("to=")
            .map_or("127.0.0.1:9", |(_, t)| t)
            .to_string();
        let text = format!("{}\n", attempt(&target));
        let response = OutgoingResponse::new(Fields::new());
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("stream is taken once");
        let _ = stream.blocking_write_and_flush(text.as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(body, None);
    }
}
