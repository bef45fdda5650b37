//! The daemon's life: the startup steps in order, the main loop, shutdown.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use tunl_io::netlink::Netlink;

use super::BuildInfo;
use super::error::DaemonError;
use super::follow::{self, KernelFeed};
use super::mirror::RouteMirror;
use super::neighbours::watch_neighbours;
use super::notify::Notifier;
use super::requests::{DeviceInfo, handle};
use super::routes::{KernelRoutes, NetlinkRoutes, RouteManager, RouteOrigin, wanted_routes};
use super::signals::{Asked, Signals};
use super::startup::{self, DataplaneParts};
use super::watch::{LinkEvent, Seen, Watched, watch_links};
use super::{privileges, reload, underlay};
use crate::config::Config;
use crate::control::{self, Call};
use crate::dataplane::{CounterSnapshot, Dataplane, DataplaneXdp, Shared};
use crate::metrics::{DeviceLabels, MetricsSource, XdpReaders};
use tunl_io::xdp::{XdpLink, XdpProgram};

/// Runs the daemon on `config` until SIGINT or SIGTERM, or until the
/// dataplane fails.
pub(super) async fn run(
    config: Config,
    build: BuildInfo,
    started: SystemTime,
) -> Result<(), DaemonError> {
    let signals = Signals::catch()?;
    let notifier = Notifier::from_env();
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
    // Subscribe first, then dump: no change falls between the two.
    let mut feed = KernelFeed::start(config.routing.listen_buffer)?;
    let mut mirror = RouteMirror::new(config.routing.table, ifindex, shared.clone());
    let dump_started = std::time::Instant::now();
    let dumped = follow::load(&mut mirror, &Default::default()).await?;
    info!(
        routes = mirror.len(),
        dumped,
        table = config.routing.table,
        dump_ms = %format!("{:.1}", dump_started.elapsed().as_secs_f64() * 1e3),
        "routes on the device loaded from the kernel"
    );
    let reader = mirror.reader();
    let kernel = NetlinkRoutes::new(netlink.clone(), ifindex, config.routing.table);
    let mut routes = RouteManager::new(mirror, kernel);
    routes.remove_stale(&wanted_routes(&config)).await;
    let metrics_listener = startup::bind_metrics(&config).await?;

    // Still privileged: the XDP program and its sockets are set up here.
    let selected = underlay::select(&config, underlay.as_ref(), config.dataplane.workers);
    let packet_tx = selected.packet_ifindex;
    let underlay_status = selected.status.clone();
    let (xdp, attachment, xdp_readers) = match selected.xdp {
        Some(setup) => {
            let readers = XdpReaders {
                program: setup.program.stats_reader(),
                sockets: setup.sockets.iter().map(|s| s.stats_reader()).collect(),
            };
            let xdp = DataplaneXdp {
                sockets: setup.sockets,
                src_mac: setup.src_mac,
            };
            (Some(xdp), Some((setup.program, setup.link)), Some(readers))
        }
        None => (None, None, None),
    };
    let parts = DataplaneParts {
        device,
        receivers,
        routes: &reader,
        shared: shared.clone(),
        mtu,
        packet_tx,
        xdp,
    };
    let dataplane = startup::start_dataplane(&config, user.as_ref(), parts)?;
    let mut running = Running {
        dataplane,
        routes,
        netlink: netlink.clone(),
        name: config.tunnel.name.clone(),
        persist: config.tunnel.persist,
        xdp: attachment,
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
        workers: running.dataplane.workers(),
        underlay: underlay_status,
        build,
        started,
    };
    // Reading a large config and installing its routes allocated far
    // more than the daemon keeps (100k routes: ~200 MiB at the peak); give
    // it back instead of carrying it as RSS.
    // The route changes queued meanwhile are applied next; the feed
    // trims again once it has caught up with them (`follow`).
    tunl_io::memory::release_free_memory();
    log_up(&config, &device, offload);

    let (calls_tx, calls) = mpsc::channel(16);
    let (links_tx, links) = mpsc::channel(4);
    let watch = LinkWatcher {
        watched: Watched {
            local: config.tunnel.local,
            tunnel: running.routes.tunnel_device(),
            tunnel_name: config.tunnel.name.clone(),
        },
        seen: Seen::at_start(underlay.as_ref().map(|u| (u.ifindex, u.name.clone()))),
        events: links_tx,
    };
    let metrics = metrics_listener.map(|listener| {
        let source = MetricsSource {
            shared: shared.clone(),
            routes: running.routes.stats(),
            route_apply: running.routes.apply_metrics(),
            workers: device.workers,
            device: DeviceLabels {
                name: device.name.clone(),
                local: device.local,
                mtu: device.mtu,
            },
            underlay: device.underlay.clone(),
            xdp: xdp_readers,
        };
        (listener, source)
    });
    let tasks = Tasks::spawn(listener, calls_tx, metrics, packet_tx, watch, &shared);
    notifier.ready(&format!(
        "routing {} routes on {}",
        running.routes.mirror().len(),
        device.name
    ));
    let mut config = config;
    let served = serve(
        signals,
        &mut config,
        &mut running.routes,
        &mut feed,
        (calls, links),
        &device,
    )
    .await;
    notifier.stopping(if running.persist {
        "removing tunl's routes (the device stays: tunnel.persist)"
    } else {
        "removing the routes and the device"
    });
    tasks.abort();
    running.stop().await;
    match shared.failure() {
        Some(reason) => Err(DaemonError::DataplaneStopped { reason }),
        None => served,
    }
}

