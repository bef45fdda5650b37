//! `tunl run`: the standalone tunnel daemon's lifecycle.
//!
//! Start: validate the config, create the TUN device (MTU, address, up), open
//! the raw sockets, install `BLOCK via NODE dev tunl0 onlink proto 116` for
//! every route, start the dataplane. SIGHUP re-reads the config and applies
//! its routes and policy (ttl, tos_inherit, pmtudisc, blocks, allow,
//! allow_nested); SIGINT/SIGTERM remove the routes and the device and log
//! the counters.
//!
//! The control socket (`[control] socket`) is bound before anything is
//! created, so a second daemon pointed at the same socket exits before it
//! touches the device or the routes. Requests on
//! it are handled one at a time by the main loop, which owns the
//! [`RouteManager`]. Privileges are dropped once the device and sockets are
//! open (see [`crate::daemon::privileges`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use tunl_io::netlink::Netlink;
use tunl_io::{IcmpReceiver, IpipReceiver, Tun, TunConfig};
use tunl_routing::{RouteOp, RouteWriter};

use crate::config::{Config, ConfigError, RouteEntry};
use crate::control::{self, Call, Request, Response, RouteChange};
use crate::metrics::MetricsSource;
pub mod privileges;

use crate::dataplane::{CounterSnapshot, Policy, Router, RouterIo, Shared, WorkerOptions};

/// The routing protocol number tunl tags its kernel routes with
/// (`ip route show proto 116`), so it can find and remove its own routes.
pub const ROUTE_PROTOCOL: u8 = 116;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Setting up the device, sockets or routes failed (exit code 1).
    #[error("{0}")]
    Setup(String),
    /// A route change failed and was rolled back (exit code 1).
    #[error("{0}")]
    Route(String),
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) => 2,
            DaemonError::Setup(_) | DaemonError::Route(_) => 1,
        }
    }
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DaemonError + '_ {
    move |e| DaemonError::Setup(format!("{what}: {e}"))
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(config_path: &Path) -> Result<(), DaemonError> {
    let config = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(setup("cannot start the control-plane runtime"))?;
    rt.block_on(run_async(config))
}

/// Keeps the kernel's routes and the dataplane's LPM table in step.
pub struct RouteManager {
    writer: RouteWriter<Ipv4Addr>,
    netlink: Netlink,
    ifindex: u32,
    shared: Arc<Shared>,
    count: Arc<AtomicUsize>,
}

impl RouteManager {
    /// Current routes, block to next hop.
    pub fn routes(&self) -> BTreeMap<Ipv4Network, Ipv4Addr> {
        self.writer.snapshot().into_iter().collect()
    }

