//! `tunl bench routes`: what following the kernel's routes costs, on the
//! seed cluster, with the routes another program (the bench, standing in
//! for BIRD) installs on tunl's device.
//!
//! - **start**: the kernel holds N routes on the device (put there with
//!   `ip -batch` while tunl is stopped; the device persists), then tunl
//!   starts: the time from the spawn until its control socket answers with
//!   all N routes in its table (polled every 2 ms), the dump time the
//!   daemon logs, and its memory (`VmRSS`, `VmHWM`) then;
//! - **latency**: at `--base` routes, the bench adds one route at a time
//!   over its own netlink socket and takes `CLOCK_MONOTONIC` when the
//!   kernel's ack returns; the daemon stamps the same clock when the route
//!   enters its LPM (`status`: `last_route_update_ns`). The difference, per
//!   add, gives the median and p99. The kernel sends the notification
//!   before the ack, so a daemon quicker than the bench's own wakeup shows
//!   a negative figure; the same from the moment the add was sent (which
//!   includes the kernel's own work on it) is printed beside it.
//! - **churn**: at `--base` routes, `ip -batch` adds and deletes /32s at a
//!   given rate for `--churn-seconds` (chunks every 50 ms); a rate counts as
//!   followed when the daemon needed no resync (no overrun) and its table
//!   equals the kernel's afterwards. The rate achieved is reported, since
//!   `ip` itself has a ceiling; the figure is the highest rate followed.
//!   `status` is timed while the changes are queued;
//! - **config start**: a daemon on a fresh cluster with a config of as
//!   many `[[route]]`s as the largest size (tunl installs them itself):
//!   from the spawn until every route is in the kernel, and its memory
//!   300 ms later;
//! - **control socket**: at each start size, `route_add` over the control
//!   socket (then `route_del`), and `status`, timed; and `status` sent
//!   while ten clients' route adds are queued ahead of it (the daemon
//!   answers reads before queued changes).
//!
//! Nothing here is a timed test: it prints figures beside their targets.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tunl::control::{Client, Request, Status};

use super::large_table::{LargeTable, measure_large_table};
use super::{BenchError, median, percentile, status_mib, write_file};
use crate::testbed::{DaemonOptions, TunlCluster, in_netns};
use crate::topology::{ClusterSpec, ProcessOutput};

/// The node whose daemon is measured.
const NODE: &str = "node1.sit";
/// The protocol number of the bench's routes (`ip route show proto 200`).
const BENCH_PROTO: &str = "200";
/// First address of the routes loaded for the start and as the base: /26
/// blocks from here.
const TABLE_BASE: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 0);
/// First address of the /32s the latency run adds.
const LATENCY_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// First address of the /32s the churn adds and deletes.
const CHURN_BASE: Ipv4Addr = Ipv4Addr::new(100, 96, 0, 0);
/// How long a start may take before the bench gives up.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The churn's chunk interval.
const CHURN_TICK: Duration = Duration::from_millis(50);

/// The benchmarks besides the datapath one (`tunl bench` alone).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Following the kernel's routes: start time and memory on 10k and
    /// 100k kernel routes and on a config of 100k routes, route-added-to-LPM
    /// latency, the churn rate followed without a resync, and
    /// control-socket response times (needs root).
    Routes(RoutesBenchArgs),
}

/// Options of `tunl bench routes`.
#[derive(Debug, Clone, clap::Args)]
pub struct RoutesBenchArgs {
    /// Kernel route counts tunl starts on, comma-separated (the start
    /// figure: load time and memory); the largest is also started on as
    /// config routes.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000])]
    pub sizes: Vec<usize>,
    /// Routes in the kernel during the latency and churn runs.
    #[arg(long, default_value_t = 10_000)]
    pub base: usize,
    /// Route adds timed for the latency figure.
    #[arg(long, default_value_t = 1000)]
    pub adds: usize,
    /// Churn rates tried, changes per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [5_000, 10_000, 20_000, 40_000])]
    pub churn_rates: Vec<u32>,
    /// Seconds of churn per rate.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub churn_seconds: u32,
    /// Write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl Default for RoutesBenchArgs {
    fn default() -> Self {
        RoutesBenchArgs {
            sizes: vec![10_000, 100_000],
            base: 10_000,
            adds: 1000,
            churn_rates: vec![5_000, 10_000, 20_000, 40_000],
            churn_seconds: 5,
            json: None,
        }
    }
}

