//! The AF_XDP underlay in network namespaces (needs root): attach and
//! detach, nothing left after kill -9, refusal when another program is
//! attached, and frames received and sent through AF_XDP sockets.
//!
//! Each test builds two named namespaces joined by a veth pair (`xa` with
//! 10.251.0.1 in the first, `xb` with 10.251.0.2 in the second) and deletes
//! them when it ends.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, ipip_packet, payload, udp_packet};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tunl_io::xdp::{
    AttachRefusal, ETH_HEADER_LEN, PROGRAM_OBJECT, XdpError, XdpMode, XdpProgram, Xsk,
};
use tunl_io::{Buffer, IpipReceiver, PacketBuf, RX_BUF_CAPACITY};

const A: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 20, 1, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 20, 2, 3);

/// Two namespaces and the veth pair between them, deleted on drop.
struct Pair {
    a: String,
    b: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pair {
    fn new() -> Pair {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("tunl-io-xdp-{}-{n}", std::process::id());
        let pair = Pair {
            a: format!("{tag}-a"),
            b: format!("{tag}-b"),
        };
        ip(&["netns", "add", &pair.a]);
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "-n", &pair.a, "link", "add", "xa", "type", "veth", "peer", "name", "xb", "netns",
            &pair.b,
        ]);
        for (ns, dev, addr) in [(&pair.a, "xa", A), (&pair.b, "xb", B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// `ip -d link show dev DEV` in namespace `ns`.
    fn link(ns: &str, dev: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", ns, "-d", "link", "show", "dev", dev])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn has_xdp(ns: &str, dev: &str) -> bool {
        Self::link(ns, dev).contains("prog/xdp")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered the namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the namespace");
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns takes a descriptor and a flag word and touches no
            // memory of ours; it moves only the calling thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: c is a valid NUL-terminated string for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

#[test]
#[ignore = "needs root: scripts/test"]
fn attach_and_detach_with_the_link() {
    let pair = Pair::new();
    in_ns(&pair.b, || {
        let program = XdpProgram::load(B).expect("load the program");
        assert!(
            !Pair::has_xdp(&pair.b, "xb"),
            "loading alone attaches nothing"
        );
        let link = program
            .attach(ifindex("xb"), XdpMode::Generic)
            .expect("attach");
        let shown = Pair::link(&pair.b, "xb");
        assert!(
            shown.contains("xdpgeneric") && shown.contains("prog/xdp"),
            "{shown}"
        );
        drop(link);
        assert!(
            !Pair::has_xdp(&pair.b, "xb"),
            "{}",
            Pair::link(&pair.b, "xb")
        );
        // Native mode works on veth too (it is not what tunl picks there).
        let link = program
            .attach(ifindex("xb"), XdpMode::Native)
            .expect("attach native");
        assert!(Pair::link(&pair.b, "xb").contains("xdp "));
        drop(link);
        assert!(!Pair::has_xdp(&pair.b, "xb"));
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_second_attach_is_refused_and_nothing_is_replaced() {
    let pair = Pair::new();
    in_ns(&pair.b, || {
        let ours = XdpProgram::load(B).unwrap();
        let other = XdpProgram::load(B).unwrap();
        let link = ours.attach(ifindex("xb"), XdpMode::Generic).unwrap();
        let before = Pair::link(&pair.b, "xb");
        for mode in [XdpMode::Generic, XdpMode::Native] {
            let e = other.attach(ifindex("xb"), mode).unwrap_err();
            assert!(
                matches!(
                    e,
                    XdpError::Attach {
                        refusal: AttachRefusal::AlreadyAttached,
                        ..
                    }
                ),
                "{mode}: {e}"
            );
        }
        assert_eq!(Pair::link(&pair.b, "xb"), before, "the first stays");
        drop(link);
    });
    // A program attached the old way (netlink, as `ip link set xdpgeneric`
    // does) is refused too, and stays after tunl gave up.
    let obj = std::env::temp_dir().join(format!("tunl-io-xdp-{}.o", std::process::id()));
    std::fs::write(&obj, PROGRAM_OBJECT).unwrap();
    ip(&[
        "-n",
        &pair.b,
        "link",
        "set",
        "dev",
        "xb",
        "xdpgeneric",
        "obj",
        obj.to_str().unwrap(),
        "sec",
        "xdp",
    ]);
    let _ = std::fs::remove_file(&obj);
    let foreign = Pair::link(&pair.b, "xb");
    assert!(foreign.contains("prog/xdp"), "{foreign}");
    in_ns(&pair.b, || {
        let program = XdpProgram::load(B).unwrap();
        for mode in [XdpMode::Generic, XdpMode::Native] {
            let e = program.attach(ifindex("xb"), mode).unwrap_err();
            assert!(e.is_already_attached(), "{mode}: {e}");
        }
    });
    assert_eq!(Pair::link(&pair.b, "xb"), foreign);
    ip(&[
        "-n",
        &pair.b,
        "link",
        "set",
        "dev",
        "xb",
        "xdpgeneric",
        "off",
    ]);
}

/// Not a test on its own: the process that `kill_9_leaves_nothing_attached`
/// starts, which attaches and waits to be killed.
#[test]
#[ignore = "started by kill_9_leaves_nothing_attached"]
fn hold_an_attachment() {
    let Ok(ns) = std::env::var("TUNL_XDP_HOLD_NETNS") else {
        return;
    };
    in_ns(&ns, || {
        let program = XdpProgram::load(B).unwrap();
        let _link = program.attach(ifindex("xb"), XdpMode::Generic).unwrap();
        println!("attached");
        std::thread::sleep(Duration::from_secs(60));
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn kill_9_leaves_nothing_attached() {
    let pair = Pair::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "hold_an_attachment", "--nocapture"])
        .env("TUNL_XDP_HOLD_NETNS", &pair.b)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let attached = lines.any(|l| l.is_ok_and(|l| l.contains("attached")));
    assert!(attached, "the holder did not attach");
    assert!(
        Pair::has_xdp(&pair.b, "xb"),
        "{}",
        Pair::link(&pair.b, "xb")
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while Pair::has_xdp(&pair.b, "xb") {
        assert!(Instant::now() < deadline, "{}", Pair::link(&pair.b, "xb"));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The device is clean: attaching again works.
    in_ns(&pair.b, || {
        let program = XdpProgram::load(B).unwrap();
        program.attach(ifindex("xb"), XdpMode::Generic).unwrap();
    });
}

/// Sends whole IPv4 packets from the calling thread's namespace.
fn send_raw(packets: &[Vec<u8>], to: Ipv4Addr) {
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .unwrap();
    for p in packets {
        sock.send_to(p, &SockAddr::from(SocketAddrV4::new(to, 0)))
            .unwrap();
    }
}

#[test]
#[ignore = "needs root: scripts/test"]
fn ipip_for_us_reaches_the_socket_and_the_rest_the_stack() {
    let pair = Pair::new();
    let packets: Vec<Vec<u8>> = (0..50u16)
        .map(|i| {
            let inner = udp_packet(
                POD_A,
                1000,
                POD_B,
                2000,
                &payload(1 + 29 * usize::from(i), i as u8),
                i,
            );
            ipip_packet(A, B, &inner, 100 + i)
        })
        .collect();
    let sent = packets.clone();
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let rx = s.spawn(|| {
            in_ns(&pair.b, move || {
                let mut program = XdpProgram::load(B).unwrap();
                let link = program.attach(ifindex("xb"), XdpMode::Generic).unwrap();
                let mut xsk = Xsk::bind(ifindex("xb"), 0).expect("bind the socket");
                program.add_socket(&xsk).unwrap();
                let mut raw = IpipReceiver::open(4 << 20).unwrap();
                let udp = UdpSocket::bind((B, 7000)).unwrap();
                udp.set_read_timeout(Some(PATIENCE)).unwrap();
                ready_tx.send(()).unwrap();
                let mut got = Vec::new();
                let deadline = Instant::now() + PATIENCE;
                while got.len() < 50 && Instant::now() < deadline {
                    if !tunl_io::ns::wait_readable(&xsk, Duration::from_millis(100)).unwrap() {
                        continue;
                    }
                    xsk.receive(64, |frame| got.push(frame.to_vec()));
                }
                sent_rx.recv().unwrap();
                // Not IPIP: the stack delivers it as if no program were there.
                let mut buf = [0u8; 64];
                let n = udp.recv(&mut buf).expect("UDP passed by the program");
                // Nothing reached the raw IPIP socket: no copies.
                let mut bufs = vec![PacketBuf::with_capacity(RX_BUF_CAPACITY)];
                let raw_got = raw.recv_batch(&mut bufs);
                let stats = program.stats_reader().read().unwrap();
                let xsk_stats = xsk.stats_reader().read().unwrap();
                drop(link);
                (got, buf[..n].to_vec(), raw_got.is_err(), stats, xsk_stats)
            })
        });
        ready_rx.recv().unwrap();
        in_ns(&pair.a, || {
            send_raw(&sent, B);
            let udp = UdpSocket::bind((A, 0)).unwrap();
            udp.send_to(b"plain udp", (B, 7000)).unwrap();
        });
        sent_tx.send(()).unwrap();
        let (got, udp, raw_empty, stats, xsk_stats) = rx.join().unwrap();
        assert_eq!(got.len(), 50, "frames through the socket");
        for (frame, packet) in got.iter().zip(&packets) {
            assert_eq!(&frame[12..14], &[0x08, 0x00], "Ethernet type IPv4");
            assert_eq!(&frame[ETH_HEADER_LEN..], &packet[..], "byte for byte");
        }
        assert_eq!(udp, b"plain udp");
        assert!(raw_empty, "the raw socket got a copy");
        assert_eq!(stats.redirected, 50, "{stats:?}");
        assert_eq!(stats.no_socket, 0, "{stats:?}");
        assert!(stats.passed >= 1, "{stats:?}");
        assert_eq!(xsk_stats.rx_dropped, 0, "{xsk_stats:?}");
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn frames_sent_through_the_socket_arrive_intact() {
    let pair = Pair::new();
    let mac = |ns: &str, dev: &str| in_ns(ns, || tunl_io::link::hardware_address(dev).unwrap());
    let (mac_a, mac_b) = (mac(&pair.a, "xa"), mac(&pair.b, "xb"));
    let packets: Vec<Vec<u8>> = (0..300u16)
        .map(|i| {
            let inner = udp_packet(
                POD_A,
                1000,
                POD_B,
                2000,
                &payload(1 + (i as usize * 17) % 1452, i as u8),
                i,
            );
            ipip_packet(A, B, &inner, 100 + i)
        })
        .collect();
    std::thread::scope(|s| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let want = packets.len();
        let ns_b = pair.b.clone();
        let rx = s.spawn(move || {
            in_ns(&ns_b, move || {
                let mut raw = IpipReceiver::open(8 << 20).unwrap();
                ready_tx.send(()).unwrap();
                let mut bufs: Vec<PacketBuf> = (0..32)
                    .map(|_| PacketBuf::with_capacity(RX_BUF_CAPACITY))
                    .collect();
                let mut got = Vec::new();
                let deadline = Instant::now() + PATIENCE;
                while got.len() < want && Instant::now() < deadline {
                    if !tunl_io::ns::wait_readable(&raw, Duration::from_millis(100)).unwrap() {
                        continue;
                    }
                    if let Ok(r) = raw.recv_batch(&mut bufs) {
                        got.extend(bufs[..r.received].iter().map(|b| b.as_ref().to_vec()));
                    }
                }
                got
            })
        });
        ready_rx.recv().unwrap();
        let report = in_ns(&pair.a, || {
            let mut xsk = Xsk::bind(ifindex("xa"), 0).expect("bind the socket");
            assert!([32, 256].contains(&xsk.tx_budget()), "{}", xsk.tx_budget());
            eprintln!("TX budget per kick: {}", xsk.tx_budget());
            let mut frames = xsk.tx_frames(64);
            let mut total = tunl_io::xdp::XskTxReport::default();
            for batch in packets.chunks(64) {
                let ready = xsk.refill(&mut frames);
                assert!(ready >= batch.len(), "{ready} frames with chunks");
                for (frame, p) in frames.iter_mut().zip(batch) {
                    // As a TUN read leaves it: the packet at HEADROOM; here
                    // the outer header is already in the packet, so it goes
                    // in at offset 0.
                    frame.set_len(p.len());
                    frame.as_mut().copy_from_slice(p);
                }
                let r = xsk.transmit(&mut frames, (0..batch.len()).map(|i| (i, 0, mac_b)), mac_a);
                total.sent += r.sent;
                total.skipped += r.skipped;
            }
            // The completions come back for the next batches.
            let deadline = Instant::now() + PATIENCE;
            while xsk.refill(&mut frames) < 64 {
                assert!(Instant::now() < deadline, "chunks not completed");
                std::thread::sleep(Duration::from_millis(5));
            }
            total
        });
        assert_eq!((report.sent, report.skipped), (300, 0), "{report:?}");
        let got = rx.join().unwrap();
        assert_eq!(got.len(), packets.len());
        for (g, p) in got.iter().zip(&packets) {
            assert_eq!(g, p, "byte for byte, in order");
        }
    });
}
