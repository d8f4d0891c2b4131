//! HTTP field syntax as caches read it: comma-separated lists with quoted strings,
//! `Cache-Control` and `Surrogate-Control` directives, delta-seconds, and dates in every form
//! in use. Where the RFCs leave reading open, this reads as caches in the field do: a
//! delta-seconds value up to its first non-digit (`3600.5` is 3600, as Squid), the first of
//! two values, and the common misspellings of dates. Plain functions, no I/O.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// The largest delta-seconds a cache need represent (RFC 9111, section 1.2.2).
pub(super) const MAX_DELTA: u64 = 2_147_483_648;

/// The directives of every `Cache-Control` line, in order: lower-cased names, values
/// unquoted. A list element that is not `token[=value]` (a space before the `=`, say) is
/// no directive; commas inside a quoted value do not split it.
pub(super) fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    directives_of(headers, http::header::CACHE_CONTROL, |element| {
        Some(element)
    })
}

/// The directives of every `name` line, each list element first passed through `select`
/// (which may strip a part of it, or leave the element out).
fn directives_of<'a>(
    headers: &'a HeaderMap,
    name: impl http::header::AsHeaderName,
    select: impl Fn(&'a str) -> Option<&'a str>,
) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    for line in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        for element in split_list(line).into_iter().filter_map(&select) {
            let (name, value) = match element.split_once('=') {
                Some((name, value)) => (name, Some(unquote(value))),
                None => (element, None),
            };
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                continue;
            }
            found.push((name.to_ascii_lowercase(), value));
        }
    }
    found
}

/// The elements of a comma-separated list, trimmed, empty ones left out; a comma inside a
/// quoted string is part of its element.
pub(super) fn split_list(line: &str) -> Vec<&str> {
    let mut elements = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in line.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                elements.push(line[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    elements.push(line[start..].trim());
    elements.retain(|e| !e.is_empty());
    elements
}

pub(super) fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => value.to_string(),
    }
}

pub(super) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A delta-seconds value: its leading digits (clamped to [`MAX_DELTA`]); `None` when it has
/// none (`-1`, `'60'`, ` 60`, `a60`).
pub(super) fn delta_seconds(value: &str) -> Option<Duration> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n = value[..digits].parse::<u64>().unwrap_or(MAX_DELTA);
    Some(Duration::from_secs(n.min(MAX_DELTA)))
}

/// The parsed `Cache-Control` of one message.
pub(super) struct Directives(pub(super) Vec<(String, Option<String>)>);

impl Directives {
    pub(super) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// The first `name`: `Some(None)` when present without a value.
    pub(super) fn value(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_deref())
    }

    /// The first `name`'s delta-seconds; an invalid value reads as zero (stale).
    pub(super) fn seconds(&self, name: &str) -> Option<Duration> {
        self.value(name)
            .map(|v| v.and_then(delta_seconds).unwrap_or_default())
    }

    /// The field names a `no-cache="..."` or `private="..."` lists.
    pub(super) fn named_fields(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .filter_map(|(_, v)| v.as_deref())
            .flat_map(|v| v.split(','))
            .map(|f| f.trim().to_ascii_lowercase())
            .filter(|f| !f.is_empty())
            .collect()
    }
}

/// The token this edge answers to in `Surrogate-Capability` and `Surrogate-Control`
/// targets (Edge Architecture Specification 1.0, as Fastly and Akamai read it).
pub const SURROGATE_TARGET: &str = "poplar";
/// What the edge says of itself to origins: `Surrogate-Capability: poplar="Surrogate/1.0"`.
pub const SURROGATE_CAPABILITY: &str = "poplar=\"Surrogate/1.0\"";

/// The `Surrogate-Control` directives meant for this edge: those without a target, or with
/// `;poplar`. `None` when there are none (then Cache-Control rules alone).
pub(super) fn surrogate_directives(headers: &HeaderMap) -> Option<Directives> {
    let found = directives_of(headers, "surrogate-control", |element| {
        match element.split_once(';') {
            Some((directive, target)) => target
                .trim()
                .eq_ignore_ascii_case(SURROGATE_TARGET)
                .then_some(directive.trim()),
            None => Some(element),
        }
    });
    (!found.is_empty()).then_some(Directives(found))
}

/// An HTTP date in any of its three forms (IMF-fixdate, RFC 850, asctime), read leniently
/// as caches in the field do: any case, with or without the comma or weekday, dashes or
/// spaces between the parts, a two-digit year (the nearest not 50 years ahead), a one-digit hour and
/// any zone name (taken as GMT).
pub fn parse_date(text: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let (mut day, mut month, mut year, mut time) = (None, None, None, None);
    for token in text.split([' ', ',', '-']).filter(|t| !t.is_empty()) {
        let lower = token.to_ascii_lowercase();
        if token.contains(':') || token.contains('.') {
            let parts: Vec<u64> = token
                .split([':', '.'])
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            let [h, m, s] = parts[..] else { return None };
            if h > 23 || m > 59 || s > 60 {
                return None;
            }
            time = Some(h * 3600 + m * 60 + s);
        } else if let Some(m) = MONTHS.iter().position(|m| lower.starts_with(m)) {
            month = Some(m as u64 + 1);
        } else if let Ok(n) = token.parse::<u64>() {
            if token.len() <= 2 && day.is_none() && (1..=31).contains(&n) && year.is_none() {
                day = Some(n);
            } else if year.is_none() {
                year = Some(if token.len() == 2 {
                    two_digit_year(n)
                } else {
                    n
                });
            } else {
                return None;
            }
        } else if !token.bytes().all(|b| b.is_ascii_alphabetic() || b == b'+') {
            return None; // neither a weekday nor a zone
        }
    }
    let (day, month, year, time) = (day?, month?, year?, time?);
    if year < 1970 {
        return Some(SystemTime::UNIX_EPOCH);
    }
    let days = days_from_civil(year as i64, month as i64, day as i64);
    let secs = u64::try_from(days).ok()? * 86_400 + time;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// A two-digit year: the one of those digits not more than 50 years ahead (RFC 9110, 5.6.7).
pub(super) fn two_digit_year(n: u64) -> u64 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let this_year = 1970 + secs / 31_556_952;
    let year = 2000 + n;
    if year > this_year + 50 {
        year - 100
    } else {
        year
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(super) fn first_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn date_of(headers: &HeaderMap, name: &str) -> Option<SystemTime> {
    first_text(headers, name).and_then(parse_date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_every_form_seen() {
        let expected = parse_date("Thu, 18 Aug 2050 02:01:18 GMT").unwrap();
        for text in [
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 18 02:01:18 2050",
            "THU, 18 AUG 2050 02:01:18 gmt",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 UTC",
            "Thu, 18 Aug 50 02:01:18 GMT",
        ] {
            assert_eq!(parse_date(text), Some(expected), "{text}");
        }
        assert_eq!(
            parse_date("Thu, 01 Jan 1970 00:00:10 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
        );
        assert_eq!(
            httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").ok(),
            parse_date("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        for bad in [
            "0",
            "tomorrow",
            "Thu, 18 Aug 2050",
            "Thu, 32 Aug 2050 25:00:00 GMT",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn lists_keep_quoted_commas() {
        assert_eq!(split_list(" a, \"b,c\" ,, d "), ["a", "\"b,c\"", "d"]);
        assert_eq!(delta_seconds("003600"), Some(Duration::from_secs(3600)));
        assert_eq!(delta_seconds("-1"), None);
    }
}
