//! `spin-forever`: an abusive task for tests. It never answers: it spins until the host's
//! deadline interrupts it.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct SpinForever;

wasip2::http::proxy::export!(SpinForever);

impl Guest for SpinForever {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}
