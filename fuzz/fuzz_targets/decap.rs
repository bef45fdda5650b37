//! Fuzzes `decapsulate` (and the underlay ICMP parser) with arbitrary bytes.
//! Whatever decap accepts must be a whole IPv4 packet with a good checksum.

#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tunl_encap::{
    DecapPolicy, ICMP_ERROR_MAX_LEN, Ipv4Packet, checksum, decapsulate, frag_needed,
    parse_underlay_error,
};

/// Allows sources and destinations by their last octet, so both outcomes occur.
struct Policy;

impl DecapPolicy for Policy {
    fn source_allowed(&self, outer_src: Ipv4Addr) -> bool {
        outer_src.octets()[3].is_multiple_of(2)
    }

    fn destination_local(&self, inner_dst: Ipv4Addr) -> bool {
        inner_dst.octets()[3] != 255
    }
}

/// Writes a correct checksum into the IPv4 header at `at`, if there is one.
fn fix_checksum(buf: &mut [u8], at: usize) {
    let Some(h) = buf.get(at..) else { return };
    let Ok(p) = Ipv4Packet::new_checked(h) else {
        return;
    };
    let len = p.header_len();
    buf[at + 10] = 0;
    buf[at + 11] = 0;
    let sum = checksum::checksum(&buf[at..at + len]).to_be_bytes();
    buf[at + 10..at + 12].copy_from_slice(&sum);
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks which header fields to make plausible, so the
    // fuzzer gets past the checksums and reaches the later checks.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if mode & 1 != 0 && buf.len() >= 20 {
        buf[0] = 0x40 | (buf[0] & 0x0f);
        buf[9] = 4;
        let len = u16::try_from(buf.len()).unwrap_or(0).to_be_bytes();
        buf[2..4].copy_from_slice(&len);
        if mode & 2 != 0 {
            let at = usize::from(buf[0] & 0x0f) * 4;
            fix_checksum(&mut buf, at);
        }
        fix_checksum(&mut buf, 0);
    }
    if let Ok(d) = decapsulate(&mut buf, &Policy) {
        let inner = buf
            .get(d.inner.clone())
            .expect("inner range within the buffer");
        let p = Ipv4Packet::new_checked(inner).expect("inner is IPv4");
        assert!(checksum::verify(p.header()), "inner checksum after ECN fix");
        assert!(usize::from(p.total_len()) == inner.len() || p.total_len() == 0);
    }
    let _ = parse_underlay_error(data);
    let mut out = [0u8; ICMP_ERROR_MAX_LEN];
    if let Some(n) = frag_needed(data, 1400, Ipv4Addr::new(169, 254, 1, 1), &mut out) {
        assert!(checksum::verify(&out[..20]));
        assert!(checksum::verify(&out[20..n]));
    }
});
