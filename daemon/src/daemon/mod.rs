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
//! - `neighbours`: the underlay's neighbour table for `packet_tx`;
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
pub mod privileges;
mod reload;
mod requests;
pub mod routes;
mod signals;
mod startup;

pub use error::{DaemonError, RouteError};
pub use mirror::{RouteMirror, RouteStats, origin_name};
pub use requests::stats;
pub use routes::{KernelRoutes, NetlinkRoutes, RouteManager};

use crate::config::Config;

/// The routing protocol number tunl tags its kernel routes with
/// (`ip route show proto 116`), so it can find and remove its own routes.
pub const ROUTE_PROTOCOL: u8 = 116;

/// Runs the daemon until SIGINT or SIGTERM (or a dataplane failure).
///
/// # Errors
/// [`DaemonError`]: the config is invalid (in itself or on this host), a
/// setup step failed, or the dataplane stopped.
pub fn run(config_path: &Path) -> Result<(), DaemonError> {
    let config = Config::load(config_path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Runtime { source })?;
    rt.block_on(lifecycle::run(config))
}
