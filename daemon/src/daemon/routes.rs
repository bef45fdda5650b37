//! tunl's own routes: [`RouteManager`] is the writer of the routes the
//! config (`[[route]]`) and the control socket ask for, over a
//! [`KernelRoutes`] (netlink in the daemon, a fake in the tests), and the
//! owner of the [`RouteMirror`] that keeps the dataplane's LPM equal to the
//! kernel's routes on the device, tunl's and everyone else's.
//!
//! tunl's routes are `BLOCK via NODE dev tunl0 onlink proto 116` (metric
//! 0) in the kernel. A change is all or nothing: the LPM learns a route
//! before the kernel sends packets for it (the mirror is told at once, and
//! the kernel's notification confirms it later) and forgets it after the
//! kernel stopped, and a change the kernel refuses midway is undone on both
//! sides. tunl only ever removes routes with its own tag.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use ipnetwork::Ipv4Network;
use tracing::{debug, error, info, warn};
use tunl_io::netlink::{Netlink, NetlinkError, dump_ipv4_routes_of};

use super::ROUTE_PROTOCOL;
use super::error::RouteError;
use super::mirror::{Claim, RouteMirror, RouteStats};
use crate::config::Config;
use crate::control::{self, RouteChange};
use crate::dataplane::Shared;
use crate::metrics::RouteApplyMetrics;

/// A route set: block to next hop.
pub type Routes = BTreeMap<Ipv4Network, Ipv4Addr>;

/// Where a route change came from; its log lines say (`origin=SIGHUP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteOrigin {
    /// The config file, at start.
    Config,
    /// The config file, re-read on SIGHUP.
    Reload,
    /// A request on the control socket.
    Control,
}

impl RouteOrigin {
    /// The name the log uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            RouteOrigin::Config => "config",
            RouteOrigin::Reload => "SIGHUP",
            RouteOrigin::Control => "control socket",
        }
    }
}

impl std::fmt::Display for RouteOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The config's routes as a route set.
pub fn wanted_routes(config: &Config) -> Routes {
    config.routes.iter().map(|r| (r.prefix, r.via)).collect()
}

/// The kernel's side of tunl's routes: what [`RouteManager`] needs of
/// netlink. Every route it adds or lists carries tunl's tag
/// ([`ROUTE_PROTOCOL`]) and is in the configured table (`[routing] table`).
// Native async fn: the route manager runs on the daemon's current-thread
// runtime and is never moved to another thread, so its futures need not
// be `Send`.
#[allow(async_fn_in_trait)]
pub trait KernelRoutes {
    /// The index of this instance's TUN device.
    fn device(&self) -> u32;

    /// Installs `prefix via via dev DEVICE onlink`, replacing a route for
    /// the same prefix (so it is idempotent).
    async fn add(&mut self, prefix: Ipv4Network, via: Ipv4Addr) -> Result<(), NetlinkError>;

    /// [`add`](Self::add) for each of `routes`, in order, results in the
    /// same order; it may stop after the first refusal (the results are then
    /// fewer than the routes). The netlink implementation sends many per
    /// datagram and tries them all.
    async fn add_all(
        &mut self,
        routes: &[(Ipv4Network, Ipv4Addr)],
    ) -> Vec<Result<(), NetlinkError>> {
        let mut results = Vec::with_capacity(routes.len());
        for &(prefix, via) in routes {
            let r = self.add(prefix, via).await;
            let refused = r.is_err();
            results.push(r);
            if refused {
                break;
            }
        }
        results
    }

    /// Removes tunl's route for `prefix` out of device `oif`; succeeds when
    /// there is none.
    async fn del(&mut self, prefix: Ipv4Network, oif: u32) -> Result<(), NetlinkError>;

    /// [`del`](Self::del) for each of `prefixes` out of this device, in
    /// order, results in the same order (a refusal does not stop the rest).
    /// The netlink implementation sends many per datagram.
    async fn del_all(&mut self, prefixes: &[Ipv4Network]) -> Vec<Result<(), NetlinkError>> {
        let device = self.device();
        let mut results = Vec::with_capacity(prefixes.len());
        for &prefix in prefixes {
            results.push(self.del(prefix, device).await);
        }
        results
    }

    /// Every route with tunl's tag that goes out of a device: `(prefix, oif)`.
    async fn tagged(&mut self) -> Result<Vec<(Ipv4Network, u32)>, NetlinkError>;

    /// The name of device `oif` if it exists, is a TUN device and a
    /// process holds it (it has carrier): another live tunl instance.
    async fn tun_name(&mut self, oif: u32) -> Result<Option<String>, NetlinkError>;
}

/// [`KernelRoutes`] over netlink, for the TUN device `device` and the
/// routing table `table`.
#[derive(Debug, Clone)]
pub struct NetlinkRoutes {
    netlink: Netlink,
    device: u32,
    table: u32,
}

impl NetlinkRoutes {
    /// The routes of device `device` in `table` over this connection.
    pub fn new(netlink: Netlink, device: u32, table: u32) -> Self {
        NetlinkRoutes {
            netlink,
            device,
            table,
        }
    }
}

impl KernelRoutes for NetlinkRoutes {
    fn device(&self) -> u32 {
        self.device
    }

    async fn add(&mut self, prefix: Ipv4Network, via: Ipv4Addr) -> Result<(), NetlinkError> {
        self.netlink
            .add_route(prefix, via, self.device, ROUTE_PROTOCOL, self.table)
            .await
    }

