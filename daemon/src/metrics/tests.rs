//! The endpoint's text, checked by Prometheus's own tools: `promtool check
//! metrics` for the text format 0.0.4, the Python client's OpenMetrics
//! parser for OpenMetrics (promtool reads only 0.0.4), the same samples in
//! both; and the Grafana dashboard against what is served.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tunl_encap::{DropReason, TunnelSettings};

use super::*;
use crate::dataplane::Policy;
use crate::dataplane::counters::LocalCounters;
use crate::dataplane::nodes::LocalNodeCounters;

const NODE: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 5);
const QUIET_NODE: Ipv4Addr = Ipv4Addr::new(172, 16, 37, 6);

/// A source with traffic from one node (and none from another), a refused
/// source, a learned path MTU and route changes, one of them failed: every
/// family has samples.
pub(super) fn source() -> MetricsSource {
    let mut policy = Policy {
        settings: TunnelSettings::new(Ipv4Addr::new(172, 16, 35, 4)),
        vias: vec![],
        allow: vec![],
        blocks: vec![],
        allow_nested: false,
        multipath: Default::default(),
        strict_source: false,
    };
    policy.set_vias([NODE, QUIET_NODE]);
    let vias = policy.vias.clone();
    let shared = Arc::new(Shared::new(policy));
    let c = shared.register_counters();
    let mut local = LocalCounters {
        tx_packets: 7,
        tx_bytes: 700,
        ..Default::default()
    };
    local.drop(DropReason::UnknownSource);
    c.flush(&mut local);
    let mut nodes = LocalNodeCounters::default();
    nodes.rx(&vias, NODE, 84);
    nodes.tx(&vias, QUIET_NODE, 84);
    nodes.refused(Ipv4Addr::new(192, 0, 2, 9));
    nodes.flush(&vias, &shared.nodes);
    shared.pmtu.learn(NODE, 1380, std::time::Instant::now());
    let route_apply = Arc::new(RouteApplyMetrics::default());
    route_apply.record(Duration::from_micros(300), true);
    route_apply.record(Duration::from_millis(30), false);
    let routes = Arc::new(RouteStats::default());
    let mut by_origin = [0; 256];
    by_origin[12] = 2;
    by_origin[116] = 1;
    routes.set_counts(3, &by_origin);
    routes.count_resync();
    MetricsSource {
        shared,
        routes,
        route_apply,
        workers: 2,
        device: DeviceLabels {
            name: "tunl0".to_owned(),
            local: Ipv4Addr::new(172, 16, 35, 4),
            mtu: 1480,
        },
        underlay: crate::control::UnderlayStatus {
            requested: "xdp".to_owned(),
            running: "xdp".to_owned(),
            xdp_mode: Some("generic".to_owned()),
            ..crate::control::UnderlayStatus::default()
        },
        xdp: None,
    }
}

