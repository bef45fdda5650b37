//! Encapsulation: an inner IPv4 packet in, the outer IPIP header written in
//! front of it, in the caller's buffer.

use std::fmt;
use std::net::Ipv4Addr;
use std::num::NonZeroU8;
use std::ops::Range;

use crate::drop::DropReason;
use crate::ipv4::{self, Ecn, PROTOCOL_IPIP};

/// Bytes of outer IPv4 header written before the inner packet.
pub const HEADROOM: usize = 20;

/// The default tunnel MTU: a 1500-byte underlay minus the outer header.
pub const DEFAULT_MTU: u16 = 1480;

/// The smallest MTU an IPv4 link may have (RFC 791: every module must
/// forward a 68-byte datagram without fragmenting it).
pub const MIN_MTU: u16 = 68;

/// The longest inner packet an outer IPv4 packet can carry.
pub const MAX_INNER_LEN: usize = 65_535 - HEADROOM;

/// The outer TTL.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ttl {
    /// Copy the inner TTL (`ttl inherit`, what Calico's tunl0 uses).
    #[default]
    Inherit,
    /// A fixed outer TTL.
    Fixed(NonZeroU8),
}

impl fmt::Display for Ttl {
    /// `inherit`, or the fixed TTL as a number (the spelling of `ip tunnel`
    /// and of the configuration file).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inherit => f.write_str("inherit"),
            Self::Fixed(ttl) => write!(f, "{ttl}"),
        }
    }
}

/// How the tunnel writes outer headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelSettings {
    /// The outer source address (this node's underlay address).
    pub local: Ipv4Addr,
    /// The outer TTL.
    pub ttl: Ttl,
    /// Copy the inner DSCP to the outer header (default false: DSCP 0).
    pub tos_inherit: bool,
    /// Always set DF on the outer header (default false: copy the inner DF).
    pub pmtudisc: bool,
    /// The tunnel MTU: the longest inner packet (default 1480).
    pub mtu: u16,
}

impl TunnelSettings {
    /// Settings as Calico runs tunl0 (`ttl inherit`, `nopmtudisc`, DSCP 0,
    /// MTU 1480) with `local` as the outer source.
    pub fn new(local: Ipv4Addr) -> Self {
        Self {
            local,
            ttl: Ttl::Inherit,
            tos_inherit: false,
            pmtudisc: false,
            mtu: DEFAULT_MTU,
        }
    }
}

impl Default for TunnelSettings {
    fn default() -> Self {
        Self::new(Ipv4Addr::UNSPECIFIED)
    }
}

const IDENT_BUCKETS: usize = 2048;

/// Per-destination IPv4 ID generator (like the kernel's `ip_idents`: hashed
/// buckets of counters), one per thread.
///
/// Destinations hash into 2048 buckets, each a 16-bit counter starting at a
/// value drawn from the seed, so packets to one node carry consecutive IDs.
#[derive(Clone)]
pub struct IdentGenerator {
    seed: u32,
    buckets: Box<[u16; IDENT_BUCKETS]>,
}

impl IdentGenerator {
    /// A generator whose hash and starting counters derive from `seed` (give
    /// each thread and each run a different one).
    pub fn new(seed: u32) -> Self {
        let mut buckets = Box::new([0u16; IDENT_BUCKETS]);
        let mut state = u64::from(seed) ^ 0x9e37_79b9_7f4a_7c15;
        for b in buckets.iter_mut() {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *b = (z >> 48) as u16;
        }
        let seed = (state >> 32) as u32 | 1;
        Self { seed, buckets }
    }

    /// The next ID for a packet to `dst`.
    #[inline]
    pub fn next(&mut self, dst: Ipv4Addr) -> u16 {
        let h = (u32::from(dst) ^ self.seed).wrapping_mul(0x9e37_79b1);
        let i = (h >> (32 - IDENT_BUCKETS.trailing_zeros())) as usize & (IDENT_BUCKETS - 1);
        let id = self.buckets[i];
        self.buckets[i] = id.wrapping_add(1);
        id
    }
}

