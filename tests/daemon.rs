//! End-to-end tests of `tunl run` on the seed article's cluster, in network
//! namespaces (they need root, as under CI, and do not skip without it).
//! The traffic and security tests run once per underlay
//! ([`on_every_underlay`]): `raw::NAME` and `xdp::NAME`.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{
    inject_ipip, ipv4_packet, listen_udp, logs, netns_of, pool_route_tunl_does_not_follow,
    run_to_exit, send_raw, tcp_transfer, tunl_bin, wait_until,
};
use tunl::config::Underlay;
use tunl::control::{Client, Request};
use tunl_lab::testbed::{DaemonOptions, TunlCluster, in_netns};
use tunl_lab::topology::ClusterSpec;

const NODE1: &str = "node1.sit";
const NODE2: &str = "node2.perf";
const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";

/// The seed cluster with tunl on both nodes on `underlay`; with `xdp`,
/// checked to really run on it (not on the underlay it falls back to).
fn seed_cluster(underlay: Underlay) -> TunlCluster {
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            underlay,
            ..DaemonOptions::default()
        },
    )
    .expect("start the seed cluster with tunl on both nodes");
    if underlay == Underlay::Xdp {
        for node in [NODE1, NODE2] {
            let status: tunl::control::Status = Client::connect(&tc.control_socket(node))
                .unwrap()
                .call(&Request::Status {})
                .unwrap();
            assert_eq!(
                status.underlay.running, "xdp",
                "{node}: {:?}",
                status.underlay
            );
        }
    }
    tc
}

/// With `xdp`, checks that `node` received at least `n` outer packets
/// through its AF_XDP socket: the path under test was the XDP one.
fn assert_received_through_xdp(tc: &TunlCluster, underlay: Underlay, node: &str, n: u64) {
    if underlay == Underlay::Xdp {
        let got = common::stats(tc, node).counter("rx_xdp").unwrap();
        assert!(
            got >= n,
            "{node}: {got} outer packets through AF_XDP, want {n}"
        );
    }
}

/// The tests above, once per underlay: `raw::NAME` and `xdp::NAME`.
macro_rules! on_every_underlay {
    ($($name:ident),* $(,)?) => {
        mod raw {
            $(
                #[test]
                #[ignore = "needs root: scripts/test"]
                fn $name() {
                    super::$name(tunl::config::Underlay::Raw)
                }
            )*
        }
        mod xdp {
            $(
                #[test]
                #[ignore = "needs root: scripts/test"]
                fn $name() {
                    super::$name(tunl::config::Underlay::Xdp)
                }
            )*
        }
    };
}

on_every_underlay!(
    ping_between_pods_on_two_nodes_shows_ttl_62,
    tcp_64_mib_arrives_byte_for_byte,
    udp_datagrams_cross_the_tunnel_intact,
    exactly_mtu_passes_and_one_more_gets_frag_needed_1480,
    tso_bursts_of_tiny_segments_cross_intact,
    ipip_from_an_unknown_source_is_refused_and_from_a_node_accepted,
    inner_destination_outside_blocks_is_not_forwarded,
    sigterm_removes_routes_and_keeps_the_device,
    no_route_in_tunl_answers_net_unreachable,
    underlay_frag_needed_lowers_the_path_mtu_for_that_node,
);

fn ping_between_pods_on_two_nodes_shows_ttl_62(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    let c = tc.cluster();
    let to = tc.pod_ip(SIT).unwrap();
    let r = c
        .wait_reachable(PERF, to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62), "{}", r.raw);
    let r = c.ping(PERF, to, 5, Duration::from_millis(100)).unwrap();
    assert_eq!(r.received, 5, "{}", r.raw);
    assert!(r.ttls.iter().all(|t| *t == 62), "{}", r.raw);
}

fn tcp_64_mib_arrives_byte_for_byte(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    tc.cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(
        tcp_transfer(&tc, PERF, SIT, 5201, 64 << 20),
        64 << 20,
        "{}",
        logs(&tc)
    );
}

