//! `stack-overflow`: an abusive task for tests. It recurses without end until the wasm
//! call stack limit stops it. (Its frames live in wasm locals, not in linear memory, so it
//! exhausts the engine's stack rather than Rust's shadow stack.)

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct StackOverflow;

wasip2::http::proxy::export!(StackOverflow);

/// Never reaches `stop` (the caller picks one that cannot be reached), but the compiler
/// cannot know that, nor turn the recursion into a loop.
#[inline(never)]
fn descend(depth: u64, stop: u64) -> u64 {
    if depth == stop {
        return 0;
    }
    descend(depth + 1, stop).wrapping_mul(3).wrapping_add(depth)
}

impl Guest for StackOverflow {
    fn handle(request: IncomingRequest, _out: ResponseOutparam) {
        let stop = u64::MAX - request.path_with_query().map_or(0, |p| p.len() as u64);
        std::hint::black_box(descend(0, stop));
    }
}
