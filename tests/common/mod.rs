//! Helpers shared by the end-to-end tests (each test file includes this
//! module; not every file uses every helper).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use tunl::control::{Client, Request, Stats};
use tunl_lab::testbed::{TunlCluster, in_netns};

/// The `tunl` binary under test.
pub fn tunl_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tunl"))
}

/// The namespace of a node or pod of the cluster.
pub fn netns_of(tc: &TunlCluster, name: &str) -> String {
    tc.cluster().netns(name).unwrap().to_owned()
}

/// Every daemon's log, for failure messages.
pub fn logs(tc: &TunlCluster) -> String {
    tc.daemons()
        .iter()
        .map(|d| format!("--- {} ---\n{}", d.node, tc.log(&d.node)))
        .collect()
}

/// `tunl stats` of the daemon on `node`, over its control socket.
pub fn stats(tc: &TunlCluster, node: &str) -> Stats {
    Client::connect(&tc.control_socket(node))
        .unwrap()
        .call(&Request::Stats {})
        .unwrap()
}

/// Waits up to 10 s for `cond`.
pub fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A deterministic, non-repeating-looking byte stream (xorshift64): byte
/// `offset + i` of the stream goes to `buf[i]`, so both ends can produce it.
pub fn pattern(offset: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let mut x = (offset + i) as u64 / 8 + 0x9E37_79B9_7F4A_7C15;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> (((offset + i) % 8) * 8)) as u8;
    }
}

/// Sends `total` bytes of [`pattern`] over TCP from `from_pod` to `to_pod`
/// (`port`), checks every byte at the receiver (panics at the first one that
/// differs, or on bytes past the end) and returns how many arrived.
pub fn tcp_transfer(
    tc: &TunlCluster,
    from_pod: &str,
    to_pod: &str,
    port: u16,
    total: usize,
) -> usize {
    let to = SocketAddrV4::new(tc.pod_ip(to_pod).unwrap(), port);
    let (server_ns, client_ns) = (netns_of(tc, to_pod), netns_of(tc, from_pod));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_netns(&server_ns, move || {
            let listener = TcpListener::bind(to).expect("bind in the pod");
            ready_tx.send(()).unwrap();
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let (mut got, mut want) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
            let mut at = 0;
            while at < total {
                let n = s.read(&mut got).expect("read");
                assert!(n > 0, "connection closed after {at} bytes");
                pattern(at, &mut want[..n]);
                if got[..n] != want[..n] {
                    let i = (0..n).find(|&i| got[i] != want[i]).unwrap_or(0);
                    panic!("byte {} differs", at + i);
                }
                at += n;
            }
            let mut rest = [0u8; 16];
            assert_eq!(s.read(&mut rest).unwrap_or(0), 0, "no bytes past the end");
            at
        })
        .unwrap()
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server listening");
    in_netns(&client_ns, move || {
        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(10))
            .expect("connect across the tunnel");
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < total {
            let n = (total - at).min(buf.len());
            pattern(at, &mut buf[..n]);
            s.write_all(&buf[..n]).expect("write");
            at += n;
        }
    })
    .unwrap();
    server.join().unwrap()
}

/// A counter from the "counters at exit" line of a daemon's log.
pub fn exit_counter(log: &str, name: &str) -> u64 {
    let key = format!(" {name}=");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("counters at exit"))
        .unwrap_or_else(|| panic!("no exit counters in log:\n{log}"));
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs `tunl run --config CONFIG` in `node`'s namespace to completion (for
/// daemons expected to refuse to start) and returns its output.
pub fn run_to_exit(tc: &TunlCluster, node: &str, config: &Path) -> std::process::Output {
    tc.cluster()
        .exec(
            node,
            &[
                tunl_bin().to_str().unwrap(),
                "run",
                "--config",
                config.to_str().unwrap(),
            ],
        )
        .unwrap()
}

/// An IPv4 packet with a valid header (TTL 64) around `payload`.
pub fn ipv4_packet(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    protocol: etherparse::IpNumber,
    payload: &[u8],
) -> Vec<u8> {
    let mut packet = Vec::with_capacity(20 + payload.len());
    etherparse::Ipv4Header::new(
        payload.len() as u16,
        64,
        protocol,
        src.octets(),
        dst.octets(),
    )
    .unwrap()
    .write(&mut packet)
    .unwrap();
    packet.extend_from_slice(payload);
    packet
}

/// Sends whole IPv4 packets (our own headers, any source address) from
/// `node`'s namespace, each to its destination.
pub fn send_raw_many(tc: &TunlCluster, node: &str, packets: Vec<(std::net::Ipv4Addr, Vec<u8>)>) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    in_netns(&netns_of(tc, node), move || {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .unwrap();
        for (dst, p) in packets {
            sock.send_to(&p, &SockAddr::from(SocketAddrV4::new(dst, 0)))
                .unwrap();
        }
    })
    .unwrap();
}

/// [`send_raw_many`] for one packet.
pub fn send_raw(tc: &TunlCluster, node: &str, dst: std::net::Ipv4Addr, packet: Vec<u8>) {
    send_raw_many(tc, node, vec![(dst, packet)]);
}

/// An IPv4 UDP packet `src:40000` -> `dst:port` around `payload`.
pub fn udp_packet(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, port)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// Sends an IPIP packet from `node`'s namespace with a chosen outer source
/// (a raw socket with our own header: the source can be anything).
pub fn inject_ipip(
    tc: &TunlCluster,
    node: &str,
    outer_src: std::net::Ipv4Addr,
    outer_dst: std::net::Ipv4Addr,
    inner: &[u8],
) {
    let outer = ipv4_packet(outer_src, outer_dst, etherparse::IpNumber::IPV4, inner);
    send_raw(tc, node, outer_dst, outer);
}

/// Listens on UDP `port` in `pod` for `wait` and returns what arrived.
pub fn listen_udp(
    tc: &TunlCluster,
    pod: &str,
    port: u16,
    wait: Duration,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let ns = netns_of(tc, pod);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + wait;
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .unwrap();
                if let Ok(n) = sock.recv(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
            }
            got
        })
        .unwrap()
    });
    ready_rx.recv().unwrap();
    h
}
