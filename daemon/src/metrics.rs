//! The optional Prometheus endpoint (`[metrics] listen`).
//!
//! `GET /metrics` answers in the OpenMetrics text format, encoded by
//! `prometheus-client` from a registry built for each scrape out of the
//! dataplane's counters (a scrape is rare next to packets; the dataplane
//! pays nothing for it). Served by a minimal HTTP/1.1 handler on the
//! control-plane runtime: one request per connection, bounded in size and
//! time.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `tunl_<counter>_total`, one per dataplane counter (`tx_packets`, `rx_bytes`, ...; see [`CounterSnapshot::descriptions`]) | counter | |
//! | `tunl_drops_total` | counter | `reason` |
//! | `tunl_refused_source_packets_total` | counter | `source` (at most 32, then `other`) |
//! | `tunl_node_{rx,tx}_{packets,bytes}_total` | counter | `node` |
//! | `tunl_routes` | gauge | |
//! | `tunl_path_mtu_bytes` | gauge | `node` |
//! | `tunl_dataplane_workers` | gauge | |
//! | `tunl_underlay_info` | info | `underlay` (running), `requested`, `xdp_mode` |
//! | `tunl_xdp_{redirected,no_socket,passed}_frames_total` (the XDP program's counters) | counter | |
//! | `tunl_xsk_<statistic>_total` (each AF_XDP socket's `XDP_STATISTICS`) | counter | `queue` |
//! | `tunl_build_info` | info | `version` |

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tunl_io::xdp::{ProgramStatsReader, XskStatistics, XskStatsReader};

use crate::control::UnderlayStatus;
use crate::dataplane::{CounterSnapshot, Shared};

/// The longest request head read.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

type Labels = Vec<(String, String)>;

/// What the endpoint reads.
#[derive(Debug)]
pub struct MetricsSource {
    /// The dataplane's shared state.
    pub shared: Arc<Shared>,
    /// Current number of routes (kept by the route manager).
    pub routes: Arc<AtomicUsize>,
    /// Dataplane worker threads.
    pub workers: usize,
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

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn labels(key: &str, value: impl ToString) -> Labels {
    vec![(key.to_owned(), value.to_string())]
}

impl MetricsSource {
    /// The metrics text, as served.
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("tunl");
        let c = self.shared.counters();
        for ((name, v), (_, help)) in c.fields().into_iter().zip(CounterSnapshot::descriptions()) {
            r.register(name, help, counter(v));
        }
        let drops = Family::<Labels, Counter>::default();
        for (reason, n) in c.drops_by_reason() {
            drops
                .get_or_create(&labels("reason", reason.as_str()))
                .inc_by(n);
        }
        r.register("drops", "Packets dropped, by reason", drops);

        let refused = self.shared.nodes.refused();
        let by_source = Family::<Labels, Counter>::default();
        for s in &refused.sources {
            by_source
                .get_or_create(&labels("source", s.source))
                .inc_by(s.packets);
        }
        if refused.other_packets > 0 {
            by_source
                .get_or_create(&labels("source", "other"))
                .inc_by(refused.other_packets);
        }
        r.register(
            "refused_source_packets",
            "IPIP packets refused because their source is not a known node, by source",
            by_source,
        );

