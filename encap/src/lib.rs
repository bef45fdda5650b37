//! Sans-IO IPIP (IPv4-in-IPv4, protocol 4) encapsulation and decapsulation,
//! byte-compatible with the Linux `ipip` driver as Calico runs `tunl0`
//! (no fixed local or remote, `ttl inherit`, `nopmtudisc`).
//!
//! Everything works on caller-owned buffers: no syscalls, no clock reads, no
//! allocation per packet. Every buffer keeps [`HEADROOM`] bytes before the
//! inner packet so [`encapsulate`] writes the outer header in place;
//! [`decapsulate`] only returns the inner packet's range.
//!
//! Everything is at the crate root, except the Internet checksum functions
//! in [`checksum`]:
//! - encap and decap: [`encapsulate`] with [`TunnelSettings`] and an
//!   [`IdentGenerator`], [`decapsulate`] with a [`DecapPolicy`]
//!   ([`decapsulate_with`] when the kernel verified the outer checksum,
//!   [`OuterChecksum`]); a refused packet has a [`DropReason`];
//! - the IPv4 header view [`Ipv4Packet`] (its [`ParseError`], [`Ecn`]);
//! - ICMP errors to send ([`frag_needed`], [`unreachable()`]) and to read
//!   from the underlay ([`parse_underlay_error`]), and a [`TokenBucket`] to
//!   limit them;
//! - the virtio-net header of a TUN GSO write ([`tcp4_gso_header`],
//!   [`gso_segments`], [`gso_packet_bytes`]) and which packets longer
//!   than the MTU are written without it ([`oversize_writes_as_is`]).
//!
//! ```
//! use std::net::Ipv4Addr;
//! use tunl_encap::{DecapPolicy, HEADROOM, IdentGenerator, TunnelSettings, decapsulate, encapsulate};
//!
//! struct AnyNode;
//! impl DecapPolicy for AnyNode {
//!     fn source_allowed(&self, _: Ipv4Addr) -> bool { true }
//!     fn destination_local(&self, _: Ipv4Addr) -> bool { true }
//! }
//!
//! // A 28-byte inner packet (UDP header only), 10.20.105.215 -> 10.20.42.31, TTL 63.
//! let mut inner = [0x45, 0, 0, 28, 0, 1, 0x40, 0, 63, 17, 0, 0, 10, 20, 105, 215, 10, 20, 42, 31,
//!                  0, 53, 0, 53, 0, 8, 0, 0];
//! let sum = tunl_encap::checksum::checksum(&inner[..20]).to_be_bytes();
//! inner[10..12].copy_from_slice(&sum);
//!
//! let mut buf = [0u8; HEADROOM + 28];
//! buf[HEADROOM..].copy_from_slice(&inner);
//! let settings = TunnelSettings::new(Ipv4Addr::new(172, 16, 36, 5));
//! let mut ids = IdentGenerator::new(1);
//! let node = Ipv4Addr::new(172, 16, 35, 4);
//! let outer = encapsulate(&mut buf, HEADROOM, node, settings.mtu, &settings, &mut ids).unwrap();
//! assert_eq!(outer, 0..48);
//!
//! let d = decapsulate(&mut buf[outer], &AnyNode).unwrap();
//! assert_eq!(d.outer_dst, node);
//! assert_eq!(buf[d.inner], inner);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod checksum;
mod decap;
mod drop;
mod encap;
mod gso;
mod icmp;
mod ipv4;
mod ratelimit;

pub use decap::{
    DecapPolicy, Decapsulated, OuterChecksum, decap_ecn, decapsulate, decapsulate_with,
};
pub use drop::DropReason;
pub use encap::{
    DEFAULT_MTU, EncapError, HEADROOM, IdentGenerator, MAX_INNER_LEN, MIN_MTU, Ttl, TunnelSettings,
    encapsulate,
};
pub use gso::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_LEN, gso_packet_bytes, gso_segments, oversize_writes_as_is, tcp4_gso_header,
};
pub use icmp::{
    ICMP_ERROR_MAX_LEN, UnderlayError, UnderlayIcmp, Unreachable, frag_needed,
    parse_underlay_error, unreachable,
};
pub use ipv4::{
    Ecn, IPV4_HEADER_LEN, Ipv4Packet, PROTOCOL_ICMP, PROTOCOL_IPIP, ParseError, inner_destination,
};
pub use ratelimit::TokenBucket;

#[cfg(test)]
mod testutil;

#[cfg(test)]
mod tests;
