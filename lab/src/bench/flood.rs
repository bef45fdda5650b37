//! Spoofed packets refused per second on one worker: a tunl daemon with
//! one dataplane worker on `node1.sit` is flooded, from `node2.perf`'s
//! namespace, with IPIP packets from sources that are no node (spoofed
//! outer sources, refused as `unknown_source`), sent as fast as one
//! `sendmmsg` loop can, while the pod of `node2.perf` pings the pod of
//! `node1.sit` through the same worker; the ping's loss during the flood is
//! the figure that matters to the pods.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BenchError, CLIENT_POD, SERVER_POD};
use crate::testbed::{DaemonOptions, TunlCluster, in_netns};
use crate::topology::ClusterSpec;
use tunl::config::Underlay;
use tunl::control::{Client, Request, Stats};

/// The node whose daemon is flooded (where [`CLIENT_POD`] lives).
const FLOODED: &str = "node1.sit";
/// The node the flood comes from (where [`SERVER_POD`] lives).
const FLOODER: &str = "node2.perf";
/// Distinct spoofed outer sources, 172.16.200.1 onwards.
const SPOOFED_SOURCES: u32 = 100;
/// Packets per `sendmmsg` batch of the flooder.
const FLOOD_BATCH: usize = 128;
/// Interval of the pod ping during the flood.
const FLOOD_PING_INTERVAL: Duration = Duration::from_millis(10);
/// How long the counters may take to settle after the flood.
const SETTLE: Duration = Duration::from_millis(500);

/// What the flood measured.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Flood {
    /// How long the flood lasted, seconds.
    pub seconds: f64,
    /// The flooded daemon's dataplane workers (1).
    pub workers: usize,
    /// Packets the flooder's kernel accepted.
    pub sent: u64,
    /// Packets tunl refused (`unknown_source`) from the flood's start until
    /// the counters settled after it.
    pub refused: u64,
    /// Packets tunl refused per second while the flood lasted.
    pub refused_per_second: f64,
    /// Packets sent per second.
    pub sent_per_second: f64,
    /// Packets tunl decapsulated and delivered meanwhile (the ping's).
    pub delivered: u64,
    /// Pod pings sent during the flood.
    pub ping_sent: u32,
    /// Pod ping replies received.
    pub ping_received: u32,
    /// The pod ping's loss, percent.
    pub ping_loss_percent: f64,
}

/// An IPIP packet from `outer_src` to `outer_dst` around a small UDP
/// packet to `inner_dst`: a valid packet from a source that is no node.
fn spoofed(outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner_dst: Ipv4Addr) -> Vec<u8> {
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ipv4([10, 99, 0, 1], inner_dst.octets(), 64)
        .udp(40000, 7300)
        .write(&mut inner, b"spoofed")
        .expect("a UDP packet fits");
    let mut packet = Vec::with_capacity(20 + inner.len());
    etherparse::Ipv4Header::new(
        inner.len() as u16,
        64,
        etherparse::IpNumber::IPV4,
        outer_src.octets(),
        outer_dst.octets(),
    )
    .expect("a small payload")
    .write(&mut packet)
    .expect("writes to a Vec");
    packet.extend_from_slice(&inner);
    packet
}

fn stats(tc: &TunlCluster) -> Result<Stats, BenchError> {
    Client::connect(&tc.control_socket(FLOODED))
        .and_then(|mut c| c.call(&Request::Stats {}))
        .map_err(|e| BenchError::Measurement(format!("flood: stats of {FLOODED}: {e}")))
}

fn counter(s: &Stats, name: &str) -> u64 {
    s.counter(name).unwrap_or(0)
}

