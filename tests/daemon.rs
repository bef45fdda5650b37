//! End-to-end tests of `tunl run` on the seed article's cluster, in network
//! namespaces (they need root, as under CI).

use std::path::Path;
use std::time::Duration;

use tunl::testbed::{DaemonOptions, TunlCluster};
use tunl::topology::ClusterSpec;

const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";

fn tunl_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tunl"))
}

fn seed_cluster() -> TunlCluster {
    TunlCluster::start(ClusterSpec::seed(), tunl_bin(), DaemonOptions::default())
        .expect("start the seed cluster with tunl on both nodes")
}

#[test]
fn ping_between_pods_on_two_nodes_shows_ttl_62() {
    let tc = seed_cluster();
    let c = tc.cluster();
    let to = tc.pod_ip(SIT).unwrap();
    let r = c
        .wait_reachable(PERF, to, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nnode1 log:\n{}\nnode2 log:\n{}",
                tc.log("node1.sit"),
                tc.log("node2.perf")
            )
        });
    assert_eq!(r.ttls.last(), Some(&62), "{}", r.raw);
    let r = c.ping(PERF, to, 5, Duration::from_millis(100)).unwrap();
    assert_eq!(r.received, 5, "{}", r.raw);
    assert!(r.ttls.iter().all(|t| *t == 62), "{}", r.raw);
}
