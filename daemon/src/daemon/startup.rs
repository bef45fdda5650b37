//! The steps of `tunl run` up to a running dataplane, each a function with
//! its own error, called in order by [`super::lifecycle`]:
//!
//! 1. look up `security.user` (a config error if there is none);
//! 2. open netlink, take the device's lock ([`lock_device`]) and check that
//!    no one else holds the device ([`check_device`]): a persistent TUN
//!    device left by an earlier run is taken over, anything else refused;
//! 3. bind the control socket, before anything is created, so a second
//!    daemon on the same socket stops without touching the device or routes;
//! 4. find the underlay interface (the one holding `tunnel.local`) and
//!    derive the tunnel MTU from it ([`tunnel_mtu`], config errors naming the
//!    key when the host cannot carry it);
//! 5. create (or attach to) the TUN device and open the raw receive sockets;
//! 6. set up the underlay ([`super::underlay`]: the XDP program and its
//!    sockets, or the next underlay), bind the metrics listener;
//! 7. drop privileges and start the dataplane ([`start_dataplane`]): see
//!    [`super::privileges`] for the order.
//!
//! Between 5 and 7 the lifecycle subscribes to the kernel's route changes
//! and loads the routes already on the device ([`super::follow`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::User;
use tokio::net::{TcpListener, UnixListener};
use tracing::{info, warn};
use tunl_io::netlink::Netlink;
use tunl_io::{IcmpReceiver, IoError, IpipReceiver, Tun, TunConfig};
use tunl_routing::RouteReader;

use super::error::DaemonError;
use super::privileges;
use crate::config::{Config, ConfigError, MAX_MTU, MIN_MTU};
use crate::control;
use crate::dataplane::{
    Dataplane, DataplaneIo, DataplaneXdp, NextHop, Policy, Shared, WorkerOptions,
};

/// The outer IPv4 header each tunnel packet carries on the underlay.
const OUTER_HEADER: u32 = 20;

/// The interface holding `tunnel.local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Underlay {
    /// Its index.
    pub ifindex: u32,
    /// Its name.
    pub name: String,
    /// Its MTU.
    pub mtu: u32,
    /// Whether it is an Ethernet device (it has a MAC): AF_PACKET and
    /// AF_XDP frames need one.
    pub ethernet: bool,
}

/// Step 1: the user to switch to (`security.user`), looked up before
/// anything is set up.
pub(super) fn look_up_user(config: &Config) -> Result<Option<User>, ConfigError> {
    config
        .security
        .user
        .as_deref()
        .map(|name| {
            privileges::look_up_user(name)
                .map_err(|e| config.invalid("security.user", e.to_string()))
        })
        .transpose()
}

/// Step 2: the netlink connection of the control plane.
pub(super) fn open_netlink() -> Result<Netlink, DaemonError> {
    Netlink::new().map_err(|source| DaemonError::NetlinkOpen { source })
}

/// The lock of one device name in this network namespace: an abstract
/// Unix socket, `@tunl/device/NAME`, bound while the daemon runs. Abstract
/// socket names belong to the network namespace, need no file (so no
/// folder a non-root daemon cannot write) and go with the process, however
/// it ends. Every tunl instance takes it before it touches the device, so
/// two of them never share one: a persistent device outlives its daemon,
/// and a multi-queue TUN device would let a second process attach more
/// queues.
#[derive(Debug)]
pub(super) struct DeviceLock {
    _socket: std::os::unix::net::UnixListener,
}

/// The abstract socket name of `tunnel.name`'s lock.
fn lock_name(device: &str) -> String {
    format!("tunl/device/{device}")
}

/// Step 2: takes the lock of `tunnel.name` in this network namespace
/// (the abstract socket `@tunl/device/NAME`).
///
/// # Errors
/// [`DaemonError::DeviceInUse`] when another tunl instance holds it,
/// [`DaemonError::DeviceLock`] when the socket cannot be made.
pub(super) fn lock_device(config: &Config) -> Result<DeviceLock, DaemonError> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = &config.tunnel.name;
    let abstract_name = lock_name(name);
    let lock_err = |source: std::io::Error| DaemonError::DeviceLock {
        path: PathBuf::from(format!("@{abstract_name}")),
        source,
    };
    let addr = SocketAddr::from_abstract_name(abstract_name.as_bytes()).map_err(lock_err)?;
    match UnixListener::bind_addr(&addr) {
        Ok(socket) => Ok(DeviceLock { _socket: socket }),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DaemonError::DeviceInUse {
            name: name.clone(),
            holder: "another tunl instance",
        }),
        Err(e) => Err(lock_err(e)),
    }
}

