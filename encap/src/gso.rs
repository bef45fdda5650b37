//! The virtio-net header of a TUN device with `IFF_VNET_HDR`, and the GSO
//! arithmetic around it: how a TCP super-packet is described for one write,
//! and how many wire packets a written frame stands for.
//!
//! `struct virtio_net_hdr` (linux/virtio_net.h) is ten bytes: `flags`,
//! `gso_type`, then four 16-bit fields `hdr_len`, `gso_size`, `csum_start`,
//! `csum_offset` in the host's byte order (TUN's default on little-endian
//! hosts; tun-rs does the same). Nothing here does I/O: the caller owns the
//! frame and writes it.

use crate::checksum;
use crate::ipv4::{IPV4_HEADER_LEN, PROTOCOL_TCP};

/// IPv4's protocol number for UDP.
const PROTOCOL_UDP: u8 = 17;

/// Length of `struct virtio_net_hdr`, the header in front of every packet
/// read from or written to a TUN device with `IFF_VNET_HDR`.
pub const VIRTIO_NET_HDR_LEN: usize = 10;

/// `flags` bit of the virtio-net header asking the kernel to complete the
/// checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;

/// `gso_type` of a TCP over IPv4 super-packet (`VIRTIO_NET_HDR_GSO_TCPV4`).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;

/// `gso_type` flag of a super-packet with CWR set
/// (`VIRTIO_NET_HDR_GSO_ECN`).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The largest IPv4 packet (the total-length field is 16 bits).
const MAX_PACKET_LEN: usize = 65_535;

/// The shortest packet [`tcp4_gso_header`] looks at: IPv4 and TCP headers
/// without options.
const MIN_TCP4_LEN: usize = IPV4_HEADER_LEN + 20;

/// Offset of the checksum in a TCP header (`csum_offset`).
const TCP_CHECKSUM_OFFSET: usize = 16;

