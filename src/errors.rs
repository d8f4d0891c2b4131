//! The errors Poplar answers itself, and the one table that maps each kind to its status.
//!
//! Every such response has a one-line plain-text body and `x-poplar-error: <kind>`.

/// A kind of failure answered by Poplar rather than by a task or an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No route matches the request.
    NoRoute,
    /// The request body is larger than the route allows.
    TooLarge,
    /// The request could not be read.
    BadRequest,
    /// The task trapped (panic, unreachable, stack overflow).
    Trap,
    /// The task hit its memory cap.
    Memory,
    /// The task ran past its deadline.
    Deadline,
    /// The task ended without a usable response.
    Task,
    /// No execution slot freed up in time.
    Busy,
    /// The origin could not be reached or failed mid-response.
    Origin,
    /// No healthy region could take a forwarded task.
    NoRegion,
    /// The region failed after the request was sent to it.
    Region,
    /// A request to a region carried no signature.
    Unsigned,
    /// A request to a region carried a wrong or stale signature.
    BadSignature,
    /// A region was asked for a task it does not have.
    UnknownTask,
    /// Something in Poplar itself failed.
    Internal,
}

impl ErrorKind {
    /// The HTTP status and the `x-poplar-error` value.
    pub fn status_and_name(self) -> (u16, &'static str) {
        match self {
            ErrorKind::NoRoute => (404, "no-route"),
            ErrorKind::TooLarge => (413, "too-large"),
            ErrorKind::BadRequest => (400, "bad-request"),
            ErrorKind::Trap => (500, "trap"),
            ErrorKind::Memory => (500, "memory"),
            ErrorKind::Deadline => (504, "deadline"),
            ErrorKind::Task => (500, "task"),
            ErrorKind::Busy => (503, "busy"),
            ErrorKind::Origin => (502, "origin"),
            ErrorKind::NoRegion => (503, "no-region"),
            ErrorKind::Region => (502, "region"),
            ErrorKind::Unsigned => (401, "unsigned"),
            ErrorKind::BadSignature => (403, "bad-signature"),
            ErrorKind::UnknownTask => (404, "unknown-task"),
            ErrorKind::Internal => (500, "internal"),
        }
    }

    pub fn status(self) -> u16 {
        self.status_and_name().0
    }
}