/// Floods a one-worker daemon for `seconds` on a fresh seed cluster and
/// measures what it refused and what the pod ping lost meanwhile.
pub(super) fn measure_flood(
    binary: &Path,
    seconds: u32,
    underlay: Underlay,
) -> Result<Flood, BenchError> {
    let topo = |what: &str| BenchError::topology(format!("spoofed flood: {what}"));
    let options = DaemonOptions {
        workers: 1,
        underlay,
        log: "warn".to_owned(),
        ..DaemonOptions::default()
    };
    let tc = TunlCluster::start(ClusterSpec::seed(), binary, options)
        .map_err(topo("starting the cluster"))?;
    let target = tc
        .cluster()
        .node(FLOODED)
        .map(|n| n.underlay)
        .ok_or_else(|| BenchError::Measurement(format!("no node {FLOODED}")))?;
    let pod = tc.pod_ip(CLIENT_POD).map_err(topo("the pod's address"))?;
    let flooder = tc
        .cluster()
        .netns(FLOODER)
        .map(str::to_owned)
        .map_err(topo("the flooder's namespace"))?;
    let packets: Vec<Vec<u8>> = (0..FLOOD_BATCH as u32)
        .map(|i| {
            let src =
                Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 200, 1)) + i % SPOOFED_SOURCES);
            spoofed(src, target, pod)
        })
        .collect();
    let duration = Duration::from_secs(u64::from(seconds.max(1)));
    let pings = (duration.as_millis() / FLOOD_PING_INTERVAL.as_millis()) as u32;
    let before = stats(&tc)?;
    let (flooded, during, ping) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            in_netns(&flooder, || {
                let mut sender = tunl_io::IpipSender::open(8 << 20)
                    .map_err(|e| format!("the flooder's raw socket: {e}"))?;
                let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
                let dsts = vec![target; refs.len()];
                let started = Instant::now();
                let mut sent = 0u64;
                while started.elapsed() < duration {
                    let report = sender
                        .send_batch(&refs, &dsts)
                        .map_err(|e| format!("the flood's sendmmsg: {e}"))?;
                    sent += report.sent as u64;
                }
                Ok::<_, String>((sent, started.elapsed()))
            })
        });
        // The ping starts with the flood and ends with it.
        let ping = s.spawn(|| {
            tc.cluster()
                .ping(SERVER_POD, pod, pings, FLOOD_PING_INTERVAL)
        });
        let flooded = flood.join();
        // The counters at the flood's end, before its tail drains.
        let during = stats(&tc);
        (flooded, during, ping.join())
    });
    let (sent, elapsed) = flooded
        .map_err(|_| BenchError::Measurement("flood: the flooder panicked".into()))?
        .map_err(|e| BenchError::Measurement(format!("flood: entering {flooder}: {e}")))?
        .map_err(|e| BenchError::Measurement(format!("flood: {e}")))?;
    let during = during?;
    let ping = ping
        .map_err(|_| BenchError::Measurement("flood: the ping panicked".into()))?
        .map_err(topo("pinging during the flood"))?;
    std::thread::sleep(SETTLE);
    let after = stats(&tc)?;
    let refused = counter(&after, "unknown_source") - counter(&before, "unknown_source");
    let refused_during = counter(&during, "unknown_source") - counter(&before, "unknown_source");
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(Flood {
        seconds: secs,
        workers: 1,
        sent,
        refused,
        refused_per_second: refused_during as f64 / secs,
        sent_per_second: sent as f64 / secs,
        delivered: counter(&after, "rx_packets") - counter(&before, "rx_packets"),
        ping_sent: ping.transmitted,
        ping_received: ping.received,
        ping_loss_percent: if ping.transmitted == 0 {
            100.0
        } else {
            100.0 * f64::from(ping.transmitted - ping.received.min(ping.transmitted))
                / f64::from(ping.transmitted)
        },
    })
}

/// The flood's line in the text report.
pub fn format_flood(f: &Flood) -> String {
    format!(
        "spoofed IPIP flood on {} worker ({:.1} s): {:.0} refused/s ({:.0} sent/s; {} of {} \
         refused), pod ping meanwhile: {} sent, {} lost ({:.1} %)\n",
        f.workers,
        f.seconds,
        f.refused_per_second,
        f.sent_per_second,
        f.refused,
        f.sent,
        f.ping_sent,
        f.ping_sent - f.ping_received.min(f.ping_sent),
        f.ping_loss_percent
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spoofed_packet_is_valid_ipip_from_its_source() {
        let p = spoofed(
            Ipv4Addr::new(172, 16, 200, 9),
            Ipv4Addr::new(172, 16, 35, 4),
            Ipv4Addr::new(10, 20, 42, 3),
        );
        let (outer, rest) = etherparse::Ipv4Header::from_slice(&p).unwrap();
        assert_eq!(outer.protocol, etherparse::IpNumber::IPV4);
        assert_eq!(outer.source, [172, 16, 200, 9]);
        assert_eq!(usize::from(outer.total_len), p.len());
        let (inner, _) = etherparse::Ipv4Header::from_slice(rest).unwrap();
        assert_eq!(inner.destination, [10, 20, 42, 3]);
    }

    #[test]
    fn the_line_says_rate_and_loss() {
        let f = Flood {
            seconds: 2.0,
            workers: 1,
            sent: 1_000_000,
            refused: 999_000,
            refused_per_second: 499_000.0,
            sent_per_second: 500_000.0,
            delivered: 200,
            ping_sent: 200,
            ping_received: 198,
            ping_loss_percent: 1.0,
        };
        assert_eq!(
            format_flood(&f),
            "spoofed IPIP flood on 1 worker (2.0 s): 499000 refused/s (500000 sent/s; 999000 of \
             1000000 refused), pod ping meanwhile: 200 sent, 2 lost (1.0 %)\n"
        );
    }
}