    async fn add_all(
        &mut self,
        routes: &[(Ipv4Network, Ipv4Addr)],
    ) -> Vec<Result<(), NetlinkError>> {
        self.netlink
            .add_routes(routes, self.device, ROUTE_PROTOCOL, self.table)
            .await
    }

    async fn del(&mut self, prefix: Ipv4Network, oif: u32) -> Result<(), NetlinkError> {
        self.netlink
            .del_route(prefix, oif, ROUTE_PROTOCOL, self.table)
            .await
    }

    async fn del_all(&mut self, prefixes: &[Ipv4Network]) -> Vec<Result<(), NetlinkError>> {
        self.netlink
            .del_routes(prefixes, self.device, ROUTE_PROTOCOL, self.table)
            .await
    }

    async fn tagged(&mut self) -> Result<Vec<(Ipv4Network, u32)>, NetlinkError> {
        // Filtered by the kernel: cheap however many routes others have.
        let mut tagged = Vec::new();
        dump_ipv4_routes_of(self.table, Some(ROUTE_PROTOCOL), |route| {
            tagged.extend(route.hops.iter().map(|h| (route.prefix, h.oif)));
        })
        .await?;
        Ok(tagged)
    }

    async fn tun_name(&mut self, oif: u32) -> Result<Option<String>, NetlinkError> {
        Ok(match self.netlink.link_name_and_tun(oif).await? {
            Some((name, true)) => {
                let held = self.netlink.link_state(&name).await?;
                held.filter(|s| s.index == oif && s.tun && s.carrier)
                    .map(|_| name)
            }
            _ => None,
        })
    }
}

/// tunl's routes in the kernel, and the mirror of every route on the device.
pub struct RouteManager<K> {
    mirror: RouteMirror,
    kernel: K,
    /// tunl's own routes, as the kernel accepted them.
    own: Routes,
    apply_metrics: Arc<RouteApplyMetrics>,
}

impl<K: KernelRoutes> RouteManager<K> {
    /// A manager of tunl's routes through `kernel`, with the mirror of the
    /// device's routes (loaded or not).
    pub fn new(mirror: RouteMirror, kernel: K) -> Self {
        RouteManager {
            mirror,
            kernel,
            own: Routes::new(),
            apply_metrics: Arc::default(),
        }
    }

    /// tunl's own routes (config and control socket), block to next hop.
    pub fn routes(&self) -> &Routes {
        &self.own
    }

    /// The mirror of the kernel's routes on the device.
    pub fn mirror(&self) -> &RouteMirror {
        &self.mirror
    }

    /// The mirror, to feed it the kernel's changes.
    pub fn mirror_mut(&mut self) -> &mut RouteMirror {
        &mut self.mirror
    }

    /// The mirror, to reload it, and tunl's own routes, which a reload
    /// keeps.
    pub fn mirror_and_own(&mut self) -> (&mut RouteMirror, &Routes) {
        (&mut self.mirror, &self.own)
    }

    /// The route figures, kept for the metrics endpoint.
    pub fn stats(&self) -> Arc<RouteStats> {
        self.mirror.stats().clone()
    }

    /// How route changes went (durations, failures), kept for the metrics
    /// endpoint.
    pub fn apply_metrics(&self) -> Arc<RouteApplyMetrics> {
        self.apply_metrics.clone()
    }

    /// The state shared with the dataplane.
    pub fn shared(&self) -> &Arc<Shared> {
        self.mirror.shared()
    }

    /// The index of the device the routes go through.
    pub fn tunnel_device(&self) -> u32 {
        self.kernel.device()
    }

    /// The kernel side (tests look at the fake's record).
    #[cfg(test)]
    pub(crate) fn kernel(&self) -> &K {
        &self.kernel
    }

    /// The kernel side, to set up the fake.
    #[cfg(test)]
    pub(crate) fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// Installs every one of tunl's routes in the kernel again (each a
    /// replace, so those still there are unchanged): after the device was
    /// set down and up, the kernel has removed them, without a word. The
    /// LPM is left to the mirror, which learns them back from the kernel's
    /// notifications. Returns how many went in; a refused one is logged.
    pub async fn reinstall(&mut self) -> usize {
        let own: Vec<(Ipv4Network, Ipv4Addr)> = self.own.iter().map(|(p, v)| (*p, *v)).collect();
        let results = self.kernel.add_all(&own).await;
        let mut done = 0;
        for ((prefix, via), result) in own.iter().zip(results) {
            match result {
                Ok(()) => done += 1,
                Err(e) => warn!(%prefix, %via, error = %e, "cannot put a route back"),
            }
        }
        done
    }

    /// Makes tunl's route set equal to `wanted` (asked for by `origin`,
    /// which the log lines name), all or nothing: the
    /// dataplane learns new routes before the kernel sends packets for
    /// them, and forgets old ones after the kernel stopped. Unchanged routes
    /// are not touched, so they carry packets throughout. When the kernel
    /// refuses a change, the changes made so far are undone (kernel and
    /// LPM) and the error returned. Routes others installed are left alone,
    /// but a tunl route replaces any other metric-0 route for its prefix (as
    /// `ip route replace` does).
    ///
    /// # Errors
    /// [`RouteError`]: a prefix another live tunl instance routes, a failed
    /// check for one, or a kernel refusal; in each case nothing was changed.
    pub async fn apply(
        &mut self,
        wanted: &Routes,
        origin: RouteOrigin,
    ) -> Result<RouteChange, RouteError> {
        let current = &self.own;
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
        let unchanged = wanted.len() - added.len();
        self.apply_delta(added, removed, unchanged, origin).await
    }