/// Step 2: what is already there under `tunnel.name`: nothing (`None`), or
/// a TUN device no process holds, which tunl takes over (its index): a
/// persistent device left by an earlier run, with the routes others
/// installed on it. A device of another kind, or a TUN device some process
/// holds (it has carrier), is refused.
pub(super) async fn check_device(
    netlink: &Netlink,
    config: &Config,
) -> Result<Option<u32>, DaemonError> {
    let name = &config.tunnel.name;
    match netlink.link_state(name).await? {
        None => Ok(None),
        Some(state) if !state.tun => Err(DaemonError::DeviceExists { name: name.clone() }),
        Some(state) if state.carrier => Err(DaemonError::DeviceInUse {
            name: name.clone(),
            holder: "another process",
        }),
        Some(state) => Ok(Some(state.index)),
    }
}

/// The control socket file, removed when the daemon stops.
pub(super) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Best effort: after a user switch the folder may not be writable.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Step 3: the control socket, and the guard that removes its file.
pub(super) fn bind_control(config: &Config) -> Result<(UnixListener, SocketFile), DaemonError> {
    let listener = control::bind(&config.control.socket)?;
    Ok((listener, SocketFile(config.control.socket.clone())))
}

/// Step 4: the interface holding `tunnel.local`, if any.
pub(super) async fn find_underlay(
    netlink: &Netlink,
    config: &Config,
) -> Result<Option<Underlay>, DaemonError> {
    let found = netlink.interface_with_address(config.tunnel.local).await?;
    Ok(found.map(|(ifindex, name, mtu)| {
        let ethernet = tunl_io::link::hardware_address(&name).is_ok();
        Underlay {
            ifindex,
            name,
            mtu,
            ethernet,
        }
    }))
}

/// Step 4: the tunnel MTU: `tunnel.mtu`, which must fit the underlay, or
/// the underlay's MTU less the outer header. A host that cannot carry the
/// config is a config error naming the key. Without an underlay (allowed
/// with `tunnel.mtu`) it warns: IPIP addressed to `tunnel.local` will not
/// arrive.
pub(super) fn tunnel_mtu(config: &Config, underlay: Option<&Underlay>) -> Result<u16, ConfigError> {
    let local = config.tunnel.local;
    let mtu = match (config.tunnel.mtu, underlay) {
        (Some(mtu), Some(u)) if u32::from(mtu) + OUTER_HEADER > u.mtu => {
            return Err(config.invalid(
                "tunnel.mtu",
                format!(
                    "{mtu} does not fit the underlay: {} has MTU {}, so the tunnel MTU can be at most {}",
                    u.name,
                    u.mtu,
                    u.mtu.saturating_sub(OUTER_HEADER)
                ),
            ));
        }
        (Some(mtu), Some(_)) => mtu,
        (Some(mtu), None) => {
            warn!(%local, "tunnel.local is not an address of any interface: IPIP addressed to it will not arrive, and nothing is sent from it until it is (no_local_address)");
            mtu
        }
        (None, Some(u)) => {
            let derived = u.mtu.saturating_sub(OUTER_HEADER).min(u32::from(MAX_MTU));
            let derived = u16::try_from(derived).unwrap_or(MAX_MTU);
            if derived < MIN_MTU {
                return Err(config.invalid(
                    "tunnel.local",
                    format!(
                        "{local} is on {}, whose MTU {} leaves a tunnel MTU of {derived}, \
                         below the IPv4 minimum of {MIN_MTU}",
                        u.name, u.mtu
                    ),
                ));
            }
            derived
        }
        (None, None) => {
            return Err(config.invalid(
                "tunnel.local",
                format!(
                    "{local} is not an address of any interface here, so the MTU \
                     cannot be derived; add the address or set tunnel.mtu"
                ),
            ));
        }
    };
    Ok(mtu)
}

/// The TUN device, created.
pub(super) struct Device {
    /// The device and its queues.
    pub tun: Tun,
    /// Its index.
    pub ifindex: u32,
}

