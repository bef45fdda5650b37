//! tunl: a userspace IPIP tunnel router.
//!
//! It stands in for Linux's `tunl0` (the ipip driver) as Calico's IPIP mode
//! uses it: pod packets from a TUN device are routed by block to the node
//! that owns it, encapsulated in place and sent on a raw socket; IPIP from
//! allowed nodes is decapsulated into the TUN device.
//!
//! The crates underneath: [`tunl_encap`] (sans-IO wire format),
//! [`tunl_routing`] (the LPM table), [`tunl_io`] (TUN, raw sockets, netlink).
//! This crate wires them: [`router`] (dataplane threads), [`daemon`]
//! (lifecycle), [`config`], [`cli`], and [`topology`] (network-namespace
//! clusters for tests, the lab and benchmarks).

pub mod bench;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod lab;
pub mod metrics;
pub mod privileges;
pub mod router;
pub mod testbed;
pub mod topology;