#[test]
fn renders_prometheus_names() {
    let m = source();
    for format in [Format::Text004, Format::OpenMetrics] {
        let text = m.render(format);
        assert_eq!(
            sample(&text, "tunl_tx_packets_total", ""),
            Some(7),
            "{text}"
        );
        assert_eq!(sample(&text, "tunl_tx_bytes_total", ""), Some(700));
        assert_eq!(
            sample(&text, "tunl_drops_total", "reason=\"unknown_source\""),
            Some(1)
        );
        assert_eq!(
            sample(&text, "tunl_drops_total", "reason=\"no_route\""),
            Some(0)
        );
        assert_eq!(
            sample(
                &text,
                "tunl_refused_source_packets_total",
                "source=\"192.0.2.9\""
            ),
            Some(1)
        );
        assert_eq!(sample(&text, "tunl_routes", "origin=\"bird\""), Some(2));
        assert_eq!(sample(&text, "tunl_routes", "origin=\"tunl\""), Some(1));
        assert_eq!(sample(&text, "tunl_route_resyncs_total", ""), Some(1));
        assert_eq!(sample(&text, "tunl_dataplane_workers", ""), Some(2));
        // Until the link watcher looks: present, no device known.
        assert_eq!(sample(&text, "tunl_local_address_present", ""), Some(1));
        assert_eq!(
            sample(&text, "tunl_underlay_up", "device=\"none\""),
            Some(0)
        );
        assert_eq!(
            sample(&text, "tunl_path_mtu_bytes", "node=\"172.16.36.5\""),
            Some(1380)
        );
        assert_eq!(
            sample(&text, "tunl_path_mtu_bytes", "node=\"172.16.37.6\""),
            Some(1480)
        );
        assert_eq!(
            sample(
                &text,
                "tunl_underlay_info",
                "underlay=\"xdp\",requested=\"xdp\",xdp_mode=\"generic\""
            ),
            Some(1),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "tunl_device_info",
                "device=\"tunl0\",local=\"172.16.35.4\",mtu=\"1480\""
            ),
            Some(1)
        );
        assert!(text.contains("tunl_build_info{version=\""), "{text}");
        // Route changes: one under 0.5 ms, one at 30 ms that failed.
        let bucket = |le: &str| {
            sample(
                &text,
                "tunl_route_apply_duration_seconds_bucket",
                &format!("le=\"{le}\""),
            )
        };
        assert_eq!(bucket("0.0005"), Some(1));
        assert_eq!(bucket("0.025"), Some(1));
        assert_eq!(bucket("0.05"), Some(2));
        assert_eq!(bucket("+Inf"), Some(2));
        assert_eq!(
            sample(&text, "tunl_route_apply_duration_seconds_count", ""),
            Some(2)
        );
        let sum = sample_f64(&text, "tunl_route_apply_duration_seconds_sum", "").unwrap();
        assert!((sum - 0.0303).abs() < 1e-9, "{sum}");
        assert_eq!(
            sample(&text, "tunl_route_apply_failures_total", ""),
            Some(1)
        );
        // Last seen: only the node something was received from.
        let seen = sample_f64(
            &text,
            "tunl_node_last_seen_timestamp_seconds",
            "node=\"172.16.36.5\"",
        )
        .unwrap();
        let now = unix_seconds(SystemTime::now());
        assert!(seen <= now && seen > now - 60.0, "{seen} vs {now}");
        assert_eq!(
            sample(
                &text,
                "tunl_node_last_seen_timestamp_seconds",
                "node=\"172.16.37.6\""
            ),
            None,
            "only sent to, never heard from"
        );
        // The process_* family, from /proc/self.
        assert!(sample(&text, "process_resident_memory_bytes", "").unwrap() > 0);
        assert!(sample_f64(&text, "process_cpu_seconds_total", "").is_some());
        assert!(sample(&text, "process_open_fds", "").unwrap() > 0);
        assert!(sample(&text, "process_max_fds", "").is_some());
        assert!(sample(&text, "process_virtual_memory_bytes", "").is_some());
        assert!(sample_f64(&text, "process_start_time_seconds", "").unwrap() <= now);
        assert!(
            !text.contains(".."),
            "help texts end in one period:\n{text}"
        );
    }
}

