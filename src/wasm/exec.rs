//! One execution: a fresh store and instance for one request, run under the task's memory
//! cap and deadline, with the response head and body handed back as they are produced.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::Task;
use super::host::Host;
use crate::errors::ErrorKind;

/// Why an execution did not produce a complete response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TaskError {
    #[error("the task ran past its deadline")]
    Deadline,
    #[error("the task reached its memory limit")]
    Memory,
    #[error("the task trapped: {0}")]
    Trap(String),
    #[error("the task returned without a response")]
    NoResponse,
    #[error("the task answered with an error: {0}")]
    ErrorCode(String),
    #[error("the task ended its body after {received} of the {declared} bytes it declared")]
    ShortBody { declared: u64, received: u64 },
    #[error("the host could not run the task: {0}")]
    Host(String),
}

impl TaskError {
    /// What the client may be told beyond the kind: a trap's reason, on one line (the task's
    /// author debugs with it, as under `wasmtime serve`); nothing of the host.
    pub fn shown(&self) -> Option<String> {
        let TaskError::Trap(reason) = self else {
            return None;
        };
        let line = reason.lines().next().unwrap_or_default();
        Some(line.chars().take(200).collect())
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            TaskError::Deadline => ErrorKind::Deadline,
            TaskError::Memory => ErrorKind::Memory,
            TaskError::Trap(_) => ErrorKind::Trap,
            TaskError::NoResponse | TaskError::ErrorCode(_) | TaskError::ShortBody { .. } => {
                ErrorKind::Task
            }
            TaskError::Host(_) => ErrorKind::Internal,
        }
    }
}

/// The guest's response: its head now, its body as the guest writes it.
pub struct GuestResponse {
    pub head: http::response::Parts,
    body: WasiBody,
    run: Run,
    /// The `content-length` the guest gave, if any, and how much of the body came so far.
    declared: Option<u64>,
    received: u64,
}

/// The execution, driven by whoever awaits the response: the guest runs in the request's
/// own task, no hop to another. Dropping it stops the guest and frees its instance.
struct Run {
    guest: Option<Pin<Box<dyn Future<Output = Outcome> + Send>>>,
    outcome: Option<Outcome>,
    deadline: tokio::time::Instant,
}

struct Outcome {
    result: wasmtime::Result<()>,
    memory_hit: bool,
}

impl Task {
    /// Starts the task on `request` and waits for its response head.
    ///
    /// `slot` is held until the instance is gone, so the pool is never asked for more
    /// instances than it has.
    pub async fn call(
        &self,
        slot: OwnedSemaphorePermit,
        mut request: http::Request<Full<Bytes>>,
        request_id: Arc<str>,
    ) -> Result<GuestResponse, TaskError> {
        let started = Instant::now();
        let deadline = started + self.limits.timeout;
        if !request.headers().contains_key(http::header::HOST) {
            // wasi:http needs an authority; HTTP/1.0 clients may send none.
            request.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("localhost"),
            );
        }

        let scheme = match request.uri().scheme() {
            Some(s) if *s == http::uri::Scheme::HTTPS => Scheme::Https,
            _ => Scheme::Http,
        };
        let mut store = self.store(&request_id, deadline);
        let (tx, rx) = oneshot::channel();
        let prepared: wasmtime::Result<_> = (|| {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(scheme, request)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            Ok((req, out))
        })();
        let (req, out) =
            prepared.map_err(|e: wasmtime::Error| TaskError::Host(format!("{e:#}")))?;

        let pre = self.pre.clone();
        let guest = async move {
            let _slot = slot;
            let result = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            }
            .await;
            let memory_hit = store.data().limiter.hit;
            Outcome { result, memory_hit }
        };
        let mut run = Run {
            guest: Some(Box::pin(guest)),
            outcome: None,
            deadline: tokio::time::Instant::from_std(deadline),
        };
        let answered = run.drive(rx).await?;
        match answered {
            Ok(Ok(response)) => {
                let (head, body) = response.into_parts();
                let declared = crate::body::content_length(&head.headers);
                Ok(GuestResponse {
                    head,
                    body,
                    run,
                    declared,
                    received: 0,
                })
            }
            Ok(Err(code)) => Err(TaskError::ErrorCode(format!("{code:?}"))),
            Err(_) => Err(run.failure().await.unwrap_or(TaskError::NoResponse)),
        }
    }
}