/// Step 5: creates the TUN device (MTU, address, up, one queue per worker),
/// persistent with `tunnel.persist`, or attaches to the one left by an
/// earlier run (`existing`, from [`check_device`]), and, with offloads, caps
/// its GSO segments to what a worker reads at once. An existing device
/// whose queue layout does not fit the config (`dataplane.workers` moved
/// between 1 and more) is deleted and created again: the routes on it go
/// with it.
pub(super) async fn create_device(
    netlink: &Netlink,
    config: &Config,
    mtu: u16,
    existing: Option<u32>,
) -> Result<Device, DaemonError> {
    let name = &config.tunnel.name;
    let tun_config = TunConfig {
        name: name.clone(),
        mtu,
        ipv4: config.tunnel.address.map(|a| (a.ip(), a.prefix())),
        offload: config.dataplane.offload,
        queues: config.dataplane.workers,
        tx_queue_len: config.dataplane.tx_queue_len,
        persist: config.tunnel.persist,
        // Exclusive creation, unless check_device found a device that no
        // one holds: then it is attached to, under the device lock.
        attach: existing.is_some(),
    };
    let device_err = |source| DaemonError::Device {
        name: name.clone(),
        source,
    };
    let tun = match Tun::create(&tun_config) {
        Err(IoError::IncompatibleDevice { .. }) if existing.is_some() => {
            warn!(device = %name, "the existing device does not fit [dataplane] (its queues differ): creating it again; the routes on it are gone");
            netlink.delete_link(name).await?;
            let fresh = TunConfig {
                attach: false,
                ..tun_config
            };
            Tun::create(&fresh).map_err(device_err)?
        }
        other => other.map_err(device_err)?,
    };
    let ifindex = netlink
        .link_index(name)
        .await?
        .ok_or_else(|| DaemonError::DeviceVanished { name: name.clone() })?;
    if existing == Some(ifindex) {
        info!(device = %name, ifindex, "took over the existing device (and the routes on it)");
    }
    if tun.offload() {
        // One read must fit the worker's ring: the kernel segments longer
        // TSO bursts (tiny MSS) itself.
        let segs = crate::dataplane::worker::TX_READ_ROOM as u32;
        if let Err(e) = netlink.set_gso_max_segs(ifindex, segs).await {
            warn!(error = %e, "cannot cap the device's GSO segments; TSO bursts of more than {segs} segments will be dropped");
        }
    }
    Ok(Device { tun, ifindex })
}

/// The raw receive sockets: IPIP from the nodes, ICMP errors from the
/// underlay.
pub(super) struct Receivers {
    ipip: IpipReceiver,
    icmp: IcmpReceiver,
}

/// Step 5: opens the raw receive sockets.
pub(super) fn open_receivers(config: &Config) -> Result<Receivers, DaemonError> {
    let ipip = IpipReceiver::open(config.dataplane.socket_buffer).map_err(|source| {
        DaemonError::Socket {
            kind: "IPIP",
            source,
        }
    })?;
    let icmp = IcmpReceiver::open().map_err(|source| DaemonError::Socket {
        kind: "ICMP",
        source,
    })?;
    Ok(Receivers { ipip, icmp })
}

/// Step 6: the metrics listener, if `metrics.listen` is set.
pub(super) async fn bind_metrics(config: &Config) -> Result<Option<TcpListener>, DaemonError> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    crate::metrics::bind(addr)
        .await
        .map(Some)
        .map_err(|source| DaemonError::Metrics { addr, source })
}

/// What the dataplane needs of the config, at a tunnel MTU.
pub(super) fn policy_for(config: &Config, mtu: u16) -> Policy {
    let mut policy = Policy {
        settings: config.tunnel_settings(mtu),
        vias: Vec::new(),
        multipath: Default::default(),
        allow: config.security.allow.clone(),
        blocks: config.tunnel.blocks.clone(),
        allow_nested: config.security.allow_nested,
        strict_source: config.security.strict_source,
    };
    policy.set_vias(config.routes.iter().map(|r| r.via));
    policy
}

/// What [`start_dataplane`] starts the workers with.
pub(super) struct DataplaneParts<'a> {
    /// The TUN device.
    pub device: Device,
    /// The raw receive sockets.
    pub receivers: Receivers,
    /// The LPM the route mirror writes.
    pub routes: &'a RouteReader<NextHop>,
    /// State shared with the control plane.
    pub shared: Arc<Shared>,
    /// The tunnel MTU.
    pub mtu: u16,
    /// The underlay device for AF_PACKET transmit, if the underlay uses it.
    pub packet_tx: Option<u32>,
    /// The AF_XDP sockets and the device's MAC, with the XDP underlay.
    pub xdp: Option<DataplaneXdp>,
}

