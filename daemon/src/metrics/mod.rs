//! The optional Prometheus endpoint (`[metrics] listen`).
//!
//! `GET /metrics` answers in the Prometheus text format 0.0.4, or in
//! OpenMetrics 1.0 to a client whose `Accept` asks for
//! `application/openmetrics-text` (Prometheus does; see
//! [`Format::negotiate`]). Both are encoded from one list of
//! [`exposition::Family`] built for each scrape out of the dataplane's
//! counters and the daemon's state (a scrape is rare next to packets; the
//! dataplane pays nothing for it), so a metric's name and help text are
//! written once, in [`MetricsSource::families`]. Served by a minimal
//! HTTP/1.1 handler on the control-plane runtime: one request per
//! connection, bounded in size and time.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `tunl_<counter>_total`, one per dataplane counter (`tx_packets`, `rx_bytes`, ...; see [`CounterSnapshot::descriptions`]) | counter | |
//! | `tunl_drops_total` | counter | `reason` |
//! | `tunl_refused_source_packets_total` | counter | `source` (at most 32, then `other`) |
//! | `tunl_node_{rx,tx}_{packets,bytes}_total` | counter | `node` |
//! | `tunl_node_last_seen_timestamp_seconds` (last packet received from the node; absent until one is) | gauge | `node` |
//! | `tunl_path_mtu_bytes` | gauge | `node` |
//! | `tunl_routes` (the routes in the dataplane: the kernel's on the device) | gauge | `origin` (`tunl`, `bird`, `static`, a protocol number...) |
//! | `tunl_route_resyncs_total` (full reloads after the kernel dropped route notifications) | counter | |
//! | `tunl_route_apply_duration_seconds` (route changes that reached the kernel, failed ones included) | histogram | |
//! | `tunl_route_apply_failures_total` (route changes that failed and left the routes as they were) | counter | |
//! | `tunl_dataplane_workers` | gauge | |
//! | `tunl_local_address_present` (0 while `tunnel.local` is not an address of the node) | gauge | |
//! | `tunl_underlay_up` (0 while the underlay device is down or gone) | gauge | `device` |
//! | `tunl_device_info` | info | `device`, `local`, `mtu` |
//! | `tunl_underlay_info` | info | `underlay` (running), `requested`, `xdp_mode` |
//! | `tunl_xdp_{redirected,no_socket,passed}_frames_total` (the XDP program's counters) | counter | |
//! | `tunl_xsk_<statistic>_total` (each AF_XDP socket's `XDP_STATISTICS`) | counter | `queue` |
//! | `tunl_build_info` | info | `version` |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_start_time_seconds`, `process_open_fds`, `process_max_fds` | counter, gauges | |

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tunl_io::xdp::{ProgramStatsReader, XskStatistics, XskStatsReader};

use crate::control::UnderlayStatus;
use crate::daemon::{RouteStats, origin_name};
use crate::dataplane::{CounterSnapshot, Shared};

pub mod exposition;
mod http;
mod process;

pub use exposition::Format;
use exposition::{Family, Histogram, Kind, Value};
pub use http::serve;
pub use process::ProcessStats;

/// The upper bounds, in seconds, of the route-apply duration buckets: one
/// route is a netlink round trip of well under a millisecond, a whole
/// route set of thousands takes seconds.
pub const ROUTE_APPLY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How route changes went: filled by the
/// [`RouteManager`](crate::daemon::RouteManager), read at each scrape.
#[derive(Debug, Default)]
pub struct RouteApplyMetrics {
    tally: Mutex<ApplyTally>,
}

#[derive(Debug, Default, Clone)]
struct ApplyTally {
    /// Observations per bucket (not cumulative), one more for `+Inf`.
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
    failures: u64,
}

