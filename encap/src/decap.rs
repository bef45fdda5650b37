//! Decapsulation: an outer IPIP packet in, the range of the inner packet out.

use std::net::Ipv4Addr;
use std::ops::Range;

use crate::checksum;
use crate::drop::DropReason;
use crate::ipv4::{Ecn, Ipv4Packet, PROTOCOL_IPIP};

/// What decap asks of its caller (the daemon implements it over its route
/// snapshot and config).
pub trait DecapPolicy {
    /// True when `outer_src` is a known node allowed to send IPIP to us.
    fn source_allowed(&self, outer_src: Ipv4Addr) -> bool;
    /// True when the inner destination is in a local block, or when no local
    /// blocks are configured.
    fn destination_local(&self, inner_dst: Ipv4Addr) -> bool;
    /// True to deliver inner packets that are themselves IPIP.
    fn allow_nested(&self) -> bool {
        false
    }
}

/// Whether decap checks the outer header's checksum: the caller says who
/// has already done it, so every receive path has to choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OuterChecksum {
    /// Verify it: nothing has (AF_XDP frames, fuzzing, tests).
    Verify,
    /// The kernel's IP layer verified it before delivering the packet (a
    /// raw socket). Skip it: on local delivery the kernel then fills in
    /// record-route and timestamp options without refreshing the checksum,
    /// so checking again would refuse packets the kernel accepted.
    VerifiedByKernel,
}

/// A decapsulated packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decapsulated {
    /// The inner packet's range in the buffer given to [`decapsulate`].
    pub inner: Range<usize>,
    /// The outer source: the sending node.
    pub outer_src: Ipv4Addr,
    /// The outer destination: this node.
    pub outer_dst: Ipv4Addr,
}

/// The total length a GRO super-packet longer than 65535 bytes carries.
const GRO_TOTAL_LEN: u16 = 0;

/// True when a header's total length describes `available` bytes exactly,
/// or is 0 on a super-packet longer than any total length can say.
#[inline]
fn whole(total_len: u16, available: usize) -> bool {
    usize::from(total_len) == available || (total_len == GRO_TOTAL_LEN && available > 65_535)
}

/// The ECN of the inner packet after decapsulation (RFC 6040 §4.2, Linux
/// `INET_ECN_decapsulate`), or None when the packet must be dropped.
#[inline]
pub fn decap_ecn(outer: Ecn, inner: Ecn) -> Option<Ecn> {
    match (inner, outer) {
        (Ecn::NotEct, Ecn::Ce) => None,
        (Ecn::NotEct, _) => Some(Ecn::NotEct),
        (_, Ecn::Ce) => Some(Ecn::Ce),
        (Ecn::Ect0, Ecn::Ect1) => Some(Ecn::Ect1),
        (inner, _) => Some(inner),
    }
}

/// Decapsulates one outer packet, verifying the outer header checksum
/// ([`decapsulate_with`] and [`OuterChecksum::Verify`]).
///
/// # Errors
/// As [`decapsulate_with`].
#[inline]
pub fn decapsulate(buf: &mut [u8], policy: &impl DecapPolicy) -> Result<Decapsulated, DropReason> {
    decapsulate_with(buf, policy, OuterChecksum::Verify)
}

