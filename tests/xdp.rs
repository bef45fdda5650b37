//! End to end with `[dataplane] underlay = "xdp"`, what is particular to
//! it (the tests every underlay passes are parameterised over the
//! underlay in `daemon.rs`): the AF_XDP sockets really carry the traffic,
//! `tunl status` and the metrics say which underlay runs, traffic on the
//! underlay that is not tunl's is untouched, SIGTERM and kill -9 both leave
//! no XDP program on the device (the next start is clean), and a device
//! that already has an XDP program makes tunl run on the next underlay and
//! say why, leaving the other program in place; it runs on xdp with only
//! the capabilities the systemd unit gives, and on packet without CAP_BPF.
//! Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use common::{logs, netns_of, stats, tcp_transfer_between, tunl_bin, wait_until};
use tunl::config::Underlay;
use tunl::control::{Client, Request, Status};
use tunl_lab::testbed::{DaemonOptions, TunlCluster, in_netns};
use tunl_lab::topology::{ClusterSpec, ProcessOutput};

const NODE1: &str = "node1.sit";
const NODE2: &str = "node2.perf";
const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";

fn xdp_cluster(extra_config: &str) -> TunlCluster {
    TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            underlay: Underlay::Xdp,
            extra_config: extra_config.to_owned(),
            ..DaemonOptions::default()
        },
    )
    .expect("start the seed cluster with tunl on the XDP underlay")
}

fn status(tc: &TunlCluster, node: &str) -> Status {
    Client::connect(&tc.control_socket(node))
        .unwrap()
        .call(&Request::Status {})
        .unwrap()
}

/// `ip -d link show eth0` on `node`.
fn eth0(tc: &TunlCluster, node: &str) -> String {
    tc.cluster()
        .exec_ok(node, &["ip", "-d", "link", "show", "eth0"])
        .unwrap()
}

fn has_xdp(tc: &TunlCluster, node: &str) -> bool {
    eth0(tc, node).contains("prog/xdp")
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_sockets_carry_the_traffic_and_status_says_xdp() {
    let tc = xdp_cluster("\n[metrics]\nlisten = \"127.0.0.1:9099\"\n");
    let c = tc.cluster();
    let to = tc.pod_ip(SIT).unwrap();
    let r = c
        .wait_reachable(PERF, to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62), "{}", r.raw);
    for node in [NODE1, NODE2] {
        let s = status(&tc, node);
        assert_eq!(
            s.underlay.running,
            "xdp",
            "{node}: {:?}\n{}",
            s.underlay,
            logs(&tc)
        );
        assert_eq!(
            s.underlay.xdp_mode.as_deref(),
            Some("generic"),
            "veth: generic"
        );
        assert_eq!(s.underlay.xdp_sockets, 1, "one real RX queue on a veth");
        assert!(
            eth0(&tc, node).contains("xdpgeneric"),
            "{}",
            eth0(&tc, node)
        );
    }
    // Once the neighbours are known, pod traffic goes through the sockets
    // both ways.
    wait_until(
        || {
            let _ = c.ping(PERF, to, 1, Duration::from_millis(10));
            stats(&tc, NODE2).counter("tx_xdp").unwrap() > 0
                && stats(&tc, NODE1).counter("tx_xdp").unwrap() > 0
        },
        "both daemons to send through their AF_XDP socket",
    );
    assert_eq!(
        common::tcp_transfer(&tc, PERF, SIT, 7601, 16 << 20),
        16 << 20
    );
    let (rx1, tx2) = (
        stats(&tc, NODE1).counter("rx_xdp").unwrap(),
        stats(&tc, NODE2).counter("tx_xdp").unwrap(),
    );
    assert!(
        rx1 >= ((16 << 20) / 1500) as u64 && tx2 >= ((16 << 20) / 1500) as u64,
        "rx_xdp {rx1} on node1, tx_xdp {tx2} on node2 for 16 MiB\n{}",
        logs(&tc)
    );
    let text = common::status_text(&tc, NODE1);
    assert!(text.contains("underlay: xdp (generic, 1 socket)"), "{text}");

    // The metrics say it too, with the program's and the socket's counters.
    let m = scrape(&tc, NODE1, 9099);
    assert!(
        m.contains("tunl_underlay_info{underlay=\"xdp\",requested=\"xdp\",xdp_mode=\"generic\"} 1"),
        "{m}"
    );
    let redirected = tunl::metrics::sample(&m, "tunl_xdp_redirected_frames_total", "")
        .unwrap_or_else(|| panic!("{m}"));
    assert!(redirected >= rx1, "{redirected} redirected, {rx1} received");
    assert_eq!(
        tunl::metrics::sample(&m, "tunl_xsk_rx_dropped_total", "queue=\"0\""),
        Some(0),
        "{m}"
    );
}

