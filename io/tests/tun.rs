//! TUN device tests, each in a private network namespace (needs root).

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;

use common::{ACK, PATIENCE, SYN, in_netns, in_netns_async, payload, tcp_packet, udp_packet};
use tunl_io::netlink::{MAIN_TABLE, Netlink};
use tunl_io::{HEADROOM, IoError, PacketBuf, RX_BUF_CAPACITY, Tun, TunConfig, TunQueue};

const TUN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const ROUTED: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 77);

fn config(name: &str, offload: bool, queues: usize) -> TunConfig {
    TunConfig {
        name: name.into(),
        mtu: 1400,
        ipv4: Some((TUN_ADDR, 24)),
        offload,
        queues,
        tx_queue_len: 2000,
        persist: false,
        attach: false,
    }
}

fn bufs(n: usize) -> Vec<PacketBuf> {
    (0..n)
        .map(|_| PacketBuf::with_capacity(RX_BUF_CAPACITY))
        .collect()
}

fn bound_udp(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddrV4::new(TUN_ADDR, port)).expect("bind UDP in namespace");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s
}

#[test]
#[ignore = "needs root: scripts/test"]
fn create_reads_back_mtu_address_queues_and_offload() {
    in_netns_async(|| async {
        let tun = Tun::create(&config("tt0", true, 2)).expect("create TUN");
        assert_eq!(tun.name(), "tt0");
        assert!(tun.offload());
        assert_eq!(tun.mtu().unwrap(), 1400);
        assert_eq!(tun.tx_queue_len().unwrap(), 2000);
        let index = tun.if_index().unwrap();
        let nl = Netlink::new().unwrap();
        let found = nl.interface_with_address(TUN_ADDR).await.unwrap();
        assert_eq!(found, Some((index, "tt0".to_string(), 1400)));
        assert_eq!(nl.interface_with_address(PEER).await.unwrap(), None);
        let queues = tun.into_queues();
        assert_eq!(queues.len(), 2);
        assert_ne!(queues[0].as_raw_fd(), queues[1].as_raw_fd());
        assert!(queues.iter().all(TunQueue::offload));
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn second_create_of_a_held_device_says_busy() {
    in_netns(|| {
        let _held = Tun::create(&config("tt0", false, 1)).expect("create TUN");
        let err = Tun::create(&config("tt0", false, 1)).expect_err("device is held");
        assert!(matches!(err, IoError::DeviceBusy { .. }), "{err:?}");
        assert!(err.to_string().contains("held by another process"), "{err}");
    });
}

/// A multi-queue device would take a second process's queues: creation is
/// exclusive, so the second create fails as for a single queue, and the
/// first one's device is untouched.
#[test]
#[ignore = "needs root: scripts/test"]
fn second_create_of_a_held_multi_queue_device_says_busy() {
    in_netns(|| {
        for offload in [true, false] {
            let held = Tun::create(&config("tt0", offload, 2)).expect("create TUN");
            let err = Tun::create(&config("tt0", offload, 2)).expect_err("device is held");
            assert!(matches!(err, IoError::DeviceBusy { .. }), "{err:?}");
            assert_eq!(held.mtu().unwrap(), 1400);
            let queues = held.into_queues();
            assert_eq!(queues.len(), 2);
            drop(queues);
            // Gone with its queues: free again.
            let again = Tun::create(&config("tt0", offload, 2)).expect("create again");
            drop(again);
        }
    });
}

/// A persistent device outlives its queues with the routes on it; an
/// exclusive create refuses it (it exists), and `attach` takes it again.
#[test]
#[ignore = "needs root: scripts/test"]
fn a_persistent_device_keeps_its_routes_and_is_attached_to_again() {
    in_netns_async(|| async {
        let mut cfg = config("tt0", true, 2);
        cfg.persist = true;
        let nl = Netlink::new().unwrap();
        let tun = Tun::create(&cfg).expect("create TUN");
        let index = tun.if_index().unwrap();
        let prefix = "10.30.0.0/26".parse().unwrap();
        nl.add_route(prefix, PEER, index, 80, MAIN_TABLE)
            .await
            .unwrap();
        let held = nl.link_state("tt0").await.unwrap().unwrap();
        assert!(held.tun && held.carrier, "{held:?}");
        drop(tun);
        // Nobody holds it now: no carrier, but the device and its route stay.
        let left = nl
            .link_state("tt0")
            .await
            .unwrap()
            .expect("device persists");
        assert_eq!((left.index, left.carrier), (index, false));
        assert_eq!(
            nl.routes_with_protocol(80, MAIN_TABLE).await.unwrap(),
            vec![(prefix, Some(PEER), Some(index))]
        );
        // An exclusive create refuses the existing device ...
        let err = Tun::create(&cfg).expect_err("exclusive create of an existing device");
        assert!(matches!(err, IoError::DeviceBusy { .. }), "{err:?}");
        // ... attached again (same flags): same device, route untouched.
        cfg.attach = true;
        let again = Tun::create(&cfg).expect("attach to the persistent device");
        assert_eq!(again.if_index().unwrap(), index);
        assert_eq!(again.into_queues().len(), 2);
        assert_eq!(
            nl.routes_with_protocol(80, MAIN_TABLE).await.unwrap().len(),
            1
        );
        // Another queue layout is refused by the kernel.
        let mut single = config("tt0", true, 1);
        single.attach = true;
        assert!(Tun::create(&single).is_err());
        nl.delete_link("tt0").await.unwrap();
        assert_eq!(nl.link_state("tt0").await.unwrap(), None);
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn empty_queue_would_block() {
    in_netns(|| {
        let mut q = Tun::create(&config("tt0", true, 1)).unwrap().into_queues();
        let mut b = bufs(4);
        // Drain whatever the kernel sent at link up (IPv6 router
        // solicitations and the like), then the queue must be empty.
        loop {
            match q[0].recv_segments(&mut b) {
                Ok(_) => continue,
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                    break;
                }
            }
        }
    });
}

fn tun_to_stack(offload: bool) {
    in_netns(move || {
        let tun = Tun::create(&config("tt0", offload, 1)).unwrap();
        let udp_gro = tun.offload() && tun.udp_gso();
        let mut queues = tun.into_queues();
        let q = &mut queues[0];
        let sock = bound_udp(5000);
        let mut got = [0u8; 2048];

        q.send_one(&udp_packet(PEER, 4000, TUN_ADDR, 5000, b"hello", 1))
            .unwrap();
        let (n, from) = sock.recv_from(&mut got).expect("datagram from send_one");
        assert_eq!(&got[..n], b"hello");
        assert_eq!(from, SocketAddrV4::new(PEER, 4000).into());

        // One flow of several segments: with offload, GRO coalesces them
        // and the stack splits them again for the socket.
        let mut batch = bufs(8);
        for (i, b) in batch.iter_mut().enumerate() {
            let pkt = udp_packet(
                PEER,
                4000,
                TUN_ADDR,
                5000,
                &payload(1000, i as u8),
                10 + i as u16,
            );
            b.full_mut()[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            b.set_len(HEADROOM + pkt.len());
        }
        let report = q.send_batch(&mut batch, HEADROOM).unwrap();
        assert_eq!((report.sent, report.dropped), (8, 0));
        let longest = batch.iter().map(PacketBuf::len).max().unwrap();
        if udp_gro {
            assert_eq!(
                longest,
                HEADROOM + 28 + 8000,
                "GRO coalesced the flow into one packet"
            );
        } else {
            assert_eq!(longest, HEADROOM + 28 + 1000);
        }
        for i in 0..8u8 {
            let (n, _) = sock.recv_from(&mut got).expect("datagram from send_batch");
            assert_eq!(&got[..n], &payload(1000, i)[..], "datagram {i}");
        }
        sock.set_nonblocking(true).unwrap();
        let extra = sock
            .recv_from(&mut got)
            .expect_err("no duplicate datagrams");
        assert_eq!(extra.kind(), std::io::ErrorKind::WouldBlock);
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn packets_written_to_tun_reach_a_local_socket_with_offload() {
    tun_to_stack(true);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn packets_written_to_tun_reach_a_local_socket_without_offload() {
    tun_to_stack(false);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn empty_buffers_in_a_batch_are_dropped_not_fatal() {
    in_netns(|| {
        let mut queues = Tun::create(&config("tt0", true, 1)).unwrap().into_queues();
        let sock = bound_udp(5000);
        let mut batch = bufs(3);
        let pkt = udp_packet(PEER, 4000, TUN_ADDR, 5000, b"x", 1);
        batch[0].full_mut()[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        batch[0].set_len(HEADROOM + pkt.len());
        batch[1].set_len(HEADROOM);
        batch[2].set_len(0);
        let report = queues[0].send_batch(&mut batch, HEADROOM).unwrap();
        assert_eq!((report.sent, report.dropped), (1, 2));
        let mut got = [0u8; 16];
        let (n, _) = sock.recv_from(&mut got).unwrap();
        assert_eq!(&got[..n], b"x");
    });
}

/// Reads from the queue until `want` IPv4/UDP packets to `ROUTED:dport`
/// arrived; returns their UDP payloads and the largest segment count one
/// `recv_segments` call returned.
fn read_udp(q: &mut TunQueue, dport: u16, want: usize) -> (Vec<Vec<u8>>, usize) {
    let mut b = bufs(64);
    let mut out = Vec::new();
    let mut most = 0;
    while out.len() < want {
        assert!(
            tunl_io::ns::wait_readable(q, PATIENCE).unwrap(),
            "no packet on the TUN queue ({} of {want} so far)",
            out.len()
        );
        let n = match q.recv_segments(&mut b) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv_segments: {e}"),
        };
        most = most.max(n);
        for buf in &b[..n] {
            let p = &buf.as_ref()[HEADROOM..];
            if p.len() < 28 || p[0] != 0x45 || p[9] != 17 || p[16..20] != ROUTED.octets() {
                continue; // IPv6 chatter, other traffic
            }
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
            if u16::from_be_bytes([p[22], p[23]]) == dport {
                out.push(p[28..].to_vec());
            }
        }
    }
    (out, most)
}

fn stack_to_tun(offload: bool) {
    in_netns(move || {
        let tun = Tun::create(&config("tt0", offload, 1)).unwrap();
        let udp_gso = tun.udp_gso();
        let mut queues = tun.into_queues();
        let q = &mut queues[0];
        let sock = UdpSocket::bind(SocketAddrV4::new(TUN_ADDR, 0)).unwrap();
        sock.send_to(b"ping", SocketAddrV4::new(ROUTED, 6000))
            .unwrap();
        let (got, _) = read_udp(q, 6000, 1);
        assert_eq!(got, vec![b"ping".to_vec()]);

        // A UDP GSO write of 5 segments: with USO on the device, one read
        // returns the super-packet, which recv_segments splits.
        let seg: libc::c_int = 1000;
        // SAFETY: setsockopt reads one c_int from &seg during the call.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_SEGMENT,
                (&raw const seg).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        let data: Vec<u8> = (0..5u8).flat_map(|i| payload(1000, i)).collect();
        sock.send_to(&data, SocketAddrV4::new(ROUTED, 6001))
            .unwrap();
        let (got, most) = read_udp(q, 6001, 5);
        for (i, p) in got.iter().enumerate() {
            assert_eq!(p, &payload(1000, i as u8), "segment {i}");
        }
        if offload && udp_gso {
            assert!(
                most >= 5,
                "expected one read to carry all 5 segments, got at most {most}"
            );
        }
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn stack_traffic_routed_into_tun_is_read_and_split_with_offload() {
    stack_to_tun(true);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn stack_traffic_routed_into_tun_is_read_without_offload() {
    stack_to_tun(false);
}

/// Writes `pkt` at HEADROOM in `buf`.
fn load(buf: &mut PacketBuf, pkt: &[u8]) {
    buf.full_mut()[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
    buf.set_len(HEADROOM + pkt.len());
}

#[test]
#[ignore = "needs root: scripts/test"]
fn tcp_segments_written_in_one_batch_are_coalesced_and_delivered() {
    in_netns(|| {
        let mut queues = Tun::create(&config("tt0", true, 1)).unwrap().into_queues();
        let q = &mut queues[0];
        let listener = TcpListener::bind(SocketAddrV4::new(TUN_ADDR, 7000)).unwrap();
        let server_seq = handshake(q, 7000);

        // The handshake ACK and four data segments of one flow in one batch.
        let mut batch = bufs(5);
        let ack = server_seq.wrapping_add(1);
        load(
            &mut batch[0],
            &tcp_packet(PEER, 40000, TUN_ADDR, 7000, 1001, ack, ACK, &[], &[]),
        );
        for i in 0..4u32 {
            let seq = 1001 + i * 1000;
            let pkt = tcp_packet(
                PEER,
                40000,
                TUN_ADDR,
                7000,
                seq,
                ack,
                ACK,
                &[],
                &payload(1000, i as u8),
            );
            load(&mut batch[1 + i as usize], &pkt);
        }
        let report = q.send_batch(&mut batch, HEADROOM).unwrap();
        assert_eq!((report.sent, report.dropped), (5, 0));
        let longest = batch.iter().map(PacketBuf::len).max().unwrap();
        assert_eq!(
            longest,
            HEADROOM + 40 + 4000,
            "GRO coalesced the data segments"
        );

        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(peer, SocketAddrV4::new(PEER, 40000).into());
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut data = vec![0u8; 4000];
        conn.read_exact(&mut data).expect("all 4000 bytes");
        let want: Vec<u8> = (0..4u8).flat_map(|i| payload(1000, i)).collect();
        assert_eq!(data, want);
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn every_queue_of_a_multi_queue_device_carries_traffic() {
    in_netns(|| {
        let mut queues = Tun::create(&config("tt0", true, 2)).unwrap().into_queues();
        let flows = 32u16;
        let senders: Vec<UdpSocket> = (0..flows)
            .map(|_| UdpSocket::bind(SocketAddrV4::new(TUN_ADDR, 0)).unwrap())
            .collect();
        for (i, s) in senders.iter().enumerate() {
            s.send_to(&[i as u8], SocketAddrV4::new(ROUTED, 6000))
                .unwrap();
        }
        let mut seen = vec![false; flows as usize];
        let mut per_queue = [0usize; 2];
        let mut b = bufs(64);
        while seen.iter().any(|s| !s) {
            let mut fds: Vec<libc::pollfd> = queues
                .iter()
                .map(|q| libc::pollfd {
                    fd: q.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: fds is a valid array of 2 pollfds during the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, PATIENCE.as_millis() as i32) };
            assert!(rc > 0, "packets missing: {seen:?}");
            for (qi, q) in queues.iter_mut().enumerate() {
                let Ok(n) = q.recv_segments(&mut b) else {
                    continue;
                };
                for buf in &b[..n] {
                    let p = &buf.as_ref()[HEADROOM..];
                    if p.len() == 29 && p[0] == 0x45 && p[9] == 17 && p[16..20] == ROUTED.octets() {
                        seen[usize::from(p[28])] = true;
                        per_queue[qi] += 1;
                    }
                }
            }
        }
        assert!(
            per_queue.iter().all(|&n| n > 0),
            "flows per queue: {per_queue:?}"
        );
    });
}

/// Opens a connection to a listener on TUN_ADDR:`port` by hand through the
/// TUN queue; returns the server's initial sequence number.
fn handshake(q: &mut TunQueue, port: u16) -> u32 {
    let mss = [2, 4, 0x05, 0x50]; // MSS 1360
    q.send_one(&tcp_packet(
        PEER,
        40000,
        TUN_ADDR,
        port,
        1000,
        0,
        SYN,
        &mss,
        &[],
    ))
    .unwrap();
    let mut b = bufs(64);
    loop {
        assert!(
            tunl_io::ns::wait_readable(q, PATIENCE).unwrap(),
            "no SYN-ACK"
        );
        let n = match q.recv_segments(&mut b) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recv_segments: {e}"),
        };
        let synack = b[..n]
            .iter()
            .map(|b| &b.as_ref()[HEADROOM..])
            .find(|p| p.len() >= 40 && p[0] == 0x45 && p[9] == 6 && p[16..20] == PEER.octets());
        if let Some(p) = synack {
            assert_eq!(p[33] & (SYN | ACK), SYN | ACK);
            assert_eq!(u32::from_be_bytes([p[28], p[29], p[30], p[31]]), 1001);
            return u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
        }
    }
}

/// Underlay GRO hands tunl TCP super-packets far longer than the TUN MTU,
/// their checksum field holding a pseudo-header sum (not a full checksum).
/// Written in one batch between ordinary packets of the same flow, each is
/// written as one GSO frame, in order, and the socket reads every byte.
#[test]
#[ignore = "needs root: scripts/test"]
fn tcp_super_packets_longer_than_the_mtu_are_written_as_gso_and_delivered() {
    in_netns(|| {
        let mut queues = Tun::create(&config("tt0", true, 1)).unwrap().into_queues();
        let q = &mut queues[0];
        let listener = TcpListener::bind(SocketAddrV4::new(TUN_ADDR, 7001)).unwrap();
        let ack = handshake(q, 7001).wrapping_add(1);
        // ACK, 1000 bytes, a 30000-byte super-packet, 1000 bytes, a
        // 20000-byte super-packet.
        let sizes = [0usize, 1000, 30000, 1000, 20000];
        let mut batch = bufs(sizes.len());
        let mut seq = 1001u32;
        let mut want = Vec::new();
        for (i, (b, &len)) in batch.iter_mut().zip(&sizes).enumerate() {
            let data = payload(len, i as u8);
            let mut pkt = tcp_packet(PEER, 40000, TUN_ADDR, 7001, seq, ack, ACK, &[], &data);
            if len > 1400 {
                // As GRO leaves it: a partial (pseudo-header) checksum.
                pkt[36] ^= 0x5a;
            }
            load(b, &pkt);
            seq = seq.wrapping_add(len as u32);
            want.extend_from_slice(&data);
        }
        let report = q.send_batch(&mut batch, HEADROOM).unwrap();
        assert_eq!(report.dropped, 0, "{report:?}");
        assert_eq!(report.gso_written, 2, "{report:?}");
        // 30000 and 20000 bytes in segments of 1400 - 40 = 1360 bytes.
        assert_eq!(report.sent, 1 + 1 + 23 + 1 + 15, "{report:?}");

        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut data = vec![0u8; want.len()];
        conn.read_exact(&mut data).expect("every byte");
        assert!(data == want, "bytes differ");
    });
}

/// A non-TCP packet longer than the MTU (e.g. UDP reassembled from outer
/// fragments) is written as it is, with offload or without: the kernel
/// takes a TUN write longer than the device MTU, and its stack delivers it
/// (here), fragments it or answers frag-needed. A TCP super-packet without
/// offload cannot be written as GSO: it is counted and dropped, and the
/// batch goes on.
#[test]
#[ignore = "needs root: scripts/test"]
fn oversize_non_tcp_packets_are_written_as_they_are() {
    for offload in [true, false] {
        in_netns(move || {
            let mut queues = Tun::create(&config("tt0", offload, 1))
                .unwrap()
                .into_queues();
            let q = &mut queues[0];
            let sock = bound_udp(5001);
            let big = udp_packet(PEER, 4000, TUN_ADDR, 5001, &payload(3000, 1), 1);
            let after = udp_packet(PEER, 4000, TUN_ADDR, 5001, b"after", 2);
            let tcp = tcp_packet(
                PEER,
                4000,
                TUN_ADDR,
                5002,
                1,
                1,
                ACK,
                &[],
                &payload(3000, 3),
            );
            let mut batch = bufs(3);
            load(&mut batch[0], &big);
            load(&mut batch[1], &tcp);
            load(&mut batch[2], &after);
            let report = q.send_batch(&mut batch, HEADROOM).unwrap();
            if offload {
                // The TCP packet went as a GSO frame of three segments.
                assert_eq!(
                    (report.sent, report.dropped, report.oversize_dropped),
                    (5, 0, 0),
                    "{report:?}"
                );
                assert_eq!(report.bytes, big.len() + tcp.len() + after.len());
            } else {
                assert_eq!(
                    (report.sent, report.dropped, report.oversize_dropped),
                    (2, 1, 1),
                    "{report:?}"
                );
                assert_eq!(report.bytes, big.len() + after.len());
            }
            let mut got = [0u8; 4096];
            let (n, _) = sock.recv_from(&mut got).unwrap();
            assert_eq!(&got[..n], &payload(3000, 1)[..], "offload {offload}");
            let (n, _) = sock.recv_from(&mut got).unwrap();
            assert_eq!(&got[..n], b"after", "offload {offload}");
        });
    }
}
