//! End to end with GRO on the underlay: the receiving node's kernel
//! coalesces IPIP packets (IPIP GRO works without the ipip driver), the raw
//! socket hands tunl super-packets of up to 64 KiB, and tunl writes them to
//! TUN as GSO frames. A 64 MiB TCP transfer between pods arrives byte for
//! byte. Needs root (namespaces).

mod common;

use std::time::Duration;

use common::{exit_counter, tcp_transfer, tunl_bin};
use tunl_lab::testbed::{DaemonOptions, TunlCluster};
use tunl_lab::topology::{Cluster, ClusterSpec};

const TOTAL: usize = 64 << 20;
const PORT: u16 = 7400;

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

#[test]
#[ignore = "needs root: scripts/test"]
fn tcp_64mib_over_gro_underlay_arrives_byte_for_byte() {
    let tc = TunlCluster::start(ClusterSpec::seed(), tunl_bin(), DaemonOptions::default())
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
    let got = tcp_transfer(&tc, "demo-hello-perf", "demo-hello-sit", PORT, TOTAL);
    assert_eq!(got, TOTAL);

    tc.stop("node1.sit").unwrap();
    let log = tc.log("node1.sit");
    assert!(
        exit_counter(&log, "rx_gso") > 0,
        "the receiving node wrote no GSO super-packets:\n{log}"
    );
    assert_eq!(exit_counter(&log, "rx_oversize"), 0, "{log}");
}
