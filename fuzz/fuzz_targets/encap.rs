//! Fuzzes `encapsulate` with arbitrary inner bytes and settings.
//!
//! The verdict must be the one its documentation gives (computed here
//! independently, check by check); the inner bytes are never modified; an
//! `Ok` outer packet must carry the header the settings ask for, and
//! decapsulate back to exactly the inner bytes (or be refused as
//! `MalformedInner` when the inner checksum was wrong, which encap does not
//! check).

#![no_main]

use std::net::Ipv4Addr;
use std::num::NonZeroU8;

use libfuzzer_sys::fuzz_target;
use tunl_encap::{
    DropReason, EncapError, HEADROOM, IdentGenerator, MAX_INNER_LEN, Ttl, TunnelSettings, checksum,
    decapsulate, encapsulate,
};
use tunl_fuzz::{AcceptAll, fix_ip_checksum, fix_ip_header};

/// Bytes of parameters before the inner packet.
const PARAMS: usize = 12;

/// What the documentation of `encapsulate` says it returns.
fn expected(
    buf: &[u8],
    inner_start: usize,
    mtu: u16,
    s: &TunnelSettings,
) -> Result<(), EncapError> {
    let malformed = Err(EncapError::Drop(DropReason::MalformedInner));
    if inner_start < HEADROOM || inner_start > buf.len() {
        return malformed;
    }
    let inner = &buf[inner_start..];
    if inner.len() < 20 {
        return malformed;
    }
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    if inner[0] >> 4 != 4 || ihl < 20 || ihl > inner.len() {
        return malformed;
    }
    if usize::from(u16::from_be_bytes([inner[2], inner[3]])) != inner.len() {
        return malformed;
    }
    if inner[8] == 0 {
        return Err(EncapError::Drop(DropReason::TtlExpired));
    }
    // An IPIP packet from this node: its own outer packet routed back in.
    if inner[9] == 4 && inner[12..16] == s.local.octets() {
        return Err(EncapError::Drop(DropReason::TunnelLoop));
    }
    let df = s.pmtudisc || inner[6] & 0x40 != 0;
    let mtu = mtu.min(s.mtu);
    if (df && inner.len() > usize::from(mtu)) || inner.len() > MAX_INNER_LEN {
        return Err(EncapError::TooBig {
            mtu: mtu.min(MAX_INNER_LEN as u16),
        });
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((p, inner)) = data.split_first_chunk::<PARAMS>() else {
        return;
    };
    let flags = p[0];
    let settings = TunnelSettings {
        local: Ipv4Addr::new(172, 16, 36, 5),
        ttl: match NonZeroU8::new(p[1]) {
            Some(t) if flags & 0x04 != 0 => Ttl::Fixed(t),
            _ => Ttl::Inherit,
        },
        tos_inherit: flags & 0x02 != 0,
        pmtudisc: flags & 0x01 != 0,
        mtu: u16::from_be_bytes([p[4], p[5]]),
    };
    let mtu = u16::from_be_bytes([p[2], p[3]]);
    let next_hop = Ipv4Addr::new(p[6], p[7], p[8], p[9]);
    // Mostly the usual headroom; sometimes more, or too little.
    let inner_start = match p[10] % 8 {
        0 => usize::from(p[10] / 8) % HEADROOM,
        n => HEADROOM + usize::from(n - 1) * 4,
    };
    let mut inner = inner.to_vec();
    if flags & 0x20 != 0 {
        // Around the longest inner packet an outer one can carry.
        inner.resize(MAX_INNER_LEN - 1 + usize::from(p[11] % 3), 0);
    }
    if flags & 0x08 != 0 {
        fix_ip_header(&mut inner);
    } else if flags & 0x10 != 0 {
        fix_ip_checksum(&mut inner);
    }
    let mut buf = vec![0xee; inner_start];
    buf.extend_from_slice(&inner);
    let before = buf.clone();
    let mut ids = IdentGenerator::new(u32::from_be_bytes([p[6], p[7], p[8], p[11]]));

    let got = encapsulate(&mut buf, inner_start, next_hop, mtu, &settings, &mut ids);
    let want = expected(&before, inner_start, mtu, &settings);
    assert_eq!(
        got.as_ref().map(|_| ()),
        want.as_ref().map(|_| ()),
        "verdict"
    );
    if inner_start <= buf.len() {
        assert_eq!(buf[inner_start..], before[inner_start..], "inner modified");
    }
    let Ok(range) = got else {
        assert_eq!(buf, before, "a refused packet's buffer was written");
        return;
    };
    let outer_start = inner_start - HEADROOM;
    assert_eq!(range, outer_start..buf.len());
    assert_eq!(
        buf[..outer_start],
        before[..outer_start],
        "bytes before the outer header"
    );

    let outer = &buf[range.clone()];
    let (h, inner) = outer.split_at(HEADROOM);
    assert_eq!(h[0], 0x45, "version 4, no options");
    assert!(checksum::verify_header(h), "outer checksum");
    assert_eq!(usize::from(u16::from_be_bytes([h[2], h[3]])), outer.len());
    assert_eq!(h[9], 4, "protocol IPIP");
    let frag = u16::from_be_bytes([h[6], h[7]]);
    assert_eq!(frag & 0xbfff, 0, "no MF, no offset, reserved bit clear");
    assert_eq!(
        frag & 0x4000 != 0,
        settings.pmtudisc || inner[6] & 0x40 != 0,
        "DF"
    );
    let ttl = match settings.ttl {
        Ttl::Inherit => inner[8],
        Ttl::Fixed(t) => t.get(),
        other => unreachable!("this target sets no {other:?}"),
    };
    assert_eq!(h[8], ttl, "TTL");
    let dscp = if settings.tos_inherit {
        inner[1] >> 2
    } else {
        0
    };
    assert_eq!(h[1] >> 2, dscp, "DSCP");
    let ecn = match inner[1] & 3 {
        3 => 2, // CE is never copied out: ECT(0)
        e => e,
    };
    assert_eq!(h[1] & 3, ecn, "ECN");
    assert_eq!(h[12..16], settings.local.octets(), "outer source");
    assert_eq!(h[16..20], next_hop.octets(), "outer destination");

    // Decap gives back exactly the inner packet, or refuses it for the
    // inner checksum encap does not look at.
    let mut again = outer.to_vec();
    let inner_ok = checksum::verify_header(&inner[..usize::from(inner[0] & 0x0f) * 4]);
    match decapsulate(&mut again, &AcceptAll) {
        Ok(d) => {
            assert!(inner_ok, "decap took a bad inner checksum");
            assert_eq!(d.outer_src, settings.local);
            assert_eq!(d.outer_dst, next_hop);
            assert_eq!(&again[d.inner], inner, "round trip");
        }
        Err(reason) => {
            assert!(
                !inner_ok,
                "decap refused its own encap's packet: {reason:?}"
            );
            assert_eq!(reason, DropReason::MalformedInner);
        }
    }
});
