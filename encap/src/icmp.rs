//! ICMP errors: the ones the tunnel sends to pods (fragmentation needed,
//! unreachable) and the ones the underlay sends about our outer packets.

use std::net::Ipv4Addr;

use crate::checksum;
use crate::ipv4::{self, IPV4_HEADER_LEN, Ipv4Packet, PROTOCOL_ICMP, PROTOCOL_IPIP};

/// Length of an ICMP error header (type, code, checksum, four more bytes).
const ICMP_HEADER_LEN: usize = 8;

/// Bytes of the offending packet's payload quoted after its header (RFC 792).
const QUOTE_PAYLOAD_LEN: usize = 8;

/// The longest error [`frag_needed`] and [`unreachable()`] write (20 + 8 +
/// 60 + 8): an `out` of this size always suffices.
pub const ICMP_ERROR_MAX_LEN: usize = IPV4_HEADER_LEN + ICMP_HEADER_LEN + 60 + QUOTE_PAYLOAD_LEN;

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
    let total = IPV4_HEADER_LEN + icmp_len;
    let out = out.get_mut(..total)?;
    let (ip, icmp) = out.split_at_mut_checked(IPV4_HEADER_LEN)?;
    let ip: &mut [u8; IPV4_HEADER_LEN] = ip.try_into().ok()?;
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
    /// The quoted outer source: the underlay address our packet left from
    /// (compare it with the local address to ignore errors about others' packets).
    pub outer_src: Ipv4Addr,
    /// The quoted outer destination: the node our packet was going to.
    pub node: Ipv4Addr,
    /// Who sent the ICMP error (its own IP source: a router, or the node).
    pub reporter: Ipv4Addr,
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
        outer_src: quoted.src(),
        node: quoted.dst(),
        reporter: ip.src(),
        inner_src,
        inner_dst,
    })
}

#[cfg(test)]
mod tests {
    use etherparse::{
        Icmpv4Header, Icmpv4Slice, Icmpv4Type, Ipv4Slice, icmpv4::DestUnreachableHeader,
    };

    use super::*;
    use crate::testutil::{Inner, NODE_A, NODE_B, POD_A, checksum_ok, outer, refill_checksum};

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

    /// Parses an error we built; checks both checksums and the IP fields.
    fn parse(out: &[u8], len: usize, to: Ipv4Addr) -> (Icmpv4Type, Vec<u8>) {
        let ip = Ipv4Slice::from_slice(&out[..len]).expect("IPv4");
        let h = ip.header();
        assert!(checksum_ok(&out[..len]));
        assert_eq!(usize::from(h.total_len()), len);
        assert_eq!(h.ttl(), 64);
        assert_eq!(h.protocol(), etherparse::IpNumber::ICMP);
        assert_eq!(h.source_addr(), GATEWAY);
        assert_eq!(h.destination_addr(), to);
        let icmp = Icmpv4Slice::from_slice(ip.payload().payload).expect("ICMP");
        let recomputed = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
        assert_eq!(icmp.checksum(), recomputed.checksum, "ICMP checksum");
        (icmp.icmp_type(), icmp.payload().to_vec())
    }

