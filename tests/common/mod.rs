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
    tcp_transfer_between(&netns_of(tc, from_pod), &netns_of(tc, to_pod), to, total)
}

/// [`tcp_transfer`] between any two namespaces: from `client_ns` to a
/// listener on `to` in `server_ns`.
pub fn tcp_transfer_between(
    client_ns: &str,
    server_ns: &str,
    to: SocketAddrV4,
    total: usize,
) -> usize {
    let (server_ns, client_ns) = (server_ns.to_owned(), client_ns.to_owned());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_netns(&server_ns, move || {
            let listener = TcpListener::bind(to).expect("bind the listener");
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
        let mut s =
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(10)).expect("connect");
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

/// `tunl status` (the text) of the daemon on `node`.
pub fn status_text(tc: &TunlCluster, node: &str) -> String {
    let out = std::process::Command::new(tunl_bin())
        .args(["status", "--socket"])
        .arg(tc.control_socket(node))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// An interface's index and MAC address in `netns` (from sysfs, which `ip
/// netns exec` mounts for the namespace).
pub fn link_of(tc: &TunlCluster, netns: &str, ifname: &str) -> (u32, [u8; 6]) {
    let c = tc.cluster();
    let ifindex = c
        .exec_ok(netns, &["cat", &format!("/sys/class/net/{ifname}/ifindex")])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let text = c
        .exec_ok(netns, &["cat", &format!("/sys/class/net/{ifname}/address")])
        .unwrap();
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap();
    }
    (ifindex, mac)
}

/// Sends IPv4 packets byte for byte, whatever their headers say (bad
/// checksums, wrong lengths, fragments), from `from_node`'s `eth0` to
/// `to_node`'s `eth0` in Ethernet frames (AF_PACKET): unlike a raw IP
/// socket, the sending kernel fills in nothing.
pub fn send_frames(tc: &TunlCluster, from_node: &str, to_node: &str, packets: &[Vec<u8>]) {
    let (ifindex, _) = link_of(tc, &netns_of(tc, from_node), "eth0");
    let (_, mac) = link_of(tc, &netns_of(tc, to_node), "eth0");
    let packets = packets.to_vec();
    in_netns(&netns_of(tc, from_node), move || {
        let mut sender = tunl_io::PacketSender::open(ifindex, 1 << 20).unwrap();
        for p in &packets {
            // One at a time: the socket is non-blocking, the test is not.
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let report = sender.send_batch(&[p], &[mac]).unwrap();
                if report.sent == 1 {
                    break;
                }
                assert!(Instant::now() < deadline, "cannot send a frame: {report:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
    .unwrap();
}

/// Every IPv4 packet a namespace sees (in and out, any interface), from
/// [`Capture::start`] until [`Capture::stop`]: an AF_PACKET socket for all
/// protocols, so a packet the namespace's own stack drops is seen too.
pub struct Capture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    /// Starts capturing in `netns`; returns once the socket is open.
    pub fn start(netns: &str) -> Capture {
        use socket2::{Domain, Protocol, Socket, Type};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = netns.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            in_netns(&ns, move || {
                let all = i32::from((libc::ETH_P_ALL as u16).to_be());
                let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(all)))
                    .expect("AF_PACKET capture socket");
                sock.set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut got = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok(n) = (&sock).read(&mut buf)
                        && buf.first().is_some_and(|v| v >> 4 == 4)
                    {
                        got.push(buf[..n].to_vec());
                    }
                }
                got
            })
            .unwrap()
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("capture ready");
        Capture { stop, thread }
    }

    /// Stops and returns what was seen, in order.
    pub fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Whether `haystack` holds `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Sends 10.20.0.0/16 into tunl0 through table 100, which the kernel
/// consults after main and tunl does not follow: packets to a block without
/// a route of its own still reach tunl, which has none for them.
pub fn pool_route_tunl_does_not_follow(tc: &TunlCluster, node: &str) {
    let c = tc.cluster();
    for args in [
        &[
            "ip",
            "route",
            "add",
            "10.20.0.0/16",
            "dev",
            "tunl0",
            "table",
            "100",
        ][..],
        &[
            "ip",
            "rule",
            "add",
            "to",
            "10.20.0.0/16",
            "table",
            "100",
            "pref",
            "40000",
        ],
    ] {
        c.exec_ok(node, args)
            .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    }
}