/// Decapsulates one outer packet; `outer` says whether its header checksum
/// still needs checking.
///
/// `buf` is the whole outer packet as a raw socket delivers it, outer header
/// included. May modify the inner header in place (ECN, with the checksum
/// fixed incrementally). Returns the inner packet's range in `buf`; bytes
/// after the inner packet's total length are trimmed like the kernel's
/// `ip_rcv` does.
///
/// # Errors
/// The reason to drop the packet, checked in this order:
/// - [`DropReason::MalformedOuter`]: the outer header is not version 4 with
///   IHL ≥ 5 within `buf`, a valid header checksum (unless
///   [`OuterChecksum::VerifiedByKernel`]), a total length equal to
///   `buf.len()` (or 0 on a GRO super-packet longer than 65535 bytes),
///   protocol 4 and no fragmentation;
/// - [`DropReason::UnknownSource`]: the policy does not allow the outer
///   source;
/// - [`DropReason::MalformedInner`]: the inner header is not version 4 with
///   IHL ≥ 5 within the payload and a valid checksum, or its total length is
///   not between the header length and the bytes that follow (0 is allowed
///   on a super-packet);
/// - [`DropReason::EcnDrop`]: inner Not-ECT under an outer CE (RFC 6040);
/// - [`DropReason::TtlExpired`]: the inner TTL is 0;
/// - [`DropReason::NestedIpip`]: the inner protocol is 4 and the policy does
///   not allow nesting;
/// - [`DropReason::NotLocal`]: the policy does not take the inner
///   destination.
#[inline]
pub fn decapsulate_with(
    buf: &mut [u8],
    policy: &impl DecapPolicy,
    outer: OuterChecksum,
) -> Result<Decapsulated, DropReason> {
    // The fixed outer header, read once as an array.
    let buf_len = buf.len();
    let oh = buf.first_chunk::<20>().ok_or(DropReason::MalformedOuter)?;
    let start = usize::from(oh[0] & 0x0f) * 4;
    if oh[0] >> 4 != 4
        || start < 20
        || start > buf_len
        || (outer == OuterChecksum::Verify && !checksum::verify_header(&buf[..start]))
        || !whole(u16::from_be_bytes([oh[2], oh[3]]), buf_len)
        || oh[9] != PROTOCOL_IPIP
        || u16::from_be_bytes([oh[6], oh[7]]) & 0x3fff != 0
    {
        return Err(DropReason::MalformedOuter);
    }
    let outer_src = Ipv4Addr::new(oh[12], oh[13], oh[14], oh[15]);
    let outer_dst = Ipv4Addr::new(oh[16], oh[17], oh[18], oh[19]);
    let outer_ecn = Ecn::from_tos(oh[1]);
    if !policy.source_allowed(outer_src) {
        return Err(DropReason::UnknownSource);
    }

    let rest = buf.get_mut(start..).ok_or(DropReason::MalformedOuter)?;
    let mut inner = Ipv4Packet::new_checked(rest).map_err(|_| DropReason::MalformedInner)?;
    if !inner.verify_checksum() {
        return Err(DropReason::MalformedInner);
    }
    let available = inner.as_bytes().len();
    let total = inner.total_len();
    let len = if total == GRO_TOTAL_LEN && available > 65_535 {
        available
    } else if usize::from(total) >= inner.header_len() && usize::from(total) <= available {
        usize::from(total)
    } else {
        return Err(DropReason::MalformedInner);
    };

    let inner_ecn = inner.ecn();
    let ecn = decap_ecn(outer_ecn, inner_ecn).ok_or(DropReason::EcnDrop)?;
    if ecn != inner_ecn {
        inner.set_ecn_update_checksum(ecn);
    }
    if inner.ttl() == 0 {
        return Err(DropReason::TtlExpired);
    }
    if inner.protocol() == PROTOCOL_IPIP && !policy.allow_nested() {
        return Err(DropReason::NestedIpip);
    }
    if !policy.destination_local(inner.dst()) {
        return Err(DropReason::NotLocal);
    }
    Ok(Decapsulated {
        inner: start..start + len,
        outer_src,
        outer_dst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Inner, NODE_A, NODE_B, Policy, checksum_ok, outer, refill_checksum};

    fn packet(inner: &Inner, outer_tos: u8) -> Vec<u8> {
        outer(&inner.bytes(), outer_tos, NODE_A, NODE_B)
    }

    #[test]
    fn seed_article_flow() {
        let inner = Inner::default();
        let mut buf = packet(&inner, 0);
        let d = decapsulate(&mut buf, &Policy::cluster()).expect("decapsulates");
        assert_eq!(d.inner, 20..104);
        assert_eq!(d.outer_src, NODE_A);
        assert_eq!(d.outer_dst, NODE_B);
        assert_eq!(buf[d.inner], inner.bytes()[..]);
    }

    #[test]
    fn ecn_decapsulation_table() {
        const NOT: u8 = 0b00;
        const E1: u8 = 0b01;
        const E0: u8 = 0b10;
        const CE: u8 = 0b11;
        const DROP: u8 = 0xff;
        // RFC 6040 §4.2, rows inner, columns outer Not-ECT, ECT(0), ECT(1), CE.
        let table = [
            (NOT, [NOT, NOT, NOT, DROP]),
            (E0, [E0, E0, E1, CE]),
            (E1, [E1, E1, E1, CE]),
            (CE, [CE, CE, CE, CE]),
        ];
        for (inner_ecn, row) in table {
            for (outer_ecn, want) in [NOT, E0, E1, CE].into_iter().zip(row) {
                let inner = Inner {
                    tos: 0x28 | inner_ecn,
                    ..Inner::default()
                };
                let mut buf = packet(&inner, 0xb8 | outer_ecn);
                let r = decapsulate(&mut buf, &Policy::cluster());
                let cell = format!("inner {inner_ecn:02b} outer {outer_ecn:02b}");
                if want == DROP {
                    assert_eq!(r, Err(DropReason::EcnDrop), "{cell}");
                    continue;
                }
                let d = r.expect(&cell);
                let got = &buf[d.inner];
                assert_eq!(got[1], 0x28 | want, "{cell}");
                assert!(checksum_ok(got), "{cell}: inner checksum");
                // Nothing else in the inner packet changed.
                let mut expected = inner.bytes();
                expected[1] = got[1];
                refill_checksum(&mut expected, 0);
                assert_eq!(got, &expected[..], "{cell}");
            }
        }
    }

    #[test]
    fn unknown_source() {
        let mut buf = outer(&Inner::default().bytes(), 0, [192, 0, 2, 1].into(), NODE_B);
        assert_eq!(
            decapsulate(&mut buf, &Policy::cluster()),
            Err(DropReason::UnknownSource)
        );
    }

    fn corrupt_outer(
        f: impl FnOnce(&mut Vec<u8>),
        fix_checksum: bool,
    ) -> Result<Decapsulated, DropReason> {
        let mut buf = packet(&Inner::default(), 0);
        f(&mut buf);
        if fix_checksum {
            refill_checksum(&mut buf, 0);
        }
        decapsulate(&mut buf, &Policy::cluster())
    }

    #[test]
    fn malformed_outer() {
        let bad = Err(DropReason::MalformedOuter);
        assert_eq!(decapsulate(&mut [], &Policy::cluster()), bad);
        assert_eq!(corrupt_outer(|b| b.truncate(19), false), bad);
        assert_eq!(corrupt_outer(|b| b[0] = 0x65, true), bad, "version");
        assert_eq!(corrupt_outer(|b| b[0] = 0x44, false), bad, "IHL 4");
        assert_eq!(corrupt_outer(|b| b[8] ^= 1, false), bad, "checksum");
        assert_eq!(corrupt_outer(|b| b[3] += 1, true), bad, "total too long");
        assert_eq!(corrupt_outer(|b| b[3] -= 1, true), bad, "total too short");
        assert_eq!(corrupt_outer(|b| b.push(0), false), bad, "trailing byte");
        assert_eq!(corrupt_outer(|b| b[9] = 41, true), bad, "protocol");
        assert_eq!(corrupt_outer(|b| b[6] |= 0x20, true), bad, "MF");
        assert_eq!(corrupt_outer(|b| b[7] = 1, true), bad, "offset");
        assert_eq!(
            corrupt_outer(
                |b| {
                    b[2] = 0;
                    b[3] = 0
                },
                true
            ),
            bad,
            "total 0 on a small packet"
        );
        // The source is not consulted for a malformed outer packet.
        let policy = Policy::cluster();
        let mut buf = packet(&Inner::default(), 0);
        buf[9] = 17;
        refill_checksum(&mut buf, 0);
        assert_eq!(decapsulate(&mut buf, &policy), bad);
        assert!(!policy.asked_source.get());
    }

    #[test]
    fn outer_options_are_skipped() {
        let inner = Inner::default().bytes();
        let mut buf = outer(&inner, 0, NODE_A, NODE_B);
        // Insert a 4-byte option (NOP x3 + EOL) and fix IHL, length, checksum.
        buf.splice(20..20, [1, 1, 1, 0]);
        buf[0] = 0x46;
        let total = (buf.len() as u16).to_be_bytes();
        buf[2..4].copy_from_slice(&total);
        refill_checksum(&mut buf, 0);
        let d = decapsulate(&mut buf, &Policy::cluster()).expect("decapsulates");
        assert_eq!(d.inner, 24..buf.len());
        assert_eq!(buf[d.inner], inner[..]);
    }

    #[test]
    fn outer_checksum_is_skipped_only_when_the_kernel_verified_it() {
        let inner = Inner::default().bytes();
        let mut good = outer(&inner, 0, NODE_A, NODE_B);
        // Record route (room for two addresses, then EOL), as it leaves the
        // kernel's local delivery: an address filled in, the pointer moved,
        // the checksum as the sender computed it.
        good.splice(20..20, [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        good[0] = 0x48;
        let total = (good.len() as u16).to_be_bytes();
        good[2..4].copy_from_slice(&total);
        refill_checksum(&mut good, 0);
        let mut stale = good.clone();
        stale[22] = 8;
        stale[23..27].copy_from_slice(&NODE_B.octets());
        let policy = Policy::cluster();
        let verified = OuterChecksum::VerifiedByKernel;
        let mut buf = stale.clone();
        assert_eq!(
            decapsulate(&mut buf, &policy),
            Err(DropReason::MalformedOuter),
            "nobody verified it: checked"
        );
        let mut buf = stale.clone();
        let d = decapsulate_with(&mut buf, &policy, verified).expect("decapsulates");
        assert_eq!(buf[d.inner], inner[..]);
        let mut buf = good.clone();
        assert!(decapsulate_with(&mut buf, &policy, OuterChecksum::Verify).is_ok());
        // Everything else about the outer header is still checked.
        for (at, value, what) in [(0, 0x68, "version"), (0, 0x44, "IHL"), (9, 17, "protocol")] {
            let mut buf = stale.clone();
            buf[at] = value;
            assert_eq!(
                decapsulate_with(&mut buf, &policy, verified),
                Err(DropReason::MalformedOuter),
                "{what}"
            );
        }
        let mut buf = stale.clone();
        buf.push(0);
        assert_eq!(
            decapsulate_with(&mut buf, &policy, verified),
            Err(DropReason::MalformedOuter),
            "total length"
        );
    }

    fn corrupt_inner(
        f: impl FnOnce(&mut Vec<u8>),
        fix_checksum: bool,
    ) -> Result<Decapsulated, DropReason> {
        let mut inner = Inner::default().bytes();
        f(&mut inner);
        if fix_checksum && inner.len() >= 20 {
            refill_checksum(&mut inner, 0);
        }
        let mut buf = outer(&inner, 0, NODE_A, NODE_B);
        decapsulate(&mut buf, &Policy::cluster())
    }

    #[test]
    fn malformed_inner() {
        let bad = Err(DropReason::MalformedInner);
        assert_eq!(corrupt_inner(|b| b.clear(), false), bad, "empty");
        assert_eq!(corrupt_inner(|b| b.truncate(19), false), bad, "short");
        assert_eq!(corrupt_inner(|b| b[0] = 0x65, true), bad, "version");
        assert_eq!(corrupt_inner(|b| b[0] = 0x44, false), bad, "IHL 4");
        assert_eq!(corrupt_inner(|b| b.truncate(40), false), bad, "truncated");
        assert_eq!(corrupt_inner(|b| b[8] ^= 1, false), bad, "checksum");
        assert_eq!(
            corrupt_inner(|b| b[3] += 1, true),
            bad,
            "total past the end"
        );
        assert_eq!(
            corrupt_inner(
                |b| {
                    b[2] = 0;
                    b[3] = 19
                },
                true
            ),
            bad,
            "total below header"
        );
        assert_eq!(
            corrupt_inner(
                |b| {
                    b[2] = 0;
                    b[3] = 0
                },
                true
            ),
            bad,
            "total 0 on a small packet"
        );
        let mut long_header = Inner {
            len: 40,
            ..Inner::default()
        }
        .bytes();
        long_header[0] = 0x4f;
        // IHL 15 needs 60 bytes of header; the packet has 40.
        let mut buf = outer(&long_header, 0, NODE_A, NODE_B);
        assert_eq!(
            decapsulate(&mut buf, &Policy::cluster()),
            bad,
            "IHL past the end"
        );
    }

    #[test]
    fn inner_trailing_bytes_are_trimmed() {
        let mut inner = Inner::default().bytes();
        let expected = inner.clone();
        inner.extend([0u8; 6]);
        let mut buf = outer(&inner, 0, NODE_A, NODE_B);
        let d = decapsulate(&mut buf, &Policy::cluster()).expect("decapsulates");
        assert_eq!(d.inner, 20..104);
        assert_eq!(buf[d.inner], expected[..]);
    }

    #[test]
    fn ttl_expired() {
        let inner = Inner {
            ttl: 0,
            ..Inner::default()
        };
        let mut buf = packet(&inner, 0);
        assert_eq!(
            decapsulate(&mut buf, &Policy::cluster()),
            Err(DropReason::TtlExpired)
        );
    }

    #[test]
    fn nested_ipip() {
        let inner = Inner {
            protocol: 4,
            ..Inner::default()
        };
        let mut buf = packet(&inner, 0);
        assert_eq!(
            decapsulate(&mut buf, &Policy::cluster()),
            Err(DropReason::NestedIpip)
        );
        let allow = Policy {
            nested: true,
            ..Policy::cluster()
        };
        let mut buf = packet(&inner, 0);
        assert!(decapsulate(&mut buf, &allow).is_ok());
    }

    #[test]
    fn not_local() {
        let inner = Inner {
            dst: [10, 99, 0, 1].into(),
            ..Inner::default()
        };
        let mut buf = packet(&inner, 0);
        assert_eq!(
            decapsulate(&mut buf, &Policy::cluster()),
            Err(DropReason::NotLocal)
        );
        // No local blocks configured: anything goes.
        let open = Policy {
            local: None,
            ..Policy::cluster()
        };
        let mut buf = packet(&inner, 0);
        assert!(decapsulate(&mut buf, &open).is_ok());
    }

    #[test]
    fn largest_packet() {
        let inner = Inner {
            len: 65_535 - 20,
            ..Inner::default()
        };
        let mut buf = packet(&inner, 0);
        let d = decapsulate(&mut buf, &Policy::cluster()).expect("decapsulates");
        assert_eq!(d.inner, 20..65_535);
    }

    #[test]
    fn gro_super_packet_with_zero_total_lengths() {
        // A BIG TCP GRO super-packet: both total lengths 0, buffer > 65535.
        let inner = Inner {
            len: 65_535 - 20,
            ..Inner::default()
        };
        let mut inner_bytes = inner.bytes();
        inner_bytes.extend((0..1000).map(|i| i as u8));
        inner_bytes[2] = 0;
        inner_bytes[3] = 0;
        refill_checksum(&mut inner_bytes, 0);
        let mut buf = outer(&inner_bytes[..65_000], 0, NODE_A, NODE_B);
        buf.extend_from_slice(&inner_bytes[65_000..]);
        buf[2] = 0;
        buf[3] = 0;
        refill_checksum(&mut buf, 0);
        assert!(buf.len() > 65_535);
        let d = decapsulate(&mut buf, &Policy::cluster()).expect("decapsulates");
        assert_eq!(d.inner, 20..buf.len());
        assert_eq!(d.inner.len(), inner_bytes.len());
    }

    #[test]
    fn decap_ecn_matches_kernel_rules() {
        let all = [Ecn::NotEct, Ecn::Ect1, Ecn::Ect0, Ecn::Ce];
        for outer in all {
            for inner in all {
                let got = decap_ecn(outer, inner);
                if outer == Ecn::Ce {
                    assert_eq!(got, (inner != Ecn::NotEct).then_some(Ecn::Ce));
                } else if outer == Ecn::Ect1 && inner == Ecn::Ect0 {
                    assert_eq!(got, Some(Ecn::Ect1));
                } else {
                    assert_eq!(got, Some(inner));
                }
            }
        }
    }
}
