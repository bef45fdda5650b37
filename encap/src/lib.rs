//! Sans-IO IPIP (IPv4-in-IPv4, protocol 4) encapsulation and decapsulation,
//! byte-compatible with the Linux `ipip` driver as Calico runs `tunl0`
//! (no fixed local or remote, `ttl inherit`, `nopmtudisc`).
//!
//! Everything works on caller-owned buffers: no syscalls, no clock reads, no
//! allocation per packet. Every buffer keeps [`HEADROOM`] bytes before the
//! inner packet so [`encapsulate`] writes the outer header in place;
//! [`decapsulate`] only returns the inner packet's range.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checksum;
mod decap;
mod drop;
mod encap;
pub mod icmp;
pub mod ipv4;
pub mod ratelimit;

pub use decap::{DecapPolicy, Decapsulated, decap_ecn, decapsulate};
pub use drop::DropReason;
pub use encap::{
    DEFAULT_MTU, EncapError, HEADROOM, IdentGenerator, MAX_INNER_LEN, Ttl, TunnelSettings,
    encapsulate,
};
pub use icmp::{
    ICMP_ERROR_MAX_LEN, UnderlayError, UnderlayIcmp, Unreachable, frag_needed,
    parse_underlay_error, unreachable,
};
pub use ipv4::{Ecn, Ipv4Packet, inner_destination};
pub use ratelimit::TokenBucket;

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests;