    /// Adds `prefix via via` to tunl's routes (or moves the block), or with
    /// `via` `None` removes tunl's route for `prefix`: [`RouteManager::apply`]
    /// for one route, at a cost that does not grow with the route set (no
    /// copy of it, no dump).
    ///
    /// # Errors
    /// As [`RouteManager::apply`].
    pub async fn change_one(
        &mut self,
        prefix: Ipv4Network,
        via: Option<Ipv4Addr>,
        origin: RouteOrigin,
    ) -> Result<RouteChange, RouteError> {
        let now = self.own.get(&prefix).copied();
        let (added, removed) = match (now, via) {
            (Some(n), Some(v)) if n == v => (vec![], vec![]),
            (_, Some(v)) => (vec![(prefix, v)], vec![]),
            (Some(_), None) => (vec![], vec![prefix]),
            (None, None) => (vec![], vec![]),
        };
        let after = self.own.len() + usize::from(now.is_none() && via.is_some())
            - usize::from(now.is_some() && via.is_none());
        let unchanged = after - added.len();
        self.apply_delta(added, removed, unchanged, origin).await
    }

    /// Applies a difference to tunl's routes: `added` (new prefixes or
    /// moved ones), `removed`; `unchanged` is the count of routes left as
    /// they are, for the reply.
    async fn apply_delta(
        &mut self,
        added: Vec<(Ipv4Network, Ipv4Addr)>,
        removed: Vec<Ipv4Network>,
        unchanged: usize,
        origin: RouteOrigin,
    ) -> Result<RouteChange, RouteError> {
        let change = RouteChange {
            added: added
                .iter()
                .map(|(prefix, via)| control::Route {
                    prefix: *prefix,
                    via: *via,
                })
                .collect(),
            removed: removed.clone(),
            unchanged,
        };
        if added.is_empty() && removed.is_empty() {
            return Ok(change);
        }
        let started = Instant::now();
        let result = self.change(&added, &removed, origin).await;
        self.apply_metrics.record(started.elapsed(), result.is_ok());
        if result.is_ok() {
            // One line per change set; each route at debug level.
            info!(
                added = added.len(),
                removed = removed.len(),
                unchanged = change.unchanged,
                %origin,
                "routes changed"
            );
        }
        result.map(|()| change)
    }

