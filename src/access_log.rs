//! The access log: one line per request. The request's thread only copies the line's fields
//! into one buffer ([`Record`]); a thread of its own formats them and writes through a
//! buffer, so a request neither formats nor waits on a write. When the
//! writer falls behind by [`BACKLOG`] lines, new lines are dropped and counted
//! (`poplar_access_log_dropped_total`), never queued without bound. A file is appended to
//! and reopened on `SIGUSR1`, after a log rotation moved it.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime};

use crate::config::{AccessLogSpec, LogFormat, LogTarget};

/// Lines waiting for the writer, at most: at 100,000 requests a second, 160 ms of them, eight
/// times what the writer lets pass between its rounds. The channel holds its slots from the
/// start (about 4 MiB).
const BACKLOG: usize = 16_384;
/// How often the writer writes what has come (and looks for a reopen request): a line is
/// in the file at most this long after its request ended.
const WRITE_EVERY: Duration = Duration::from_millis(20);

/// What one line says of a request.
#[derive(Debug, serde::Serialize)]
pub struct Line<'a> {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub time: SystemTime,
    pub id: &'a str,
    pub client: Option<std::net::IpAddr>,
    pub method: &'a str,
    pub host: &'a str,
    /// Path and query, as routed (normalised).
    pub path: &'a str,
    pub version: &'a str,
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: usize,
    /// From arrival to the end of the response, in seconds.
    pub duration: f64,
    /// The route's position in the config's `routes`.
    pub route: Option<usize>,
    pub task: Option<&'a str>,
    /// `edge` or `region`, and why (`x-poplar-placement`).
    pub placement: Option<&'a str>,
    pub reason: Option<&'a str>,
    /// `Cache-Status` as sent.
    pub cache: Option<&'a str>,
    /// The origin's address or the region's name.
    pub upstream: Option<String>,
    /// `x-poplar-error` as sent.
    pub error: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// A line's fields, owned, as they cross to the writer: every text field in one buffer.
struct Record {
    time: SystemTime,
    client: Option<std::net::IpAddr>,
    status: u16,
    bytes: usize,
    duration: f64,
    route: Option<usize>,
    text: String,
    /// Each text field's place in `text`, in [`Record::fields`] order; `None`: absent.
    spans: [Option<(u32, u32)>; FIELDS],
}

const FIELDS: usize = 13;

impl Record {
    fn new(l: &Line<'_>) -> Record {
        let fields = Record::fields(l);
        let mut text = String::with_capacity(fields.iter().flatten().map(|f| f.len()).sum());
        let mut spans = [None; FIELDS];
        for (span, field) in spans.iter_mut().zip(fields) {
            if let Some(field) = field {
                let start = text.len();
                text.push_str(field);
                *span = u32::try_from(start)
                    .ok()
                    .zip(u32::try_from(text.len()).ok());
            }
        }
        Record {
            time: l.time,
            client: l.client,
            status: l.status,
            bytes: l.bytes,
            duration: l.duration,
            route: l.route,
            text,
            spans,
        }
    }

    fn fields<'a>(l: &'a Line<'a>) -> [Option<&'a str>; FIELDS] {
        [
            Some(l.id),
            Some(l.method),
            Some(l.host),
            Some(l.path),
            Some(l.version),
            l.task,
            l.placement,
            l.reason,
            l.cache,
            l.upstream.as_deref(),
            l.error,
            l.referer,
            l.user_agent,
        ]
    }

    fn line(&self) -> Line<'_> {
        let field = |i: usize| {
            let (start, end) = self.spans[i]?;
            self.text.get(start as usize..end as usize)
        };
        Line {
            time: self.time,
            id: field(0).unwrap_or_default(),
            client: self.client,
            method: field(1).unwrap_or_default(),
            host: field(2).unwrap_or_default(),
            path: field(3).unwrap_or_default(),
            version: field(4).unwrap_or_default(),
            status: self.status,
            bytes: self.bytes,
            duration: self.duration,
            route: self.route,
            task: field(5),
            placement: field(6),
            reason: field(7),
            cache: field(8),
            upstream: field(9).map(str::to_string),
            error: field(10),
            referer: field(11),
            user_agent: field(12),
        }
    }
}

pub struct AccessLog {
    lines: SyncSender<Record>,
    dropped: AtomicU64,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Opens the destination now (a file that cannot be opened is an error at start) and
    /// starts the writer.
    pub fn open(spec: &AccessLogSpec) -> std::io::Result<AccessLog> {
        let out = Out::open(&spec.to)?;
        let (lines, pending) = std::sync::mpsc::sync_channel(BACKLOG);
        let reopen = Arc::new(AtomicBool::new(false));
        let asked = reopen.clone();
        let format = spec.format;
        std::thread::Builder::new()
            .name("poplar-access-log".into())
            .spawn(move || write_lines(out, format, &pending, &asked))?;
        Ok(AccessLog {
            lines,
            dropped: AtomicU64::new(0),
            reopen,
        })
    }

