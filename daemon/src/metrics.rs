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
//! | `tunl_routes` | gauge | `origin` (`tunl`, `bird`, `static`, a protocol number...) |
//! | `tunl_route_resyncs_total` | counter | |
//! | `tunl_path_mtu_bytes` | gauge | `node` |
//! | `tunl_dataplane_workers` | gauge | |
//! | `tunl_build_info` | info | `version` |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::daemon::{RouteStats, origin_name};
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
    /// The routes in the LPM by origin, and the resyncs (kept by the route
    /// mirror).
    pub routes: Arc<RouteStats>,
    /// Dataplane worker threads.
    pub workers: usize,
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
        let routes = Family::<Labels, Gauge>::default();
        for (protocol, n) in self.routes.by_origin() {
            routes
                .get_or_create(&labels("origin", origin_name(protocol)))
                .set(n as i64);
        }
        r.register(
            "routes",
            "Routes in the dataplane (the kernel's routes on the device), by origin",
            routes,
        );
        r.register(
            "route_resyncs",
            "Full reloads of the routes from a dump after the kernel dropped route changes (ENOBUFS)",
            counter(self.routes.resyncs()),
        );
        let workers = Gauge::<i64>::default();
        workers.set(self.workers as i64);
        r.register("dataplane_workers", "Dataplane worker threads", workers);
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
            multipath: Default::default(),
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
        let routes = Arc::new(RouteStats::default());
        let mut by_origin = [0; 256];
        by_origin[12] = 2;
        by_origin[116] = 1;
        routes.set_counts(3, &by_origin);
        routes.count_resync();
        let m = MetricsSource {
            shared,
            routes,
            workers: 2,
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
        assert_eq!(sample(&text, "tunl_routes", "origin=\"bird\""), Some(2));
        assert_eq!(sample(&text, "tunl_routes", "origin=\"tunl\""), Some(1));
        assert_eq!(sample(&text, "tunl_route_resyncs_total", ""), Some(1));
        assert_eq!(sample(&text, "tunl_dataplane_workers", ""), Some(2));
        assert_eq!(
            sample(&text, "tunl_path_mtu_bytes", "node=\"172.16.36.5\""),
            Some(1380)
        );
        assert!(text.contains("tunl_build_info{version=\""), "{text}");
    }
}