/// Runs `program args` with `input` on stdin; a missing program fails the
/// test with what installs it.
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
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `promtool check metrics` on text 0.0.4: it must exit 0 and print nothing
/// (it exits 0 after lint findings of some kinds but prints them).
pub fn assert_promtool_accepts(text: &str) {
    let o = run_with_stdin("promtool", &["check", "metrics"], text);
    assert!(
        o.status.success() && text_of(&o).trim().is_empty(),
        "promtool check metrics: {}\n{}\n--- the text:\n{text}",
        o.status,
        text_of(&o)
    );
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The samples of `text` as `scripts/metrics-samples FORMAT` reads them (it
/// fails on text its parser refuses, or on a family without type or help).
pub fn parsed_samples(text: &str, format: Format) -> Vec<String> {
    let script = workspace().join("scripts/metrics-samples");
    let arg = match format {
        Format::Text004 => "text",
        Format::OpenMetrics => "openmetrics",
    };
    // Debian's python3, which python3-prometheus-client installs into.
    let o = run_with_stdin("/usr/bin/python3", &[script.to_str().unwrap(), arg], text);
    assert!(
        o.status.success(),
        "metrics-samples {arg}: {}\n--- the text:\n{text}",
        text_of(&o)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs promtool and python3-prometheus-client from scripts/setup.sh: scripts/test"]
fn promtool_accepts_the_text_format() {
    let m = source();
    assert_promtool_accepts(&m.render(Format::Text004));
    // Also with no nodes, no refused source and no route change yet.
    let empty = MetricsSource {
        shared: Arc::new(Shared::new(Policy {
            settings: TunnelSettings::new(Ipv4Addr::new(172, 16, 35, 4)),
            vias: vec![],
            allow: vec![],
            blocks: vec![],
            allow_nested: false,
            multipath: Default::default(),
            strict_source: false,
        })),
        routes: Arc::default(),
        route_apply: Arc::default(),
        workers: 1,
        device: m.device.clone(),
        underlay: m.underlay.clone(),
        xdp: None,
    };
    assert_promtool_accepts(&empty.render(Format::Text004));
}

#[test]
#[ignore = "needs promtool and python3-prometheus-client from scripts/setup.sh: scripts/test"]
fn promtool_refuses_what_the_issue_reported() {
    // The check can fail: the OpenMetrics text (an `info` type, counters
    // named without `_total`) is what promtool rejected before.
    let o = run_with_stdin(
        "promtool",
        &["check", "metrics"],
        &source().render(Format::OpenMetrics),
    );
    assert!(
        !o.status.success() || !text_of(&o).trim().is_empty(),
        "{}",
        text_of(&o)
    );
}

#[test]
#[ignore = "needs promtool and python3-prometheus-client from scripts/setup.sh: scripts/test"]
fn openmetrics_parses_and_carries_the_same_samples_as_text() {
    let m = source();
    let families = m.families();
    let openmetrics = parsed_samples(
        &exposition::encode(&families, Format::OpenMetrics),
        Format::OpenMetrics,
    );
    let text = parsed_samples(
        &exposition::encode(&families, Format::Text004),
        Format::Text004,
    );
    assert_eq!(openmetrics, text);
    let served: usize = families
        .iter()
        .map(|f| match f.kind {
            // Each bound, +Inf, _sum and _count.
            Kind::Histogram => f.samples.len() * (ROUTE_APPLY_BUCKETS.len() + 3),
            _ => f.samples.len(),
        })
        .sum();
    assert_eq!(openmetrics.len(), served, "{openmetrics:#?}");
}

/// Every `tunl_...` and `process_...` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !ident(bytes[j]))
                .unwrap_or(bytes.len());
            let word = &expr[i..end];
            // A label value ("tunl0") is quoted, a label name is followed
            // by a matcher; neither is a metric.
            let quoted = i > 0 && bytes[i - 1] == b'"';
            if !quoted && (word.starts_with("tunl_") || word.starts_with("process_")) {
                names.push(word.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL expression of a Grafana dashboard: panel targets' `expr`
/// and template variables' `query`/`definition`.
fn expressions(v: &serde_json::Value, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if matches!(key, Some("expr" | "query" | "definition")) => {
            out.push(s.clone());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| expressions(x, key, out)),
        serde_json::Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| expressions(x, Some(k.as_str()), out)),
        _ => {}
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(tunl_route_apply_duration_seconds_bucket\
             {instance=~\"$instance\",device=\"tunl_x\"}[5m])))/process_max_fds"
        ),
        [
            "tunl_route_apply_duration_seconds_bucket",
            "process_max_fds"
        ]
    );
    assert_eq!(
        metric_names("label_values(tunl_build_info, instance)"),
        ["tunl_build_info"]
    );
}

#[test]
#[ignore = "needs promtool and python3-prometheus-client from scripts/setup.sh: scripts/test"]
fn the_grafana_dashboard_uses_only_metrics_the_daemon_serves() {
    let path = workspace().join("examples/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, None, &mut exprs);
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let served: BTreeSet<String> = source()
        .families()
        .iter()
        .flat_map(|f| f.sample_names())
        .collect();
    let unknown: Vec<&String> = used.difference(&served).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics tunl does not serve: {unknown:?}"
    );
    // Every panel query is PromQL that Prometheus parses (`promtool check
    // rules` on each as a recording rule), with Grafana's variables filled.
    let panel_exprs: Vec<String> = exprs
        .iter()
        .filter(|e| e.contains('(') && !e.starts_with("label_values("))
        .map(|e| {
            e.replace("$__rate_interval", "5m")
                .replace("$__range", "1h")
                .replace("$instance", ".+")
        })
        .collect();
    assert!(panel_exprs.len() > 20, "{panel_exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in panel_exprs.iter().enumerate() {
        let quoted = serde_json::to_string(e).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard_expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("tunl-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let o = run_with_stdin("promtool", &["check", "rules", file.to_str().unwrap()], "");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(o.status.success(), "{}\n{rules}", text_of(&o));
    // The panels the dashboard is for.
    for needed in [
        "tunl_tx_bytes_total",
        "tunl_rx_bytes_total",
        "tunl_drops_total",
        "tunl_refused_source_packets_total",
        "tunl_node_last_seen_timestamp_seconds",
        "tunl_path_mtu_bytes",
        "tunl_route_apply_duration_seconds_bucket",
        "tunl_route_apply_failures_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}
