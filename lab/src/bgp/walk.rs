//! `tunl lab --bgp`: the seed article's control plane walked through live,
//! in the article's order: the BGP sessions (with the count of sessions,
//! mesh against route reflectors), each node's routes from BIRD, the
//! all-to-all pod ping, a block move under traffic, and in CrossSubnet mode
//! a capture with one IP layer for same-subnet traffic and two for
//! cross-subnet traffic. It closes with the lab's figures.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{BgpCluster, BgpSpec, BlockMove, MOVED_ADDRESS, MOVED_BLOCK, MoveOptions, Sessions};
use crate::capture::{self, CapturedPacket};
use crate::lab::{self, LabArgs, LabError, LabReport, heading};
use crate::topology;
use tunl::control::{Client, Request, RouteList};

/// How long BGP may take to converge at start.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Nodes whose routes are printed in full; beyond that, the first three.
const ROUTES_SHOWN: usize = 8;

/// What the BGP lab observed.
#[derive(Debug, Clone, Default)]
pub struct BgpReport {
    /// Established sessions as BIRD listed them.
    pub sessions: Sessions,
    /// Sessions a full mesh of these nodes has: N(N−1)/2.
    pub mesh_sessions: usize,
    /// Sessions with the route reflectors: N·K.
    pub reflector_sessions: usize,
    /// From the BIRDs' start until every route was in every kernel.
    pub converged: Duration,
    /// The block moves.
    pub moves: Vec<BlockMove>,
    /// CrossSubnet: the captured pod-to-pod packets to a node in the same
    /// subnet and to one in the other subnet.
    pub cross_subnet: Option<(Vec<CapturedPacket>, Vec<CapturedPacket>)>,
}

/// Runs the BGP lab.
pub(crate) fn run(
    args: &LabArgs,
    tunl: &Path,
    out: &mut dyn Write,
    interrupted: &AtomicBool,
) -> Result<LabReport, LabError> {
    let nodes = args.nodes.unwrap_or(4);
    let mut spec = BgpSpec::new(nodes)
        .with_subnets(args.subnets)
        .with_pods_per_node(args.pods_per_node.unwrap_or(1))
        .with_tag(args.tag.clone());
    spec.replace_existing = true;
    spec.underlay_mtu = args.mtu;
    if args.mesh {
        spec = spec.mesh();
    } else if let Some(k) = args.route_reflectors {
        spec = spec.with_reflectors(k);
    }
    // The block moves and CrossSubnet are shown from tcpdump captures.
    let options = lab::building(&args.tag, args.workers, out)?;
    let mut bgp = BgpCluster::start(spec, tunl, options)?;
    write!(out, "{}", bgp.cluster())?;
    writeln!(
        out,
        "tunl runs on every node in place of the kernel's tunl0, with no routes in its config:\n\
         BIRD 2 runs on every node{} and installs them (configs and logs in {})",
        match bgp.spec().reflectors {
            0 => " (full mesh)".to_owned(),
            1 => " and on the route reflector".to_owned(),
            k => format!(" and on {k} route reflectors"),
        },
        bgp.tunl().dir().display()
    )?;
    if let Some(n) = bgp.pinned_neighbours() {
        writeln!(
            out,
            "The underlay's {n} ARP entries are pinned (permanent): the kernel's ARP table is shared by \
             all namespaces and holds {} other entries (net.ipv4.neigh.default.gc_thresh3).",
            topology::arp_table_limit().unwrap_or_default()
        )?;
    }

    let mut report = LabReport::default();
    let result = walk(&mut bgp, args, out, interrupted, &mut report);
    if let Err(e) = result {
        if interrupted.load(Ordering::Relaxed) {
            drop(bgp);
            return Err(LabError::Interrupted);
        }
        if args.keep {
            // Left up for a look at what failed.
            writeln!(out, "\n{e}")?;
            lab::keep(bgp.keep(), tunl, out)?;
        }
        return Err(e);
    }
    if args.keep {
        let ask = bgp
            .birds()
            .iter()
            .find(|b| !b.reflector)
            .map(|b| b.socket.display().to_string());
        lab::keep(bgp.keep(), tunl, out)?;
        if let Some(socket) = ask {
            writeln!(out, "Ask BIRD:         birdc -s {socket} show route")?;
        }
    } else {
        lab::counters(bgp.tunl(), out)?;
        heading(out, "Tearing down")?;
        drop(bgp);
        writeln!(out, "All lab namespaces removed.")?;
    }
    Ok(report)
}