    #[test]
    fn frag_needed_quotes_header_and_8_bytes() {
        let inner = Inner {
            len: 1481,
            ..Inner::default()
        }
        .bytes();
        let mut out = [0u8; ICMP_ERROR_MAX_LEN];
        let len = frag_needed(&inner, 1480, GATEWAY, &mut out).expect("built");
        assert_eq!(len, 20 + 8 + 20 + 8);
        let (kind, quote) = parse(&out, len, POD_A);
        assert_eq!(
            kind,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1480
            })
        );
        assert_eq!(quote, inner[..28]);
    }

    #[test]
    fn unreachable_codes() {
        let inner = Inner::default().bytes();
        for (kind, want) in [
            (Unreachable::Net, DestUnreachableHeader::Network),
            (Unreachable::Host, DestUnreachableHeader::Host),
        ] {
            let mut out = [0u8; ICMP_ERROR_MAX_LEN];
            let len = unreachable(&inner, kind, GATEWAY, &mut out).expect("built");
            let (got, quote) = parse(&out, len, POD_A);
            assert_eq!(got, Icmpv4Type::DestinationUnreachable(want));
            assert_eq!(quote, inner[..28]);
        }
    }

    #[test]
    fn quote_with_options_and_short_payload() {
        // IHL 15 (60-byte header) and a 3-byte payload.
        let mut inner = Inner {
            len: 63,
            ..Inner::default()
        }
        .bytes();
        inner[0] = 0x4f;
        for b in &mut inner[20..60] {
            *b = 1; // NOP options
        }
        refill_checksum(&mut inner, 0);
        let mut out = [0u8; ICMP_ERROR_MAX_LEN];
        let len = frag_needed(&inner, 1400, GATEWAY, &mut out).expect("built");
        let (_, quote) = parse(&out, len, POD_A);
        assert_eq!(quote, inner);
        // The longest possible quote fits ICMP_ERROR_MAX_LEN exactly.
        let mut long = Inner {
            len: 200,
            ..Inner::default()
        }
        .bytes();
        long[0] = 0x4f;
        let len = frag_needed(&long, 1400, GATEWAY, &mut out).expect("built");
        assert_eq!(len, ICMP_ERROR_MAX_LEN);
        assert_eq!(frag_needed(&long, 1400, GATEWAY, &mut out[..95]), None);
    }

    #[test]
    fn refuses() {
        let mut out = [0u8; ICMP_ERROR_MAX_LEN];
        let good = Inner::default().bytes();
        assert!(frag_needed(&good, 1480, GATEWAY, &mut out).is_some());
        assert_eq!(
            frag_needed(&good[..19], 1480, GATEWAY, &mut out),
            None,
            "short"
        );
        assert_eq!(
            frag_needed(&good, 1480, GATEWAY, &mut out[..55]),
            None,
            "small out"
        );
        for src in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 5),
        ] {
            let inner = Inner {
                src,
                ..Inner::default()
            }
            .bytes();
            assert_eq!(frag_needed(&inner, 1480, GATEWAY, &mut out), None, "{src}");
        }
        // Never an error about an ICMP error, about an ICMP packet we cannot
        // classify, or about a non-first fragment.
        let mut icmp_error = good.clone();
        icmp_error[20] = 3;
        assert_eq!(
            unreachable(&icmp_error, Unreachable::Host, GATEWAY, &mut out),
            None
        );
        icmp_error[20] = 11;
        assert_eq!(
            unreachable(&icmp_error, Unreachable::Host, GATEWAY, &mut out),
            None
        );
        let bare = Inner {
            len: 20,
            ..Inner::default()
        }
        .bytes();
        assert_eq!(
            unreachable(&bare, Unreachable::Host, GATEWAY, &mut out),
            None
        );
        let mut later_fragment = good.clone();
        later_fragment[7] = 1;
        assert_eq!(
            unreachable(&later_fragment, Unreachable::Host, GATEWAY, &mut out),
            None
        );
        // An echo request (type 8) or a UDP packet is answered.
        let udp = Inner {
            protocol: 17,
            len: 20,
            ..Inner::default()
        }
        .bytes();
        assert!(unreachable(&udp, Unreachable::Host, GATEWAY, &mut out).is_some());
    }

    /// An ICMP error from `from` quoting `quoted`, built with etherparse.
    fn underlay(kind: Icmpv4Type, quoted: &[u8], from: Ipv4Addr) -> Vec<u8> {
        let icmp = Icmpv4Header::with_checksum(kind, quoted);
        let mut payload = icmp.to_bytes().to_vec();
        payload.extend_from_slice(quoted);
        let mut h = etherparse::Ipv4Header::new(
            payload.len() as u16,
            64,
            etherparse::IpNumber::ICMP,
            from.octets(),
            NODE_A.octets(),
        )
        .expect("fits");
        h.header_checksum = h.calc_header_checksum();
        let mut v = h.to_bytes().to_vec();
        v.extend(payload);
        v
    }

    fn frag_needed_type(mtu: u16) -> Icmpv4Type {
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: mtu,
        })
    }

    #[test]
    fn underlay_frag_needed() {
        let router = Ipv4Addr::new(172, 16, 0, 1);
        let ours = outer(&Inner::default().bytes(), 0, NODE_A, NODE_B);
        for quote_len in [48, 40, 36, 28] {
            let icmp = underlay(frag_needed_type(1400), &ours[..quote_len], router);
            let e = parse_underlay_error(&icmp).expect("parsed");
            assert_eq!(e.error, UnderlayError::FragNeeded { mtu: 1400 });
            assert_eq!(e.outer_src, NODE_A);
            assert_eq!(e.node, NODE_B);
            assert_eq!(e.reporter, router);
            assert_eq!(e.inner_src, (quote_len >= 36).then_some(POD_A));
            assert_eq!(
                e.inner_dst,
                (quote_len >= 40).then_some(crate::testutil::POD_B)
            );
        }
    }

    #[test]
    fn underlay_kinds() {
        let router = Ipv4Addr::new(172, 16, 0, 1);
        let ours = outer(&Inner::default().bytes(), 0, NODE_A, NODE_B);
        let quote = &ours[..48];
        let host = underlay(
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
            quote,
            router,
        );
        assert_eq!(
            parse_underlay_error(&host).map(|e| e.error),
            Some(UnderlayError::Unreachable { code: 1 })
        );
        let mut redirect = host.clone();
        redirect[20] = 5;
        redirect[21] = 1;
        refill_icmp(&mut redirect);
        assert_eq!(
            parse_underlay_error(&redirect).map(|e| e.error),
            Some(UnderlayError::Redirect)
        );
        let mut exceeded = host.clone();
        exceeded[20] = 11;
        exceeded[21] = 0;
        refill_icmp(&mut exceeded);
        assert_eq!(
            parse_underlay_error(&exceeded).map(|e| e.error),
            Some(UnderlayError::Other { kind: 11, code: 0 })
        );
        let mut echo = host.clone();
        echo[20] = 8;
        echo[21] = 0;
        refill_icmp(&mut echo);
        assert_eq!(parse_underlay_error(&echo), None, "not an error");
    }

    fn refill_icmp(p: &mut [u8]) {
        p[22] = 0;
        p[23] = 0;
        let sum = checksum::checksum(&p[20..]).to_be_bytes();
        p[22..24].copy_from_slice(&sum);
    }

    #[test]
    fn underlay_rejects() {
        let router = Ipv4Addr::new(172, 16, 0, 1);
        let ours = outer(&Inner::default().bytes(), 0, NODE_A, NODE_B);
        let good = underlay(frag_needed_type(1400), &ours[..48], router);
        assert!(parse_underlay_error(&good).is_some());
        // Quoting a non-IPIP packet (our packet, protocol changed to UDP).
        let mut udp = ours.clone();
        udp[9] = 17;
        assert_eq!(
            parse_underlay_error(&underlay(frag_needed_type(1400), &udp[..48], router)),
            None
        );
        // Bad ICMP checksum, bad IP checksum, truncated, not ICMP.
        let mut bad = good.clone();
        bad[30] ^= 1;
        assert_eq!(parse_underlay_error(&bad), None);
        let mut bad = good.clone();
        bad[8] ^= 1;
        assert_eq!(parse_underlay_error(&bad), None);
        assert_eq!(parse_underlay_error(&good[..good.len() - 1]), None);
        let mut bad = good.clone();
        bad[9] = 17;
        refill_checksum(&mut bad, 0);
        assert_eq!(parse_underlay_error(&bad), None);
        // Quote too short for an IPv4 header.
        let short = underlay(frag_needed_type(1400), &ours[..19], router);
        assert_eq!(parse_underlay_error(&short), None);
        assert_eq!(parse_underlay_error(&[]), None);
    }

    #[test]
    fn roundtrip_our_own_errors_are_not_underlay_errors() {
        // Our frag-needed about a pod packet quotes protocol 1, not 4.
        let inner = Inner::default().bytes();
        let mut out = [0u8; ICMP_ERROR_MAX_LEN];
        let len = frag_needed(&inner, 1480, GATEWAY, &mut out).expect("built");
        assert_eq!(parse_underlay_error(&out[..len]), None);
        // About an IPIP packet it is one, and all fields come back.
        let ipip = outer(&inner, 0, NODE_A, NODE_B);
        let mut with_src = ipip.clone();
        with_src[12..16].copy_from_slice(&POD_A.octets());
        refill_checksum(&mut with_src, 0);
        let len = frag_needed(&with_src, 1300, GATEWAY, &mut out).expect("built");
        let e = parse_underlay_error(&out[..len]).expect("parsed");
        assert_eq!(e.error, UnderlayError::FragNeeded { mtu: 1300 });
        assert_eq!(e.reporter, GATEWAY);
        assert_eq!(e.outer_src, POD_A);
        assert_eq!(e.node, NODE_B);
        // Only 8 bytes after the outer header are quoted: no inner addresses.
        assert_eq!((e.inner_src, e.inner_dst), (None, None));
    }
}