    /// Makes the route set equal to `wanted`, all or nothing: the dataplane
    /// learns new routes before the kernel sends packets for them, and forgets
    /// old ones after the kernel stopped. Unchanged routes are not touched, so
    /// they carry packets throughout. When the kernel refuses a change, the
    /// changes made so far are undone (kernel and LPM) and the error returned.
    pub async fn apply(
        &mut self,
        wanted: &BTreeMap<Ipv4Network, Ipv4Addr>,
    ) -> Result<RouteChange, DaemonError> {
        let current = self.routes();
        let added: Vec<(Ipv4Network, Ipv4Addr)> = wanted
            .iter()
            .filter(|(p, v)| current.get(p) != Some(v))
            .map(|(p, v)| (*p, *v))
            .collect();
        let removed: Vec<Ipv4Network> = current
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        let change = RouteChange {
            added: added
                .iter()
                .map(|(prefix, via)| control::Route {
                    prefix: *prefix,
                    via: *via,
                })
                .collect(),
            removed: removed.clone(),
            unchanged: wanted.len() - added.len(),
        };
        if added.is_empty() && removed.is_empty() {
            return Ok(change);
        }
        let new = |p: &Ipv4Network| !current.contains_key(p) && wanted.contains_key(p);
        let held = if added.iter().any(|(p, _)| new(p)) {
            routed_by_another_instance(&self.netlink, self.ifindex, new)
                .await
                .map_err(|e| {
                    DaemonError::Route(format!(
                        "cannot check that no other tunl instance routes these prefixes: {e}; \
                         nothing was changed"
                    ))
                })?
        } else {
            None
        };
        if let Some((prefix, device)) = held {
            return Err(DaemonError::Route(format!(
                "route {prefix} is already installed by tunl on the TUN device {device} \
                 (another tunl instance?); stop it or remove the route from one of them; \
                 nothing was changed"
            )));
        }
        self.update_policy_vias(current.values().chain(wanted.values()).copied());
        self.writer
            .apply(added.iter().map(|(p, v)| RouteOp::Insert(*p, *v)));
        let mut installed = Vec::new();
        let mut failure = None;
        for (prefix, via) in &added {
            match self
                .netlink
                .add_route(*prefix, *via, self.ifindex, ROUTE_PROTOCOL)
                .await
            {
                Ok(()) => {
                    info!(%prefix, %via, "route installed");
                    installed.push(*prefix);
                }
                Err(e) => {
                    failure = Some(format!("cannot install route {prefix} via {via}: {e}"));
                    break;
                }
            }
        }
        let mut deleted = Vec::new();
        if failure.is_none() {
            for prefix in &removed {
                match self
                    .netlink
                    .del_route(*prefix, self.ifindex, ROUTE_PROTOCOL)
                    .await
                {
                    Ok(()) => {
                        info!(%prefix, "route removed");
                        deleted.push(*prefix);
                    }
                    Err(e) => {
                        failure = Some(format!("cannot remove route {prefix}: {e}"));
                        break;
                    }
                }
            }
        }
        if let Some(message) = failure {
            self.roll_back(&current, &added, &installed, &deleted).await;
            return Err(DaemonError::Route(format!(
                "{message}; nothing was changed"
            )));
        }
        self.writer
            .apply(removed.iter().map(|p| RouteOp::Remove(*p)));
        self.update_policy_vias(wanted.values().copied());
        self.count.store(wanted.len(), Ordering::Relaxed);
        Ok(change)
    }

    /// Undoes a partly applied change: kernel routes first, then the LPM.
    async fn roll_back(
        &mut self,
        before: &BTreeMap<Ipv4Network, Ipv4Addr>,
        added: &[(Ipv4Network, Ipv4Addr)],
        installed: &[Ipv4Network],
        deleted: &[Ipv4Network],
    ) {
        for prefix in deleted.iter().chain(installed) {
            let result = match before.get(prefix) {
                Some(via) => {
                    self.netlink
                        .add_route(*prefix, *via, self.ifindex, ROUTE_PROTOCOL)
                        .await
                }
                None => {
                    self.netlink
                        .del_route(*prefix, self.ifindex, ROUTE_PROTOCOL)
                        .await
                }
            };
            if let Err(e) = result {
                error!(%prefix, error = %e, "cannot roll back a kernel route");
            }
        }
        self.writer
            .apply(added.iter().map(|(p, _)| match before.get(p) {
                Some(via) => RouteOp::Insert(*p, *via),
                None => RouteOp::Remove(*p),
            }));
        self.update_policy_vias(before.values().copied());
        warn!("route change rolled back");
    }

    fn update_policy_vias(&self, vias: impl Iterator<Item = Ipv4Addr>) {
        let mut policy = Policy::clone(&self.shared.policy.load());
        policy.set_vias(vias);
        self.shared.policy.store(Arc::new(policy));
    }

    /// Removes every kernel route this instance installed.
    pub async fn remove_all(&mut self) {
        for (prefix, _) in self.writer.snapshot() {
            if let Err(e) = self
                .netlink
                .del_route(prefix, self.ifindex, ROUTE_PROTOCOL)
                .await
            {
                warn!(%prefix, error = %e, "cannot remove kernel route");
            }
        }
        self.writer.replace_all(std::iter::empty());
        self.count.store(0, Ordering::Relaxed);
    }
}

