//! Raw IPIP and ICMP socket tests, each in a private network namespace
//! (needs root).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use common::{PATIENCE, checksum, in_netns, ipip_packet, payload, udp_packet};
use socket2::{Domain, Protocol, Socket, Type};
use tunl_io::{IcmpReceiver, IpipReceiver, IpipSender, PacketBuf, RX_BUF_CAPACITY};

const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 20, 2, 3);

/// Receives into `bufs` until `want` packets arrived; returns them.
fn receive(rx: &mut IpipReceiver, bufs: &mut [PacketBuf], want: usize) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut truncated = 0;
    while out.len() + truncated < want {
        assert!(
            tunl_io::ns::wait_readable(rx, PATIENCE).unwrap(),
            "no IPIP packet ({} of {want} so far)",
            out.len()
        );
        let report = match rx.recv_batch(bufs) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv_batch: {e}"),
        };
        truncated += report.truncated;
        for b in &bufs[..report.received] {
            if !b.is_empty() {
                out.push(b.as_ref().to_vec());
            }
        }
    }
    (out, truncated)
}

#[test]
#[ignore = "needs root: scripts/test"]
fn ipip_batch_round_trips_byte_for_byte() {
    in_netns(|| {
        let mut rx = IpipReceiver::open(4 << 20).expect("open IPIP receiver");
        let mut tx = IpipSender::open(4 << 20).expect("open IPIP sender");
        let sizes = [1, 100, 1000, 1400, 20_000, 60_000];
        let packets: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let inner = udp_packet(
                    POD_A,
                    1000,
                    POD_B,
                    2000,
                    &payload(len, i as u8),
                    i as u16 + 1,
                );
                ipip_packet(LOCAL, LOCAL, &inner, 100 + i as u16)
            })
            .collect();
        let slices: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let report = tx.send_batch(&slices, &[LOCAL; 6]).unwrap();
        assert_eq!(
            (report.sent, report.failed),
            (6, 0),
            "{:?}",
            report.last_error
        );

        let mut bufs: Vec<PacketBuf> = (0..4)
            .map(|_| PacketBuf::with_capacity(RX_BUF_CAPACITY))
            .collect();
        let (got, truncated) = receive(&mut rx, &mut bufs, 6);
        assert_eq!(truncated, 0);
        assert_eq!(got, packets);
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_failing_packet_is_skipped_and_the_batch_goes_on() {
    in_netns(|| {
        let mut rx = IpipReceiver::open(1 << 20).unwrap();
        let mut tx = IpipSender::open(1 << 20).unwrap();
        let unroutable = Ipv4Addr::new(192, 0, 2, 1); // no route in the namespace
        let inner = udp_packet(POD_A, 1, POD_B, 2, b"inner", 7);
        let packets = [
            ipip_packet(LOCAL, LOCAL, &inner, 1),
            ipip_packet(LOCAL, unroutable, &inner, 2),
            ipip_packet(LOCAL, LOCAL, &inner, 3),
        ];
        let slices: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let report = tx.send_batch(&slices, &[LOCAL, unroutable, LOCAL]).unwrap();
        assert_eq!((report.sent, report.failed), (2, 1));
        assert_eq!(
            report.last_error.and_then(|e| e.raw_os_error()),
            Some(libc::ENETUNREACH)
        );
        let mut bufs: Vec<PacketBuf> = (0..4)
            .map(|_| PacketBuf::with_capacity(RX_BUF_CAPACITY))
            .collect();
        let (got, _) = receive(&mut rx, &mut bufs, 2);
        assert_eq!(got, vec![packets[0].clone(), packets[2].clone()]);
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn mismatched_slices_are_rejected() {
    in_netns(|| {
        let mut tx = IpipSender::open(1 << 20).unwrap();
        let err = tx.send_batch(&[b"x".as_slice()], &[]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_packet_larger_than_its_buffer_is_counted_truncated() {
    in_netns(|| {
        let mut rx = IpipReceiver::open(1 << 20).unwrap();
        let mut tx = IpipSender::open(1 << 20).unwrap();
        let small = ipip_packet(LOCAL, LOCAL, &udp_packet(POD_A, 1, POD_B, 2, b"s", 1), 1);
        let big = ipip_packet(
            LOCAL,
            LOCAL,
            &udp_packet(POD_A, 1, POD_B, 2, &payload(500, 0), 2),
            2,
        );
        let report = tx.send_batch(&[&big, &small], &[LOCAL, LOCAL]).unwrap();
        assert_eq!(report.sent, 2);
        let mut bufs: Vec<PacketBuf> = (0..2).map(|_| PacketBuf::with_capacity(200)).collect();
        let (got, truncated) = receive(&mut rx, &mut bufs, 2);
        assert_eq!(truncated, 1);
        assert_eq!(got, vec![small]);
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn icmp_receiver_gets_errors_but_not_echoes() {
    in_netns(|| {
        let mut icmp = IcmpReceiver::open().expect("open ICMP receiver");
        // An echo request and its reply (types 8 and 0) must be filtered.
        let pinger = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        let mut echo = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'h', b'i'];
        let c = checksum(&echo, 0);
        echo[2..4].copy_from_slice(&c.to_be_bytes());
        pinger
            .send_to(&echo, &SocketAddrV4::new(LOCAL, 0).into())
            .unwrap();
        // A datagram to a closed port draws a port unreachable (type 3).
        let udp = UdpSocket::bind(SocketAddrV4::new(LOCAL, 0)).unwrap();
        udp.send_to(b"anyone?", SocketAddrV4::new(LOCAL, 9))
            .unwrap();

        let mut buf = [0u8; 1500];
        assert!(
            tunl_io::ns::wait_readable(&icmp, PATIENCE).unwrap(),
            "no ICMP error"
        );
        let n = icmp.recv(&mut buf).unwrap();
        assert!(n >= 28, "short ICMP packet");
        let ihl = usize::from(buf[0] & 0xf) * 4;
        assert_eq!(
            (buf[ihl], buf[ihl + 1]),
            (3, 3),
            "first queued ICMP is port unreachable"
        );
        let err = icmp.recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    });
}