    /// The part of [`RouteManager::apply`] that changes something, timed
    /// for the metrics.
    async fn change(
        &mut self,
        added: &[(Ipv4Network, Ipv4Addr)],
        removed: &[Ipv4Network],
        origin: RouteOrigin,
    ) -> Result<(), RouteError> {
        // What the touched prefixes route to now: all a rollback needs.
        let before: Routes = added
            .iter()
            .map(|(p, _)| *p)
            .chain(removed.iter().copied())
            .filter_map(|p| self.own.get(&p).map(|v| (p, *v)))
            .collect();
        let new: std::collections::HashSet<Ipv4Network> = added
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !before.contains_key(p))
            .collect();
        if !new.is_empty() {
            let held = self
                .routed_by_another_instance(|p| new.contains(p))
                .await
                .map_err(|source| RouteError::OtherInstanceCheck { source })?;
            if let Some((prefix, device)) = held {
                return Err(RouteError::HeldByAnotherInstance { prefix, device });
            }
        }
        // One LPM publication for all of them.
        let claims: Vec<Claim> = self.mirror.claim_all(added);
        let mut installed = Vec::new();
        let mut deleted = Vec::new();
        let result = self
            .change_kernel(added, removed, origin, &mut installed, &mut deleted)
            .await;
        if let Err(e) = result {
            self.roll_back(&before, claims, &installed, &deleted, origin)
                .await;
            return Err(e);
        }
        if !removed.is_empty() {
            self.mirror.forget_all(
                removed
                    .iter()
                    .filter_map(|p| before.get(p).map(|v| (*p, *v))),
            );
        }
        for prefix in removed {
            self.own.remove(prefix);
        }
        self.own.extend(added.iter().copied());
        Ok(())
    }

    /// Installs `added`, then removes `removed`, until the kernel refuses
    /// one; records what it did in `installed` and `deleted`.
    async fn change_kernel(
        &mut self,
        added: &[(Ipv4Network, Ipv4Addr)],
        removed: &[Ipv4Network],
        origin: RouteOrigin,
        installed: &mut Vec<Ipv4Network>,
        deleted: &mut Vec<Ipv4Network>,
    ) -> Result<(), RouteError> {
        // Every route the kernel took is recorded, also those after a
        // refusal (several are in flight at once), so a roll back undoes
        // them all.
        let mut refused = None;
        let results = self.kernel.add_all(added).await;
        for (&(prefix, via), result) in added.iter().zip(results) {
            match result {
                Ok(()) => {
                    debug!(%prefix, %via, %origin, "route installed");
                    installed.push(prefix);
                }
                Err(source) => {
                    refused.get_or_insert(RouteError::Install {
                        prefix,
                        via,
                        source,
                    });
                }
            }
        }
        if let Some(e) = refused {
            return Err(e);
        }
        // The same for removals: every one the kernel did is recorded.
        let results = self.kernel.del_all(removed).await;
        for (&prefix, result) in removed.iter().zip(results) {
            match result {
                Ok(()) => {
                    debug!(%prefix, %origin, "route removed");
                    deleted.push(prefix);
                }
                Err(source) => {
                    refused.get_or_insert(RouteError::Remove { prefix, source });
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Undoes a partly applied change: kernel routes first, then the LPM.
    async fn roll_back(
        &mut self,
        before: &Routes,
        claims: Vec<Claim>,
        installed: &[Ipv4Network],
        deleted: &[Ipv4Network],
        origin: RouteOrigin,
    ) {
        let device = self.kernel.device();
        for prefix in deleted.iter().chain(installed) {
            let result = match before.get(prefix) {
                Some(via) => self.kernel.add(*prefix, *via).await,
                None => self.kernel.del(*prefix, device).await,
            };
            if let Err(e) = result {
                error!(%prefix, error = %e, "cannot roll back a kernel route");
            }
        }
        for claim in claims.into_iter().rev() {
            self.mirror.unclaim(claim);
        }
        warn!(%origin, "route change rolled back");
    }

    /// Removes every kernel route this instance installed (the daemon is
    /// stopping); routes others installed stay, in the kernel and in the
    /// LPM until the workers stop.
    pub async fn remove_all(&mut self) {
        let own: Vec<Ipv4Network> = self.own.keys().copied().collect();
        let results = self.kernel.del_all(&own).await;
        for (prefix, result) in own.iter().zip(results) {
            if let Err(e) = result {
                warn!(%prefix, error = %e, "cannot remove kernel route");
            }
        }
        self.own.clear();
        self.mirror.forget_own();
    }

    /// Removes kernel routes with tunl's tag that `wanted` does not name:
    /// left by a daemon that was killed while its device persisted, or moved
    /// by hand. Routes on another TUN device that a process holds are left
    /// alone: they belong to another live tunl instance (another
    /// `tunnel.name`). Routes without tunl's tag are never touched.
    /// Wanted routes are left to [`RouteManager::apply`]: installing one on
    /// our device replaces it, unless another live instance holds it, which
    /// `apply` refuses.
    pub async fn remove_stale(&mut self, wanted: &Routes) {
        let existing = match self.kernel.tagged().await {
            Ok(routes) => routes,
            Err(e) => {
                warn!(error = %e, "cannot list routes with tunl's tag; stale ones are not removed");
                return;
            }
        };
        let device = self.kernel.device();
        let (mut removed, mut other_instance) = (0usize, 0usize);
        for (prefix, oif) in existing {
            if wanted.contains_key(&prefix) {
                continue;
            }
            if oif != device {
                match self.kernel.tun_name(oif).await {
                    Ok(Some(dev)) => {
                        debug!(%prefix, device = %dev, "route with tunl's tag on another TUN device (another tunl instance?) left alone");
                        other_instance += 1;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(%prefix, error = %e, "cannot tell whose route this is; left alone");
                        continue;
                    }
                }
            }
            match self.kernel.del(prefix, oif).await {
                Ok(()) => {
                    debug!(%prefix, "stale tunl route removed");
                    removed += 1;
                }
                Err(e) => warn!(%prefix, error = %e, "cannot remove stale tunl route"),
            }
        }
        if removed > 0 {
            info!(routes = removed, "stale tunl routes removed");
        }
        if other_instance > 0 {
            info!(
                routes = other_instance,
                "routes with tunl's tag on another TUN device (another tunl instance?) left alone"
            );
        }
    }

    /// The first route with tunl's tag whose prefix is `wanted` and which
    /// goes out of another TUN device that a process holds: another tunl
    /// instance routes that prefix. Returns it with that device's name.
    /// The candidates come from the mirror, which sees every route of the
    /// table (no dump per change); only their devices are looked up. Fails
    /// closed: a failed lookup is an error, never taken for "no conflict".
    async fn routed_by_another_instance(
        &mut self,
        wanted: impl Fn(&Ipv4Network) -> bool,
    ) -> Result<Option<(Ipv4Network, String)>, NetlinkError> {
        let device = self.kernel.device();
        for (prefix, oif) in self.mirror.tagged_elsewhere(wanted) {
            if oif != device {
                if let Some(name) = self.kernel.tun_name(oif).await? {
                    return Ok(Some((prefix, name)));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A kernel routing table in memory, for tests without root.

    use std::collections::BTreeMap;
    use std::io;
    use std::net::Ipv4Addr;

    use ipnetwork::Ipv4Network;
    use tunl_io::netlink::NetlinkError;
    use tunl_routing::RouteReader;

    use super::{KernelRoutes, Routes};
    use crate::dataplane::NextHop;

    /// A call the route manager made, as the fake saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum KernelCall {
        /// `add(prefix, via)`.
        Add(Ipv4Network, Ipv4Addr),
        /// `del(prefix, oif)`.
        Del(Ipv4Network, u32),
        /// `tagged()`.
        Tagged,
        /// `tun_name(oif)`.
        TunName(u32),
    }

    /// tunl's routes in a kernel that refuses what it is told to.
    pub struct FakeKernel {
        /// Our TUN device's index.
        pub device: u32,
        /// The kernel's routes with tunl's tag: prefix to (via, oif).
        pub routes: BTreeMap<Ipv4Network, (Ipv4Addr, u32)>,
        /// The TUN devices that exist, by index (ours included).
        pub tun_devices: BTreeMap<u32, String>,
        /// Calls that fail with EPERM, as the kernel refusing them.
        pub refuse: Vec<KernelCall>,
        /// Every call made, with the LPM table as the dataplane saw it then.
        pub calls: Vec<(KernelCall, Routes)>,
        lpm: RouteReader<NextHop>,
    }

    /// The routes to a node in an LPM, as a route set.
    pub fn node_routes(lpm: &RouteReader<NextHop>) -> Routes {
        lpm.load()
            .iter()
            .filter_map(|(p, hop)| match hop {
                NextHop::Node(a) => Some((p, a)),
                _ => None,
            })
            .collect()
    }

    impl FakeKernel {
        /// An empty kernel whose calls record the table behind `lpm`.
        pub fn new(device: u32, lpm: RouteReader<NextHop>) -> Self {
            FakeKernel {
                device,
                routes: BTreeMap::new(),
                tun_devices: BTreeMap::from([(device, "tunl0".to_owned())]),
                refuse: Vec::new(),
                calls: Vec::new(),
                lpm,
            }
        }

        /// Our routes in the kernel: block to next hop.
        pub fn ours(&self) -> Routes {
            self.routes
                .iter()
                .filter(|(_, (_, oif))| *oif == self.device)
                .map(|(p, (via, _))| (*p, *via))
                .collect()
        }

        /// Just the calls, without the LPM states.
        pub fn call_list(&self) -> Vec<KernelCall> {
            self.calls.iter().map(|(c, _)| c.clone()).collect()
        }

        fn call(&mut self, call: KernelCall) -> Result<(), NetlinkError> {
            let lpm = node_routes(&self.lpm);
            let refused = self.refuse.contains(&call);
            self.calls.push((call.clone(), lpm));
            if refused {
                return Err(NetlinkError::Kernel {
                    op: format!("{call:?}"),
                    source: io::Error::from_raw_os_error(nix::errno::Errno::EPERM as i32),
                });
            }
            Ok(())
        }
    }

    impl KernelRoutes for FakeKernel {
        fn device(&self) -> u32 {
            self.device
        }

        async fn add(&mut self, prefix: Ipv4Network, via: Ipv4Addr) -> Result<(), NetlinkError> {
            self.call(KernelCall::Add(prefix, via))?;
            self.routes.insert(prefix, (via, self.device));
            Ok(())
        }

        async fn del(&mut self, prefix: Ipv4Network, oif: u32) -> Result<(), NetlinkError> {
            self.call(KernelCall::Del(prefix, oif))?;
            if self.routes.get(&prefix).is_some_and(|(_, o)| *o == oif) {
                self.routes.remove(&prefix);
            }
            Ok(())
        }

        async fn tagged(&mut self) -> Result<Vec<(Ipv4Network, u32)>, NetlinkError> {
            self.call(KernelCall::Tagged)?;
            Ok(self.routes.iter().map(|(p, (_, oif))| (*p, *oif)).collect())
        }

        async fn tun_name(&mut self, oif: u32) -> Result<Option<String>, NetlinkError> {
            self.call(KernelCall::TunName(oif))?;
            Ok(self.tun_devices.get(&oif).cloned())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tunl_encap::TunnelSettings;
    use tunl_routing::RouteReader;

    use super::fake::{FakeKernel, KernelCall, node_routes};
    use super::*;
    use crate::daemon::mirror::RouteMirror;
    use crate::dataplane::{NextHop, Policy};

    pub(crate) const DEVICE: u32 = 7;

    pub(crate) fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    pub(crate) fn node(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 16, 36, last)
    }

    pub(crate) fn routes(list: &[(&str, u8)]) -> Routes {
        list.iter().map(|(p, n)| (net(p), node(*n))).collect()
    }

    /// A manager over a fake kernel, with the LPM reader the fake records.
    pub(crate) fn manager() -> (RouteManager<FakeKernel>, RouteReader<NextHop>) {
        let shared = Arc::new(Shared::new(Policy {
            settings: TunnelSettings::new(Ipv4Addr::new(172, 16, 35, 4)),
            vias: Vec::new(),
            multipath: Default::default(),
            allow: Vec::new(),
            blocks: Vec::new(),
            allow_nested: false,
            strict_source: false,
        }));
        let mut mirror = RouteMirror::new(254, DEVICE, shared);
        let reader = mirror.reader();
        let kernel = FakeKernel::new(DEVICE, reader.clone());
        (RouteManager::new(mirror, kernel), reader)
    }

    /// Tells the mirror about a route with tunl's tag out of device `oif`
    /// (another instance's), as the kernel's notification would.
    fn tagged_elsewhere(m: &mut RouteManager<FakeKernel>, prefix: &str, oif: u32) {
        m.mirror_mut().apply(&[tunl_io::netlink::RouteEvent::New {
            route: tunl_io::netlink::KernelRoute {
                table: 254,
                prefix: net(prefix),
                tos: 0,
                metric: 0,
                protocol: ROUTE_PROTOCOL,
                unicast: true,
                hops: vec![tunl_io::netlink::KernelHop {
                    oif,
                    gateway: Some(node(5)),
                    weight: 1,
                }],
            },
            replace: false,
            append: false,
            exclusive: true,
        }]);
    }

    #[test]
    fn a_change_set_is_one_lpm_publication_each_way() {
        let (mut m, reader) = manager();
        let big: Routes = (0..1000u32)
            .map(|i| {
                let p = Ipv4Network::new(Ipv4Addr::from(0x0a40_0000 + i * 64), 26).unwrap();
                (p, node(5))
            })
            .collect();
        let (before, _) = m.stats().updates();
        run(m.apply(&big, RouteOrigin::Config)).unwrap();
        assert_eq!(
            m.stats().updates().0 - before,
            1,
            "the adds: one publication"
        );
        assert_eq!(lpm(&reader), big);
        // Every add was made with all of them in the LPM already.
        assert!(
            m.kernel
                .calls
                .iter()
                .all(|(_, lpm_then)| lpm_then.len() == 1000)
        );
        let (before, _) = m.stats().updates();
        run(m.apply(&Routes::new(), RouteOrigin::Config)).unwrap();
        assert_eq!(
            m.stats().updates().0 - before,
            1,
            "the removals: one publication"
        );
        assert!(lpm(&reader).is_empty());
    }

    #[test]
    fn one_route_is_added_moved_and_removed_without_a_copy_or_a_dump() {
        let (mut m, reader) = manager();
        let base = routes(&[("10.20.1.0/26", 5), ("10.20.2.0/26", 6)]);
        run(m.apply(&base, RouteOrigin::Config)).unwrap();
        m.kernel.calls.clear();
        let c =
            run(m.change_one(net("10.20.3.0/26"), Some(node(7)), RouteOrigin::Control)).unwrap();
        assert_eq!((c.added.len(), c.removed.len(), c.unchanged), (1, 0, 2));
        let c =
            run(m.change_one(net("10.20.3.0/26"), Some(node(8)), RouteOrigin::Control)).unwrap();
        assert_eq!((c.added.len(), c.removed.len(), c.unchanged), (1, 0, 2));
        let c =
            run(m.change_one(net("10.20.3.0/26"), Some(node(8)), RouteOrigin::Control)).unwrap();
        assert_eq!((c.added.len(), c.removed.len(), c.unchanged), (0, 0, 3));
        let c = run(m.change_one(net("10.20.1.0/26"), None, RouteOrigin::Control)).unwrap();
        assert_eq!((c.added.len(), c.removed.len(), c.unchanged), (0, 1, 2));
        let c = run(m.change_one(net("10.20.9.0/26"), None, RouteOrigin::Control)).unwrap();
        assert_eq!((c.added.len(), c.removed.len(), c.unchanged), (0, 0, 2));
        let want = routes(&[("10.20.2.0/26", 6), ("10.20.3.0/26", 8)]);
        assert_eq!(*m.routes(), want);
        assert_eq!(m.kernel.ours(), want);
        assert_eq!(lpm(&reader), want);
        assert_eq!(
            m.kernel.call_list(),
            vec![
                KernelCall::Add(net("10.20.3.0/26"), node(7)),
                KernelCall::Add(net("10.20.3.0/26"), node(8)),
                KernelCall::Del(net("10.20.1.0/26"), DEVICE),
            ],
            "no dump, no other call"
        );
        // A refused one changes nothing.
        m.kernel.refuse = vec![KernelCall::Add(net("10.20.4.0/26"), node(5))];
        run(m.change_one(net("10.20.4.0/26"), Some(node(5)), RouteOrigin::Control)).unwrap_err();
        assert_eq!(*m.routes(), want);
        assert_eq!(lpm(&reader), want);
    }

    fn lpm(reader: &RouteReader<NextHop>) -> Routes {
        node_routes(reader)
    }

    fn vias(m: &RouteManager<FakeKernel>) -> Vec<Ipv4Addr> {
        m.shared().policy.load().vias.clone()
    }

    fn count(m: &RouteManager<FakeKernel>) -> usize {
        m.stats().total()
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn reinstall_puts_back_what_the_kernel_dropped() {
        let (mut m, reader) = manager();
        let set = routes(&[("10.20.1.0/26", 5), ("10.20.2.0/26", 6)]);
        run(m.apply(&set, RouteOrigin::Config)).unwrap();
        // The device went down: the kernel flushed its routes.
        m.kernel.routes.clear();
        m.kernel.refuse = vec![KernelCall::Add(net("10.20.2.0/26"), node(6))];
        assert_eq!(run(m.reinstall()), 1, "one refused");
        assert_eq!(m.kernel.ours(), routes(&[("10.20.1.0/26", 5)]));
        m.kernel.refuse.clear();
        assert_eq!(run(m.reinstall()), 2);
        assert_eq!(m.kernel.ours(), set);
        assert_eq!(lpm(&reader), set, "the LPM is as it was");
    }

    #[test]
    fn the_lpm_learns_a_route_before_the_kernel_and_forgets_it_after() {
        let (mut m, reader) = manager();
        let first = routes(&[("10.20.1.0/26", 5), ("10.20.2.0/26", 6)]);
        let change = run(m.apply(&first, RouteOrigin::Config)).unwrap();
        assert_eq!(change.added.len(), 2);
        assert_eq!((change.removed.len(), change.unchanged), (0, 0));
        assert_eq!(m.kernel.ours(), first);
        assert_eq!(lpm(&reader), first);
        assert_eq!(vias(&m), vec![node(5), node(6)]);
        assert_eq!(count(&m), 2);
        // New prefixes: the other-instance check needs no dump (the mirror
        // knows the table), then the adds, each with the route already in
        // the LPM.
        for (call, lpm_then) in &m.kernel.calls {
            let KernelCall::Add(prefix, via) = call else {
                panic!("unexpected call {call:?}");
            };
            assert_eq!(lpm_then.get(prefix), Some(via), "{call:?}: {lpm_then:?}");
        }

        m.kernel.calls.clear();
        let second = routes(&[("10.20.1.0/26", 5)]);
        let change = run(m.apply(&second, RouteOrigin::Config)).unwrap();
        assert_eq!(change.removed, vec![net("10.20.2.0/26")]);
        assert_eq!(change.unchanged, 1);
        let [(call, lpm_then)] = &m.kernel.calls[..] else {
            panic!("one delete expected: {:?}", m.kernel.call_list());
        };
        assert_eq!(*call, KernelCall::Del(net("10.20.2.0/26"), DEVICE));
        assert!(
            lpm_then.contains_key(&net("10.20.2.0/26")),
            "the LPM forgot the route before the kernel did"
        );
        assert_eq!(lpm(&reader), second);
        assert_eq!(m.kernel.ours(), second);
        assert_eq!(vias(&m), vec![node(5)]);
        assert_eq!(count(&m), 1);
    }

    #[test]
    fn an_add_refused_after_others_succeeded_changes_nothing() {
        let (mut m, reader) = manager();
        let before = routes(&[("10.20.1.0/26", 5), ("10.20.2.0/26", 5)]);
        run(m.apply(&before, RouteOrigin::Config)).unwrap();
        // 10.20.2.0/26 moves to node 6, 10.20.3.0/26 is new, 10.20.4.0/26
        // is new and refused: the first two were done by then.
        let wanted = routes(&[
            ("10.20.1.0/26", 5),
            ("10.20.2.0/26", 6),
            ("10.20.3.0/26", 6),
            ("10.20.4.0/26", 7),
        ]);
        m.kernel.refuse = vec![KernelCall::Add(net("10.20.4.0/26"), node(7))];
        m.kernel.calls.clear();
        let e = run(m.apply(&wanted, RouteOrigin::Config)).unwrap_err();
        assert!(
            matches!(&e, RouteError::Install { prefix, .. } if *prefix == net("10.20.4.0/26")),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains("cannot install route 10.20.4.0/26 via 172.16.36.7"),
            "{text}"
        );
        assert!(text.ends_with("nothing was changed"), "{text}");
        assert!(
            m.kernel
                .call_list()
                .contains(&KernelCall::Add(net("10.20.3.0/26"), node(6))),
            "the refusal came after other adds: {:?}",
            m.kernel.call_list()
        );
        assert_eq!(m.kernel.ours(), before, "kernel as before");
        assert_eq!(lpm(&reader), before, "LPM as before");
        assert_eq!(*m.routes(), before);
        assert_eq!(vias(&m), vec![node(5)]);
        assert_eq!(count(&m), 2);
    }

    #[test]
    fn a_delete_refused_changes_nothing() {
        let (mut m, reader) = manager();
        let before = routes(&[
            ("10.20.1.0/26", 5),
            ("10.20.2.0/26", 6),
            ("10.20.3.0/26", 6),
        ]);
        run(m.apply(&before, RouteOrigin::Config)).unwrap();
        // Add one, remove two; the second removal is refused.
        let wanted = routes(&[("10.20.1.0/26", 5), ("10.20.9.0/26", 8)]);
        m.kernel.refuse = vec![KernelCall::Del(net("10.20.3.0/26"), DEVICE)];
        m.kernel.calls.clear();
        let e = run(m.apply(&wanted, RouteOrigin::Config)).unwrap_err();
        assert!(matches!(e, RouteError::Remove { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("cannot remove route 10.20.3.0/26"), "{text}");
        assert!(text.ends_with("nothing was changed"), "{text}");
        let calls = m.kernel.call_list();
        assert!(
            calls.contains(&KernelCall::Del(net("10.20.2.0/26"), DEVICE)),
            "{calls:?}"
        );
        assert_eq!(m.kernel.ours(), before, "kernel as before: {calls:?}");
        assert_eq!(lpm(&reader), before, "LPM as before");
        assert_eq!(vias(&m), vec![node(5), node(6)]);
        // The rollback put the deleted route back before the LPM dropped
        // the added one: the kernel never had a route the LPM lacked.
        for (call, lpm_then) in &m.kernel.calls {
            if let KernelCall::Add(prefix, via) = call {
                assert_eq!(lpm_then.get(prefix), Some(via), "{call:?}");
            }
        }
    }

    #[test]
    fn a_prefix_another_instance_routes_is_refused_before_anything_changes() {
        let (mut m, reader) = manager();
        m.kernel.routes.insert(net("10.97.0.0/26"), (node(5), 9));
        tagged_elsewhere(&mut m, "10.97.0.0/26", 9);
        m.kernel.tun_devices.insert(9, "tunl9".to_owned());
        // A route on a device that is not TUN (moved by hand) is no conflict.
        m.kernel.routes.insert(net("10.98.0.0/26"), (node(5), 2));
        tagged_elsewhere(&mut m, "10.98.0.0/26", 2);
        let e = run(m.apply(
            &routes(&[("10.20.1.0/26", 5), ("10.97.0.0/26", 6)]),
            RouteOrigin::Config,
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "route 10.97.0.0/26 is already installed by tunl on the TUN device tunl9 \
             (another tunl instance?); stop it or remove the route from one of them; \
             nothing was changed"
        );
        assert!(
            !m.kernel
                .call_list()
                .iter()
                .any(|c| matches!(c, KernelCall::Add(..) | KernelCall::Del(..))),
            "{:?}",
            m.kernel.call_list()
        );
        assert!(lpm(&reader).is_empty());
        run(m.apply(&routes(&[("10.98.0.0/26", 6)]), RouteOrigin::Config)).unwrap();
        assert_eq!(m.kernel.ours(), routes(&[("10.98.0.0/26", 6)]));
    }

    #[test]
    fn the_other_instance_check_fails_closed() {
        let (mut m, reader) = manager();
        tagged_elsewhere(&mut m, "10.20.1.0/26", 9);
        m.kernel.refuse = vec![KernelCall::TunName(9)];
        let e = run(m.apply(&routes(&[("10.20.1.0/26", 5)]), RouteOrigin::Config)).unwrap_err();
        assert!(matches!(e, RouteError::OtherInstanceCheck { .. }), "{e:?}");
        assert!(e.to_string().ends_with("nothing was changed"), "{e}");
        assert!(lpm(&reader).is_empty());
        assert!(m.kernel.routes.is_empty());
    }

    #[test]
    fn moving_a_route_needs_no_other_instance_check() {
        let (mut m, _) = manager();
        run(m.apply(&routes(&[("10.20.1.0/26", 5)]), RouteOrigin::Config)).unwrap();
        m.kernel.calls.clear();
        let change = run(m.apply(&routes(&[("10.20.1.0/26", 6)]), RouteOrigin::Config)).unwrap();
        assert_eq!(change.added.len(), 1);
        assert_eq!(
            m.kernel.call_list(),
            vec![KernelCall::Add(net("10.20.1.0/26"), node(6))]
        );
        m.kernel.calls.clear();
        let change = run(m.apply(&routes(&[("10.20.1.0/26", 6)]), RouteOrigin::Config)).unwrap();
        assert_eq!((change.added.len(), change.unchanged), (0, 1));
        assert!(m.kernel.calls.is_empty(), "nothing to do, nothing done");
    }

    #[test]
    fn stale_routes_go_and_other_instances_routes_stay() {
        let (mut m, _) = manager();
        let k = &mut m.kernel;
        k.routes.insert(net("10.20.1.0/26"), (node(5), DEVICE)); // wanted
        k.routes.insert(net("10.20.2.0/26"), (node(5), DEVICE)); // stale, ours
        k.routes.insert(net("10.20.3.0/26"), (node(5), 2)); // moved by hand
        k.routes.insert(net("10.97.0.0/26"), (node(5), 9)); // another instance
        k.tun_devices.insert(9, "tunl9".to_owned());
        run(m.remove_stale(&routes(&[("10.20.1.0/26", 6)])));
        let left: Vec<_> = m.kernel.routes.keys().copied().collect();
        assert_eq!(left, vec![net("10.20.1.0/26"), net("10.97.0.0/26")]);
    }

    #[test]
    fn changes_are_timed_and_failures_counted_for_the_metrics() {
        let (mut m, _) = manager();
        let metrics = m.apply_metrics();
        run(m.apply(&routes(&[("10.20.1.0/26", 5)]), RouteOrigin::Config)).unwrap();
        // Nothing to change: not a route change, not timed.
        run(m.apply(&routes(&[("10.20.1.0/26", 5)]), RouteOrigin::Config)).unwrap();
        m.kernel.refuse = vec![KernelCall::Add(net("10.20.2.0/26"), node(6))];
        run(m.apply(
            &routes(&[("10.20.1.0/26", 5), ("10.20.2.0/26", 6)]),
            RouteOrigin::Config,
        ))
        .unwrap_err();
        tagged_elsewhere(&mut m, "10.20.3.0/26", 9);
        m.kernel.refuse = vec![KernelCall::TunName(9)];
        run(m.apply(&routes(&[("10.20.3.0/26", 7)]), RouteOrigin::Config)).unwrap_err();
        let h = metrics.histogram();
        assert_eq!(h.count, 3, "{h:?}");
        // The fake kernel answers at once: all in the 10 s bucket.
        assert_eq!(h.cumulative.last(), Some(&3), "{h:?}");
        assert_eq!(metrics.failures(), 2);
    }

    #[test]
    fn remove_all_empties_kernel_and_lpm() {
        let (mut m, reader) = manager();
        m.kernel.routes.insert(net("10.97.0.0/26"), (node(5), 9));
        m.kernel.tun_devices.insert(9, "tunl9".to_owned());
        run(m.apply(
            &routes(&[("10.20.1.0/26", 5), ("10.20.2.0/26", 6)]),
            RouteOrigin::Config,
        ))
        .unwrap();
        run(m.remove_all());
        assert!(m.kernel.ours().is_empty());
        assert!(lpm(&reader).is_empty());
        assert_eq!(count(&m), 0);
        assert!(
            m.kernel.routes.contains_key(&net("10.97.0.0/26")),
            "another instance's route stays"
        );
    }
}
