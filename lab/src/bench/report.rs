//! What a `tunl bench` run reports: the paths and figures, each figure's
//! summary per path with the tunl / vxlan ratio, the settings and the
//! machine; serialised as is for `--json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::LargeTable;
use super::stats::Summary;
use super::table::format_number;

/// One way between the two pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Datapath {
    /// Plain veth, no tunnel.
    Direct,
    /// Kernel VXLAN.
    Vxlan,
    /// tunl daemons.
    Tunl,
}

impl Datapath {
    /// The three paths in measuring and table order.
    pub const ALL: [Datapath; 3] = [Datapath::Direct, Datapath::Vxlan, Datapath::Tunl];

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Datapath::Direct => "direct",
            Datapath::Vxlan => "vxlan",
            Datapath::Tunl => "tunl",
        }
    }
}

/// A reported figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// iperf3 TCP, 1 stream.
    TcpOneStream,
    /// iperf3 TCP, 4 streams.
    TcpFourStreams,
    /// TCP retransmits of the 1-stream run.
    TcpRetransmits,
    /// UDP packets received per second, 64-byte payloads.
    Udp64,
    /// UDP packets received per second, 1400-byte payloads.
    Udp1400,
    /// Median ping round trip.
    LatencyMedian,
    /// 99th percentile ping round trip.
    LatencyP99,
    /// Whole-machine CPU per Gbit/s during the 1-stream TCP run.
    CpuMachine,
    /// tunl daemons' CPU per Gbit/s during the 1-stream TCP run.
    CpuTunl,
    /// Peak RSS of a tunl daemon (the larger of the two).
    PeakRss,
    /// Outer frames per second the sending tunl daemon put on the
    /// underlay during the 1-stream TCP run (its `tx_packets` counter),
    /// to set beside the underlay-ceiling instrument's figure for the same
    /// interface.
    UnderlayFrames,
}

impl Metric {
    /// Every figure, in table order.
    pub const ALL: [Metric; 11] = [
        Metric::TcpOneStream,
        Metric::TcpFourStreams,
        Metric::TcpRetransmits,
        Metric::Udp64,
        Metric::Udp1400,
        Metric::LatencyMedian,
        Metric::LatencyP99,
        Metric::CpuMachine,
        Metric::CpuTunl,
        Metric::PeakRss,
        Metric::UnderlayFrames,
    ];

    /// The figures drawn by [`svg_chart`](super::svg_chart).
    pub const CHART: [Metric; 7] = [
        Metric::TcpOneStream,
        Metric::TcpFourStreams,
        Metric::Udp64,
        Metric::Udp1400,
        Metric::LatencyMedian,
        Metric::LatencyP99,
        Metric::CpuMachine,
    ];

    /// What it is, for people.
    pub fn label(self) -> &'static str {
        match self {
            Metric::TcpOneStream => "TCP, 1 stream",
            Metric::TcpFourStreams => "TCP, 4 streams",
            Metric::TcpRetransmits => "TCP 1 stream retransmits",
            Metric::Udp64 => "UDP 64 B, received",
            Metric::Udp1400 => "UDP 1400 B, received",
            Metric::LatencyMedian => "ping RTT median",
            Metric::LatencyP99 => "ping RTT p99",
            Metric::CpuMachine => "CPU, machine (TCP 1)",
            Metric::CpuTunl => "CPU, tunl daemons (TCP 1)",
            Metric::PeakRss => "tunl daemon peak RSS",
            Metric::UnderlayFrames => "tunl underlay frames sent (TCP 1)",
        }
    }

    /// Its unit.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::TcpOneStream | Metric::TcpFourStreams => "Gbit/s",
            Metric::TcpRetransmits => "segments",
            Metric::Udp64 | Metric::Udp1400 => "kpackets/s",
            Metric::LatencyMedian | Metric::LatencyP99 => "µs",
            Metric::CpuMachine | Metric::CpuTunl => "%CPU per Gbit/s",
            Metric::PeakRss => "MiB",
            Metric::UnderlayFrames => "kframes/s",
        }
    }

    /// A value of this figure for people: counts as integers, the rest
    /// with [`format_number`].
    pub fn format(self, v: f64) -> String {
        match self {
            Metric::TcpRetransmits if v.is_finite() => format!("{v:.0}"),
            _ => format_number(v),
        }
    }

    /// Whether more is better.
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::TcpOneStream
                | Metric::TcpFourStreams
                | Metric::Udp64
                | Metric::Udp1400
                | Metric::UnderlayFrames
        )
    }
}

/// One figure over the three paths.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// Which figure.
    pub metric: Metric,
    /// What it is, for people.
    pub label: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// Whether more is better.
    pub higher_is_better: bool,
    /// Plain veth (absent for tunl-only figures).
    pub direct: Option<Summary>,
    /// Kernel VXLAN (absent for tunl-only figures).
    pub vxlan: Option<Summary>,
    /// tunl.
    pub tunl: Option<Summary>,
    /// tunl's median over vxlan's.
    pub tunl_over_vxlan: Option<f64>,
}

impl Figure {
    /// The summary of one path.
    pub fn get(&self, path: Datapath) -> Option<&Summary> {
        match path {
            Datapath::Direct => self.direct.as_ref(),
            Datapath::Vxlan => self.vxlan.as_ref(),
            Datapath::Tunl => self.tunl.as_ref(),
        }
    }
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Online CPUs.
    pub cores: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
}

