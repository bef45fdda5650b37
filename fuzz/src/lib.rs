//! Helpers shared by the fuzz targets: making fuzzer bytes plausible enough
//! to get past the cheap checks (version, lengths, checksums), and a decap
//! policy that accepts everything.

use std::net::Ipv4Addr;

use tunl_encap::{DecapPolicy, checksum};

/// Accepts every source and destination, nested IPIP included: for targets
/// that check what decap gives back, not the policy.
pub struct AcceptAll;

impl DecapPolicy for AcceptAll {
    fn source_allowed(&self, _: Ipv4Addr) -> bool {
        true
    }

    fn destination_local(&self, _: Ipv4Addr) -> bool {
        true
    }

    fn allow_nested(&self) -> bool {
        true
    }
}

/// The IHL of `pkt` in bytes, if its first byte is there.
pub fn ihl(pkt: &[u8]) -> Option<usize> {
    pkt.first().map(|b| usize::from(b & 0x0f) * 4)
}

/// Stores a correct IPv4 header checksum in `pkt`, if its IHL fits in it
/// and is at least 20.
pub fn fix_ip_checksum(pkt: &mut [u8]) {
    let Some(len) = ihl(pkt) else { return };
    if len < 20 || len > pkt.len() {
        return;
    }
    pkt[10..12].fill(0);
    let sum = checksum::checksum(&pkt[..len]).to_be_bytes();
    pkt[10..12].copy_from_slice(&sum);
}

/// Makes `pkt` a plausible IPv4 header: version 4, IHL at least 5 (and
/// within the packet, else 5), total length the packet's (when it fits 16
/// bits and 20 bytes are there), and a correct header checksum.
pub fn fix_ip_header(pkt: &mut [u8]) {
    if pkt.len() < 20 {
        return;
    }
    let mut ihl = pkt[0] & 0x0f;
    if ihl < 5 || usize::from(ihl) * 4 > pkt.len() {
        ihl = 5;
    }
    pkt[0] = 0x40 | ihl;
    if let Ok(len) = u16::try_from(pkt.len()) {
        pkt[2..4].copy_from_slice(&len.to_be_bytes());
    }
    fix_ip_checksum(pkt);
}

/// The TCP or UDP checksum `pkt` (a whole IPv4 packet) should carry, with
/// the field itself counted as zero; None when it is neither or too short.
pub fn l4_checksum(pkt: &[u8]) -> Option<(usize, u16)> {
    let ihl = ihl(pkt)?;
    let (proto, at) = match pkt.get(9)? {
        6 => (6u8, ihl + 16),
        17 => (17u8, ihl + 6),
        _ => return None,
    };
    if pkt.len() < at + 2 || ihl < 20 {
        return None;
    }
    let seg = &pkt[ihl..];
    let seg_len = u64::try_from(seg.len()).ok()?;
    let mut acc = checksum::accumulate(&pkt[12..20]) + u64::from(proto) + seg_len;
    acc += checksum::accumulate(seg);
    // Take the stored checksum back out: count the field as zero.
    acc += u64::from(!u16::from_be_bytes([pkt[at], pkt[at + 1]]));
    Some((at, !checksum::fold(acc)))
}

/// Stores a correct TCP or UDP checksum in `pkt`, when it is one.
pub fn fix_l4_checksum(pkt: &mut [u8]) {
    if let Some((at, sum)) = l4_checksum(pkt) {
        pkt[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
}
