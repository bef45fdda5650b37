//! `tunl run`: the standalone tunnel daemon's lifecycle.
//!
//! Start: validate the config, create the TUN device (MTU, address, up), open
//! the raw sockets, install `BLOCK via NODE dev tunl0 onlink proto tunl` for
//! every route, start the dataplane. SIGHUP re-reads the config and applies
//! route changes; SIGINT/SIGTERM remove the routes and the device and log the
//! counters.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use ipnetwork::Ipv4Network;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tunl_io::netlink::Netlink;
use tunl_io::{IcmpReceiver, IpipReceiver, Tun, TunConfig};
use tunl_routing::{RouteOp, RouteTable, RouteWriter};

use crate::config::{Config, ConfigError};
use crate::router::{CounterSnapshot, Policy, Router, RouterIo, Shared};

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
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_) => 2,
            DaemonError::Setup(_) => 1,
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
}

impl RouteManager {
    /// Current routes, block to next hop.
    pub fn routes(&self) -> BTreeMap<Ipv4Network, Ipv4Addr> {
        self.writer.snapshot().into_iter().collect()
    }

    /// Makes the route set equal to `wanted`: the dataplane learns new routes
    /// before the kernel sends packets for them, and forgets old ones after the
    /// kernel stopped. Unchanged routes are not touched.
    pub async fn apply(
        &mut self,
        wanted: &BTreeMap<Ipv4Network, Ipv4Addr>,
    ) -> Result<(), DaemonError> {
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
        self.update_policy_vias(current.values().chain(wanted.values()).copied());
        self.writer
            .apply(added.iter().map(|(p, v)| RouteOp::Insert(*p, *v)));
        let mut result = Ok(());
        for (prefix, via) in &added {
            if let Err(e) = self
                .netlink
                .add_route(*prefix, *via, self.ifindex, ROUTE_PROTOCOL)
                .await
            {
                result = Err(DaemonError::Setup(format!(
                    "cannot install route {prefix} via {via}: {e}"
                )));
            } else {
                info!(%prefix, %via, "route installed");
            }
        }
        for prefix in &removed {
            if let Err(e) = self
                .netlink
                .del_route(*prefix, self.ifindex, ROUTE_PROTOCOL)
                .await
            {
                warn!(%prefix, error = %e, "cannot remove kernel route");
            } else {
                info!(%prefix, "route removed");
            }
        }
        self.writer
            .apply(removed.iter().map(|p| RouteOp::Remove(*p)));
        self.update_policy_vias(wanted.values().copied());
        result
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
        icmp_source: config
            .tunnel
            .address
            .map_or(config.tunnel.local, |a| a.ip()),
    };
    policy.set_vias(config.routes.iter().map(|r| r.via));
    policy
}

async fn run_async(config: Config) -> Result<(), DaemonError> {
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

    let (writer, reader) = RouteTable::new();
    let shared = Arc::new(Shared::new(policy_for(&config, mtu)));
    let mut routes = RouteManager {
        writer,
        netlink: netlink.clone(),
        ifindex,
        shared: shared.clone(),
    };
    remove_stale_routes(&netlink, &wanted_routes(&config)).await;

    let router = Router::start(
        RouterIo {
            queues: tun.into_queues(),
            ipip,
            icmp,
            socket_buffer: config.dataplane.socket_buffer,
        },
        &reader,
        shared.clone(),
        mtu,
        config.dataplane.icmp_rate,
    )
    .map_err(setup("cannot start the dataplane"))?;
    let started = routes.apply(&wanted_routes(&config)).await;
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
        "tunl is up"
    );
    if let Err(e) = started {
        shutdown(router, routes, &netlink, &name).await;
        return Err(e);
    }

    let mut config = config;
    let wait = wait_for_signals(&mut config, &mut routes).await;
    shutdown(router, routes, &netlink, &name).await;
    wait
}

async fn wait_for_signals(
    config: &mut Config,
    routes: &mut RouteManager,
) -> Result<(), DaemonError> {
    let mut term = signal(SignalKind::terminate()).map_err(setup("signal handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(setup("signal handler"))?;
    let mut hup = signal(SignalKind::hangup()).map_err(setup("signal handler"))?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT: stopping"); return Ok(()) }
            _ = hup.recv() => reload(config, routes).await,
        }
    }
}

/// Re-reads the config file and applies what can change at runtime.
async fn reload(config: &mut Config, routes: &mut RouteManager) {
    let new = match Config::load(&config.path) {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: {e}; still running on the previous config");
            return;
        }
    };
    let t = &config.tunnel;
    if new.tunnel.name != t.name
        || new.tunnel.local != t.local
        || new.tunnel.address != t.address
        || new.tunnel.mtu != t.mtu
        || new.dataplane.workers != config.dataplane.workers
    {
        warn!(
            "SIGHUP: changes to tunnel.name/local/address/mtu or dataplane.workers need a restart; applying the rest"
        );
    }
    let mtu = routes.shared.policy.load().settings.mtu;
    let mut policy = policy_for(&new, mtu);
    policy.settings.local = t.local;
    policy.icmp_source = routes.shared.policy.load().icmp_source;
    routes.shared.policy.store(Arc::new(policy));
    if let Err(e) = routes.apply(&wanted_routes(&new)).await {
        error!("SIGHUP: {e}");
    }
    info!(routes = new.routes.len(), "SIGHUP: config reloaded");
    *config = new;
}

/// Removes kernel routes with tunl's tag that the config does not name (left
/// by a daemon that was killed while its device persisted).
async fn remove_stale_routes(netlink: &Netlink, wanted: &BTreeMap<Ipv4Network, Ipv4Addr>) {
    let Ok(existing) = netlink.routes_with_protocol(ROUTE_PROTOCOL).await else {
        return;
    };
    for (prefix, _, oif) in existing {
        if wanted.contains_key(&prefix) {
            continue;
        }
        if let Some(oif) = oif {
            match netlink.del_route(prefix, oif, ROUTE_PROTOCOL).await {
                Ok(()) => info!(%prefix, "stale tunl route removed"),
                Err(e) => warn!(%prefix, error = %e, "cannot remove stale tunl route"),
            }
        }
    }
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
        tx_packets = c.tx_packets,
        tx_bytes = c.tx_bytes,
        rx_packets = c.rx_packets,
        rx_bytes = c.rx_bytes,
        tx_errors = c.tx_errors,
        rx_tun_full = c.rx_tun_full,
        icmp_sent = c.icmp_sent,
        drops = c.total_drops(),
        "counters at exit"
    );
    for (reason, n) in c.drops_by_reason().filter(|(_, n)| *n > 0) {
        info!(reason = reason.as_str(), packets = n, "dropped");
    }
}