/// Step 7: everything privileged is open: drops to [`privileges::DATAPLANE_START`]
/// (and to `user`), then starts the workers, which drop every capability
/// themselves. The caller then keeps only [`privileges::CONTROL_PLANE`]
/// ([`privileges::keep_control_plane_only`]).
pub(super) fn start_dataplane(
    config: &Config,
    user: Option<&User>,
    parts: DataplaneParts<'_>,
) -> Result<Dataplane, DaemonError> {
    privileges::drop_to(user, privileges::DATAPLANE_START)?;
    Dataplane::start(
        DataplaneIo {
            queues: parts.device.tun.into_queues(),
            ipip: parts.receivers.ipip,
            icmp: parts.receivers.icmp,
            socket_buffer: config.dataplane.socket_buffer,
            packet_tx: parts.packet_tx,
            xdp: parts.xdp,
        },
        parts.routes,
        parts.shared,
        WorkerOptions {
            tunnel_mtu: parts.mtu,
            icmp_rate: config.dataplane.icmp_rate,
            busy_poll: Duration::from_micros(config.dataplane.busy_poll_us.into()),
            poll_interval: Duration::from_micros(config.dataplane.poll_interval_us.into()),
            poll_quiet: Duration::from_micros(config.dataplane.poll_quiet_us.into()),
        },
    )
    .map_err(|source| DaemonError::DataplaneStart { source })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;

    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("[tunnel]\nlocal = \"172.16.35.4\"\n{extra}");
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn eth0(mtu: u32) -> Underlay {
        Underlay {
            ifindex: 2,
            name: "eth0".to_owned(),
            mtu,
            ethernet: true,
        }
    }

    fn key_and_problem(e: ConfigError) -> (String, String) {
        match e.problems() {
            [p] => (p.key.clone(), p.problem.clone()),
            _ => panic!("expected one invalid key, got {e:?}"),
        }
    }

    #[test]
    fn the_mtu_is_derived_from_the_underlay() {
        assert_eq!(tunnel_mtu(&config(""), Some(&eth0(1500))).unwrap(), 1480);
        assert_eq!(tunnel_mtu(&config(""), Some(&eth0(9000))).unwrap(), 8980);
        assert_eq!(
            tunnel_mtu(&config(""), Some(&eth0(65536 + 100))).unwrap(),
            MAX_MTU
        );
        assert_eq!(
            tunnel_mtu(&config(""), Some(&eth0(88))).unwrap(),
            MIN_MTU,
            "the smallest underlay that carries IPv4 through the tunnel"
        );
    }

    #[test]
    fn a_configured_mtu_must_fit_the_underlay() {
        let c = config("mtu = 1400\n");
        assert_eq!(tunnel_mtu(&c, Some(&eth0(1500))).unwrap(), 1400);
        assert_eq!(tunnel_mtu(&c, Some(&eth0(1420))).unwrap(), 1400);
        assert_eq!(tunnel_mtu(&c, None).unwrap(), 1400, "no underlay to check");
        let (key, problem) = key_and_problem(tunnel_mtu(&c, Some(&eth0(1419))).unwrap_err());
        assert_eq!(key, "tunnel.mtu");
        assert_eq!(
            problem,
            "1400 does not fit the underlay: eth0 has MTU 1419, so the tunnel MTU can be at most 1399"
        );
    }

    #[test]
    fn an_underlay_the_host_cannot_use_names_tunnel_local() {
        let (key, problem) = key_and_problem(tunnel_mtu(&config(""), None).unwrap_err());
        assert_eq!(key, "tunnel.local");
        assert!(
            problem.contains("not an address of any interface"),
            "{problem}"
        );
        let (key, problem) = key_and_problem(tunnel_mtu(&config(""), Some(&eth0(87))).unwrap_err());
        assert_eq!(key, "tunnel.local");
        assert!(
            problem.contains(&format!(
                "tunnel MTU of 67, below the IPv4 minimum of {MIN_MTU}"
            )),
            "{problem}"
        );
    }

    #[test]
    fn a_missing_user_is_a_config_error() {
        let c = config("[security]\nuser = \"tunl-no-such-user\"\n");
        let (key, problem) = key_and_problem(look_up_user(&c).unwrap_err());
        assert_eq!(key, "security.user");
        assert!(
            problem.contains("no user \"tunl-no-such-user\""),
            "{problem}"
        );
        assert!(look_up_user(&config("")).unwrap().is_none());
        let root = look_up_user(&config("[security]\nuser = \"root\"\n")).unwrap();
        assert_eq!(root.map(|u| u.uid.as_raw()), Some(0));
    }

    #[test]
    fn the_policy_accepts_every_routes_node() {
        let c = config(
            "blocks = [\"10.20.42.0/26\"]\n[[route]]\nprefix = \"10.20.1.0/26\"\nvia = \"172.16.36.6\"\n\
             [[route]]\nprefix = \"10.20.2.0/26\"\nvia = \"172.16.36.5\"\n\
             [[route]]\nprefix = \"10.20.3.0/26\"\nvia = \"172.16.36.6\"\n",
        );
        let p = policy_for(&c, 1400);
        assert_eq!(
            p.vias,
            vec![Ipv4Addr::new(172, 16, 36, 5), Ipv4Addr::new(172, 16, 36, 6)]
        );
        assert_eq!(p.settings.mtu, 1400);
        assert_eq!(p.blocks, c.tunnel.blocks);
    }
}
