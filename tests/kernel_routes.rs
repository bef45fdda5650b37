//! Routes from the kernel: routes another program installs on tunl's device
//! (here `ip route ... proto bird`, as Calico's BIRD does) drive tunl like
//! they drive the kernel's tunl0. End-to-end, in network namespaces (they
//! need root, as under CI, and do not skip without it).

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::{
    inject_ipip, listen_udp, logs, netns_of, pattern, pool_route_tunl_does_not_follow, stats,
    tunl_bin, udp_packet, wait_until,
};
use ipnetwork::Ipv4Network;
use tunl::control::{Client, ListedRoute, Request, RouteList, Status};
use tunl_lab::testbed::{DaemonOptions, TunlCluster, in_netns};
use tunl_lab::topology::ClusterSpec;

const NODE1: &str = "node1.sit";
const NODE2: &str = "node2.perf";
const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";

/// The seed cluster, tunl on both nodes with no `[[route]]` in its config.
fn seed_without_routes(options: DaemonOptions) -> TunlCluster {
    TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            routes: false,
            ..options
        },
    )
    .expect("start the seed cluster without config routes")
}

fn underlay(tc: &TunlCluster, node: &str) -> Ipv4Addr {
    tc.cluster().node(node).unwrap().underlay
}

fn block(tc: &TunlCluster, node: &str) -> Ipv4Network {
    tc.cluster().node(node).unwrap().block
}

/// `ip ARGS` in `node`'s namespace; panics with its error.
fn ip(tc: &TunlCluster, node: &str, args: &[&str]) -> String {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    tc.cluster()
        .exec_ok(node, &full)
        .unwrap_or_else(|e| panic!("ip {args:?} on {node}: {e}"))
}

/// `ip route add PREFIX via VIA dev tunl0 onlink proto bird EXTRA...`, as
/// BIRD installs a block.
fn bird_route(tc: &TunlCluster, node: &str, prefix: &str, via: Ipv4Addr, extra: &[&str]) {
    let via = via.to_string();
    let mut args = vec![
        "route", "add", prefix, "via", &via, "dev", "tunl0", "onlink", "proto", "bird",
    ];
    args.extend_from_slice(extra);
    ip(tc, node, &args);
}

/// Each node's block routed to it on the other node, by "BIRD".
fn bird_routes_both_ways(tc: &TunlCluster) {
    for (on, to) in [(NODE1, NODE2), (NODE2, NODE1)] {
        let prefix = block(tc, to).to_string();
        bird_route(tc, on, &prefix, underlay(tc, to), &[]);
    }
}

fn client(tc: &TunlCluster, node: &str) -> Client {
    Client::connect(&tc.control_socket(node)).unwrap()
}

fn route_list(tc: &TunlCluster, node: &str) -> Vec<ListedRoute> {
    client(tc, node)
        .call::<RouteList>(&Request::RouteList {})
        .unwrap()
        .routes
}

fn status(tc: &TunlCluster, node: &str) -> Status {
    client(tc, node).call(&Request::Status {}).unwrap()
}

/// The route tunl lists for `prefix` on `node`, if any.
fn listed(tc: &TunlCluster, node: &str, prefix: &str) -> Option<ListedRoute> {
    let prefix: Ipv4Network = prefix.parse().unwrap();
    route_list(tc, node)
        .into_iter()
        .find(|r| r.prefix == prefix)
}

/// Waits until tunl on `node` lists `prefix` as `want` says.
fn wait_listed(
    tc: &TunlCluster,
    node: &str,
    prefix: &str,
    what: &str,
    want: impl Fn(Option<&ListedRoute>) -> bool,
) {
    wait_until(
        || want(listed(tc, node, prefix).as_ref()),
        &format!("{prefix} on {node}: {what}"),
    );
}

fn via(r: Option<&ListedRoute>) -> Option<Ipv4Addr> {
    r.and_then(|r| r.via)
}