impl Task {
    /// A store for one request: the task's memory limit, and an epoch callback that yields
    /// to the scheduler at every tick (a busy guest shares its thread) and traps at the
    /// deadline.
    ///
    /// The yield is tokio's `yield_now`, which puts the guest back only after the runtime has
    /// polled for I/O. wasmtime's plain `Yield` wakes the task at once, so a guest that spins
    /// was always ready to run: a single-threaded tokio runtime polls I/O only every 61 task
    /// polls while tasks are ready, 61 ticks of 2 ms here, and two spinning guests held a
    /// healthy route's p99 at 188 ms (3 ms alone; docs/RELIABILITY.md).
    fn store(&self, request_id: &Arc<str>, deadline: Instant) -> Store<Host> {
        let mut store = Store::new(
            self.pre.engine(),
            Host::new(
                request_id,
                (self.limits.memory, &self.memory),
                self.guest_log,
            ),
        );
        store.limiter(|host| &mut host.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
        store
    }
}

impl GuestResponse {
    /// The next piece of the body, or `None` at its end. Trailers are dropped.
    ///
    /// The end is only an end once the guest returned without error and the body is as long
    /// as the guest said: wasi:http ends the body the same way when the guest finishes it
    /// and when the guest dies (a trap drops its store), so a body cut short by a trap
    /// would otherwise pass for a whole one.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, TaskError> {
        loop {
            let frame = match self.run.drive(self.body.frame()).await? {
                None => return self.end().await.map(|()| None),
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    let body_error = TaskError::Trap(format!("response body failed: {e}"));
                    return Err(self.run.failure().await.unwrap_or(body_error));
                }
            };
            if let Ok(data) = frame.into_data()
                && !data.is_empty()
            {
                self.received += data.len() as u64;
                return Ok(Some(data));
            }
        }
    }

    /// Checks the body's end (see [`Self::chunk`]), waiting for the guest to return.
    async fn end(&mut self) -> Result<(), TaskError> {
        if let Some(failed) = self.run.failure().await {
            return Err(failed);
        }
        match self.declared {
            Some(declared) if declared != self.received => Err(TaskError::ShortBody {
                declared,
                received: self.received,
            }),
            _ => Ok(()),
        }
    }

    /// The whole body if it ends within `limit` bytes and `wait`; otherwise what was read
    /// so far, with `false`, and the rest is streamed. A guest that writes its body at once
    /// gets a `content-length`; one that writes over time (a stream, a slow task) is passed
    /// on as it writes, not held back until it is done.
    pub async fn collect_up_to(
        &mut self,
        limit: usize,
        wait: std::time::Duration,
    ) -> Result<(Vec<Bytes>, bool), TaskError> {
        let until = tokio::time::Instant::now() + wait;
        let mut chunks = Vec::new();
        let mut len = 0;
        while len <= limit {
            // A piece ready now costs no timer (the common case: a guest that writes its
            // body at once). Cancel-safe: an unread frame stays in the body, the guest in
            // `run`.
            let next = match futures_util::FutureExt::now_or_never(self.chunk()) {
                Some(next) => next,
                None => match tokio::time::timeout_at(until, self.chunk()).await {
                    Ok(next) => next,
                    Err(_) => return Ok((chunks, false)),
                },
            };
            match next? {
                Some(chunk) => {
                    len += chunk.len();
                    chunks.push(chunk);
                }
                None => return Ok((chunks, true)),
            }
        }
        Ok((chunks, false))
    }
}

impl Run {
    /// Runs the guest until `wanted` is ready, or the deadline passes.
    async fn drive<F: Future + Unpin>(&mut self, mut wanted: F) -> Result<F::Output, TaskError> {
        let deadline = tokio::time::sleep_until(self.deadline);
        tokio::pin!(deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = Pin::new(&mut wanted).poll(cx) {
                return Poll::Ready(Ok(out));
            }
            if let Some(guest) = self.guest.as_mut()
                && let Poll::Ready(outcome) = guest.as_mut().poll(cx)
            {
                // The guest is done (its store dropped): what it left may be ready now.
                self.outcome = Some(outcome);
                self.guest = None;
                if let Poll::Ready(out) = Pin::new(&mut wanted).poll(cx) {
                    return Poll::Ready(Ok(out));
                }
            }
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(TaskError::Deadline));
            }
            Poll::Pending
        })
        .await
    }

    /// Why the guest failed, once it has stopped; `None` if it ended without an error.
    async fn failure(&mut self) -> Option<TaskError> {
        if let Some(guest) = self.guest.take() {
            match tokio::time::timeout_at(self.deadline, guest).await {
                Ok(outcome) => self.outcome = Some(outcome),
                Err(_) => return Some(TaskError::Deadline),
            }
        }
        match self.outcome.take()? {
            Outcome { result: Ok(()), .. } => None,
            Outcome {
                result: Err(e),
                memory_hit,
            } => Some(classify(&e, memory_hit)),
        }
    }
}

fn classify(e: &wasmtime::Error, memory_hit: bool) -> TaskError {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => TaskError::Deadline,
        _ if memory_hit => TaskError::Memory,
        Some(trap) => TaskError::Trap(trap.to_string()),
        None => TaskError::Trap(format!("{e:#}")),
    }
}
