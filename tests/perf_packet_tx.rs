//! End to end with `[dataplane] packet_tx = true`: outer packets leave
//! through an AF_PACKET socket on the underlay device (next-hop MAC from the
//! neighbour table). A 64 MiB TCP transfer between pods arrives byte for
//! byte, and the daemons really hold a packet socket. Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use tunl::testbed::{DaemonOptions, TunlCluster, in_netns};
use tunl::topology::ClusterSpec;

const TOTAL: usize = 64 << 20;
const PORT: u16 = 7401;

/// A deterministic, non-repeating-looking byte stream (xorshift64).
fn pattern(offset: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let mut x = (offset + i) as u64 / 8 + 0x9E37_79B9_7F4A_7C15;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> (((offset + i) % 8) * 8)) as u8;
    }
}

fn counter(log: &str, name: &str) -> u64 {
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

#[test]
fn tcp_64mib_with_packet_tx_arrives_byte_for_byte() {
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        Path::new(env!("CARGO_BIN_EXE_tunl")),
        DaemonOptions {
            packet_tx: true,
            ..DaemonOptions::default()
        },
    )
    .expect("cluster with tunl daemons sending via AF_PACKET");
    let server_ip = tc.pod_ip("demo-hello-sit").unwrap();
    {
        for node in ["node1.sit", "node2.perf"] {
            assert!(tc.config_text(node).unwrap().contains("packet_tx = true"));
            let ns = tc.cluster().netns(node).unwrap().to_owned();
            let sockets = tc
                .cluster()
                .exec_ok(&ns, &["cat", "/proc/net/packet"])
                .unwrap();
            assert_eq!(
                sockets.lines().count(),
                2,
                "one packet socket on {node}: {sockets}"
            );
        }
        let c = tc.cluster();
        c.wait_reachable("demo-hello-perf", server_ip, Duration::from_secs(10))
            .expect("pods reach each other");
    }
    let server_ns = tc.cluster().netns("demo-hello-sit").unwrap().to_owned();
    let client_ns = tc.cluster().netns("demo-hello-perf").unwrap().to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();

    let server = std::thread::spawn(move || {
        in_netns(&server_ns, move || {
            let l = TcpListener::bind(SocketAddrV4::new(server_ip, PORT)).unwrap();
            ready_tx.send(()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = vec![0u8; 1 << 20];
            let mut want = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < TOTAL {
                let n = s.read(&mut got).expect("read");
                assert!(n > 0, "connection closed after {at} bytes");
                pattern(at, &mut want[..n]);
                if got[..n] != want[..n] {
                    let i = (0..n).find(|&i| got[i] != want[i]).unwrap();
                    panic!("byte {} differs", at + i);
                }
                at += n;
            }
            let mut rest = [0u8; 16];
            assert_eq!(s.read(&mut rest).unwrap(), 0, "no bytes past the end");
            at
        })
        .unwrap()
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server listening");
    let client = std::thread::spawn(move || {
        in_netns(&client_ns, move || {
            let mut s = TcpStream::connect(SocketAddrV4::new(server_ip, PORT)).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < TOTAL {
                pattern(at, &mut buf);
                s.write_all(&buf).expect("write");
                at += buf.len();
            }
        })
        .unwrap()
    });
    client.join().unwrap();
    assert_eq!(server.join().unwrap(), TOTAL);

    tc.stop("node2.perf").unwrap();
    let log = tc.log("node2.perf");
    assert_eq!(counter(&log, "tx_errors"), 0, "{log}");
}
