//! End to end with `[dataplane] packet_tx = true`: outer packets leave
//! through an AF_PACKET socket on the underlay device (next-hop MAC from the
//! neighbour table). A 64 MiB TCP transfer between pods arrives byte for
//! byte, the daemons really hold a packet socket, and the sending one put
//! at least 90 % of its outer packets through it. Needs root.

mod common;

use std::time::Duration;

use common::{exit_counter, stats, tcp_transfer, tunl_bin, wait_until};
use tunl_lab::testbed::{DaemonOptions, TunlCluster};
use tunl_lab::topology::ClusterSpec;

const TOTAL: usize = 64 << 20;
const PORT: u16 = 7401;

#[test]
#[ignore = "needs root: scripts/test"]
fn tcp_64mib_with_packet_tx_arrives_byte_for_byte() {
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
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
        // The first packets took the raw socket, whose ARP resolved node1;
        // wait until node2's daemon has learnt node1's MAC and used it.
        wait_until(
            || {
                let _ = c.ping("demo-hello-perf", server_ip, 1, Duration::from_millis(10));
                stats(&tc, "node2.perf").counter("tx_af_packet").unwrap() > 0
            },
            "node2's daemon to send through its packet socket",
        );
    }
    let got = tcp_transfer(&tc, "demo-hello-perf", "demo-hello-sit", PORT, TOTAL);
    assert_eq!(got, TOTAL);

    tc.stop("node2.perf").unwrap();
    let log = tc.log("node2.perf");
    assert_eq!(exit_counter(&log, "tx_errors"), 0, "{log}");
    // The transfer left through the packet socket (node1's MAC was known
    // before it began): allow a few batches through the raw socket.
    let (sent, fast) = (
        exit_counter(&log, "tx_packets"),
        exit_counter(&log, "tx_af_packet"),
    );
    assert!(
        sent >= (TOTAL / 1500) as u64 && fast * 10 >= sent * 9,
        "{fast} of {sent} outer packets via AF_PACKET\n{log}"
    );
}
