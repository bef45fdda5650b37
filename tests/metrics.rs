//! The metrics endpoint of a running daemon, scraped in both formats and
//! checked by Prometheus's tools (`promtool check metrics` for the text
//! format 0.0.4, the Python client's OpenMetrics parser through
//! scripts/metrics-samples for OpenMetrics). In network namespaces (root, as
//! under CI; they do not skip).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{logs, netns_of, tunl_bin};
use tunl_lab::testbed::{DaemonOptions, TunlCluster, in_netns};
use tunl_lab::topology::ClusterSpec;

const NODE1: &str = "node1.sit";
const NODE2: &str = "node2.perf";
const SIT: &str = "demo-hello-sit";
const PERF: &str = "demo-hello-perf";
const PORT: u16 = 9098;

/// `GET /metrics` over `node`'s loopback with `accept` (or none): the
/// response's Content-Type and body.
fn scrape(tc: &TunlCluster, node: &str, accept: Option<&str>) -> (String, String) {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let response = in_netns(&netns_of(tc, node), move || {
        let mut s = TcpStream::connect(("127.0.0.1", PORT)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
    .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap()
        .to_owned();
    (ctype, body.to_owned())
}

fn run_with_stdin(program: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program}: {e}; run scripts/setup.sh, which installs it \
                 (Debian packages prometheus for promtool, python3-prometheus-client)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The series (name and labels, no value) that scripts/metrics-samples
/// reads in `body`.
fn series(body: &str, format: &str) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/metrics-samples");
    let o = run_with_stdin(
        "/usr/bin/python3",
        &[script.to_str().unwrap(), format],
        body,
    );
    assert!(o.status.success(), "{}\n--- scraped:\n{body}", text_of(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
#[ignore = "needs root: scripts/test"]
fn a_running_daemon_serves_both_formats_and_promtool_accepts_the_text() {
    let started = now();
    let tc = TunlCluster::start(
        ClusterSpec::seed(),
        tunl_bin(),
        DaemonOptions {
            extra_config: format!("\n[metrics]\nlisten = \"127.0.0.1:{PORT}\"\n"),
            ..DaemonOptions::default()
        },
    )
    .expect("start a cluster with tunl on every node");
    // Traffic from node2 to node1: node1 hears from node2.
    let r = tc
        .cluster()
        .wait_reachable(PERF, tc.pod_ip(SIT).unwrap(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&tc)));
    assert_eq!(r.ttls.last(), Some(&62));

    let (ctype, text) = scrape(&tc, NODE1, None);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let o = run_with_stdin("promtool", &["check", "metrics"], &text);
    assert!(
        o.status.success() && text_of(&o).trim().is_empty(),
        "promtool check metrics: {}\n{}\n--- scraped:\n{text}",
        o.status,
        text_of(&o)
    );
    let (ctype, plain) = scrape(&tc, NODE1, Some("text/plain"));
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (ctype, openmetrics) = scrape(&tc, NODE1, Some(prometheus));
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"));
    // The same series in both (values move between scrapes).
    assert_eq!(series(&openmetrics, "openmetrics"), series(&plain, "text"));

    let node2 = tc.cluster().node(NODE2).unwrap().underlay;
    let node1 = tc.cluster().node(NODE1).unwrap().underlay;
    let seen = tunl::metrics::sample_f64(
        &text,
        "tunl_node_last_seen_timestamp_seconds",
        &format!("node=\"{node2}\""),
    )
    .unwrap_or_else(|| panic!("node1 heard from node2:\n{text}"));
    assert!(seen >= started - 1.0 && seen <= now() + 1.0, "{seen}");
    let device = format!("device=\"tunl0\",local=\"{node1}\",mtu=\"1480\"");
    assert_eq!(
        tunl::metrics::sample(&text, "tunl_device_info", &device),
        Some(1),
        "{text}"
    );
    // The config's routes went in at start: one timed route change.
    assert_eq!(
        tunl::metrics::sample(&text, "tunl_route_apply_duration_seconds_count", ""),
        Some(1)
    );
    assert_eq!(
        tunl::metrics::sample(&text, "tunl_route_apply_failures_total", ""),
        Some(0)
    );
    // The daemon's own process, not the test's.
    let start = tunl::metrics::sample_f64(&text, "process_start_time_seconds", "").unwrap();
    assert!(start >= started - 1.0 && start <= now() + 1.0, "{start}");
    let rss = tunl::metrics::sample(&text, "process_resident_memory_bytes", "").unwrap();
    assert!(rss > 1 << 20, "{rss}");
    // LimitNOFILE is not set here: whatever the test runs with, the
    // daemon inherits.
    assert!(tunl::metrics::sample(&text, "process_max_fds", "").is_some());
}
