//! `tunl bench`: encapsulation throughput, packet rate, latency, CPU and
//! memory of tunl against the kernel on the same machine, in one run.
//!
//! Three **paths** between the two pods of the seed cluster are measured,
//! alternating within every round (round 1: direct, vxlan, tunl; round 2:
//! ...) so slow drifts of a shared machine hit all of them alike:
//!
//! - `direct`: plain routes over the underlay veth, no tunnel (the limit of
//!   the machine);
//! - `vxlan`: kernel VXLAN over the same veth (the kernel-tunnel reference:
//!   the kernels tunl is for have no ipip driver);
//! - `tunl`: a tunl daemon on both nodes.
//!
//! Every path gets a freshly built cluster per round. On each, from the pod
//! of `node1.sit` to the pod of `node2.perf`: iperf3 TCP with 1 and with 4
//! streams, iperf3 UDP packet rate with 64- and 1400-byte payloads (sent as
//! fast as iperf3 can, packets *received* per second), and ping round trips
//! (`ping -i 0.002`, median and p99). During the 1-stream TCP run the CPU
//! time of the whole machine (`/proc/stat`) and of the tunl daemons
//! (`/proc/PID/stat`) is sampled; it is reported in **%CPU per Gbit/s**,
//! where 100 % is one core fully busy. The daemons' peak RSS (`VmHWM`) is
//! read at the end of each tunl round, and once per run a daemon is started
//! with a config of 10 000 routes to show what a large table costs.
//!
//! Every figure is reported as the median over rounds with the spread
//! (min-max); [`format_table`] prints them with the tunl / vxlan ratio,
//! [`svg_chart`] draws them and the report serialises to JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::testbed::{DaemonOptions, TunlCluster, node_config};
use crate::topology::{self, Cluster, ClusterSpec, Overlay, ProcessOutput, TopologyError};
use tunl::daemon::ROUTE_PROTOCOL;

/// The pod that sends (on `node1.sit`).
const CLIENT_POD: &str = "demo-hello-sit";
/// The pod that receives (on `node2.perf`).
const SERVER_POD: &str = "demo-hello-perf";
/// The node whose daemon gets the 10k-route config.
const ROUTES_NODE: &str = "node1.sit";
/// Routes in the large-table config.
pub const LARGE_TABLE_ROUTES: usize = 10_000;
/// How long the large-table daemon may take to install its routes.
const LARGE_TABLE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a freshly built path may take to carry its first ping.
const REACHABLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval of the latency pings.
const PING_INTERVAL: Duration = Duration::from_millis(2);
/// Measurements per path and round (see [`Step`]).
const STEPS_PER_PATH: usize = 5;

/// Options of `tunl bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub seconds: u32,
    /// Rounds over the three paths (figures are the median over rounds,
    /// with the min-max spread).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Dataplane worker threads of each tunl daemon.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// Run tunl with `[dataplane] packet_tx = true` (AF_PACKET transmit,
    /// which bypasses the node's OUTPUT firewall; see docs/operating.md).
    #[arg(long)]
    pub packet_tx: bool,
    /// Run tunl with `[dataplane] busy_poll_us = N`: workers poll for N µs
    /// after their last packet instead of sleeping at once (lower latency,
    /// more CPU). 0 = the default, sleep at once.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(tunl::config::MAX_BUSY_POLL_US)))]
    pub busy_poll_us: u32,
    /// Write every figure (each sample, median, min, max, units, machine)
    /// as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a bar chart of the main figures as SVG to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// A quick look: 1 round of 2-second measurements (overrides --rounds
    /// and --seconds).
    #[arg(long)]
    pub quick: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            seconds: 5,
            rounds: 3,
            workers: 1,
            packet_tx: false,
            busy_poll_us: 0,
            json: None,
            svg: None,
            quick: false,
        }
    }
}

impl BenchArgs {
    /// `(seconds, rounds)` after `--quick`.
    pub fn effective(&self) -> (u32, u32) {
        if self.quick {
            (2, 1)
        } else {
            (self.seconds.max(1), self.rounds.max(1))
        }
    }
}

/// Errors of `tunl bench`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Not root: namespaces cannot be built.
    #[error(
        "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to build network namespaces: \
         run it with sudo"
    )]
    NotPrivileged,
    /// A measurement tool is not installed.
    #[error("`{tool}` is not installed (Debian: apt-get install {package})")]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// The tunl binary to run as daemon does not exist.
    #[error("tunl binary {0} does not exist")]
    MissingBinary(PathBuf),
    /// Building a cluster or running a measurement failed.
    #[error("{context}: {source}")]
    Topology {
        /// What was being done (path, round, measurement).
        context: String,
        /// The underlying error.
        source: TopologyError,
    },
    /// A measurement gave no usable result.
    #[error("{0}")]
    Measurement(String),
    /// The JSON or SVG file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl BenchError {
    fn topology(context: impl Into<String>) -> impl FnOnce(TopologyError) -> BenchError {
        let context = context.into();
        move |source| match source {
            TopologyError::NotPrivileged => BenchError::NotPrivileged,
            source => BenchError::Topology { context, source },
        }
    }
}

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
}

