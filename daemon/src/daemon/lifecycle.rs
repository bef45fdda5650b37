//! The daemon's life: the startup steps in order, the main loop, shutdown.

use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use tunl_io::netlink::Netlink;
use tunl_routing::RouteWriter;

use super::error::DaemonError;
use super::follow::{self, KernelFeed};
use super::mirror::{RouteMirror, RouteStats};
use super::neighbours::watch_neighbours;
use super::requests::{DeviceInfo, handle};
use super::routes::{KernelRoutes, NetlinkRoutes, RouteManager, wanted_routes};
use super::signals::{Asked, Signals};
use super::startup::{self, DataplaneParts};
use super::{privileges, reload};
use crate::config::Config;
use crate::control::{self, Call};
use crate::dataplane::{CounterSnapshot, Router, Shared};
use crate::metrics::MetricsSource;

/// Runs the daemon on `config` until SIGINT or SIGTERM, or until the
/// dataplane fails.
pub(super) async fn run(config: Config) -> Result<(), DaemonError> {
    let signals = Signals::catch()?;
    let user = startup::look_up_user(&config)?;
    let netlink = startup::open_netlink()?;
    let _lock = startup::lock_device(&config)?;
    let existing = startup::check_device(&netlink, &config).await?;
    // Before anything is created: a second daemon on the same socket stops
    // without touching the device or the routes.
    let (listener, _socket_file) = startup::bind_control(&config)?;
    let underlay = startup::find_underlay(&netlink, &config).await?;
    let mtu = startup::tunnel_mtu(&config, underlay.as_ref())?;
    let device = startup::create_device(&netlink, &config, mtu, existing).await?;
    let offload = device.tun.offload();
    let ifindex = device.ifindex;
    let receivers = startup::open_receivers(&config)?;

    let shared = Arc::new(Shared::new(startup::policy_for(&config, mtu)));
    let writer = RouteWriter::new();
    let reader = writer.reader();
    // Subscribe first, then dump: no change falls between the two.
    let mut feed = KernelFeed::start(config.routing.listen_buffer)?;
    let mut mirror = RouteMirror::new(config.routing.table, ifindex, writer, shared.clone());
    let loaded = follow::load(&mut mirror).await?;
    if loaded > 0 {
        info!(
            routes = mirror.len(),
            table = config.routing.table,
            "routes already on the device loaded from the kernel"
        );
    }
    let kernel = NetlinkRoutes::new(netlink.clone(), ifindex, config.routing.table);
    let mut routes = RouteManager::new(mirror, kernel);
    routes.remove_stale(&wanted_routes(&config)).await;
    let metrics_listener = startup::bind_metrics(&config).await?;

    let packet_tx = startup::packet_tx_device(&config, underlay.as_ref());
    let parts = DataplaneParts {
        device,
        receivers,
        routes: &reader,
        shared: shared.clone(),
        mtu,
        packet_tx,
    };
    let router = startup::start_dataplane(&config, user.as_ref(), parts)?;
    let mut running = Running {
        router,
        routes,
        netlink: netlink.clone(),
        name: config.tunnel.name.clone(),
        persist: config.tunnel.persist,
    };
    if let Err(e) = running.finish_start(&config).await {
        running.stop().await;
        return Err(e);
    }
    if let Err(e) = feed.drop_capabilities() {
        running.stop().await;
        return Err(e);
    }
    let device = DeviceInfo {
        name: config.tunnel.name.clone(),
        mtu,
        local: config.tunnel.local,
        address: config.tunnel.address,
        workers: running.router.workers(),
    };
    log_up(&config, &device, offload);

    let (calls_tx, calls) = mpsc::channel(16);
    let tasks = Tasks::spawn(
        listener,
        calls_tx,
        metrics_listener,
        packet_tx,
        &shared,
        running.routes.stats(),
        device.workers,
    );
    let mut config = config;
    let served = serve(
        signals,
        &mut config,
        &mut running.routes,
        &mut feed,
        calls,
        &device,
    )
    .await;
    tasks.abort();
    running.stop().await;
    match shared.failure() {
        Some(reason) => Err(DaemonError::DataplaneStopped { reason }),
        None => served,
    }
}

/// The main loop: signals, control requests one at a time, the kernel's
/// route changes in batches, and the dataplane's failure, until a stop.
async fn serve<K: KernelRoutes>(
    mut signals: Signals,
    config: &mut Config,
    routes: &mut RouteManager<K>,
    feed: &mut KernelFeed,
    mut calls: mpsc::Receiver<Call>,
    device: &DeviceInfo,
) -> Result<(), DaemonError> {
    let shared = routes.shared().clone();
    loop {
        tokio::select! {
            asked = signals.next() => match asked {
                Asked::Stop(signal) => {
                    info!("{signal}: stopping");
                    return Ok(());
                }
                Asked::Reload => reload::reload(config, routes).await,
            },
            reason = shared.failed() => return Err(DaemonError::DataplaneStopped { reason }),
            Some(call) = calls.recv() => {
                let response = handle(call.request, config, routes, device).await;
                let _ = call.reply.send(response);
            }
            () = feed.recv() => {
                let why = feed.apply(routes.mirror_mut());
                follow::resync(feed, routes.mirror_mut(), why).await;
            }
        }
    }
}

