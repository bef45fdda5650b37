//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! [`sum`] reads four bytes per step into a 64-bit accumulator, which the
//! compiler turns into wide vector adds; the carries are folded once at the
//! end. A 64 KiB buffer adds at most 2^14 words of 2^32, far from overflow.

/// Folds a wide one's complement accumulator to 16 bits (not inverted).
/// Branchless: each step adds the carries back in.
#[inline(always)]
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc >> 32) + (acc & 0xffff_ffff); // < 2^33
    acc = (acc >> 32) + (acc & 0xffff_ffff); // < 2^32
    acc = (acc >> 16) + (acc & 0xffff); // < 2^17
    acc = (acc >> 16) + (acc & 0xffff); // <= 0xffff
    acc as u16
}

/// The one's complement sum of `data` read as big-endian 16-bit words, folded
/// to 16 bits and not inverted. An odd trailing byte is padded with a zero.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    fold(accumulate(data))
}

/// The unfolded sum of `data` as big-endian 16-bit words; several results may
/// be added before one [`fold`], as long as each slice starts at an even offset
/// of the checksummed data.
#[inline]
pub fn accumulate(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// True when an IPv4 header (IHL × 4 bytes, checksum included) verifies;
/// unrolled for the common 20-byte header.
#[inline(always)]
pub fn verify_header(header: &[u8]) -> bool {
    match header.first_chunk::<20>() {
        Some(h) if header.len() == 20 => {
            let mut acc: u64 = 0;
            for i in 0..5 {
                let w = [h[4 * i], h[4 * i + 1], h[4 * i + 2], h[4 * i + 3]];
                acc += u64::from(u32::from_be_bytes(w));
            }
            fold(acc) == 0xffff
        }
        _ => verify(header),
    }
}

/// The checksum to store in a header: the inverted one's complement sum of
/// `data` (with the checksum field itself zeroed by the caller).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// True when `data`, checksum field included, sums to 0xffff (RFC 1071 §1).
#[inline]
pub fn verify(data: &[u8]) -> bool {
    sum(data) == 0xffff
}

/// Updates a stored checksum after one 16-bit word of the covered data
/// changed from `old` to `new` (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline]
pub fn update(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!checksum) + u64::from(!old) + u64::from(new))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// RFC 1071 done the slow way: 16 bits at a time, fold after every add.
    fn naive(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for i in (0..data.len()).step_by(2) {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |&b| u32::from(b));
            acc += hi | lo;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // Wikipedia's IPv4 header checksum example: checksum b861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
        hdr[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert!(verify(&hdr));
        assert!(verify_header(&hdr));
        hdr[8] = 0x3f;
        assert!(!verify(&hdr));
        assert!(!verify_header(&hdr));
    }

    #[test]
    fn fold_extremes() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x1_0000_0000), 1);
        for acc in [
            0x1234_5678_9abc_def0u64,
            0x8000_0000_0000_0001,
            0xffff_0000_ffff_0001,
        ] {
            let mut slow = acc;
            while slow > 0xffff {
                slow = (slow >> 16) + (slow & 0xffff);
            }
            assert_eq!(u64::from(fold(acc)), slow, "{acc:x}");
        }
    }

    #[test]
    fn empty_and_odd() {
        assert_eq!(checksum(&[]), 0xffff);
        assert_eq!(checksum(&[0x12]), !0x1200);
        assert_eq!(checksum(&[0x12, 0x34, 0x56]), !(0x1234u16 + 0x5600));
    }

    #[test]
    fn all_ones_max_length() {
        let data = vec![0xffu8; 65_535 + 20];
        assert_eq!(checksum(&data), naive(&data));
    }

    proptest! {
        #[test]
        fn matches_naive(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(checksum(&data), naive(&data));
            prop_assert_eq!(verify_header(&data), naive(&data) == 0);
        }

        #[test]
        fn incremental_matches_full(
            mut data in proptest::collection::vec(any::<u8>(), 2..64),
            word in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            if data.len() % 2 == 1 {
                data.push(0);
            }
            let i = word.index(data.len() / 2) * 2;
            let before = checksum(&data);
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            data[i..i + 2].copy_from_slice(&new.to_be_bytes());
            let after = checksum(&data);
            let inc = update(before, old, new);
            // One's complement has two zeros; both checksums must verify equally.
            prop_assert!(inc == after || (inc == 0xffff && after == 0) || (inc == 0 && after == 0xffff));
        }
    }
}