fn wanted_routes(config: &Config) -> BTreeMap<Ipv4Network, Ipv4Addr> {
    config.routes.iter().map(|r| (r.prefix, r.via)).collect()
}

fn policy_for(config: &Config, mtu: u16) -> Policy {
    let mut policy = Policy {
        settings: config.tunnel_settings(mtu),
        vias: Vec::new(),
        allow: config.security.allow.clone(),
        blocks: config.tunnel.blocks.clone(),
        allow_nested: config.security.allow_nested,
    };
    policy.set_vias(config.routes.iter().map(|r| r.via));
    policy
}

/// The control socket file, removed when the daemon stops.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Best effort: after a user switch the folder may not be writable.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What `status` reports that does not change at runtime.
struct Device {
    name: String,
    mtu: u16,
    local: Ipv4Addr,
    address: Option<Ipv4Network>,
    workers: usize,
}

async fn run_async(config: Config) -> Result<(), DaemonError> {
    let signals = Signals::catch()?;
    let netlink = Netlink::new().map_err(setup("cannot open netlink"))?;
    let name = config.tunnel.name.clone();
    let local = config.tunnel.local;

    if netlink
        .link_index(&name)
        .await
        .map_err(setup("netlink"))?
        .is_some()
    {
        return Err(DaemonError::Setup(format!(
            "device {name} already exists: another tunl instance (or the kernel's ipip driver) holds it; \
             stop it, or set another [tunnel] name"
        )));
    }
    // Before anything is created, so a second daemon on the same socket
    // stops without touching the device or the routes.
    let listener =
        control::bind(&config.control.socket).map_err(|e| DaemonError::Setup(e.to_string()))?;
    let _socket_file = SocketFile(config.control.socket.clone());
    let underlay = netlink
        .interface_with_address(local)
        .await
        .map_err(setup("netlink"))?;
    let mtu = match (config.tunnel.mtu, &underlay) {
        (Some(mtu), _) => mtu,
        (None, Some((_, _, underlay_mtu))) => {
            let m = underlay_mtu
                .saturating_sub(20)
                .min(u32::from(crate::config::MAX_MTU));
            u16::try_from(m).unwrap_or(crate::config::MAX_MTU)
        }
        (None, None) => {
            return Err(DaemonError::Setup(format!(
                "tunnel.local {local} is not an address of any interface here, so the MTU \
                 cannot be derived; add the address or set tunnel.mtu"
            )));
        }
    };
    if underlay.is_none() {
        warn!(%local, "tunnel.local is not an address of any interface: IPIP addressed to it will not arrive");
    }
    if let (Some(configured), Some((_, device, underlay_mtu))) = (config.tunnel.mtu, &underlay) {
        if u32::from(configured) + 20 > *underlay_mtu {
            return Err(DaemonError::Setup(format!(
                "tunnel.mtu {configured} does not fit the underlay: {device} has MTU {underlay_mtu}, \
                 so the tunnel MTU can be at most {}",
                underlay_mtu.saturating_sub(20)
            )));
        }
    }
    if mtu < crate::config::MIN_MTU {
        return Err(DaemonError::Setup(format!(
            "the underlay MTU leaves a tunnel MTU of {mtu}, below the IPv4 minimum of 68"
        )));
    }

    let workers = config.dataplane.workers;
    let tun = Tun::create(&TunConfig {
        name: name.clone(),
        mtu,
        ipv4: config.tunnel.address.map(|a| (a.ip(), a.prefix())),
        offload: config.dataplane.offload,
        queues: workers,
        tx_queue_len: config.dataplane.tx_queue_len,
    })
    .map_err(setup(&format!("cannot create TUN device {name}")))?;
    let offload = tun.offload();
    let ipip = IpipReceiver::open(config.dataplane.socket_buffer)
        .map_err(setup("cannot open the raw IPIP socket"))?;
    let icmp = IcmpReceiver::open().map_err(setup("cannot open the raw ICMP socket"))?;
    let ifindex = netlink
        .link_index(&name)
        .await
        .map_err(setup("netlink"))?
        .ok_or_else(|| DaemonError::Setup(format!("device {name} vanished after creation")))?;
    if offload {
        // One read must fit the worker's ring: the kernel segments longer
        // TSO bursts (tiny MSS) itself.
        let segs = crate::dataplane::worker::TX_READ_ROOM as u32;
        if let Err(e) = netlink.set_gso_max_segs(ifindex, segs).await {
            warn!(error = %e, "cannot cap the device's GSO segments; TSO bursts of more than {segs} segments will be dropped");
        }
    }

    let writer = RouteWriter::new();
    let reader = writer.reader();
    let shared = Arc::new(Shared::new(policy_for(&config, mtu)));
    let route_count = Arc::new(AtomicUsize::new(0));
    let mut routes = RouteManager {
        writer,
        netlink: netlink.clone(),
        ifindex,
        shared: shared.clone(),
        count: route_count.clone(),
    };
    remove_stale_routes(&netlink, ifindex, &wanted_routes(&config)).await;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(
            crate::metrics::bind(addr)
                .await
                .map_err(setup(&format!("cannot listen for metrics on {addr}")))?,
        ),
        None => None,
    };

    // Everything privileged is open: keep CAP_NET_ADMIN (netlink) and, until
    // the workers' send sockets are open, CAP_NET_RAW.
    privileges::drop_to(
        config.security.user.as_deref(),
        &[privileges::CONTROL_PLANE, caps::Capability::CAP_NET_RAW],
    )
    .map_err(|e| DaemonError::Setup(e.to_string()))?;

    // AF_PACKET transmit goes out of the device holding `tunnel.local`.
    let packet_tx_device = config
        .dataplane
        .packet_tx
        .then(|| underlay.as_ref().map(|(ifindex, _, _)| *ifindex))
        .flatten();
    let router = Router::start(
        RouterIo {
            queues: tun.into_queues(),
            ipip,
            icmp,
            socket_buffer: config.dataplane.socket_buffer,
            packet_tx: packet_tx_device,
        },
        &reader,
        shared.clone(),
        WorkerOptions {
            tunnel_mtu: mtu,
            icmp_rate: config.dataplane.icmp_rate,
            busy_poll: Duration::from_micros(config.dataplane.busy_poll_us.into()),
        },
    )
    .map_err(setup("cannot start the dataplane"))?;
    if let Err(e) = privileges::drop_one(caps::Capability::CAP_NET_RAW) {
        shutdown(router, routes, &netlink, &name).await;
        return Err(DaemonError::Setup(e.to_string()));
    }
    let started = routes.apply(&wanted_routes(&config)).await;
    if let Err(e) = started {
        shutdown(router, routes, &netlink, &name).await;
        return Err(e);
    }
    info!(
        device = %name,
        %local,
        mtu,
        address = ?config.tunnel.address.map(|a| a.to_string()),
        ttl = %config.tunnel.ttl,
        blocks = ?config.tunnel.blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
        routes = config.routes.len(),
        workers,
        offload,
        control = %config.control.socket.display(),
        metrics = ?config.metrics.listen.map(|a| a.to_string()),
        capabilities = ?privileges::effective(),
        "tunl is up"
    );

    // Its own netlink connection: the kernel runs one dump per socket at a
    // time, and route changes must not meet a neighbour dump in progress.
    let neighbours = packet_tx_device.and_then(|ifindex| match Netlink::new() {
        Ok(nl) => Some(tokio::spawn(watch_neighbours(nl, ifindex, shared.clone()))),
        Err(e) => {
            warn!(error = %e, "cannot open netlink for the neighbour table; packet_tx sends through the raw socket");
            None
        }
    });
    let (calls_tx, calls) = mpsc::channel(16);
    let accept = tokio::spawn(control::accept_loop(listener, calls_tx));
    let metrics = metrics_listener.map(|l| {
        tokio::spawn(crate::metrics::serve(
            l,
            Arc::new(MetricsSource {
                shared: shared.clone(),
                routes: route_count.clone(),
                workers: router.workers(),
            }),
        ))
    });
    let device = Device {
        name: name.clone(),
        mtu,
        local,
        address: config.tunnel.address,
        workers: router.workers(),
    };
    let mut config = config;
    let wait = wait_for_signals(signals, &mut config, &mut routes, calls, &device).await;
    accept.abort();
    for task in metrics.into_iter().chain(neighbours) {
        task.abort();
    }
    let shared = router.shared().clone();
    shutdown(router, routes, &netlink, &name).await;
    match shared.failure() {
        Some(reason) => Err(DaemonError::Setup(format!(
            "the dataplane stopped: {reason}"
        ))),
        None => wait,
    }
}

