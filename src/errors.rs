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
            ErrorKind::Internal => (500, "internal"),
        }
    }

    pub fn status(self) -> u16 {
        self.status_and_name().0
    }

    pub fn name(self) -> &'static str {
        self.status_and_name().1
    }
}
