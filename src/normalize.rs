//! What routes, cache keys, origins and tasks read of a request, normalised once at the
//! edge so that spellings of one resource cannot reach different routes: `Host:
//! API.example.com.:443`, `/%68ello`, `//hello`, `/x/../hello` and the absolute form
//! `GET http://api.example.com/hello` all mean host `api.example.com`, path `/hello`.
//!
//! The rules (RFC 3986 §6.2.2, RFC 9112 §3.2.2):
//! - host: the request line's authority when it has one (the Host header is then ignored),
//!   else the Host header; lower-cased, without port and trailing dot;
//! - path: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, other
//!   escapes upper-cased (`%2f` to `%2F`: an encoded slash stays data, not a separator),
//!   runs of `/` merged into one (as nginx's `merge_slashes` does), then `.` and `..`
//!   segments resolved (never above the root).

/// The host a request is for, or `None` when it names none.
pub fn host(authority: Option<&str>, header: Option<&str>) -> Option<String> {
    let raw = authority.or(header)?;
    let bare = strip_port(raw.trim());
    let bare = bare.trim_end_matches('.');
    (!bare.is_empty()).then(|| bare.to_ascii_lowercase())
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The normalised path, or `None` when `raw` is normal already (no allocation then).
pub fn path(raw: &str) -> Option<String> {
    if is_plain(raw.as_bytes()) {
        return None;
    }
    let decoded = decode_unreserved(raw);
    let resolved = resolve(&decoded);
    (resolved != raw).then_some(resolved)
}

/// No `%`, `//` or `/.` anywhere: nothing to normalise. One pass over the bytes, on every
/// request.
fn is_plain(path: &[u8]) -> bool {
    let mut after_slash = false;
    for &b in path {
        if b == b'%' || (after_slash && matches!(b, b'/' | b'.')) {
            return false;
        }
        after_slash = b == b'/';
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escape {
            Some(b) if is_unreserved(b) => out.push(char::from(b)),
            Some(b) => out.push_str(&format!("%{b:02X}")),
            // A `%` that starts no escape is data: written as one, so that decoding what
            // follows cannot make an escape of it (`/%%330` is `/%2530`, not `/%30`).
            None if bytes[i] == b'%' => {
                out.push_str("%25");
                i += 1;
                continue;
            }
            None => {
                // Not an escape: copy the character whole (the path may hold UTF-8).
                let c = raw[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(c);
                i += c.len_utf8();
                continue;
            }
        }
        i += 3;
    }
    out
}

/// Merges runs of `/` and resolves `.` and `..` segments.
fn resolve(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/') {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_as_one_spelling() {
        for raw in [
            "api.example.com",
            "API.Example.COM",
            "api.example.com.",
            "api.example.com:8080",
            "api.example.com.:443",
        ] {
            assert_eq!(
                host(None, Some(raw)).as_deref(),
                Some("api.example.com"),
                "{raw}"
            );
        }
        assert_eq!(
            host(Some("api.example.com"), Some("other.test")).as_deref(),
            Some("api.example.com"),
            "the absolute form's authority wins over Host"
        );
        assert_eq!(host(None, Some("[::1]:80")).as_deref(), Some("[::1]"));
        assert_eq!(host(None, None), None);
        assert_eq!(host(None, Some(".")), None);
    }

    #[test]
    fn paths_are_compared_as_one_spelling() {
        let cases = [
            ("/%68ello", "/hello"),
            ("/%7Euser/%41", "/~user/A"),
            ("//hello", "/hello"),
            ("/a//b///c", "/a/b/c"),
            ("/x/../hello", "/hello"),
            ("/./hello/.", "/hello/"),
            ("/../../etc", "/etc"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2f/b", "/a/%2F/b"),
            ("/a/b/..", "/a/"),
            ("/%zz", "/%25zz"),
            ("/%%330", "/%2530"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/..", "/"),
        ];
        for (raw, want) in cases {
            assert_eq!(path(raw).as_deref().unwrap_or(raw), want, "{raw}");
        }
        for normal in ["/", "/hello", "/a/b/", "/a.b/c", "/x%2F"] {
            assert_eq!(path(normal), None, "{normal} is normal already");
        }
    }

    #[test]
    fn a_plain_path_is_one_without_percent_double_slash_or_slash_dot() {
        // Every string of up to 6 of the bytes that matter.
        let mut paths = vec![String::new()];
        for _ in 0..6 {
            let longer: Vec<String> = (paths.iter())
                .flat_map(|p| ['/', '.', '%', 'a'].map(|c| format!("{p}{c}")))
                .collect();
            paths.extend(longer);
        }
        paths.dedup();
        for p in &paths {
            let plain = !p.contains('%') && !p.contains("//") && !p.contains("/.");
            assert_eq!(is_plain(p.as_bytes()), plain, "{p:?}");
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in ["/%68//x/../y/./%2f", "/a/%2E/b//", "/%7e"] {
            let once = path(raw).unwrap_or_else(|| raw.to_string());
            assert_eq!(path(&once), None, "{raw} -> {once}");
        }
    }
}
