//! A read/write view of an IPv4 header over a caller-owned byte buffer.
//!
//! [`Ipv4Packet::new_checked`] checks once that the buffer holds a whole
//! header (at least 20 bytes, version 4, IHL ≥ 5 and within the buffer);
//! after that no accessor panics. The total length field is read but not
//! enforced, because the rules differ by caller (GRO super-packets carry 0).

use std::fmt;
use std::net::Ipv4Addr;

use crate::checksum;

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;

/// IP protocol number of IPv4-in-IPv4 (IPIP).
pub const PROTOCOL_IPIP: u8 = 4;

/// IP protocol number of ICMP.
pub const PROTOCOL_ICMP: u8 = 1;

/// IP protocol number of TCP.
pub(crate) const PROTOCOL_TCP: u8 = 6;

mod field {
    use std::ops::Range;

    pub(crate) const VER_IHL: usize = 0;
    pub(crate) const TOS: usize = 1;
    pub(crate) const LENGTH: Range<usize> = 2..4;
    pub(crate) const IDENT: Range<usize> = 4..6;
    pub(crate) const FLG_OFF: Range<usize> = 6..8;
    pub(crate) const TTL: usize = 8;
    pub(crate) const PROTOCOL: usize = 9;
    pub(crate) const CHECKSUM: Range<usize> = 10..12;
    pub(crate) const SRC: Range<usize> = 12..16;
    pub(crate) const DST: Range<usize> = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// Why a buffer is not an IPv4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer bytes than the header needs (20, or IHL × 4).
    Truncated,
    /// The version field is not 4.
    Version,
    /// The IHL field is below 5.
    HeaderLen,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "truncated IPv4 header",
            Self::Version => "IP version is not 4",
            Self::HeaderLen => "IPv4 header length below 20",
        })
    }
}

impl std::error::Error for ParseError {}

/// The explicit congestion notification codepoint (RFC 3168), the low two
/// bits of the TOS byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Ecn {
    /// Not ECN-capable transport (00).
    NotEct = 0b00,
    /// ECN-capable transport, ECT(1) (01).
    Ect1 = 0b01,
    /// ECN-capable transport, ECT(0) (10).
    Ect0 = 0b10,
    /// Congestion experienced (11).
    Ce = 0b11,
}

impl Ecn {
    /// The codepoint held by the low two bits of `tos`.
    #[inline]
    pub fn from_tos(tos: u8) -> Self {
        match tos & 0b11 {
            0b00 => Self::NotEct,
            0b01 => Self::Ect1,
            0b10 => Self::Ect0,
            _ => Self::Ce,
        }
    }
}

