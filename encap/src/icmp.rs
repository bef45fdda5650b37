//! ICMP errors: the ones the tunnel sends to pods (fragmentation needed,
//! unreachable) and the ones the underlay sends about our outer packets.

use std::net::Ipv4Addr;

use crate::checksum;
use crate::ipv4::{self, HEADER_LEN, Ipv4Packet, PROTOCOL_ICMP, PROTOCOL_IPIP};

/// Length of an ICMP error header (type, code, checksum, four more bytes).
const ICMP_HEADER_LEN: usize = 8;

/// Bytes of the offending packet's payload quoted after its header (RFC 792).
const QUOTE_PAYLOAD_LEN: usize = 8;

/// The longest error [`frag_needed`] and [`unreachable`] write (20 + 8 +
/// 60 + 8): an `out` of this size always suffices.
pub const ICMP_ERROR_MAX_LEN: usize = HEADER_LEN + ICMP_HEADER_LEN + 60 + QUOTE_PAYLOAD_LEN;

/// The TTL of the errors we send.
const ICMP_TTL: u8 = 64;

/// TOS of ICMP errors, as the kernel sends them (`IPTOS_PREC_INTERNETCONTROL`).
const ICMP_TOS: u8 = 0xc0;

const TYPE_DEST_UNREACHABLE: u8 = 3;
const TYPE_SOURCE_QUENCH: u8 = 4;
const TYPE_REDIRECT: u8 = 5;
const TYPE_TIME_EXCEEDED: u8 = 11;
const TYPE_PARAMETER_PROBLEM: u8 = 12;
const CODE_FRAG_NEEDED: u8 = 4;

/// Which destination unreachable to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unreachable {
    /// Network unreachable (code 0).
    Net,
    /// Host unreachable (code 1).
    Host,
}

/// Writes an ICMP fragmentation needed (type 3, code 4) about `inner` with
/// next-hop MTU `next_hop_mtu`, from `from` to the inner source, into `out`.
///
/// Returns the packet's length, or None when `inner` does not start with a
/// valid IPv4 header, `out` is too small, `inner` is an ICMP error or a
/// non-first fragment, or its source is 0.0.0.0, multicast or broadcast.
pub fn frag_needed(
    inner: &[u8],
    next_hop_mtu: u16,
    from: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    let mtu = next_hop_mtu.to_be_bytes();
    build_error(
        inner,
        TYPE_DEST_UNREACHABLE,
        CODE_FRAG_NEEDED,
        [0, 0, mtu[0], mtu[1]],
        from,
        out,
    )
}

/// Writes an ICMP destination unreachable (type 3, code 0 or 1) about
/// `inner`, from `from` to the inner source, into `out`. Returns the length;
/// None on the same conditions as [`frag_needed`].
pub fn unreachable(
    inner: &[u8],
    kind: Unreachable,
    from: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    let code = match kind {
        Unreachable::Net => 0,
        Unreachable::Host => 1,
    };
    build_error(inner, TYPE_DEST_UNREACHABLE, code, [0; 4], from, out)
}

fn is_error_type(kind: u8) -> bool {
    matches!(
        kind,
        TYPE_DEST_UNREACHABLE
            | TYPE_SOURCE_QUENCH
            | TYPE_REDIRECT
            | TYPE_TIME_EXCEEDED
            | TYPE_PARAMETER_PROBLEM
    )
}

fn build_error(
    inner: &[u8],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    from: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    let packet = Ipv4Packet::new_checked(inner).ok()?;
    let to = packet.src();
    if to.is_unspecified() || to.is_multicast() || to.is_broadcast() {
        return None;
    }
    // RFC 1122 §3.2.2: no error about a non-first fragment or an ICMP error.
    if packet.frag_offset() != 0 {
        return None;
    }
    if packet.protocol() == PROTOCOL_ICMP {
        // Unknown type (payload missing): treat as an error, stay silent.
        let kind = packet.payload().first()?;
        if is_error_type(*kind) {
            return None;
        }
    }
    let quote_len = inner.len().min(packet.header_len() + QUOTE_PAYLOAD_LEN);
    let quote = inner.get(..quote_len)?;
    let icmp_len = ICMP_HEADER_LEN + quote_len;
    let total = HEADER_LEN + icmp_len;
    let out = out.get_mut(..total)?;
    let (ip, icmp) = out.split_at_mut_checked(HEADER_LEN)?;
    let ip: &mut [u8; HEADER_LEN] = ip.try_into().ok()?;
    // total <= ICMP_ERROR_MAX_LEN, far below u16::MAX.
    ipv4::write_header(
        ip,
        ICMP_TOS,
        total as u16,
        0,
        true,
        ICMP_TTL,
        PROTOCOL_ICMP,
        from,
        to,
    );
    let (head, body) = icmp.split_at_mut_checked(ICMP_HEADER_LEN)?;
    head.copy_from_slice(&[kind, code, 0, 0, rest[0], rest[1], rest[2], rest[3]]);
    body.copy_from_slice(quote);
    let sum = checksum::checksum(icmp).to_be_bytes();
    icmp.get_mut(2..4)?.copy_from_slice(&sum);
    Some(total)
}

