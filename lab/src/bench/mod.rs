//! `tunl bench`: encapsulation throughput, packet rate, latency, CPU and
//! memory of tunl against the kernel on the same machine, in one run, on
//! [`crate::topology`] clusters (the kernel's paths) and a [`crate::testbed`]
//! (tunl's).
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
//!
//! The parts, by job:
//!
//! - this file: the options, the run (rounds, paths, steps, the progress
//!   line) and the measurement of one path;
//! - `report`: what a run reports ([`Datapath`], [`Metric`], [`Figure`],
//!   [`BenchReport`]) and the machine it ran on;
//! - `stats`: [`median`], [`percentile`] and the [`Summary`] over rounds;
//! - `cpu`: CPU time of the machine and of the daemons, sampled from
//!   `/proc/stat` and `/proc/PID/stat` during a transfer;
//! - `table`: the text table ([`format_table`]);
//! - `svg`: the bar chart ([`svg_chart`]);
//! - `large_table`: the daemon started with [`LARGE_TABLE_ROUTES`] routes;
//! - `routes`: `tunl bench routes` ([`run_routes`]), which measures following
//!   the kernel's routes instead of the datapath.
//! - `flood` (with `--flood` or `--flood-only`): spoofed IPIP refused per
//!   second on one worker, and the pod ping's loss meanwhile ([`Flood`]).

mod cpu;
mod flood;
mod large_table;
mod report;
mod routes;
mod stats;
mod svg;
mod table;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tunl::config::Underlay;

use crate::testbed::{DaemonOptions, TunlCluster};
use crate::topology::{self, Cluster, ClusterSpec, Overlay, TopologyError};

pub use flood::{Flood, format_flood};
pub use large_table::{LARGE_TABLE_ROUTES, LargeTable};
pub use report::{
    AddedLatency, BenchReport, Datapath, Figure, MachineInfo, Metric, Settings, machine_info,
};
pub use routes::{
    BenchCommand, ChurnFigure, RoutesBenchArgs, RoutesReport, StartFigure, format_routes_table,
    run_routes,
};
pub use stats::{Summary, median, percentile};
pub use svg::{ChartBar, ChartPanel, build_svg, svg_chart};
pub use table::{format_cell, format_number, format_table};

use cpu::with_cpu_sampling;
use flood::measure_flood;
use large_table::measure_large_table;