fn scrape(tc: &TunlCluster, node: &str, port: u16) -> String {
    in_netns(&netns_of(tc, node), move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .unwrap()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn traffic_on_the_underlay_that_is_not_tunls_is_untouched() {
    let tc = xdp_cluster("");
    let c = tc.cluster();
    let node1 = c.node(NODE1).unwrap().underlay;
    assert!(has_xdp(&tc, NODE1) && has_xdp(&tc, NODE2));
    // Node to node, outside the tunnel: ICMP and TCP pass the program.
    let ping = c
        .exec_ok(
            NODE2,
            &[
                "ping",
                "-c",
                "5",
                "-i",
                "0.05",
                "-W",
                "2",
                &node1.to_string(),
            ],
        )
        .unwrap();
    assert!(ping.contains("5 received"), "{ping}");
    assert!(ping.contains("ttl=64"), "one hop, no tunnel: {ping}");
    let got = tcp_transfer_between(
        &netns_of(&tc, NODE2),
        &netns_of(&tc, NODE1),
        SocketAddrV4::new(node1, 7602),
        16 << 20,
    );
    assert_eq!(got, 16 << 20);
    // And the tunnel beside it still works.
    let r = c
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
    assert_eq!(stats(&tc, NODE1).drops_total, 0, "{}", logs(&tc));
}

#[test]
#[ignore = "needs root: scripts/test"]
fn sigterm_and_kill_9_leave_no_program_and_the_next_start_is_clean() {
    let mut tc = xdp_cluster("");
    let to = tc.pod_ip(SIT).unwrap();
    assert!(has_xdp(&tc, NODE1), "{}", eth0(&tc, NODE1));
    let status = tc.stop(NODE1).unwrap();
    assert!(status.success(), "{}", tc.log(NODE1));
    assert!(!has_xdp(&tc, NODE1), "after SIGTERM: {}", eth0(&tc, NODE1));
    tc.restart(NODE1).unwrap();
    assert_eq!(
        status_of(&tc, NODE1).underlay.running,
        "xdp",
        "{}",
        tc.log(NODE1)
    );
    assert!(has_xdp(&tc, NODE1));
    tc.kill(NODE1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while has_xdp(&tc, NODE1) {
        assert!(
            std::time::Instant::now() < deadline,
            "after kill -9: {}",
            eth0(&tc, NODE1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Clean: the next start attaches again, and traffic flows.
    tc.restart(NODE1).unwrap();
    let s = status_of(&tc, NODE1);
    assert_eq!(
        (s.underlay.running.as_str(), s.underlay.fallback),
        ("xdp", None)
    );
    let r = tc
        .cluster()
        .wait_reachable(PERF, to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
}

#[test]
#[ignore = "needs root: scripts/test"]
fn another_xdp_program_makes_tunl_run_on_packet_and_say_why() {
    let mut tc = xdp_cluster("");
    let c = tc.cluster();
    tc.stop(NODE1).unwrap();
    // Another program, attached the way `ip` attaches one (netlink).
    let obj = tc.dir().join("other-xdp.o");
    std::fs::write(&obj, tunl_io::xdp::PROGRAM_OBJECT).unwrap();
    c.exec_ok(
        NODE1,
        &[
            "ip",
            "link",
            "set",
            "dev",
            "eth0",
            "xdpgeneric",
            "obj",
            obj.to_str().unwrap(),
            "sec",
            "xdp",
        ],
    )
    .unwrap();
    let before = eth0(&tc, NODE1);
    assert!(before.contains("prog/xdp"), "{before}");
    tc.restart(NODE1).unwrap();
    let s = status_of(&tc, NODE1);
    assert_eq!(
        (s.underlay.requested.as_str(), s.underlay.running.as_str()),
        ("xdp", "packet"),
        "{}",
        tc.log(NODE1)
    );
    let why = s.underlay.fallback.clone().unwrap_or_default();
    assert!(why.contains("another XDP program"), "{why}");
    assert!(
        tc.log(NODE1).contains("another XDP program"),
        "logged: {}",
        tc.log(NODE1)
    );
    let text = common::status_text(&tc, NODE1);
    assert!(text.contains("underlay: packet (asked for xdp)"), "{text}");
    assert!(text.contains("another XDP program"), "{text}");
    // It runs on packet: traffic both ways, the other program untouched.
    let to = tc.pod_ip(SIT).unwrap();
    let r = tc
        .cluster()
        .wait_reachable(PERF, to, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
    assert_eq!(common::tcp_transfer(&tc, PERF, SIT, 7603, 8 << 20), 8 << 20);
    wait_until(
        || {
            let _ = tc
                .cluster()
                .ping(SIT, tc.pod_ip(PERF).unwrap(), 1, Duration::from_millis(10));
            stats(&tc, NODE1).counter("tx_af_packet").unwrap() > 0
        },
        "node1 to send through AF_PACKET",
    );
    assert_eq!(stats(&tc, NODE1).counter("tx_xdp"), Some(0));
    assert_eq!(eth0(&tc, NODE1), before, "the other program was replaced");
    tc.stop(NODE1).unwrap();
    assert_eq!(eth0(&tc, NODE1), before, "the other program went with tunl");
    tc.cluster()
        .exec_ok(
            NODE1,
            &["ip", "link", "set", "dev", "eth0", "xdpgeneric", "off"],
        )
        .unwrap();
}

fn status_of(tc: &TunlCluster, node: &str) -> Status {
    status(tc, node)
}

/// Starts the daemon of `node` again under `setpriv` with only `caps` (as
/// ambient capabilities, uid 0 without its powers: how a unit with
/// AmbientCapabilities= starts it) and waits for its route; returns its pid.
fn restart_with_only(tc: &TunlCluster, node: &str, caps: &str, log: &str) -> u32 {
    let config = tc.daemon(node).unwrap().config.clone();
    let log = tc.dir().join(log);
    let inh = format!("--inh-caps=-all,{caps}");
    let amb = format!("--ambient-caps={caps}");
    let pid = tc
        .cluster()
        .spawn(
            node,
            &[
                "setpriv",
                "--securebits=+noroot,+noroot_locked",
                &inh,
                &amb,
                tunl_bin().to_str().unwrap(),
                "run",
                "--config",
                config.to_str().unwrap(),
            ],
            ProcessOutput::File(log.clone()),
        )
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        || tc.kernel_routes(node).unwrap().len() == 1 || read_log().contains("ERROR"),
        "the daemon's route (or an error)",
    );
    assert_eq!(tc.kernel_routes(node).unwrap().len(), 1, "{}", read_log());
    pid
}

#[test]
#[ignore = "needs root: scripts/test"]
fn runs_on_xdp_with_only_the_capabilities_the_unit_gives() {
    let tc = xdp_cluster("");
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    // What examples/tunl.service gives, less what a root start adds: the
    // verifier and the UMEM must do without CAP_SYS_ADMIN and CAP_PERFMON.
    let pid = restart_with_only(&tc, NODE1, "+net_admin,+net_raw,+bpf,+ipc_lock", "bpf.log");
    let s = status(&tc, NODE1);
    assert_eq!(s.underlay.running, "xdp", "{:?}", s.underlay);
    let r = tc
        .cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
    // After setup it holds what it holds on every underlay.
    let caps = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(caps.contains("CapEff:\t0000000000001000"), "{caps}");
    assert!(tc.cluster().terminate(pid).unwrap().success());
    assert!(!has_xdp(&tc, NODE1), "{}", eth0(&tc, NODE1));

    // Without CAP_BPF it cannot load the program: it runs on packet and
    // says why.
    let pid = restart_with_only(&tc, NODE1, "+net_admin,+net_raw", "nobpf.log");
    let s = status(&tc, NODE1);
    assert_eq!(s.underlay.running, "packet", "{:?}", s.underlay);
    let why = s.underlay.fallback.unwrap_or_default();
    assert!(why.contains("CAP_BPF"), "{why}");
    assert!(!has_xdp(&tc, NODE1));
    let r = tc
        .cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
    assert!(tc.cluster().terminate(pid).unwrap().success());
}

#[test]
#[ignore = "needs root: scripts/test"]
fn workers_beyond_the_queues_send_through_packet() {
    // A veth uses one RX queue: one socket, for worker 0; worker 1 sends
    // through AF_PACKET.
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            underlay: Underlay::Xdp,
            workers: 2,
            ..DaemonOptions::default()
        },
    )
    .expect("start the seed cluster with two workers per daemon");
    let s = status(&tc, NODE2);
    assert_eq!(
        (
            s.underlay.running.as_str(),
            s.underlay.xdp_sockets,
            s.underlay.xdp_workers
        ),
        ("xdp", 1, 1),
        "{:?}",
        s.underlay
    );
    let text = common::status_text(&tc, NODE2);
    assert!(
        text.contains("underlay: xdp (generic, 1 socket; 1 of 2 workers, the others on packet)"),
        "{text}"
    );
    tc.cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    // Several flows, so both TUN queues (and both workers) carry some.
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..4u16)
            .map(|i| {
                let tc = &tc;
                scope.spawn(move || common::tcp_transfer(tc, PERF, SIT, 7610 + i, 4 << 20))
            })
            .collect();
        for r in runs {
            assert_eq!(r.join().unwrap(), 4 << 20);
        }
    });
    let st = stats(&tc, NODE2);
    let sent = st.counter("tx_packets").unwrap();
    let by_link = st.counter("tx_xdp").unwrap() + st.counter("tx_af_packet").unwrap();
    assert!(by_link > 0 && sent > 0, "{st:?}");
}
