//! `trap`: an abusive task for tests. It panics before answering, which traps the instance.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

wasip2::http::proxy::export!(Trap);

impl Guest for Trap {
    fn handle(request: IncomingRequest, _out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        panic!("the trap task always fails (asked for {path})");
    }
}
