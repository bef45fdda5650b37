//! Test helpers: packets built with etherparse, independently of this crate.

use std::cell::Cell;
use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header};

use crate::DecapPolicy;

pub(crate) const POD_A: Ipv4Addr = Ipv4Addr::new(10, 20, 105, 215);
pub(crate) const POD_B: Ipv4Addr = Ipv4Addr::new(10, 20, 42, 31);
pub(crate) const NODE_A: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 5);
pub(crate) const NODE_B: Ipv4Addr = Ipv4Addr::new(172, 16, 35, 4);

/// What an inner packet looks like.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Inner {
    pub len: usize,
    pub tos: u8,
    pub ttl: u8,
    pub df: bool,
    pub protocol: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            len: 84,
            tos: 0,
            ttl: 63,
            df: true,
            protocol: 1,
            src: POD_A,
            dst: POD_B,
        }
    }
}

impl Inner {
    /// The packet's bytes: an etherparse header and a counting payload.
    pub fn bytes(&self) -> Vec<u8> {
        let mut h = Ipv4Header::new(
            (self.len - 20) as u16,
            self.ttl,
            IpNumber(self.protocol),
            self.src.octets(),
            self.dst.octets(),
        )
        .expect("payload fits");
        h.identification = 0xb5c3;
        h.dont_fragment = self.df;
        h.dscp = etherparse::IpDscp::try_new(self.tos >> 2).expect("dscp");
        h.ecn = etherparse::IpEcn::try_new(self.tos & 3).expect("ecn");
        h.header_checksum = h.calc_header_checksum();
        let mut v = h.to_bytes().to_vec();
        v.extend((0..self.len - 20).map(|i| i as u8));
        v
    }

    /// The packet placed after `HEADROOM` spare bytes.
    pub fn with_headroom(&self) -> Vec<u8> {
        let mut v = vec![0xee; crate::HEADROOM];
        v.extend(self.bytes());
        v
    }
}

/// An outer IPIP packet around `inner`, built with etherparse.
pub(crate) fn outer(inner: &[u8], tos: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut h = Ipv4Header::new(
        inner.len() as u16,
        64,
        IpNumber::IPV4,
        src.octets(),
        dst.octets(),
    )
    .expect("fits");
    h.dscp = etherparse::IpDscp::try_new(tos >> 2).expect("dscp");
    h.ecn = etherparse::IpEcn::try_new(tos & 3).expect("ecn");
    h.identification = 7;
    h.header_checksum = h.calc_header_checksum();
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(inner);
    v
}

/// Recomputes the IPv4 header checksum at `at` (header of `ihl_bytes`), naively.
pub(crate) fn refill_checksum(buf: &mut [u8], at: usize) {
    let ihl = usize::from(buf[at] & 0x0f) * 4;
    buf[at + 10] = 0;
    buf[at + 11] = 0;
    let mut acc: u32 = 0;
    for i in (0..ihl).step_by(2) {
        acc += u32::from(u16::from_be_bytes([buf[at + i], buf[at + i + 1]]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    let sum = !(acc as u16);
    buf[at + 10..at + 12].copy_from_slice(&sum.to_be_bytes());
}

/// True when the IPv4 header at the start of `h` checksums (via etherparse).
pub(crate) fn checksum_ok(h: &[u8]) -> bool {
    let s = etherparse::Ipv4HeaderSlice::from_slice(h).expect("parses");
    s.header_checksum() == s.to_header().calc_header_checksum()
}

/// A policy with a list of nodes and an optional local prefix (a /16 by its
/// first two octets); records what it was asked.
#[derive(Default)]
pub(crate) struct Policy {
    pub nodes: Vec<Ipv4Addr>,
    pub local: Option<[u8; 2]>,
    pub nested: bool,
    pub asked_source: Cell<bool>,
}

impl Policy {
    pub fn cluster() -> Self {
        Self {
            nodes: vec![NODE_A, NODE_B],
            local: Some([10, 20]),
            ..Self::default()
        }
    }
}

impl DecapPolicy for Policy {
    fn source_allowed(&self, outer_src: Ipv4Addr) -> bool {
        self.asked_source.set(true);
        self.nodes.contains(&outer_src)
    }

    fn destination_local(&self, inner_dst: Ipv4Addr) -> bool {
        self.local.is_none_or(|p| inner_dst.octets()[..2] == p[..])
    }

    fn allow_nested(&self) -> bool {
        self.nested
    }
}
