//! Why the daemon could not start, or stopped with an error.
//!
//! One variant per step that can fail, each with the error underneath as
//! its `source`; the message names the step and repeats the cause, so the
//! one line `tunl run` prints says what to fix. Which exit code each one
//! gives is the CLI's table (`tunl_cli::exit`).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use ipnetwork::Ipv4Network;
use tunl_io::IoError;
use tunl_io::netlink::NetlinkError;

use super::privileges::PrivilegeError;
use crate::config::ConfigError;
use crate::control::BindError;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The configuration is invalid, in itself or on this host (a
    /// `tunnel.mtu` the underlay cannot carry, a `security.user` that does
    /// not exist): the message names the key.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The control plane's async runtime could not start.
    #[error("cannot start the control-plane runtime: {source}")]
    Runtime {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot catch {signal}: {source}")]
    Signal {
        /// The signal, e.g. `SIGTERM`.
        signal: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The netlink socket could not be opened.
    #[error("cannot open netlink: {source}")]
    NetlinkOpen {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A netlink request during setup failed (the message names it).
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The TUN device's name is taken by a device that is not a TUN device
    /// (the kernel's ipip driver's tunl0, a veth...).
    #[error(
        "device {name} already exists and is not a TUN device (the kernel's ipip driver?); \
         remove it, or set another [tunnel] name"
    )]
    DeviceExists {
        /// `tunnel.name`.
        name: String,
    },
    /// The TUN device exists and a process holds it: another tunl
    /// instance (its lock), or another program (the device has carrier).
    #[error(
        "device {name} already exists and is in use by {holder}; \
         stop it, or set another [tunnel] name"
    )]
    DeviceInUse {
        /// `tunnel.name`.
        name: String,
        /// Who holds it: `another tunl instance` or `another process`.
        holder: &'static str,
    },
    /// The device's lock (an abstract socket) could not be taken.
    #[error("cannot lock {path}: {source}")]
    DeviceLock {
        /// The lock, `@tunl/device/NAME`.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The route listener (the netlink socket following the kernel's
    /// routes) could not start.
    #[error("cannot follow the kernel's routes: {source}")]
    RouteListener {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The control socket could not be bound (or another daemon serves it).
    #[error(transparent)]
    Control(#[from] BindError),
    /// The TUN device could not be created.
    #[error("cannot create TUN device {name}: {source}")]
    Device {
        /// `tunnel.name`.
        name: String,
        /// What the device layer reported.
        #[source]
        source: IoError,
    },
    /// The TUN device was gone right after it was created.
    #[error("device {name} vanished after creation")]
    DeviceVanished {
        /// `tunnel.name`.
        name: String,
    },
    /// A raw receive socket could not be opened.
    #[error("cannot open the raw {kind} socket: {source}")]
    Socket {
        /// `IPIP` or `ICMP`.
        kind: &'static str,
        /// What the socket layer reported.
        #[source]
        source: IoError,
    },
    /// The metrics endpoint could not listen.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        /// `metrics.listen`.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Privileges could not be dropped (the message names the step).
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    /// The dataplane threads could not start.
    #[error("cannot start the dataplane: {source}")]
    DataplaneStart {
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The dataplane hit an error it cannot go on from (the TUN device is
    /// gone) and stopped.
    #[error("the dataplane stopped: {reason}")]
    DataplaneStopped {
        /// What the worker reported.
        reason: String,
    },
    /// The config's routes could not be installed (nothing was left behind).
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// Why a route change was refused or failed; every one leaves the kernel
/// and the dataplane's table as they were, and says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The kernel refused to install a route.
    #[error("cannot install route {prefix} via {via}: {source}; nothing was changed")]
    Install {
        /// The block.
        prefix: Ipv4Network,
        /// Its next hop.
        via: Ipv4Addr,
        /// The kernel's refusal.
        #[source]
        source: NetlinkError,
    },
    /// The kernel refused to remove a route.
    #[error("cannot remove route {prefix}: {source}; nothing was changed")]
    Remove {
        /// The block.
        prefix: Ipv4Network,
        /// The kernel's refusal.
        #[source]
        source: NetlinkError,
    },
    /// The kernel's routes could not be read to check for another instance
    /// (the check fails closed).
    #[error(
        "cannot check that no other tunl instance routes these prefixes: {source}; \
         nothing was changed"
    )]
    OtherInstanceCheck {
        /// The failed lookup.
        #[source]
        source: NetlinkError,
    },
    /// Another live tunl instance routes a prefix of the change.
    #[error(
        "route {prefix} is already installed by tunl on the TUN device {device} \
         (another tunl instance?); stop it or remove the route from one of them; \
         nothing was changed"
    )]
    HeldByAnotherInstance {
        /// The block.
        prefix: Ipv4Network,
        /// The other instance's TUN device.
        device: String,
    },
}