/// Prepares an IPv4 TCP super-packet `pkt` (longer than `mtu`, e.g. coalesced
/// by the underlay's GRO) for one GSO write to TUN: fills the virtio-net
/// header `hdr` (TCPV4, NEEDS_CSUM, segments of at most `mtu` bytes), seeds
/// the TCP checksum with the pseudo-header sum as `CHECKSUM_PARTIAL` wants,
/// and fixes the IPv4 total length and header checksum. Returns the number
/// of segments, or `None` when `pkt` is not an unfragmented IPv4 TCP packet
/// of at most 65535 bytes whose headers leave room for payload within `mtu`,
/// or `hdr` is shorter than [`VIRTIO_NET_HDR_LEN`]. On `None`, neither `pkt`
/// nor `hdr` is modified.
///
/// The segment size is `mtu` minus the headers: the kernel does not tell a
/// raw socket the original segment size, and TCP does not care how the
/// stream is cut as long as every segment fits the path.
pub fn tcp4_gso_header(pkt: &mut [u8], mtu: u16, hdr: &mut [u8]) -> Option<usize> {
    if pkt.len() < MIN_TCP4_LEN || pkt.len() > MAX_PACKET_LEN || hdr.len() < VIRTIO_NET_HDR_LEN {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    if pkt[0] >> 4 != 4 || ihl < IPV4_HEADER_LEN || pkt[9] != PROTOCOL_TCP || frag & 0x3fff != 0 {
        return None;
    }
    let doff = usize::from(pkt.get(ihl + 12)? >> 4) * 4;
    let hdr_len = ihl + doff;
    if doff < 20 || pkt.len() <= hdr_len || usize::from(mtu) <= hdr_len {
        return None;
    }
    let gso_size = usize::from(mtu) - hdr_len;
    let payload = pkt.len() - hdr_len;
    // pkt.len() <= MAX_PACKET_LEN was checked above.
    let len = pkt.len() as u16;
    pkt[2..4].copy_from_slice(&len.to_be_bytes());
    pkt[10..12].fill(0);
    let ip_csum = checksum::checksum(&pkt[..ihl]);
    pkt[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    // Pseudo-header sum (source, destination, protocol, TCP length), folded
    // and not complemented.
    let tcp_len = (pkt.len() - ihl) as u64;
    let psum = checksum::accumulate(&pkt[12..20]) + u64::from(PROTOCOL_TCP) + tcp_len;
    let seed = checksum::fold(psum);
    let csum_at = ihl + TCP_CHECKSUM_OFFSET;
    pkt[csum_at..csum_at + 2].copy_from_slice(&seed.to_be_bytes());
    let cwr = pkt[ihl + 13] & 0x80 != 0;
    hdr[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    hdr[1] = VIRTIO_NET_HDR_GSO_TCPV4 | if cwr { VIRTIO_NET_HDR_GSO_ECN } else { 0 };
    // hdr_len < mtu and gso_size < mtu: both fit 16 bits.
    hdr[2..4].copy_from_slice(&(hdr_len as u16).to_ne_bytes());
    hdr[4..6].copy_from_slice(&(gso_size as u16).to_ne_bytes());
    hdr[6..8].copy_from_slice(&(ihl as u16).to_ne_bytes());
    hdr[8..10].copy_from_slice(&(TCP_CHECKSUM_OFFSET as u16).to_ne_bytes());
    Some(payload.div_ceil(gso_size))
}

/// How many wire packets a frame (virtio-net header, then the packet)
/// written to TUN stands for: 1, or the segment count of a GSO super-packet
/// (its payload after `hdr_len`, in `gso_size` pieces). A frame too short to
/// hold a virtio-net header, or one with `gso_size` 0, counts as 1.
pub fn gso_segments(frame: &[u8]) -> usize {
    let Some(hdr) = frame.first_chunk::<VIRTIO_NET_HDR_LEN>() else {
        return 1;
    };
    let gso_type = hdr[1] & !VIRTIO_NET_HDR_GSO_ECN;
    if gso_type == 0 {
        return 1;
    }
    let hdr_len = usize::from(u16::from_ne_bytes([hdr[2], hdr[3]]));
    let gso_size = usize::from(u16::from_ne_bytes([hdr[4], hdr[5]]));
    let payload = (frame.len() - VIRTIO_NET_HDR_LEN).saturating_sub(hdr_len);
    if gso_size == 0 {
        1
    } else {
        payload.div_ceil(gso_size).max(1)
    }
}

/// Whether a packet longer than the TUN MTU is written to TUN as it is (one
/// plain write, no GSO), for the node's stack to fragment or answer
/// frag-needed about, as it does after the kernel's tunl0: an unfragmented
/// IPv4 packet of at most 65535 bytes whose total length is its size, that
/// is not TCP (a TCP super-packet is written as GSO, [`tcp4_gso_header`])
/// and, if UDP, is one datagram: its UDP length is the payload's and its
/// checksum is 0 (none) or verifies over the whole packet. A UDP
/// super-packet the underlay's GRO coalesced (`rx-udp-gro-forwarding`)
/// keeps the first datagram's checksum, fails that test and is refused: its
/// datagram boundaries are lost.
pub fn oversize_writes_as_is(pkt: &[u8]) -> bool {
    let Some(h) = pkt.first_chunk::<IPV4_HEADER_LEN>() else {
        return false;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let frag = u16::from_be_bytes([h[6], h[7]]);
    if h[0] >> 4 != 4 || ihl < IPV4_HEADER_LEN || total != pkt.len() || h[9] == PROTOCOL_TCP {
        return false;
    }
    if h[9] != PROTOCOL_UDP || frag & 0x3fff != 0 {
        return true;
    }
    let Some(udp) = pkt.get(ihl..).filter(|u| u.len() >= 8) else {
        return false;
    };
    if usize::from(u16::from_be_bytes([udp[4], udp[5]])) != udp.len() {
        return false;
    }
    if udp[6..8] == [0, 0] {
        return true;
    }
    let pseudo = checksum::accumulate(&h[12..20]) + u64::from(PROTOCOL_UDP) + udp.len() as u64;
    checksum::fold(pseudo + checksum::accumulate(udp)) == 0xffff
}

/// How many bytes the wire packets of a frame (virtio-net header, then the
/// packet) written to TUN add up to: the packet's length for a plain frame;
/// for a GSO super-packet of [`gso_segments`] segments, its length plus the
/// headers (`hdr_len`) every segment after the first repeats. For a frame
/// that GRO coalesced, that is the sum of the packets coalesced. A frame
/// too short to hold a virtio-net header counts its bytes past it (none).
pub fn gso_packet_bytes(frame: &[u8]) -> usize {
    let Some(hdr) = frame.first_chunk::<VIRTIO_NET_HDR_LEN>() else {
        return 0;
    };
    let len = frame.len() - VIRTIO_NET_HDR_LEN;
    let segments = gso_segments(frame);
    if segments <= 1 {
        return len;
    }
    let hdr_len = usize::from(u16::from_ne_bytes([hdr[2], hdr[3]]));
    len + (segments - 1) * hdr_len
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use etherparse::{IpNumber, Ipv4Header, TcpHeader};

    use super::*;
    use crate::testutil::checksum_ok;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A TCP packet built with etherparse: `ip_options` 4-byte words of IPv4
    /// options, `tcp_options` bytes of TCP options (a multiple of 4),
    /// `payload` bytes of payload. The IPv4 total length and checksum are
    /// left stale (0), as after decapsulating a GRO super-packet they may be.
    fn tcp_packet(ip_options: usize, tcp_options: usize, payload: usize, cwr: bool) -> Vec<u8> {
        let mut tcp = TcpHeader::new(40_000, 80, 0x0102_0304, 512);
        tcp.ack = true;
        tcp.acknowledgment_number = 0x0a0b_0c0d;
        tcp.cwr = cwr;
        tcp.set_options_raw(&vec![1; tcp_options])
            .expect("NOP options");
        let mut ip =
            Ipv4Header::new(0, 63, IpNumber::TCP, SRC.octets(), DST.octets()).expect("fits");
        ip.dont_fragment = true;
        ip.options = vec![1; 4 * ip_options][..].try_into().expect("options");
        let mut v = ip.to_bytes().to_vec();
        v[2..4].fill(0);
        v[10..12].fill(0);
        v.extend_from_slice(&tcp.to_bytes());
        v.extend((0..payload).map(|i| (i * 7) as u8));
        v
    }

    /// The 16-bit fields of a virtio-net header, host byte order.
    fn fields(hdr: &[u8]) -> [u16; 4] {
        [2, 4, 6, 8].map(|i| u16::from_ne_bytes([hdr[i], hdr[i + 1]]))
    }

    /// What the kernel does with the seed for `CHECKSUM_PARTIAL`: sums from
    /// `csum_start` to the end and stores the complement at `csum_offset`.
    /// The result must be the TCP checksum etherparse computes.
    fn assert_seed_completes(pkt: &[u8], ihl: usize) {
        let mut done = pkt.to_vec();
        let sum = !checksum::sum(&done[ihl..]);
        done[ihl + 16..ihl + 18].copy_from_slice(&sum.to_be_bytes());
        let (ip, rest) = Ipv4Header::from_slice(&done).expect("IPv4");
        let (tcp, payload) = TcpHeader::from_slice(rest).expect("TCP");
        let want = tcp.calc_checksum_ipv4(&ip, payload).expect("fits");
        assert_eq!(
            tcp.checksum, want,
            "seeded checksum completes to the real one"
        );
    }

    #[test]
    fn tcp_super_packet() {
        // 20 + 20 header bytes and 3000 of payload, written to a 1480 MTU:
        // segments of 1440 bytes of payload, 1440 + 1440 + 120.
        let mut pkt = tcp_packet(0, 0, 3000, false);
        let mut hdr = [0xaa; VIRTIO_NET_HDR_LEN];
        assert_eq!(tcp4_gso_header(&mut pkt, 1480, &mut hdr), Some(3));
        assert_eq!(hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4);
        // hdr_len, gso_size, csum_start (the TCP header), csum_offset.
        assert_eq!(fields(&hdr), [40, 1440, 20, 16]);
        assert_eq!(u16::from_be_bytes([pkt[2], pkt[3]]), 3040);
        assert!(checksum_ok(&pkt));
        // The pseudo-header: 0a00 + 0001 + 0a00 + 0002 + protocol 6 + TCP
        // length 3020 (0bcc) = 1fd5.
        assert_eq!(u16::from_be_bytes([pkt[36], pkt[37]]), 0x1fd5);
        assert_seed_completes(&pkt, 20);

        let frame: Vec<u8> = hdr.iter().chain(&pkt).copied().collect();
        assert_eq!(gso_segments(&frame), 3);
    }

    #[test]
    fn options_and_exact_multiple() {
        // IHL 6 and a 32-byte TCP header: 56 header bytes; at MTU 1500 the
        // segments carry 1444 bytes, and 2888 bytes are exactly two.
        let mut pkt = tcp_packet(1, 12, 2888, false);
        let mut hdr = [0; VIRTIO_NET_HDR_LEN];
        assert_eq!(tcp4_gso_header(&mut pkt, 1500, &mut hdr), Some(2));
        assert_eq!(fields(&hdr), [56, 1444, 24, 16]);
        assert!(checksum_ok(&pkt));
        assert_seed_completes(&pkt, 24);
        // One more byte is a third segment.
        let mut pkt = tcp_packet(1, 12, 2889, false);
        assert_eq!(tcp4_gso_header(&mut pkt, 1500, &mut hdr), Some(3));
    }

    #[test]
    fn cwr_sets_the_ecn_flag() {
        let mut pkt = tcp_packet(0, 0, 3000, true);
        let mut hdr = [0; VIRTIO_NET_HDR_LEN];
        assert_eq!(tcp4_gso_header(&mut pkt, 1480, &mut hdr), Some(3));
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN);
        let frame: Vec<u8> = hdr.iter().chain(&pkt).copied().collect();
        assert_eq!(gso_segments(&frame), 3, "the ECN flag is not a type");
    }

    #[test]
    fn refusals_leave_the_bytes_alone() {
        let good = tcp_packet(0, 0, 3000, false);
        let mut cases: Vec<(&str, Vec<u8>, u16, usize)> = Vec::new();
        let mut edit = |what, at: usize, value: u8| {
            let mut p = good.clone();
            p[at] = value;
            cases.push((what, p, 1480, VIRTIO_NET_HDR_LEN));
        };
        edit("UDP", 9, 17);
        edit("more fragments", 6, 0x20);
        edit("fragment offset", 7, 1);
        edit("IPv6", 0, 0x65);
        edit("IHL below 5", 0, 0x44);
        edit("TCP data offset below 5", 32, 0x40);
        let mut add = |what, p: Vec<u8>, mtu, hdr_len| cases.push((what, p, mtu, hdr_len));
        add("shorter than 40 bytes", good[..39].to_vec(), 1480, 10);
        add("headers only", good[..40].to_vec(), 1480, 10);
        add("headers fill the MTU", good.clone(), 40, 10);
        add("short virtio-net header", good.clone(), 1480, 9);
        add(
            "over 65535 bytes",
            tcp_packet(0, 0, 65_535 - 39, false),
            1480,
            10,
        );
        let mut past_end = good[..40].to_vec();
        past_end[0] = 0x4f; // a 60-byte IPv4 header in a 40-byte packet
        add("TCP header past the end", past_end, 1480, 10);
        for (what, mut pkt, mtu, hdr_len) in cases {
            let before = pkt.clone();
            let mut hdr = vec![0xaa; hdr_len];
            assert_eq!(tcp4_gso_header(&mut pkt, mtu, &mut hdr), None, "{what}");
            assert_eq!(pkt, before, "{what}: packet modified");
            assert!(hdr.iter().all(|&b| b == 0xaa), "{what}: header written");
        }
        // Only MF and the offset make a fragment: DF alone is fine.
        let mut df = good.clone();
        df[6] = 0x40;
        let mut hdr = [0; VIRTIO_NET_HDR_LEN];
        assert_eq!(tcp4_gso_header(&mut df, 1480, &mut hdr), Some(3));
    }

    #[test]
    fn segments_of_other_frames() {
        let frame = |gso_type: u8, hdr_len: u16, gso_size: u16, pkt_len: usize| {
            let mut f = vec![0; VIRTIO_NET_HDR_LEN + pkt_len];
            f[1] = gso_type;
            f[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
            f[4..6].copy_from_slice(&gso_size.to_ne_bytes());
            f
        };
        // Not GSO (gso_type 0): one packet, whatever the sizes say.
        assert_eq!(gso_segments(&frame(0, 40, 100, 4000)), 1);
        // UDP (gso_type 5, USO): 40 bytes of headers, 1000 of payload in
        // pieces of 300.
        assert_eq!(gso_segments(&frame(5, 40, 300, 1040)), 4);
        // A size of 0, or no payload past hdr_len: one packet.
        assert_eq!(gso_segments(&frame(1, 40, 0, 4000)), 1);
        assert_eq!(gso_segments(&frame(1, 60, 1000, 40)), 1);
        // Too short for a header.
        assert_eq!(gso_segments(&[]), 1);
        assert_eq!(gso_segments(&[0, 1, 0, 0, 1]), 1);
    }

    /// A UDP packet of `payload` bytes built with etherparse (checksums
    /// right).
    fn udp_packet(payload: usize) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4(SRC.octets(), DST.octets(), 63)
            .udp(4000, 5000)
            .write(&mut v, &(0..payload).map(|i| i as u8).collect::<Vec<_>>())
            .expect("fits");
        v
    }

    #[test]
    fn which_oversize_packets_are_written_as_they_are() {
        let udp = udp_packet(3000);
        assert!(oversize_writes_as_is(&udp), "one whole datagram");
        let mut no_checksum = udp.clone();
        no_checksum[26..28].fill(0);
        assert!(oversize_writes_as_is(&no_checksum), "UDP checksum 0: none");
        // A UDP GRO super-packet: the first datagram's checksum over all.
        let mut coalesced = udp.clone();
        coalesced[1500] ^= 0x5a;
        assert!(
            !oversize_writes_as_is(&coalesced),
            "checksum does not verify"
        );
        let mut udp_len = udp.clone();
        udp_len[24..26].copy_from_slice(&1000u16.to_be_bytes());
        assert!(
            !oversize_writes_as_is(&udp_len),
            "UDP length not the payload's"
        );
        let mut icmp = udp.clone();
        icmp[9] = 1;
        assert!(
            oversize_writes_as_is(&icmp),
            "not UDP: no datagram to check"
        );
        let mut tcp = tcp_packet(0, 0, 3000, false);
        let total = (tcp.len() as u16).to_be_bytes();
        tcp[2..4].copy_from_slice(&total);
        assert!(!oversize_writes_as_is(&tcp), "TCP goes as GSO");
        let mut fragment = udp.clone();
        fragment[6] |= 0x20;
        assert!(
            oversize_writes_as_is(&fragment),
            "a first fragment: as it is"
        );
        assert!(
            !oversize_writes_as_is(&udp[..udp.len() - 1]),
            "total length"
        );
        assert!(!oversize_writes_as_is(&udp[..19]));
        let mut v6 = udp.clone();
        v6[0] = 0x65;
        assert!(!oversize_writes_as_is(&v6));
    }

    #[test]
    fn bytes_of_the_packets_a_frame_stands_for() {
        let frame = |gso_type: u8, hdr_len: u16, gso_size: u16, pkt_len: usize| {
            let mut f = vec![0; VIRTIO_NET_HDR_LEN + pkt_len];
            f[1] = gso_type;
            f[2..4].copy_from_slice(&hdr_len.to_ne_bytes());
            f[4..6].copy_from_slice(&gso_size.to_ne_bytes());
            f
        };
        assert_eq!(gso_packet_bytes(&frame(0, 40, 100, 4000)), 4000);
        // Three TCP packets of 40 + 1440 bytes coalesced: 40 + 3 * 1440.
        assert_eq!(
            gso_packet_bytes(&frame(1, 40, 1440, 40 + 3 * 1440)),
            3 * 1480
        );
        // The last segment shorter: 40 + 1440 + 40 + 100.
        assert_eq!(gso_packet_bytes(&frame(1, 40, 1440, 40 + 1540)), 1620);
        // UDP: four datagrams of 28 + 250.
        assert_eq!(gso_packet_bytes(&frame(5, 28, 250, 28 + 1000)), 4 * 278);
        assert_eq!(gso_packet_bytes(&[0; 5]), 0);
        // What tcp4_gso_header describes adds up to its segments.
        let mut pkt = tcp_packet(0, 0, 3000, false);
        let mut hdr = [0; VIRTIO_NET_HDR_LEN];
        assert_eq!(tcp4_gso_header(&mut pkt, 1480, &mut hdr), Some(3));
        let frame: Vec<u8> = hdr.iter().chain(&pkt).copied().collect();
        assert_eq!(gso_packet_bytes(&frame), 3000 + 3 * 40);
    }
}
