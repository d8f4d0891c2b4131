//! `stack-overflow`: an abusive task for tests. It recurses without end until the wasm
//! stack limit stops it.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct StackOverflow;

wasip2::http::proxy::export!(StackOverflow);

#[inline(never)]
#[allow(unconditional_recursion)]
fn descend(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 32]);
    descend(frame[7] + 1).wrapping_add(frame[3])
}

impl Guest for StackOverflow {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        std::hint::black_box(descend(0));
    }
}
