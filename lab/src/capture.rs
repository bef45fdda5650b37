//! Decoding a packet capture of the underlay: both IP layers of IPIP.
//!
//! [`crate::lab`] captures node1's underlay with `tcpdump -w` and prints
//! each IPIP packet the way the seed article's Wireshark screenshot shows it:
//! the outer header (node to node, protocol 4) and the inner one (pod to
//! pod).

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use etherparse::{Icmpv4Slice, Icmpv4Type, Ipv4HeaderSlice, TcpHeaderSlice, UdpHeaderSlice};
use pcap_file::DataLink;
use pcap_file::pcap::PcapReader;

/// One IPv4 layer of a captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpLayer {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// Total length.
    pub len: u16,
    /// Identification.
    pub id: u16,
    /// Don't-fragment flag.
    pub df: bool,
}

/// A decoded underlay packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Capture time since the first packet.
    pub time: Duration,
    /// Capture time since the Unix epoch, as the capture stamped it (the
    /// kernel's realtime clock).
    pub timestamp: Duration,
    /// The outer (underlay) header.
    pub outer: IpLayer,
    /// The inner (overlay) header, for IPIP packets.
    pub inner: Option<IpLayer>,
    /// What the innermost payload is, e.g. `ICMP echo request id=7 seq=1`.
    pub payload: String,
}

impl CapturedPacket {
    /// Whether this is an IPIP packet (outer protocol 4 with an inner IPv4 header).
    pub fn is_ipip(&self) -> bool {
        self.outer.protocol == 4 && self.inner.is_some()
    }

    /// The innermost IP layer: the inner header of IPIP, else the outer one
    /// (a packet routed natively, without encapsulation).
    pub fn innermost(&self) -> &IpLayer {
        self.inner.as_ref().unwrap_or(&self.outer)
    }

    /// How many IP layers the packet has: 2 for IPIP, 1 otherwise.
    pub fn ip_layers(&self) -> usize {
        1 + usize::from(self.inner.is_some())
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        4 => "IPIP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        n => format!("proto {n}"),
    }
}

impl fmt::Display for IpLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPv4 {} > {}  proto {} ({})  ttl {}  len {}  id {:#06x}{}",
            self.src,
            self.dst,
            self.protocol,
            protocol_name(self.protocol),
            self.ttl,
            self.len,
            self.id,
            if self.df { "  DF" } else { "" }
        )
    }
}

impl fmt::Display for CapturedPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>10.6}s  outer: {}",
            self.time.as_secs_f64(),
            self.outer
        )?;
        if let Some(inner) = &self.inner {
            writeln!(f, "             inner: {inner}")?;
        }
        write!(f, "             data:  {}", self.payload)
    }
}

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened.
    #[error("cannot open capture {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a pcap file tunl can read.
    #[error("cannot read capture {path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Reads a pcap file (Ethernet, Linux cooked or raw IP link type) and decodes
/// every IPv4 packet in it. Packets that are not IPv4 are skipped.
pub fn read_pcap(path: &Path) -> Result<Vec<CapturedPacket>, CaptureError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| CaptureError::Open {
        path: name.clone(),
        source,
    })?;
    let mut reader = PcapReader::new(BufReader::new(file)).map_err(|e| CaptureError::Format {
        path: name.clone(),
        message: e.to_string(),
    })?;
    let link = reader.header().datalink;
    let mut out = Vec::new();
    let mut first: Option<Duration> = None;
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.map_err(|e| CaptureError::Format {
            path: name.clone(),
            message: e.to_string(),
        })?;
        let t0 = *first.get_or_insert(pkt.timestamp);
        let Some(ip) = ip_payload(link, &pkt.data) else {
            continue;
        };
        if let Some(mut p) = decode_ipv4(ip) {
            p.time = pkt.timestamp.saturating_sub(t0);
            p.timestamp = pkt.timestamp;
            out.push(p);
        }
    }
    Ok(out)
}

/// The IPv4 packet inside a link-layer frame.
fn ip_payload(link: DataLink, frame: &[u8]) -> Option<&[u8]> {
    let (ethertype, payload) = match link {
        DataLink::ETHERNET => {
            let mut et = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
            let mut off = 14;
            if et == 0x8100 {
                et = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
                off = 18;
            }
            (et, frame.get(off..)?)
        }
        DataLink::LINUX_SLL => (
            u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]),
            frame.get(16..)?,
        ),
        DataLink::LINUX_SLL2 => (
            u16::from_be_bytes([*frame.first()?, *frame.get(1)?]),
            frame.get(20..)?,
        ),
        DataLink::RAW | DataLink::IPV4 => (0x0800, frame),
        _ => return None,
    };
    (ethertype == 0x0800).then_some(payload)
}

