//! Cache keys and `Cache-Status` values (RFC 9211). Plain functions, no I/O.

use sha2::{Digest, Sha256};

/// What identifies a stored response before `Vary`: the route, the task's version, the
/// method (HEAD shares GET's entries), host, path and query, and for a pure task's
/// request with a body, a hash of the body.
pub struct KeyParts<'a> {
    pub route: usize,
    /// The digest of the task's wasm; empty for an origin route.
    pub version: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub body: Option<&'a [u8]>,
}

pub fn primary_key(k: &KeyParts<'_>) -> String {
    use std::fmt::Write;
    let method = if k.method.eq_ignore_ascii_case("HEAD") {
        "GET"
    } else {
        k.method
    };
    // Built in place: this runs on every lookup, hits included.
    let mut key = String::with_capacity(
        24 + k.version.len() + method.len() + k.host.len() + k.path_and_query.len() + 64,
    );
    key.push_str(itoa::Buffer::new().format(k.route));
    key.push('\n');
    key.push_str(k.version);
    key.push('\n');
    key.extend(method.chars().map(|c| c.to_ascii_uppercase()));
    key.push('\n');
    key.extend(k.host.chars().map(|c| c.to_ascii_lowercase()));
    key.push('\n');
    key.push_str(k.path_and_query);
    key.push('\n');
    if let Some(body) = k.body {
        for byte in Sha256::digest(body) {
            let _ = write!(key, "{byte:02x}");
        }
    }
    key
}

/// The part of `Cache-Status` after `poplar;` (RFC 9211).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Served from the cache.
    Hit {
        ttl: i64,
        detail: Option<&'static str>,
        collapsed: bool,
    },
    /// Went forward: `fwd` says why; `stored` whether the answer was kept.
    Forward {
        fwd: crate::cache::Fwd,
        stored: bool,
        detail: Option<&'static str>,
    },
}

impl Status {
    pub fn header(&self) -> String {
        // Built with `push_str`, not `format!`: this runs on every hit.
        let mut s = String::with_capacity(48);
        s.push_str("poplar; ");
        let detail = match self {
            Status::Hit {
                ttl,
                detail,
                collapsed,
            } => {
                s.push_str("hit; ttl=");
                s.push_str(itoa::Buffer::new().format(*ttl));
                if *collapsed {
                    s.push_str("; collapsed");
                }
                detail
            }
            Status::Forward {
                fwd,
                stored,
                detail,
            } => {
                s.push_str("fwd=");
                s.push_str(fwd.as_str());
                if *stored {
                    s.push_str("; stored");
                }
                detail
            }
        };
        if let Some(d) = detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(method: &str, body: Option<&[u8]>) -> String {
        primary_key(&KeyParts {
            route: 2,
            version: "abc",
            method,
            host: "Example.COM",
            path_and_query: "/a?b=1",
            body,
        })
    }

    #[test]
    fn keys() {
        assert_eq!(key("GET", None), "2\nabc\nGET\nexample.com\n/a?b=1\n");
        assert_eq!(
            key("HEAD", None),
            key("GET", None),
            "HEAD shares GET's entries"
        );
        assert_ne!(key("POST", Some(b"x")), key("POST", Some(b"y")));
        assert_eq!(
            key("POST", Some(b"x")),
            "2\nabc\nPOST\nexample.com\n/a?b=1\n\
             2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
            "a body is keyed by its SHA-256"
        );
        let other_version = primary_key(&KeyParts {
            route: 2,
            version: "abd",
            method: "GET",
            host: "example.com",
            path_and_query: "/a?b=1",
            body: None,
        });
        assert_ne!(
            other_version,
            key("GET", None),
            "a new task version never shares entries"
        );
    }

    #[test]
    fn cache_status_values() {
        assert_eq!(
            Status::Hit {
                ttl: 30,
                detail: None,
                collapsed: false
            }
            .header(),
            "poplar; hit; ttl=30"
        );
        assert_eq!(
            Status::Hit {
                ttl: -3,
                detail: Some("stale-if-error"),
                collapsed: false
            }
            .header(),
            "poplar; hit; ttl=-3; detail=stale-if-error"
        );
        assert_eq!(
            Status::Hit {
                ttl: 9,
                detail: None,
                collapsed: true
            }
            .header(),
            "poplar; hit; ttl=9; collapsed"
        );
        assert_eq!(
            Status::Forward {
                fwd: crate::cache::Fwd::UriMiss,
                stored: true,
                detail: None
            }
            .header(),
            "poplar; fwd=uri-miss; stored"
        );
        assert_eq!(
            Status::Forward {
                fwd: crate::cache::Fwd::Method,
                stored: false,
                detail: Some("uncacheable")
            }
            .header(),
            "poplar; fwd=method; detail=uncacheable"
        );
    }
}
