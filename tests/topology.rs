//! End-to-end tests of the namespace topology builder. They need root
//! (CAP_NET_ADMIN + CAP_SYS_ADMIN), `ip`, `ping` and `iperf3`, and they do
//! not skip without them. Every cluster lives in namespaces the test creates
//! and is removed by `Drop`, also when an assertion fails.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use tunl_lab::topology::{
    Cluster, ClusterSpec, Overlay, ProcessOutput, TopologyError, tagged_namespaces, teardown,
};

const INTERVAL: Duration = Duration::from_millis(200);

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn pod_ip(cluster: &Cluster, pod: &str) -> Ipv4Addr {
    cluster.pod(pod).expect("pod exists").ip
}

/// Removes every namespace with `tag` when dropped: for tests that create
/// namespaces outside a `Cluster` or keep one.
struct TagGuard(String);

impl Drop for TagGuard {
    fn drop(&mut self) {
        let _ = teardown(&self.0);
    }
}

/// A tag unique to this test process.
fn test_tag(name: &str) -> String {
    format!("{name}{}", std::process::id())
}

/// Whether a process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

#[test]
#[ignore = "needs root: scripts/test"]
fn seed_direct_pings_with_ttl_62() {
    let cluster = Cluster::build(ClusterSpec::seed().with_overlay(Overlay::Direct)).unwrap();
    let sit = pod_ip(&cluster, "demo-hello-sit");
    let perf = pod_ip(&cluster, "demo-hello-perf");
    assert_eq!(sit, Ipv4Addr::new(10, 20, 42, 31));

    let r = cluster.ping("demo-hello-perf", sit, 2, INTERVAL).unwrap();
    assert!(r.all_replied(), "{}", r.raw);
    assert_eq!(r.ttls, vec![62, 62], "{}", r.raw);
    let r = cluster.ping("demo-hello-sit", perf, 2, INTERVAL).unwrap();
    assert!(r.all_replied(), "{}", r.raw);
    assert_eq!(r.ttls, vec![62, 62], "{}", r.raw);

    // The node routes are the article's.
    let routes = cluster.exec_ok("node2.perf", &["ip", "route"]).unwrap();
    assert!(
        routes.contains("10.20.42.0/26 via 172.16.35.4 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.20.105.215 dev cali4bb1efe70a2 scope link"),
        "{routes}"
    );
    let pod_routes = cluster
        .exec_ok("demo-hello-perf", &["ip", "route"])
        .unwrap();
    assert!(
        pod_routes.contains("default via 169.254.1.1 dev eth0"),
        "{pod_routes}"
    );

    let tcp = cluster
        .iperf3_tcp("demo-hello-perf", "demo-hello-sit", 1, 1)
        .unwrap();
    println!(
        "direct iperf3 TCP 1 stream: {:.2} Gbit/s, {} retransmits",
        tcp.bits_per_second / 1e9,
        tcp.retransmits
    );
    assert!(tcp.bits_per_second > 0.0 && tcp.bytes > 0);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn seed_vxlan_pings_with_ttl_62_and_carries_tcp_and_udp() {
    let cluster = Cluster::build(ClusterSpec::seed().with_overlay(Overlay::Vxlan)).unwrap();
    assert_eq!(cluster.pod_mtu(), 1450);
    let sit = pod_ip(&cluster, "demo-hello-sit");

    let r = cluster.ping("demo-hello-perf", sit, 2, INTERVAL).unwrap();
    assert!(r.all_replied(), "{}", r.raw);
    assert_eq!(r.ttls, vec![62, 62], "{}", r.raw);

    // The traffic goes through the VXLAN device, not a plain route.
    let route = cluster
        .exec_ok("node2.perf", &["ip", "route", "get", "10.20.42.31"])
        .unwrap();
    assert!(route.contains("dev vxlan.calico"), "{route}");

    let tcp = cluster
        .iperf3_tcp("demo-hello-perf", "demo-hello-sit", 1, 1)
        .unwrap();
    println!(
        "vxlan iperf3 TCP 1 stream: {:.2} Gbit/s, {} retransmits",
        tcp.bits_per_second / 1e9,
        tcp.retransmits
    );
    assert!(tcp.bits_per_second > 0.0 && tcp.bytes > 0);

    let udp = cluster
        .iperf3_udp("demo-hello-sit", "demo-hello-perf", 1, 1200, 50_000_000)
        .unwrap();
    println!(
        "vxlan iperf3 UDP 1200 B at 50 Mbit/s: {:.0} pps received, {:.2}% lost",
        udp.packets_per_second_received, udp.lost_percent
    );
    assert!(udp.packets_per_second_received > 0.0 && udp.packets_sent > 0);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn generated_direct_cluster_pings_all_to_all() {
    let cluster =
        Cluster::build(ClusterSpec::generated(3, 2).with_overlay(Overlay::Direct)).unwrap();
    assert!(cluster.switch_netns().is_some());
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.remote_routes("node1").len(), 2);
    let pods: Vec<(String, Ipv4Addr, String)> = cluster
        .pods()
        .map(|p| (p.name.clone(), p.ip, p.node.clone()))
        .collect();
    assert_eq!(pods.len(), 6);

    let failures: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(from, _, from_node)| {
                let (cluster, pods) = (&cluster, &pods);
                s.spawn(move || {
                    let mut failures = Vec::new();
                    for (to, ip, to_node) in pods.iter().filter(|(to, ..)| to != from) {
                        let r = cluster.ping(from, *ip, 2, INTERVAL).unwrap();
                        // One hop per node: 63 on the same node, 62 across.
                        let ttl = if from_node == to_node { 63 } else { 62 };
                        if !r.all_replied() || r.ttls.iter().any(|&t| t != ttl) {
                            failures.push(format!("{from} -> {to}: {}", r.raw));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[ignore = "needs root: scripts/test"]
fn overlay_none_installs_nothing_between_blocks() {
    let cluster = Cluster::build(ClusterSpec::seed()).unwrap();
    let sit = pod_ip(&cluster, "demo-hello-sit");
    let r = cluster.ping("demo-hello-perf", sit, 1, INTERVAL).unwrap();
    assert_eq!(r.received, 0, "{}", r.raw);
    assert!(matches!(
        cluster.wait_reachable("demo-hello-perf", sit, Duration::from_millis(300)),
        Err(TopologyError::Timeout(_))
    ));
    // Once routes appear (as a tunl daemon would add them), it is reachable.
    for (node, block, via) in [
        ("node2.perf", "10.20.42.0/26", "172.16.35.4"),
        ("node1.sit", "10.20.105.192/26", "172.16.36.5"),
    ] {
        cluster
            .exec_ok(
                node,
                &["ip", "route", "add", block, "via", via, "dev", "eth0"],
            )
            .unwrap();
    }
    let r = cluster
        .wait_reachable("demo-hello-perf", sit, Duration::from_secs(30))
        .unwrap();
    assert_eq!(r.ttls, vec![62], "{}", r.raw);
    let summary = cluster.to_string();
    assert!(
        summary.contains("pod demo-hello-sit 10.20.42.31 via cali04736ec14ce"),
        "{summary}"
    );
    // The underlay itself works.
    let r = cluster
        .exec("node2.perf", &["ping", "-c", "1", "-W", "1", "172.16.35.4"])
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stdout));
    assert_eq!(cluster.remote_routes("node2.perf").len(), 1);
    assert_eq!(
        cluster.remote_routes("node2.perf")[0].1,
        Ipv4Addr::new(172, 16, 35, 4)
    );
}

#[test]
#[ignore = "needs root: scripts/test"]
fn drop_removes_namespaces_and_processes() {
    let cluster = Cluster::build(ClusterSpec::generated(3, 1)).unwrap();
    let namespaces = cluster.namespaces().to_vec();
    assert_eq!(namespaces.len(), 3 + 3 + 1);
    assert!(namespaces.iter().all(|ns| netns_exists(ns)));
    let pid = cluster
        .spawn("node1-pod1", &["sleep", "1000"], ProcessOutput::Null)
        .unwrap();
    assert!(alive(pid));
    // A process that ignores SIGTERM is killed too.
    let stubborn = cluster
        .spawn(
            "node2",
            &["sh", "-c", "trap '' TERM; sleep 1000 & wait"],
            ProcessOutput::Null,
        )
        .unwrap();
    assert!(cluster.pids().contains(&stubborn));
    drop(cluster);
    for ns in &namespaces {
        assert!(!netns_exists(ns), "{ns} still exists");
    }
    assert!(!alive(pid), "pid {pid} still runs");
    assert!(!alive(stubborn), "pid {stubborn} still runs");
}

#[test]
#[ignore = "needs root: scripts/test"]
fn panic_unwinding_removes_namespaces() {
    let tag = test_tag("panic");
    let _guard = TagGuard(tag.clone());
    let spec = ClusterSpec::seed().with_tag(tag.clone());
    let result = std::panic::catch_unwind(move || {
        let cluster = Cluster::build(spec).unwrap();
        assert_eq!(cluster.namespaces().len(), 4);
        assert!(cluster.namespaces().iter().all(|ns| netns_exists(ns)));
        panic!("test panic with a live cluster");
    });
    assert!(result.is_err());
    assert_eq!(tagged_namespaces(&tag).unwrap(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root: scripts/test"]
fn fixed_tag_leftovers_fail_or_are_replaced() {
    let tag = test_tag("rep");
    let _guard = TagGuard(tag.clone());
    let leftover = format!("tunl-{tag}-node1.sit");
    let stale = format!("tunl-{tag}-stale");
    for ns in [&leftover, &stale] {
        let ok = Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    let spec = ClusterSpec::seed()
        .with_overlay(Overlay::Direct)
        .with_tag(tag.clone());
    match Cluster::build(spec.clone()) {
        Err(TopologyError::NamespaceExists(ns)) => assert!(ns.starts_with(&format!("tunl-{tag}-"))),
        other => panic!("expected NamespaceExists, got {other:?}"),
    }
    assert!(netns_exists(&leftover) && netns_exists(&stale));

    let cluster = Cluster::build(spec.with_replace_existing(true)).unwrap();
    assert_eq!(cluster.tag(), tag);
    assert!(!netns_exists(&stale));
    let r = cluster
        .ping(
            "demo-hello-perf",
            pod_ip(&cluster, "demo-hello-sit"),
            2,
            INTERVAL,
        )
        .unwrap();
    assert!(r.all_replied(), "{}", r.raw);
    drop(cluster);
    assert!(tagged_namespaces(&tag).unwrap().is_empty());
}

#[test]
#[ignore = "needs root: scripts/test"]
fn kept_cluster_survives_drop_until_teardown() {
    let tag = test_tag("keep");
    let _guard = TagGuard(tag.clone());
    let cluster = Cluster::build(ClusterSpec::seed().with_tag(tag.clone())).unwrap();
    let namespaces = cluster.namespaces().to_vec();
    let pid = cluster
        .spawn("demo-hello-sit", &["sleep", "1000"], ProcessOutput::Null)
        .unwrap();
    assert_eq!(cluster.keep(), tag);
    assert!(namespaces.iter().all(|ns| netns_exists(ns)));
    assert!(alive(pid));

    assert_eq!(teardown(&tag).unwrap(), namespaces.len());
    assert!(namespaces.iter().all(|ns| !netns_exists(ns)));
    assert!(!alive(pid), "pid {pid} still runs");
}

#[test]
#[ignore = "needs root: scripts/test"]
fn spawned_processes_can_be_waited_and_logged() {
    let cluster = Cluster::build(ClusterSpec::seed()).unwrap();
    let log = std::env::temp_dir().join(format!("tunl-topology-{}.log", cluster.tag()));
    let pid = cluster
        .spawn(
            "node1.sit",
            &["sh", "-c", "ip -br addr show dev eth0; exit 3"],
            ProcessOutput::File(log.clone()),
        )
        .unwrap();
    let status = cluster.wait_timeout(pid, Duration::from_secs(30)).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(3));
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("172.16.35.4/16"), "{text}");

    let pid = cluster
        .spawn("demo-hello-sit", &["sleep", "1000"], ProcessOutput::Null)
        .unwrap();
    assert_eq!(cluster.try_wait(pid).unwrap(), None);
    let status = cluster.terminate(pid).unwrap();
    assert!(!status.success());
    assert!(!cluster.pids().contains(&pid));

    assert!(matches!(
        cluster.exec("not-a-pod", &["true"]),
        Err(TopologyError::NotFound { .. })
    ));
}

/// Pings with DF set and `size` bytes of payload; true if every reply came.
fn ping_df(cluster: &Cluster, from: &str, to: Ipv4Addr, size: u16) -> bool {
    let (size, to) = (size.to_string(), to.to_string());
    let out = cluster
        .exec(
            from,
            &[
                "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", &size, &to,
            ],
        )
        .unwrap();
    out.status.success()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn pod_mtu_follows_underlay_and_overlay() {
    for (overlay, pod_mtu) in [(Overlay::Direct, 8980), (Overlay::Vxlan, 8950)] {
        let spec = ClusterSpec::seed()
            .with_overlay(overlay)
            .with_underlay_mtu(9000);
        let cluster = Cluster::build(spec).unwrap();
        assert_eq!(cluster.pod_mtu(), pod_mtu);
        let link = cluster
            .exec_ok(
                "demo-hello-perf",
                &["ip", "-o", "link", "show", "dev", "eth0"],
            )
            .unwrap();
        assert!(link.contains(&format!("mtu {pod_mtu} ")), "{link}");
        let underlay = cluster
            .exec_ok("node1.sit", &["ip", "-o", "link", "show", "dev", "eth0"])
            .unwrap();
        assert!(underlay.contains("mtu 9000 "), "{underlay}");

        // A full-size packet (20 IP + 8 ICMP header bytes) crosses; one
        // byte more does not leave the pod with DF set.
        let sit = pod_ip(&cluster, "demo-hello-sit");
        assert!(
            ping_df(&cluster, "demo-hello-perf", sit, pod_mtu - 28),
            "{overlay}"
        );
        assert!(
            !ping_df(&cluster, "demo-hello-perf", sit, pod_mtu - 27),
            "{overlay}"
        );
    }
}

#[test]
#[ignore = "needs root: scripts/test"]
fn adopted_commands_run_in_the_namespace_and_are_ended_on_drop() {
    let cluster = Cluster::build(ClusterSpec::seed()).unwrap();
    let mut cmd = cluster.command("node2.perf", "sh").unwrap();
    let mut child = cmd
        .args([
            "-c",
            "echo \"$TUNL_TEST $(ip -br addr show dev eth0)\"; exec sleep 1000",
        ])
        .env("TUNL_TEST", "env-passed")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = cluster.adopt(child);
    assert!(cluster.pids().contains(&pid));
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("env-passed eth0"), "{line}");
    assert!(line.contains("172.16.36.5/16"), "{line}");
    drop(cluster);
    assert!(!alive(pid), "pid {pid} still runs");
}