/// How often the next hops' MACs are re-read for `packet_tx`.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(1);
/// The shortest time between two reads when workers report unknown next
/// hops.
const NEIGHBOUR_MIN_INTERVAL: Duration = Duration::from_millis(20);

/// Keeps [`Shared::neighbours`] in step with the kernel's neighbour table
/// of the underlay device, for AF_PACKET transmit: every
/// [`NEIGHBOUR_REFRESH`], and soon after a worker meets a node missing from
/// it (that batch takes the raw socket, whose ARP then resolves an on-link
/// node; a node behind a router never shows up, so repeated misses back off
/// to the regular interval).
async fn watch_neighbours(netlink: Netlink, ifindex: u32, shared: Arc<Shared>) {
    let mut failing = false;
    let mut pause = NEIGHBOUR_MIN_INTERVAL;
    loop {
        let mut changed = false;
        match netlink.ipv4_neighbours(ifindex).await {
            Ok(entries) => {
                failing = false;
                changed = shared.neighbours.replace(entries);
                if changed {
                    debug!(
                        neighbours = shared.neighbours.load().len(),
                        "underlay neighbours changed"
                    );
                }
            }
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "cannot read the underlay neighbours; packet_tx falls back to the raw socket for new next hops");
            }
            Err(_) => {}
        }
        // After a miss that the last read did not resolve (a node behind
        // a router is never in the table), wait twice as long before the
        // next miss-driven read, up to the regular interval.
        tokio::time::sleep(pause).await;
        let missed = tokio::time::timeout(
            NEIGHBOUR_REFRESH.saturating_sub(pause),
            shared.neighbours.missed(),
        )
        .await
        .is_ok();
        pause = if missed && !changed {
            (pause * 2).min(NEIGHBOUR_REFRESH)
        } else {
            NEIGHBOUR_MIN_INTERVAL
        };
    }
}

