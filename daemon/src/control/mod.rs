//! The control socket: a Unix stream socket speaking newline-delimited JSON
//! (see `docs/control-protocol.md`).
//!
//! - [`wire`]: the protocol's types (requests, replies, the results of each
//!   command) and limits, and the parser of a request line;
//! - [`server`]: the daemon's side, which binds the socket and hands each
//!   request to the main loop;
//! - [`client`]: what `tunl route`, `tunl status` and `tunl stats` use;
//! - [`prefix`] and [`origin`]: a prefix's text and a route origin's name
//!   on the wire, quick both ways.
//!
//! Everything is re-exported here: `tunl::control::{Client, Request, ...}`.

pub mod client;
pub mod origin;
pub mod prefix;
pub mod server;
pub mod wire;

pub use client::{CLIENT_TIMEOUT, Client, ClientError};
pub use server::{BindError, Call, StreamSlot, accept_loop, bind, serve_connection};
pub use wire::{
    Incoming, ListedNextHop, ListedRoute, MAX_REPLACE_ROUTES, MAX_REQUEST, NodeStatus,
    READ_TIMEOUT, ROUTES_PER_CHUNK, RefusedStatus, ReplaceStream, Request, Response, Route,
    RouteChange, RouteChunk, RouteList, STREAM_TIMEOUT, Stats, Status, StreamHeader, UnderlayLink,
    UnderlayStatus, parse_line, parse_request, unix_ms,
};
