//! The per-request placement decision, over plain facts: inline at the edge, or forward to
//! a region, and why.

use crate::config::Mode;

/// Why a request ran where it did; the `reason=` of `x-poplar-placement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The route says where (`placement: edge` or `region`), or there is nowhere else.
    Pinned,
    /// Hot and resident, it fits, and a slot was free.
    Hot,
    /// Not requested often enough here.
    Cold,
    /// Hot, but its code is still being compiled at the edge.
    Warming,
    /// Its limits or this request's body exceed what the edge runs inline.
    Oversized,
    /// Every inline slot is taken.
    Busy,
    /// The inline run hit the edge's deadline or memory cap; retried in a region.
    Fallback,
    /// Its runs here keep failing: paused at the edge (`placement.failing`).
    Failing,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Pinned,
        Reason::Hot,
        Reason::Cold,
        Reason::Warming,
        Reason::Oversized,
        Reason::Busy,
        Reason::Fallback,
        Reason::Failing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Pinned => "pinned",
            Reason::Hot => "hot",
            Reason::Cold => "cold",
            Reason::Warming => "warming",
            Reason::Oversized => "oversized",
            Reason::Busy => "busy",
            Reason::Fallback => "fallback",
            Reason::Failing => "failing",
        }
    }
}

/// Whether the task's compiled code is ready at this edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    Ready,
    /// Being compiled, or not yet asked for.
    Warming,
    /// Will not be: it failed to load, or is larger than the resident set.
    Never,
}

/// What the decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub mode: Mode,
    pub hot: bool,
    /// Hot, but colder than every task the edge keeps resident (and the set is full): it
    /// would only evict a hotter one, so it stays forwarded as cold.
    pub below_floor: bool,
    pub residency: Residency,
    /// The task's declared memory and deadline fit the edge's inline limits.
    pub fits: bool,
    /// It outgrew the edge at run time recently.
    pub cooling_off: bool,
    /// Its runs here kept failing: it is paused.
    pub paused: bool,
    /// The request body's length, when known before reading it.
    pub body_len: Option<u64>,
    pub max_inline_body: u64,
    pub slot_free: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Inline(Reason),
    Forward(Reason),
}

/// Inline only when every condition holds; otherwise forward, saying which failed first.
pub fn decide(f: &Facts) -> Decision {
    match f.mode {
        Mode::Edge => return Decision::Inline(Reason::Pinned),
        Mode::Region => return Decision::Forward(Reason::Pinned),
        Mode::Auto => {}
    }
    if !f.hot || f.below_floor {
        return Decision::Forward(Reason::Cold);
    }
    if f.paused {
        return Decision::Forward(Reason::Failing);
    }
    let body_fits = f.body_len.is_some_and(|n| n <= f.max_inline_body);
    if !f.fits || f.cooling_off || !body_fits || f.residency == Residency::Never {
        return Decision::Forward(Reason::Oversized);
    }
    if f.residency == Residency::Warming {
        return Decision::Forward(Reason::Warming);
    }
    if !f.slot_free {
        return Decision::Forward(Reason::Busy);
    }
    Decision::Inline(Reason::Hot)
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: Facts = Facts {
        mode: Mode::Auto,
        hot: true,
        below_floor: false,
        residency: Residency::Ready,
        fits: true,
        cooling_off: false,
        paused: false,
        body_len: Some(0),
        max_inline_body: 1024,
        slot_free: true,
    };

    #[test]
    fn inline_only_when_everything_holds() {
        assert_eq!(decide(&READY), Decision::Inline(Reason::Hot));
        let table = [
            (
                Facts {
                    hot: false,
                    ..READY
                },
                Reason::Cold,
            ),
            (
                Facts {
                    below_floor: true,
                    ..READY
                },
                Reason::Cold,
            ),
            (
                Facts {
                    paused: true,
                    ..READY
                },
                Reason::Failing,
            ),
            (
                Facts {
                    fits: false,
                    ..READY
                },
                Reason::Oversized,
            ),
            (
                Facts {
                    cooling_off: true,
                    ..READY
                },
                Reason::Oversized,
            ),
            (
                Facts {
                    body_len: Some(1025),
                    ..READY
                },
                Reason::Oversized,
            ),
            (
                Facts {
                    body_len: None,
                    ..READY
                },
                Reason::Oversized,
            ),
            (
                Facts {
                    residency: Residency::Never,
                    ..READY
                },
                Reason::Oversized,
            ),
            (
                Facts {
                    residency: Residency::Warming,
                    ..READY
                },
                Reason::Warming,
            ),
            (
                Facts {
                    slot_free: false,
                    ..READY
                },
                Reason::Busy,
            ),
        ];
        for (facts, reason) in table {
            assert_eq!(decide(&facts), Decision::Forward(reason), "{facts:?}");
        }
        assert_eq!(
            decide(&Facts {
                body_len: Some(1024),
                ..READY
            }),
            Decision::Inline(Reason::Hot)
        );
    }

    #[test]
    fn the_first_failing_condition_names_the_reason() {
        let cold_and_big = Facts {
            hot: false,
            fits: false,
            slot_free: false,
            ..READY
        };
        assert_eq!(decide(&cold_and_big), Decision::Forward(Reason::Cold));
        let big_and_warming = Facts {
            fits: false,
            residency: Residency::Warming,
            ..READY
        };
        assert_eq!(
            decide(&big_and_warming),
            Decision::Forward(Reason::Oversized)
        );
        let warming_and_busy = Facts {
            residency: Residency::Warming,
            slot_free: false,
            ..READY
        };
        assert_eq!(
            decide(&warming_and_busy),
            Decision::Forward(Reason::Warming)
        );
    }

    #[test]
    fn routes_can_pin() {
        let cold = Facts {
            hot: false,
            slot_free: false,
            ..READY
        };
        assert_eq!(
            decide(&Facts {
                mode: Mode::Edge,
                ..cold
            }),
            Decision::Inline(Reason::Pinned)
        );
        assert_eq!(
            decide(&Facts {
                mode: Mode::Region,
                ..READY
            }),
            Decision::Forward(Reason::Pinned)
        );
    }
}