fn udp_datagrams_cross_the_tunnel_intact(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    tc.cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap();
    let to = SocketAddrV4::new(tc.pod_ip(SIT).unwrap(), 7001);
    let server_ns = netns_of(&tc, SIT);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        in_netns(&server_ns, move || {
            let sock = UdpSocket::bind(to).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 2048];
            while let Ok(n) = sock.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            got
        })
        .unwrap()
    });
    ready_rx.recv().unwrap();
    // Sizes up to the pod MTU (1480 - 28 = 1452 bytes of payload).
    let sizes: Vec<usize> = (0..200).map(|i| 1 + (i * 37) % 1452).collect();
    let sent = sizes.clone();
    in_netns(&netns_of(&tc, PERF), move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        for (i, len) in sent.iter().enumerate() {
            let payload: Vec<u8> = (0..*len).map(|j| (i + j) as u8).collect();
            sock.send_to(&payload, to).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
    })
    .unwrap();
    let got = server.join().unwrap();
    assert!(
        got.len() >= 190,
        "only {} of 200 datagrams arrived",
        got.len()
    );
    // Every datagram is one that was sent, byte for byte.
    let sent_payload = |i: usize| -> Vec<u8> { (0..sizes[i]).map(|j| (i + j) as u8).collect() };
    for d in &got {
        assert!(
            (0..sizes.len()).any(|i| *d == sent_payload(i)),
            "a datagram of {} bytes arrived altered",
            d.len()
        );
    }
}

