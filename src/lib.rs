//! Poplar: an edge-compute reverse proxy on Pingora and Wasmtime.
//!
//! Modules follow a request: [`config`] is read once; [`routing`] picks the route; for a
//! task route [`placement`] decides where it runs: inline in [`wasm`], or forwarded to one
//! of the [`regions`]; an origin route is proxied. [`proxy`] holds the thin Pingora phases
//! that call them, [`errors`] maps what can go wrong to statuses, [`metrics`] counts, and
//! [`admin`] shows it. [`server`] starts it all; [`demo`] is the bundled demo and origin.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod demo;
pub mod errors;
pub mod exposition;
pub mod framing;
pub mod metrics;
pub mod normalize;
pub mod origins;
pub mod placement;
pub mod proxy;
pub mod regions;
pub mod registry;
pub mod resolve;
pub mod routing;
pub mod server;
pub mod shards;
pub mod tls;
pub mod upstream;
pub mod wasm;