/// The signals the daemon handles, caught from the very start so that one
/// arriving during setup (a SIGHUP, or the SIGTERM of
/// [`Shared::fail`]) is acted on once setup is done instead of killing the
/// process with its device and routes in place.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch() -> Result<Signals, DaemonError> {
        let catch = |kind| signal(kind).map_err(setup("signal handler"));
        Ok(Signals {
            term: catch(SignalKind::terminate())?,
            int: catch(SignalKind::interrupt())?,
            hup: catch(SignalKind::hangup())?,
        })
    }
}

async fn wait_for_signals(
    signals: Signals,
    config: &mut Config,
    routes: &mut RouteManager,
    mut calls: mpsc::Receiver<Call>,
    device: &Device,
) -> Result<(), DaemonError> {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT: stopping"); return Ok(()) }
            _ = hup.recv() => reload(config, routes).await,
            Some(call) = calls.recv() => {
                let response = handle(call.request, config, routes, device).await;
                let _ = call.reply.send(response);
            }
        }
    }
}

/// Carries out one control request.
async fn handle(
    request: Request,
    config: &Config,
    routes: &mut RouteManager,
    device: &Device,
) -> Response {
    let current = routes.routes();
    let wanted = match request {
        Request::RouteList {} => {
            return Response::ok(control::RouteList {
                routes: current
                    .iter()
                    .map(|(p, v)| control::Route {
                        prefix: *p,
                        via: *v,
                    })
                    .collect(),
            });
        }
        Request::Status {} => return Response::ok(status(routes, device)),
        Request::Stats {} => return Response::ok(stats(&routes.shared.counters())),
        Request::RouteAdd { prefix, via } => {
            let mut wanted = current.clone();
            wanted.insert(prefix, via);
            if let Err(e) = validate(config, &wanted) {
                return Response::error(format!("cannot add {prefix} via {via}: {e}"));
            }
            wanted
        }
        Request::RouteDel { prefix } => {
            if let Err(e) = crate::config::check_prefix(&prefix) {
                return Response::error(format!("cannot delete {prefix}: {e}"));
            }
            let mut wanted = current.clone();
            wanted.remove(&prefix);
            wanted
        }
        Request::RouteReplace { routes: list } => {
            let entries: Vec<RouteEntry> = list
                .iter()
                .map(|r| RouteEntry {
                    prefix: r.prefix,
                    via: r.via,
                })
                .collect();
            if let Err(e) = config.with_routes(entries) {
                let e = match e {
                    ConfigError::Invalid { key, problem, .. } => {
                        format!("{}: {problem}", key.replace("route[", "routes["))
                    }
                    other => other.to_string(),
                };
                return Response::error(format!("route set refused, nothing changed: {e}"));
            }
            list.iter().map(|r| (r.prefix, r.via)).collect()
        }
    };
    match routes.apply(&wanted).await {
        Ok(change) => Response::ok(change),
        Err(e) => Response::error(e.to_string()),
    }
}

