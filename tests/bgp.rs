//! The seed's control plane end to end: real BIRD 2 on every node (and on
//! route reflectors) installs the routes, and tunl forwards on them. Every
//! tunl config here has no routes: tunl learns them from the kernel.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{stats, tcp_transfer, tunl_bin};
use tunl_lab::bgp::{BgpCluster, BgpSpec, MOVED_BLOCK, MoveOptions};
use tunl_lab::lab::{self, LabArgs};
use tunl_lab::testbed::DaemonOptions;

/// How long BGP may take to converge.
const CONVERGE: Duration = Duration::from_secs(30);

fn tag(name: &str) -> String {
    format!("{name}{}", std::process::id() % 100_000)
}

fn start(spec: BgpSpec) -> BgpCluster {
    let bgp = BgpCluster::start(spec, tunl_bin(), DaemonOptions::default()).unwrap();
    if let Err(e) = bgp.wait_converged(CONVERGE) {
        panic!("{e}\n{}", bird_logs(&bgp));
    }
    bgp
}

fn bird_logs(bgp: &BgpCluster) -> String {
    bgp.birds()
        .iter()
        .map(|b| format!("--- bird on {} ---\n{}", b.name, bgp.bird_log(&b.name)))
        .collect()
}

/// Polls `cond` every 50 ms for up to `timeout`.
fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pod_on(bgp: &BgpCluster, node: usize) -> (String, Ipv4Addr) {
    let n = &bgp.cluster().nodes()[node];
    (n.pods[0].name.clone(), n.pods[0].ip)
}