fn layer(h: &Ipv4HeaderSlice<'_>) -> IpLayer {
    IpLayer {
        src: h.source_addr(),
        dst: h.destination_addr(),
        protocol: h.protocol().0,
        ttl: h.ttl(),
        len: h.total_len(),
        id: h.identification(),
        df: h.dont_fragment(),
    }
}

/// Decodes one IPv4 packet: the outer header, an inner IPv4 header when the
/// protocol is 4, and a one-line summary of the innermost payload.
pub fn decode_ipv4(packet: &[u8]) -> Option<CapturedPacket> {
    let outer = Ipv4HeaderSlice::from_slice(packet).ok()?;
    let rest = packet.get(outer.slice().len()..)?;
    let (inner, payload) = if outer.protocol().0 == 4 {
        match Ipv4HeaderSlice::from_slice(rest) {
            Ok(inner) => {
                let data = rest.get(inner.slice().len()..).unwrap_or(&[]);
                (Some(layer(&inner)), describe(inner.protocol().0, data))
            }
            Err(_) => (None, "malformed inner header".to_owned()),
        }
    } else {
        (None, describe(outer.protocol().0, rest))
    };
    Some(CapturedPacket {
        time: Duration::ZERO,
        timestamp: Duration::ZERO,
        outer: layer(&outer),
        inner,
        payload,
    })
}

fn describe(protocol: u8, data: &[u8]) -> String {
    match protocol {
        1 => match Icmpv4Slice::from_slice(data) {
            Ok(icmp) => match icmp.icmp_type() {
                Icmpv4Type::EchoRequest(e) => {
                    format!("ICMP echo request id={} seq={}", e.id, e.seq)
                }
                Icmpv4Type::EchoReply(e) => format!("ICMP echo reply id={} seq={}", e.id, e.seq),
                other => format!("ICMP {other:?}"),
            },
            Err(_) => "ICMP (truncated)".to_owned(),
        },
        6 => match TcpHeaderSlice::from_slice(data) {
            Ok(tcp) => {
                let mut flags = String::new();
                for (set, c) in [
                    (tcp.syn(), 'S'),
                    (tcp.fin(), 'F'),
                    (tcp.rst(), 'R'),
                    (tcp.psh(), 'P'),
                    (tcp.ack(), '.'),
                ] {
                    if set {
                        flags.push(c);
                    }
                }
                format!(
                    "TCP {} > {} [{}] seq={} len={}",
                    tcp.source_port(),
                    tcp.destination_port(),
                    flags,
                    tcp.sequence_number(),
                    data.len().saturating_sub(tcp.slice().len())
                )
            }
            Err(_) => "TCP (truncated)".to_owned(),
        },
        17 => match UdpHeaderSlice::from_slice(data) {
            Ok(udp) => format!(
                "UDP {} > {} len={}",
                udp.source_port(),
                udp.destination_port(),
                udp.length().saturating_sub(8)
            ),
            Err(_) => "UDP (truncated)".to_owned(),
        },
        p => format!("{} payload, {} bytes", protocol_name(p), data.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum(h: &mut [u8]) {
        h[10] = 0;
        h[11] = 0;
        let mut sum: u32 = h
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
        let len = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, ttl, proto, 0, 0];
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        checksum(&mut h);
        h.extend_from_slice(payload);
        h
    }

    #[test]
    fn decodes_both_layers_of_the_seed_ping() {
        let icmp = [8, 0, 0, 0, 0, 7, 0, 1];
        let inner = ipv4([10, 20, 105, 215], [10, 20, 42, 31], 1, 63, &icmp);
        let outer = ipv4([172, 16, 36, 5], [172, 16, 35, 4], 4, 63, &inner);
        let p = decode_ipv4(&outer).unwrap();
        assert!(p.is_ipip());
        assert_eq!(p.outer.src, Ipv4Addr::new(172, 16, 36, 5));
        assert_eq!(p.outer.protocol, 4);
        let i = p.inner.as_ref().unwrap();
        assert_eq!(i.dst, Ipv4Addr::new(10, 20, 42, 31));
        assert_eq!(i.ttl, 63);
        assert_eq!(p.payload, "ICMP echo request id=7 seq=1");
        assert_eq!(p.ip_layers(), 2);
        assert_eq!(p.innermost().dst, Ipv4Addr::new(10, 20, 42, 31));
        let native = decode_ipv4(&inner).unwrap();
        assert_eq!(native.ip_layers(), 1);
        assert_eq!(native.innermost().src, Ipv4Addr::new(10, 20, 105, 215));
        let text = p.to_string();
        assert!(text.contains("172.16.36.5 > 172.16.35.4"), "{text}");
        assert!(text.contains("10.20.105.215 > 10.20.42.31"), "{text}");
    }

    #[test]
    fn garbage_is_not_a_packet() {
        assert!(decode_ipv4(&[0x45, 0, 0]).is_none());
        assert!(ip_payload(DataLink::ETHERNET, &[0; 5]).is_none());
    }
}
