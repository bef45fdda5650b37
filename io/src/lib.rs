//! Linux I/O for the tunl dataplane.
//!
//! This is the only crate of tunl that contains `unsafe` code; every `unsafe`
//! block carries a `// SAFETY:` comment (the crate denies
//! `clippy::undocumented_unsafe_blocks`), and what socket2 offers safely is
//! taken from socket2. It wraps:
//!
//! - the TUN device ([`Tun`], [`TunQueue`]), persistent on request, with
//!   `IFF_VNET_HDR` offloads:
//!   TSO super-packets are split into MTU-sized segments on read, and
//!   segments of one flow are coalesced (GRO) on write, both by `tun-rs`;
//! - the raw IPIP sockets ([`IpipReceiver`], [`IpipSender`]) with
//!   `recvmmsg`/`sendmmsg` batching and no allocation per packet or batch;
//! - the raw ICMP socket for underlay errors ([`IcmpReceiver`]);
//! - routes and links over rtnetlink ([`netlink::Netlink`]), a streamed dump
//!   of a routing table ([`netlink::dump_ipv4_routes`]) and a listener
//!   thread that follows route and link changes ([`netlink::RouteListener`]);
//! - changes of links and addresses ([`watch::LinkWatch`]);
//! - an interface's link state and IPv4 address by ioctl ([`link`]);
//! - the AF_XDP underlay: tunl's XDP program, attached with a BPF link of
//!   its own, and AF_XDP sockets with their own UMEM and rings ([`xdp`]);
//! - helpers for tests in private network namespaces ([`ns`]).
//!
//! The bytes of the virtio-net header and the GSO arithmetic are sans-IO and
//! live in `tunl-encap` ([`tunl_encap::tcp4_gso_header`],
//! [`tunl_encap::gso_segments`]); this crate only writes them.
//!
//! Every packet buffer is a [`PacketBuf`]: a fixed-capacity byte buffer with
//! a length, reused without re-zeroing. TUN reads place each packet
//! [`HEADROOM`] bytes into its buffer so the outer IPv4 header can be written
//! in place; raw socket reads place the outer packet at offset 0, so the
//! inner packet starts at [`HEADROOM`] and the bytes before it can hold the
//! virtio-net header a GRO write to TUN needs.

#![cfg(target_os = "linux")]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod buf;
mod error;
pub mod link;
pub mod memory;
pub mod netlink;
pub mod ns;
mod raw;
mod tun;
pub mod watch;
pub mod xdp;

pub use buf::{Buffer, PacketBuf};
pub use error::IoError;
pub use raw::{
    IcmpReceiver, IpipReceiver, IpipSender, MAX_BATCH, PacketSender, RecvReport, SendMsgReport,
};
pub use tun::{SendReport, Tun, TunConfig, TunQueue};
pub use tun_rs::VIRTIO_NET_HDR_LEN;

/// Bytes reserved before the inner packet in every buffer: room for the
/// 20-byte outer IPv4 header written in place by encap (the value of
/// [`tunl_encap::HEADROOM`], checked at compile time).
pub const HEADROOM: usize = 20;

/// The largest IPv4 packet (the total-length field is 16 bits).
pub const MAX_IP_PACKET: usize = 65535;

/// A buffer capacity that fits every use: any IPv4 packet at offset 0
/// (including IPIP GRO super-packets from the underlay, up to 64 KiB), any
/// packet at [`HEADROOM`], and a full 64 KiB GRO coalesce at offset
/// [`HEADROOM`] (tun-rs requires `2 * offset + len` of capacity).
pub const RX_BUF_CAPACITY: usize = MAX_IP_PACKET + 2 * HEADROOM;

const _: () = assert!(HEADROOM >= VIRTIO_NET_HDR_LEN);
const _: () = assert!(HEADROOM == tunl_encap::HEADROOM);
// The header tunl-encap writes is the one tun-rs reads and writes.
const _: () = assert!(VIRTIO_NET_HDR_LEN == tunl_encap::VIRTIO_NET_HDR_LEN);

/// Everything a worker thread owns must move to it.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<TunQueue>();
    assert_send::<IpipReceiver>();
    assert_send::<IpipSender>();
    assert_send::<IcmpReceiver>();
    assert_send::<PacketBuf>();
    assert_send::<netlink::Netlink>();
    assert_send::<xdp::Xsk>();
    assert_send::<xdp::UmemFrame>();
    assert_send::<xdp::XdpProgram>();
    assert_send::<xdp::XdpLink>();
};