/// The tunnel MTU as a pod sees it: tunl gives its device MTU 1480 (the
/// underlay's 1500 minus the outer header), so a 1480-byte DF packet goes
/// through tunl and arrives, and a 1481-byte one is answered with
/// frag-needed 1480 by the node's forwarding path before the device, as
/// with the kernel's tunl0. (tunl's own too-big answer, for MTUs learned
/// from the underlay, is tested by
/// `underlay_frag_needed_lowers_the_path_mtu_for_that_node`.)
fn exactly_mtu_passes_and_one_more_gets_frag_needed_1480(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    let c = tc.cluster();
    let to = tc.pod_ip(SIT).unwrap().to_string();
    c.wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap();
    // Let the pod itself send more than the tunnel MTU, so the packet
    // reaches the node and the tunnel.
    c.exec_ok(PERF, &["ip", "link", "set", "eth0", "mtu", "1500"])
        .unwrap();
    // 1452 + 8 (ICMP) + 20 (IP) = 1480 = the tunnel MTU.
    let ok = c
        .exec(
            PERF,
            &["ping", "-M", "do", "-s", "1452", "-c", "2", "-W", "2", &to],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(text.contains("1460 bytes from"), "{text}");
    let big = c
        .exec(
            PERF,
            &["ping", "-M", "do", "-s", "1453", "-c", "2", "-W", "2", &to],
        )
        .unwrap();
    let text =
        String::from_utf8_lossy(&big.stdout).into_owned() + &String::from_utf8_lossy(&big.stderr);
    assert!(!big.status.success(), "{text}");
    assert!(
        text.contains("mtu = 1480") || text.contains("mtu=1480"),
        "no frag-needed with MTU 1480 at the sender: {text}"
    );
}

/// An IPv4 UDP packet from the perf pod to `dst:port`.
fn inner_udp(dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    common::udp_packet(Ipv4Addr::new(10, 20, 105, 215), dst, port, payload)
}

/// Stops the daemon on `node` and returns the drop count logged for `reason`.
fn dropped_at_exit(tc: &TunlCluster, node: &str, reason: &str) -> u64 {
    let status = tc.stop(node).unwrap();
    assert!(status.success(), "{}", tc.log(node));
    let log = tc.log(node);
    log.lines()
        .filter(|l| {
            l.contains("dropped")
                && (l.contains(&format!("reason={reason} "))
                    || l.contains(&format!("reason=\"{reason}\"")))
        })
        .filter_map(|l| l.split("packets=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn tso_bursts_of_tiny_segments_cross_intact(underlay: Underlay) {
    // The receiver advertises an MSS of 200, so the sender's 64 KiB TSO
    // bursts hold ~330 segments: more than tunl splits per read.
    let tc = seed_cluster(underlay);
    let c = tc.cluster();
    c.wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    let sit = netns_of(&tc, SIT);
    c.exec_ok(
        &sit,
        &[
            "ip",
            "route",
            "change",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
            "advmss",
            "200",
        ],
    )
    .unwrap();
    assert_eq!(tcp_transfer(&tc, PERF, SIT, 5202, 16 << 20), 16 << 20);
    // The case is only meaningful with TSO bursts in the TUN device.
    assert!(tc.log(NODE2).contains("offload=true"), "{}", tc.log(NODE2));
    let link = c
        .exec_ok(
            &netns_of(&tc, NODE2),
            &["ip", "-d", "link", "show", "tunl0"],
        )
        .unwrap();
    let segs = tunl::dataplane::worker::TX_READ_ROOM;
    assert!(link.contains(&format!("gso_max_segs {segs} ")), "{link}");
    assert_eq!(dropped_at_exit(&tc, "node2.perf", "malformed_inner"), 0);
}

fn ipip_from_an_unknown_source_is_refused_and_from_a_node_accepted(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    let node1 = tc.cluster().node(NODE1).unwrap().underlay;
    let node2 = tc.cluster().node(NODE2).unwrap().underlay;
    let sit = tc.pod_ip(SIT).unwrap();

    let spoofed = listen_udp(&tc, SIT, 7002, Duration::from_millis(800));
    let stranger = Ipv4Addr::new(172, 16, 99, 9);
    inject_ipip(
        &tc,
        NODE2,
        stranger,
        node1,
        &inner_udp(sit, 7002, b"injected"),
    );
    assert!(
        spoofed.join().unwrap().is_empty(),
        "IPIP from {stranger} reached the pod"
    );

    let allowed = listen_udp(&tc, SIT, 7003, Duration::from_millis(800));
    inject_ipip(
        &tc,
        NODE2,
        node2,
        node1,
        &inner_udp(sit, 7003, b"from node2"),
    );
    assert_eq!(
        allowed.join().unwrap(),
        vec![b"from node2".to_vec()],
        "{}",
        logs(&tc)
    );

    assert_received_through_xdp(&tc, underlay, NODE1, 2);
    assert_eq!(dropped_at_exit(&tc, NODE1, "unknown_source"), 1);
}

fn inner_destination_outside_blocks_is_not_forwarded(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    let node1 = tc.cluster().node(NODE1).unwrap().underlay;
    let node2 = tc.cluster().node(NODE2).unwrap().underlay;
    let sit = tc.pod_ip(SIT).unwrap();
    // 10.20.42.100 is outside node1's block 10.20.42.0/26.
    let outside = Ipv4Addr::new(10, 20, 42, 100);
    // Give node1 a way to reach that address, so only tunl can stop it.
    tc.cluster()
        .exec_ok(
            NODE1,
            &["ip", "route", "add", "10.20.42.100/32", "dev", "lo"],
        )
        .unwrap();
    inject_ipip(
        &tc,
        NODE2,
        node2,
        node1,
        &inner_udp(outside, 7004, b"relay me"),
    );
    // Positive control: the same packet to the pod's own address arrives.
    let control = listen_udp(&tc, SIT, 7005, Duration::from_millis(800));
    inject_ipip(&tc, NODE2, node2, node1, &inner_udp(sit, 7005, b"local"));
    assert_eq!(control.join().unwrap().len(), 1, "{}", logs(&tc));
    assert_received_through_xdp(&tc, underlay, NODE1, 2);
    assert_eq!(dropped_at_exit(&tc, NODE1, "not_local"), 1);
}

fn sigterm_removes_routes_and_keeps_the_device(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    assert_eq!(tc.kernel_routes(NODE1).unwrap().len(), 1);
    let route = &tc.kernel_routes(NODE1).unwrap()[0];
    assert!(
        route.contains("10.20.105.192/26 via 172.16.36.5 dev tunl0"),
        "{route}"
    );
    assert!(route.contains("onlink"), "{route}");
    let status = tc.stop(NODE1).unwrap();
    assert!(status.success(), "{}", tc.log(NODE1));
    assert!(tc.kernel_routes(NODE1).unwrap().is_empty());
    // tunnel.persist (the default): the device stays, without carrier.
    let link = tc
        .cluster()
        .exec_ok(NODE1, &["ip", "link", "show", "tunl0"])
        .unwrap();
    assert!(link.contains("NO-CARRIER"), "{link}");
    assert!(tc.log(NODE1).contains("device kept"), "{}", tc.log(NODE1));
    assert!(tc.log(NODE1).contains("counters at exit"));
}

#[test]
#[ignore = "needs root: scripts/test"]
fn sigterm_without_persist_removes_the_device() {
    let tc = seed_cluster(Underlay::DEFAULT);
    let config = tc.daemon(NODE1).unwrap().config.clone();
    tc.stop(NODE1).unwrap();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"tunl0\"", "name = \"tunl0\"\npersist = false");
    std::fs::write(&config, text).unwrap();
    let mut tc = tc;
    tc.restart(NODE1).unwrap();
    assert!(tc.log(NODE1).contains("took over the existing device"));
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    let link = tc
        .cluster()
        .exec(NODE1, &["ip", "link", "show", "tunl0"])
        .unwrap();
    assert!(!link.status.success(), "tunl0 still exists after SIGTERM");
    assert!(tc.kernel_routes(NODE1).unwrap().is_empty());
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_second_daemon_on_the_same_device_fails_clearly() {
    let tc = seed_cluster(Underlay::DEFAULT);
    let config = tc.daemon(NODE1).unwrap().config.clone();
    let out = run_to_exit(&tc, NODE1, &config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already exists and is in use by another tunl instance"),
        "{stderr}"
    );
    // The first one still works.
    tc.cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(5))
        .unwrap();
}

#[test]
#[ignore = "needs root: scripts/test"]
fn sighup_adds_a_route_while_a_transfer_runs() {
    let tc = TunlCluster::start(
        ClusterSpec::generated(3, 1),
        tunl_bin(),
        DaemonOptions::default(),
    )
    .expect("start a 3-node cluster");
    let c = tc.cluster();
    let nodes: Vec<_> = c.nodes().to_vec();
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let (p1, p2, p3) = (&n1.pods[0], &n2.pods[0], &n3.pods[0]);
    let full = tc.config_text(&n1.name).unwrap();
    // Node1 without its route to node3's block.
    let marker = format!("prefix = \"{}\"", n3.block);
    let without: String = {
        let mut parts: Vec<&str> = full.split("\n[[route]]").collect();
        parts.retain(|p| !p.contains(&marker));
        parts.join("\n[[route]]")
    };
    assert_ne!(without, full);
    tc.write_config(&n1.name, &without).unwrap();
    tc.reload(&n1.name).unwrap();
    wait_until(
        || tc.kernel_routes(&n1.name).unwrap().len() == 1,
        "route to node3 removed",
    );
    let r = c
        .ping(&p1.name, p3.ip, 1, Duration::from_millis(100))
        .unwrap();
    assert_eq!(
        r.received, 0,
        "node3's pod answered without a route: {}",
        r.raw
    );

    std::thread::scope(|s| {
        let transfer = s.spawn(|| tcp_transfer(&tc, &p2.name, &p1.name, 5201, 48 << 20));
        std::thread::sleep(Duration::from_millis(300));
        tc.write_config(&n1.name, &full).unwrap();
        tc.reload(&n1.name).unwrap();
        wait_until(
            || tc.kernel_routes(&n1.name).unwrap().len() == 2,
            "route to node3 added",
        );
        let r = c
            .wait_reachable(&p1.name, p3.ip, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
        assert_eq!(r.ttls.last(), Some(&62));
        let received = transfer.join().unwrap();
        assert_eq!(
            received,
            48 << 20,
            "the transfer across the reload was cut short"
        );
    });
    assert!(tc.log(&n1.name).contains("SIGHUP: config reloaded"));
}

#[test]
#[ignore = "needs root: scripts/test"]
fn sighup_with_a_bad_config_keeps_running() {
    let tc = seed_cluster(Underlay::DEFAULT);
    tc.write_config(NODE1, "[tunnel]\nname = \"tunl0\"\n")
        .unwrap();
    tc.reload(NODE1).unwrap();
    wait_until(
        || {
            tc.log(NODE1)
                .contains("still running on the previous config")
        },
        "reload refused",
    );
    assert!(tc.log(NODE1).contains("local"), "{}", tc.log(NODE1));
    assert_eq!(tc.kernel_routes(NODE1).unwrap().len(), 1);
    // Not TOML at all: still one line per event (each starts with its time).
    tc.write_config(NODE1, "[tunnel]\nlocal = = 3\n").unwrap();
    tc.reload(NODE1).unwrap();
    wait_until(|| tc.log(NODE1).contains("not TOML"), "reload refused");
    let log = tc.log(NODE1);
    assert!(
        log.lines()
            .all(|l| l.starts_with(|c: char| c.is_ascii_digit())),
        "an event on several lines:\n{log}"
    );
    assert_eq!(tc.kernel_routes(NODE1).unwrap().len(), 1);
    tc.cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(5))
        .unwrap();
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_bad_config_exits_with_code_2_and_names_the_key() {
    let dir = std::env::temp_dir().join(format!("tunl-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[tunnel]\nname = \"tunl0\"\n", "local"),
        (
            "[tunnel]\nlocal = \"172.16.35.4\"\n[[route]]\nprefix = \"10.20.105.193/26\"\nvia = \"172.16.36.5\"\n",
            "route[0].prefix",
        ),
        (
            "[tunnel]\nlocal = \"172.16.35.4\"\nmtu = 60\n",
            "tunnel.mtu",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(tunl_bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
    let out = Command::new(tunl_bin())
        .args(["run", "--config", "/nonexistent/tunl.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);

    // Keys that parse but do not fit the host exit 2 too, naming the key,
    // and leave nothing behind: a second instance on node1 (its own device
    // name and socket) with an MTU the underlay cannot carry, a local
    // address on no interface (so no MTU to derive), a user that does not
    // exist.
    let tc = seed_cluster(Underlay::DEFAULT);
    let base = tc
        .config_text(NODE1)
        .unwrap()
        .replace("name = \"tunl0\"", "name = \"tunl9\"")
        .replace(".sock\"", "-tunl9.sock\"");
    assert!(
        base.contains("-tunl9.sock") && !base.contains("mtu"),
        "{base}"
    );
    let local = format!("local = \"{}\"", tc.cluster().node(NODE1).unwrap().underlay);
    assert!(base.contains(&local), "{base}");
    let cases = [
        (
            base.replace("[tunnel]\n", "[tunnel]\nmtu = 65515\n"),
            "tunnel.mtu: 65515 does not fit the underlay",
        ),
        (
            base.replace(&local, "local = \"192.0.2.1\""),
            "tunnel.local: 192.0.2.1 is not an address of any interface",
        ),
        (
            format!("{base}\n[security]\nuser = \"tunl-no-such-user\"\n"),
            "security.user: no user \"tunl-no-such-user\"",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let path = tc.dir().join(format!("host{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = run_to_exit(&tc, NODE1, &path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{want}: {stderr}");
        assert!(stderr.contains(want), "{want} not in: {stderr}");
        let link = tc
            .cluster()
            .exec(NODE1, &["ip", "link", "show", "tunl9"])
            .unwrap();
        assert!(!link.status.success(), "{want}: tunl9 was created");
        let socket = tc
            .control_socket(NODE1)
            .with_extension("")
            .display()
            .to_string();
        assert!(
            !std::path::Path::new(&format!("{socket}-tunl9.sock")).exists(),
            "{want}: the control socket was left behind"
        );
    }
    assert_eq!(
        tc.kernel_routes(NODE1).unwrap().len(),
        1,
        "the first instance's route"
    );
}

fn no_route_in_tunl_answers_net_unreachable(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    let c = tc.cluster();
    // A pool route into the tunnel that tunl does not follow (another
    // table, reached after main): 10.20.200.0/26 has no owner in tunl.
    pool_route_tunl_does_not_follow(&tc, NODE2);
    let out = c
        .exec(PERF, &["ping", "-c", "1", "-W", "2", "10.20.200.1"])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("Destination Net Unreachable"), "{text}");
    assert_eq!(dropped_at_exit(&tc, NODE2, "no_route"), 1);
}

/// An ICMP error (type 3 code 4) from the underlay about an outer packet
/// `from_node` -> `to_node` carrying a packet from the pod `inner_src`, as
/// a router between them would send it (RFC 2003 §4: the quote reaches the
/// inner header, which tunl checks).
fn underlay_frag_needed(
    from_node: Ipv4Addr,
    to_node: Ipv4Addr,
    inner_src: Ipv4Addr,
    mtu: u16,
) -> Vec<u8> {
    // The quoted outer header (IPIP, node to node) and 28 bytes of the inner
    // packet.
    let quoted_outer = etherparse::Ipv4Header::new(
        1480,
        64,
        etherparse::IpNumber::IPV4,
        from_node.octets(),
        to_node.octets(),
    )
    .unwrap();
    let mut quote = Vec::new();
    quote.extend_from_slice(&quoted_outer.to_bytes());
    let inner = etherparse::Ipv4Header::new(
        1460 - 20,
        64,
        etherparse::IpNumber::UDP,
        inner_src.octets(),
        [10, 20, 42, 31],
    )
    .unwrap();
    quote.extend_from_slice(&inner.to_bytes());
    quote.extend_from_slice(&[0x9c, 0x40, 0x1b, 0x59, 0x05, 0xa0, 0, 0]);
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&quote);
    let sum = tunl_encap::checksum::checksum(&icmp).to_be_bytes();
    icmp[2..4].copy_from_slice(&sum);
    ipv4_packet(to_node, from_node, etherparse::IpNumber::ICMP, &icmp)
}

fn underlay_frag_needed_lowers_the_path_mtu_for_that_node(underlay: Underlay) {
    let tc = seed_cluster(underlay);
    let c = tc.cluster();
    let node1 = c.node(NODE1).unwrap().underlay;
    let node2 = c.node(NODE2).unwrap().underlay;
    let to = tc.pod_ip(SIT).unwrap().to_string();
    c.wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap();
    // 1400 + 28 = 1428 bytes fit the tunnel MTU of 1480.
    let ping = |size: &str| {
        let out = c
            .exec(
                PERF,
                &["ping", "-M", "do", "-s", size, "-c", "1", "-W", "2", &to],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = ping("1400");
    assert!(before.contains("1408 bytes from"), "{before}");
    // A router between the nodes says: outer packets toward node1 must be
    // at most 1400 bytes, so the tunnel toward node1 carries 1380.
    let perf = tc.pod_ip(PERF).unwrap();
    send_raw(
        &tc,
        NODE1,
        node2,
        underlay_frag_needed(node2, node1, perf, 1400),
    );
    let mut after = String::new();
    for _ in 0..20 {
        after = ping("1400");
        if after.contains("mtu = 1380") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        after.contains("mtu = 1380"),
        "tunl did not answer with the learned MTU: {after}\n{}",
        logs(&tc)
    );
    // Smaller packets still pass.
    assert!(ping("1352").contains("1360 bytes from"));
}

#[test]
#[ignore = "needs root: scripts/test"]
fn deleting_the_device_under_the_daemon_stops_it_with_an_error() {
    let tc = seed_cluster(Underlay::DEFAULT);
    let pid = tc.daemon(NODE1).unwrap().pid;
    tc.cluster()
        .exec_ok(NODE1, &["ip", "link", "del", "tunl0"])
        .unwrap();
    // Traffic toward the node makes the dataplane touch the dead device.
    let _ = tc
        .cluster()
        .ping(PERF, tc.pod_ip(SIT).unwrap(), 2, Duration::from_millis(100));
    let status = tc
        .cluster()
        .wait_timeout(pid, Duration::from_secs(10))
        .unwrap()
        .unwrap_or_else(|| panic!("tunl kept running without its device:\n{}", tc.log(NODE1)));
    assert_eq!(status.code(), Some(1), "{}", tc.log(NODE1));
    assert!(tc.kernel_routes(NODE1).unwrap().is_empty());
}