/// Imbue a raw octet buffer with IPv4 packet structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it.
    ///
    /// # Panics
    /// Accessors panic if the buffer is shorter than 20 bytes (or than the IHL
    /// for [`Self::header`] and [`Self::payload`]); use [`Self::new_checked`]
    /// on untrusted bytes.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after checking that it starts with a whole IPv4 header:
    /// at least 20 bytes, version 4, IHL ≥ 5 and IHL × 4 within the buffer.
    ///
    /// # Errors
    /// Checked in this order: [`ParseError::Truncated`] for an empty buffer,
    /// [`ParseError::Version`] when the version is not 4,
    /// [`ParseError::HeaderLen`] when the IHL is below 5, and
    /// [`ParseError::Truncated`] when the buffer is shorter than IHL × 4.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let packet = Self { buffer };
        packet.check()?;
        Ok(packet)
    }

    fn check(&self) -> Result<(), ParseError> {
        let data = self.buffer.as_ref();
        let Some(&ver_ihl) = data.first() else {
            return Err(ParseError::Truncated);
        };
        if ver_ihl >> 4 != 4 {
            return Err(ParseError::Version);
        }
        let header_len = usize::from(ver_ihl & 0x0f) * 4;
        if header_len < IPV4_HEADER_LEN {
            return Err(ParseError::HeaderLen);
        }
        if data.len() < header_len {
            return Err(ParseError::Truncated);
        }
        Ok(())
    }

    /// Consumes the view and returns the buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole underlying buffer.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The version field (4 for a checked view).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL × 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The whole TOS byte (DSCP and ECN).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    /// The DSCP, the high six bits of the TOS byte.
    #[inline]
    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }

    /// The ECN codepoint, the low two bits of the TOS byte.
    #[inline]
    pub fn ecn(&self) -> Ecn {
        Ecn::from_tos(self.tos())
    }

    /// The total length field (header and payload).
    #[inline]
    pub fn total_len(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::LENGTH.start], d[field::LENGTH.start + 1]])
    }

    /// The identification field.
    #[inline]
    pub fn ident(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::IDENT.start], d[field::IDENT.start + 1]])
    }

    #[inline]
    fn flags_offset(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::FLG_OFF.start], d[field::FLG_OFF.start + 1]])
    }

    /// The don't-fragment flag.
    #[inline]
    pub fn df(&self) -> bool {
        self.flags_offset() & FLAG_DF != 0
    }

    /// The more-fragments flag.
    #[inline]
    pub fn mf(&self) -> bool {
        self.flags_offset() & FLAG_MF != 0
    }

    /// The fragment offset in 8-byte units.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        self.flags_offset() & OFFSET_MASK
    }

    /// True when this is a fragment (MF set or a nonzero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_offset() & (FLAG_MF | OFFSET_MASK) != 0
    }

    /// The time-to-live field.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol field.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        let d = self.buffer.as_ref();
        u16::from_be_bytes([d[field::CHECKSUM.start], d[field::CHECKSUM.start + 1]])
    }

    /// The source address.
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        let s = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }

    /// The destination address.
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        let d = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// Everything after the header, to the end of the buffer (the total
    /// length field is not applied).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// True when the header checksum verifies.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify_header(self.header())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the TOS byte without touching the checksum.
    #[inline]
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }

    /// Sets the ECN codepoint and updates the header checksum incrementally.
    #[inline]
    pub fn set_ecn_update_checksum(&mut self, ecn: Ecn) {
        let old_word = u16::from_be_bytes([self.buffer.as_ref()[0], self.tos()]);
        let tos = (self.tos() & !0b11) | ecn as u8;
        self.set_tos(tos);
        let new_word = u16::from_be_bytes([self.buffer.as_ref()[0], tos]);
        let sum = checksum::update(self.checksum(), old_word, new_word);
        self.set_checksum(sum);
    }

    /// Sets the time-to-live field without touching the checksum.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the header checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Recomputes and stores the header checksum.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::checksum(self.header());
        self.set_checksum(sum);
    }

    /// Everything after the header, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// The destination of the IPv4 packet in `packet`, for the route lookup:
/// None unless it is at least 20 bytes with version 4.
#[inline]
pub fn inner_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    match packet {
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
            _,
            _,
            _,
            _,
            a,
            b,
            c,
            d,
            ..,
        ] if ver_ihl >> 4 == 4 => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

