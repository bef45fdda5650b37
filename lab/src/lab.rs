//! `tunl lab`: the seed article's Calico IPIP cluster, live, in one command.
//!
//! It builds the article's two nodes and two pods as a [`crate::testbed`]
//! (a tunl daemon on each node in place of the kernel's tunl0) and walks
//! through the article in its order: the routing tables, a ping between pods
//! (ttl=62), a capture of the underlay showing both IP layers (decoded by
//! [`crate::capture`]), a throughput figure, and the daemons' counters. Then
//! it tears everything down, unless `--keep`.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::capture;
use crate::testbed::{DaemonOptions, TunlCluster};
use crate::topology::{self, Cluster, ClusterSpec, ProcessOutput, TopologyError};
use tunl::control::{Client, Request, Stats};

/// The namespace tag of the lab's cluster (`tunl-lab-…`).
pub const LAB_TAG: &str = "lab";

/// Options of `tunl lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Leave the cluster running and print how to use and remove it.
    #[arg(long)]
    pub keep: bool,
    /// Number of nodes; with more than 2 (or --pods-per-node), a generated
    /// cluster gets a /26 block per node from 10.20.0.0/16 and an all-to-all
    /// ping instead of the article's walk-through.
    #[arg(long, value_name = "N")]
    pub nodes: Option<usize>,
    /// Pods per node in a generated cluster.
    #[arg(long, value_name = "M")]
    pub pods_per_node: Option<usize>,
    /// Underlay MTU (the tunnel MTU is 20 less).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u16).range(576..=9000))]
    pub mtu: u16,
    /// Seconds of the throughput measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Dataplane workers per daemon.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Where to write the underlay capture [default:
    /// /tmp/tunl-lab-node1-underlay.pcap, in $TMPDIR when set: outside the
    /// lab's folder, so it outlives the teardown].
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Namespace tag (namespaces are named tunl-TAG-NAME).
    #[arg(long, default_value = LAB_TAG, hide = true)]
    pub tag: String,
    /// The seed's control plane: BIRD 2 on every node (and on route
    /// reflectors) announces the blocks over BGP and installs the routes
    /// tunl forwards on (tunl's configs have none); shows the sessions
    /// (mesh N(N-1)/2 against N*K with reflectors), the routes, an
    /// all-to-all ping and a timed block move. Default 4 nodes (2 to 64);
    /// configs and BIRD logs in /tmp/tunl-lab. Needs Debian's bird2
    /// (scripts/setup.sh installs it).
    #[arg(long)]
    pub bgp: bool,
    /// With --bgp: the full node-to-node mesh instead of route reflectors.
    #[arg(long, requires = "bgp", conflicts_with = "route_reflectors")]
    pub mesh: bool,
    /// With --bgp: the number of route reflectors, BIRD instances in their
    /// own namespaces on the underlay (0 to 8, 0 is the mesh; default 1
    /// with more than 2 nodes, else a mesh).
    #[arg(long, value_name = "K", requires = "bgp")]
    pub route_reflectors: Option<usize>,
    /// With --bgp: underlay subnets, 1 or 2 (2: CrossSubnet, nodes in two
    /// subnets joined by a router; BIRD routes same-subnet blocks via eth0,
    /// not encapsulated, and the others via tunl0; a capture shows both).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "bgp")]
    pub subnets: usize,
    /// With --bgp: how many block moves to time, back and forth between
    /// node1 and node2 (make before break, under a ping every 2 ms from the
    /// last node; prints the time until traffic reached the new owner and
    /// the pings lost; needs 3 nodes or more).
    #[arg(long, value_name = "M", default_value_t = 1, requires = "bgp")]
    pub moves: usize,
}

impl Default for LabArgs {
    fn default() -> Self {
        LabArgs {
            keep: false,
            nodes: None,
            pods_per_node: None,
            mtu: 1500,
            seconds: 5,
            workers: 1,
            pcap: None,
            tag: LAB_TAG.to_owned(),
            bgp: false,
            mesh: false,
            route_reflectors: None,
            subnets: 1,
            moves: 1,
        }
    }
}

/// Why the lab failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Building or driving the cluster failed.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Writing the report failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// A step did not give the expected result.
    #[error("{0}")]
    Check(String),
    /// Ctrl-C.
    #[error("interrupted; the cluster was torn down")]
    Interrupted,
}

/// What the lab observed, for callers that check it (the end-to-end test).
#[derive(Debug, Default, Clone)]
pub struct LabReport {
    /// TTLs of the ping replies between the article's pods.
    pub ping_ttls: Vec<u8>,
    /// Decoded IPIP packets of the capture.
    pub captured: Vec<capture::CapturedPacket>,
    /// The pcap file.
    pub pcap: Option<PathBuf>,
    /// Measured pod-to-pod TCP throughput, bit/s.
    pub throughput: Option<f64>,
    /// Pings of the all-to-all matrix: (replied, sent).
    pub matrix: Option<(usize, usize)>,
    /// What the BGP lab (`--bgp`) observed.
    pub bgp: Option<crate::bgp::walk::BgpReport>,
}