/// Checks a route set against the config's rules (own blocks, local
/// address, host bits); returns the problem.
fn validate(config: &Config, routes: &BTreeMap<Ipv4Network, Ipv4Addr>) -> Result<(), String> {
    let entries = routes
        .iter()
        .map(|(p, v)| RouteEntry {
            prefix: *p,
            via: *v,
        })
        .collect();
    config
        .with_routes(entries)
        .map(|_| ())
        .map_err(|e| match e {
            ConfigError::Invalid { problem, .. } => problem,
            other => other.to_string(),
        })
}

fn status(routes: &RouteManager, device: &Device) -> control::Status {
    let shared = &routes.shared;
    let current = routes.routes();
    let mut by_node: BTreeMap<Ipv4Addr, Vec<Ipv4Network>> = BTreeMap::new();
    for (prefix, via) in &current {
        by_node.entry(*via).or_default().push(*prefix);
    }
    let traffic = shared.nodes.traffic();
    let policy = shared.policy.load();
    let tunnel_mtu = policy.settings.mtu;
    let nodes = by_node
        .into_iter()
        .map(|(node, blocks)| {
            let t = traffic.get(&node).copied().unwrap_or_default();
            control::NodeStatus {
                node,
                blocks,
                path_mtu: shared.pmtu.toward(node, tunnel_mtu),
                tx_packets: t.tx_packets,
                tx_bytes: t.tx_bytes,
                rx_packets: t.rx_packets,
                rx_bytes: t.rx_bytes,
                last_seen_unix_ms: t.last_seen.map(control::unix_ms),
            }
        })
        .collect();
    let refused = shared.nodes.refused();
    control::Status {
        device: device.name.clone(),
        mtu: device.mtu,
        local: device.local,
        address: device.address,
        blocks: policy.blocks.clone(),
        workers: device.workers,
        routes: current.len(),
        now_unix_ms: control::unix_ms(std::time::SystemTime::now()),
        nodes,
        refused: refused
            .sources
            .iter()
            .map(|r| control::RefusedStatus {
                source: r.source,
                packets: r.packets,
                last_seen_unix_ms: control::unix_ms(r.last_seen),
            })
            .collect(),
        refused_other_packets: refused.other_packets,
    }
}

/// The `stats` reply for a counter snapshot.
pub fn stats(c: &CounterSnapshot) -> control::Stats {
    control::Stats {
        counters: c
            .fields()
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect(),
        drops: c
            .drops_by_reason()
            .map(|(r, n)| (r.as_str().to_owned(), n))
            .collect(),
        drops_total: c.total_drops(),
    }
}