impl Metric {
    /// Every figure, in table order.
    pub const ALL: [Metric; 10] = [
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
    ];

    /// The figures drawn by [`svg_chart`].
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
            Metric::TcpOneStream | Metric::TcpFourStreams | Metric::Udp64 | Metric::Udp1400
        )
    }
}

/// Median and spread of a figure's samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Every sample, one per round, in round order.
    pub samples: Vec<f64>,
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
}

impl Summary {
    /// The summary of `samples`; `None` if there are none (NaNs are ignored).
    pub fn of(samples: Vec<f64>) -> Option<Summary> {
        let median = median(&samples)?;
        let finite = samples.iter().copied().filter(|x| !x.is_nan());
        let min = finite.clone().fold(f64::INFINITY, f64::min);
        let max = finite.fold(f64::NEG_INFINITY, f64::max);
        Some(Summary {
            samples,
            median,
            min,
            max,
        })
    }
}

/// The median of `xs` (NaNs ignored): the middle value, or the mean of the
/// middle two. `None` for no values.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The `p`-th percentile (0..=100) of `xs` by the nearest-rank method
/// (NaNs ignored). `None` for no values.
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p.clamp(0.0, 100.0) / 100.0 * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
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
    /// Whether the daemons sent with AF_PACKET (`packet_tx`).
    pub packet_tx: bool,
    /// The daemons' `busy_poll_us` (0: sleep at once).
    pub busy_poll_us: u32,
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

/// A daemon started with a config of [`LARGE_TABLE_ROUTES`] routes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LargeTable {
    /// Routes in the config (and installed in the kernel).
    pub routes: usize,
    /// Resident memory once every route is installed, MiB.
    pub vm_rss_mib: f64,
    /// Peak resident memory by then, MiB.
    pub vm_hwm_mib: f64,
    /// Seconds from start until every route was in the kernel.
    pub startup_seconds: f64,
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
        }
    }
}

/// Runs the benchmark: measures, prints progress on stderr and the table on
/// stdout, writes `--json` and `--svg`. `tunl_binary` is what the daemons
/// run (`std::env::current_exe()` for `tunl bench`).
pub fn run(args: &BenchArgs, tunl_binary: &Path) -> Result<BenchReport, BenchError> {
    preflight(tunl_binary)?;
    let (seconds, rounds) = args.effective();
    let pings = (seconds * 100).clamp(100, 500);
    let machine = machine_info();
    let settings = Settings {
        seconds,
        rounds,
        workers: args.workers,
        packet_tx: args.packet_tx,
        busy_poll_us: args.busy_poll_us,
        tunl_binary: tunl_binary.to_owned(),
        pings,
        ping_interval_ms: PING_INTERVAL.as_secs_f64() * 1e3,
        cpu_unit_note: "%CPU per Gbit/s: CPU time per second of wall time (100 = one core \
                        busy) divided by the run's Gbit/s",
    };
    let mut progress = Progress::new(rounds as usize * Datapath::ALL.len() * STEPS_PER_PATH + 1);
    let mut samples: BTreeMap<(Metric, Datapath), Vec<f64>> = BTreeMap::new();
    for round in 1..=rounds {
        for path in Datapath::ALL {
            let ctx = Ctx {
                path,
                round,
                rounds,
                seconds,
                pings,
                daemon: DaemonOptions {
                    workers: usize::from(args.workers),
                    packet_tx: args.packet_tx,
                    busy_poll_us: args.busy_poll_us,
                    log: "warn".to_owned(),
                    ..DaemonOptions::default()
                },
                binary: tunl_binary,
            };
            let got = measure_path(&ctx, &mut progress)?;
            for (metric, value) in got {
                samples.entry((metric, path)).or_default().push(value);
            }
        }
    }
    progress.step(format_args!(
        "tunl: daemon with {LARGE_TABLE_ROUTES} routes ..."
    ));
    let large_table = measure_large_table(tunl_binary)?;
    progress.finish();

    let report = BenchReport::from_samples(machine, settings, &samples, Some(large_table));
    print!("{}", format_table(&report));
    let _ = std::io::stdout().flush();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("the report serialises");
        write_file(path, &(text + "\n"))?;
    }
    if let Some(path) = &args.svg {
        write_file(path, &svg_chart(&report))?;
    }
    Ok(report)
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Root, tools and binary, checked before anything is built.
fn preflight(tunl_binary: &Path) -> Result<(), BenchError> {
    topology::check_privileges().map_err(|_| BenchError::NotPrivileged)?;
    for (tool, package) in [
        ("iperf3", "iperf3"),
        ("ping", "iputils-ping"),
        ("ip", "iproute2"),
        ("ss", "iproute2"),
    ] {
        if !in_path(tool) {
            return Err(BenchError::MissingTool { tool, package });
        }
    }
    if !tunl_binary.is_file() {
        return Err(BenchError::MissingBinary(tunl_binary.to_owned()));
    }
    Ok(())
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A line of `/proc/PID/status` such as `VmHWM:    1234 kB`: the value
/// after the colon, trimmed, without a ` kB` suffix.
fn read_status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim().trim_end_matches(" kB").trim().to_owned())
    })
}