/// tunl started on a kernel table of `routes` routes.
#[derive(Debug, Clone, Serialize)]
pub struct StartFigure {
    /// Routes on the device in the kernel.
    pub routes: usize,
    /// Spawn to control socket answering with every route loaded, seconds.
    pub ready_seconds: f64,
    /// The dump and load, as the daemon logs it, milliseconds.
    pub dump_ms: Option<f64>,
    /// Resident memory then, MiB.
    pub vm_rss_mib: f64,
    /// Peak resident memory by then, MiB.
    pub vm_hwm_mib: f64,
    /// `route_add` over the control socket, median ms.
    pub route_add_ms: f64,
    /// `status` over the control socket, median ms.
    pub status_ms: f64,
    /// `status` sent while [`QUEUED_ADDS`] route adds from as many clients
    /// are queued ahead of it, median ms (the daemon answers it before
    /// them).
    pub status_queued_ms: Option<f64>,
}

/// Route adds queued ahead of a `status` for `status_queued_ms`.
const QUEUED_ADDS: u32 = 10;

/// One churn rate.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnFigure {
    /// The rate asked for, changes per second.
    pub target_per_second: u32,
    /// The rate `ip -batch` achieved, changes per second.
    pub achieved_per_second: f64,
    /// Resyncs the daemon needed (0: it followed).
    pub resyncs: u64,
    /// Whether its table equalled the kernel's afterwards.
    pub consistent: bool,
    /// From the last change to the daemon's table equal to the kernel's, ms.
    pub catch_up_ms: f64,
    /// `status` while changes were queued, median ms.
    pub status_ms: Option<f64>,
}

/// What `tunl bench routes` reports.
#[derive(Debug, Clone, Serialize)]
pub struct RoutesReport {
    /// The start figures, one per size.
    pub start: Vec<StartFigure>,
    /// Routes in the kernel for latency and churn.
    pub base: usize,
    /// Kernel route added to LPM updated, per add, from the bench's add
    /// sent, ms.
    pub latency_ms: Vec<f64>,
    /// Its median, ms.
    pub latency_median_ms: Option<f64>,
    /// Its p99, ms.
    pub latency_p99_ms: Option<f64>,
    /// The same from the kernel's ack returned to the bench, ms: negative
    /// when the daemon had the route before the bench saw its own ack.
    pub latency_from_ack_ms: Vec<f64>,
    /// Its median, ms.
    pub latency_from_ack_median_ms: Option<f64>,
    /// Its p99, ms.
    pub latency_from_ack_p99_ms: Option<f64>,
    /// The churn rates tried.
    pub churn: Vec<ChurnFigure>,
    /// The highest achieved rate followed without a resync.
    pub churn_followed_per_second: Option<f64>,
    /// A start on a config of as many `[[route]]`s as the largest size
    /// instead: until every route is in the kernel, and the memory then.
    pub config_start: Option<LargeTable>,
}

fn measurement(what: impl std::fmt::Display) -> BenchError {
    BenchError::Measurement(format!("bench routes: {what}"))
}

