//! End-to-end tests of operating tunl: the control socket and its CLI, the
//! metrics endpoint, restart after kill -9, dropped privileges, a spoofed
//! IPIP flood and the ICMP rate limit. In network namespaces (root, as under
//! CI; they do not skip).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{
    ipv4_packet, logs, netns_of, pool_route_tunl_does_not_follow, run_to_exit, send_raw_many,
    stats, tunl_bin, wait_until,
};
use etherparse::PacketBuilder;
use tunl::config::Underlay;
use tunl::control::{Client, Request, Stats, Status};
use tunl_lab::testbed::{DaemonOptions, TunlCluster, in_netns};
use tunl_lab::topology::{ClusterSpec, ProcessOutput};

const NODE1: &str = "node1.sit";
const NODE2: &str = "node2.perf";
const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";

fn cluster(spec: ClusterSpec, extra_config: &str) -> TunlCluster {
    TunlCluster::start(
        spec,
        tunl_bin(),
        DaemonOptions {
            extra_config: extra_config.to_owned(),
            ..DaemonOptions::default()
        },
    )
    .expect("start a cluster with tunl on every node")
}

/// Runs `tunl ARGS --socket <node's socket>` from the test's namespace.
fn tunl(tc: &TunlCluster, node: &str, args: &[&str]) -> Output {
    Command::new(tunl_bin())
        .args(args)
        .arg("--socket")
        .arg(tc.control_socket(node))
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status(tc: &TunlCluster, node: &str) -> Status {
    Client::connect(&tc.control_socket(node))
        .unwrap()
        .call(&Request::Status {})
        .unwrap()
}

/// Sends `count` UDP datagrams of `len` bytes from `from_pod` to `to:port`,
/// paced by `gap`, while a receiver in `to_pod` counts them; returns the
/// number received (the receiver waits for them all, or 2 s of silence).
fn udp_stream(
    tc: &TunlCluster,
    from_pod: &str,
    to_pod: &str,
    port: u16,
    count: usize,
    len: usize,
    gap: Duration,
) -> usize {
    let to = tc.pod_ip(to_pod).unwrap();
    let rx_ns = netns_of(tc, to_pod);
    let tx_ns = netns_of(tc, from_pod);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = std::thread::spawn(move || {
        in_netns(&rx_ns, move || {
            let sock = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            let mut got = 0;
            while got < count {
                match sock.recv(&mut buf) {
                    Ok(n) if n == len => got += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            got
        })
        .unwrap()
    });
    ready_rx.recv().unwrap();
    in_netns(&tx_ns, move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        let payload = vec![0x5a; len];
        for _ in 0..count {
            sock.send_to(&payload, (to, port)).unwrap();
            std::thread::sleep(gap);
        }
    })
    .unwrap();
    receiver.join().unwrap()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn route_add_del_replace_while_traffic_flows_lose_nothing_on_unchanged_routes() {
    let tc = cluster(ClusterSpec::generated(3, 1), "");
    let c = tc.cluster();
    let nodes: Vec<_> = c.nodes().to_vec();
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let (p1, p2, p3) = (&n1.pods[0], &n2.pods[0], &n3.pods[0]);
    let list = tunl(&tc, &n1.name, &["route", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert_eq!(stdout(&list).lines().count(), 2, "{}", stdout(&list));

    let count = 3000;
    std::thread::scope(|s| {
        // A stream over the unchanged route n1 -> n2 during every change.
        let stream = s.spawn(|| {
            udp_stream(
                &tc,
                &p1.name,
                &p2.name,
                7100,
                count,
                200,
                Duration::from_micros(500),
            )
        });

        let block3 = n3.block.to_string();
        let del = ["route", "del", block3.as_str()];
        let o = tunl(&tc, &n1.name, &del);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("1 removed"), "{}", stdout(&o));
        assert_eq!(tc.kernel_routes(&n1.name).unwrap().len(), 1);
        assert!(
            tc.log(&n1.name)
                .contains("routes changed added=0 removed=1 unchanged=1 origin=control socket"),
            "{}",
            tc.log(&n1.name)
        );
        let r = c
            .ping(&p1.name, p3.ip, 1, Duration::from_millis(100))
            .unwrap();
        assert_eq!(r.received, 0, "reached node3 without a route: {}", r.raw);
        // Idempotent.
        let o = tunl(&tc, &n1.name, &del);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("0 removed"), "{}", stdout(&o));
        // A prefix with host bits is refused, not "0 removed".
        let sloppy = format!("{}/{}", n2.block.nth(1).unwrap(), n2.block.prefix());
        let o = tunl(&tc, &n1.name, &["route", "del", &sloppy]);
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        assert!(stderr(&o).contains("host bits"), "{}", stderr(&o));
        assert_eq!(tc.kernel_routes(&n1.name).unwrap().len(), 1);

        let via3 = n3.underlay.to_string();
        let add = ["route", "add", block3.as_str(), "via", via3.as_str()];
        let o = tunl(&tc, &n1.name, &add);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout(&o).contains("1 added"), "{}", stdout(&o));
        let r = c
            .wait_reachable(&p1.name, p3.ip, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
        assert_eq!(r.ttls.last(), Some(&62));
        let o = tunl(&tc, &n1.name, &add);
        assert!(stdout(&o).contains("0 added or changed, 0 removed, 2 unchanged"));
        // --json: the daemon's result, for add and list.
        let mut json_add = add.to_vec();
        json_add.push("--json");
        let o = tunl(&tc, &n1.name, &json_add);
        let change: tunl::control::RouteChange = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!((change.added.len(), change.unchanged), (0, 2));
        let o = tunl(&tc, &n1.name, &["route", "list", "--json"]);
        let list: tunl::control::RouteList = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(list.routes.len(), 2);
        assert!(list.routes.iter().any(|r| r.prefix == n3.block));

        // A refused add changes nothing and says why.
        let before = tc.kernel_routes(&n1.name).unwrap();
        let own = n1.block.to_string();
        let o = tunl(&tc, &n1.name, &["route", "add", &own, "via", &via3]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("own block"), "{}", stderr(&o));
        assert_eq!(tc.kernel_routes(&n1.name).unwrap(), before);

        // Replace: keep n2's block, drop n3's, add a new block via n3.
        let file = tc.dir().join("routes.txt");
        std::fs::write(
            &file,
            format!(
                "# from another control plane\n{} via {}\n10.99.0.0/26 via {}\n",
                n2.block, n2.underlay, n3.underlay
            ),
        )
        .unwrap();
        let o = tunl(
            &tc,
            &n1.name,
            &["route", "replace", "--file", file.to_str().unwrap()],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains("1 added or changed, 1 removed, 1 unchanged"),
            "{}",
            stdout(&o)
        );
        let routes = tc.kernel_routes(&n1.name).unwrap().join("\n");
        assert!(routes.contains("10.99.0.0/26"), "{routes}");
        assert!(!routes.contains(&n3.block.to_string()), "{routes}");
        let r = c
            .ping(&p1.name, p3.ip, 1, Duration::from_millis(100))
            .unwrap();
        assert_eq!(r.received, 0, "{}", r.raw);
        // A bad set is refused whole.
        std::fs::write(&file, format!("{} via {}\n", n1.block, n2.underlay)).unwrap();
        let o = tunl(
            &tc,
            &n1.name,
            &["route", "replace", "--file", file.to_str().unwrap()],
        );
        assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
        assert!(stderr(&o).contains("nothing changed"), "{}", stderr(&o));
        assert_eq!(tc.kernel_routes(&n1.name).unwrap().len(), 2);
        // A file that does not parse is a usage error.
        std::fs::write(&file, "10.1.0.0/26 172.16.0.1\n").unwrap();
        let o = tunl(
            &tc,
            &n1.name,
            &["route", "replace", "--file", file.to_str().unwrap()],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        // An empty set would remove every route: refused without
        // --allow-empty, by the CLI (exit 2) and by the daemon (exit 1).
        std::fs::write(&file, "# nothing here\n").unwrap();
        let o = tunl(
            &tc,
            &n1.name,
            &["route", "replace", "--file", file.to_str().unwrap()],
        );
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("--allow-empty"), "{}", stderr(&o));
        let line = raw_request(
            &tc.control_socket(&n1.name),
            b"{\"cmd\":\"route_replace\",\"routes\":[]}\n",
        );
        assert!(
            line.contains("\"ok\":false") && line.contains("allow_empty"),
            "{line}"
        );
        assert_eq!(tc.kernel_routes(&n1.name).unwrap().len(), 2);

        let got = stream.join().unwrap();
        assert_eq!(
            got,
            count,
            "datagrams lost on the unchanged route\n{}",
            logs(&tc)
        );
    });
    // With --allow-empty, the empty set removes every route.
    let file = tc.dir().join("routes.txt");
    let o = tunl(
        &tc,
        &n1.name,
        &[
            "route",
            "replace",
            "--allow-empty",
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("0 added or changed, 2 removed, 0 unchanged"),
        "{}",
        stdout(&o)
    );
    assert!(tc.kernel_routes(&n1.name).unwrap().is_empty());
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

fn metric(text: &str, name: &str, labels: &str) -> u64 {
    tunl::metrics::sample(text, name, labels)
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
}

#[test]
#[ignore = "needs root: scripts/test"]
fn status_stats_and_metrics_show_known_traffic() {
    let tc = cluster(
        ClusterSpec::seed(),
        "\n[metrics]\nlisten = \"127.0.0.1:9099\"\n",
    );
    let node1 = tc.cluster().node(NODE1).unwrap().underlay;
    let node2 = tc.cluster().node(NODE2).unwrap().underlay;
    let base_tx = stats(&tc, NODE2);
    let base_rx = stats(&tc, NODE1);
    let n = 50;
    let len = 100;
    let got = udp_stream(&tc, PERF, SIT, 7200, n, len, Duration::from_millis(1));
    assert_eq!(got, n);
    let inner = (20 + 8 + len) as u64;
    let n = n as u64;
    let delta = |now: &Stats, base: &Stats, name: &str| {
        now.counter(name).unwrap() - base.counter(name).unwrap()
    };
    wait_until(
        || delta(&stats(&tc, NODE2), &base_tx, "tx_packets") >= n,
        "sender counted the datagrams",
    );
    let tx = stats(&tc, NODE2);
    assert_eq!(delta(&tx, &base_tx, "tx_packets"), n);
    assert_eq!(delta(&tx, &base_tx, "tx_bytes"), n * inner);
    let rx = stats(&tc, NODE1);
    assert_eq!(delta(&rx, &base_rx, "rx_packets"), n);
    assert_eq!(delta(&rx, &base_rx, "rx_bytes"), n * inner);
    assert_eq!(rx.drops_total, 0, "{rx:?}");

    let s = status(&tc, NODE2);
    assert_eq!(s.device, "tunl0");
    assert_eq!(s.mtu, 1480);
    assert_eq!(s.local, node2);
    assert_eq!(s.nodes.len(), 1);
    let peer = &s.nodes[0];
    assert_eq!(peer.node, node1);
    assert_eq!(peer.path_mtu, 1480);
    assert_eq!(peer.tx_packets, tx.counter("tx_packets").unwrap());
    assert_eq!(peer.tx_bytes, tx.counter("tx_bytes").unwrap());
    assert!(peer.last_seen_unix_ms.is_some());
    let r = status(&tc, NODE1);
    assert_eq!(r.nodes[0].rx_packets, rx.counter("rx_packets").unwrap());
    assert_eq!(r.nodes[0].rx_bytes, rx.counter("rx_bytes").unwrap());

    // The CLI's text, JSON and dump say the same.
    let o = tunl(&tc, NODE2, &["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains(&format!("node: {node1}")), "{text}");
    assert!(
        text.contains(&format!(
            "  transfer: {} received, {} sent\n",
            tunl_cli::status::bytes(peer.rx_bytes),
            tunl_cli::status::bytes(peer.tx_bytes)
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  packets: {} received, {} sent\n",
            tunl_cli::status::count(peer.rx_packets),
            tunl_cli::status::count(peer.tx_packets)
        )),
        "{text}"
    );
    assert!(text.contains("path mtu: 1480"), "{text}");
    assert!(
        text.contains(&format!(
            "  version: {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("  uptime: "), "{text}");
    let o = tunl(&tc, NODE2, &["status", "--json"]);
    let json: Status = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json.version, env!("CARGO_PKG_VERSION"));
    assert!(json.started_unix_ms > 0 && json.started_unix_ms <= json.now_unix_ms);
    assert_eq!(json.nodes[0].tx_packets, peer.tx_packets);
    let o = tunl(&tc, NODE2, &["status", "--dump"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dump = stdout(&o);
    let records: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        records[0][..4],
        ["device", "tunl0", &node2.to_string(), "1480"],
        "{dump}"
    );
    assert_eq!(records[0].len(), 11, "{dump}");
    let node_record = records.iter().find(|r| r[0] == "node").expect(&dump);
    assert_eq!(node_record[1], node1.to_string());
    assert_eq!(node_record[6], peer.tx_packets.to_string(), "{dump}");
    assert_eq!(node_record[7], peer.tx_bytes.to_string(), "{dump}");
    assert_eq!(records.last().unwrap()[0], "refused_other", "{dump}");
    let o = tunl(&tc, NODE2, &["status", "--dump", "--json"]);
    assert_eq!(o.status.code(), Some(2), "--dump and --json conflict");
    // stats --json is one object, as jq wants it.
    let o = tunl(&tc, NODE1, &["stats", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let now = stats(&tc, NODE1);
    for (name, v) in &now.counters {
        assert_eq!(json[name.as_str()], *v, "{name}: {json}");
    }
    for (reason, v) in &now.drops {
        assert_eq!(json["drops"][reason.as_str()], *v, "{reason}: {json}");
    }
    assert_eq!(json["drops_total"], now.drops_total);
    let o = tunl(&tc, NODE1, &["stats"]);
    assert!(stdout(&o).contains("unknown_source: 0"), "{}", stdout(&o));

    // The metrics endpoint, over the node's loopback, has the same numbers.
    let m = scrape(&tc, NODE1, 9099);
    assert!(m.starts_with("HTTP/1.1 200 OK"), "{m}");
    assert_eq!(
        metric(&m, "tunl_rx_packets_total", ""),
        rx.counter("rx_packets").unwrap()
    );
    assert_eq!(
        metric(&m, "tunl_rx_bytes_total", ""),
        rx.counter("rx_bytes").unwrap()
    );
    assert_eq!(
        metric(
            &m,
            "tunl_node_rx_packets_total",
            &format!("node=\"{node2}\"")
        ),
        r.nodes[0].rx_packets
    );
    assert_eq!(
        metric(&m, "tunl_drops_total", "reason=\"unknown_source\""),
        0
    );
    assert_eq!(metric(&m, "tunl_routes", "origin=\"tunl\""), 1);
    assert_eq!(metric(&m, "tunl_dataplane_workers", ""), 1);
    assert_eq!(
        metric(&m, "tunl_path_mtu_bytes", &format!("node=\"{node2}\"")),
        1480
    );
    assert!(m.contains("tunl_build_info{version="), "{m}");
    let m = scrape(&tc, NODE2, 9099);
    assert_eq!(
        metric(&m, "tunl_tx_packets_total", ""),
        tx.counter("tx_packets").unwrap()
    );
    assert_eq!(
        metric(&m, "tunl_tx_bytes_total", ""),
        tx.counter("tx_bytes").unwrap()
    );
}

/// Writes node1's config for another instance beside the running one: on
/// `device`, with its own control socket and no device address, the route
/// prefix `10.20.105.192/26` replaced by `prefix`; returns its path.
fn another_instance_config(tc: &TunlCluster, device: &str, prefix: &str) -> std::path::PathBuf {
    let config = tc
        .config_text(NODE1)
        .unwrap()
        .replace("name = \"tunl0\"", &format!("name = \"{device}\""))
        .replace("10.20.105.192/26", prefix)
        .replace(".sock\"", &format!("-{device}.sock\""))
        .lines()
        .filter(|l| !l.starts_with("address"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(config.contains(&format!("-{device}.sock")), "{config}");
    let path = tc.dir().join(format!("{device}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_second_instance_on_another_device_leaves_the_first_ones_routes_alone_and_cannot_take_them() {
    let tc = cluster(ClusterSpec::seed(), "");
    let first = tc.kernel_routes(NODE1).unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    let path = another_instance_config(&tc, "tunl9", "10.97.0.0/26");
    // Spawned through the cluster, which ends it if the test fails.
    let second = tc
        .cluster()
        .spawn(
            NODE1,
            &[
                tunl_bin().to_str().unwrap(),
                "run",
                "--config",
                path.to_str().unwrap(),
            ],
            ProcessOutput::Null,
        )
        .unwrap();
    wait_until(
        || {
            tc.kernel_routes(NODE1)
                .unwrap()
                .iter()
                .any(|r| r.starts_with("10.97.0.0/26") && r.contains("tunl9"))
        },
        "the second instance's route",
    );
    let both = tc.kernel_routes(NODE1).unwrap();
    assert!(both.contains(&first[0]), "first route gone: {both:?}");
    // The first instance cannot take the second one's route over at runtime.
    let via = tc.cluster().node(NODE2).unwrap().underlay.to_string();
    let o = tunl(&tc, NODE1, &["route", "add", "10.97.0.0/26", "via", &via]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("10.97.0.0/26 is already installed by tunl on the TUN device tunl9"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tc.kernel_routes(NODE1).unwrap(), both);
    tc.cluster().terminate(second).unwrap();
    assert_eq!(tc.kernel_routes(NODE1).unwrap(), first);
    // Nor can a third instance that wants the first one's prefix: it
    // refuses to start.
    let path = another_instance_config(&tc, "tunl8", "10.20.105.192/26");
    let third = run_to_exit(&tc, NODE1, &path);
    assert!(!third.status.success());
    assert!(
        stderr(&third)
            .contains("10.20.105.192/26 is already installed by tunl on the TUN device tunl0"),
        "{}",
        stderr(&third)
    );
    assert_eq!(tc.kernel_routes(NODE1).unwrap(), first);
    let r = tc
        .cluster()
        .wait_reachable(SIT, tc.pod_ip(PERF).unwrap(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
}

#[test]
#[ignore = "needs root: scripts/test"]
fn restart_after_kill_9_leaves_no_stale_route() {
    let tc = cluster(ClusterSpec::seed(), "");
    let c = tc.cluster();
    let node2 = c.node(NODE2).unwrap().underlay;
    let config_routes = tc.kernel_routes(NODE1).unwrap();
    assert_eq!(config_routes.len(), 1);
    let via = node2.to_string();
    let o = tunl(&tc, NODE1, &["route", "add", "10.99.0.0/26", "via", &via]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tc.kernel_routes(NODE1).unwrap().len(), 2);
    tc.kill(NODE1).unwrap();
    // A stale route with tunl's tag on a device that outlived the daemon
    // (the underlay here), as a crash can leave.
    let dev = c
        .exec_ok(NODE1, &["ip", "-o", "route", "get", &via])
        .unwrap();
    let dev = dev
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap()
        .to_owned();
    c.exec_ok(
        NODE1,
        &[
            "ip",
            "route",
            "add",
            "10.98.0.0/26",
            "via",
            &via,
            "dev",
            &dev,
            "proto",
            "116",
        ],
    )
    .unwrap();
    let mut tc = tc;
    tc.restart(NODE1).unwrap();
    let after = tc.kernel_routes(NODE1).unwrap();
    assert_eq!(after, config_routes, "{}", tc.log(NODE1));
    // The device persisted through the kill (tunnel.persist) with both of
    // tunl's routes on it: the control socket's and the one on the underlay
    // are stale, the config's is wanted.
    assert!(
        tc.log(NODE1).contains("stale tunl routes removed routes=2"),
        "{}",
        tc.log(NODE1)
    );
    let o = tunl(&tc, NODE1, &["route", "list"]);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    let r = tc
        .cluster()
        .wait_reachable(SIT, tc.pod_ip(PERF).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
}

fn proc_status(pid: u32, task: Option<&str>) -> Vec<(String, String)> {
    let path = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn field<'a>(status: &'a [(String, String)], key: &str) -> &'a str {
    &status.iter().find(|(k, _)| k == key).unwrap().1
}

/// CAP_NET_ADMIN (12) as /proc shows a capability set.
const NET_ADMIN: &str = "0000000000001000";

fn assert_dropped(tc: &TunlCluster, node: &str) -> u32 {
    let pid = tc.daemon(node).unwrap().pid;
    let s = proc_status(pid, None);
    assert_eq!(field(&s, "CapEff"), NET_ADMIN, "{s:?}");
    assert_eq!(field(&s, "CapPrm"), NET_ADMIN, "{s:?}");
    assert_eq!(field(&s, "CapInh"), "0000000000000000");
    assert_eq!(field(&s, "CapAmb"), "0000000000000000");
    // The bounding set: CAP_NET_ADMIN and CAP_NET_RAW at most.
    let bnd = u64::from_str_radix(field(&s, "CapBnd"), 16).unwrap();
    assert_eq!(bnd & !((1 << 12) | (1 << 13)), 0, "{s:?}");
    assert_eq!(field(&s, "NoNewPrivs"), "1");
    // Every thread: the dataplane workers hold nothing, no thread more than
    // CAP_NET_ADMIN.
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().file_name().into_string().unwrap();
        let t = proc_status(pid, Some(&task));
        let eff = u64::from_str_radix(field(&t, "CapEff"), 16).unwrap();
        assert_eq!(eff & !(1 << 12), 0, "thread {task}: {t:?}");
        if field(&t, "Name").starts_with("tunl-dp") {
            workers += 1;
            assert_eq!(eff, 0, "worker {task}: {t:?}");
        }
    }
    assert_eq!(workers, 1);
    pid
}

#[test]
#[ignore = "needs root: scripts/test"]
fn privileges_are_dropped_and_routes_still_change() {
    let tc = cluster(ClusterSpec::seed(), "");
    assert_dropped(&tc, NODE1);
    let sock = std::fs::metadata(tc.control_socket(NODE1)).unwrap();
    assert_eq!(sock.permissions().mode() & 0o777, 0o600);
    assert_eq!(sock.uid(), 0);
    // CAP_NET_ADMIN still lets the daemon change routes.
    let via = tc.cluster().node(NODE2).unwrap().underlay.to_string();
    let o = tunl(&tc, NODE1, &["route", "add", "10.99.0.0/26", "via", &via]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tc.kernel_routes(NODE1).unwrap().len(), 2);
    let r = tc
        .cluster()
        .wait_reachable(SIT, tc.pod_ip(PERF).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
}

#[test]
#[ignore = "needs root: scripts/test"]
fn runs_with_only_net_admin_and_net_raw() {
    // Started with CAP_NET_ADMIN and CAP_NET_RAW alone, as ambient
    // capabilities (a unit with AmbientCapabilities=, or file capabilities):
    // the bounding set is full but there is no CAP_SETPCAP to shrink it.
    // SECBIT_NOROOT keeps uid 0 from granting everything, so the TUN device
    // node stays accessible.
    let tc = cluster(ClusterSpec::seed(), "");
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    let config = tc.daemon(NODE1).unwrap().config.clone();
    let log = tc.dir().join("restricted.log");
    let daemon = tc
        .cluster()
        .spawn(
            NODE1,
            &[
                "setpriv",
                "--securebits=+noroot,+noroot_locked",
                "--inh-caps=-all,+net_admin,+net_raw",
                "--ambient-caps=+net_admin,+net_raw",
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
        || tc.kernel_routes(NODE1).unwrap().len() == 1 || read_log().contains("ERROR"),
        "the daemon's route (or an error)",
    );
    assert_eq!(tc.kernel_routes(NODE1).unwrap().len(), 1, "{}", read_log());
    let s = proc_status(daemon, None);
    assert_eq!(field(&s, "CapEff"), NET_ADMIN, "{s:?}");
    assert_eq!(field(&s, "CapAmb"), "0000000000000000", "{s:?}");
    assert_eq!(field(&s, "NoNewPrivs"), "1");
    let r = tc
        .cluster()
        .wait_reachable(SIT, tc.pod_ip(PERF).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
    let exit = tc.cluster().terminate(daemon).unwrap();
    assert!(exit.success(), "{exit:?}\n{}", read_log());
    assert!(tc.kernel_routes(NODE1).unwrap().is_empty());
}

#[test]
#[ignore = "needs root: scripts/test"]
fn security_user_switches_user_and_keeps_only_net_admin() {
    let tc = cluster(ClusterSpec::seed(), "\n[security]\nuser = \"nobody\"\n");
    for node in [NODE1, NODE2] {
        let pid = assert_dropped(&tc, node);
        let s = proc_status(pid, None);
        assert_eq!(field(&s, "Uid"), "65534\t65534\t65534\t65534", "{s:?}");
        assert_eq!(field(&s, "Gid"), "65534\t65534\t65534\t65534", "{s:?}");
    }
    let r = tc
        .cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));
    let via = tc.cluster().node(NODE2).unwrap().underlay.to_string();
    let o = tunl(&tc, NODE1, &["route", "add", "10.99.0.0/26", "via", &via]);
    assert!(o.status.success(), "{}", stderr(&o));
    // SIGTERM still removes routes and the device.
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    assert!(tc.kernel_routes(NODE1).unwrap().is_empty());
}

#[test]
fn json_logs_are_one_object_per_line_and_route_changes_say_where_they_came_from() {
    let tc = cluster(ClusterSpec::seed(), "");
    assert!(tc.stop(NODE1).unwrap().success(), "{}", tc.log(NODE1));
    let config = tc.daemon(NODE1).unwrap().config.clone();
    let original = std::fs::read_to_string(&config).unwrap();
    let log = tc.dir().join("json.log");
    let pid = tc
        .cluster()
        .spawn(
            NODE1,
            &[
                tunl_bin().to_str().unwrap(),
                "--log-format",
                "json",
                "--log",
                "info,tunl::daemon=debug",
                "run",
                "--config",
                config.to_str().unwrap(),
            ],
            ProcessOutput::File(log.clone()),
        )
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        || read_log().contains("tunl is up"),
        "the daemon's start in its log",
    );
    // From the control socket: one accepted, one refused (debug).
    let via = tc.cluster().node(NODE2).unwrap().underlay.to_string();
    let o = tunl(&tc, NODE1, &["route", "add", "10.99.0.0/26", "via", &via]);
    assert!(o.status.success(), "{}", stderr(&o));
    let own = tc.cluster().node(NODE1).unwrap().block.to_string();
    let o = tunl(&tc, NODE1, &["route", "add", &own, "via", &via]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // SIGHUP with a file that is not TOML, then with one more route.
    std::fs::write(&config, "[tunnel\nlocal = \n").unwrap();
    tc.cluster().signal(pid, libc::SIGHUP).unwrap();
    wait_until(
        || read_log().contains("still running on the previous config"),
        "the refused reload",
    );
    std::fs::write(
        &config,
        format!("{original}\n[[route]]\nprefix = \"10.98.0.0/26\"\nvia = \"{via}\"\n"),
    )
    .unwrap();
    tc.cluster().signal(pid, libc::SIGHUP).unwrap();
    wait_until(|| read_log().contains("config reloaded"), "the reload");
    assert!(
        tc.cluster().terminate(pid).unwrap().success(),
        "{}",
        read_log()
    );
    std::fs::write(&config, original).unwrap();

    let events: Vec<serde_json::Value> = read_log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON object ({e}): {l}")))
        .collect();
    let find = |message: &'static str| {
        events
            .iter()
            .filter(move |e| e["message"].as_str().unwrap_or("").contains(message))
    };
    for e in &events {
        assert!(e["level"].is_string() && e["timestamp"].is_string(), "{e}");
        assert!(!e.to_string().contains("Some("), "Rust Debug in {e}");
    }
    let up = find("tunl is up").next().unwrap();
    assert_eq!(up["device"], "tunl0", "{up}");
    assert_eq!(up["metrics"], "none", "{up}");
    assert_eq!(
        up["blocks"],
        tc.cluster().node(NODE1).unwrap().block.to_string(),
        "{up}"
    );
    // One info line per change set, naming its origin; one debug line per
    // route.
    let origins: Vec<(&str, &str, u64)> = find("routes changed")
        .map(|e| {
            let level = e["level"].as_str().unwrap();
            (
                level,
                e["origin"].as_str().unwrap(),
                e["added"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        origins,
        [
            ("INFO", "config", 1),
            ("INFO", "control socket", 1),
            ("INFO", "SIGHUP", 1)
        ]
    );
    let origins: Vec<(&str, &str, &str)> = find("route installed")
        .map(|e| {
            let level = e["level"].as_str().unwrap();
            (
                level,
                e["prefix"].as_str().unwrap(),
                e["origin"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        origins,
        [
            ("DEBUG", "10.20.105.192/26", "config"),
            ("DEBUG", "10.99.0.0/26", "control socket"),
            ("DEBUG", "10.98.0.0/26", "SIGHUP"),
        ]
    );
    let refused = find("control request refused").next().unwrap();
    assert_eq!(refused["level"], "DEBUG");
    assert_eq!(refused["request"], format!("route_add {own} via {via}"));
    assert!(
        refused["error"].as_str().unwrap().contains("own block"),
        "{refused}"
    );
    let bad = find("still running on the previous config").next().unwrap();
    let message = bad["message"].as_str().unwrap();
    assert!(message.contains("not TOML"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

fn ipip(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner_dst: Ipv4Addr) -> Vec<u8> {
    let mut inner = Vec::new();
    PacketBuilder::ipv4([10, 20, 105, 215], inner_dst.octets(), 64)
        .udp(40000, 7300)
        .write(&mut inner, b"injected")
        .unwrap();
    ipv4_packet(outer_src, outer_dst, etherparse::IpNumber::IPV4, &inner)
}

#[test]
#[ignore = "needs root: scripts/test"]
fn spoofed_ipip_flood_is_refused_counted_and_shown() {
    spoofed_ipip_flood(Underlay::Raw);
}

/// The same on the XDP underlay, where the flood reaches tunl through its
/// AF_XDP socket, past netfilter: the allow-list and the bounded refused
/// table and log hold there too.
#[test]
#[ignore = "needs root: scripts/test"]
fn spoofed_ipip_flood_is_refused_counted_and_shown_on_xdp() {
    spoofed_ipip_flood(Underlay::Xdp);
}

fn spoofed_ipip_flood(underlay: Underlay) {
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            underlay,
            ..DaemonOptions::default()
        },
    )
    .expect("start a cluster with tunl on every node");
    assert_eq!(status(&tc, NODE1).underlay.running, underlay.as_str());
    let node1 = tc.cluster().node(NODE1).unwrap().underlay;
    let sit = tc.pod_ip(SIT).unwrap();
    // 3000 packets from 100 spoofed sources, sent from node2's namespace.
    let flood: Vec<(Ipv4Addr, Vec<u8>)> = (0..3000u32)
        .map(|i| {
            let src = Ipv4Addr::new(172, 16, 200, (i % 100) as u8 + 1);
            (node1, ipip(src, node1, sit))
        })
        .collect();
    send_raw_many(&tc, NODE2, flood);
    wait_until(
        || stats(&tc, NODE1).counter("unknown_source") == Some(3000),
        "3000 unknown_source drops",
    );
    let s = stats(&tc, NODE1);
    assert_eq!(s.counter("rx_packets"), Some(0), "{s:?}");
    if underlay == Underlay::Xdp {
        assert_eq!(
            s.counter("rx_xdp"),
            Some(3000),
            "through the AF_XDP socket: {s:?}"
        );
    }
    let st = status(&tc, NODE1);
    let listed: u64 = st.refused.iter().map(|r| r.packets).sum();
    assert_eq!(listed + st.refused_other_packets, 3000);
    assert_eq!(st.refused.len(), 32, "the table is bounded");
    let text = stdout(&tunl(&tc, NODE1, &["status"]));
    assert!(text.contains("refused source: 172.16.200."), "{text}");
    assert_eq!(
        text.matches("refused source:").count(),
        tunl_cli::status::STATUS_REFUSED_LINES,
        "{text}"
    );
    assert!(text.contains("refused from other sources:"), "{text}");
    // One log line per remembered source, not one per packet.
    let warns = tc.log(NODE1).matches("refused IPIP").count();
    assert_eq!(warns, 32, "{}", tc.log(NODE1));
    // A refused source that becomes a node is judged by the running policy.
    let source = st.refused[0].source;
    assert!(!st.refused[0].accepted_now);
    let src = source.to_string();
    let o = tunl(&tc, NODE1, &["route", "add", "10.99.0.0/26", "via", &src]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st = status(&tc, NODE1);
    for r in &st.refused {
        assert_eq!(r.accepted_now, r.source == source, "{r:?}");
    }
}

#[test]
#[ignore = "needs root: scripts/test"]
fn icmp_tunl_generates_stays_under_the_rate_limit_in_a_flood() {
    let tc = cluster(ClusterSpec::seed(), "");
    // A pool route into the tunnel that tunl does not follow (table 100,
    // after main): packets to 10.20.200.0/24 reach tunl, which has no route
    // and answers net unreachable, rate-limited (dataplane.icmp_rate =
    // 100/s, burst 10).
    pool_route_tunl_does_not_follow(&tc, NODE2);
    let flood = 5000;
    let start = Instant::now();
    in_netns(&netns_of(&tc, PERF), move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        for i in 0..flood {
            let dst = Ipv4Addr::new(10, 20, 200, (i % 200) as u8 + 1);
            let _ = sock.send_to(b"x", (dst, 9));
            if i % 100 == 99 {
                // Leave the TUN queue (1000 packets) room to drain.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
    .unwrap();
    // Wait for the counts to settle (a sent datagram can be lost before
    // tunl, e.g. in the TUN queue; each one tunl saw is counted).
    let mut last = u64::MAX;
    wait_until(
        || {
            let now = stats(&tc, NODE2).counter("no_route").unwrap();
            let settled = now == last && now > 0;
            last = now;
            std::thread::sleep(Duration::from_millis(200));
            settled
        },
        "the flood's counts settle",
    );
    let elapsed = start.elapsed().as_secs_f64();
    let s = stats(&tc, NODE2);
    let sent = s.counter("icmp_sent").unwrap();
    let limited = s.counter("icmp_rate_limited").unwrap();
    let no_route = s.counter("no_route").unwrap();
    assert!(
        no_route >= 1000,
        "too little of the flood reached tunl: {s:?}"
    );
    assert_eq!(sent + limited, no_route, "{s:?}");
    let bound = 10.0 + 100.0 * elapsed.ceil();
    assert!(
        (sent as f64) <= bound,
        "{sent} ICMP errors in {elapsed:.2} s exceed the limit {bound}"
    );
    assert!(limited > 0);
}

/// Sends raw bytes on a fresh connection and returns the first reply line.
fn raw_request(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
#[ignore = "needs root: scripts/test"]
fn malformed_requests_get_errors_and_the_daemon_goes_on() {
    let tc = cluster(ClusterSpec::seed(), "");
    let path = tc.control_socket(NODE1);
    // A client that sends half a line and waits does not block others.
    let mut stalled = UnixStream::connect(&path).unwrap();
    stalled.write_all(b"{\"cmd\":").unwrap();
    for (bytes, want) in [
        (&b"not json\n"[..], "not JSON"),
        (b"{\"cmd\":\"reboot\"}\n", "unknown command"),
        (b"{\"cmd\":42}\n", "must be a string"),
        (b"[1,2,3]\n", "bad request"),
        (
            b"{\"cmd\":\"route_add\",\"prefix\":\"10.0.0.0/8\"}\n",
            "missing field",
        ),
        (b"\xff\xfe\n", "UTF-8"),
        (b"\n", "empty"),
    ] {
        let line = raw_request(&path, bytes);
        let r: tunl::control::Response = serde_json::from_str(&line).unwrap();
        assert!(!r.ok, "{line}");
        assert!(r.error.as_deref().unwrap_or("").contains(want), "{line}");
    }
    // A huge message: an error, the connection closes.
    let huge = vec![b'{'; 1 << 20];
    let line = raw_request(&path, &huge);
    assert!(line.contains("longer than 65536 bytes"), "{line}");
    drop(stalled);
    // Still serving, still routing.
    assert!(
        tc.cluster()
            .try_wait(tc.daemon(NODE1).unwrap().pid)
            .unwrap()
            .is_none()
    );
    let o = tunl(&tc, NODE1, &["route", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1);

    // A second daemon on the same socket exits before touching anything.
    let config = tc.daemon(NODE1).unwrap().config.clone();
    let other = tc.dir().join("second.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name = \"tunl0\"", "name = \"tunl9\"");
    std::fs::write(&other, text).unwrap();
    let out = run_to_exit(&tc, NODE1, &other);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another tunl daemon is serving the control socket"),
        "{err}"
    );
    let o = tunl(&tc, NODE1, &["status"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // Another user than root, with the daemon running: permission denied,
    // and what is needed, for every command.
    for args in [&["status"][..], &["route", "list"], &["stats", "--json"]] {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(tunl_bin())
            .args(args)
            .arg("--socket")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "permission denied on the control socket {}",
                path.display()
            )),
            "{args:?}: {err}"
        );
        assert!(err.contains("run this as root"), "{err}");
        assert!(!err.contains("no tunl daemon"), "{err}");
    }

    // No daemon: a clear message, exit code 1.
    let o = Command::new(tunl_bin())
        .args(["route", "list", "--socket"])
        .arg(tc.dir().join("nobody-here.sock"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no tunl daemon is running: cannot connect to"),
        "{}",
        stderr(&o)
    );
}

/// `count` routes for consecutive /26 blocks from 10.64.0.0 via `via`, in
/// the `PREFIX via NODE` form `tunl route replace --file` reads.
fn many_routes(count: u32, via: Ipv4Addr) -> (Vec<(String, Ipv4Addr)>, String) {
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    let routes: Vec<(String, Ipv4Addr)> = (0..count)
        .map(|i| (format!("{}/26", Ipv4Addr::from(base + i * 64)), via))
        .collect();
    let text = routes
        .iter()
        .map(|(p, v)| format!("{p} via {v}\n"))
        .collect();
    (routes, text)
}

#[test]
#[ignore = "needs root: scripts/test"]
fn route_replace_carries_100k_routes_in_one_change() {
    let tc = cluster(ClusterSpec::generated(2, 1), "");
    let c = tc.cluster();
    let nodes: Vec<_> = c.nodes().to_vec();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    // n2's block, as the config has it, and 99,999 more via n2: 100k.
    let total = 100_000;
    let (mut routes, mut text) = many_routes(total - 1, n2.underlay);
    routes.push((n2.block.to_string(), n2.underlay));
    text.push_str(&format!("{} via {}\n", n2.block, n2.underlay));
    let file = tc.dir().join("100k.txt");
    std::fs::write(&file, &text).unwrap();
    assert!(
        text.len() > 64 * 1024 * 40,
        "far past one request line: {}",
        text.len()
    );
    let o = tunl(
        &tc,
        &n1.name,
        &["route", "replace", "--file", file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), logs(&tc));
    let summary = format!("{} added or changed, 0 removed, 1 unchanged", total - 1);
    assert!(stdout(&o).ends_with(&format!("{summary}\n")), "{}", {
        let out = stdout(&o);
        out[out.len().saturating_sub(200)..].to_owned()
    });
    // The daemon, the kernel and the LPM agree: the count and a sample.
    assert_eq!(status(&tc, &n1.name).routes, total as usize);
    let list: tunl::control::RouteList = Client::connect(&tc.control_socket(&n1.name))
        .unwrap()
        .call(&Request::RouteList {})
        .unwrap();
    assert_eq!(list.routes.len(), total as usize);
    let kernel = tc.kernel_routes(&n1.name).unwrap();
    assert_eq!(kernel.len(), total as usize);
    for i in [0, 1, 4_567, 54_321, 99_998, 99_999] {
        let (prefix, via) = &routes[i];
        let want: ipnetwork::Ipv4Network = prefix.parse().unwrap();
        assert!(
            list.routes
                .iter()
                .any(|r| r.prefix == want && r.via == Some(*via)),
            "route {i} ({prefix} via {via}) not listed"
        );
        let line = format!("{prefix} via {via} ");
        assert!(
            kernel.iter().any(|l| l.starts_with(&line)),
            "route {i} ({prefix} via {via}) not in the kernel"
        );
    }
    // One change: one summary line in the log.
    let log = tc.log(&n1.name);
    let changes = log
        .lines()
        .filter(|l| l.contains("routes changed") && l.contains("added=99999"))
        .count();
    assert_eq!(changes, 1, "{log}");
    // Pod traffic over the unchanged route still flows.
    let (p1, p2) = (&n1.pods[0], &n2.pods[0]);
    let r = c
        .ping(&p1.name, p2.ip, 3, Duration::from_millis(100))
        .unwrap();
    assert_eq!(r.received, 3, "{}", r.raw);
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_daemons_error_about_a_route_stream_reaches_the_cli() {
    let tc = cluster(ClusterSpec::generated(2, 1), "");
    let c = tc.cluster();
    let nodes: Vec<_> = c.nodes().to_vec();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let before = tc.kernel_routes(&n1.name).unwrap();
    let file = tc.dir().join("routes.txt");
    let replace = |text: &str| {
        std::fs::write(&file, text).unwrap();
        tunl(
            &tc,
            &n1.name,
            &["route", "replace", "--file", file.to_str().unwrap()],
        )
    };
    // Over the cap: the daemon refuses at the header, while the CLI is
    // still writing; it prints the daemon's reason, not EPIPE.
    let cap = tunl::control::MAX_REPLACE_ROUTES as u32;
    let (_, text) = many_routes(cap + 1, n2.underlay);
    let o = replace(&text);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{} routes announced, at most {cap}", cap + 1)),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("broken pipe"), "{err}");
    // A bad route deep in a streamed set: refused whole, naming it.
    let (routes, _) = many_routes(3000, n2.underlay);
    let bad = 2345;
    let text: String = routes
        .iter()
        .enumerate()
        .map(|(i, (p, v))| {
            // Host bits in one prefix: .1 past its network.
            let p = if i == bad {
                p.replacen(".0/26", ".1/26", 1)
                    .replacen(".64/26", ".65/26", 1)
                    .replacen(".128/26", ".129/26", 1)
                    .replacen(".192/26", ".193/26", 1)
            } else {
                p.clone()
            };
            format!("{p} via {v}\n")
        })
        .collect();
    let o = replace(&text);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("routes[{bad}].prefix")) && err.contains("nothing changed"),
        "{err}"
    );
    // A stream that breaks its own framing, over the socket: one error
    // line, then the connection is closed.
    let header = b"{\"cmd\":\"route_replace\",\"count\":2}\n";
    let reply = raw_request(
        &tc.control_socket(&n1.name),
        &[
            &header[..],
            b"{\"routes\":[{\"prefix\":\"10.64.0.0/26\"}]}\n",
        ]
        .concat(),
    );
    assert!(
        reply.contains("\"ok\":false") && reply.contains("chunk 1 of the route_replace stream"),
        "{reply}"
    );
    // Nothing changed, and the daemon goes on.
    assert_eq!(tc.kernel_routes(&n1.name).unwrap(), before);
    assert_eq!(status(&tc, &n1.name).routes, before.len());
}