/// Runs the lab, writing its report to `out`. `tunl` is the binary that runs
/// the daemons.
pub fn run(args: &LabArgs, tunl: &Path, out: &mut dyn Write) -> Result<LabReport, LabError> {
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    if args.bgp {
        return crate::bgp::walk::run(args, tunl, out, &interrupted);
    }
    let generated = args.nodes.is_some() || args.pods_per_node.is_some();
    let spec = if generated {
        let nodes = args.nodes.unwrap_or(2);
        let pods = args.pods_per_node.unwrap_or(1);
        if !(2..=200).contains(&nodes) || !(1..=60).contains(&pods) {
            return Err(LabError::Check(
                "--nodes must be 2..=200 and --pods-per-node 1..=60".to_owned(),
            ));
        }
        ClusterSpec::generated(nodes, pods)
    } else {
        ClusterSpec::seed()
    }
    .with_tag(args.tag.clone())
    .with_replace_existing(true)
    .with_underlay_mtu(args.mtu);

    let options = building(&args.tag, args.workers, out)?;
    let tc = TunlCluster::start(spec, tunl, options)?;
    write!(out, "{}", tc.cluster())?;
    writeln!(
        out,
        "tunl runs on every node in place of the kernel's tunl0 (configs and logs in {})",
        tc.dir().display()
    )?;

    let mut report = LabReport::default();
    let result = if generated {
        all_to_all(&tc, out, &interrupted, &mut report)
    } else {
        walk_through(&tc, args, out, &interrupted, &mut report)
    };
    if let Err(e) = result {
        if interrupted.load(Ordering::Relaxed) {
            drop(tc);
            return Err(LabError::Interrupted);
        }
        return Err(e);
    }
    if args.keep {
        keep(tc, tunl, out)?;
    } else {
        counters(&tc, out)?;
        heading(out, "Tearing down")?;
        drop(tc);
        writeln!(out, "All lab namespaces removed.")?;
    }
    Ok(report)
}

pub(crate) fn heading(out: &mut dyn Write, title: &str) -> std::io::Result<()> {
    writeln!(out, "\n== {title} ==")
}