fn walk(
    bgp: &mut BgpCluster,
    args: &LabArgs,
    out: &mut dyn Write,
    interrupted: &AtomicBool,
    report: &mut LabReport,
) -> Result<(), LabError> {
    let mut figures = BgpReport {
        mesh_sessions: bgp.spec().mesh_sessions(),
        reflector_sessions: bgp.spec().reflector_sessions(),
        ..BgpReport::default()
    };
    figures.converged = bgp.wait_converged(CONVERGE_TIMEOUT)?;
    sessions(bgp, out, &mut figures)?;
    lab::check(interrupted)?;
    routes(bgp, out)?;
    tunl_view(bgp, out)?;
    lab::check(interrupted)?;
    lab::all_to_all(bgp.tunl(), out, interrupted, report)?;
    lab::check(interrupted)?;
    block_moves(bgp, args.moves, out, interrupted, &mut figures)?;
    if bgp.spec().subnets > 1 {
        lab::check(interrupted)?;
        figures.cross_subnet = Some(cross_subnet_capture(bgp, args, out)?);
    }
    summary(bgp.spec(), &figures, out)?;
    report.bgp = Some(figures);
    Ok(())
}

fn indent(out: &mut dyn Write, text: &str) -> std::io::Result<()> {
    for line in text.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn sessions(
    bgp: &BgpCluster,
    out: &mut dyn Write,
    figures: &mut BgpReport,
) -> Result<(), LabError> {
    let first = bgp.cluster().nodes()[0].name.clone();
    heading(out, &format!("{first}: birdc show protocols (BGP client)"))?;
    indent(out, &bgp.birdc(&first, &["show", "protocols"])?)?;
    if let Some(rr) = bgp.cluster().hosts().first().map(|h| h.name.clone()) {
        heading(
            out,
            &format!("{rr}: birdc show protocols (route reflector)"),
        )?;
        indent(out, &bgp.birdc(&rr, &["show", "protocols"])?)?;
    }
    let s = bgp.sessions()?;
    let spec = bgp.spec();
    let (n, k) = (spec.nodes, spec.reflectors);
    writeln!(
        out,
        "\nBGP sessions Established (counted in every BIRD's show protocols, each session has two ends): {}",
        s.established()
    )?;
    if spec.is_mesh() {
        writeln!(
            out,
            "  full mesh: every node peers with every other: N(N-1)/2 = {n}*{}/2 = {}",
            n - 1,
            spec.mesh_sessions()
        )?;
        writeln!(out, "  (with one route reflector it would be N*K = {n})")?;
    } else {
        writeln!(
            out,
            "  route reflectors: every node peers with the {k} reflector(s) only: N*K = {n}*{k} = {}; \
             the reflectors list {} of them",
            spec.reflector_sessions(),
            s.at_reflectors()
        )?;
        writeln!(
            out,
            "  (a full mesh of {n} nodes would need N(N-1)/2 = {})",
            spec.mesh_sessions()
        )?;
    }
    writeln!(
        out,
        "Every route in every node's kernel {:.1} s after BIRD started.",
        figures.converged.as_secs_f64()
    )?;
    figures.sessions = s;
    Ok(())
}

fn routes(bgp: &BgpCluster, out: &mut dyn Write) -> Result<(), LabError> {
    let nodes = bgp.cluster().nodes().to_vec();
    let shown = if nodes.len() <= ROUTES_SHOWN {
        nodes.len()
    } else {
        3
    };
    for node in &nodes[..shown] {
        heading(
            out,
            &format!(
                "{}: ip route show proto bird (route -n in the article)",
                node.name
            ),
        )?;
        let text = bgp
            .cluster()
            .exec_ok(&node.name, &["ip", "route", "show", "proto", "bird"])?;
        for line in text.lines() {
            let mark = if line.starts_with(&format!("blackhole {MOVED_BLOCK}")) {
                "   <- the block that moves, owned by this node now"
            } else if line.starts_with("blackhole") {
                "   <- this node's block, announced over BGP"
            } else if line.contains("dev tunl0") {
                "   <- remote block via its node, on tunl0 (IPIP)"
            } else if line.contains("dev eth0") {
                "   <- same subnet: via eth0, no encapsulation"
            } else {
                ""
            };
            writeln!(out, "  {line}{mark}")?;
        }
    }
    if shown < nodes.len() {
        let mut complete = 0;
        for node in &nodes[shown..] {
            if bgp.missing_routes(&node.name)?.is_empty() {
                complete += 1;
            }
        }
        writeln!(
            out,
            "\n... and {} more nodes; {complete} of them have every other node's block from BIRD.",
            nodes.len() - shown
        )?;
    }
    Ok(())
}

/// What tunl forwards on: node 1's `tunl route list`, the kernel's routes
/// on its device with their origin (BIRD's, `proto bird`).
fn tunl_view(bgp: &BgpCluster, out: &mut dyn Write) -> Result<(), LabError> {
    let node = bgp.cluster().nodes()[0].name.clone();
    heading(
        out,
        &format!("{node}: tunl route list (what tunl forwards on, learned from the kernel)"),
    )?;
    let list: RouteList = Client::connect(&bgp.tunl().control_socket(&node))
        .and_then(|mut c| c.call(&Request::RouteList {}))
        .map_err(|e| LabError::Check(format!("{node}: {e}")))?;
    for r in &list.routes {
        let via = r
            .via
            .map_or_else(|| "(no single gateway)".to_owned(), |v| format!("via {v}"));
        writeln!(
            out,
            "  {} {via}  # {}, metric {}",
            r.prefix, r.origin, r.metric
        )?;
    }
    let from_bird = list.routes.iter().filter(|r| r.origin == "bird").count();
    writeln!(
        out,
        "{from_bird} of {} routes from BIRD; tunl's config has none.",
        list.routes.len()
    )?;
    Ok(())
}

fn block_moves(
    bgp: &mut BgpCluster,
    moves: usize,
    out: &mut dyn Write,
    interrupted: &AtomicBool,
    figures: &mut BgpReport,
) -> Result<(), LabError> {
    let nodes: Vec<String> = bgp
        .cluster()
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    heading(
        out,
        &format!(
            "block move: {MOVED_BLOCK} between {} and {}",
            nodes[0], nodes[1]
        ),
    )?;
    if nodes.len() < 3 || moves == 0 {
        writeln!(
            out,
            "  skipped: a block move needs a third node to ping from (--nodes 3 or more)"
        )?;
        return Ok(());
    }
    let pinger = bgp
        .cluster()
        .pods()
        .find(|p| p.node == nodes[nodes.len() - 1])
        .map(|p| p.name.clone())
        .ok_or_else(|| LabError::Check("no pod on the last node".to_owned()))?;
    let options = MoveOptions::default();
    writeln!(
        out,
        "  {MOVED_ADDRESS} answers on both {} and {} (on lo), as a pod would on the block's owner.\n  \
         {pinger} pings it every {} ms while the new owner announces the block and then the old owner\n  \
         withdraws it (make before break). Captures on both owners' eth0 show where the echo requests go.",
        nodes[0],
        nodes[1],
        options.interval.as_millis()
    )?;
    for i in 0..moves {
        lab::check(interrupted)?;
        let to = if bgp.moved_owner() == nodes[0] {
            nodes[1].clone()
        } else {
            nodes[0].clone()
        };
        let m = bgp.move_block(&to, &pinger, options)?;
        writeln!(out, "\n  move {}:\n{m}", i + 1)?;
        figures.moves.push(m);
    }
    Ok(())
}

fn cross_subnet_capture(
    bgp: &BgpCluster,
    args: &LabArgs,
    out: &mut dyn Write,
) -> Result<(Vec<CapturedPacket>, Vec<CapturedPacket>), LabError> {
    let c = bgp.cluster();
    let nodes = c.nodes();
    let node1 = &nodes[0];
    let pod_of = |i: usize| nodes.get(i).and_then(|n| n.pods.first()).cloned();
    let (Some(from), Some(cross)) = (pod_of(0), pod_of(1)) else {
        return Err(LabError::Check(
            "CrossSubnet needs pods on two nodes".to_owned(),
        ));
    };
    let same = pod_of(2);
    heading(
        out,
        &format!(
            "{}: capture of the underlay (eth0), CrossSubnet",
            node1.name
        ),
    )?;
    let pcap = args.pcap.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tunl-{}-node1-crosssubnet.pcap", args.tag))
    });
    let dump = lab::start_tcpdump(c, &node1.name, &pcap, "icmp or ip proto 4")?;
    std::thread::sleep(Duration::from_millis(300));
    let targets: Vec<_> = same.iter().chain(std::iter::once(&cross)).collect();
    for t in &targets {
        let _ = c.ping(&from.name, t.ip, 2, Duration::from_millis(200))?;
    }
    std::thread::sleep(Duration::from_millis(300));
    c.signal(dump, libc::SIGINT)?;
    let _ = c.wait_timeout(dump, Duration::from_secs(5))?;
    let packets = capture::read_pcap(&pcap).map_err(|e| LabError::Check(e.to_string()))?;
    let between = |a: Ipv4Addr, b: Ipv4Addr| -> Vec<CapturedPacket> {
        packets
            .iter()
            .filter(|p| {
                let i = p.innermost();
                (i.src == a && i.dst == b) || (i.src == b && i.dst == a)
            })
            .cloned()
            .collect()
    };
    let mut same_packets = Vec::new();
    if let Some(same) = &same {
        same_packets = between(from.ip, same.ip);
        writeln!(
            out,
            "{} -> {} ({} is in {}'s subnet):",
            from.name, same.name, same.node, node1.name
        )?;
        for p in &same_packets {
            writeln!(out, "{p}")?;
        }
    }
    let cross_packets = between(from.ip, cross.ip);
    writeln!(
        out,
        "{} -> {} ({} is in the other subnet, behind the router):",
        from.name, cross.name, cross.node
    )?;
    for p in &cross_packets {
        writeln!(out, "{p}")?;
    }
    let layers = |ps: &[CapturedPacket]| {
        let mut l: Vec<usize> = ps.iter().map(CapturedPacket::ip_layers).collect();
        l.dedup();
        l.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
    };
    if same.is_some() {
        writeln!(
            out,
            "same subnet: {} packets with {} IP layer(s) each (routed natively via eth0)",
            same_packets.len(),
            layers(&same_packets)
        )?;
    }
    writeln!(
        out,
        "other subnet: {} packets with {} IP layer(s) each (IPIP through tunl)",
        cross_packets.len(),
        layers(&cross_packets)
    )?;
    writeln!(out, "Written to {} (opens in Wireshark).", pcap.display())?;
    Ok((same_packets, cross_packets))
}