/// An ICMP error from the underlay about one of our outer packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnderlayError {
    /// Fragmentation needed (type 3, code 4) with the next-hop MTU (0 when
    /// the router predates RFC 1191 and did not say).
    FragNeeded {
        /// The next-hop MTU the router reported.
        mtu: u16,
    },
    /// Destination unreachable (type 3) other than fragmentation needed.
    Unreachable {
        /// The ICMP code (0 net, 1 host, 2 protocol, 3 port, ...).
        code: u8,
    },
    /// A redirect (type 5); never relayed.
    Redirect,
    /// Another ICMP error (source quench, time exceeded, parameter problem).
    Other {
        /// The ICMP type.
        kind: u8,
        /// The ICMP code.
        code: u8,
    },
}

/// An ICMP error from the underlay about one of our IPIP packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnderlayIcmp {
    /// What went wrong.
    pub error: UnderlayError,
    /// Who sent the ICMP error (the ICMP packet's own source: a router or the node).
    pub outer_src: Ipv4Addr,
    /// The quoted outer destination: the node our packet was going to.
    pub node: Ipv4Addr,
    /// The quoted outer source: our own underlay address.
    pub local: Ipv4Addr,
    /// The quoted inner source, when the quote reaches it.
    pub inner_src: Option<Ipv4Addr>,
    /// The quoted inner destination, when the quote reaches it.
    pub inner_dst: Option<Ipv4Addr>,
}

/// Parses an ICMP error read from a raw ICMP socket (`packet` starts at the
/// IP header). Some only for a valid ICMP error (checksums verified) that
/// quotes an IPIP (protocol 4) packet.
pub fn parse_underlay_error(packet: &[u8]) -> Option<UnderlayIcmp> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.protocol() != PROTOCOL_ICMP || ip.is_fragment() || !ip.verify_checksum() {
        return None;
    }
    let total = usize::from(ip.total_len());
    if total < ip.header_len() || total > packet.len() {
        return None;
    }
    let icmp = packet.get(ip.header_len()..total)?;
    if icmp.len() < ICMP_HEADER_LEN || !checksum::verify(icmp) {
        return None;
    }
    let (kind, code) = (icmp[0], icmp[1]);
    let error = match (kind, code) {
        (TYPE_DEST_UNREACHABLE, CODE_FRAG_NEEDED) => UnderlayError::FragNeeded {
            mtu: u16::from_be_bytes([icmp[6], icmp[7]]),
        },
        (TYPE_DEST_UNREACHABLE, code) => UnderlayError::Unreachable { code },
        (TYPE_REDIRECT, _) => UnderlayError::Redirect,
        (kind, code) if is_error_type(kind) => UnderlayError::Other { kind, code },
        _ => return None,
    };
    let quoted = Ipv4Packet::new_checked(icmp.get(ICMP_HEADER_LEN..)?).ok()?;
    if quoted.protocol() != PROTOCOL_IPIP {
        return None;
    }
    let inner = quoted.payload();
    let (inner_src, inner_dst) = match inner {
        [
            ver_ihl,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            s0,
            s1,
            s2,
            s3,
            d0,
            d1,
            d2,
            d3,
            ..,
        ] if ver_ihl >> 4 == 4 => (
            Some(Ipv4Addr::new(*s0, *s1, *s2, *s3)),
            Some(Ipv4Addr::new(*d0, *d1, *d2, *d3)),
        ),
        [ver_ihl, _, _, _, _, _, _, _, _, _, _, _, s0, s1, s2, s3, ..] if ver_ihl >> 4 == 4 => {
            (Some(Ipv4Addr::new(*s0, *s1, *s2, *s3)), None)
        }
        _ => (None, None),
    };
    Some(UnderlayIcmp {
        error,
        outer_src: ip.src(),
        node: quoted.dst(),
        local: quoted.src(),
        inner_src,
        inner_dst,
    })
}
