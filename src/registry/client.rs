//! The deploy API's client, for `poplar deploy`, `poplar tasks`, `poplar rollback` and
//! `poplar undeploy`: one request to a region's admin listener, over Pingora's connector.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use pingora_http::RequestHeader;

use crate::config::Timeouts;
use crate::upstream::{Client, peer};

/// The largest answer read (a listing of many tasks and versions).
const MAX_ANSWER: usize = 16 << 20;

/// A region's admin endpoint, as `http://host:port` (or `host:port`).
pub struct Admin {
    addr: SocketAddr,
    host: String,
    token: String,
}

impl Admin {
    /// Resolves `url`; `token` is the deploy token.
    pub async fn new(url: &str, token: String) -> anyhow::Result<Admin> {
        let authority = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => bail!("{url}: the admin listener speaks http, not {scheme}"),
            None => url,
        };
        let authority = authority.trim_end_matches('/');
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("cannot resolve {authority} (host:port)"))?
            .next()
            .with_context(|| format!("{authority} has no address"))?;
        Ok(Admin {
            addr,
            host: authority.to_string(),
            token,
        })
    }

    /// Sends one request; answers the status and the body as text.
    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, String)> {
        let mut head = RequestHeader::build(method, path_and_query.as_bytes(), None)?;
        head.insert_header(http::header::HOST, self.host.as_str())?;
        head.insert_header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", self.token),
        )?;
        if !body.is_empty() || method == "PUT" {
            head.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            head.insert_header(http::header::CONTENT_TYPE, "application/wasm")?;
        }
        // A deploy compiles the component before it answers: seconds for a large one.
        let timeouts = Timeouts {
            read: Duration::from_secs(300),
            write: Duration::from_secs(60),
            ..Timeouts::default()
        };
        let answer = Client::default()
            .exchange(&peer(self.addr, None, &timeouts), head, body, MAX_ANSWER)
            .await
            .with_context(|| format!("{} {path_and_query} on {}", method, self.host))?;
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        Ok((answer.head.status.as_u16(), text))
    }
}

/// The query of a deploy: the limits given, and the upload's digest.
pub fn deploy_query(digest: &str, limits: &[(&str, Option<String>)]) -> String {
    let mut query = format!("digest={digest}");
    for (name, value) in limits {
        if let Some(value) = value {
            let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
            query += &format!("&{name}={value}");
        }
    }
    query
}