/// A `/proc/PID/status` memory field in MiB.
fn status_mib(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = read_status_field(&status, key)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What one path of one round needs to know.
struct Ctx<'a> {
    path: Datapath,
    round: u32,
    rounds: u32,
    seconds: u32,
    pings: u32,
    /// How the tunl path's daemons run.
    daemon: DaemonOptions,
    binary: &'a Path,
}

/// A built path: a plain cluster or one running tunl.
enum Built {
    Plain(Cluster),
    Tunl(TunlCluster),
}

impl Built {
    fn cluster(&self) -> &Cluster {
        match self {
            Built::Plain(c) => c,
            Built::Tunl(tc) => tc.cluster(),
        }
    }

    fn daemon_pids(&self) -> Vec<u32> {
        match self {
            Built::Plain(_) => Vec::new(),
            Built::Tunl(tc) => tc.daemons().iter().map(|d| d.pid).collect(),
        }
    }

    /// The last lines of every daemon's log, to explain a failure.
    fn logs(&self) -> String {
        let Built::Tunl(tc) = self else {
            return String::new();
        };
        let mut s = String::new();
        for d in tc.daemons() {
            let log = tc.log(&d.node);
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(10)..];
            let _ = write!(
                s,
                "\n--- tunl on {} (last lines) ---\n{}",
                d.node,
                tail.join("\n")
            );
        }
        s
    }
}

/// The measurements of one path in one round.
#[derive(Debug, Clone, Copy)]
enum Step {
    Tcp1,
    Tcp4,
    Udp64,
    Udp1400,
    Ping,
}

impl Step {
    const ALL: [Step; STEPS_PER_PATH] = [
        Step::Tcp1,
        Step::Tcp4,
        Step::Udp64,
        Step::Udp1400,
        Step::Ping,
    ];

    fn describe(self) -> &'static str {
        match self {
            Step::Tcp1 => "TCP 1 stream + CPU",
            Step::Tcp4 => "TCP 4 streams",
            Step::Udp64 => "UDP 64 B",
            Step::Udp1400 => "UDP 1400 B",
            Step::Ping => "ping latency",
        }
    }
}

fn measure_path(ctx: &Ctx<'_>, progress: &mut Progress) -> Result<Vec<(Metric, f64)>, BenchError> {
    let name = ctx.path.name();
    let where_ = format!("{name} (round {}/{})", ctx.round, ctx.rounds);
    progress.note(format_args!("{where_}: building the cluster ..."));
    let built = match ctx.path {
        Datapath::Direct | Datapath::Vxlan => {
            let overlay = if ctx.path == Datapath::Direct {
                Overlay::Direct
            } else {
                Overlay::Vxlan
            };
            Built::Plain(
                Cluster::build(ClusterSpec::seed().with_overlay(overlay)).map_err(
                    BenchError::topology(format!("{where_}: building the cluster")),
                )?,
            )
        }
        Datapath::Tunl => Built::Tunl(
            TunlCluster::start(ClusterSpec::seed(), ctx.binary, ctx.daemon.clone())
                .map_err(BenchError::topology(format!("{where_}: starting tunl")))?,
        ),
    };
    let cluster = built.cluster();
    let server_ip = cluster
        .pod(SERVER_POD)
        .map(|p| p.ip)
        .ok_or_else(|| BenchError::Measurement(format!("no pod {SERVER_POD}")))?;
    cluster
        .wait_reachable(CLIENT_POD, server_ip, REACHABLE_TIMEOUT)
        .map_err(BenchError::topology(format!("{where_}: first ping")))?;

    let mut out = Vec::new();
    for step in Step::ALL {
        progress.step(format_args!("{where_}: {} ...", step.describe()));
        let context = || format!("{where_}: {}", step.describe());
        let result = measure_step(ctx, &built, server_ip, step, &mut out);
        if let Err(e) = result {
            let logs = built.logs();
            return Err(match e {
                BenchError::Topology { source, .. } => BenchError::Topology {
                    context: context() + &logs,
                    source,
                },
                BenchError::Measurement(m) => {
                    BenchError::Measurement(format!("{}: {m}{logs}", context()))
                }
                other => other,
            });
        }
    }
    if ctx.path == Datapath::Tunl {
        let peak = built
            .daemon_pids()
            .iter()
            .filter_map(|&pid| status_mib(pid, "VmHWM"))
            .fold(f64::NAN, f64::max);
        if peak.is_finite() {
            out.push((Metric::PeakRss, peak));
        }
    }
    Ok(out)
}

