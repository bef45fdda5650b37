//! End to end with GRO on the underlay: the receiving node's kernel
//! coalesces IPIP packets (IPIP GRO works without the ipip driver), the raw
//! socket hands tunl super-packets of up to 64 KiB, and tunl writes them to
//! TUN as GSO frames. A 64 MiB TCP transfer between pods arrives byte for
//! byte. Needs root (namespaces).

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use tunl::testbed::{DaemonOptions, TunlCluster, in_netns};
use tunl::topology::{Cluster, ClusterSpec};

const TOTAL: usize = 64 << 20;
const PORT: u16 = 7400;

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

/// Makes veth GRO effective on a node's underlay, as a NIC with GRO does:
/// NAPI on (GRO toggled), TSO off on the sender side (veth only hands
/// non-TSO devices' packets to GRO) and threaded NAPI (so packets queue up
/// between polls and can be coalesced).
fn underlay_gro_on(c: &Cluster, node: &str) {
    let ns = c.netns(node).unwrap().to_owned();
    c.exec_ok(&ns, &["ethtool", "-K", "eth0", "gro", "off"])
        .unwrap();
    c.exec_ok(&ns, &["ethtool", "-K", "eth0", "gro", "on", "tso", "off"])
        .unwrap();
    c.exec_ok(&ns, &["sh", "-c", "echo 1 > /sys/class/net/eth0/threaded"])
        .unwrap();
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
fn tcp_64mib_over_gro_underlay_arrives_byte_for_byte() {
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        Path::new(env!("CARGO_BIN_EXE_tunl")),
        DaemonOptions::default(),
    )
    .expect("cluster with tunl daemons");
    let server_ip = tc.pod_ip("demo-hello-sit").unwrap();
    {
        let c = tc.cluster();
        for node in ["node1.sit", "node2.perf"] {
            underlay_gro_on(c, node);
        }
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

    tc.stop("node1.sit").unwrap();
    let log = tc.log("node1.sit");
    assert!(
        counter(&log, "rx_gso") > 0,
        "the receiving node wrote no GSO super-packets:\n{log}"
    );
    assert_eq!(counter(&log, "rx_oversize"), 0, "{log}");
}
