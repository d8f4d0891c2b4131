//! The deploy API, on a region's admin listener. Every request needs the deploy token
//! (`Authorization: Bearer`): 401 without one, 403 with another.
//!
//! - `GET /tasks`: every task, its versions and the current one.
//! - `GET /tasks/NAME`: one task.
//! - `PUT /tasks/NAME?memory=64MiB&timeout=1s&max_body=1MiB&digest=HEX`, the component as
//!   the body: compiled and linked here first; `201` with the version when it is new, `200`
//!   when that digest with those limits was deployed before and is made current again.
//!   Limits default as in a config file; `digest` (optional) is checked against the upload.
//! - `POST /tasks/NAME/current?digest=HEX`: makes an earlier version current (a rollback).
//! - `DELETE /tasks/NAME`: removes the task and every version of it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;

use super::{Refused, Registry};
use crate::config::Limits;

type Response = http::Response<Vec<u8>>;

fn json(status: u16, value: &serde_json::Value) -> Response {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    crate::admin::respond(status, "application/json", body)
}

fn text(status: u16, message: &str) -> Response {
    crate::admin::respond(status, "text/plain", format!("{message}\n").into_bytes())
}

fn refused(refused: &Refused) -> Response {
    text(refused.status(), &refused.to_string())
}

/// Answers a request under `/tasks`; `None` for any other path.
pub async fn handle(registry: &Arc<Registry>, session: &mut ServerSession) -> Option<Response> {
    let req = session.req_header();
    let path = req.uri.path().to_string();
    let rest = match path.strip_prefix("/tasks") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        _ => return None,
    };
    if let Some(answer) = check_token(registry, req) {
        return Some(answer);
    }
    let method = req.method.clone();
    let query = req.uri.query().unwrap_or_default().to_string();
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let (name, action) = match rest.split_once('/') {
        Some((name, action)) => (name, Some(action)),
        None => (rest, None),
    };
    let answer = match (method.as_str(), name, action) {
        ("GET", "", None) => json(200, &serde_json::json!({ "tasks": registry.entries() })),
        ("GET", name, None) => match registry.entries().get(name) {
            Some(entry) => json(200, &serde_json::json!({ "name": name, "task": entry })),
            None => text(404, &format!("no task {name:?} in the registry")),
        },
        ("PUT", name, None) if !name.is_empty() => {
            let limits = match limits(&param) {
                Ok(limits) => limits,
                Err(message) => return Some(text(400, &message)),
            };
            let code = match upload(session, registry.max_code).await {
                Ok(code) => code,
                Err(answer) => return Some(answer),
            };
            let expected = param("digest");
            match registry
                .deploy(name, code, limits, expected.as_deref())
                .await
            {
                Ok((version, new)) => json(
                    if new { 201 } else { 200 },
                    &serde_json::json!({ "name": name, "current": version, "new": new }),
                ),
                Err(e) => {
                    log::warn!("deploy of {name} refused: {e}");
                    refused(&e)
                }
            }
        }
        ("POST", name, Some("current")) => match param("digest") {
            None => text(400, "name the version: ?digest=HEX"),
            Some(digest) => match registry.set_current(name, &digest).await {
                Ok(version) => json(
                    200,
                    &serde_json::json!({ "name": name, "current": version }),
                ),
                Err(e) => refused(&e),
            },
        },
        ("DELETE", name, None) if !name.is_empty() => match registry.delete(name).await {
            Ok(entry) => json(200, &serde_json::json!({ "name": name, "deleted": entry })),
            Err(e) => refused(&e),
        },
        _ => text(
            405,
            "try GET /tasks, GET|PUT|DELETE /tasks/NAME or POST /tasks/NAME/current?digest=HEX",
        ),
    };
    Some(answer)
}

fn check_token(registry: &Registry, req: &pingora_http::RequestHeader) -> Option<Response> {
    let access = registry.token.check(req);
    let refused = crate::admin::refuse(access, "deploy")?;
    log::warn!(
        "deploy API: {} {} refused ({})",
        req.method,
        req.uri.path(),
        refused.status()
    );
    Some(refused)
}

/// A deploy's limits from its query, each defaulting as in a config file, bounded alike.
fn limits(param: &impl Fn(&str) -> Option<String>) -> Result<Limits, String> {
    let default = Limits::default();
    let size = |name: &str, default: u64| match param(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| format!("{name}: {v:?} is not a size such as 64MiB")),
    };
    let limits = Limits {
        memory: size("memory", default.memory)?,
        timeout: match param("timeout") {
            None => default.timeout,
            Some(v) => humantime::parse_duration(&v)
                .map_err(|_| format!("timeout: {v:?} is not a duration such as 2s"))?,
        },
        max_body: size("max_body", default.max_body)?,
    };
    match limits.problems().first() {
        Some((field, message)) => Err(format!("{field}: {message}")),
        None => Ok(limits),
    }
}

/// The whole uploaded component, of at most `max` bytes. An upload that ends before its
/// `Content-Length` is refused, never taken for a smaller component.
async fn upload(session: &mut ServerSession, max: u64) -> Result<Bytes, Response> {
    let declared = crate::body::content_length(&session.req_header().headers);
    if declared.is_some_and(|n| n > max) {
        session.set_keepalive(None);
        return Err(text(
            413,
            &format!("a component of at most {max} bytes here (registry.max_code)"),
        ));
    }
    let mut code = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if (code.len() + chunk.len()) as u64 > max {
                    session.set_keepalive(None);
                    return Err(text(
                        413,
                        &format!("a component of at most {max} bytes here (registry.max_code)"),
                    ));
                }
                code.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                log::warn!("deploy upload cut short: {e}");
                return Err(text(400, &format!("the upload was cut short: {e}")));
            }
        }
    }
    if code.is_empty() {
        return Err(text(400, "no component: send the wasm file as the body"));
    }
    if declared.is_some_and(|n| n != code.len() as u64) {
        return Err(text(400, "the upload was cut short"));
    }
    Ok(code.freeze())
}