impl RouteApplyMetrics {
    /// Records one route change that reached the kernel (or the check for
    /// another instance's routes before it): how long it took and whether
    /// it went through.
    pub fn record(&self, took: Duration, ok: bool) {
        let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        if t.buckets.is_empty() {
            t.buckets = vec![0; ROUTE_APPLY_BUCKETS.len() + 1];
        }
        let secs = took.as_secs_f64();
        let i = ROUTE_APPLY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(ROUTE_APPLY_BUCKETS.len());
        t.buckets[i] += 1;
        t.count += 1;
        t.sum += secs;
        if !ok {
            t.failures += 1;
        }
    }

    /// Route changes refused so far.
    pub fn failures(&self) -> u64 {
        self.tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures
    }

    /// The durations as a cumulative histogram.
    pub fn histogram(&self) -> Histogram {
        let t = self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut cumulative = Vec::with_capacity(ROUTE_APPLY_BUCKETS.len());
        let mut below = 0;
        for i in 0..ROUTE_APPLY_BUCKETS.len() {
            below += t.buckets.get(i).copied().unwrap_or(0);
            cumulative.push(below);
        }
        Histogram {
            bounds: ROUTE_APPLY_BUCKETS,
            cumulative,
            count: t.count,
            sum: t.sum,
        }
    }
}

/// The TUN device, for `tunl_device_info`.
#[derive(Debug, Clone)]
pub struct DeviceLabels {
    /// The device's name (`tunnel.name`).
    pub name: String,
    /// The underlay address IPIP is sent from (`tunnel.local`).
    pub local: Ipv4Addr,
    /// The device's MTU.
    pub mtu: u16,
}

/// What the endpoint reads.
#[derive(Debug)]
pub struct MetricsSource {
    /// The dataplane's shared state.
    pub shared: Arc<Shared>,
    /// The routes in the LPM by origin, and the resyncs (kept by the route
    /// mirror).
    pub routes: Arc<RouteStats>,
    /// How route changes went (kept by the route manager).
    pub route_apply: Arc<RouteApplyMetrics>,
    /// Dataplane worker threads.
    pub workers: usize,
    /// The TUN device.
    pub device: DeviceLabels,
    /// The underlay running.
    pub underlay: UnderlayStatus,
    /// The XDP underlay's counters, when it runs.
    pub xdp: Option<XdpReaders>,
}

/// Readers of the XDP underlay's counters (the program's and each
/// socket's); reading them needs no capability.
#[derive(Debug, Clone)]
pub struct XdpReaders {
    /// The program's counters.
    pub program: ProgramStatsReader,
    /// Each AF_XDP socket's statistics.
    pub sockets: Vec<XskStatsReader>,
}

/// One `XDP_STATISTICS` field.
type XskField = fn(&XskStatistics) -> u64;

/// The AF_XDP sockets' statistics as metrics: name, help, field.
const XSK_FAMILIES: [(&str, &str, XskField); 6] = [
    (
        "tunl_xsk_rx_dropped",
        "Frames an AF_XDP socket dropped (too long for a chunk, ...)",
        |s| s.rx_dropped,
    ),
    (
        "tunl_xsk_rx_ring_full",
        "Frames an AF_XDP socket dropped because its RX ring was full",
        |s| s.rx_ring_full,
    ),
    (
        "tunl_xsk_rx_fill_ring_empty",
        "Frames an AF_XDP socket dropped because its fill ring was empty",
        |s| s.rx_fill_ring_empty_descs,
    ),
    (
        "tunl_xsk_rx_invalid_descs",
        "Invalid descriptors on an AF_XDP socket's fill ring",
        |s| s.rx_invalid_descs,
    ),
    (
        "tunl_xsk_tx_invalid_descs",
        "Invalid descriptors on an AF_XDP socket's TX ring",
        |s| s.tx_invalid_descs,
    ),
    (
        "tunl_xsk_tx_ring_empty",
        "Transmit kicks that found an AF_XDP socket's TX ring empty",
        |s| s.tx_ring_empty_descs,
    ),
];