fn measure_step(
    ctx: &Ctx<'_>,
    built: &Built,
    server_ip: Ipv4Addr,
    step: Step,
    out: &mut Vec<(Metric, f64)>,
) -> Result<(), BenchError> {
    let cluster = built.cluster();
    let topo = BenchError::topology(String::new());
    let secs = ctx.seconds;
    match step {
        Step::Tcp1 => {
            let (result, cpu) = with_cpu_sampling(secs, &built.daemon_pids(), || {
                cluster.iperf3_tcp(CLIENT_POD, SERVER_POD, secs, 1)
            });
            let result = result.map_err(topo)?;
            let gbps = result.bits_per_second / 1e9;
            if gbps <= 0.0 {
                return Err(BenchError::Measurement("no TCP throughput".into()));
            }
            out.push((Metric::TcpOneStream, gbps));
            out.push((Metric::TcpRetransmits, result.retransmits as f64));
            if let Some(cpu) = cpu {
                out.push((Metric::CpuMachine, cpu.machine_percent / gbps));
                if ctx.path == Datapath::Tunl {
                    out.push((Metric::CpuTunl, cpu.processes_percent / gbps));
                }
            }
        }
        Step::Tcp4 => {
            let result = cluster
                .iperf3_tcp(CLIENT_POD, SERVER_POD, secs, 4)
                .map_err(topo)?;
            out.push((Metric::TcpFourStreams, result.bits_per_second / 1e9));
        }
        Step::Udp64 | Step::Udp1400 => {
            let (len, metric) = match step {
                Step::Udp64 => (64, Metric::Udp64),
                _ => (1400, Metric::Udp1400),
            };
            // Target 0: as fast as iperf3 can send.
            let result = cluster
                .iperf3_udp(CLIENT_POD, SERVER_POD, secs, len, 0)
                .map_err(topo)?;
            out.push((metric, result.packets_per_second_received / 1e3));
        }
        Step::Ping => {
            let result = cluster
                .ping(CLIENT_POD, server_ip, ctx.pings, PING_INTERVAL)
                .map_err(topo)?;
            let us: Vec<f64> = result.rtts_ms.iter().map(|ms| ms * 1e3).collect();
            let (Some(med), Some(p99)) = (median(&us), percentile(&us, 99.0)) else {
                return Err(BenchError::Measurement(format!(
                    "no ping replies ({} sent)",
                    result.transmitted
                )));
            };
            out.push((Metric::LatencyMedian, med));
            out.push((Metric::LatencyP99, p99));
        }
    }
    Ok(())
}

/// CPU use over a window, in % of one core.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    machine_percent: f64,
    processes_percent: f64,
}

/// Runs `f` (a measurement of `seconds`) on another thread and samples CPU
/// time meanwhile: from 0.5 s after the start to 0.25 s before the
/// expected end, inside the transfer, so tool start-up and teardown are
/// left out (for runs under 2 s: around the whole call).
fn with_cpu_sampling<T: Send>(
    seconds: u32,
    pids: &[u32],
    f: impl FnOnce() -> T + Send,
) -> (T, Option<CpuUse>) {
    let ticks = clock_ticks();
    std::thread::scope(|s| {
        let (lead, window) = if seconds >= 2 {
            (
                Duration::from_millis(500),
                Duration::from_secs(u64::from(seconds)) - Duration::from_millis(750),
            )
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        let worker = s.spawn(f);
        std::thread::sleep(lead);
        let before = CpuSnapshot::take(pids);
        let t0 = Instant::now();
        let result = if window.is_zero() {
            let r = worker.join();
            (r, CpuSnapshot::take(pids), t0.elapsed())
        } else {
            std::thread::sleep(window);
            let after = CpuSnapshot::take(pids);
            let elapsed = t0.elapsed();
            (worker.join(), after, elapsed)
        };
        let (joined, after, elapsed) = result;
        let value = match joined {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let cpu = before
            .zip(after)
            .and_then(|(b, a)| CpuSnapshot::usage(&b, &a, elapsed, ticks));
        (value, cpu)
    })
}

/// Jiffies of the machine and of some processes at one moment.
#[derive(Debug, Clone)]
struct CpuSnapshot {
    busy: u64,
    total: u64,
    cores: usize,
    processes: Vec<Option<u64>>,
}

impl CpuSnapshot {
    fn take(pids: &[u32]) -> Option<CpuSnapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (busy, total, cores) = parse_proc_stat(&stat)?;
        let processes = pids
            .iter()
            .map(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| parse_pid_stat_cpu(&s))
            })
            .collect();
        Some(CpuSnapshot {
            busy,
            total,
            cores,
            processes,
        })
    }

    fn usage(before: &Self, after: &Self, elapsed: Duration, ticks: f64) -> Option<CpuUse> {
        let total = after.total.checked_sub(before.total)?;
        if total == 0 || elapsed.is_zero() {
            return None;
        }
        let busy = after.busy.saturating_sub(before.busy);
        let machine_percent = busy as f64 / total as f64 * after.cores as f64 * 100.0;
        let process_ticks: u64 = before
            .processes
            .iter()
            .zip(&after.processes)
            .filter_map(|(b, a)| Some(a.as_ref()?.saturating_sub(*b.as_ref()?)))
            .sum();
        let processes_percent = process_ticks as f64 / ticks / elapsed.as_secs_f64() * 100.0;
        Some(CpuUse {
            machine_percent,
            processes_percent,
        })
    }
}