fn summary(spec: &BgpSpec, f: &BgpReport, out: &mut dyn Write) -> Result<(), LabError> {
    heading(out, "BGP lab figures")?;
    writeln!(
        out,
        "  nodes {}, route reflectors {}{}, subnets {}",
        spec.nodes,
        spec.reflectors,
        if spec.is_mesh() { " (full mesh)" } else { "" },
        spec.subnets
    )?;
    let (n, k) = (spec.nodes, spec.reflectors);
    let against = if spec.is_mesh() {
        format!(
            "full mesh N(N-1)/2 = {}; one route reflector would need N*K = {n}*1 = {n}",
            f.mesh_sessions
        )
    } else {
        format!(
            "route reflectors N*K = {n}*{k} = {}; a full mesh would need N(N-1)/2 = {}",
            f.reflector_sessions, f.mesh_sessions
        )
    };
    writeln!(
        out,
        "  BGP sessions Established, from BIRD: {}   ({against})",
        f.sessions.established()
    )?;
    writeln!(
        out,
        "  start: every route in every kernel {:.1} s after BIRD started",
        f.converged.as_secs_f64()
    )?;
    if f.moves.is_empty() {
        return Ok(());
    }
    let mut first: Vec<f64> = f.moves.iter().filter_map(|m| m.first_at_new_ms).collect();
    let mut propagated: Vec<f64> = f.moves.iter().filter_map(|m| m.propagated_ms).collect();
    let mut after_withdraw: Vec<f64> = f
        .moves
        .iter()
        .filter_map(|m| m.first_at_new_ms.map(|t| t - m.withdrawn_ms))
        .collect();
    let lost: Vec<String> = f.moves.iter().map(|m| m.lost().to_string()).collect();
    let spread = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        match v.as_slice() {
            [] => "never".to_owned(),
            [x] => format!("{x:.1} ms"),
            _ => format!(
                "{:.1} / {:.1} / {:.1} ms (min / median / max)",
                v[0],
                v[v.len() / 2],
                v[v.len() - 1]
            ),
        }
    };
    writeln!(
        out,
        "  block move (make before break, {} move(s), a ping every {} ms):",
        f.moves.len(),
        MoveOptions::default().interval.as_millis()
    )?;
    writeln!(
        out,
        "    announcement -> path at every BIRD that picks: {}",
        spread(&mut propagated)
    )?;
    writeln!(
        out,
        "    announcement -> first packet at the new owner: {}",
        spread(&mut first)
    )?;
    writeln!(
        out,
        "    withdrawal -> first packet at the new owner:   {}",
        spread(&mut after_withdraw)
    )?;
    writeln!(out, "    pings lost per move: {}", lost.join(", "))?;
    Ok(())
}
