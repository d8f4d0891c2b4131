//! `json-transform`: parses a JSON request body and answers a transformed document.
//!
//! Every string value is upper-cased (object keys are kept), and a `stats` object counts
//! what the document holds. A body that is not JSON gets 400 with the parser's message;
//! a method other than POST or PUT gets 405.

use serde_json::{Map, Value, json};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct JsonTransform;

wasip2::http::proxy::export!(JsonTransform);

#[derive(Default)]
struct Stats {
    strings: u64,
    numbers: u64,
    max_depth: u64,
}

fn transform(value: Value, depth: u64, stats: &mut Stats) -> Value {
    stats.max_depth = stats.max_depth.max(depth);
    match value {
        Value::String(s) => {
            stats.strings += 1;
            Value::String(s.to_uppercase())
        }
        Value::Number(n) => {
            stats.numbers += 1;
            Value::Number(n)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| transform(v, depth + 1, stats))
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k, transform(v, depth + 1, stats)))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request.consume().map_err(|()| "request body unavailable")?;
    let stream = body
        .stream()
        .map_err(|()| "request body stream unavailable")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("reading the request body failed: {e:?}")),
        }
    }
    drop(stream);
    IncomingBody::finish(body);
    Ok(bytes)
}

fn respond(
    out: ResponseOutparam,
    status: u16,
    content_type: &str,
    text: String,
    extra: &[(&str, &str)],
) {
    let mut list = vec![
        ("content-type".to_string(), content_type.as_bytes().to_vec()),
        (
            "content-length".to_string(),
            text.len().to_string().into_bytes(),
        ),
    ];
    list.extend(
        extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
    );
    let response = OutgoingResponse::new(Fields::from_list(&list).expect("headers are valid"));
    response.set_status_code(status).expect("status is valid");
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("stream is taken once");
    // The host may have gone away (client closed); there is nobody to tell then.
    let _ = stream.blocking_write_and_flush(text.as_bytes());
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

impl Guest for JsonTransform {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Post | Method::Put) {
            let text = "json-transform takes a JSON document by POST or PUT\n".to_string();
            return respond(out, 405, "text/plain", text, &[("allow", "POST, PUT")]);
        }
        let bytes = match read_body(&request) {
            Ok(bytes) => bytes,
            Err(e) => return respond(out, 400, "text/plain", format!("{e}\n"), &[]),
        };
        let document: Value = match serde_json::from_slice(&bytes) {
            Ok(document) => document,
            Err(e) => return respond(out, 400, "text/plain", format!("bad JSON: {e}\n"), &[]),
        };
        let mut stats = Stats::default();
        let transformed = transform(document, 0, &mut stats);
        let answer = json!({
            "transformed": transformed,
            "stats": { "strings": stats.strings, "numbers": stats.numbers, "depth": stats.max_depth },
        });
        respond(out, 200, "application/json", format!("{answer}\n"), &[]);
    }
}
