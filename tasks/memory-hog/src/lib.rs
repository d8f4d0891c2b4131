//! `memory-hog`: an abusive task for tests. It allocates and touches memory, 1 MiB at a
//! time, and keeps all of it, until the host's memory cap stops it.

use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct MemoryHog;

wasip2::http::proxy::export!(MemoryHog);

impl Guest for MemoryHog {
    fn handle(_request: IncomingRequest, _out: ResponseOutparam) {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            for page in chunk.chunks_mut(4096) {
                page[0] = 1;
            }
            hoard.push(std::hint::black_box(chunk));
        }
    }
}