fn log_up(config: &Config, device: &DeviceInfo, offload: bool) {
    info!(
        device = %device.name,
        local = %device.local,
        mtu = device.mtu,
        address = ?device.address.map(|a| a.to_string()),
        ttl = %config.tunnel.ttl,
        blocks = ?config.tunnel.blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        routes = config.routes.len(),
        workers = device.workers,
        offload,
        control = %config.control.socket.display(),
        metrics = ?config.metrics.listen.map(|a| a.to_string()),
        capabilities = ?privileges::effective(),
        "tunl is up"
    );
}

/// The control plane's tasks beside the main loop: the control socket's
/// accept loop, the metrics endpoint, the neighbour watcher.
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn spawn(
        control: UnixListener,
        calls: mpsc::Sender<Call>,
        metrics: Option<TcpListener>,
        packet_tx: Option<u32>,
        shared: &Arc<Shared>,
        route_stats: Arc<RouteStats>,
        workers: usize,
    ) -> Tasks {
        let mut tasks = vec![
            tokio::spawn(control::accept_loop(control, calls)),
            // Learned path MTUs: applied and pruned here, off the workers.
            tokio::spawn(crate::dataplane::maintain_path_mtu(shared.clone())),
        ];
        if let Some(listener) = metrics {
            let source = MetricsSource {
                shared: shared.clone(),
                routes: route_stats,
                workers,
            };
            tasks.push(tokio::spawn(crate::metrics::serve(
                listener,
                Arc::new(source),
            )));
        }
        // Its own netlink connection: the kernel runs one dump per socket at
        // a time, and route changes must not meet a neighbour dump in
        // progress.
        if let Some(ifindex) = packet_tx {
            match Netlink::new() {
                Ok(nl) => tasks.push(tokio::spawn(watch_neighbours(nl, ifindex, shared.clone()))),
                Err(e) => {
                    warn!(error = %e, "cannot open netlink for the neighbour table; packet_tx sends through the raw socket");
                }
            }
        }
        Tasks(tasks)
    }

    fn abort(self) {
        for task in self.0 {
            task.abort();
        }
    }
}

/// What stopping takes down: tunl's routes, the dataplane, the device
/// unless it persists.
struct Running {
    router: Router,
    routes: RouteManager<NetlinkRoutes>,
    netlink: Netlink,
    name: String,
    /// `tunnel.persist`: keep the device (and the routes others installed
    /// on it) at exit.
    persist: bool,
}

impl Running {
    /// The last steps of the start: the control plane keeps only
    /// CAP_NET_ADMIN, then the config's routes go in.
    async fn finish_start(&mut self, config: &Config) -> Result<(), DaemonError> {
        privileges::keep_control_plane_only()?;
        self.routes.apply(&wanted_routes(config)).await?;
        Ok(())
    }

    /// Removes tunl's own routes (the kernel stops sending into the device
    /// for them), stops the workers, deletes the device unless it persists
    /// and logs the counters. Routes others installed are never removed:
    /// with a persistent device they stay in the kernel for the next start,
    /// and without one the kernel drops them with the device.
    async fn stop(mut self) {
        self.routes.remove_all().await;
        let shared = self.router.shared().clone();
        self.router.stop();
        if self.persist {
            let others = self.routes.mirror().len();
            info!(device = %self.name, routes = others, "device kept (tunnel.persist) with the routes others installed on it");
        } else if let Err(e) = self.netlink.delete_link(&self.name).await {
            warn!(device = %self.name, error = %e, "cannot remove the device");
        }
        log_counters(&shared.counters());
    }
}

fn log_counters(c: &CounterSnapshot) {
    info!(
        "counters at exit: {} drops={}",
        c.to_line(),
        c.total_drops()
    );
    for (reason, n) in c.drops_by_reason().filter(|(_, n)| *n > 0) {
        info!(reason = reason.as_str(), packets = n, "dropped");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::atomic::Ordering;

    use tunl_encap::TunnelSettings;

    use super::*;
    use crate::dataplane::Policy;

    #[test]
    fn a_dataplane_failure_reaches_the_main_loop_over_the_channel() {
        let shared = Arc::new(Shared::new(Policy {
            settings: TunnelSettings::new(Ipv4Addr::new(172, 16, 35, 4)),
            vias: Vec::new(),
            multipath: Default::default(),
            allow: Vec::new(),
            blocks: Vec::new(),
            allow_nested: false,
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let worker_shared = shared.clone();
        let reason = rt.block_on(async {
            // A worker thread fails while the main loop waits.
            let worker = std::thread::spawn(move || {
                worker_shared.fail("TUN read failed: gone".to_owned());
                worker_shared.fail("a second failure".to_owned());
            });
            let reason = shared.failed().await;
            worker.join().unwrap();
            reason
        });
        assert_eq!(reason, "TUN read failed: gone");
        assert!(
            shared.stop.load(Ordering::Relaxed),
            "the workers are told to stop"
        );
        assert_eq!(shared.failure().as_deref(), Some("TUN read failed: gone"));
        // A failure before the loop waits (during setup) is not lost.
        assert_eq!(rt.block_on(shared.failed()), "TUN read failed: gone");
    }
}