/// The pod that sends (on `node1.sit`).
const CLIENT_POD: &str = "demo-hello-sit";
/// The pod that receives (on `node2.perf`).
const SERVER_POD: &str = "demo-hello-perf";
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
    /// The daemons' `[dataplane] underlay`: raw (the default), packet
    /// (AF_PACKET transmit, which bypasses the node's OUTPUT firewall),
    /// xdp (AF_XDP both ways, which bypasses netfilter for IPIP; see
    /// docs/operating.md) or auto (the fastest that works).
    #[arg(long, value_name = "UNDERLAY", default_value_t = Underlay::DEFAULT)]
    pub underlay: Underlay,
    /// Run tunl with `[dataplane] busy_poll_us = N`: workers poll for N µs
    /// after their last packet instead of sleeping at once (lower latency,
    /// more CPU). 0 = the default, sleep at once.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(tunl::config::MAX_BUSY_POLL_US)))]
    pub busy_poll_us: u32,
    /// Run tunl with `[dataplane] poll_interval_us = N`: under load, workers
    /// whose sources ran dry sleep N µs and look again instead of blocking
    /// in epoll. 0 = off (block at once).
    #[arg(long, value_name = "N", default_value_t = tunl::config::DEFAULT_POLL_INTERVAL_US,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(tunl::config::MAX_POLL_INTERVAL_US)))]
    pub poll_interval_us: u32,
    /// Run tunl with `[dataplane] poll_quiet_us = N`: the timer polling
    /// ends after N µs without a packet (0 = off; otherwise at least
    /// `--poll-interval-us`).
    #[arg(long, value_name = "N", default_value_t = tunl::config::DEFAULT_POLL_QUIET_US,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(tunl::config::MAX_POLL_QUIET_US)))]
    pub poll_quiet_us: u32,
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
    /// Also flood a one-worker daemon with spoofed IPIP (sources that are
    /// no node) for --seconds, and report the packets it refused per second
    /// and the pod ping's loss during the flood.
    #[arg(long)]
    pub flood: bool,
    /// Only the flood (no paths, no large table): `--flood-only --seconds 2`
    /// is a quick look.
    #[arg(long)]
    pub flood_only: bool,
    /// Routes in the config of the large-table run (start time until every
    /// route is in the kernel, and the daemon's memory then).
    #[arg(long, value_name = "N", default_value_t = LARGE_TABLE_ROUTES as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub table_routes: u64,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            seconds: 5,
            rounds: 3,
            workers: 1,
            underlay: Underlay::DEFAULT,
            busy_poll_us: 0,
            poll_interval_us: tunl::config::DEFAULT_POLL_INTERVAL_US,
            poll_quiet_us: tunl::config::DEFAULT_POLL_QUIET_US,
            json: None,
            svg: None,
            quick: false,
            flood: false,
            flood_only: false,
            table_routes: LARGE_TABLE_ROUTES as u64,
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
        underlay: args.underlay.to_string(),
        busy_poll_us: args.busy_poll_us,
        poll_interval_us: args.poll_interval_us,
        poll_quiet_us: args.poll_quiet_us,
        tunl_binary: tunl_binary.to_owned(),
        pings,
        ping_interval_ms: PING_INTERVAL.as_secs_f64() * 1e3,
        cpu_unit_note: "%CPU per Gbit/s: CPU time per second of wall time (100 = one core \
                        busy) divided by the run's Gbit/s",
    };
    let flood = args.flood || args.flood_only;
    let paths = if args.flood_only { 0 } else { rounds };
    let steps = paths as usize * Datapath::ALL.len() * STEPS_PER_PATH
        + usize::from(!args.flood_only)
        + usize::from(flood);
    let mut progress = Progress::new(steps);
    let mut samples: BTreeMap<(Metric, Datapath), Vec<f64>> = BTreeMap::new();
    for round in 1..=paths {
        for path in Datapath::ALL {
            let ctx = Ctx {
                path,
                round,
                rounds,
                seconds,
                pings,
                daemon: DaemonOptions {
                    workers: usize::from(args.workers),
                    underlay: args.underlay,
                    busy_poll_us: args.busy_poll_us,
                    poll_interval_us: args.poll_interval_us,
                    poll_quiet_us: args.poll_quiet_us,
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
    let large_table = if args.flood_only {
        None
    } else {
        progress.step(format_args!(
            "tunl: daemon with {} routes ...",
            args.table_routes
        ));
        // At most 1M (the argument's range): fits a usize.
        Some(measure_large_table(
            tunl_binary,
            args.table_routes as usize,
        )?)
    };
    let flooded = if flood {
        progress.step(format_args!(
            "tunl: spoofed IPIP flood on 1 worker for {seconds} s ..."
        ));
        Some(measure_flood(tunl_binary, seconds, args.underlay)?)
    } else {
        None
    };
    progress.finish();

    let mut report = BenchReport::from_samples(machine, settings, &samples, large_table);
    report.flood = flooded;
    if args.flood_only {
        if let Some(f) = &report.flood {
            print!("{}", format_flood(f));
        }
    } else {
        print!("{}", format_table(&report));
    }
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

    /// The `tx_packets` counter of the daemon on the sending pod's node
    /// (outer frames it put on the underlay), over its control socket.
    fn sender_tx_packets(&self) -> Option<u64> {
        let Built::Tunl(tc) = self else {
            return None;
        };
        let node = tc.cluster().pod(CLIENT_POD)?.node.clone();
        let stats: tunl::control::Stats = tunl::control::Client::connect(&tc.control_socket(&node))
            .ok()?
            .call(&tunl::control::Request::Stats {})
            .ok()?;
        stats.counter("tx_packets")
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
            let sent = || built.sender_tx_packets();
            let (result, cpu) = with_cpu_sampling(secs, &built.daemon_pids(), sent, || {
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
                if let Some(rate) = cpu.counter_per_second {
                    out.push((Metric::UnderlayFrames, rate / 1e3));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let status = "Name:\ttunl\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\n";
        assert_eq!(read_status_field(status, "VmHWM").as_deref(), Some("5120"));
        assert_eq!(read_status_field(status, "VmSwap"), None);
    }

    #[test]
    fn quick_is_one_round_of_two_seconds() {
        let args = BenchArgs {
            quick: true,
            ..BenchArgs::default()
        };
        assert_eq!(args.effective(), (2, 1));
    }
}
