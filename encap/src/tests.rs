//! Encap → decap round trips and property tests across modules.

use std::net::Ipv4Addr;
use std::num::NonZeroU8;

use proptest::prelude::*;

use crate::testutil::{Inner, NODE_A, NODE_B, Policy, checksum_ok, outer};
use crate::{
    DropReason, EncapError, HEADROOM, ICMP_ERROR_MAX_LEN, IdentGenerator, MAX_INNER_LEN, Ttl,
    TunnelSettings, Unreachable, decapsulate, encapsulate, frag_needed, parse_underlay_error,
    unreachable,
};

fn open_policy() -> Policy {
    Policy {
        local: None,
        ..Policy::cluster()
    }
}

/// Encapsulates on node A and decapsulates the result on node B.
fn round_trip(inner: &Inner, s: &TunnelSettings) -> Result<Vec<u8>, EncapError> {
    let mut buf = inner.with_headroom();
    let mut ids = IdentGenerator::new(7);
    let range = encapsulate(&mut buf, HEADROOM, NODE_B, s.mtu, s, &mut ids)?;
    assert!(checksum_ok(&buf[range.clone()]));
    let mut wire = buf[range].to_vec();
    let d = decapsulate(&mut wire, &open_policy()).map_err(EncapError::Drop)?;
    assert_eq!((d.outer_src, d.outer_dst), (NODE_A, NODE_B));
    Ok(wire[d.inner].to_vec())
}

#[test]
fn round_trip_seed_flow_and_variants() {
    let settings = TunnelSettings::new(NODE_A);
    for inner in [
        Inner::default(),
        Inner {
            tos: 0xb8 | 0b11,
            ..Inner::default()
        },
        Inner {
            tos: 0b01,
            df: false,
            len: 20,
            ..Inner::default()
        },
        Inner {
            ttl: 1,
            protocol: 6,
            len: 1480,
            ..Inner::default()
        },
    ] {
        let got = round_trip(&inner, &settings).expect("round trip");
        assert_eq!(got, inner.bytes(), "{inner:?}");
    }
    let fixed = TunnelSettings {
        ttl: Ttl::Fixed(NonZeroU8::MIN),
        tos_inherit: true,
        pmtudisc: true,
        ..TunnelSettings::new(NODE_A)
    };
    assert_eq!(
        round_trip(&Inner::default(), &fixed).expect("round trip"),
        Inner::default().bytes()
    );
}

#[test]
fn every_drop_reason_is_reachable() {
    // Reasons produced by this crate, each from a packet built for it; NoRoute
    // is the route lookup's (the daemon's) and TooBig comes from EncapError.
    let mut seen = [false; DropReason::COUNT];
    let settings = TunnelSettings::new(NODE_A);
    let mut ids = IdentGenerator::new(1);
    let encap_cases = [
        Inner {
            len: 1500,
            ..Inner::default()
        },
        Inner {
            ttl: 0,
            ..Inner::default()
        },
        Inner {
            protocol: 4,
            src: NODE_A,
            ..Inner::default()
        },
    ];
    for inner in encap_cases {
        let mut buf = inner.with_headroom();
        let e = encapsulate(&mut buf, HEADROOM, NODE_B, 1480, &settings, &mut ids)
            .expect_err("dropped");
        seen[e.reason() as usize] = true;
    }
    let mut garbage = [0u8; 10];
    let mut buf = Inner::default().with_headroom();
    buf[HEADROOM] = 0x65;
    let e = encapsulate(&mut buf, HEADROOM, NODE_B, 1480, &settings, &mut ids).expect_err("bad");
    seen[e.reason() as usize] = true;
    let r = decapsulate(&mut garbage, &Policy::cluster()).expect_err("bad");
    seen[r as usize] = true;
    let decap_cases = [
        (Inner::default(), 0, Ipv4Addr::new(192, 0, 2, 1)),
        (
            Inner {
                tos: 0,
                ..Inner::default()
            },
            0b11,
            NODE_A,
        ),
        (
            Inner {
                ttl: 0,
                ..Inner::default()
            },
            0,
            NODE_A,
        ),
        (
            Inner {
                protocol: 4,
                ..Inner::default()
            },
            0,
            NODE_A,
        ),
        (
            Inner {
                dst: Ipv4Addr::new(10, 99, 1, 1),
                ..Inner::default()
            },
            0,
            NODE_A,
        ),
    ];
    for (inner, outer_tos, src) in decap_cases {
        let mut buf = outer(&inner.bytes(), outer_tos, src, NODE_B);
        let r = decapsulate(&mut buf, &Policy::cluster()).expect_err("dropped");
        seen[r as usize] = true;
    }
    for reason in DropReason::ALL {
        // No route, no local address and the inner source checks are the
        // pipeline's decisions.
        let pipelines = matches!(
            reason,
            DropReason::NoRoute
                | DropReason::NoLocalAddress
                | DropReason::InnerSourceMismatch
                | DropReason::InnerSourceOwnBlock
        );
        assert_eq!(seen[reason as usize], !pipelines, "{reason}");
    }
}