/// Runs `tunl bench routes`: prints progress on stderr and the table on
/// stdout, writes `--json`. `tunl_binary` is what the daemon runs.
pub fn run_routes(args: &RoutesBenchArgs, tunl_binary: &Path) -> Result<RoutesReport, BenchError> {
    super::preflight(tunl_binary)?;
    let options = DaemonOptions {
        routes: false,
        log: "info".to_owned(),
        ..DaemonOptions::default()
    };
    let tc = TunlCluster::start(ClusterSpec::seed(), tunl_binary, options)
        .map_err(BenchError::topology("bench routes: starting the cluster"))?;
    // The device persists: the routes go onto it while tunl is stopped.
    let stopped = tc
        .stop(NODE)
        .map_err(BenchError::topology("bench routes: stopping tunl"))?;
    if !stopped.success() {
        return Err(measurement(format!("tunl exited with {stopped}")));
    }
    let via = tc
        .cluster()
        .nodes()
        .iter()
        .find(|n| n.name != NODE)
        .map(|n| n.underlay)
        .ok_or_else(|| measurement("no second node"))?;
    let bench = Bench {
        tc: &tc,
        binary: tunl_binary,
        via,
    };
    let mut loaded = 0;

    eprintln!("bench routes: latency and churn at {} routes", args.base);
    bench.load_blocks(loaded, args.base)?;
    loaded = args.base;
    let daemon = bench.start_daemon("base")?;
    let (latency_ms, churn) = {
        let latency = bench.latency(&daemon, args.adds);
        let churn = latency.and_then(|l| Ok((l, bench.churn(&daemon, args)?)));
        daemon.stop();
        churn?
    };

    let mut sizes = args.sizes.clone();
    sizes.sort_unstable();
    let mut start = Vec::new();
    for &n in &sizes {
        eprintln!("bench routes: start on {n} routes");
        if n < loaded {
            bench.flush_blocks()?;
            loaded = 0;
        }
        bench.load_blocks(loaded, n)?;
        loaded = n;
        start.push(bench.start_figure(n)?);
    }
    drop(tc);
    // The same number of routes from the config: tunl installs them itself.
    let config_start = match sizes.last() {
        Some(&n) => {
            eprintln!("bench routes: start on a config of {n} routes");
            Some(measure_large_table(tunl_binary, n)?)
        }
        None => None,
    };
    let followed = churn
        .iter()
        .filter(|c| c.resyncs == 0 && c.consistent)
        .map(|c| c.achieved_per_second)
        .fold(None, |best: Option<f64>, r| {
            Some(best.map_or(r, |b| b.max(r)))
        });
    let (latency_ms, latency_from_ack_ms): (Vec<f64>, Vec<f64>) = latency_ms.into_iter().unzip();
    let report = RoutesReport {
        start,
        base: args.base,
        latency_median_ms: median(&latency_ms),
        latency_p99_ms: percentile(&latency_ms, 99.0),
        latency_ms,
        latency_from_ack_median_ms: median(&latency_from_ack_ms),
        latency_from_ack_p99_ms: percentile(&latency_from_ack_ms, 99.0),
        latency_from_ack_ms,
        churn,
        churn_followed_per_second: followed,
        config_start,
    };
    print!("{}", format_routes_table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| measurement(format!("encoding JSON: {e}")))?;
        write_file(path, &text)?;
    }
    Ok(report)
}

/// The cluster, the binary, and the node the bench's routes go to.
struct Bench<'a> {
    tc: &'a TunlCluster,
    binary: &'a Path,
    via: Ipv4Addr,
}

/// A daemon the bench started.
struct Daemon<'a> {
    tc: &'a TunlCluster,
    pid: u32,
    log: PathBuf,
    socket: PathBuf,
}

impl Daemon<'_> {
    fn status(&self) -> Result<Status, BenchError> {
        Client::connect(&self.socket)
            .and_then(|mut c| c.call(&Request::Status {}))
            .map_err(|e| measurement(format!("status: {e}")))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(self) {
        let _ = self.tc.cluster().terminate(self.pid);
    }
}

impl<'a> Bench<'a> {
    fn ip_batch(&self, name: &str, commands: &str) -> Result<(), BenchError> {
        let file = self.tc.dir().join(format!("bench-{name}.batch"));
        write_file(&file, commands)?;
        self.tc
            .cluster()
            .exec_ok(NODE, &["ip", "-batch", &file.to_string_lossy()])
            .map_err(BenchError::topology(format!(
                "bench routes: ip -batch {name}"
            )))?;
        Ok(())
    }

    /// Puts /26 blocks `from..to` on the device (another program's routes).
    fn load_blocks(&self, from: usize, to: usize) -> Result<(), BenchError> {
        if to <= from {
            return Ok(());
        }
        let mut text = String::with_capacity((to - from) * 64);
        for i in from..to {
            let prefix = Ipv4Addr::from(u32::from(TABLE_BASE) + (i as u32) * 64);
            let _ = writeln!(
                text,
                "route add {prefix}/26 via {} dev tunl0 onlink proto {BENCH_PROTO}",
                self.via
            );
        }
        self.ip_batch("load", &text)
    }

    fn flush_blocks(&self) -> Result<(), BenchError> {
        self.tc
            .cluster()
            .exec_ok(NODE, &["ip", "route", "flush", "proto", BENCH_PROTO])
            .map_err(BenchError::topology("bench routes: flushing"))?;
        Ok(())
    }

