//! `tunl run`: the standalone tunnel daemon's lifecycle.
//!
//! Start: validate the config, create the TUN device (MTU, address, up), open
//! the raw sockets, install `BLOCK via NODE dev tunl0 onlink proto 116` for
//! every route, start the dataplane. SIGHUP re-reads the config and applies
//! it, except the [`START_ONLY_KEYS`](crate::config::START_ONLY_KEYS);
//! SIGINT/SIGTERM remove the routes and the device and log the counters; so
//! does a dataplane failure, which the workers report over
//! [`Shared::fail`](crate::dataplane::Shared::fail) and the main loop waits for.
//!
//! One module per job:
//! - `lifecycle`: [`run`]'s steps in order, the main loop, shutdown;
//! - `startup`: each setup step (device, sockets, MTU derivation, the
//!   privilege drop around the dataplane's start);
//! - [`routes`]: [`RouteManager`], which keeps the kernel's routes and the
//!   dataplane's LPM table in step over a [`KernelRoutes`];
//! - `requests`: the control socket's requests (route changes, status,
//!   stats), handled one at a time by the main loop, which owns the
//!   [`RouteManager`];
//! - `reload`: SIGHUP;
//! - `underlay`: choosing the underlay (`xdp`, `packet`, `raw`) and setting
//!   up the XDP program and its sockets;
//! - `neighbours`: the underlay's neighbour table for `packet` and `xdp`;
//! - `watch`: the underlay's address and link, and the tunnel device's
//!   state, followed over netlink (logged once per change, shown in
//!   status, and the routes put back when the device is up again);
//! - `notify`: readiness for systemd (`READY=1` once the routes are in);
//! - `signals`: the signals caught from the start;
//! - [`privileges`]: the capability drop, in three steps;
//! - `error`: [`DaemonError`] and [`RouteError`].
//!
//! The control socket (`[control] socket`) is bound before anything is
//! created, so a second daemon pointed at the same socket exits before it
//! touches the device or the routes.

use std::path::Path;

mod error;
mod follow;
mod lifecycle;
pub mod mirror;
mod neighbours;
mod notify;
pub mod privileges;
mod reload;
mod requests;
pub mod routes;
mod signals;
mod startup;
mod underlay;
mod watch;

pub use error::{DaemonError, RouteError};
pub use mirror::{RouteMirror, RouteStats, origin_name};
pub use requests::stats;
pub use routes::{KernelRoutes, NetlinkRoutes, RouteManager, RouteOrigin};

use crate::config::{Config, ConfigError};

/// The routing protocol number tunl tags its kernel routes with
/// (`ip route show proto 116`), so it can find and remove its own routes.
pub const ROUTE_PROTOCOL: u8 = 116;

/// What `tunl check` checks of this host beyond the file itself: that
/// `security.user` names a user. (The underlay MTU needs the device, and
/// is checked at start.)
///
/// # Errors
/// [`ConfigError::Invalid`] naming `security.user`.
pub fn check_host(config: &Config) -> Result<(), ConfigError> {
    startup::look_up_user(config).map(|_| ())
}

/// What the daemon says of its build (`tunl status` shows it); the binary
/// gives it, since only the binary knows its git commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// The release, e.g. `0.1.0`.
    pub version: &'static str,
    /// The short git commit it was built from, or `unknown`.
    pub commit: &'static str,
}

/// Runs the daemon until SIGINT or SIGTERM (or a dataplane failure).
///
/// # Errors
/// [`DaemonError`]: the config is invalid (in itself or on this host), a
/// setup step failed, or the dataplane stopped.
pub fn run(config_path: &Path, build: BuildInfo) -> Result<(), DaemonError> {
    let started = std::time::SystemTime::now();
    let config = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Runtime { source })?;
    rt.block_on(lifecycle::run(config, build, started))
}