/// The main loop: signals, control requests one at a time, the kernel's
/// route changes in batches, the link watcher's events, and the
/// dataplane's failure, until a stop.
async fn serve<K: KernelRoutes>(
    mut signals: Signals,
    config: &mut Config,
    routes: &mut RouteManager<K>,
    feed: &mut KernelFeed,
    (calls, mut links): (mpsc::Receiver<Call>, mpsc::Receiver<LinkEvent>),
    device: &DeviceInfo,
) -> Result<(), DaemonError> {
    let shared = routes.shared().clone();
    let mut calls = CallQueue::new(calls);
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
            Some(call) = calls.next() => {
                let request = call.request.to_string();
                let response = handle(call.request, config, routes, device).await;
                if let Some(error) = &response.error {
                    debug!(%request, %error, "control request refused");
                }
                let _ = call.reply.send(response);
            }
            () = feed.recv() => {
                let why = feed.apply(routes.mirror_mut());
                let (mirror, own) = routes.mirror_and_own();
                follow::resync(feed, mirror, own, why).await;
            }
            Some(LinkEvent::TunnelUp) = links.recv() => {
                let n = routes.reinstall().await;
                info!(device = %device.name, routes = n, "routes put back on the tunnel device");
            }
        }
    }
}

/// The control requests in the order they are answered: one that only
/// reads (`status`, `stats`, `route_list`) before the route changes queued
/// ahead of it, which keep their order. So `status` waits for at most the
/// one change in progress, never behind a queue of them. (Each connection
/// sends its next request after the reply to the last, so no client sees
/// its own requests reordered.)
struct CallQueue {
    incoming: mpsc::Receiver<Call>,
    changes: std::collections::VecDeque<Call>,
}

impl CallQueue {
    fn new(incoming: mpsc::Receiver<Call>) -> Self {
        CallQueue {
            incoming,
            changes: std::collections::VecDeque::new(),
        }
    }

    /// Whether answering `request` changes nothing.
    fn reads_only(request: &control::Request) -> bool {
        matches!(
            request,
            control::Request::Status {}
                | control::Request::Stats {}
                | control::Request::RouteList {}
        )
    }

    /// The next request to answer; `None` once the control socket's
    /// accept loop is gone and nothing is queued. Cancel-safe: a call taken
    /// in stays queued here.
    async fn next(&mut self) -> Option<Call> {
        while let Ok(call) = self.incoming.try_recv() {
            if Self::reads_only(&call.request) {
                return Some(call);
            }
            self.changes.push_back(call);
        }
        if let Some(call) = self.changes.pop_front() {
            return Some(call);
        }
        self.incoming.recv().await
    }
}

fn log_up(config: &Config, device: &DeviceInfo, offload: bool) {
    info!(
        device = %device.name,
        local = %device.local,
        mtu = device.mtu,
        address = %or_none(device.address),
        ttl = %config.tunnel.ttl,
        blocks = %list(&config.tunnel.blocks),
        routes = config.routes.len(),
        workers = device.workers,
        offload,
        version = %device.build.version,
        commit = %device.build.commit,
        control = %config.control.socket.display(),
        metrics = %or_none(config.metrics.listen),
        underlay = %device.underlay.running,
        capabilities = %list(&privileges::effective()),
        "tunl is up"
    );
}

/// A value for the log, `none` when absent.
pub(super) fn or_none<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// A list for the log: `a,b,c`, `none` when empty.
pub(super) fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What the link watcher starts from.
struct LinkWatcher {
    watched: Watched,
    seen: Seen,
    events: mpsc::Sender<LinkEvent>,
}

/// The control plane's tasks beside the main loop: the control socket's
/// accept loop, the metrics endpoint, the neighbour and link watchers.
struct Tasks(Vec<JoinHandle<()>>);