        let traffic = self.shared.nodes.traffic();
        let policy = self.shared.policy.load();
        let node_counters = [
            ("node_tx_packets", "Inner packets sent to a node"),
            ("node_tx_bytes", "Inner bytes sent to a node"),
            ("node_rx_packets", "Inner packets received from a node"),
            ("node_rx_bytes", "Inner bytes received from a node"),
        ];
        for (i, (name, h)) in node_counters.iter().enumerate() {
            let f = Family::<Labels, Counter>::default();
            for node in &policy.vias {
                let t = traffic.get(node).copied().unwrap_or_default();
                let v = [t.tx_packets, t.tx_bytes, t.rx_packets, t.rx_bytes][i];
                f.get_or_create(&labels("node", node)).inc_by(v);
            }
            r.register(*name, *h, f);
        }
        let pmtu = Family::<Labels, Gauge>::default();
        let now = std::time::Instant::now();
        for node in &policy.vias {
            let mtu = self.shared.pmtu.toward(*node, policy.settings.mtu, now);
            pmtu.get_or_create(&labels("node", node))
                .set(i64::from(mtu));
        }
        r.register(
            "path_mtu_bytes",
            "Tunnel MTU toward each node (lowered by underlay frag-needed)",
            pmtu,
        );
        let routes = Gauge::<i64>::default();
        routes.set(self.routes.load(Ordering::Relaxed) as i64);
        r.register("routes", "Routes (remote blocks)", routes);
        let workers = Gauge::<i64>::default();
        workers.set(self.workers as i64);
        r.register("dataplane_workers", "Dataplane worker threads", workers);
        let mut info = vec![
            ("underlay".to_owned(), self.underlay.running.clone()),
            ("requested".to_owned(), self.underlay.requested.clone()),
        ];
        if let Some(mode) = &self.underlay.xdp_mode {
            info.push(("xdp_mode".to_owned(), mode.clone()));
        }
        r.register("underlay", "The underlay running", Info::new(info));
        if let Some(xdp) = &self.xdp {
            self.register_xdp(&mut r, xdp);
        }
        r.register(
            "build",
            "tunl build information",
            Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        let mut out = String::new();
        if encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

/// One `XDP_STATISTICS` field.
type XskField = fn(&XskStatistics) -> u64;

impl MetricsSource {
    fn register_xdp(&self, r: &mut Registry, xdp: &XdpReaders) {
        if let Ok(p) = xdp.program.read() {
            for (name, help, v) in [
                (
                    "xdp_redirected_frames",
                    "IPIP frames for tunl the XDP program handed to an AF_XDP socket",
                    p.redirected,
                ),
                (
                    "xdp_no_socket_frames",
                    "IPIP frames for tunl on a queue without an AF_XDP socket, passed to the stack",
                    p.no_socket,
                ),
                (
                    "xdp_passed_frames",
                    "Other frames the XDP program passed to the stack",
                    p.passed,
                ),
            ] {
                r.register(name, help, counter(v));
            }
        }
        let families: [(&str, &str, XskField); 6] = [
            (
                "xsk_rx_dropped",
                "Frames an AF_XDP socket dropped (too long, ...)",
                |s| s.rx_dropped,
            ),
            (
                "xsk_rx_ring_full",
                "Frames dropped: the RX ring was full",
                |s| s.rx_ring_full,
            ),
            (
                "xsk_rx_fill_ring_empty",
                "Frames dropped: the fill ring was empty",
                |s| s.rx_fill_ring_empty_descs,
            ),
            (
                "xsk_rx_invalid_descs",
                "Invalid fill ring descriptors",
                |s| s.rx_invalid_descs,
            ),
            ("xsk_tx_invalid_descs", "Invalid TX ring descriptors", |s| {
                s.tx_invalid_descs
            }),
            (
                "xsk_tx_ring_empty",
                "TX kicks that found the ring empty",
                |s| s.tx_ring_empty_descs,
            ),
        ];
        let stats: Vec<(u32, XskStatistics)> = xdp
            .sockets
            .iter()
            .filter_map(|s| Some((s.queue(), s.read().ok()?)))
            .collect();
        for (name, help, get) in families {
            let f = Family::<Labels, Counter>::default();
            for (queue, s) in &stats {
                f.get_or_create(&labels("queue", queue)).inc_by(get(s));
            }
            r.register(name, help, f);
        }
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until the runtime stops.
pub async fn serve(listener: TcpListener, source: Arc<MetricsSource>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_one(stream, source.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return None;
        }
    }
    Some(head)
}

async fn serve_one(mut stream: TcpStream, source: Arc<MetricsSource>) {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .ok()
        .flatten();
    let (status, ctype, body) = match head {
        None => ("400 Bad Request", "text/plain", "bad request\n".to_owned()),
        Some(h) => {
            let line = h.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("GET"), Some(path))
                    if path == "/metrics" || path.starts_with("/metrics?") =>
                {
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        source.render(),
                    )
                }
                (Some("GET"), _) => (
                    "404 Not Found",
                    "text/plain",
                    "tunl serves /metrics only\n".to_owned(),
                ),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_owned(),
                ),
            }
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The value of a sample in metrics text: `name{labels} value` (labels as
/// written, e.g. `reason="no_route"`, or empty).
pub fn sample(text: &str, name: &str, labels: &str) -> Option<u64> {
    let key = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse::<f64>().ok().map(|f| f as u64))?
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tunl_encap::{DropReason, TunnelSettings};

    use super::*;
    use crate::dataplane::Policy;
    use crate::dataplane::counters::LocalCounters;

    #[test]
    fn renders_prometheus_names() {
        let mut policy = Policy {
            settings: TunnelSettings::new(Ipv4Addr::new(172, 16, 35, 4)),
            vias: vec![],
            allow: vec![],
            blocks: vec![],
            allow_nested: false,
        };
        let node = Ipv4Addr::new(172, 16, 36, 5);
        policy.set_vias([node]);
        let shared = Arc::new(Shared::new(policy));
        let c = shared.register_counters();
        let mut local = LocalCounters {
            tx_packets: 7,
            tx_bytes: 700,
            ..Default::default()
        };
        local.drop(DropReason::UnknownSource);
        c.flush(&mut local);
        shared.pmtu.learn(node, 1380, std::time::Instant::now());
        let m = MetricsSource {
            shared,
            routes: Arc::new(AtomicUsize::new(3)),
            workers: 2,
            underlay: UnderlayStatus {
                requested: "xdp".to_owned(),
                running: "xdp".to_owned(),
                xdp_mode: Some("generic".to_owned()),
                ..UnderlayStatus::default()
            },
            xdp: None,
        };
        let text = m.render();
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
        assert_eq!(sample(&text, "tunl_routes", ""), Some(3));
        assert_eq!(sample(&text, "tunl_dataplane_workers", ""), Some(2));
        assert_eq!(
            sample(&text, "tunl_path_mtu_bytes", "node=\"172.16.36.5\""),
            Some(1380)
        );
        assert!(text.contains("tunl_build_info{version=\""), "{text}");
        assert!(
            text.contains(
                "tunl_underlay_info{underlay=\"xdp\",requested=\"xdp\",xdp_mode=\"generic\"} 1"
            ),
            "{text}"
        );
    }
}