fn drops(tc: &TunlCluster, node: &str, reason: &str) -> u64 {
    stats(tc, node).counter(reason).unwrap()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_route_another_program_installed_carries_pods_and_its_deletion_unreaches_them() {
    let tc = seed_without_routes(DaemonOptions::default());
    let c = tc.cluster();
    let sit = tc.pod_ip(SIT).unwrap();
    let sit_block = block(&tc, NODE1).to_string();
    assert!(route_list(&tc, NODE2).is_empty());
    bird_routes_both_ways(&tc);
    let r = c
        .wait_reachable(PERF, sit, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62), "{}", r.raw);
    let r = c.ping(PERF, sit, 5, Duration::from_millis(100)).unwrap();
    assert_eq!(r.received, 5, "{}", r.raw);
    assert!(r.ttls.iter().all(|t| *t == 62), "{}", r.raw);

    let route = listed(&tc, NODE2, &sit_block).expect("tunl lists BIRD's route");
    assert_eq!(
        (route.via, &*route.origin, route.metric),
        (Some(underlay(&tc, NODE1)), "bird", 0)
    );
    let s = status(&tc, NODE2);
    assert_eq!(s.routes_by_origin, vec![("bird".to_owned(), 1)]);
    assert_eq!(s.nodes[0].origins, ["bird"]);
    let text = std::process::Command::new(tunl_bin())
        .args(["route", "list", "--socket"])
        .arg(tc.control_socket(NODE2))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("{sit_block} via {}  # bird", underlay(&tc, NODE1))),
        "{text}"
    );

    // The route goes: packets that still reach tunl get net-unreachable.
    pool_route_tunl_does_not_follow(&tc, NODE2);
    ip(&tc, NODE2, &["route", "del", &sit_block, "dev", "tunl0"]);
    wait_listed(&tc, NODE2, &sit_block, "gone", |r| r.is_none());
    let before = drops(&tc, NODE2, "no_route");
    let out = c
        .exec(
            &netns_of(&tc, PERF),
            &["ping", "-c", "1", "-W", "2", &sit.to_string()],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Destination Net Unreachable"), "{text}");
    assert_eq!(drops(&tc, NODE2, "no_route"), before + 1);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_lowest_metric_wins_and_the_next_takes_over() {
    let tc = seed_without_routes(DaemonOptions::default());
    let c = tc.cluster();
    let sit = tc.pod_ip(SIT).unwrap();
    let sit_block = block(&tc, NODE1).to_string();
    let perf_block = block(&tc, NODE2).to_string();
    let node1 = underlay(&tc, NODE1);
    bird_route(&tc, NODE1, &perf_block, underlay(&tc, NODE2), &[]);
    // The right node at metric 100, a node that does not exist at 50.
    let nowhere = Ipv4Addr::new(172, 16, 36, 99);
    bird_route(&tc, NODE2, &sit_block, node1, &["metric", "100"]);
    bird_route(&tc, NODE2, &sit_block, nowhere, &["metric", "50"]);
    wait_listed(&tc, NODE2, &sit_block, "via the metric-50 route", |r| {
        via(r) == Some(nowhere)
    });
    assert_eq!(listed(&tc, NODE2, &sit_block).unwrap().metric, 50);
    let r = c.ping(PERF, sit, 3, Duration::from_millis(100)).unwrap();
    assert_eq!(
        r.received, 0,
        "packets went to the metric-50 node: {}",
        r.raw
    );

    ip(
        &tc,
        NODE2,
        &["route", "del", &sit_block, "dev", "tunl0", "metric", "50"],
    );
    wait_listed(&tc, NODE2, &sit_block, "via the metric-100 route", |r| {
        via(r) == Some(node1)
    });
    let r = c.ping(PERF, sit, 3, Duration::from_millis(100)).unwrap();
    assert_eq!(r.received, 3, "{}\n{}", r.raw, logs(&tc));
    assert!(r.ttls.iter().all(|t| *t == 62), "{}", r.raw);
}

/// The device and gateway arguments of the kernel's route to `to` on
/// `node` (`dev eth0`, or `via X dev eth0`), before tunl's routes change it.
fn underlay_route(tc: &TunlCluster, node: &str, to: Ipv4Addr) -> Vec<String> {
    let out = ip(tc, node, &["-o", "route", "get", &to.to_string()]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut args = Vec::new();
    for key in ["via", "dev"] {
        if let Some(i) = words.iter().position(|w| *w == key) {
            args.push(key.to_owned());
            args.push(words[i + 1].to_owned());
        }
    }
    args
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_route_without_gateway_encapsulates_toward_the_inner_destination() {
    // No relay check (the inner destination is node1 itself), and node1
    // accepted at node2: a route without gateway names no node.
    let node_addrs: Vec<Ipv4Network> = ClusterSpec::seed()
        .nodes
        .iter()
        .map(|n| Ipv4Network::new(n.underlay, 32).unwrap())
        .collect();
    let tc = seed_without_routes(DaemonOptions {
        blocks: false,
        allow: node_addrs,
        ..DaemonOptions::default()
    });
    let node1 = underlay(&tc, NODE1);
    let node1_host = format!("{node1}/32");
    let to_node1 = underlay_route(&tc, NODE2, node1);
    bird_route(
        &tc,
        NODE1,
        &block(&tc, NODE2).to_string(),
        underlay(&tc, NODE2),
        &[],
    );
    // Node1's own address into tunl0, no gateway: tunl sends the outer
    // packet to the inner destination, node1.
    ip(
        &tc,
        NODE2,
        &[
            "route",
            "add",
            &node1_host,
            "dev",
            "tunl0",
            "proto",
            "static",
        ],
    );
    wait_listed(&tc, NODE2, &node1_host, "a route without gateway", |r| {
        r.is_some_and(|r| r.via.is_none() && r.nexthops.is_empty() && r.origin == "static")
    });
    // The outer packet to node1 takes the same route back into tunl0: the
    // loop the kernel's tunl0 also refuses.
    let c = tc.cluster();
    let r = c.ping(PERF, node1, 2, Duration::from_millis(100)).unwrap();
    assert_eq!(r.received, 0, "{}", r.raw);
    assert!(drops(&tc, NODE2, "tunnel_loop") >= 2, "{}", logs(&tc));
    // Outer packets take the underlay route to node1. They leave through
    // tunl's IPPROTO_RAW socket, so the routing rule sees protocol 255.
    let mut args = vec!["route", "add", &node1_host];
    args.extend(to_node1.iter().map(String::as_str));
    args.extend(["table", "200"]);
    ip(&tc, NODE2, &args);
    ip(
        &tc,
        NODE2,
        &[
            "rule", "add", "ipproto", "255", "table", "200", "pref", "100",
        ],
    );
    let r = c.ping(PERF, node1, 3, Duration::from_millis(100)).unwrap();
    assert_eq!(r.received, 3, "{}\n{}", r.raw, logs(&tc));
    let s = status(&tc, NODE1);
    let from_node2 = s
        .nodes
        .iter()
        .find(|n| n.node == underlay(&tc, NODE2))
        .expect("node2 is a node of node1's routes");
    assert!(from_node2.rx_packets >= 3, "{s:?}");
}

/// Sends `count` UDP datagrams from `pod` to `dst`.
fn send_flow(tc: &TunlCluster, pod: &str, dst: Ipv4Addr, count: usize) {
    in_netns(&netns_of(tc, pod), move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        for _ in 0..count {
            sock.send_to(b"flow", (dst, 9)).unwrap();
        }
    })
    .unwrap();
}

/// Inner packets tunl on `node` has sent toward each of `nodes`.
fn tx_toward(tc: &TunlCluster, node: &str, nodes: &[Ipv4Addr]) -> Vec<u64> {
    let s = status(tc, node);
    nodes
        .iter()
        .map(|n| {
            s.nodes
                .iter()
                .find(|s| s.node == *n)
                .map_or(0, |s| s.tx_packets)
        })
        .collect()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_multipath_route_spreads_flows_and_keeps_each_on_one_next_hop() {
    let tc = TunlCluster::start(
        ClusterSpec::generated(3, 1),
        tunl_bin(),
        DaemonOptions::default(),
    )
    .expect("start a 3-node cluster");
    let nodes: Vec<_> = tc.cluster().nodes().to_vec();
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let pod = n1.pods[0].name.clone();
    let (a, b) = (n2.underlay.to_string(), n3.underlay.to_string());
    ip(
        &tc,
        &n1.name,
        &[
            "route",
            "add",
            "10.99.0.0/24",
            "proto",
            "bird",
            "nexthop",
            "via",
            &a,
            "dev",
            "tunl0",
            "onlink",
            "nexthop",
            "via",
            &b,
            "dev",
            "tunl0",
            "onlink",
        ],
    );
    // One next hop on tunl0, one on the underlay: only tunl0's is tunl's.
    let dev = underlay_route(&tc, &n1.name, n2.underlay);
    let dev = &dev[dev.iter().position(|w| w == "dev").unwrap() + 1];
    ip(
        &tc,
        &n1.name,
        &[
            "route",
            "add",
            "10.99.1.0/24",
            "nexthop",
            "via",
            &a,
            "dev",
            "tunl0",
            "onlink",
            "nexthop",
            "via",
            &b,
            "dev",
            dev,
            "onlink",
        ],
    );
    // Routes on another device are not tunl's at all.
    ip(
        &tc,
        &n1.name,
        &[
            "route",
            "add",
            "10.99.2.0/24",
            "via",
            &b,
            "dev",
            dev,
            "onlink",
        ],
    );
    wait_listed(&tc, &n1.name, "10.99.0.0/24", "multipath", |r| {
        r.is_some_and(|r| r.nexthops.len() == 2)
    });
    let mp = listed(&tc, &n1.name, "10.99.0.0/24").unwrap();
    let hops: Vec<_> = mp.nexthops.iter().map(|h| (h.via, h.weight)).collect();
    assert_eq!(hops, vec![(Some(n2.underlay), 1), (Some(n3.underlay), 1)]);
    assert_eq!(mp.origin, "bird");
    let half = listed(&tc, &n1.name, "10.99.1.0/24").expect("its tunl0 next hop");
    assert_eq!((half.via, half.nexthops.len()), (Some(n2.underlay), 0));
    assert!(listed(&tc, &n1.name, "10.99.2.0/24").is_none());

    // Flow after flow (the hash is of the inner addresses): each flow's
    // packets all go one way, and both ways are used.
    let toward = [n2.underlay, n3.underlay];
    let mut used = BTreeSet::new();
    for host in 1..=16u8 {
        let before = tx_toward(&tc, &n1.name, &toward);
        send_flow(&tc, &pod, Ipv4Addr::new(10, 99, 0, host), 5);
        let mut delta = vec![0; 2];
        wait_until(
            || {
                let now = tx_toward(&tc, &n1.name, &toward);
                delta = vec![now[0] - before[0], now[1] - before[1]];
                delta[0] + delta[1] == 5
            },
            "the flow's 5 packets counted",
        );
        assert!(
            delta.contains(&0),
            "flow to 10.99.0.{host} split: {delta:?}"
        );
        used.insert(usize::from(delta[0] == 0));
    }
    assert_eq!(used.len(), 2, "16 flows all took one next hop");
}

#[test]
#[ignore = "needs root: scripts/test"]
fn tunl_never_removes_others_routes_at_exit_or_after_kill_9_and_relearns_them() {
    let mut tc = seed_without_routes(DaemonOptions::default());
    bird_routes_both_ways(&tc);
    let sit = tc.pod_ip(SIT).unwrap();
    let node1 = underlay(&tc, NODE1);
    // A route of tunl's own beside BIRD's, and BIRD's for another block.
    let o = client(&tc, NODE2).call_raw(&Request::RouteAdd {
        prefix: "10.99.5.0/26".parse().unwrap(),
        via: node1,
    });
    assert!(o.unwrap().ok);
    bird_route(&tc, NODE2, "10.99.6.0/26", node1, &["metric", "32"]);
    // The routes, without the `linkdown` flag a device without carrier
    // (tunl stopped) shows.
    let bird = |tc: &TunlCluster| {
        ip(tc, NODE2, &["route", "show", "proto", "bird"]).replace(" linkdown", "")
    };
    let others = bird(&tc);
    assert_eq!(others.lines().count(), 2, "{others}");
    assert_eq!(tc.kernel_routes(NODE2).unwrap().len(), 1);
    // tunl refuses to delete another program's route.
    let refused = client(&tc, NODE2)
        .call_raw(&Request::RouteDel {
            prefix: "10.99.6.0/26".parse().unwrap(),
        })
        .unwrap();
    assert!(!refused.ok);
    assert!(
        refused
            .error
            .unwrap()
            .contains("not tunl's route (origin bird)")
    );

    // SIGTERM: tunl's own route goes, BIRD's stay.
    assert!(tc.stop(NODE2).unwrap().success(), "{}", tc.log(NODE2));
    assert!(tc.kernel_routes(NODE2).unwrap().is_empty());
    assert_eq!(bird(&tc), others);
    tc.restart(NODE2).unwrap();
    let loaded = tc
        .log(NODE2)
        .lines()
        .rev()
        .find(|l| l.contains("routes on the device loaded from the kernel"))
        .map(str::to_owned);
    assert!(
        loaded.as_deref().is_some_and(|l| l.contains(" routes=2 ")),
        "{loaded:?}"
    );
    let r = tc
        .cluster()
        .ping(PERF, sit, 3, Duration::from_millis(100))
        .unwrap();
    assert_eq!(r.received, 3, "{}\n{}", r.raw, logs(&tc));
    assert_eq!(route_list(&tc, NODE2).len(), 2);

    // SIGKILL: nothing is cleaned up; the restart removes none of BIRD's.
    tc.kill(NODE2).unwrap();
    assert_eq!(bird(&tc), others);
    tc.restart(NODE2).unwrap();
    assert_eq!(bird(&tc), others);
    let listed: Vec<String> = route_list(&tc, NODE2)
        .iter()
        .map(|r| format!("{} {}", r.prefix, r.origin))
        .collect();
    assert_eq!(
        listed,
        vec![
            format!("{} bird", block(&tc, NODE1)),
            "10.99.6.0/26 bird".to_owned()
        ]
    );
    let r = tc
        .cluster()
        .ping(PERF, sit, 3, Duration::from_millis(100))
        .unwrap();
    assert_eq!(r.received, 3, "{}\n{}", r.raw, logs(&tc));
    assert!(r.ttls.iter().all(|t| *t == 62), "{}", r.raw);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_device_going_down_flushes_its_routes_silently_and_tunl_follows() {
    let tc = seed_without_routes(DaemonOptions::default());
    bird_routes_both_ways(&tc);
    let sit = tc.pod_ip(SIT).unwrap();
    let sit_block = block(&tc, NODE1).to_string();
    wait_listed(&tc, NODE2, &sit_block, "BIRD's route", |r| r.is_some());
    // The kernel drops the routes of a device that goes down without a
    // route message: only the link change tells.
    ip(&tc, NODE2, &["link", "set", "tunl0", "down"]);
    assert!(ip(&tc, NODE2, &["route", "show", "dev", "tunl0"]).is_empty());
    wait_listed(&tc, NODE2, &sit_block, "flushed", |r| r.is_none());
    ip(&tc, NODE2, &["link", "set", "tunl0", "up"]);
    bird_route(&tc, NODE2, &sit_block, underlay(&tc, NODE1), &[]);
    let r = tc
        .cluster()
        .wait_reachable(PERF, sit, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62), "{}", r.raw);
    assert_eq!(status(&tc, NODE2).route_resyncs, 0, "a reload, not a loss");
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_allow_set_follows_a_new_gateway() {
    let tc = seed_without_routes(DaemonOptions::default());
    bird_routes_both_ways(&tc);
    let node1 = underlay(&tc, NODE1);
    let sit = tc.pod_ip(SIT).unwrap();
    // A node tunl on node1 does not know yet.
    let newcomer = Ipv4Addr::new(172, 16, 36, 77);
    // From a pod in the newcomer's block, so that the test holds with
    // security.strict_source on as well (the inner source in a block routed
    // via the sender).
    let pod = Ipv4Addr::new(10, 99, 7, 5);
    let packet = |port| udp_packet(pod, sit, port, b"hello");
    let refused = listen_udp(&tc, SIT, 7201, Duration::from_millis(600));
    inject_ipip(&tc, NODE2, newcomer, node1, &packet(7201));
    assert!(refused.join().unwrap().is_empty());
    assert_eq!(drops(&tc, NODE1, "unknown_source"), 1);

    bird_route(&tc, NODE1, "10.99.7.0/26", newcomer, &[]);
    wait_listed(&tc, NODE1, "10.99.7.0/26", "via the newcomer", |r| {
        via(r) == Some(newcomer)
    });
    let accepted = listen_udp(&tc, SIT, 7202, Duration::from_millis(600));
    inject_ipip(&tc, NODE2, newcomer, node1, &packet(7202));
    assert_eq!(
        accepted.join().unwrap(),
        vec![b"hello".to_vec()],
        "{}",
        logs(&tc)
    );

    ip(
        &tc,
        NODE1,
        &["route", "del", "10.99.7.0/26", "dev", "tunl0"],
    );
    wait_listed(&tc, NODE1, "10.99.7.0/26", "gone", |r| r.is_none());
    let refused = listen_udp(&tc, SIT, 7203, Duration::from_millis(600));
    inject_ipip(&tc, NODE2, newcomer, node1, &packet(7203));
    assert!(refused.join().unwrap().is_empty());
    assert_eq!(drops(&tc, NODE1, "unknown_source"), 2);
}

/// Runs `ip -batch` in `node`'s namespace with these commands.
fn ip_batch(tc: &TunlCluster, node: &str, name: &str, commands: &str) {
    let file = tc.dir().join(format!("{node}-{name}.batch"));
    std::fs::write(&file, commands).unwrap();
    ip(tc, node, &["-batch", file.to_str().unwrap()]);
}

/// `route add`/`del` lines for /32s of 10.100.0.0/16 numbered `range`,
/// via `via` on tunl0 (other prefixes than any block).
fn churn_lines(verb: &str, range: std::ops::Range<u32>, via: Ipv4Addr) -> String {
    range
        .map(|i| {
            let host = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i);
            match verb {
                "del" => format!("route del {host}/32 dev tunl0\n"),
                _ => format!("route {verb} {host}/32 via {via} dev tunl0 onlink proto bird\n"),
            }
        })
        .collect()
}

/// Sends `total` bytes of [`pattern`] from `from_pod` to `to_pod` over TCP,
/// paced to take about `time` (so the transfer does not fill the queues a
/// ping shares with it), checks every byte and returns how many arrived.
fn paced_tcp_transfer(
    tc: &TunlCluster,
    from_pod: &str,
    to_pod: &str,
    port: u16,
    total: usize,
    time: Duration,
) -> usize {
    use std::io::{Read, Write};
    let to = std::net::SocketAddrV4::new(tc.pod_ip(to_pod).unwrap(), port);
    let (server_ns, client_ns) = (netns_of(tc, to_pod), netns_of(tc, from_pod));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_netns(&server_ns, move || {
            let listener = std::net::TcpListener::bind(to).unwrap();
            ready_tx.send(()).unwrap();
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let (mut got, mut want) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            let mut at = 0;
            loop {
                let n = s.read(&mut got).unwrap();
                if n == 0 {
                    return at;
                }
                pattern(at, &mut want[..n]);
                assert!(got[..n] == want[..n], "bytes after {at} differ");
                at += n;
            }
        })
        .unwrap()
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    in_netns(&client_ns, move || {
        let mut s =
            std::net::TcpStream::connect_timeout(&to.into(), Duration::from_secs(10)).unwrap();
        let chunk = 64 << 10;
        let chunks = total.div_ceil(chunk);
        let start = Instant::now();
        let mut buf = vec![0u8; chunk];
        for i in 0..chunks {
            let at = i * chunk;
            let n = chunk.min(total - at);
            pattern(at, &mut buf[..n]);
            s.write_all(&buf[..n]).unwrap();
            let due = start + time.mul_f64((i + 1) as f64 / chunks as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    })
    .unwrap();
    server.join().unwrap()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_thousand_route_changes_a_second_leave_an_unchanged_route_intact() {
    let tc = TunlCluster::start(ClusterSpec::seed(), tunl_bin(), DaemonOptions::default())
        .expect("start the seed cluster");
    let c = tc.cluster();
    let sit = tc.pod_ip(SIT).unwrap();
    c.wait_reachable(PERF, sit, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    let seconds = 10;
    let total = 40 << 20;
    let updates_before = [NODE1, NODE2].map(|n| status(&tc, n).route_updates);
    let (transfer, ping) = std::thread::scope(|s| {
        let churn: Vec<_> = [(NODE1, NODE2), (NODE2, NODE1)]
            .into_iter()
            .map(|(node, other)| {
                let tc = &tc;
                s.spawn(move || {
                    // 500 adds and 500 deletes each second, on both nodes.
                    let via = underlay(tc, other);
                    let batch = churn_lines("add", 0..500, via) + &churn_lines("del", 0..500, via);
                    let start = Instant::now();
                    for second in 1..=seconds {
                        ip_batch(tc, node, "churn", &batch);
                        let due = start + Duration::from_secs(second);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                })
            })
            .collect();
        let transfer = s.spawn(|| {
            paced_tcp_transfer(&tc, PERF, SIT, 5301, total, Duration::from_secs(seconds))
        });
        let ping = s.spawn(|| {
            c.ping(PERF, sit, 100 * seconds as u32, Duration::from_millis(10))
                .unwrap()
        });
        for h in churn {
            h.join().unwrap();
        }
        (transfer.join().unwrap(), ping.join().unwrap())
    });
    assert_eq!(transfer, total, "{}", logs(&tc));
    assert_eq!(ping.received, ping.transmitted, "{}", ping.raw);
    // The churned prefixes are gone from tunl's table as from the kernel's.
    for (node, before) in [NODE1, NODE2].into_iter().zip(updates_before) {
        let left: Vec<_> = route_list(&tc, node)
            .into_iter()
            .filter(|r| r.prefix.ip().octets()[1] == 100)
            .collect();
        assert!(left.is_empty(), "{node}: {left:?}");
        // Each second's burst reached the LPM (at least one update each).
        let updates = status(&tc, node).route_updates - before;
        assert!(updates >= seconds, "{node}: {updates} LPM updates");
    }
}

/// The routes of `ip route show dev tunl0` (main table): `PREFIX via NODE`.
fn kernel_table(tc: &TunlCluster, node: &str) -> BTreeSet<(Ipv4Network, Option<Ipv4Addr>)> {
    ip(tc, node, &["-o", "route", "show", "dev", "tunl0"])
        .lines()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let prefix = if words[0].contains('/') {
                words[0].parse().unwrap()
            } else {
                Ipv4Network::new(words[0].parse().unwrap(), 32).unwrap()
            };
            let via = words
                .iter()
                .position(|w| *w == "via")
                .map(|i| words[i + 1].parse().unwrap());
            (prefix, via)
        })
        .collect()
}

fn tunl_table(tc: &TunlCluster, node: &str) -> BTreeSet<(Ipv4Network, Option<Ipv4Addr>)> {
    route_list(tc, node)
        .into_iter()
        .map(|r| (r.prefix, r.via))
        .collect()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn an_overrun_resyncs_and_the_lpm_ends_equal_to_the_kernel() {
    // A listener buffer of 1 KiB (the kernel makes it 2304 bytes): a burst
    // overruns it.
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            extra_config: "\n[routing]\nlisten_buffer = 1024\n".to_owned(),
            ..DaemonOptions::default()
        },
    )
    .expect("start the seed cluster");
    let node2 = underlay(&tc, NODE2);
    let other = Ipv4Addr::new(172, 16, 36, 88);
    assert_eq!(status(&tc, NODE1).route_resyncs, 0);
    // 10k changes in one burst: 6000 adds, 2000 deletes, 2000 replaces.
    let burst = churn_lines("add", 0..6000, node2)
        + &churn_lines("del", 0..2000, node2)
        + &churn_lines("replace", 4000..6000, other);
    ip_batch(&tc, NODE1, "burst", &burst);
    let kernel = kernel_table(&tc, NODE1);
    assert_eq!(kernel.len(), 4001, "4000 churned and the config's route");
    wait_until(
        || tunl_table(&tc, NODE1) == kernel,
        "tunl's table equal to the kernel's",
    );
    let s = status(&tc, NODE1);
    assert!(s.route_resyncs >= 1, "no overrun: {s:?}");
    assert_eq!(
        tc.log(NODE1).matches("ENOBUFS").count(),
        1,
        "the overrun is logged, once however many resyncs ({}): {}",
        s.route_resyncs,
        tc.log(NODE1)
    );
    // Traffic on the config's route carries on.
    let r = tc
        .cluster()
        .ping(SIT, tc.pod_ip(PERF).unwrap(), 3, Duration::from_millis(100))
        .unwrap();
    assert_eq!(r.received, 3, "{}", r.raw);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn tunl_bench_routes_runs_and_prints_each_figure_beside_its_target() {
    let out = std::process::Command::new(tunl_bin())
        .args([
            "bench",
            "routes",
            "--sizes",
            "300",
            "--base",
            "200",
            "--adds",
            "5",
            "--churn-rates",
            "500",
            "--churn-seconds",
            "1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "start: 300 kernel routes loaded",
        "RSS with 300 routes",
        "(ack returned) -> LPM, p99",
        "churn at 500/s",
        "status while 10 route adds are queued, at 300",
        "start: 300 config routes installed",
        "RSS with 300 config routes",
        "highest rate followed without a resync",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(
        text.contains("<= 5 ms") && text.contains(">= 10000 /s"),
        "{text}"
    );
}

/// Issue 11 and the hardening note: at start tunl installs its config's
/// route for a prefix BIRD also routes, without a fight. tunl's is metric
/// 0 with its own tag, BIRD's metric 32: two kernel routes, neither
/// replacing the other. tunl's wins (the lowest metric) while tunl runs;
/// its stop removes only its own, and BIRD's then carries the block; the
/// next start puts tunl's back beside it, BIRD's untouched throughout.
#[test]
#[ignore = "needs root: scripts/test"]
fn the_configs_route_and_birds_for_one_prefix_live_side_by_side() {
    let tc = TunlCluster::start(ClusterSpec::seed(), tunl_bin(), DaemonOptions::default())
        .expect("start the seed cluster");
    let perf_block = block(&tc, NODE2).to_string();
    let node2 = underlay(&tc, NODE2);
    let nowhere = Ipv4Addr::new(172, 16, 36, 99);
    let routes_of = |tc: &TunlCluster| -> Vec<String> {
        ip(tc, NODE1, &["route", "show", &perf_block, "dev", "tunl0"])
            .lines()
            // The device has no carrier while tunl is stopped: `linkdown`.
            .map(|l| l.replace(" linkdown", "").trim().to_owned())
            .collect()
    };
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    bird_route(&tc, NODE1, &perf_block, nowhere, &["metric", "32"]);
    let birds = routes_of(&tc);
    assert_eq!(birds.len(), 1, "{birds:?}");
    assert!(birds[0].contains("proto bird") && birds[0].contains("metric 32"));
    let mut tc = tc;
    tc.restart(NODE1).unwrap();
    let both = routes_of(&tc);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(
        both.iter()
            .any(|l| l.contains(&format!("via {node2}")) && l.contains("proto 116")),
        "{both:?}"
    );
    assert!(both.contains(&birds[0]), "BIRD's route changed: {both:?}");
    wait_listed(&tc, NODE1, &perf_block, "tunl's route wins", |r| {
        r.is_some_and(|r| r.via == Some(node2) && r.origin == "tunl" && r.metric == 0)
    });
    let perf = tc.pod_ip(PERF).unwrap();
    let r = tc
        .cluster()
        .ping(SIT, perf, 3, Duration::from_millis(100))
        .unwrap();
    assert_eq!(r.received, 3, "{}\n{}", r.raw, logs(&tc));
    // Stopped: BIRD's alone, as it was.
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    assert_eq!(routes_of(&tc), birds);
    tc.restart(NODE1).unwrap();
    assert_eq!(routes_of(&tc).len(), 2);
    assert!(routes_of(&tc).contains(&birds[0]));
}

/// The hardening branch made device creation exclusive: a restart must
/// still take over the persistent multi-queue device its predecessor left
/// (with the routes others installed on it), not fail as "busy".
#[test]
#[ignore = "needs root: scripts/test"]
fn a_restart_with_two_workers_takes_over_the_persistent_device() {
    let tc = seed_without_routes(DaemonOptions {
        workers: 2,
        ..DaemonOptions::default()
    });
    bird_routes_both_ways(&tc);
    let perf_block = block(&tc, NODE2).to_string();
    wait_listed(&tc, NODE1, &perf_block, "learned", |r| {
        via(r) == Some(underlay(&tc, NODE2))
    });
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    let mut tc = tc;
    tc.restart(NODE1).unwrap();
    assert!(
        tc.log(NODE1).contains("took over the existing device"),
        "{}",
        tc.log(NODE1)
    );
    assert_eq!(status(&tc, NODE1).workers, 2);
    wait_listed(&tc, NODE1, &perf_block, "re-learned", |r| {
        via(r) == Some(underlay(&tc, NODE2))
    });
    let r = tc
        .cluster()
        .ping(SIT, tc.pod_ip(PERF).unwrap(), 3, Duration::from_millis(100))
        .unwrap();
    assert_eq!(r.received, 3, "{}\n{}", r.raw, logs(&tc));
}

/// Route adds sent many per datagram (`Netlink::add_routes`, what a start
/// on a large config and a large `route replace` use): a route the kernel
/// refuses is reported at its own place wherever it falls (the first, the
/// first of a later datagram, the last of one, the very last, whose
/// acknowledgement closes the batch), and every other is installed. Sent
/// again, every add replaces and none is refused anew. Deleted the same
/// way (`Netlink::del_routes`), all go, and the refused ones, absent, are
/// no error.
#[test]
#[ignore = "needs root: scripts/test"]
fn batched_route_adds_report_each_refusal_at_its_place() {
    use tunl_io::netlink::{Netlink, ROUTES_PER_DATAGRAM};
    const TABLE: u32 = 77;
    let tc = seed_without_routes(DaemonOptions::default());
    let via = underlay(&tc, NODE2);
    // A multicast gateway: "Nexthop has invalid gateway" (EINVAL).
    let bad = Ipv4Addr::new(224, 0, 0, 1);
    let n = 3 * ROUTES_PER_DATAGRAM + 5;
    let refused: BTreeSet<usize> =
        [0, ROUTES_PER_DATAGRAM, 2 * ROUTES_PER_DATAGRAM - 1, n - 1].into();
    let routes: Vec<(Ipv4Network, Ipv4Addr)> = (0..n)
        .map(|i| {
            let prefix = Ipv4Network::new(Ipv4Addr::from(0x6446_0000 + i as u32), 32).unwrap();
            (prefix, if refused.contains(&i) { bad } else { via })
        })
        .collect();
    let on_node1 = |delete: bool| {
        in_netns(&netns_of(&tc, NODE1), || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let netlink = Netlink::new().unwrap();
                let tunnel = netlink.link_index("tunl0").await.unwrap().expect("tunl0");
                if delete {
                    let prefixes: Vec<Ipv4Network> = routes.iter().map(|r| r.0).collect();
                    netlink.del_routes(&prefixes, tunnel, 201, TABLE).await
                } else {
                    netlink.add_routes(&routes, tunnel, 201, TABLE).await
                }
            })
        })
        .unwrap()
    };
    let add_all = || on_node1(false);
    let table = TABLE.to_string();
    for round in 0..2 {
        let results = add_all();
        assert_eq!(results.len(), n);
        let failed: BTreeSet<usize> = (0..n).filter(|&i| results[i].is_err()).collect();
        assert_eq!(failed, refused, "round {round}");
        for &i in &refused {
            let e = results[i].as_ref().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
            assert!(e.to_string().contains(&routes[i].0.to_string()), "{e}");
        }
        let installed = ip(&tc, NODE1, &["-o", "route", "show", "table", &table]);
        assert_eq!(
            installed.lines().count(),
            n - refused.len(),
            "round {round}"
        );
        assert!(!installed.contains("224.0.0.1"));
    }
}