/// Re-reads the config file and applies what can change at runtime.
async fn reload(config: &mut Config, routes: &mut RouteManager) {
    let loaded = Config::load(&config.path).and_then(|new| config.reloaded(new));
    let (new, pending) = match loaded {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: {e}; still running on the previous config");
            return;
        }
    };
    if !pending.is_empty() {
        warn!(
            keys = ?pending,
            "SIGHUP: these changes take effect at the next restart; applying routes, ttl, tos_inherit, pmtudisc, blocks, allow and allow_nested"
        );
    }
    if let Err(e) = routes.apply(&wanted_routes(&new)).await {
        error!("SIGHUP: {e}; still running on the previous config");
        return;
    }
    let mtu = routes.shared.policy.load().settings.mtu;
    routes.shared.policy.store(Arc::new(policy_for(&new, mtu)));
    info!(routes = new.routes.len(), "SIGHUP: config reloaded");
    *config = new;
}

/// Removes kernel routes with tunl's tag that the config does not name:
/// left by a daemon that was killed while its device persisted, or moved by
/// hand. Routes on another TUN device are left alone: a non-persistent TUN
/// device exists only while a process holds it, so they belong to another
/// live tunl instance (another `tunnel.name`). Wanted routes are left to
/// [`RouteManager::apply`]: installing one on our device replaces it, unless
/// another live instance holds it, which `apply` refuses.
async fn remove_stale_routes(
    netlink: &Netlink,
    ifindex: u32,
    wanted: &BTreeMap<Ipv4Network, Ipv4Addr>,
) {
    let existing = match netlink.routes_with_protocol(ROUTE_PROTOCOL).await {
        Ok(routes) => routes,
        Err(e) => {
            warn!(error = %e, "cannot list routes with tunl's tag; stale ones are not removed");
            return;
        }
    };
    for (prefix, _, oif) in existing {
        let Some(oif) = oif else { continue };
        if wanted.contains_key(&prefix) {
            continue;
        }
        if oif != ifindex {
            match netlink.link_name_and_tun(oif).await {
                Ok(Some((dev, true))) => {
                    info!(%prefix, device = %dev, "route with tunl's tag on another TUN device (another tunl instance?) left alone");
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(%prefix, error = %e, "cannot tell whose route this is; left alone");
                    continue;
                }
            }
        }
        match netlink.del_route(prefix, oif, ROUTE_PROTOCOL).await {
            Ok(()) => info!(%prefix, "stale tunl route removed"),
            Err(e) => warn!(%prefix, error = %e, "cannot remove stale tunl route"),
        }
    }
}

/// The first route with tunl's tag whose prefix is `wanted` and which goes
/// out of another TUN device that still exists: a TUN device lives only
/// while a process holds it, so another tunl instance routes that prefix.
/// Returns it with that device's name. Fails closed: a failed lookup is an
/// error, never taken for "no conflict".
async fn routed_by_another_instance(
    netlink: &Netlink,
    ifindex: u32,
    wanted: impl Fn(&Ipv4Network) -> bool,
) -> Result<Option<(Ipv4Network, String)>, tunl_io::netlink::NetlinkError> {
    for (prefix, _, oif) in netlink.routes_with_protocol(ROUTE_PROTOCOL).await? {
        match oif {
            Some(oif) if oif != ifindex && wanted(&prefix) => {
                if let Some((device, true)) = netlink.link_name_and_tun(oif).await? {
                    return Ok(Some((prefix, device)));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

async fn shutdown(router: Router, mut routes: RouteManager, netlink: &Netlink, name: &str) {
    routes.remove_all().await;
    let shared = router.shared().clone();
    router.stop();
    if let Err(e) = netlink.delete_link(name).await {
        warn!(device = name, error = %e, "cannot remove the device");
    }
    log_counters(&shared.counters());
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