    /// Logs a request: copies its fields here; the writer formats and writes them.
    pub fn log(&self, line: &Line<'_>) {
        match self.lines.try_send(Record::new(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Reopens a file destination (after a rotation moved it) before the next write.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

enum Out {
    Stderr(std::io::Stderr),
    File(PathBuf, BufWriter<File>),
}

impl Out {
    fn open(to: &LogTarget) -> std::io::Result<Out> {
        Ok(match to {
            LogTarget::Stderr => Out::Stderr(std::io::stderr()),
            LogTarget::File(path) => Out::File(path.clone(), BufWriter::new(append(path)?)),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Out::Stderr(e) => e,
            Out::File(_, f) => f,
        }
    }

    fn reopen(&mut self) {
        if let Out::File(path, file) = self {
            let _ = file.flush();
            match append(path) {
                Ok(new) => *file = BufWriter::new(new),
                Err(e) => log::error!("access log: cannot reopen {}: {e}", path.display()),
            }
        }
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer: every [`WRITE_EVERY`], formats and writes what has come, then flushes. It
/// never waits on the channel itself: a waiting receiver would make every request's send
/// wake it (a futex call and a context switch per line); polling, a send is a queue push.
fn write_lines(mut out: Out, format: LogFormat, pending: &Receiver<Record>, reopen: &AtomicBool) {
    // One buffer for every line, and the second's text shared by the lines within it.
    let (mut line, mut seconds) = (String::with_capacity(512), Seconds::default());
    let mut format_into = |line: &mut String, record: Record| {
        line.clear();
        match format {
            LogFormat::Text => text_into(line, &record.line(), &mut seconds),
            LogFormat::Json => line.push_str(&json(&record.line())),
        }
    };
    loop {
        if reopen.swap(false, Ordering::Relaxed) {
            out.reopen();
        }
        let w = out.writer();
        let mut written = Ok(());
        let mut any = false;
        loop {
            match pending.try_recv() {
                Ok(record) => {
                    any = true;
                    format_into(&mut line, record);
                    written = written.and_then(|()| w.write_all(line.as_bytes()));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = w.flush();
                    return;
                }
            }
        }
        if any && let Err(e) = written.and_then(|()| w.flush()) {
            log::error!("access log: cannot write: {e}");
        }
        std::thread::sleep(WRITE_EVERY);
    }
}

/// Combined-like: `client - - [time] "METHOD path VERSION" status bytes "referer"
/// "user-agent"`, then `key=value` fields, `-` where there is nothing. Written into one
/// buffer, without a `String` per field.
#[cfg(test)]
fn text(l: &Line<'_>) -> String {
    let mut out = String::with_capacity(256);
    text_into(&mut out, l, &mut Seconds::default());
    out
}

/// The last second a timestamp was formatted for, and its text up to the seconds
/// (`2025-12-01T14:17:06`): lines within a second share it, and only add milliseconds.
#[derive(Default)]
struct Seconds {
    at: Option<u64>,
    text: String,
}

impl Seconds {
    fn push(&mut self, out: &mut String, time: SystemTime) {
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if self.at != Some(since.as_secs()) {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs());
            self.text = humantime::format_rfc3339_seconds(whole).to_string();
            self.text.pop(); // the `Z`, written after the milliseconds
            self.at = Some(since.as_secs());
        }
        out.push_str(&self.text);
        out.push('.');
        push_padded(out, u64::from(since.subsec_millis()), 3);
        out.push('Z');
    }
}

/// [`text`] into `out`, without `fmt` for the numbers, the address and the time.
fn text_into(out: &mut String, l: &Line<'_>, seconds: &mut Seconds) {
    match l.client {
        Some(std::net::IpAddr::V4(ip)) => {
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_uint(out, u64::from(octet));
            }
        }
        Some(client) => {
            use std::fmt::Write;
            _ = write!(out, "{client}");
        }
        None => out.push('-'),
    }
    out.push_str(" - - [");
    seconds.push(out, l.time);
    out.push_str("] \"");
    for (i, part) in [l.method, l.path, l.version].into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        escape_into(out, part);
    }
    out.push_str("\" ");
    push_uint(out, u64::from(l.status));
    out.push(' ');
    push_uint(out, l.bytes as u64);
    out.push_str(" \"");
    escape_into(out, l.referer.unwrap_or("-"));
    out.push_str("\" \"");
    escape_into(out, l.user_agent.unwrap_or("-"));
    out.push('"');
    let field = |out: &mut String, key: &str, value: Option<&str>| {
        out.push(' ');
        out.push_str(key);
        out.push('=');
        match value {
            Some(v) => quoted_into(out, v),
            None => out.push('-'),
        }
    };
    field(out, "id", Some(l.id).filter(|id| !id.is_empty()));
    field(out, "host", Some(l.host).filter(|h| !h.is_empty()));
    // Seconds with six decimals, from whole microseconds.
    let micros = (l.duration.max(0.0) * 1e6).round() as u64;
    out.push_str(" rt=");
    push_uint(out, micros / 1_000_000);
    out.push('.');
    push_padded(out, micros % 1_000_000, 6);
    out.push_str(" route=");
    match l.route {
        Some(route) => push_uint(out, route as u64),
        None => out.push('-'),
    }
    field(out, "task", l.task);
    field(out, "placement", l.placement);
    field(out, "reason", l.reason);
    field(out, "cache", l.cache);
    field(out, "upstream", l.upstream.as_deref());
    field(out, "error", l.error);
    out.push('\n');
}

/// `n` in decimal.
fn push_uint(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    for d in digits[..width.min(20)].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for &d in &digits[..width.min(20)] {
        out.push(char::from(d));
    }
}

fn json(l: &Line<'_>) -> String {
    let time = humantime::format_rfc3339_millis(l.time).to_string();
    let mut value = serde_json::to_value(l).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("time".into(), time.into());
    }
    let mut line = value.to_string();
    line.push('\n');
    line
}

/// Appends `s` with `\"`, `\\` and `\xNN` for control bytes: a line is one line, its
/// quotes its own.
fn escape_into(out: &mut String, s: &str) {
    // Printable ASCII without quotes or backslashes, what nearly every field is, as is.
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    if s.bytes().all(plain) {
        return out.push_str(s);
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                use std::fmt::Write;
                _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// Appends a value as is when it is one plain word, else quoted and escaped.
fn quoted_into(out: &mut String, s: &str) {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if plain {
        out.push_str(s);
    } else {
        out.push('"');
        escape_into(out, s);
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line<'static> {
        Line {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_598_626_123),
            id: "a1b2",
            client: Some([192, 0, 2, 7].into()),
            method: "GET",
            host: "api.example.com",
            path: "/hello?name=x",
            version: "HTTP/1.1",
            status: 200,
            bytes: 12,
            duration: 0.000_42,
            route: Some(1),
            task: Some("hello"),
            placement: Some("edge"),
            reason: Some("hot"),
            cache: Some("poplar; fwd=miss; stored"),
            upstream: None,
            error: None,
            referer: None,
            user_agent: Some("curl/8 \"quoted\"\u{1}"),
        }
    }

    #[test]
    fn numbers_and_times_are_written_as_fmt_would() {
        let mut l = line();
        l.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_598_626_007);
        l.duration = 12.5;
        l.status = 504;
        l.bytes = 0;
        l.route = Some(10);
        l.client = Some("2001:db8::1".parse().unwrap());
        let text = text(&l);
        assert!(
            text.starts_with("2001:db8::1 - - [2025-12-01T14:17:06.007Z] "),
            "{text}"
        );
        assert!(text.contains("\" 504 0 \""), "{text}");
        assert!(text.contains(" rt=12.500000 route=10 "), "{text}");
        // Lines within one second share its text; the next second gets its own.
        let mut seconds = Seconds::default();
        let (mut a, mut b) = (String::new(), String::new());
        seconds.push(&mut a, l.time);
        seconds.push(&mut b, l.time + Duration::from_millis(995));
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("2025-12-01T14:17:06.007Z", "2025-12-01T14:17:07.002Z")
        );
    }

    #[test]
    fn a_record_carries_every_field_to_the_writer_as_it_was() {
        let mut full = line();
        full.upstream = Some("10.0.0.1:80".into());
        full.error = Some("origin");
        for l in [line(), full] {
            let carried = Record::new(&l);
            assert_eq!(text(&carried.line()), text(&l));
            assert_eq!(json(&carried.line()), json(&l));
        }
    }

    #[test]
    fn text_lines_are_combined_then_fields_one_line_each() {
        let text = text(&line());
        assert_eq!(
            text,
            "192.0.2.7 - - [2025-12-01T14:17:06.123Z] \"GET /hello?name=x HTTP/1.1\" 200 12 \"-\" \"curl/8 \\\"quoted\\\"\\x01\" id=a1b2 host=api.example.com rt=0.000420 route=1 task=hello placement=edge reason=hot cache=\"poplar; fwd=miss; stored\" upstream=- error=-\n"
        );
    }

    #[test]
    fn json_lines_parse_back() {
        let json = json(&line());
        assert!(json.ends_with('\n') && json.matches('\n').count() == 1);
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["time"], "2025-12-01T14:17:06.123Z");
        assert_eq!(back["status"], 200);
        assert_eq!(back["task"], "hello");
        assert_eq!(back["client"], "192.0.2.7");
        assert_eq!(back["upstream"], serde_json::Value::Null);
    }
}