    /// Routes on the device in the kernel.
    fn kernel_count(&self) -> Result<usize, BenchError> {
        let out = self
            .tc
            .cluster()
            .exec_ok(NODE, &["ip", "-o", "route", "show", "dev", "tunl0"])
            .map_err(BenchError::topology("bench routes: listing routes"))?;
        Ok(out.lines().count())
    }

    /// Starts tunl on the node with its config; returns once it spawned.
    fn start_daemon(&self, name: &str) -> Result<Daemon<'a>, BenchError> {
        let d = self
            .tc
            .daemon(NODE)
            .map_err(BenchError::topology("bench routes: the daemon's config"))?;
        let log = self.tc.dir().join(format!("bench-{name}.log"));
        let pid = self
            .tc
            .cluster()
            .spawn(
                NODE,
                &[
                    &self.binary.to_string_lossy(),
                    "--log",
                    "info",
                    "run",
                    "--config",
                    &d.config.to_string_lossy(),
                ],
                ProcessOutput::File(log.clone()),
            )
            .map_err(BenchError::topology("bench routes: starting tunl"))?;
        let daemon = Daemon {
            tc: self.tc,
            pid,
            log,
            socket: self.tc.control_socket(NODE),
        };
        Ok(daemon)
    }

    /// Waits until `daemon` has started (it serves its control socket only
    /// then: `stats`, which costs it nothing, answers) with at least
    /// `routes` routes loaded (its log says how many); returns when it had.
    /// `status`, which lists every route, is not used: building it would
    /// weigh on the memory measured next.
    fn wait_loaded(&self, daemon: &Daemon<'_>, routes: usize) -> Result<Instant, BenchError> {
        let started = Instant::now();
        loop {
            let up = Client::connect(&daemon.socket)
                .and_then(|mut c| c.call::<tunl::control::Stats>(&Request::Stats {}))
                .is_ok();
            if up {
                let now = Instant::now();
                let loaded = loaded_routes(&daemon.log()).ok_or_else(|| {
                    measurement(format!("no load line in the log:\n{}", daemon.log()))
                })?;
                if loaded < routes {
                    return Err(measurement(format!(
                        "tunl loaded {loaded} routes, not {routes}"
                    )));
                }
                return Ok(now);
            }
            let exited = self
                .tc
                .cluster()
                .try_wait(daemon.pid)
                .map_err(BenchError::topology("bench routes: waiting"))?;
            if let Some(status) = exited {
                return Err(measurement(format!(
                    "tunl exited ({status}):\n{}",
                    daemon.log()
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(measurement(format!(
                    "{routes} routes not loaded after {START_TIMEOUT:?}:\n{}",
                    daemon.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Starts tunl on `routes` kernel routes and measures it.
    fn start_figure(&self, routes: usize) -> Result<StartFigure, BenchError> {
        let spawned = Instant::now();
        let daemon = self.start_daemon(&format!("start-{routes}"))?;
        let result = self.measure_started(&daemon, routes, spawned);
        daemon.stop();
        result
    }

    fn measure_started(
        &self,
        daemon: &Daemon<'_>,
        routes: usize,
        spawned: Instant,
    ) -> Result<StartFigure, BenchError> {
        let ready = self.wait_loaded(daemon, routes)?;
        let ready_seconds = ready.duration_since(spawned).as_secs_f64();
        let dump_ms = log_field(&daemon.log(), "dump_ms=").and_then(|v| v.parse().ok());
        std::thread::sleep(Duration::from_millis(300));
        let rss = status_mib(daemon.pid, "VmRSS");
        let hwm = status_mib(daemon.pid, "VmHWM");
        let (Some(vm_rss_mib), Some(vm_hwm_mib)) = (rss, hwm) else {
            return Err(measurement(format!(
                "cannot read /proc/{}/status",
                daemon.pid
            )));
        };
        let mut adds = Vec::new();
        let mut statuses = Vec::new();
        for i in 0..10u32 {
            let prefix = format!(
                "{}/32",
                Ipv4Addr::from(u32::from(LATENCY_BASE) + 60_000 + i)
            )
            .parse()
            .map_err(|e| measurement(format!("prefix: {e}")))?;
            let t = Instant::now();
            let added: Result<tunl::control::RouteChange, _> = Client::connect(&daemon.socket)
                .and_then(|mut c| {
                    c.call(&Request::RouteAdd {
                        prefix,
                        via: self.via,
                    })
                });
            adds.push(t.elapsed().as_secs_f64() * 1e3);
            added.map_err(|e| measurement(format!("route add: {e}")))?;
            let t = Instant::now();
            daemon.status()?;
            statuses.push(t.elapsed().as_secs_f64() * 1e3);
            Client::connect(&daemon.socket)
                .and_then(|mut c| {
                    c.call::<tunl::control::RouteChange>(&Request::RouteDel { prefix })
                })
                .map_err(|e| measurement(format!("route del: {e}")))?;
        }
        let mut queued = Vec::new();
        for round in 0..5u32 {
            queued.push(self.status_behind_adds(daemon, round)?);
        }
        Ok(StartFigure {
            routes,
            ready_seconds,
            dump_ms,
            vm_rss_mib,
            vm_hwm_mib,
            route_add_ms: median(&adds).unwrap_or(f64::NAN),
            status_ms: median(&statuses).unwrap_or(f64::NAN),
            status_queued_ms: median(&queued),
        })
    }

    /// [`QUEUED_ADDS`] clients send a route add each at once, then `status`
    /// goes out: its time, ms. The adds are removed afterwards.
    fn status_behind_adds(&self, daemon: &Daemon<'_>, round: u32) -> Result<f64, BenchError> {
        let prefixes: Vec<ipnetwork::Ipv4Network> = (0..QUEUED_ADDS)
            .map(|i| {
                let a = Ipv4Addr::from(u32::from(LATENCY_BASE) + 61_000 + round * 64 + i);
                ipnetwork::Ipv4Network::new(a, 32).map_err(|e| measurement(format!("prefix: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(prefixes.len() + 1));
        let adders: Vec<_> = prefixes
            .iter()
            .map(|&prefix| {
                let (socket, via, barrier) = (daemon.socket.clone(), self.via, barrier.clone());
                std::thread::spawn(move || {
                    let client = Client::connect(&socket);
                    barrier.wait();
                    client.and_then(|mut c| {
                        c.call::<tunl::control::RouteChange>(&Request::RouteAdd { prefix, via })
                    })
                })
            })
            .collect();
        let mut client =
            Client::connect(&daemon.socket).map_err(|e| measurement(format!("status: {e}")))?;
        barrier.wait();
        // Let the adds reach the daemon first.
        std::thread::sleep(Duration::from_millis(1));
        let t = Instant::now();
        let status: Result<Status, _> = client.call(&Request::Status {});
        let took = t.elapsed().as_secs_f64() * 1e3;
        status.map_err(|e| measurement(format!("status: {e}")))?;
        for a in adders {
            a.join()
                .map_err(|_| measurement("a route add thread panicked"))?
                .map_err(|e| measurement(format!("route add: {e}")))?;
        }
        for prefix in prefixes {
            Client::connect(&daemon.socket)
                .and_then(|mut c| {
                    c.call::<tunl::control::RouteChange>(&Request::RouteDel { prefix })
                })
                .map_err(|e| measurement(format!("route del: {e}")))?;
        }
        Ok(took)
    }

    /// Kernel route added to LPM updated, per add: from the add sent and
    /// from its ack returned, ms.
    fn latency(&self, daemon: &Daemon<'_>, adds: usize) -> Result<Vec<(f64, f64)>, BenchError> {
        self.wait_loaded(daemon, 0)?;
        let netns = self
            .tc
            .cluster()
            .netns(NODE)
            .map_err(BenchError::topology("bench routes: the node's namespace"))?
            .to_owned();
        let via = self.via;
        let socket = daemon.socket.clone();
        in_netns(&netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| measurement(format!("runtime: {e}")))?;
            rt.block_on(latency_adds(&socket, via, adds))
        })
        .map_err(|e| measurement(format!("entering the node's namespace: {e}")))?
    }

    /// Tries each churn rate at the base table.
    fn churn(
        &self,
        daemon: &Daemon<'_>,
        args: &RoutesBenchArgs,
    ) -> Result<Vec<ChurnFigure>, BenchError> {
        let mut figures = Vec::new();
        for &rate in &args.churn_rates {
            eprintln!(
                "bench routes: churn at {rate}/s for {} s",
                args.churn_seconds
            );
            figures.push(self.churn_at(daemon, rate, args.churn_seconds)?);
        }
        Ok(figures)
    }

    fn churn_at(
        &self,
        daemon: &Daemon<'_>,
        rate: u32,
        seconds: u32,
    ) -> Result<ChurnFigure, BenchError> {
        let before = daemon.status()?.route_resyncs;
        let chunk = ((f64::from(rate) * CHURN_TICK.as_secs_f64()) as usize).max(1);
        let add: String = (0..chunk)
            .map(|i| {
                let host = Ipv4Addr::from(u32::from(CHURN_BASE) + i as u32);
                format!(
                    "route add {host}/32 via {} dev tunl0 onlink proto {BENCH_PROTO}\n",
                    self.via
                )
            })
            .collect();
        let del: String = (0..chunk)
            .map(|i| {
                let host = Ipv4Addr::from(u32::from(CHURN_BASE) + i as u32);
                format!("route del {host}/32 dev tunl0\n")
            })
            .collect();
        let ticks = (Duration::from_secs(u64::from(seconds)).as_secs_f64()
            / CHURN_TICK.as_secs_f64()) as u32;
        let started = Instant::now();
        let mut statuses = Vec::new();
        let mut changes = 0usize;
        for tick in 0..ticks {
            let batch = if tick % 2 == 0 { &add } else { &del };
            self.ip_batch("churn", batch)?;
            changes += chunk;
            if tick % 10 == 5 {
                let t = Instant::now();
                daemon.status()?;
                statuses.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let due = started + CHURN_TICK * (tick + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if ticks % 2 == 1 {
            // End on a delete: the table is the base again.
            self.ip_batch("churn", &del)?;
            changes += chunk;
        }
        let ended = Instant::now();
        let achieved = changes as f64 / ended.duration_since(started).as_secs_f64();
        let kernel = self.kernel_count()?;
        let deadline = ended + Duration::from_secs(30);
        let mut consistent = false;
        while Instant::now() < deadline {
            if daemon.status()?.routes == kernel {
                consistent = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let catch_up_ms = ended.elapsed().as_secs_f64() * 1e3;
        let resyncs = daemon.status()?.route_resyncs - before;
        Ok(ChurnFigure {
            target_per_second: rate,
            achieved_per_second: achieved,
            resyncs,
            consistent,
            catch_up_ms,
            status_ms: median(&statuses),
        })
    }
}

fn status_at(socket: &Path) -> Result<Status, BenchError> {
    Client::connect(socket)
        .and_then(|mut c| c.call(&Request::Status {}))
        .map_err(|e| measurement(format!("status: {e}")))
}

/// Adds `adds` /32s one at a time over netlink, in the node's namespace,
/// and returns, per add, the time from the request sent and from its ack
/// returned until the daemon stamped the LPM update, ms.
async fn latency_adds(
    socket: &Path,
    via: Ipv4Addr,
    adds: usize,
) -> Result<Vec<(f64, f64)>, BenchError> {
    let nl = tunl_io::netlink::Netlink::new().map_err(|e| measurement(format!("netlink: {e}")))?;
    let device = nl
        .link_index("tunl0")
        .await
        .map_err(measurement)?
        .ok_or_else(|| measurement("no tunl0"))?;
    let table = tunl_io::netlink::MAIN_TABLE;
    let protocol: u8 = 201;
    let mut out = Vec::with_capacity(adds);
    for i in 0..adds {
        let (updates, _) = {
            let s = status_at(socket)?;
            (s.route_updates, s.last_route_update_ns)
        };
        let prefix =
            ipnetwork::Ipv4Network::new(Ipv4Addr::from(u32::from(LATENCY_BASE) + i as u32), 32)
                .map_err(measurement)?;
        let sent = tunl::daemon::mirror::monotonic_ns();
        nl.add_route(prefix, via, device, protocol, table)
            .await
            .map_err(measurement)?;
        let acked = tunl::daemon::mirror::monotonic_ns();
        // Let the daemon take it in before asking (a status request at 10k
        // routes keeps its main loop busy for a while), then poll.
        std::thread::sleep(Duration::from_millis(3));
        let deadline = Instant::now() + Duration::from_secs(10);
        let stamped = loop {
            let s = status_at(socket)?;
            if s.route_updates > updates {
                break s.last_route_update_ns;
            }
            if Instant::now() > deadline {
                return Err(measurement(format!("{prefix} never reached the LPM")));
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let ms = |from: u64| (stamped as f64 - from as f64) / 1e6;
        out.push((ms(sent), ms(acked)));
    }
    for i in 0..adds {
        let prefix =
            ipnetwork::Ipv4Network::new(Ipv4Addr::from(u32::from(LATENCY_BASE) + i as u32), 32)
                .map_err(measurement)?;
        let _ = nl.del_route(prefix, device, protocol, table).await;
    }
    Ok(out)
}

/// The routes the daemon's log says it loaded at start (`routes=N` of its
/// "routes on the device loaded" line).
fn loaded_routes(log: &str) -> Option<usize> {
    log_field(log, "routes=")?.parse().ok()
}

/// A field of the daemon's "routes on the device loaded" log line.
fn log_field<'a>(log: &'a str, key: &str) -> Option<&'a str> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("routes on the device loaded"))?;
    let at = line.find(&format!(" {key}"))? + 1 + key.len();
    line[at..]
        .split_whitespace()
        .next()
        .map(|v| v.trim_matches('"'))
}

/// `value` with its unit, `-` when missing.
fn figure(value: Option<f64>, unit: &str) -> String {
    value.filter(|v| v.is_finite()).map_or_else(
        || "-".to_owned(),
        |v| format!("{} {unit}", super::format_number(v)),
    )
}

/// `RSS (peak) MiB`.
fn rss(rss_mib: f64, hwm_mib: f64) -> String {
    format!(
        "{} ({}) MiB",
        super::format_number(rss_mib),
        super::format_number(hwm_mib)
    )
}

/// The target column: `target` for the sizes the targets are set at, `-`
/// for the others.
fn target(applies: bool, target: &str) -> String {
    if applies { target } else { "-" }.to_owned()
}

/// The report as a text table: each figure beside its target.
pub fn format_routes_table(r: &RoutesReport) -> String {
    let mut rows: Vec<[String; 3]> = vec![["figure".into(), "value".into(), "target".into()]];
    for s in &r.start {
        let big = s.routes >= 100_000;
        rows.push([
            format!("start: {} kernel routes loaded (spawn to ready)", s.routes),
            figure(Some(s.ready_seconds), "s"),
            target(big, "<= 1 s"),
        ]);
        rows.push([
            "  of which the dump, as the daemon logs it".to_owned(),
            figure(s.dump_ms, "ms"),
            "-".into(),
        ]);
        rows.push([
            format!("  RSS with {} routes (peak)", s.routes),
            rss(s.vm_rss_mib, s.vm_hwm_mib),
            target(big, "<= 32 MiB"),
        ]);
        rows.push([
            format!("  route add over the control socket at {}", s.routes),
            figure(Some(s.route_add_ms), "ms"),
            target(big, "<= 5 ms"),
        ]);
        rows.push([
            format!("  status over the control socket at {}", s.routes),
            figure(Some(s.status_ms), "ms"),
            "-".into(),
        ]);
        rows.push([
            format!(
                "  status while {QUEUED_ADDS} route adds are queued, at {}",
                s.routes
            ),
            figure(s.status_queued_ms, "ms"),
            target(big, "<= 50 ms"),
        ]);
    }
    if let Some(c) = &r.config_start {
        let big = c.routes >= 100_000;
        rows.push([
            format!(
                "start: {} config routes installed (spawn to all in the kernel)",
                c.routes
            ),
            figure(Some(c.startup_seconds), "s"),
            target(big, "<= 1 s"),
        ]);
        rows.push([
            format!("  RSS with {} config routes (peak)", c.routes),
            rss(c.vm_rss_mib, c.vm_hwm_mib),
            target(big, "<= 32 MiB"),
        ]);
    }
    rows.push([
        format!(
            "latency: route added (ack returned) -> LPM, median ({} adds at {} routes)",
            r.latency_from_ack_ms.len(),
            r.base
        ),
        figure(r.latency_from_ack_median_ms, "ms"),
        "-".into(),
    ]);
    rows.push([
        "latency: route added (ack returned) -> LPM, p99".into(),
        figure(r.latency_from_ack_p99_ms, "ms"),
        "<= 5 ms".into(),
    ]);
    rows.push([
        "  the same from the add sent (with the kernel's add), median".into(),
        figure(r.latency_median_ms, "ms"),
        "-".into(),
    ]);
    rows.push([
        "  the same from the add sent, p99".into(),
        figure(r.latency_p99_ms, "ms"),
        "-".into(),
    ]);
    for c in &r.churn {
        rows.push([
            format!(
                "churn at {}/s: achieved, resyncs, caught up in",
                c.target_per_second
            ),
            format!(
                "{}/s, {}, {}",
                super::format_number(c.achieved_per_second),
                c.resyncs,
                if c.consistent {
                    figure(Some(c.catch_up_ms), "ms")
                } else {
                    "never".into()
                }
            ),
            "-".into(),
        ]);
        rows.push([
            "  status while changes are queued".into(),
            figure(c.status_ms, "ms"),
            "-".into(),
        ]);
    }
    rows.push([
        "churn: highest rate followed without a resync".into(),
        figure(r.churn_followed_per_second, "/s"),
        ">= 10000 /s".into(),
    ]);
    let mut widths = [0usize; 3];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tunl bench routes: the kernel's routes on tunl0 (another program's), node {NODE}"
    );
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - cell.chars().count();
            if c == 0 {
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(line, "{}{cell}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
        if i == 0 {
            let rule = widths.iter().sum::<usize>() + 4;
            let _ = writeln!(s, "{}", "-".repeat(rule));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_line_is_read() {
        let log = "2025 INFO tunl::daemon::lifecycle: routes on the device loaded from the kernel \
                   routes=100000 dumped=100003 table=254 dump_ms=132.5\n";
        assert_eq!(loaded_routes(log), Some(100_000));
        assert_eq!(log_field(log, "dump_ms="), Some("132.5"));
        assert_eq!(loaded_routes("nothing"), None);
    }

    #[test]
    fn the_table_puts_each_target_beside_its_figure() {
        let report = RoutesReport {
            start: vec![StartFigure {
                routes: 100_000,
                ready_seconds: 0.62,
                dump_ms: Some(140.0),
                vm_rss_mib: 24.5,
                vm_hwm_mib: 30.1,
                route_add_ms: 110.0,
                status_ms: 40.0,
                status_queued_ms: Some(12.5),
            }],
            base: 10_000,
            latency_ms: vec![0.1, 0.2, 0.3],
            latency_median_ms: Some(0.2),
            latency_p99_ms: Some(0.3),
            latency_from_ack_ms: vec![-0.01, 0.1, 0.2],
            latency_from_ack_median_ms: Some(0.1),
            latency_from_ack_p99_ms: Some(0.2),
            churn: vec![ChurnFigure {
                target_per_second: 10_000,
                achieved_per_second: 9800.0,
                resyncs: 0,
                consistent: true,
                catch_up_ms: 12.0,
                status_ms: Some(9.0),
            }],
            churn_followed_per_second: Some(9800.0),
            config_start: Some(LargeTable {
                routes: 100_000,
                vm_rss_mib: 28.0,
                vm_hwm_mib: 201.6,
                startup_seconds: 0.71,
            }),
        };
        let t = format_routes_table(&report);
        let line = |needle: &str| {
            t.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in\n{t}"))
                .to_owned()
        };
        let start = line("start: 100000 kernel routes");
        assert!(
            start.contains("0.620 s") && start.ends_with("<= 1 s"),
            "{t}"
        );
        assert!(line("RSS with 100000").contains("24.5 (30.1) MiB"), "{t}");
        assert!(line("RSS with 100000").ends_with("<= 32 MiB"), "{t}");
        assert!(
            line("route add over the control socket at 100000").ends_with("<= 5 ms"),
            "{t}"
        );
        let queued = line("status while 10 route adds are queued, at 100000");
        assert!(
            queued.contains("12.5 ms") && queued.ends_with("<= 50 ms"),
            "{t}"
        );
        assert!(
            line("(ack returned) -> LPM, p99").ends_with("<= 5 ms"),
            "{t}"
        );
        assert!(line("from the add sent, p99").contains("0.300 ms"), "{t}");
        assert!(line("highest rate").contains("9800 /s"), "{t}");
        let config = line("start: 100000 config routes installed");
        assert!(
            config.contains("0.710 s") && config.ends_with("<= 1 s"),
            "{t}"
        );
        let rss = line("RSS with 100000 config routes");
        assert!(
            rss.contains("28.0 (202) MiB") && rss.ends_with("<= 32 MiB"),
            "{t}"
        );
        assert!(
            line("churn at 10000/s").contains("9800/s, 0, 12.0 ms"),
            "{t}"
        );
    }
}