pub(crate) fn check(interrupted: &AtomicBool) -> Result<(), LabError> {
    if interrupted.load(Ordering::Relaxed) {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

/// The article's order: routes, ping, capture, throughput.
fn walk_through(
    tc: &TunlCluster,
    args: &LabArgs,
    out: &mut dyn Write,
    interrupted: &AtomicBool,
    report: &mut LabReport,
) -> Result<(), LabError> {
    let c = tc.cluster();
    let (perf, sit) = ("demo-hello-perf", "demo-hello-sit");
    let sit_ip = tc.pod_ip(sit)?;

    for node in c.nodes() {
        heading(
            out,
            &format!("{}: ip route (route -n in the article)", node.name),
        )?;
        let routes = c.exec_ok(&node.name, &["ip", "route", "show"])?;
        for line in routes.lines() {
            let mark = if line.contains("dev tunl0") {
                "   <- remote block via the other node, on tunl0"
            } else {
                ""
            };
            writeln!(out, "  {line}{mark}")?;
        }
    }
    check(interrupted)?;

    heading(out, &format!("{perf}: ping {sit_ip}"))?;
    c.wait_reachable(perf, sit_ip, Duration::from_secs(10))?;
    let ping = c.ping(perf, sit_ip, 3, Duration::from_millis(200))?;
    for line in ping.raw.lines() {
        writeln!(out, "  {line}")?;
    }
    report.ping_ttls = ping.ttls.clone();
    if ping.received == 0 {
        return Err(LabError::Check(format!("no ping reply from {sit_ip}")));
    }
    check(interrupted)?;

    let node1 = &c.nodes()[0];
    heading(
        out,
        &format!(
            "{}: capture of the underlay (eth0), decoded by tunl",
            node1.name
        ),
    )?;
    let pcap = args.pcap.clone().unwrap_or_else(|| default_pcap(&args.tag));
    let tcpdump = start_tcpdump(c, &node1.name, &pcap, "ip proto 4")?;
    std::thread::sleep(Duration::from_millis(300));
    let _ = c.ping(perf, sit_ip, 2, Duration::from_millis(200))?;
    std::thread::sleep(Duration::from_millis(300));
    c.signal(tcpdump, libc::SIGINT)?;
    let _ = c.wait_timeout(tcpdump, Duration::from_secs(5))?;
    let packets = capture::read_pcap(&pcap).map_err(|e| LabError::Check(e.to_string()))?;
    let ipip: Vec<_> = packets.into_iter().filter(|p| p.is_ipip()).collect();
    for p in &ipip {
        writeln!(out, "{p}")?;
    }
    writeln!(
        out,
        "{} IPIP packets: two IP layers each, outer node to node (protocol 4), inner pod to pod.",
        ipip.len()
    )?;
    writeln!(out, "Written to {} (opens in Wireshark).", pcap.display())?;
    report.captured = ipip;
    report.pcap = Some(pcap);
    check(interrupted)?;

    heading(
        out,
        &format!(
            "throughput {perf} -> {sit} (iperf3, TCP, 1 stream, {} s)",
            args.seconds
        ),
    )?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let bps = with_progress(out, tty, args.seconds, interrupted, || {
        c.iperf3_tcp(perf, sit, args.seconds, 1)
    })??;
    writeln!(
        out,
        "  {:.2} Gbit/s pod to pod through tunl ({} retransmits)",
        bps.bits_per_second / 1e9,
        bps.retransmits
    )?;
    report.throughput = Some(bps.bits_per_second);
    Ok(())
}

/// Where the capture goes without `--pcap`: `tunl-TAG-node1-underlay.pcap`
/// in the temporary folder (`$TMPDIR`, else `/tmp`), outside the cluster's
/// folder, which the teardown removes.
pub fn default_pcap(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tunl-{tag}-node1-underlay.pcap"))
}

/// Says that an earlier lab's namespaces (tag `tag`) are being replaced,
/// prints the first heading, and gives the daemons' options: `workers`,
/// and the raw underlay, since the labs show the underlay with tcpdump,
/// which sees no AF_XDP traffic on either end.
pub(crate) fn building(
    tag: &str,
    workers: usize,
    out: &mut dyn Write,
) -> Result<DaemonOptions, LabError> {
    let leftovers = topology::tagged_namespaces(tag).unwrap_or_default();
    if !leftovers.is_empty() {
        writeln!(
            out,
            "Found {} namespace(s) of an earlier lab (tunl-{tag}-*); replacing them.",
            leftovers.len(),
        )?;
    }
    heading(out, "Building the cluster")?;
    Ok(DaemonOptions {
        workers,
        underlay: tunl::config::Underlay::Raw,
        ..DaemonOptions::default()
    })
}

/// Pings every pod from every other pod and prints a matrix.
pub(crate) fn all_to_all(
    tc: &TunlCluster,
    out: &mut dyn Write,
    interrupted: &AtomicBool,
    report: &mut LabReport,
) -> Result<(), LabError> {
    let c = tc.cluster();
    let pods: Vec<(String, Ipv4Addr, String)> = c
        .pods()
        .map(|p| (p.name.clone(), p.ip, p.node.clone()))
        .collect();
    heading(out, &format!("all-to-all ping between {} pods", pods.len()))?;
    // Let every daemon's routes settle: one reachability check per node pair.
    if let (Some(first), Some(last)) = (pods.first(), pods.last()) {
        c.wait_reachable(&first.0, last.1, Duration::from_secs(10))?;
    }
    let width = pods.iter().map(|p| p.0.len()).max().unwrap_or(4).max(4);
    write!(out, "{:width$} ", "from\\to")?;
    for (i, _) in pods.iter().enumerate() {
        write!(out, "{:>4}", i + 1)?;
    }
    writeln!(out)?;
    let (mut ok, mut total) = (0, 0);
    let mut failures = Vec::new();
    for (i, (from, _, _)) in pods.iter().enumerate() {
        check(interrupted)?;
        write!(out, "{:width$} ", format!("{}:{from}", i + 1))?;
        for (to_name, to_ip, _) in &pods {
            if to_name == from {
                write!(out, "{:>4}", "-")?;
                continue;
            }
            total += 1;
            let r = c.ping(from, *to_ip, 1, Duration::from_millis(100))?;
            if r.received > 0 {
                ok += 1;
                write!(
                    out,
                    "{:>4}",
                    r.ttls.first().map_or("ok".to_owned(), |t| t.to_string())
                )?;
            } else {
                failures.push(format!("{from} -> {to_name} ({to_ip})"));
                write!(out, "{:>4}", "X")?;
            }
            out.flush()?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{ok}/{total} pings answered (cells show the reply TTL: 62 across nodes, 63 within a node)"
    )?;
    report.matrix = Some((ok, total));
    if !failures.is_empty() {
        return Err(LabError::Check(format!(
            "unanswered: {}",
            failures.join(", ")
        )));
    }
    Ok(())
}

/// Runs `f` on a thread while printing a progress bar for `seconds`.
fn with_progress<T: Send>(
    out: &mut dyn Write,
    tty: bool,
    seconds: u32,
    interrupted: &AtomicBool,
    f: impl FnOnce() -> T + Send,
) -> Result<T, LabError> {
    std::thread::scope(|s| {
        let job = s.spawn(f);
        let start = Instant::now();
        let total = Duration::from_secs(u64::from(seconds.max(1)));
        let width = 30;
        let mut last_step = usize::MAX;
        while !job.is_finished() {
            let frac = (start.elapsed().as_secs_f64() / total.as_secs_f64()).min(1.0);
            let done = (frac * width as f64) as usize;
            if tty {
                let _ = write!(
                    out,
                    "\r  [{}{}] {:>3.0}%",
                    "#".repeat(done),
                    ".".repeat(width - done),
                    frac * 100.0
                );
            } else if done / 10 != last_step {
                // Not a terminal: a line per third of the way.
                last_step = done / 10;
                let _ = writeln!(out, "  ... {:>3.0}%", frac * 100.0);
            }
            let _ = out.flush();
            if interrupted.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if tty {
            let _ = writeln!(out, "\r  [{}] 100%", "#".repeat(width));
        } else {
            let _ = writeln!(out, "  ... done");
        }
        job.join()
            .map_err(|_| LabError::Check("the measurement thread panicked".to_owned()))
    })
}

/// Starts `tcpdump` on `node`'s `eth0`, writing the packets `filter` takes
/// to `file` (replaced), and returns its pid once the file exists. (tcpdump
/// creates the file before its filter is attached: callers leave it a
/// moment before sending.)
pub(crate) fn start_tcpdump(
    c: &Cluster,
    node: &str,
    file: &Path,
    filter: &str,
) -> Result<u32, TopologyError> {
    let _ = std::fs::remove_file(file);
    let file_arg = file.to_string_lossy();
    let pid = c.spawn(
        node,
        &[
            "tcpdump",
            "-i",
            "eth0",
            "-nn",
            "--immediate-mode",
            "-U",
            "-w",
            &file_arg,
            filter,
        ],
        ProcessOutput::Null,
    )?;
    wait_for_file(file, Duration::from_secs(5));
    Ok(pid)
}

pub(crate) fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Prints every daemon's counters as `tunl stats` reads them from its
/// control socket: non-zero drops by reason after the traffic counters.
pub(crate) fn counters(tc: &TunlCluster, out: &mut dyn Write) -> Result<(), LabError> {
    heading(out, "daemon counters (tunl stats)")?;
    for d in tc.daemons() {
        let stats: Stats = Client::connect(&tc.control_socket(&d.node))
            .and_then(|mut c| c.call(&Request::Stats {}))
            .map_err(|e| LabError::Check(format!("{}: {e}", d.node)))?;
        let fields: Vec<String> = stats
            .counters
            .iter()
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        writeln!(out, "  {}:\n    {}", d.node, fields.join(" "))?;
        for (reason, n) in stats.drops.iter().filter(|(_, n)| *n > 0) {
            writeln!(out, "    dropped {reason}={n}")?;
        }
    }
    Ok(())
}

/// Prints how to use the cluster left up, each daemon's control socket and
/// a ready `tunl status --socket ...` line (with the binary that ran it),
/// then lets the cluster go.
pub(crate) fn keep(tc: TunlCluster, tunl: &Path, out: &mut dyn Write) -> Result<(), LabError> {
    let c = tc.cluster();
    heading(out, "the cluster stays up (--keep)")?;
    if let Some(pod) = c.pods().next() {
        writeln!(out, "Enter a pod:      ip netns exec {} bash", pod.netns)?;
    }
    if let Some(node) = c.nodes().first() {
        writeln!(out, "Enter a node:     ip netns exec {} bash", node.netns)?;
    }
    for d in tc.daemons() {
        let socket = tc.control_socket(&d.node);
        writeln!(out, "tunl on {}:", d.node)?;
        writeln!(out, "  control socket: {}", socket.display())?;
        writeln!(
            out,
            "  status:         {} status --socket {}",
            tunl.display(),
            socket.display()
        )?;
        writeln!(out, "  log:            {}", d.log.display())?;
    }
    writeln!(
        out,
        "All namespaces:   ip netns list | grep tunl-{}-",
        c.tag()
    )?;
    let (tag, _) = tc.keep();
    writeln!(
        out,
        "Tear it down:     {} lab{} down",
        tunl.display(),
        if tag == LAB_TAG {
            String::new()
        } else {
            format!(" --tag {tag}")
        }
    )?;
    Ok(())
}

/// `tunl lab down`: removes a kept lab.
pub fn down(tag: &str, out: &mut dyn Write) -> Result<(), LabError> {
    let n = topology::teardown(tag)?;
    let dir = std::env::temp_dir().join(format!("tunl-{tag}"));
    let _ = std::fs::remove_dir_all(dir);
    writeln!(out, "Removed {n} namespace(s) of lab {tag}.")?;
    Ok(())
}