impl XdpReaders {
    /// The program's counters and the sockets' statistics, read now.
    fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        if let Ok(p) = self.program.read() {
            for (name, help, v) in [
                (
                    "tunl_xdp_redirected_frames",
                    "IPIP frames for tunl the XDP program handed to an AF_XDP socket",
                    p.redirected,
                ),
                (
                    "tunl_xdp_no_socket_frames",
                    "IPIP frames for tunl on an RX queue without an AF_XDP socket, passed to the stack",
                    p.no_socket,
                ),
                (
                    "tunl_xdp_passed_frames",
                    "Other frames the XDP program passed to the stack",
                    p.passed,
                ),
            ] {
                out.push(Family::new(name, Kind::Counter, help).with(vec![], Value::Int(v)));
            }
        }
        let stats: Vec<(u32, XskStatistics)> = self
            .sockets
            .iter()
            .filter_map(|s| Some((s.queue(), s.read().ok()?)))
            .collect();
        for (name, help, get) in XSK_FAMILIES {
            let mut f = Family::new(name, Kind::Counter, help);
            for (queue, s) in &stats {
                f.push(labels("queue", queue), Value::Int(get(s)));
            }
            out.push(f);
        }
        out
    }
}

fn labels(key: &'static str, value: impl ToString) -> Vec<(&'static str, String)> {
    vec![(key, value.to_string())]
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl MetricsSource {
    /// Every metric family, read now: the one list both formats encode.
    pub fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        let c = self.shared.counters();
        for ((name, v), (_, help)) in c.fields().into_iter().zip(CounterSnapshot::descriptions()) {
            out.push(
                Family::new(format!("tunl_{name}"), Kind::Counter, &help)
                    .with(vec![], Value::Int(v)),
            );
        }
        let mut drops = Family::new("tunl_drops", Kind::Counter, "Packets dropped, by reason");
        for (reason, n) in c.drops_by_reason() {
            drops.push(labels("reason", reason.as_str()), Value::Int(n));
        }
        out.push(drops);

        let refused = self.shared.nodes.refused();
        let mut by_source = Family::new(
            "tunl_refused_source_packets",
            Kind::Counter,
            "IPIP packets refused because their source is not a known node, by source",
        );
        for s in &refused.sources {
            by_source.push(labels("source", s.source), Value::Int(s.packets));
        }
        if refused.other_packets > 0 {
            by_source.push(labels("source", "other"), Value::Int(refused.other_packets));
        }
        out.push(by_source);

        let traffic = self.shared.nodes.traffic();
        let policy = self.shared.policy.load();
        let node_counters = [
            ("tunl_node_tx_packets", "Inner packets sent to a node"),
            ("tunl_node_tx_bytes", "Inner bytes sent to a node"),
            ("tunl_node_rx_packets", "Inner packets received from a node"),
            ("tunl_node_rx_bytes", "Inner bytes received from a node"),
        ];
        for (i, (name, help)) in node_counters.iter().enumerate() {
            let mut f = Family::new(*name, Kind::Counter, help);
            for node in &policy.vias {
                let t = traffic.get(node).copied().unwrap_or_default();
                let v = [t.tx_packets, t.tx_bytes, t.rx_packets, t.rx_bytes][i];
                f.push(labels("node", node), Value::Int(v));
            }
            out.push(f);
        }
        let mut last_seen = Family::new(
            "tunl_node_last_seen_timestamp_seconds",
            Kind::Gauge,
            "When a packet was last received from a node, in seconds since the Unix epoch \
             (no sample until one is)",
        );
        for node in &policy.vias {
            if let Some(seen) = traffic.get(node).and_then(|t| t.last_rx) {
                last_seen.push(labels("node", node), Value::Float(unix_seconds(seen)));
            }
        }
        out.push(last_seen);
        let mut pmtu = Family::new(
            "tunl_path_mtu_bytes",
            Kind::Gauge,
            "Tunnel MTU toward each node (lowered by underlay frag-needed)",
        );
        for node in &policy.vias {
            let mtu =
                self.shared
                    .pmtu
                    .toward(*node, policy.settings.mtu, std::time::Instant::now());
            pmtu.push(labels("node", node), Value::Int(u64::from(mtu)));
        }
        out.push(pmtu);

        let mut routes = Family::new(
            "tunl_routes",
            Kind::Gauge,
            "Routes in the dataplane (the kernel's routes on the device), by origin",
        );
        for (protocol, n) in self.routes.by_origin() {
            routes.push(
                labels("origin", origin_name(protocol)),
                Value::Int(n as u64),
            );
        }
        out.push(routes);
        out.push(
            Family::new(
                "tunl_route_resyncs",
                Kind::Counter,
                "Full reloads of the routes from a dump after the kernel dropped route \
                 notifications (ENOBUFS)",
            )
            .with(vec![], Value::Int(self.routes.resyncs())),
        );
        out.push(
            Family::new(
                "tunl_route_apply_duration_seconds",
                Kind::Histogram,
                "How long route changes took to apply (kernel and LPM), failed ones included",
            )
            .with(vec![], Value::Histogram(self.route_apply.histogram())),
        );
        out.push(
            Family::new(
                "tunl_route_apply_failures",
                Kind::Counter,
                "Route changes that failed (the kernel refused one, or another tunl instance \
                 routes a prefix) and left the routes as they were",
            )
            .with(vec![], Value::Int(self.route_apply.failures())),
        );
        out.push(
            Family::new(
                "tunl_dataplane_workers",
                Kind::Gauge,
                "Dataplane worker threads",
            )
            .with(vec![], Value::Int(self.workers as u64)),
        );
        out.push(
            Family::new(
                "tunl_device",
                Kind::Info,
                "The TUN device standing in for tunl0: its name, underlay address and MTU",
            )
            .with(
                vec![
                    ("device", self.device.name.clone()),
                    ("local", self.device.local.to_string()),
                    ("mtu", self.device.mtu.to_string()),
                ],
                Value::Int(1),
            ),
        );
        let mut underlay = vec![
            ("underlay", self.underlay.running.clone()),
            ("requested", self.underlay.requested.clone()),
        ];
        if let Some(mode) = &self.underlay.xdp_mode {
            underlay.push(("xdp_mode", mode.clone()));
        }
        out.push(
            Family::new(
                "tunl_underlay",
                Kind::Info,
                "The underlay running (raw, packet or xdp), the one asked for, and the XDP mode",
            )
            .with(underlay, Value::Int(1)),
        );
        if let Some(xdp) = &self.xdp {
            out.extend(xdp.families());
        }
        let underlay = self.shared.links.report();
        out.push(
            Family::new(
                "tunl_local_address_present",
                Kind::Gauge,
                "1 while tunnel.local is an address of this node, 0 while it is not \
                 (nothing is sent then: no_local_address)",
            )
            .with(vec![], Value::Int(u64::from(underlay.local_present))),
        );
        out.push(
            Family::new(
                "tunl_underlay_up",
                Kind::Gauge,
                "1 while the underlay device (the one holding tunnel.local, or that last \
                 did) is up with carrier, 0 while it is down or gone",
            )
            .with(
                labels("device", underlay.device.as_deref().unwrap_or("none")),
                Value::Int(u64::from(
                    underlay.state == crate::dataplane::DeviceState::Up,
                )),
            ),
        );
        out.push(
            Family::new("tunl_build", Kind::Info, "tunl build information")
                .with(labels("version", env!("CARGO_PKG_VERSION")), Value::Int(1)),
        );
        out.extend(ProcessStats::read().families());
        out
    }

    /// The metrics text in `format`, as served.
    pub fn render(&self, format: Format) -> String {
        exposition::encode(&self.families(), format)
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The value of a sample in metrics text: `name{labels} value` (labels as
/// written, e.g. `reason="no_route"`, or empty).
pub fn sample(text: &str, name: &str, labels: &str) -> Option<u64> {
    sample_f64(text, name, labels).map(|f| f as u64)
}

/// [`sample`] as a real number.
pub fn sample_f64(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse::<f64>().ok())?
    })
}

#[cfg(test)]
mod tests;
