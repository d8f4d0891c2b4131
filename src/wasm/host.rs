//! What a guest instance sees of its host: WASI p2 and wasi:http contexts, a memory limiter
//! that remembers whether the cap was hit, outbound HTTP denied, and stdout/stderr sent to
//! the log with the request id.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Bytes of stdout or stderr logged per request and stream; the rest is dropped.
const GUEST_LOG_CAP: usize = 16 << 10;
/// Resources (streams, fields, pollables) one instance may hold at once.
const MAX_RESOURCES: usize = 10_000;

/// The data of one request's `Store`.
pub struct Host {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: DenyOutbound,
    pub(crate) limiter: MemoryLimiter,
}

impl Host {
    pub fn new(
        request_id: &Arc<str>,
        (memory_cap, shared): (u64, &Arc<GuestMemory>),
        level: log::Level,
    ) -> Host {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let wasi = WasiCtx::builder()
            .stdout(GuestLog::new(request_id.clone(), "stdout", level))
            .stderr(GuestLog::new(request_id.clone(), "stderr", level))
            .build();
        Host {
            table,
            wasi,
            http: WasiHttpCtx::new(),
            hooks: DenyOutbound,
            limiter: MemoryLimiter {
                cap: usize::try_from(memory_cap).unwrap_or(usize::MAX),
                hit: false,
                shared: shared.clone(),
                taken: 0,
            },
        }
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Guests get no network: every outgoing request is refused.
struct DenyOutbound;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// The linear memory every execution of a runtime holds together, against the budget the
/// operator set (`placement.guest_memory`).
#[derive(Debug)]
pub struct GuestMemory {
    budget: u64,
    held: AtomicU64,
    /// Growths refused because the budget was spent (the guest stopped with `memory`).
    refused: AtomicU64,
}

impl GuestMemory {
    pub fn new(budget: u64) -> GuestMemory {
        GuestMemory {
            budget,
            held: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Bytes held now, the budget, and growths refused so far.
    pub fn usage(&self) -> (u64, u64, u64) {
        let held = self.held.load(Ordering::Relaxed);
        (held, self.budget, self.refused.load(Ordering::Relaxed))
    }

    fn take(&self, bytes: u64) -> bool {
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&n| n <= self.budget)
            });
        if taken.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        taken.is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Caps linear memory, per execution and against the shared budget, and records a refusal,
/// so a trap that follows can be told apart from any other trap.
pub(crate) struct MemoryLimiter {
    cap: usize,
    pub(crate) hit: bool,
    shared: Arc<GuestMemory>,
    /// What this execution took from the shared budget: the size of its memories.
    taken: u64,
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.shared.give_back(self.taken);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let within = desired <= self.cap && maximum.is_none_or(|max| desired <= max);
        let more = desired.saturating_sub(current) as u64;
        let allowed = within && self.shared.take(more);
        if allowed {
            self.taken += more;
        }
        self.hit |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000 && maximum.is_none_or(|max| desired <= max))
    }
}

/// A guest's stdout or stderr: each line goes to the log, tagged with the request id.
#[derive(Clone)]
struct GuestLog {
    request_id: Arc<str>,
    stream: &'static str,
    level: log::Level,
}

impl GuestLog {
    fn new(request_id: Arc<str>, stream: &'static str, level: log::Level) -> GuestLog {
        GuestLog {
            request_id,
            stream,
            level,
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// Splits guest output into lines and logs them; output past the cap is counted, not kept.
struct LineWriter {
    log: GuestLog,
    line: Vec<u8>,
    seen: usize,
}

impl LineWriter {
    fn new(log: GuestLog) -> LineWriter {
        LineWriter {
            log,
            line: Vec::new(),
            seen: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = GUEST_LOG_CAP.saturating_sub(self.seen);
        self.seen += bytes.len();
        for &b in &bytes[..bytes.len().min(room)] {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
            }
        }
    }

    fn emit(&mut self) {
        let GuestLog {
            request_id,
            stream,
            level,
        } = &self.log;
        let text = String::from_utf8_lossy(&self.line);
        log::log!(target: "poplar::guest", *level, "[{request_id}] {stream}: {text}");
        self.line.clear();
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
        if self.seen > GUEST_LOG_CAP {
            let GuestLog {
                request_id, stream, ..
            } = &self.log;
            let dropped = self.seen - GUEST_LOG_CAP;
            log::warn!(target: "poplar::guest", "[{request_id}] {stream}: {dropped} more bytes not logged");
        }
    }
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::GuestMemory;

    #[test]
    fn the_budget_is_taken_and_given_back_never_overdrawn() {
        let budget = GuestMemory::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41), "over the budget");
        assert!(budget.take(40));
        assert_eq!(budget.usage(), (100, 100, 1));
        budget.give_back(60);
        assert!(budget.take(60));
        budget.give_back(100);
        assert_eq!(budget.usage(), (0, 100, 1));
    }
}
