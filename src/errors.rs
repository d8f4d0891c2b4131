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
    /// The request body stopped arriving for `clients.body_timeout`.
    BodyTimeout,
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
    /// The task's runs kept failing: it is paused for a while (`placement.failing`).
    Paused,
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

/// What each kind answers and how loudly it is logged: the one table.
struct Row {
    status: u16,
    name: &'static str,
    /// The body of the response: says what happened, names nothing internal.
    message: &'static str,
    /// error: a request failed on our side or upstream; warn: refused for cause, or
    /// recovered; info: the client's own mistake; debug: routine (a scanner's 404).
    level: log::Level,
}

const fn row(status: u16, name: &'static str, message: &'static str, level: log::Level) -> Row {
    Row {
        status,
        name,
        message,
        level,
    }
}

impl ErrorKind {
    fn row(self) -> Row {
        use log::Level::{Debug, Error, Info, Warn};
        match self {
            ErrorKind::NoRoute => row(404, "no-route", "no route matches this request", Debug),
            ErrorKind::TooLarge => row(
                413,
                "too-large",
                "the request body is too large for this task",
                Info,
            ),
            ErrorKind::BadRequest => row(400, "bad-request", "the request is malformed", Info),
            ErrorKind::BodyTimeout => row(
                408,
                "body-timeout",
                "the request body stopped arriving",
                Info,
            ),
            ErrorKind::Trap => row(500, "trap", "the task trapped", Error),
            ErrorKind::Memory => row(500, "memory", "the task reached its memory limit", Error),
            ErrorKind::Deadline => row(504, "deadline", "the task ran past its deadline", Error),
            ErrorKind::Task => row(500, "task", "the task gave no usable response", Error),
            ErrorKind::Busy => row(503, "busy", "no execution slot is free", Warn),
            ErrorKind::Paused => row(
                503,
                "paused",
                "the task is paused because its runs keep failing",
                Debug,
            ),
            ErrorKind::Origin => row(
                502,
                "origin",
                "the origin could not be reached or failed",
                Error,
            ),
            ErrorKind::NoRegion => row(
                503,
                "no-region",
                "no healthy region can run this task",
                Error,
            ),
            ErrorKind::Region => row(
                502,
                "region",
                "the region could not be reached or failed",
                Error,
            ),
            ErrorKind::Unsigned => row(
                401,
                "unsigned",
                "task requests must come from an edge, signed",
                Warn,
            ),
            ErrorKind::BadSignature => row(
                403,
                "bad-signature",
                "the request's edge signature does not hold",
                Warn,
            ),
            ErrorKind::UnknownTask => {
                row(404, "unknown-task", "this region has no such task", Warn)
            }
            ErrorKind::Internal => row(
                500,
                "internal",
                "Poplar failed to answer this request",
                Error,
            ),
        }
    }

    /// The HTTP status and the `x-poplar-error` value.
    pub fn status_and_name(self) -> (u16, &'static str) {
        let row = self.row();
        (row.status, row.name)
    }

    pub fn status(self) -> u16 {
        self.row().status
    }

    /// The one-line body of the response.
    pub fn message(self) -> &'static str {
        self.row().message
    }

    /// The level the response is logged at.
    pub fn level(self) -> log::Level {
        self.row().level
    }

    /// A Pingora error carrying this kind as its cause, for returning from a phase: the
    /// kind travels to `fail_to_proxy` as a type, never guessed back from a status.
    pub fn to_pingora(self, detail: impl Into<String>) -> Box<pingora_error::Error> {
        let failure = Failure {
            kind: self,
            detail: detail.into(),
        };
        let etype = pingora_error::ErrorType::HTTPStatus(self.status());
        pingora_error::Error::because(etype, self.row().name, failure)
    }

    /// The kind a Pingora error carries, if one of ours made it.
    pub fn carried_by(e: &pingora_error::Error) -> Option<ErrorKind> {
        let mut cause = e.cause.as_deref();
        while let Some(c) = cause {
            if let Some(failure) = c.downcast_ref::<Failure>() {
                return Some(failure.kind);
            }
            // Pingora wraps errors as `Box<Error>` causes.
            if let Some(inner) = c.downcast_ref::<Box<pingora_error::Error>>() {
                cause = inner.cause.as_deref();
            } else if let Some(inner) = c.downcast_ref::<pingora_error::Error>() {
                cause = inner.cause.as_deref();
            } else {
                return None;
            }
        }
        None
    }
}

/// One of our kinds with what happened, as a Pingora error's cause.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct Failure {
    pub kind: ErrorKind,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_survives_the_trip_through_pingora() {
        let e = ErrorKind::NoRegion.to_pingora("every region refused the connection");
        assert_eq!(ErrorKind::carried_by(&e), Some(ErrorKind::NoRegion));
        let wrapped = pingora_error::Error::because(
            pingora_error::ErrorType::ConnectRefused,
            "while connecting",
            e,
        );
        assert_eq!(ErrorKind::carried_by(&wrapped), Some(ErrorKind::NoRegion));
        let plain = pingora_error::Error::explain(pingora_error::ErrorType::HTTPStatus(503), "x");
        assert_eq!(
            ErrorKind::carried_by(&plain),
            None,
            "a status alone is not a kind"
        );
    }

    #[test]
    fn messages_are_one_line_and_name_nothing_internal() {
        for kind in [
            ErrorKind::NoRoute,
            ErrorKind::TooLarge,
            ErrorKind::BadRequest,
            ErrorKind::BodyTimeout,
            ErrorKind::Trap,
            ErrorKind::Memory,
            ErrorKind::Deadline,
            ErrorKind::Task,
            ErrorKind::Busy,
            ErrorKind::Paused,
            ErrorKind::Origin,
            ErrorKind::NoRegion,
            ErrorKind::Region,
            ErrorKind::Unsigned,
            ErrorKind::BadSignature,
            ErrorKind::UnknownTask,
            ErrorKind::Internal,
        ] {
            let message = kind.message();
            assert!(
                !message.contains('\n') && !message.contains(':'),
                "{kind:?}"
            );
        }
    }
}