/// How the run was made.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Seconds per measurement.
    pub seconds: u32,
    /// Rounds.
    pub rounds: u32,
    /// Dataplane workers per daemon.
    pub workers: u16,
    /// The daemons' `[dataplane] underlay` (as asked for: `tunl status`
    /// of a daemon says what ran).
    pub underlay: String,
    /// The daemons' `busy_poll_us` (0: sleep at once).
    pub busy_poll_us: u32,
    /// The daemons' `poll_interval_us` (0: block at once).
    pub poll_interval_us: u32,
    /// The daemons' `poll_quiet_us`.
    pub poll_quiet_us: u32,
    /// The tunl binary the daemons ran.
    pub tunl_binary: PathBuf,
    /// Ping requests per latency sample.
    pub pings: u32,
    /// Ping interval in milliseconds.
    pub ping_interval_ms: f64,
    /// What the CPU figures mean.
    pub cpu_unit_note: &'static str,
}

/// Latency tunl adds over kernel VXLAN (medians over rounds).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AddedLatency {
    /// tunl's median RTT minus vxlan's, µs.
    pub median_us: f64,
    /// tunl's p99 RTT minus vxlan's, µs.
    pub p99_us: f64,
}

/// Everything one `tunl bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The machine.
    pub machine: MachineInfo,
    /// The options.
    pub settings: Settings,
    /// Every figure, in [`Metric::ALL`] order.
    pub figures: Vec<Figure>,
    /// Latency tunl adds over vxlan.
    pub added_latency: Option<AddedLatency>,
    /// The large-table daemon.
    pub large_table: Option<LargeTable>,
    /// The spoofed flood (`--flood`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flood: Option<super::Flood>,
}

impl BenchReport {
    /// A figure by metric.
    pub fn figure(&self, metric: Metric) -> Option<&Figure> {
        self.figures.iter().find(|f| f.metric == metric)
    }

    /// Builds the report from raw samples (per metric and path, in round
    /// order).
    pub fn from_samples(
        machine: MachineInfo,
        settings: Settings,
        samples: &BTreeMap<(Metric, Datapath), Vec<f64>>,
        large_table: Option<LargeTable>,
    ) -> BenchReport {
        let summary = |m, p| samples.get(&(m, p)).and_then(|s| Summary::of(s.clone()));
        let figures: Vec<Figure> = Metric::ALL
            .iter()
            .map(|&metric| {
                let direct = summary(metric, Datapath::Direct);
                let vxlan = summary(metric, Datapath::Vxlan);
                let tunl = summary(metric, Datapath::Tunl);
                let tunl_over_vxlan = match (&tunl, &vxlan) {
                    (Some(t), Some(v)) if v.median != 0.0 => Some(t.median / v.median),
                    _ => None,
                };
                Figure {
                    metric,
                    label: metric.label(),
                    unit: metric.unit(),
                    higher_is_better: metric.higher_is_better(),
                    direct,
                    vxlan,
                    tunl,
                    tunl_over_vxlan,
                }
            })
            .collect();
        let added = |m: Metric| {
            let f = figures.iter().find(|f| f.metric == m)?;
            Some(f.tunl.as_ref()?.median - f.vxlan.as_ref()?.median)
        };
        let added_latency = added(Metric::LatencyMedian)
            .zip(added(Metric::LatencyP99))
            .map(|(median_us, p99_us)| AddedLatency { median_us, p99_us });
        BenchReport {
            machine,
            settings,
            figures,
            added_latency,
            large_table,
            flood: None,
        }
    }
}

/// Kernel, cores, CPU model and the current date.
pub fn machine_info() -> MachineInfo {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    MachineInfo {
        kernel,
        cores,
        cpu_model,
        date: rfc3339(secs),
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A report from made-up samples, for the tests of the table and the chart.
#[cfg(test)]
pub(super) fn sample_report() -> BenchReport {
    let mut samples = BTreeMap::new();
    let mut put = |m, p, v: &[f64]| {
        samples.insert((m, p), v.to_vec());
    };
    put(Metric::TcpOneStream, Datapath::Direct, &[18.0, 19.0, 18.5]);
    put(Metric::TcpOneStream, Datapath::Vxlan, &[16.0, 17.0, 16.5]);
    put(Metric::TcpOneStream, Datapath::Tunl, &[8.0, 8.5, 8.25]);
    put(Metric::LatencyMedian, Datapath::Vxlan, &[40.0, 42.0, 41.0]);
    put(Metric::LatencyMedian, Datapath::Tunl, &[60.0, 62.0, 61.0]);
    put(Metric::LatencyP99, Datapath::Vxlan, &[80.0]);
    put(Metric::LatencyP99, Datapath::Tunl, &[100.0]);
    put(Metric::PeakRss, Datapath::Tunl, &[12.5]);
    let machine = MachineInfo {
        kernel: "6.1.0".into(),
        cores: 2,
        cpu_model: "Test <CPU> & co".into(),
        date: rfc3339(0),
    };
    let settings = Settings {
        seconds: 5,
        rounds: 3,
        workers: 1,
        underlay: "raw".to_owned(),
        busy_poll_us: 0,
        poll_interval_us: 100,
        poll_quiet_us: 1000,
        tunl_binary: "/bin/tunl".into(),
        pings: 500,
        ping_interval_ms: 2.0,
        cpu_unit_note: "note",
    };
    BenchReport::from_samples(machine, settings, &samples, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_ratios_and_added_latency() {
        let r = sample_report();
        let tcp = r.figure(Metric::TcpOneStream).unwrap();
        assert_eq!(tcp.get(Datapath::Tunl).unwrap().median, 8.25);
        assert!((tcp.tunl_over_vxlan.unwrap() - 0.5).abs() < 1e-9);
        let a = r.added_latency.unwrap();
        assert_eq!((a.median_us, a.p99_us), (20.0, 20.0));
        let rss = r.figure(Metric::PeakRss).unwrap();
        assert!(rss.direct.is_none() && rss.tunl_over_vxlan.is_none());
        assert_eq!(r.figures.len(), Metric::ALL.len());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }
}