fn node(bgp: &BgpCluster, i: usize) -> (String, Ipv4Addr, ipnetwork::Ipv4Network) {
    let n = &bgp.cluster().nodes()[i];
    (n.name.clone(), n.underlay, n.block)
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[test]
#[ignore = "needs root: scripts/test"]
fn two_nodes_over_ibgp_ping_ttl_62_and_carry_tcp_intact() {
    let bgp = start(BgpSpec::new(2).with_tag(tag("bgp2n")));
    let tc = bgp.tunl();
    let (n1, _, _) = node(&bgp, 0);
    let (_, n2_addr, n2_block) = node(&bgp, 1);
    // tunl's config has no route: the route is BIRD's, the Calico shape.
    assert!(!tc.config_text(&n1).unwrap().contains("[[route]]"));
    let routes = bgp.bird_routes(&n1).unwrap();
    let r = routes
        .iter()
        .find(|r| r.dst == n2_block)
        .unwrap_or_else(|| panic!("no BIRD route to {n2_block}: {routes:?}"));
    assert_eq!(r.gateway, Some(n2_addr));
    assert_eq!(r.dev.as_deref(), Some("tunl0"));
    assert!(r.onlink, "{r:?}");
    assert_eq!(bgp.sessions().unwrap().established(), 1, "a two-node mesh");

    let ((p1, _), (p2, p2_ip)) = (pod_on(&bgp, 0), pod_on(&bgp, 1));
    let c = bgp.cluster();
    c.wait_reachable(&p1, p2_ip, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", common::logs(tc)));
    let ping = c.ping(&p1, p2_ip, 3, Duration::from_millis(100)).unwrap();
    assert!(ping.all_replied(), "{}", ping.raw);
    assert!(ping.ttls.iter().all(|t| *t == 62), "{}", ping.raw);
    let total = 8 << 20;
    assert_eq!(tcp_transfer(tc, &p1, &p2, 5201, total), total);
    let s = stats(tc, &n1);
    assert!(s.counter("tx_packets").unwrap() > 1000, "{s:?}");

    // Nothing outlives the cluster: the BIRDs are stopped and reaped.
    let pids: Vec<u32> = bgp.birds().iter().filter_map(|b| b.pid).collect();
    assert_eq!(pids.len(), 2);
    drop(bgp);
    for pid in pids {
        assert!(!process_alive(pid), "bird {pid} outlived the cluster");
    }
}

#[test]
#[ignore = "needs root: scripts/test"]
fn withdrawn_block_is_not_tunnelled_and_a_reannounced_one_is() {
    let mut bgp = start(BgpSpec::new(2).with_tag(tag("bgpwd")));
    let (n1, _, _) = node(&bgp, 0);
    let (n2, _, n2_block) = node(&bgp, 1);
    let ((p1, _), (_, p2_ip)) = (pod_on(&bgp, 0), pod_on(&bgp, 1));
    // A catch-all for the pool into tunl0 behind the main table (table
    // `default`, which the kernel consults after main and tunl does not
    // mirror): traffic for a block without a route still reaches tunl.
    bgp.cluster()
        .exec_ok(
            &n1,
            &[
                "ip",
                "route",
                "add",
                "10.20.0.0/16",
                "dev",
                "tunl0",
                "table",
                "default",
            ],
        )
        .unwrap();
    let c = bgp.cluster();
    c.wait_reachable(&p1, p2_ip, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", common::logs(bgp.tunl())));

    // Withdrawal: node2's BIRD stops (SIGTERM: it tells its peer).
    bgp.stop_bird(&n2).unwrap();
    wait_for(
        Duration::from_secs(10),
        "node1 to drop node2's block",
        || {
            !bgp.bird_routes(&n1)
                .unwrap()
                .iter()
                .any(|r| r.dst == n2_block)
        },
    );
    let c = bgp.cluster();
    let before = stats(bgp.tunl(), &n1).counter("no_route").unwrap();
    let out = c
        .exec(
            &p1,
            &["ping", "-n", "-c", "1", "-W", "2", &p2_ip.to_string()],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    // tunl answers for the destination it has no route to.
    assert!(
        text.contains(&format!(
            "From {p2_ip} icmp_seq=1 Destination Net Unreachable"
        )),
        "{text}"
    );
    assert_eq!(
        stats(bgp.tunl(), &n1).counter("no_route").unwrap(),
        before + 1,
        "the echo request was tunl's no_route drop"
    );

    // Re-announcement: node2's BIRD comes back and the block carries
    // traffic again.
    bgp.start_bird(&n2).unwrap();
    bgp.wait_converged(CONVERGE)
        .unwrap_or_else(|e| panic!("{e}\n{}", bird_logs(&bgp)));
    let c = bgp.cluster();
    c.wait_reachable(&p1, p2_ip, Duration::from_secs(10))
        .unwrap();
    let ping = c.ping(&p1, p2_ip, 3, Duration::from_millis(100)).unwrap();
    assert!(ping.all_replied(), "{}", ping.raw);
    assert!(ping.ttls.iter().all(|t| *t == 62), "{}", ping.raw);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn tunl_restarted_under_a_running_bird_keeps_and_relearns_its_routes() {
    let mut bgp = start(BgpSpec::new(3).with_tag(tag("bgprs")));
    let (n1, _, _) = node(&bgp, 0);
    let ((p1, _), (_, p2_ip), (_, p3_ip)) = (pod_on(&bgp, 0), pod_on(&bgp, 1), pod_on(&bgp, 2));
    let c = bgp.cluster();
    c.wait_reachable(&p1, p3_ip, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", common::logs(bgp.tunl())));
    let before = bgp.bird_routes(&n1).unwrap();
    assert!(
        before
            .iter()
            .filter(|r| r.dev.as_deref() == Some("tunl0"))
            .count()
            >= 2
    );

    // Watch for deletions of BIRD's routes while tunl restarts.
    let monitor_log = bgp.tunl().dir().join("monitor.log");
    let monitor = c
        .spawn(
            &n1,
            &["ip", "-o", "monitor", "route"],
            tunl_lab::topology::ProcessOutput::File(monitor_log.clone()),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    bgp.tunl().stop(&n1).unwrap();
    bgp.tunl_mut().restart(&n1).unwrap();
    // At once, before BIRD's next kernel scan (60 s) could have put any
    // back: every route BIRD had installed is there.
    let after = bgp.bird_routes(&n1).unwrap();
    assert_eq!(
        after,
        before,
        "BIRD's routes after the restart\n{}",
        std::fs::read_to_string(&monitor_log).unwrap_or_default()
    );
    let c = bgp.cluster();
    // tunl learned them from the dump: traffic flows without BIRD's help.
    for ip in [p2_ip, p3_ip] {
        c.wait_reachable(&p1, ip, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", common::logs(bgp.tunl())));
        let ping = c.ping(&p1, ip, 3, Duration::from_millis(100)).unwrap();
        assert!(
            ping.all_replied() && ping.ttls.iter().all(|t| *t == 62),
            "{}",
            ping.raw
        );
    }
    c.signal(monitor, libc::SIGTERM).unwrap();
    let _ = c.wait_timeout(monitor, Duration::from_secs(2));
    let log = std::fs::read_to_string(&monitor_log).unwrap();
    let deleted: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("Deleted") && l.contains("proto bird"))
        .collect();
    assert!(
        deleted.is_empty(),
        "tunl removed BIRD's routes: {deleted:?}"
    );
}

#[test]
#[ignore = "needs root: scripts/test"]
fn six_nodes_with_a_route_reflector_ping_all_to_all_and_move_a_block() {
    let args = LabArgs {
        bgp: true,
        nodes: Some(6),
        tag: tag("bgp6"),
        ..LabArgs::default()
    };
    let mut out = Vec::new();
    let result = lab::run(&args, tunl_bin(), &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let report = result.unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(report.matrix, Some((30, 30)), "{text}");
    let bgp = report.bgp.expect("the BGP report");
    // One reflector: N·K = 6 sessions as BIRD lists them, all at the
    // reflector, against the 15 of a mesh.
    assert_eq!(bgp.sessions.established(), 6, "{text}");
    assert_eq!(bgp.sessions.at_reflectors(), 6, "{text}");
    assert_eq!(bgp.mesh_sessions, 15);
    // tunl on node1 follows the other five nodes' blocks, all BIRD's (the
    // moved block is node1's own, a blackhole, on no device).
    assert!(text.contains("5 of 5 routes from BIRD"), "{text}");
    // The block move: the echo requests reached the new owner after the
    // announcement, none before, and none were lost (make before break).
    assert_eq!(bgp.moves.len(), 1, "{text}");
    let m = &bgp.moves[0];
    assert_eq!((m.from.as_str(), m.to.as_str()), ("node1", "node2"));
    // The withdrawal went out once the reflector had the new path.
    assert_eq!(m.choosers, ["rr1"], "{text}");
    assert!(m.propagated_ms.is_some(), "{text}");
    assert!(m.first_at_new_ms.is_some(), "{text}");
    assert_eq!(m.early_at_new, 0, "{text}");
    assert!(m.ping.transmitted > 100, "{text}");
    assert_eq!(m.lost(), 0, "{text}");
    assert!(
        text.contains(&format!("{MOVED_BLOCK} node1 -> node2")),
        "{text}"
    );
    assert!(text.contains("All lab namespaces removed"), "{text}");
    assert!(
        tunl_lab::topology::tagged_namespaces(&args.tag)
            .unwrap()
            .is_empty()
    );
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_block_moves_back_and_forth_under_a_mesh() {
    let mut bgp = start(BgpSpec::new(3).mesh().with_tag(tag("bgpmv")));
    let (n1, n1_addr, _) = node(&bgp, 0);
    let (n2, n2_addr, _) = node(&bgp, 1);
    let (n3, _, _) = node(&bgp, 2);
    let (p3, _) = pod_on(&bgp, 2);
    assert_eq!(bgp.sessions().unwrap().established(), 3, "N(N-1)/2");
    let via = |bgp: &BgpCluster| {
        bgp.bird_routes(&n3)
            .unwrap()
            .into_iter()
            .find(|r| r.dst == MOVED_BLOCK)
            .and_then(|r| r.gateway)
    };
    assert_eq!(via(&bgp), Some(n1_addr));
    for (to, addr) in [(&n2, n2_addr), (&n1, n1_addr)] {
        let m = bgp.move_block(to, &p3, MoveOptions::default()).unwrap();
        // In a mesh every other node chooses between the two paths.
        assert_eq!(m.choosers.len(), 2, "{m}");
        assert!(m.propagated_ms.is_some(), "{m}");
        assert!(m.first_at_new_ms.is_some(), "{m}");
        assert_eq!(m.lost(), 0, "{m}");
        assert_eq!(m.encapsulated, Some(true), "{m}");
        assert_eq!(via(&bgp), Some(addr), "{m}");
    }
}

#[test]
#[ignore = "needs root: scripts/test"]
fn cross_subnet_routes_the_same_subnet_natively_and_tunnels_across() {
    let args = LabArgs {
        bgp: true,
        nodes: Some(4),
        subnets: 2,
        tag: tag("bgpx"),
        pcap: Some(std::env::temp_dir().join(format!("{}.pcap", tag("bgpx")))),
        ..LabArgs::default()
    };
    let mut out = Vec::new();
    let result = lab::run(&args, Path::new(env!("CARGO_BIN_EXE_tunl")), &mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let report = result.unwrap_or_else(|e| panic!("{e}\n{text}"));
    let _ = std::fs::remove_file(args.pcap.as_ref().unwrap());
    assert_eq!(report.matrix, Some((12, 12)), "{text}");
    // node1 (172.16.35.4) and node3 (172.16.35.6) share a subnet, node2
    // (172.16.36.5) is behind the router: BIRD installs node3's block via
    // eth0 and node2's via tunl0.
    assert!(
        text.contains("10.20.0.128/26 via 172.16.35.6 dev eth0 metric 32"),
        "{text}"
    );
    assert!(
        text.contains("10.20.0.64/26 via 172.16.36.5 dev tunl0 metric 32 onlink"),
        "{text}"
    );
    let (same, cross) = report.bgp.unwrap().cross_subnet.expect("the capture");
    // Echo requests and replies both ways (2 pings each).
    assert!(same.len() >= 4, "{text}");
    assert!(cross.len() >= 4, "{text}");
    for p in &same {
        assert_eq!(p.ip_layers(), 1, "same subnet, not encapsulated: {p}");
    }
    for p in &cross {
        assert_eq!(p.ip_layers(), 2, "other subnet, IPIP: {p}");
        let ends = [p.outer.src.to_string(), p.outer.dst.to_string()];
        assert!(
            ends.contains(&"172.16.35.4".to_owned()) && ends.contains(&"172.16.36.5".to_owned()),
            "outer node to node: {p}"
        );
    }
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_two_subnet_underlay_routes_through_its_router_and_pins_arp() {
    use tunl_lab::topology::Cluster;
    let spec = BgpSpec::new(4)
        .with_subnets(2)
        .with_tag(tag("bgpul"))
        .cluster_spec()
        .unwrap();
    let c = Cluster::build(spec).unwrap();
    let router = c
        .router_netns()
        .expect("a router joins the subnets")
        .to_owned();
    assert_eq!(c.switch_namespaces().len(), 2);
    let (n1, n2, n3) = (&c.nodes()[0], &c.nodes()[1], &c.nodes()[2]);
    let rr1 = c.host("rr1").expect("the reflector host");
    // Nodes and the reflector reach each other, across the router too
    // (node2 is in the other subnet: one hop more, TTL 63).
    for (from, to, ttl) in [
        (&n1.name, n3.underlay, 64),
        (&n1.name, n2.underlay, 63),
        (&n2.name, rr1.underlay, 63),
    ] {
        let out = c
            .exec_ok(from, &["ping", "-n", "-c", "1", "-W", "2", &to.to_string()])
            .unwrap();
        assert!(out.contains(&format!("ttl={ttl}")), "{from} -> {to}: {out}");
    }
    let default = c
        .exec_ok(&n2.name, &["ip", "route", "show", "default"])
        .unwrap();
    assert!(default.contains("via 172.16.36.1 dev eth0"), "{default}");

    // Pinning: every interface of a segment gets a permanent entry for
    // every other one (subnet A: node1, node3, rr1, the router; B: node2,
    // node4, the router).
    assert_eq!(c.underlay_arp_entries(), 4 * 3 + 3 * 2);
    assert_eq!(c.pin_underlay_neighbours().unwrap(), 18);
    let permanent = c
        .exec_ok(&n1.name, &["ip", "neigh", "show", "nud", "permanent"])
        .unwrap();
    for addr in ["172.16.35.6", "172.16.35.201", "172.16.35.1"] {
        assert!(permanent.contains(addr), "{permanent}");
    }
    let on_router = c
        .exec_ok(&router, &["ip", "neigh", "show", "nud", "permanent"])
        .unwrap();
    assert_eq!(on_router.lines().count(), 5, "{on_router}");
    let out = c
        .exec_ok(
            &n1.name,
            &["ping", "-n", "-c", "1", "-W", "2", &n2.underlay.to_string()],
        )
        .unwrap();
    assert!(out.contains("1 received"), "{out}");
}