/// Writes a 20-byte IPv4 header (no options, checksum filled in) to `out`.
///
/// The checksum is summed from the field values, not re-read from memory.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn write_header(
    out: &mut [u8; IPV4_HEADER_LEN],
    tos: u8,
    total_len: u16,
    ident: u16,
    df: bool,
    ttl: u8,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let flags: u8 = if df { 0x40 } else { 0 };
    let (s, d) = (u32::from(src), u32::from(dst));
    let mut acc = 0x4500
        + u32::from(tos)
        + u32::from(total_len)
        + u32::from(ident)
        + (u32::from(flags) << 8)
        + ((u32::from(ttl) << 8) | u32::from(protocol))
        + (s >> 16)
        + (s & 0xffff)
        + (d >> 16)
        + (d & 0xffff);
    // At most ten 16-bit words: two folds reach 16 bits.
    acc = (acc >> 16) + (acc & 0xffff);
    acc = (acc >> 16) + (acc & 0xffff);
    let sum = (!(acc as u16)).to_be_bytes();
    let len = total_len.to_be_bytes();
    let id = ident.to_be_bytes();
    let s = src.octets();
    let d = dst.octets();
    *out = [
        0x45, tos, len[0], len[1], id[0], id[1], flags, 0, ttl, protocol, sum[0], sum[1], s[0],
        s[1], s[2], s[3], d[0], d[1], d[2], d[3],
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ICMP echo request, 10.20.105.215 -> 10.20.42.31, TTL 63, DF, ID 0x1234.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x3f, 0x01, 0x00, 0x00, 10, 20, 105, 215,
        10, 20, 42, 31,
    ];

    fn fixture() -> [u8; 20] {
        let mut h = HDR;
        let sum = checksum::checksum(&h).to_be_bytes();
        h[10] = sum[0];
        h[11] = sum[1];
        h
    }

    #[test]
    fn getters() {
        let h = fixture();
        let p = Ipv4Packet::new_checked(&h[..]).expect("valid");
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 84);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.df());
        assert!(!p.mf());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 63);
        assert_eq!(p.protocol(), PROTOCOL_ICMP);
        assert_eq!(p.src(), Ipv4Addr::new(10, 20, 105, 215));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 20, 42, 31));
        assert_eq!(p.ecn(), Ecn::NotEct);
        assert!(p.verify_checksum());
        assert!(p.payload().is_empty());
    }

    #[test]
    fn checked_rejects() {
        assert_eq!(Ipv4Packet::new_checked(&[][..]), Err(ParseError::Truncated));
        let mut h = fixture();
        h[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&h[..]), Err(ParseError::Version));
        h[0] = 0x44;
        assert_eq!(Ipv4Packet::new_checked(&h[..]), Err(ParseError::HeaderLen));
        h[0] = 0x46;
        assert_eq!(Ipv4Packet::new_checked(&h[..]), Err(ParseError::Truncated));
        assert_eq!(
            Ipv4Packet::new_checked(&h[..19]),
            Err(ParseError::Truncated)
        );
    }

    #[test]
    fn ecn_setter_keeps_checksum_valid() {
        for ecn in [Ecn::NotEct, Ecn::Ect1, Ecn::Ect0, Ecn::Ce] {
            let mut h = fixture();
            h[1] = 0xb8;
            let mut p = Ipv4Packet::new_checked(&mut h[..]).expect("valid");
            p.fill_checksum();
            p.set_ecn_update_checksum(ecn);
            assert_eq!(p.ecn(), ecn);
            assert_eq!(p.dscp(), 0xb8 >> 2);
            assert!(p.verify_checksum());
        }
    }

    #[test]
    fn inner_destination_checks() {
        let h = fixture();
        assert_eq!(inner_destination(&h), Some(Ipv4Addr::new(10, 20, 42, 31)));
        assert_eq!(inner_destination(&h[..19]), None);
        let mut v6 = h;
        v6[0] = 0x60;
        assert_eq!(inner_destination(&v6), None);
    }

    #[test]
    fn write_header_matches_etherparse() {
        let mut out = [0u8; 20];
        let (src, dst) = (Ipv4Addr::new(172, 16, 36, 5), Ipv4Addr::new(172, 16, 35, 4));
        write_header(&mut out, 0x02, 104, 7, true, 63, PROTOCOL_IPIP, src, dst);
        let e = etherparse::Ipv4HeaderSlice::from_slice(&out).expect("parses");
        assert_eq!(e.header_checksum(), e.to_header().calc_header_checksum());
        assert_eq!(e.total_len(), 104);
        assert_eq!(e.identification(), 7);
        assert!(e.dont_fragment());
        assert_eq!(e.ttl(), 63);
        assert_eq!(e.source_addr(), src);
        assert_eq!(e.destination_addr(), dst);
    }
}