impl Tasks {
    fn spawn(
        control: UnixListener,
        calls: mpsc::Sender<Call>,
        metrics: Option<(TcpListener, MetricsSource)>,
        packet_tx: Option<u32>,
        links: LinkWatcher,
        shared: &Arc<Shared>,
    ) -> Tasks {
        let mut tasks = vec![
            tokio::spawn(control::accept_loop(control, calls)),
            // Learned path MTUs: applied and pruned here, off the workers.
            tokio::spawn(crate::dataplane::maintain_path_mtu(shared.clone())),
        ];
        // Its own connections (a listener that only receives, and one for
        // its dumps), as the neighbour watcher has.
        match tunl_io::watch::LinkWatch::open() {
            Ok(watch) => tasks.push(tokio::spawn(watch_links(
                watch,
                links.watched,
                links.seen,
                shared.clone(),
                links.events,
            ))),
            Err(e) => {
                warn!(error = %e, "cannot watch links over netlink; changes of the underlay and the device go unnoticed");
            }
        }
        if let Some((listener, source)) = metrics {
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
                    warn!(error = %e, "cannot open netlink for the neighbour table; outer packets take the raw socket");
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
    dataplane: Dataplane,
    routes: RouteManager<NetlinkRoutes>,
    netlink: Netlink,
    name: String,
    /// `tunnel.persist`: keep the device (and the routes others installed
    /// on it) at exit.
    persist: bool,
    /// The XDP program and its attachment, detached when this goes (after
    /// the workers and their sockets stopped).
    xdp: Option<(XdpProgram, XdpLink)>,
}

impl Running {
    /// The last steps of the start: the control plane keeps only
    /// CAP_NET_ADMIN, then the config's routes go in.
    async fn finish_start(&mut self, config: &Config) -> Result<(), DaemonError> {
        privileges::keep_control_plane_only()?;
        self.routes
            .apply(&wanted_routes(config), RouteOrigin::Config)
            .await?;
        Ok(())
    }

    /// Removes tunl's own routes (the kernel stops sending into the device
    /// for them), stops the workers, deletes the device unless it persists
    /// and logs the counters. Routes others installed are never removed:
    /// with a persistent device they stay in the kernel for the next start,
    /// and without one the kernel drops them with the device.
    async fn stop(mut self) {
        self.routes.remove_all().await;
        let shared = self.dataplane.shared().clone();
        self.dataplane.stop();
        // Detach: the device's frames go up the stack again.
        drop(self.xdp.take());
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
    fn log_values_are_for_people() {
        assert_eq!(or_none(None::<u16>), "none");
        assert_eq!(or_none(Some(Ipv4Addr::new(10, 20, 42, 0))), "10.20.42.0");
        assert_eq!(list::<String>(&[]), "none");
        assert_eq!(
            list(&["cap_net_admin", "cap_net_raw"]),
            "cap_net_admin,cap_net_raw"
        );
    }

    #[test]
    fn a_dataplane_failure_reaches_the_main_loop_over_the_channel() {
        let shared = Arc::new(Shared::new(Policy {
            settings: TunnelSettings::new(Ipv4Addr::new(172, 16, 35, 4)),
            vias: Vec::new(),
            multipath: Default::default(),
            allow: Vec::new(),
            blocks: Vec::new(),
            allow_nested: false,
            strict_source: false,
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

#[cfg(test)]
mod call_queue_tests {
    use tokio::sync::oneshot;

    use super::*;
    use crate::control::Request;

    fn call(request: Request) -> (Call, oneshot::Receiver<crate::control::Response>) {
        let (reply, rx) = oneshot::channel();
        (Call { request, reply }, rx)
    }

    #[test]
    fn status_is_answered_before_route_changes_queued_ahead_of_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = mpsc::channel(16);
            let mut q = CallQueue::new(rx);
            let add = |i: u8| Request::RouteAdd {
                prefix: format!("10.20.{i}.0/26").parse().unwrap(),
                via: std::net::Ipv4Addr::new(172, 16, 36, 5),
            };
            let mut keep = Vec::new();
            for r in [
                add(1),
                add(2),
                Request::Status {},
                add(3),
                Request::Stats {},
            ] {
                let (c, rx) = call(r);
                tx.send(c).await.unwrap();
                keep.push(rx);
            }
            let mut order = Vec::new();
            for _ in 0..5 {
                order.push(q.next().await.unwrap().request);
            }
            assert_eq!(
                order,
                vec![
                    Request::Status {},
                    Request::Stats {},
                    add(1),
                    add(2),
                    add(3)
                ]
            );
            // A read that comes while changes wait goes first too.
            let (c, _r1) = call(add(4));
            tx.send(c).await.unwrap();
            let (c, _r2) = call(add(5));
            tx.send(c).await.unwrap();
            assert_eq!(q.next().await.unwrap().request, add(4));
            let (c, _r3) = call(Request::RouteList {});
            tx.send(c).await.unwrap();
            assert_eq!(q.next().await.unwrap().request, Request::RouteList {});
            assert_eq!(q.next().await.unwrap().request, add(5));
            drop(tx);
            assert!(q.next().await.is_none());
        });
    }
}
