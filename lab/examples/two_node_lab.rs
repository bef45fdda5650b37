//! A two-node lab with the library API: the seed article's cluster in
//! network namespaces, a tunl daemon on each node, a ping and a TCP
//! measurement between the pods. `tunl lab` is the polished version of this.
//!
//! Run as root after building the binary:
//! `cargo build --release && sudo target/release/examples/two_node_lab`
//! (or `cargo run --release --example two_node_lab` as root).

use std::path::PathBuf;
use std::time::Duration;

use tunl_lab::testbed::{DaemonOptions, TunlCluster};
use tunl_lab::topology::ClusterSpec;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Examples live in target/<profile>/examples/, the binary one level up.
    let exe = std::env::current_exe()?;
    let tunl: PathBuf = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("tunl"))
        .filter(|p| p.exists())
        .ok_or("build the tunl binary first: cargo build --release")?;

    let tc = TunlCluster::start(ClusterSpec::seed(), &tunl, DaemonOptions::default())?;
    print!("{}", tc.cluster());

    let sit = tc.pod_ip("demo-hello-sit")?;
    let c = tc.cluster();
    c.wait_reachable("demo-hello-perf", sit, Duration::from_secs(10))?;
    let ping = c.ping("demo-hello-perf", sit, 3, Duration::from_millis(200))?;
    println!("{}", ping.raw.trim_end());

    let tcp = c.iperf3_tcp("demo-hello-perf", "demo-hello-sit", 3, 1)?;
    println!(
        "iperf3 TCP pod to pod through tunl: {:.2} Gbit/s",
        tcp.bits_per_second / 1e9
    );
    println!("node1 routes: {:?}", tc.kernel_routes("node1.sit")?);
    // Dropping `tc` stops the daemons (they remove their routes and
    // devices) and deletes every namespace.
    Ok(())
}