fn inner_strategy(max_len: usize) -> impl Strategy<Value = Inner> {
    (
        prop_oneof![
            3 => 20usize..=200,
            1 => 20usize..=max_len,
            1 => max_len - 40..=max_len,
        ],
        any::<u8>(),
        1u8..=255,
        any::<bool>(),
        any::<u8>().prop_filter("not IPIP", |p| *p != 4),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(len, tos, ttl, df, protocol, src, dst)| Inner {
            len,
            tos,
            ttl,
            df,
            protocol,
            src: src.into(),
            dst: dst.into(),
        })
}

fn valid_outer() -> impl Strategy<Value = Vec<u8>> {
    (inner_strategy(1500), any::<u8>())
        .prop_map(|(inner, tos)| outer(&inner.bytes(), tos, NODE_A, NODE_B))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_any_inner(inner in inner_strategy(65_535), tos_inherit in any::<bool>()) {
        let s = TunnelSettings { mtu: u16::MAX, tos_inherit, ..TunnelSettings::new(NODE_A) };
        let r = round_trip(&inner, &s);
        if inner.len > MAX_INNER_LEN {
            prop_assert_eq!(r, Err(EncapError::TooBig { mtu: MAX_INNER_LEN as u16 }));
            // Such a packet only arrives as a GRO super-packet: outer total length 0.
            let bytes = inner.bytes();
            let mut wire = outer(&bytes[..1000], 0, NODE_A, NODE_B);
            wire.extend_from_slice(&bytes[1000..]);
            wire[2] = 0;
            wire[3] = 0;
            crate::testutil::refill_checksum(&mut wire, 0);
            let d = decapsulate(&mut wire, &open_policy()).expect("GRO super-packet");
            prop_assert_eq!(&wire[d.inner], &bytes[..]);
        } else {
            prop_assert_eq!(r, Ok(inner.bytes()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decap_never_panics_on_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decapsulate(&mut bytes.clone(), &Policy::cluster());
        // Make the outer header plausible more often than chance would.
        if bytes.len() >= 20 {
            bytes[0] = 0x45;
            bytes[9] = 4;
            let len = (bytes.len() as u16).to_be_bytes();
            bytes[2..4].copy_from_slice(&len);
            crate::testutil::refill_checksum(&mut bytes, 0);
        }
        if let Ok(d) = decapsulate(&mut bytes, &open_policy()) {
            prop_assert!(checksum_ok(&bytes[d.inner]));
        }
    }

    #[test]
    fn decap_never_panics_on_mutations(
        mut packet in valid_outer(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
        fix in any::<bool>(),
    ) {
        for (at, value) in edits {
            let i = at.index(packet.len());
            packet[i] = value;
        }
        if let Some(cut) = cut {
            packet.truncate(cut.index(packet.len() + 1));
        }
        if fix && packet.len() >= 20 && packet[0] >> 4 == 4 && usize::from(packet[0] & 0xf) * 4 <= packet.len() {
            crate::testutil::refill_checksum(&mut packet, 0);
        }
        if let Ok(d) = decapsulate(&mut packet, &Policy::cluster()) {
            // Whatever decap accepts is a whole IPv4 packet with a good checksum.
            let inner = &packet[d.inner];
            prop_assert!(checksum_ok(inner));
            prop_assert_eq!(usize::from(u16::from_be_bytes([inner[2], inner[3]])), inner.len());
        }
    }

    #[test]
    fn encap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128), start in 0usize..64, mtu in any::<u16>()) {
        let mut buf = bytes;
        let mut ids = IdentGenerator::new(3);
        let _ = encapsulate(&mut buf, start, NODE_B, mtu, &TunnelSettings::new(NODE_A), &mut ids);
    }

    #[test]
    fn icmp_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128), out_len in 0usize..=ICMP_ERROR_MAX_LEN) {
        let mut out = [0u8; ICMP_ERROR_MAX_LEN];
        let from = Ipv4Addr::new(169, 254, 1, 1);
        if let Some(n) = frag_needed(&bytes, 1400, from, &mut out[..out_len]) {
            prop_assert!(n <= out_len);
            prop_assert!(checksum_ok(&out[..n]));
        }
        let _ = unreachable(&bytes, Unreachable::Host, from, &mut out[..out_len]);
        let _ = parse_underlay_error(&bytes);
    }
}
