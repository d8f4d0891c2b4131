//! Poplar: an edge-compute reverse proxy on Pingora and Wasmtime.
//!
//! Modules follow a request: [`config`] is read once; [`routing`] picks the route; a task
//! route runs in [`wasm`], an origin route is proxied; [`proxy`] holds the thin Pingora
//! phases that call them, and [`errors`] maps what can go wrong to statuses. [`server`]
//! starts it all, and [`demo`] is the bundled origin for `poplar demo` and the tests.

pub mod config;
pub mod demo;
pub mod errors;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod wasm;
