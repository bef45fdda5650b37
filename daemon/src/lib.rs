//! tunl: a userspace IPIP tunnel router, as a library.
//!
//! It stands in for Linux's `tunl0` (the ipip driver) as Calico's IPIP mode
//! uses it: pod packets from a TUN device are routed by block to the node
//! that owns it, encapsulated in place and sent on the underlay; IPIP from
//! allowed nodes is decapsulated into the TUN device.
//!
//! The crates underneath: [`tunl_encap`] (sans-IO wire format),
//! [`tunl_routing`] (the LPM table), [`tunl_io`] (TUN, sockets, netlink).
//! This crate wires them:
//!
//! - [`config`]: the TOML configuration and its validation;
//! - [`dataplane`]: the per-packet decisions ([`dataplane::pipeline`], no
//!   I/O) and the worker threads that feed them ([`dataplane::worker`]);
//! - [`daemon`]: `tunl run`, one module per job (startup, routes, control
//!   requests, reload, neighbours, signals, privileges);
//! - [`control`]: the control socket's wire types, server and client;
//! - [`metrics`]: the Prometheus endpoint.
//!
//! The `tunl` command is the `tunl-cli` crate; the namespace tooling (`tunl
//! lab`, `tunl bench`) is `tunl-lab`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod metrics;