/// `(busy, total, cores)` jiffies from `/proc/stat`: the `cpu` line's
/// user..steal, busy being all but idle and iowait; cores counted from the
/// `cpuN` lines.
fn parse_proc_stat(stat: &str) -> Option<(u64, u64, usize)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1);
    Some((total - idle, total, cores))
}

/// utime + stime (jiffies, all threads) from `/proc/PID/stat`.
fn parse_pid_stat_cpu(stat: &str) -> Option<u64> {
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// The config of the large-table daemon: the seed config of its node plus
/// routes for `/26` blocks from 10.64.0.0, `routes` in all, via the other
/// node.
fn large_table_config(cluster: &Cluster, routes: usize) -> Result<String, BenchError> {
    let node = cluster
        .node(ROUTES_NODE)
        .ok_or_else(|| BenchError::Measurement(format!("no node {ROUTES_NODE}")))?;
    let options = DaemonOptions {
        log: "warn".to_owned(),
        ..DaemonOptions::default()
    };
    let remote = cluster.remote_routes(ROUTES_NODE);
    let via = remote
        .first()
        .map(|(_, via)| *via)
        .ok_or_else(|| BenchError::Measurement("no remote node".into()))?;
    let mut text = node_config(cluster, node, &options);
    text.push_str(&extra_routes(via, routes.saturating_sub(remote.len())));
    Ok(text)
}

/// `count` `[[route]]` tables for consecutive /26 blocks from 10.64.0.0 via
/// `via`.
fn extra_routes(via: Ipv4Addr, count: usize) -> String {
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    let mut text = String::new();
    for i in 0..count as u32 {
        let prefix = Ipv4Addr::from(base + i * 64);
        let _ = write!(
            text,
            "\n[[route]]\nprefix = \"{prefix}/26\"\nvia = \"{via}\"\n"
        );
    }
    text
}

/// Starts a daemon with [`LARGE_TABLE_ROUTES`] routes on a fresh cluster,
/// waits until every route is in the kernel, reads its memory, stops it and
/// removes everything.
fn measure_large_table(binary: &Path) -> Result<LargeTable, BenchError> {
    let context = "daemon with 10k routes";
    let topo = |what: &str| BenchError::topology(format!("{context}: {what}"));
    let cluster = Cluster::build(ClusterSpec::seed()).map_err(topo("building the cluster"))?;
    let dir = tempdir_for(cluster.tag());
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Write {
        path: dir.clone(),
        source,
    })?;
    let _cleanup = RemoveDir(dir.clone());
    let config = dir.join("large.toml");
    write_file(&config, &large_table_config(&cluster, LARGE_TABLE_ROUTES)?)?;
    let log = dir.join("large.log");
    let started = Instant::now();
    let pid = cluster
        .spawn(
            ROUTES_NODE,
            &[
                &binary.to_string_lossy(),
                "--log",
                "warn",
                "run",
                "--config",
                &config.to_string_lossy(),
            ],
            ProcessOutput::File(log.clone()),
        )
        .map_err(topo("starting the daemon"))?;
    let proto = ROUTE_PROTOCOL.to_string();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let startup = loop {
        if let Some(status) = cluster.try_wait(pid).map_err(topo("waiting"))? {
            return Err(BenchError::Measurement(format!(
                "{context}: exited ({status}) before installing its routes:\n{}",
                read_log()
            )));
        }
        let routes = cluster
            .exec_ok(ROUTES_NODE, &["ip", "-o", "route", "show", "proto", &proto])
            .map_err(topo("listing routes"))?;
        if routes.lines().count() >= LARGE_TABLE_ROUTES {
            break started.elapsed();
        }
        if started.elapsed() > LARGE_TABLE_TIMEOUT {
            return Err(BenchError::Measurement(format!(
                "{context}: routes not installed after {LARGE_TABLE_TIMEOUT:?}:\n{}",
                read_log()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let start-up allocations settle before reading.
    std::thread::sleep(Duration::from_millis(300));
    let rss = status_mib(pid, "VmRSS");
    let hwm = status_mib(pid, "VmHWM");
    // SIGTERM lets it remove its routes; the cluster's drop removes the rest.
    let _ = cluster.signal(pid, libc::SIGTERM);
    let _ = cluster.wait_timeout(pid, Duration::from_secs(30));
    let (Some(vm_rss_mib), Some(vm_hwm_mib)) = (rss, hwm) else {
        return Err(BenchError::Measurement(format!(
            "{context}: could not read /proc/{pid}/status"
        )));
    };
    Ok(LargeTable {
        routes: LARGE_TABLE_ROUTES,
        vm_rss_mib,
        vm_hwm_mib,
        startup_seconds: startup.as_secs_f64(),
    })
}

fn tempdir_for(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tunl-bench-{tag}"))
}

/// Removes a folder when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The progress line on stderr: rewritten in place on a terminal, one line
/// per step otherwise.
struct Progress {
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Starts the next counted step.
    fn step(&mut self, what: std::fmt::Arguments<'_>) {
        self.done += 1;
        self.show(&format!("[{}/{}] {what}", self.done, self.total));
    }

    /// Says what happens between steps, without counting.
    fn note(&mut self, what: std::fmt::Arguments<'_>) {
        self.show(&format!("[{}/{}] {what}", self.done, self.total));
    }

    fn show(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn finish(&self) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

/// A number with about three significant digits.
pub fn format_number(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".to_owned()
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A table cell: the median, with the spread `(min-max)` when there is more
/// than one sample; `-` for no value.
pub fn format_cell(summary: Option<&Summary>, metric: Metric) -> String {
    match summary {
        None => "-".to_owned(),
        Some(s) if s.samples.len() > 1 => format!(
            "{} ({}-{})",
            metric.format(s.median),
            metric.format(s.min),
            metric.format(s.max)
        ),
        Some(s) => metric.format(s.median),
    }
}

/// The report as a text table: one row per figure, columns direct, vxlan,
/// tunl and tunl / vxlan; then the added latency, the large-table figures
/// and the machine.
pub fn format_table(report: &BenchReport) -> String {
    let header = ["figure", "unit", "direct", "vxlan", "tunl", "tunl/vxlan"];
    let mut rows: Vec<[String; 6]> = vec![header.map(str::to_owned)];
    for f in &report.figures {
        rows.push([
            f.label.to_owned(),
            f.unit.to_owned(),
            format_cell(f.direct.as_ref(), f.metric),
            format_cell(f.vxlan.as_ref(), f.metric),
            format_cell(f.tunl.as_ref(), f.metric),
            f.tunl_over_vxlan
                .map(|r| format!("{r:.2}x"))
                .unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let s_ = &report.settings;
    let _ = writeln!(
        s,
        "tunl bench: {} round(s) of {} s, {} worker(s); median (min-max) over rounds",
        s_.rounds, s_.seconds, s_.workers
    );
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if c < 2 {
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(line, "{}{cell}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
        if i == 0 {
            let rule: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(s, "{}", "-".repeat(rule));
        }
    }
    if let Some(a) = report.added_latency {
        let _ = writeln!(
            s,
            "tunl adds {:+.1} µs median round-trip latency over vxlan (p99: {:+.1} µs)",
            a.median_us, a.p99_us
        );
    }
    if let Some(t) = report.large_table {
        let _ = writeln!(
            s,
            "tunl daemon with {} routes: VmRSS {:.1} MiB, VmHWM {:.1} MiB, routes installed in {:.1} s",
            t.routes, t.vm_rss_mib, t.vm_hwm_mib, t.startup_seconds
        );
    }
    let _ = writeln!(
        s,
        "tunl settings: {} worker(s), transmit via {}, {}",
        s_.workers,
        if s_.packet_tx {
            "AF_PACKET (packet_tx)"
        } else {
            "raw IP socket (default)"
        },
        if s_.busy_poll_us == 0 {
            "workers sleep when idle (default)".to_owned()
        } else {
            format!(
                "workers busy-poll {} µs after the last packet",
                s_.busy_poll_us
            )
        }
    );
    let m = &report.machine;
    let _ = writeln!(
        s,
        "machine: {} ({} cores), kernel {}, {}; CPU figures: {}",
        m.cpu_model, m.cores, m.kernel, m.date, s_.cpu_unit_note
    );
    s
}

/// One panel of the chart: a figure's three bars.
#[derive(Debug, Clone)]
pub struct ChartPanel {
    /// Title.
    pub title: String,
    /// Unit, shown under the title.
    pub unit: String,
    /// One bar per path.
    pub bars: Vec<ChartBar>,
}

/// One bar of a [`ChartPanel`].
#[derive(Debug, Clone)]
pub struct ChartBar {
    /// The path's name.
    pub name: String,
    /// `(median, min, max)`; `None` for a missing value.
    pub value: Option<(f64, f64, f64)>,
}

/// Bar colours: direct, vxlan, tunl.
const COLOURS: [&str; 3] = ["#8c8c8c", "#4e79a7", "#f28e2b"];

/// The chart of the report's main figures ([`Metric::CHART`]).
pub fn svg_chart(report: &BenchReport) -> String {
    let panels: Vec<ChartPanel> = Metric::CHART
        .iter()
        .filter_map(|&m| report.figure(m))
        .map(|f| ChartPanel {
            title: f.label.to_owned(),
            unit: format!(
                "{}{}",
                f.unit,
                if f.higher_is_better {
                    ", higher is better"
                } else {
                    ", lower is better"
                }
            ),
            bars: Datapath::ALL
                .iter()
                .map(|&p| ChartBar {
                    name: p.name().to_owned(),
                    value: f.get(p).map(|s| (s.median, s.min, s.max)),
                })
                .collect(),
        })
        .collect();
    let s = &report.settings;
    let m = &report.machine;
    let title = format!(
        "tunl bench: direct veth vs kernel VXLAN vs tunl ({} round(s) of {} s, {} worker(s))",
        s.rounds, s.seconds, s.workers
    );
    let subtitle = format!(
        "{} ({} cores), kernel {}, {}; bars: median, whiskers: min-max",
        m.cpu_model, m.cores, m.kernel, m.date
    );
    build_svg(&title, &subtitle, &panels)
}

/// Grouped bars, one panel per figure (each with its own scale), values
/// labelled, min-max whiskers; a self-contained SVG document.
pub fn build_svg(title: &str, subtitle: &str, panels: &[ChartPanel]) -> String {
    const COLS: usize = 4;
    const PW: f64 = 250.0; // panel width
    const PH: f64 = 250.0; // panel height
    const TOP: f64 = 80.0; // title and legend
    const PLOT_TOP: f64 = 52.0; // within a panel: below title and unit
    const PLOT_H: f64 = 150.0;
    const BAR_W: f64 = 50.0;
    let cols = COLS.min(panels.len().max(1));
    let rows = panels.len().div_ceil(COLS).max(1);
    let width = (cols as f64 * PW).max(760.0);
    let height = TOP + rows as f64 * PH + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="12" y="24" font-size="16" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="12" y="44" font-size="11" fill="#444">{}</text>"##,
        xml_escape(subtitle)
    );
    // Legend, from the first panel's bar names.
    if let Some(first) = panels.first() {
        let mut x = 12.0;
        for (i, ChartBar { name, .. }) in first.bars.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="56" width="12" height="12" fill="{colour}"/><text x="{}" y="66" font-size="12">{}</text>"#,
                x + 16.0,
                xml_escape(name)
            );
            x += 90.0;
        }
    }
    for (i, panel) in panels.iter().enumerate() {
        let ox = (i % COLS) as f64 * PW;
        let oy = TOP + (i / COLS) as f64 * PH;
        let cx = ox + PW / 2.0;
        let _ = writeln!(s, r#"<g class="panel">"#);
        let _ = writeln!(
            s,
            r#"<text x="{cx}" y="{}" font-size="13" font-weight="bold" text-anchor="middle">{}</text>"#,
            oy + 18.0,
            xml_escape(&panel.title)
        );
        let _ = writeln!(
            s,
            r##"<text x="{cx}" y="{}" font-size="10" fill="#555" text-anchor="middle">{}</text>"##,
            oy + 33.0,
            xml_escape(&panel.unit)
        );
        let top = panel
            .bars
            .iter()
            .filter_map(|b| b.value.map(|(med, _, max)| med.max(max)))
            .fold(0.0f64, f64::max);
        let scale = if top > 0.0 { PLOT_H / top } else { 0.0 };
        let base = oy + PLOT_TOP + 14.0 + PLOT_H;
        let n = panel.bars.len().max(1) as f64;
        let gap = (PW - 40.0 - n * BAR_W) / (n + 1.0);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{base}" x2="{}" y2="{base}" stroke="#333" stroke-width="1"/>"##,
            ox + 20.0,
            ox + PW - 20.0
        );
        for (j, ChartBar { name, value }) in panel.bars.iter().enumerate() {
            let x = ox + 20.0 + gap + j as f64 * (BAR_W + gap);
            let colour = COLOURS[j % COLOURS.len()];
            let mid = x + BAR_W / 2.0;
            let _ = writeln!(
                s,
                r#"<text x="{mid}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
                base + 14.0,
                xml_escape(name)
            );
            let Some((med, min, max)) = value else {
                let _ = writeln!(
                    s,
                    r##"<text x="{mid}" y="{}" font-size="11" fill="#777" text-anchor="middle">n/a</text>"##,
                    base - 4.0
                );
                continue;
            };
            let h = (med.max(0.0) * scale).max(0.5);
            let y = base - h;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{BAR_W}" height="{h:.1}" fill="{colour}"><title>{}: {}</title></rect>"#,
                xml_escape(name),
                format_number(*med)
            );
            let (ymin, ymax) = (base - min.max(0.0) * scale, base - max.max(0.0) * scale);
            if (ymin - ymax).abs() > 0.5 {
                let _ = writeln!(
                    s,
                    r##"<path d="M{mid:.1} {ymin:.1}V{ymax:.1}M{:.1} {ymin:.1}h10M{:.1} {ymax:.1}h10" stroke="#222" stroke-width="1" fill="none"/>"##,
                    mid - 5.0,
                    mid - 5.0
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{mid:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                y.min(ymax) - 4.0,
                format_number(*med)
            );
        }
        let _ = writeln!(s, "</g>");
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentile() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 1.0, 2.0, 9.0]), Some(2.0));
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 99.0), Some(99.0));
        assert_eq!(percentile(&xs, 50.0), Some(50.0));
        assert_eq!(percentile(&xs, 100.0), Some(100.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 99.0), None);
    }

    #[test]
    fn summary_spread() {
        let s = Summary::of(vec![2.0, 9.0, 4.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (4.0, 2.0, 9.0));
        assert_eq!(s.samples, vec![2.0, 9.0, 4.0], "samples keep round order");
        assert!(Summary::of(Vec::new()).is_none());
    }

    fn sample_report() -> BenchReport {
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
            packet_tx: false,
            busy_poll_us: 0,
            tunl_binary: "/bin/tunl".into(),
            pings: 500,
            ping_interval_ms: 2.0,
            cpu_unit_note: "note",
        };
        BenchReport::from_samples(machine, settings, &samples, None)
    }

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
    fn table_rows_and_columns() {
        let r = sample_report();
        let t = format_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        let header = lines[1];
        for col in ["figure", "unit", "direct", "vxlan", "tunl", "tunl/vxlan"] {
            assert!(header.contains(col), "{header}");
        }
        let tcp = lines
            .iter()
            .find(|l| l.starts_with("TCP, 1 stream"))
            .unwrap();
        assert!(tcp.contains("18.5 (18.0-19.0)"), "{tcp}");
        assert!(tcp.contains("8.25 (8.00-8.50)"), "{tcp}");
        assert!(tcp.trim_end().ends_with("0.50x"), "{tcp}");
        let rss = lines
            .iter()
            .find(|l| l.starts_with("tunl daemon peak"))
            .unwrap();
        assert!(
            rss.contains("12.5") && rss.trim_end().ends_with('-'),
            "{rss}"
        );
        assert!(t.contains("+20.0 µs median"), "{t}");
        // Every data row lines up with the header's right-aligned columns.
        let width = header.chars().count();
        assert!(lines[2].chars().all(|c| c == '-') && lines[2].chars().count() == width);
        assert_eq!(format_cell(None, Metric::Udp64), "-");
        let retrans = Summary::of(vec![2.0, 5884.0, 791.0]);
        assert_eq!(
            format_cell(retrans.as_ref(), Metric::TcpRetransmits),
            "791 (2-5884)"
        );
        assert_eq!(format_number(123456.7), "123457");
        assert_eq!(format_number(0.01234), "0.012");
    }

    #[test]
    fn svg_is_well_formed_and_labelled() {
        let r = sample_report();
        let svg = svg_chart(&r);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Escaped text, no raw markup characters from data.
        assert!(svg.contains("Test &lt;CPU&gt; &amp; co"));
        assert!(!svg.contains("<CPU>"));
        // One panel per chart figure, value labels present, n/a for missing.
        assert_eq!(
            svg.matches("<g class=\"panel\">").count(),
            Metric::CHART.len()
        );
        assert!(svg.contains(">8.25</text>") && svg.contains(">18.5</text>"));
        assert!(svg.contains(">n/a</text>"));
        // Balanced groups, and every element is closed.
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        // The tallest bar of a panel spans the plot height.
        let panel = build_svg(
            "t",
            "s",
            &[ChartPanel {
                title: "x".into(),
                unit: "u".into(),
                bars: vec![
                    ChartBar {
                        name: "a".into(),
                        value: Some((10.0, 10.0, 10.0)),
                    },
                    ChartBar {
                        name: "b".into(),
                        value: Some((5.0, 5.0, 5.0)),
                    },
                ],
            }],
        );
        assert!(panel.contains("height=\"150.0\""), "{panel}");
        assert!(panel.contains("height=\"75.0\""), "{panel}");
    }

    #[test]
    fn proc_parsers() {
        let stat = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\n\
                    cpu1 50 3 25 500 10 2 4 0 0 0\nintr 1 2 3\n";
        assert_eq!(parse_proc_stat(stat), Some((165, 1185, 2)));
        let pid = "1234 (tunl (x) y) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 3";
        assert_eq!(parse_pid_stat_cpu(pid), Some(290));
        let status = "Name:\ttunl\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(read_status_field(status, "VmHWM").as_deref(), Some("5120"));
        assert_eq!(read_status_field(status, "VmSwap"), None);
        let before = CpuSnapshot {
            busy: 100,
            total: 1000,
            cores: 2,
            processes: vec![Some(10), None],
        };
        let after = CpuSnapshot {
            busy: 600,
            total: 2000,
            cores: 2,
            processes: vec![Some(110), Some(5)],
        };
        let u = CpuSnapshot::usage(&before, &after, Duration::from_secs(5), 100.0).unwrap();
        assert!((u.machine_percent - 100.0).abs() < 1e-9);
        assert!((u.processes_percent - 20.0).abs() < 1e-9);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn large_table_routes_parse() {
        let base = "[tunnel]\nlocal = \"172.16.35.4\"\n";
        let text = format!(
            "{base}{}",
            extra_routes(Ipv4Addr::new(172, 16, 36, 5), LARGE_TABLE_ROUTES)
        );
        let config = tunl::config::Config::parse(&text, Path::new("large.toml")).unwrap();
        assert_eq!(config.routes.len(), LARGE_TABLE_ROUTES);
        let last = config.routes.last().unwrap();
        assert_eq!(last.prefix.to_string(), "10.73.195.192/26");
        let args = BenchArgs {
            quick: true,
            ..BenchArgs::default()
        };
        assert_eq!(args.effective(), (2, 1));
    }
}