impl fmt::Debug for IdentGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentGenerator")
            .field("buckets", &IDENT_BUCKETS)
            .finish_non_exhaustive()
    }
}

/// Why [`encapsulate`] did not produce an outer packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncapError {
    /// The inner packet is longer than `mtu` and may not be fragmented:
    /// answer with ICMP fragmentation needed carrying `mtu`.
    TooBig {
        /// The MTU to report to the inner source.
        mtu: u16,
    },
    /// The packet is dropped for this reason.
    Drop(DropReason),
}

impl EncapError {
    /// The drop reason to count (`TooBig` counts as [`DropReason::TooBig`]).
    pub fn reason(self) -> DropReason {
        match self {
            Self::TooBig { .. } => DropReason::TooBig,
            Self::Drop(r) => r,
        }
    }
}

impl fmt::Display for EncapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooBig { mtu } => write!(f, "packet too big for tunnel MTU {mtu}"),
            Self::Drop(r) => write!(f, "dropped: {r}"),
        }
    }
}

impl std::error::Error for EncapError {}

/// Encapsulates the inner packet `buf[inner_start..]` toward `next_hop`.
///
/// `buf[inner_start..]` is exactly the inner packet (the caller slices the
/// buffer to end at the packet's end) and `inner_start >= HEADROOM`. Writes
/// the outer header at `buf[inner_start - 20..inner_start]` and returns that
/// range's start to the end of `buf`: the whole outer packet. The inner
/// packet is never modified.
///
/// `mtu` is the effective MTU toward this next hop (min of the tunnel MTU
/// and the path MTU learned for the node; `settings.mtu` caps it too). An
/// inner packet longer than it with DF set (the inner DF, or any packet with
/// `pmtudisc`) is [`EncapError::TooBig`]; without DF it is encapsulated
/// anyway and the underlay may fragment it. Nested IPIP is not checked here,
/// except tunl's own: an IPIP packet from `settings.local` is an outer packet
/// the kernel routed back into the device, and wrapping it again would loop.
///
/// # Errors
/// Checked in this order:
/// - `Drop(`[`DropReason::MalformedInner`]`)` unless the inner header has
///   version 4, IHL ≥ 5 and a total length equal to the slice length (also
///   when `inner_start` is below [`HEADROOM`] or past the end of `buf`);
/// - `Drop(`[`DropReason::TtlExpired`]`)` for an inner TTL of 0;
/// - `Drop(`[`DropReason::TunnelLoop`]`)` for IPIP from `settings.local`;
/// - [`EncapError::TooBig`] with the MTU to report when the inner packet is
///   longer than `mtu` with DF set, or longer than [`MAX_INNER_LEN`] (which
///   no outer packet can carry).
#[inline]
pub fn encapsulate(
    buf: &mut [u8],
    inner_start: usize,
    next_hop: Ipv4Addr,
    mtu: u16,
    settings: &TunnelSettings,
    ids: &mut IdentGenerator,
) -> Result<Range<usize>, EncapError> {
    let malformed = EncapError::Drop(DropReason::MalformedInner);
    let outer_start = inner_start.checked_sub(HEADROOM).ok_or(malformed)?;
    let (outer, inner) = buf
        .get_mut(outer_start..)
        .ok_or(malformed)?
        .split_at_mut_checked(HEADROOM)
        .ok_or(malformed)?;
    // Read the fixed header once, as an array: no bounds checks past here.
    let inner_len = inner.len();
    let h = inner.first_chunk::<HEADROOM>().ok_or(malformed)?;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || header_len < ipv4::IPV4_HEADER_LEN || header_len > inner_len {
        return Err(malformed);
    }
    if usize::from(u16::from_be_bytes([h[2], h[3]])) != inner_len {
        return Err(malformed);
    }
    let inner_ttl = h[8];
    if inner_ttl == 0 {
        return Err(EncapError::Drop(DropReason::TtlExpired));
    }
    if h[9] == PROTOCOL_IPIP && h[12..16] == settings.local.octets() {
        return Err(EncapError::Drop(DropReason::TunnelLoop));
    }
    let df = settings.pmtudisc || h[6] & 0x40 != 0;
    let mtu = mtu.min(settings.mtu);
    if (df && inner_len > usize::from(mtu)) || inner_len > MAX_INNER_LEN {
        return Err(EncapError::TooBig {
            mtu: mtu.min(MAX_INNER_LEN as u16),
        });
    }

    let inner_tos = h[1];
    let dscp = if settings.tos_inherit {
        inner_tos & !0b11
    } else {
        0
    };
    let ecn = match Ecn::from_tos(inner_tos) {
        Ecn::Ce => Ecn::Ect0,
        other => other,
    };
    let ttl = match settings.ttl {
        Ttl::Inherit => inner_ttl,
        Ttl::Fixed(t) => t.get(),
    };
    // inner_len <= MAX_INNER_LEN was checked above.
    let total_len = (inner_len + HEADROOM) as u16;
    let header: &mut [u8; HEADROOM] = outer.try_into().map_err(|_| malformed)?;
    ipv4::write_header(
        header,
        dscp | ecn as u8,
        total_len,
        ids.next(next_hop),
        df,
        ttl,
        PROTOCOL_IPIP,
        settings.local,
        next_hop,
    );
    Ok(outer_start..buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Inner, NODE_A, NODE_B, checksum_ok};

    const SEED: u32 = 42;

    fn settings() -> TunnelSettings {
        TunnelSettings::new(NODE_A)
    }

    fn encap(inner: &Inner, mtu: u16, s: &TunnelSettings) -> Result<Vec<u8>, EncapError> {
        let mut buf = inner.with_headroom();
        let before = buf[HEADROOM..].to_vec();
        let mut ids = IdentGenerator::new(SEED);
        let r = encapsulate(&mut buf, HEADROOM, NODE_B, mtu, s, &mut ids)?;
        assert_eq!(r, 0..buf.len());
        assert_eq!(buf[HEADROOM..], before[..], "inner packet modified");
        Ok(buf)
    }

    #[test]
    fn seed_article_flow_byte_for_byte() {
        // Pod 10.20.105.215 pings pod 10.20.42.31: 84-byte echo request, DF,
        // TTL 63 after node 172.16.36.5 forwarded it into the tunnel.
        let inner = Inner::default();
        let out = encap(&inner, 1480, &settings()).expect("encapsulates");
        let id = IdentGenerator::new(SEED).next(NODE_B).to_be_bytes();
        #[rustfmt::skip]
        let mut expected = vec![
            0x45,             // version 4, IHL 5
            0x00,             // DSCP 0, Not-ECT
            0x00, 0x68,       // total length 104 = 20 + 84
            id[0], id[1],     // identification
            0x40, 0x00,       // DF (copied from the inner packet), offset 0
            0x3f,             // TTL 63, inherited
            0x04,             // protocol IPIP
            0x00, 0x00,       // checksum, filled below
            172, 16, 36, 5,   // local node
            172, 16, 35, 4,   // next hop
        ];
        expected.extend(inner.bytes());
        let sum = etherparse::Ipv4HeaderSlice::from_slice(&expected)
            .expect("parses")
            .to_header()
            .calc_header_checksum();
        expected[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(out, expected);
        assert!(checksum_ok(&out));
    }

    #[test]
    fn ecn_encapsulation_table() {
        // inner ECN -> outer ECN: Not-ECT, ECT(1), ECT(0) copied; CE -> ECT(0).
        for (inner_ecn, outer_ecn) in [(0b00, 0b00), (0b01, 0b01), (0b10, 0b10), (0b11, 0b10)] {
            let inner = Inner {
                tos: 0xb8 | inner_ecn,
                ..Inner::default()
            };
            let out = encap(&inner, 1480, &settings()).expect("encapsulates");
            assert_eq!(out[1], outer_ecn, "inner ECN {inner_ecn:02b}");
            assert!(checksum_ok(&out));
        }
    }

    #[test]
    fn tos_inherit_copies_dscp() {
        let s = TunnelSettings {
            tos_inherit: true,
            ..settings()
        };
        let inner = Inner {
            tos: 0xb8 | 0b11,
            ..Inner::default()
        };
        let out = encap(&inner, 1480, &s).expect("encapsulates");
        assert_eq!(out[1], 0xb8 | 0b10);
        assert!(checksum_ok(&out));
    }

    #[test]
    fn fixed_ttl() {
        let s = TunnelSettings {
            ttl: Ttl::Fixed(NonZeroU8::new(200).expect("nonzero")),
            ..settings()
        };
        let out = encap(&Inner::default(), 1480, &s).expect("encapsulates");
        assert_eq!(out[8], 200);
        assert_eq!(out[HEADROOM + 8], 63, "inner TTL untouched");
        assert!(checksum_ok(&out));
    }

    #[test]
    fn too_big_with_df() {
        let inner = Inner {
            len: 1481,
            ..Inner::default()
        };
        assert_eq!(
            encap(&inner, 1480, &settings()),
            Err(EncapError::TooBig { mtu: 1480 })
        );
        // A learned path MTU below the tunnel MTU is what gets reported.
        assert_eq!(
            encap(&inner, 1400, &settings()),
            Err(EncapError::TooBig { mtu: 1400 })
        );
        // settings.mtu caps the effective MTU.
        assert_eq!(
            encap(&inner, 9000, &settings()),
            Err(EncapError::TooBig { mtu: 1480 })
        );
        assert_eq!(EncapError::TooBig { mtu: 1 }.reason(), DropReason::TooBig);
        let fits = Inner {
            len: 1480,
            ..Inner::default()
        };
        assert!(encap(&fits, 1480, &settings()).is_ok());
    }

    #[test]
    fn too_big_without_df_is_sent_without_df() {
        let inner = Inner {
            len: 1481,
            df: false,
            ..Inner::default()
        };
        let out = encap(&inner, 1480, &settings()).expect("encapsulates");
        assert_eq!(out[6] & 0x40, 0, "no DF");
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1501);
    }

    #[test]
    fn pmtudisc_sets_df_and_enforces_mtu() {
        let s = TunnelSettings {
            pmtudisc: true,
            ..settings()
        };
        let small = Inner {
            df: false,
            ..Inner::default()
        };
        let out = encap(&small, 1480, &s).expect("encapsulates");
        assert_eq!(out[6], 0x40);
        assert!(checksum_ok(&out));
        let big = Inner {
            len: 1481,
            df: false,
            ..Inner::default()
        };
        assert_eq!(encap(&big, 1480, &s), Err(EncapError::TooBig { mtu: 1480 }));
    }

    #[test]
    fn largest_inner_without_df() {
        let s = TunnelSettings {
            mtu: u16::MAX,
            ..settings()
        };
        let max = Inner {
            len: MAX_INNER_LEN,
            df: false,
            ..Inner::default()
        };
        let out = encap(&max, 1480, &s).expect("encapsulates");
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 65_535);
        let over = Inner {
            len: MAX_INNER_LEN + 1,
            df: false,
            ..Inner::default()
        };
        assert_eq!(
            encap(&over, u16::MAX, &s),
            Err(EncapError::TooBig {
                mtu: MAX_INNER_LEN as u16
            })
        );
    }

    #[test]
    fn ttl_displays_as_configured() {
        assert_eq!(Ttl::Inherit.to_string(), "inherit");
        let fixed = Ttl::Fixed(NonZeroU8::new(64).expect("nonzero"));
        assert_eq!(fixed.to_string(), "64");
        assert_eq!(Ttl::Fixed(NonZeroU8::MAX).to_string(), "255");
    }

    #[test]
    fn ttl_zero_is_dropped() {
        let inner = Inner {
            ttl: 0,
            ..Inner::default()
        };
        assert_eq!(
            encap(&inner, 1480, &settings()),
            Err(EncapError::Drop(DropReason::TtlExpired))
        );
    }

    #[test]
    fn nested_ipip_is_not_checked_on_encap() {
        let inner = Inner {
            protocol: 4,
            ..Inner::default()
        };
        assert!(encap(&inner, 1480, &settings()).is_ok());
    }

    #[test]
    fn our_own_outer_packet_is_a_loop() {
        let inner = Inner {
            protocol: 4,
            src: NODE_A,
            ..Inner::default()
        };
        assert_eq!(
            encap(&inner, 1480, &settings()),
            Err(EncapError::Drop(DropReason::TunnelLoop))
        );
    }

    #[test]
    fn malformed_inner() {
        let s = settings();
        let mut ids = IdentGenerator::new(SEED);
        let good = Inner::default().with_headroom();
        let malformed = Err(EncapError::Drop(DropReason::MalformedInner));
        let mut cases: Vec<(Vec<u8>, usize)> = Vec::new();
        // Version 6, IHL 4, total length too long and too short.
        for (at, value) in [(0, 0x65), (0, 0x44), (3, 85), (3, 83)] {
            let mut b = good.clone();
            b[HEADROOM + at] = value;
            cases.push((b, HEADROOM));
        }
        let mut short = Inner {
            len: 40,
            ..Inner::default()
        }
        .with_headroom();
        short[HEADROOM] = 0x4f; // IHL 60 past the end of a 40-byte packet
        cases.push((short, HEADROOM));
        cases.push((good[..HEADROOM + 19].to_vec(), HEADROOM)); // truncated
        cases.push((good[..HEADROOM + 83].to_vec(), HEADROOM)); // shorter than total length
        cases.push((good.clone(), HEADROOM - 1)); // no headroom
        cases.push((good.clone(), good.len() + 1)); // past the end
        cases.push((good[..HEADROOM].to_vec(), HEADROOM)); // nothing
        for (mut b, start) in cases {
            assert_eq!(
                encapsulate(&mut b, start, NODE_B, 1480, &s, &mut ids),
                malformed,
                "{b:02x?} at {start}"
            );
        }
    }

    #[test]
    fn extra_headroom_is_left_alone() {
        let mut buf = vec![0xaa; 100];
        buf.extend(Inner::default().bytes());
        let mut ids = IdentGenerator::new(SEED);
        let r = encapsulate(&mut buf, 100, NODE_B, 1480, &settings(), &mut ids).expect("ok");
        assert_eq!(r, 80..buf.len());
        assert!(buf[..80].iter().all(|&b| b == 0xaa));
        assert!(checksum_ok(&buf[80..]));
    }

    #[test]
    fn ids_count_per_destination() {
        let mut ids = IdentGenerator::new(1);
        let a: Vec<u16> = (0..5).map(|_| ids.next(NODE_A)).collect();
        let b0 = ids.next(NODE_B);
        let a5 = ids.next(NODE_A);
        for w in a.windows(2) {
            assert_eq!(w[1], w[0].wrapping_add(1));
        }
        assert_eq!(
            a5,
            a[4].wrapping_add(1),
            "another destination does not advance A"
        );
        let _ = b0;
        // Different seeds start elsewhere.
        let mut other = IdentGenerator::new(2);
        let firsts: Vec<u16> = (0..8u8)
            .map(|i| other.next(Ipv4Addr::new(172, 16, 0, i)))
            .collect();
        let mut again = IdentGenerator::new(1);
        let firsts1: Vec<u16> = (0..8u8)
            .map(|i| again.next(Ipv4Addr::new(172, 16, 0, i)))
            .collect();
        assert_ne!(firsts, firsts1);
    }

    #[test]
    fn every_packet_takes_an_id_even_with_df() {
        let mut ids = IdentGenerator::new(SEED);
        let mut ids_ref = IdentGenerator::new(SEED);
        for _ in 0..3 {
            let mut buf = Inner::default().with_headroom();
            encapsulate(&mut buf, HEADROOM, NODE_B, 1480, &settings(), &mut ids).expect("ok");
            let id = u16::from_be_bytes([buf[4], buf[5]]);
            assert_eq!(id, ids_ref.next(NODE_B));
        }
    }
}
