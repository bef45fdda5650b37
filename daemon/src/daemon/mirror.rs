//! The mirror of the kernel's routes on tunl's device: [`RouteMirror`]
//! keeps the dataplane's LPM equal to what the kernel would route into the
//! device, whoever installed the routes (BIRD, FRR, `ip route`, tunl
//! itself).
//!
//! # What is mirrored
//! Every IPv4 unicast route of the configured table (`[routing] table`)
//! with a next hop out of tunl's device. Of the routes for one prefix (the
//! kernel keys a route by `(table, prefix, tos, metric)`), the one the
//! kernel would use wins: TOS 0 before a TOS-specific one (the LPM cannot
//! tell packets apart by TOS), then the lowest metric, then the first in
//! the kernel's order (only `ip route append`/`prepend` make several routes
//! share a key). The winner's next hop goes into the LPM:
//! - a gateway: [`NextHop::Node`];
//! - no gateway: [`NextHop::Direct`] (toward the inner destination);
//! - several next hops on the device (multipath): [`NextHop::Multipath`],
//!   an index into the groups published with the policy. A multipath route
//!   whose other next hops leave through other devices keeps only its next
//!   hops on tunl's device: the flows the kernel hashes onto the others
//!   never reach tunl.
//!
//! Every gateway of every mirrored route (winner or not) is an accepted
//! IPIP source (the policy's `vias`).
//!
//! # Order of publication
//! The LPM (left-right) and the policy (`ArcSwap`) are two structures a
//! worker loads one after the other, so:
//! - gateways and groups a change needs are published in the policy
//!   *before* the LPM change that refers to them, and gateways no route
//!   names any more are withdrawn *after* it;
//! - a group no route uses any more keeps its slot (and its content) until
//!   two more LPM publications have passed: by then no reader holds a copy
//!   of the table that still points at it, and the slot may be reused.
//!
//! # Changes come in batches
//! [`RouteMirror::apply`] takes the kernel's events as they came; the LPM
//! changes of a batch go out in one publication ([`RouteMirror::flush`]),
//! so a burst of route changes costs one swap, not one per change. A full
//! dump replaces the whole state in one publication
//! ([`RouteMirror::replace_from`]): routes that did not change keep
//! resolving throughout.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use ipnetwork::Ipv4Network;
use tunl_io::netlink::{KernelRoute, RouteEvent};
use tunl_routing::{Lpm, RouteOp, RouteReader, RouteWriter};

use super::ROUTE_PROTOCOL;
use crate::dataplane::nexthop::GroupMember;
use crate::dataplane::{MultipathGroup, NextHop, Policy, Shared};

pub use crate::control::origin::name as origin_name;

/// The capacity of the batch's LPM changes kept between batches.
const OPS_KEPT: usize = 4096;

/// Route figures shared with the metrics endpoint and `status`.
#[derive(Debug)]
pub struct RouteStats {
    /// Routes in the LPM.
    total: AtomicUsize,
    /// Routes in the LPM by the protocol of the winning kernel route.
    by_origin: Box<[AtomicUsize]>,
    /// Full resynchronisations from a dump after the listener overran.
    resyncs: AtomicU64,
    /// LPM publications made for the kernel's changes.
    updates: AtomicU64,
    /// `CLOCK_MONOTONIC` in nanoseconds at the last of them.
    last_update_ns: AtomicU64,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            total: AtomicUsize::new(0),
            by_origin: (0..=u8::MAX).map(|_| AtomicUsize::new(0)).collect(),
            resyncs: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            last_update_ns: AtomicU64::new(0),
        }
    }
}

impl RouteStats {
    /// Routes in the LPM.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Routes in the LPM by origin protocol, the protocols with any.
    pub fn by_origin(&self) -> Vec<(u8, usize)> {
        self.by_origin
            .iter()
            .enumerate()
            .filter_map(|(p, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then_some((p as u8, n))
            })
            .collect()
    }

    /// Full resynchronisations after an overrun.
    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    /// Counts a resynchronisation.
    pub fn count_resync(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// LPM publications made for the kernel's changes, and the monotonic
    /// time (ns) of the last one.
    pub fn updates(&self) -> (u64, u64) {
        (
            self.updates.load(Ordering::Relaxed),
            self.last_update_ns.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn set_counts(&self, total: usize, by_origin: &[usize; 256]) {
        self.total.store(total, Ordering::Relaxed);
        for (slot, n) in self.by_origin.iter().zip(by_origin) {
            slot.store(*n, Ordering::Relaxed);
        }
    }

    fn updated(&self) {
        self.last_update_ns.store(monotonic_ns(), Ordering::Relaxed);
        self.updates.fetch_add(1, Ordering::Relaxed);
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the
/// host, so a benchmark can compare it with its own.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// One kernel route for a prefix, as the mirror keeps it: its key within
/// the prefix, its origin and its next hop on tunl's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Alias {
    tos: u8,
    protocol: u8,
    metric: u32,
    hop: NextHop,
}

impl Alias {
    fn same_key(&self, tos: u8, metric: u32) -> bool {
        self.tos == tos && self.metric == metric
    }

    /// The kernel's preference: lower is better.
    fn rank(&self) -> (bool, u32) {
        (self.tos != 0, self.metric)
    }
}

/// The kernel routes of one prefix on tunl's device, in the kernel's
/// order; nearly always one, stored inline.
#[derive(Debug, Clone)]
enum Aliases {
    One(Alias),
    Many(Vec<Alias>),
}

impl Aliases {
    fn as_slice(&self) -> &[Alias] {
        match self {
            Aliases::One(a) => std::slice::from_ref(a),
            Aliases::Many(v) => v,
        }
    }

    /// Edits the list as a vector; `None` when it ends empty.
    fn edit(self, f: impl FnOnce(&mut Vec<Alias>)) -> Option<Aliases> {
        let mut v = match self {
            Aliases::One(a) => vec![a],
            Aliases::Many(v) => v,
        };
        f(&mut v);
        match v.len() {
            0 => None,
            1 => Some(Aliases::One(v[0])),
            _ => Some(Aliases::Many(v)),
        }
    }

    /// The route the kernel uses: the best rank, the first among equals.
    fn winner(&self) -> Alias {
        let s = self.as_slice();
        let mut best = s[0];
        for a in &s[1..] {
            if a.rank() < best.rank() {
                best = *a;
            }
        }
        best
    }
}

/// A multipath group's slot.
#[derive(Debug)]
struct GroupSlot {
    members: Box<[GroupMember]>,
    /// Aliases that use it.
    refs: u32,
    /// The publication count when `refs` last dropped to 0.
    freed_at: u64,
}

/// A route with tunl's tag that tunl holds provisionally (see
/// [`RouteMirror::claim`]): what to put back if the kernel refuses it.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    prefix: Ipv4Network,
    previous: Option<Alias>,
}

/// A route in the mirror, as `route list` shows it: the route the kernel
/// uses for its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirroredRoute {
    /// The prefix.
    pub prefix: Ipv4Network,
    /// Its next hop in the LPM (a multipath group's members:
    /// [`RouteMirror::group`]).
    pub hop: NextHop,
    /// Its routing protocol.
    pub protocol: u8,
    /// Its metric.
    pub metric: u32,
}

/// The kernel's routes on tunl's device, mirrored into the dataplane's LPM.
pub struct RouteMirror {
    table: u32,
    device: u32,
    writer: RouteWriter<NextHop>,
    /// Whether a reader of `writer` exists: until then, the first load
    /// builds the table in place instead of publishing a difference.
    read: bool,
    shared: Arc<Shared>,
    stats: Arc<RouteStats>,
    prefixes: HashMap<Ipv4Network, Aliases>,
    /// Routes in the LPM by origin protocol.
    origins: Box<[usize; 256]>,
    groups: Vec<GroupSlot>,
    group_index: HashMap<Box<[GroupMember]>, u32>,
    /// Gateways named by mirrored routes (aliases and groups), with how
    /// many name each; an entry at 0 is withdrawn at the end of the batch.
    gateways: BTreeMap<Ipv4Addr, u32>,
    /// LPM changes of the current batch.
    ops: Vec<RouteOp<NextHop>>,
    /// A gateway or a group was added in this batch.
    policy_grew: bool,
    /// A group's content changed in this batch.
    groups_changed: bool,
    /// LPM publications so far.
    publishes: u64,
    /// Routes with tunl's tag in the table that go out of other devices
    /// (another tunl instance's, or left by an earlier run), by key
    /// `(prefix, tos, metric)`, to the device: what
    /// [`RouteMirror::tagged_elsewhere`] answers without a dump.
    elsewhere: HashMap<(Ipv4Network, u8, u32), u32>,
}

/// The key of a tagged route out of another device than `device`, and
/// that device; `None` for any other route.
fn tagged_elsewhere_of(
    route: &KernelRoute,
    table: u32,
    device: u32,
) -> Option<((Ipv4Network, u8, u32), u32)> {
    if route.table != table || route.protocol != ROUTE_PROTOCOL {
        return None;
    }
    let oif = route.hops.iter().map(|h| h.oif).find(|&o| o != device)?;
    Some(((route.prefix, route.tos, route.metric), oif))
}

impl RouteMirror {
    /// An empty mirror of `table`'s routes on device `device`, writing its
    /// own LPM ([`RouteMirror::reader`]) and the policy in `shared`.
    pub fn new(table: u32, device: u32, shared: Arc<Shared>) -> Self {
        RouteMirror {
            table,
            device,
            writer: RouteWriter::new(),
            read: false,
            shared,
            stats: Arc::new(RouteStats::default()),
            prefixes: HashMap::new(),
            origins: Box::new([0; 256]),
            groups: Vec::new(),
            group_index: HashMap::new(),
            gateways: BTreeMap::new(),
            ops: Vec::new(),
            policy_grew: false,
            groups_changed: false,
            publishes: 0,
            elsewhere: HashMap::new(),
        }
    }

    /// The routes with tunl's tag for a prefix `wanted` names that go out
    /// of another device: `(prefix, device)`. Kept from the dump and the
    /// kernel's notifications, so no dump is needed per route change.
    pub fn tagged_elsewhere(
        &self,
        wanted: impl Fn(&Ipv4Network) -> bool,
    ) -> Vec<(Ipv4Network, u32)> {
        let mut found: Vec<(Ipv4Network, u32)> = self
            .elsewhere
            .iter()
            .filter(|((p, _, _), _)| wanted(p))
            .map(|((p, _, _), oif)| (*p, *oif))
            .collect();
        found.sort_unstable_by_key(|(p, oif)| (p.network(), p.prefix(), *oif));
        found
    }

    /// Keeps [`RouteMirror::tagged_elsewhere`] in step with one event.
    fn track_elsewhere(&mut self, event: &RouteEvent) {
        match event {
            RouteEvent::New {
                route,
                replace,
                exclusive,
                ..
            } => {
                let key = (route.prefix, route.tos, route.metric);
                match tagged_elsewhere_of(route, self.table, self.device) {
                    Some((key, oif)) => {
                        self.elsewhere.insert(key, oif);
                    }
                    None if route.table == self.table && (*replace || *exclusive) => {
                        self.elsewhere.remove(&key);
                    }
                    None => {}
                }
            }
            RouteEvent::Del(route)
                if tagged_elsewhere_of(route, self.table, self.device).is_some() =>
            {
                self.elsewhere
                    .remove(&(route.prefix, route.tos, route.metric));
            }
            _ => {}
        }
    }

    /// The route the kernel uses for exactly `prefix` on the device, if any.
    pub fn get(&self, prefix: Ipv4Network) -> Option<MirroredRoute> {
        self.prefixes.get(&prefix).map(|aliases| {
            let w = aliases.winner();
            MirroredRoute {
                prefix,
                hop: w.hop,
                protocol: w.protocol,
                metric: w.metric,
            }
        })
    }

    /// A reader of the LPM, for a dataplane thread. Take the first after
    /// the first load: that load then builds the table in place (no
    /// difference to publish, no temporary copy: what 100k routes at start
    /// take).
    pub fn reader(&mut self) -> RouteReader<NextHop> {
        self.read = true;
        self.writer.reader()
    }

    /// The figures shared with metrics and `status`.
    pub fn stats(&self) -> &Arc<RouteStats> {
        &self.stats
    }

    /// The state shared with the dataplane.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The device whose routes are mirrored.
    pub fn device(&self) -> u32 {
        self.device
    }

    /// The table mirrored.
    pub fn table(&self) -> u32 {
        self.table
    }

    /// Number of prefixes in the LPM.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    /// Whether the LPM is empty.
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// Every prefix with the winning route, sorted by prefix.
    pub fn routes(&self) -> Vec<MirroredRoute> {
        let mut out: Vec<MirroredRoute> = self.winners().collect();
        out.sort_unstable_by_key(|r| (r.prefix.network(), r.prefix.prefix()));
        out
    }

    /// Every prefix with the winning route, in no order.
    pub fn winners(&self) -> impl Iterator<Item = MirroredRoute> + '_ {
        self.prefixes.iter().map(|(prefix, aliases)| {
            let w = aliases.winner();
            MirroredRoute {
                prefix: *prefix,
                hop: w.hop,
                protocol: w.protocol,
                metric: w.metric,
            }
        })
    }

    /// The members of multipath group `i` (empty if there is none).
    pub fn group(&self, i: u32) -> &[GroupMember] {
        self.groups.get(i as usize).map_or(&[], |g| &g.members)
    }

    /// The next hops of a hop, as `route list` shows them: one for a single
    /// path (`None` without a gateway), the members of a group.
    pub fn next_hops(&self, hop: NextHop) -> Vec<GroupMember> {
        match hop {
            NextHop::Node(n) => vec![(Some(n), 1)],
            NextHop::Direct => vec![(None, 1)],
            NextHop::Multipath(i) => self.group(i).to_vec(),
        }
    }

    /// Applies a batch of the kernel's route events, then publishes
    /// ([`RouteMirror::flush`]). Link, overrun and failure events are the
    /// caller's.
    pub fn apply(&mut self, events: &[RouteEvent]) {
        for event in events {
            self.track_elsewhere(event);
            match event {
                RouteEvent::New {
                    route,
                    replace,
                    append,
                    exclusive,
                } => {
                    if *exclusive {
                        // The kernel had nothing under this key: what the
                        // mirror holds there is stale (a claim the kernel
                        // will confirm, or changes whose messages were lost).
                        self.drop_key(route);
                    }
                    self.new_route(route, *replace, *append);
                }
                RouteEvent::Del(route) => self.del_route(route),
                _ => {}
            }
        }
        self.flush();
    }

    /// tunl's own route `prefix via via` (tag 116, metric 0), as the kernel
    /// will have it once tunl's replace is done: the LPM learns it before the
    /// kernel sends packets for it. Returns what to put back if the kernel
    /// refuses ([`RouteMirror::unclaim`]).
    pub fn claim(&mut self, prefix: Ipv4Network, via: Ipv4Addr) -> Claim {
        let previous = self.claim_unpublished(prefix, via);
        self.flush();
        Claim { prefix, previous }
    }

    /// [`RouteMirror::claim`] for several routes (distinct prefixes) in one
    /// LPM publication: a change set of 100k routes costs one, not 100k.
    pub fn claim_all(&mut self, routes: &[(Ipv4Network, Ipv4Addr)]) -> Vec<Claim> {
        let claims = routes
            .iter()
            .map(|&(prefix, via)| Claim {
                prefix,
                previous: self.claim_unpublished(prefix, via),
            })
            .collect();
        self.flush();
        claims
    }

    /// Puts tunl's route in the batch; returns what held its key before.
    fn claim_unpublished(&mut self, prefix: Ipv4Network, via: Ipv4Addr) -> Option<Alias> {
        let previous = self
            .prefixes
            .get(&prefix)
            .and_then(|a| a.as_slice().iter().find(|a| a.same_key(0, 0)).copied());
        let route = own_route(prefix, via, self.table, self.device);
        self.new_route(&route, true, false);
        previous
    }

    /// Undoes a [`RouteMirror::claim`] the kernel refused.
    pub fn unclaim(&mut self, claim: Claim) {
        let prefix = claim.prefix;
        let old = self.prefixes.get(&prefix).map(Aliases::winner);
        if let Some(ours) = self.remove_alias(prefix, |a| a.same_key(0, 0)) {
            self.release(ours.hop);
        }
        if let Some(previous) = claim.previous {
            // Take back the references the claim released: a group is
            // still in its slot (a slot is reused two publications later at
            // the earliest, and only one has passed).
            match previous.hop {
                NextHop::Multipath(i) => self.group_ref(i),
                hop => self.gateway_refs(hop, true),
            }
            self.insert_alias(prefix, previous, false, false);
        }
        self.note_change(prefix, old);
        self.flush();
    }

    /// tunl's own route for `prefix` via `via` is gone from the kernel
    /// (tunl deleted it): forgets it at once, before the kernel's own
    /// notification arrives.
    pub fn forget(&mut self, prefix: Ipv4Network, via: Ipv4Addr) {
        self.forget_all([(prefix, via)]);
    }

    /// [`RouteMirror::forget`] for several routes, in one LPM publication.
    pub fn forget_all(&mut self, routes: impl IntoIterator<Item = (Ipv4Network, Ipv4Addr)>) {
        for (prefix, via) in routes {
            let route = own_route(prefix, via, self.table, self.device);
            self.del_route(&route);
        }
        self.flush();
    }

    /// Starts replacing the whole mirror with a dump: hand the dump's
    /// routes to the [`Replacement`] in the kernel's order, then
    /// [`Replacement::commit`] swaps them in, in one LPM publication, so
    /// routes that did not change keep resolving throughout. Dropped
    /// without a commit, it leaves the mirror as it was.
    pub fn replace(&mut self) -> Replacement<'_> {
        Replacement {
            mirror: self,
            prefixes: HashMap::new(),
            elsewhere: HashMap::new(),
            committed: false,
        }
    }

    /// Makes `prefixes` the mirror's routes (their groups and gateways are
    /// already referenced).
    fn install(&mut self, prefixes: HashMap<Ipv4Network, Aliases>) {
        let old = std::mem::replace(&mut self.prefixes, prefixes);
        self.ops.clear();
        self.publish_policy_before();
        if !self.read && self.writer.is_empty() {
            // Nobody reads the table yet: build it as it is.
            let mut lpm = Lpm::new();
            for (p, a) in &self.prefixes {
                lpm.insert(*p, a.winner().hop);
            }
            self.writer = RouteWriter::from_lpm(lpm);
        } else {
            let winners: Vec<(Ipv4Network, NextHop)> = self
                .prefixes
                .iter()
                .map(|(p, a)| (*p, a.winner().hop))
                .collect();
            self.writer.replace_all(winners);
        }
        self.publishes += 1;
        self.release_all(old);
        let mut origins = Box::new([0; 256]);
        for a in self.prefixes.values() {
            origins[usize::from(a.winner().protocol)] += 1;
        }
        self.origins = origins;
        self.publish_policy_after();
        self.stats.set_counts(self.prefixes.len(), &self.origins);
        self.stats.updated();
    }

    fn release_all(&mut self, prefixes: HashMap<Ipv4Network, Aliases>) {
        for aliases in prefixes.into_values() {
            for a in aliases.as_slice() {
                self.release(a.hop);
            }
        }
    }

    /// The next hop of `route` on our device, taking a reference on any
    /// gateway and group it needs (`intern`), or only looking the group up
    /// (a deletion). `None` when the route is not ours.
    fn hop_of(&mut self, route: &KernelRoute, intern: bool) -> Option<NextHop> {
        if route.table != self.table || !route.unicast {
            return None;
        }
        let mut ours = route.hops.iter().filter(|h| h.oif == self.device);
        let first = ours.next()?;
        let hop = match ours.next() {
            None => match first.gateway {
                Some(g) => NextHop::Node(g),
                None => NextHop::Direct,
            },
            Some(_) => {
                let members: Box<[GroupMember]> = route
                    .hops
                    .iter()
                    .filter(|h| h.oif == self.device)
                    .map(|h| (h.gateway, h.weight))
                    .collect();
                if intern {
                    NextHop::Multipath(self.intern_group(members))
                } else {
                    NextHop::Multipath(*self.group_index.get(&members)?)
                }
            }
        };
        if intern {
            self.gateway_refs(hop, true);
        }
        Some(hop)
    }

    /// Adds (or removes) one reference on the gateways a hop names
    /// directly; a group's members are referenced by the group itself.
    fn gateway_refs(&mut self, hop: NextHop, add: bool) {
        if let NextHop::Node(g) = hop {
            self.gateway(g, add);
        }
    }

    fn gateway(&mut self, g: Ipv4Addr, add: bool) {
        let n = self.gateways.entry(g).or_insert(0);
        if add {
            if *n == 0 {
                self.policy_grew = true;
            }
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
    }

    /// The slot of a group with these members, taking a reference on it.
    fn intern_group(&mut self, members: Box<[GroupMember]>) -> u32 {
        if let Some(&i) = self.group_index.get(&members) {
            self.group_ref(i);
            return i;
        }
        for m in members.iter() {
            if let Some(g) = m.0 {
                self.gateway(g, true);
            }
        }
        self.policy_grew = true;
        self.groups_changed = true;
        // A slot no reader can still reach, else a new one.
        let free = self
            .groups
            .iter()
            .position(|s| s.refs == 0 && self.publishes >= s.freed_at + 2);
        let slot = GroupSlot {
            members: members.clone(),
            refs: 1,
            freed_at: 0,
        };
        let i = match free {
            Some(i) => {
                let old = std::mem::replace(&mut self.groups[i], slot);
                self.group_index.remove(&old.members);
                i
            }
            None => {
                self.groups.push(slot);
                self.groups.len() - 1
            }
        };
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        self.group_index.insert(members, i);
        i
    }

    fn group_ref(&mut self, i: u32) {
        let Some(slot) = self.groups.get_mut(i as usize) else {
            return;
        };
        if slot.refs == 0 {
            // Revived from quarantine: its members are referenced again.
            let members = slot.members.clone();
            for m in members.iter() {
                if let Some(g) = m.0 {
                    self.gateway(g, true);
                }
            }
        }
        if let Some(slot) = self.groups.get_mut(i as usize) {
            slot.refs += 1;
        }
    }

    /// Drops the references a stored alias's hop held.
    fn release(&mut self, hop: NextHop) {
        match hop {
            NextHop::Node(g) => self.gateway(g, false),
            NextHop::Direct => {}
            NextHop::Multipath(i) => {
                let publishes = self.publishes;
                let Some(slot) = self.groups.get_mut(i as usize) else {
                    return;
                };
                slot.refs = slot.refs.saturating_sub(1);
                if slot.refs == 0 {
                    slot.freed_at = publishes;
                    let members = slot.members.clone();
                    for m in members.iter() {
                        if let Some(g) = m.0 {
                            self.gateway(g, false);
                        }
                    }
                }
            }
        }
    }

    /// An `RTM_NEWROUTE`.
    fn new_route(&mut self, route: &KernelRoute, replace: bool, append: bool) {
        let prefix = route.prefix;
        let old = self.prefixes.get(&prefix).map(Aliases::winner);
        match self.hop_of(route, true) {
            Some(hop) => {
                let alias = Alias {
                    tos: route.tos,
                    protocol: route.protocol,
                    metric: route.metric,
                    hop,
                };
                if let Some(replaced) = self.insert_alias(prefix, alias, replace, append) {
                    self.release(replaced.hop);
                }
            }
            // Replaced by a route that is not ours (another device, a
            // blackhole...): the kernel no longer has ours under that key.
            None if replace && route.table == self.table => {
                let (tos, metric) = (route.tos, route.metric);
                if let Some(gone) = self.remove_alias(prefix, |a| a.same_key(tos, metric)) {
                    self.release(gone.hop);
                }
            }
            None => {}
        }
        self.note_change(prefix, old);
    }

    /// Drops every alias of `route`'s prefix with its key, ours or not.
    fn drop_key(&mut self, route: &KernelRoute) {
        if route.table != self.table {
            return;
        }
        let prefix = route.prefix;
        let old = self.prefixes.get(&prefix).map(Aliases::winner);
        let (tos, metric) = (route.tos, route.metric);
        while let Some(gone) = self.remove_alias(prefix, |a| a.same_key(tos, metric)) {
            self.release(gone.hop);
        }
        self.note_change(prefix, old);
    }

    /// An `RTM_DELROUTE`.
    fn del_route(&mut self, route: &KernelRoute) {
        let Some(hop) = self.hop_of(route, false) else {
            return;
        };
        let prefix = route.prefix;
        let old = self.prefixes.get(&prefix).map(Aliases::winner);
        let (tos, metric) = (route.tos, route.metric);
        if let Some(gone) = self.remove_alias(prefix, |a| a.same_key(tos, metric) && a.hop == hop) {
            self.release(gone.hop);
        }
        self.note_change(prefix, old);
    }

    /// Stores `alias` for `prefix` where the kernel puts it; returns the
    /// alias it replaced.
    fn insert_alias(
        &mut self,
        prefix: Ipv4Network,
        alias: Alias,
        replace: bool,
        append: bool,
    ) -> Option<Alias> {
        let Some(list) = self.prefixes.remove(&prefix) else {
            self.prefixes.insert(prefix, Aliases::One(alias));
            return None;
        };
        let mut replaced = None;
        let list = list.edit(|v| {
            let same = |a: &Alias| a.same_key(alias.tos, alias.metric);
            match (replace, v.iter().position(same)) {
                (true, Some(i)) => replaced = Some(std::mem::replace(&mut v[i], alias)),
                (false, Some(i)) if !append => v.insert(i, alias),
                _ => v.push(alias),
            }
        });
        if let Some(list) = list {
            self.prefixes.insert(prefix, list);
        }
        replaced
    }

    /// Removes the first alias of `prefix` that `matches`; returns it.
    fn remove_alias(
        &mut self,
        prefix: Ipv4Network,
        matches: impl Fn(&Alias) -> bool,
    ) -> Option<Alias> {
        let list = self.prefixes.remove(&prefix)?;
        let mut removed = None;
        let list = list.edit(|v| {
            if let Some(i) = v.iter().position(matches) {
                removed = Some(v.remove(i));
            }
        });
        if let Some(list) = list {
            self.prefixes.insert(prefix, list);
        }
        removed
    }

    /// Queues the LPM change for `prefix` whose winner was `old`, and keeps
    /// the origin counts.
    fn note_change(&mut self, prefix: Ipv4Network, old: Option<Alias>) {
        let new = self.prefixes.get(&prefix).map(Aliases::winner);
        if let Some(o) = old {
            self.origins[usize::from(o.protocol)] -= 1;
        }
        if let Some(n) = new {
            self.origins[usize::from(n.protocol)] += 1;
        }
        match (old.map(|a| a.hop), new.map(|a| a.hop)) {
            (Some(o), Some(n)) if o == n => {}
            (_, Some(n)) => self.ops.push(RouteOp::Insert(prefix, n)),
            (Some(_), None) => self.ops.push(RouteOp::Remove(prefix)),
            (None, None) => {}
        }
    }

    /// Publishes the batch: the policy with what the batch added, the LPM
    /// changes in one swap, then the policy without the gateways no route
    /// names any more.
    pub fn flush(&mut self) {
        self.publish_policy_before();
        if !self.ops.is_empty() {
            self.writer.apply(self.ops.drain(..));
            self.publishes += 1;
            self.stats.updated();
            // A start or a mass change made it large (100k routes: 2 MiB);
            // a usual batch needs far less.
            if self.ops.capacity() > OPS_KEPT {
                self.ops = Vec::with_capacity(OPS_KEPT);
            }
        }
        self.publish_policy_after();
        self.stats.set_counts(self.prefixes.len(), &self.origins);
    }

    fn publish_policy_before(&mut self) {
        if self.policy_grew || self.groups_changed {
            self.store_policy();
            self.policy_grew = false;
            self.groups_changed = false;
        }
    }

    fn publish_policy_after(&mut self) {
        let before = self.gateways.len();
        self.gateways.retain(|_, n| *n > 0);
        if self.gateways.len() != before {
            self.store_policy();
        }
    }

    fn store_policy(&self) {
        let mut policy = Policy::clone(&self.shared.policy.load());
        self.fill_policy(&mut policy);
        self.shared.policy.store(Arc::new(policy));
    }

    /// Sets the route-derived parts of `policy`: the accepted gateways and
    /// the multipath groups (a reload builds the rest from the config).
    pub fn fill_policy(&self, policy: &mut Policy) {
        policy.set_vias(self.gateways.keys().copied());
        if self.groups.len() != policy.multipath.len() || self.groups_differ(policy) {
            policy.multipath = Arc::new(
                self.groups
                    .iter()
                    .map(|s| MultipathGroup::new(&s.members))
                    .collect(),
            );
        }
    }

    fn groups_differ(&self, policy: &Policy) -> bool {
        self.groups
            .iter()
            .zip(policy.multipath.iter())
            .any(|(s, g)| *s.members != *g.members())
    }

    /// Removes every alias with tunl's tag (the daemon is stopping and
    /// deleted them from the kernel), in one publication.
    pub fn forget_own(&mut self) {
        let own: Vec<Ipv4Network> = self
            .prefixes
            .iter()
            .filter(|(_, a)| a.as_slice().iter().any(|a| a.protocol == ROUTE_PROTOCOL))
            .map(|(p, _)| *p)
            .collect();
        for prefix in own {
            let old = self.prefixes.get(&prefix).map(Aliases::winner);
            while let Some(gone) = self.remove_alias(prefix, |a| a.protocol == ROUTE_PROTOCOL) {
                self.release(gone.hop);
            }
            self.note_change(prefix, old);
        }
        self.flush();
    }
}

/// tunl's own route as the kernel reports it.
fn own_route(prefix: Ipv4Network, via: Ipv4Addr, table: u32, device: u32) -> KernelRoute {
    KernelRoute {
        table,
        prefix,
        tos: 0,
        metric: 0,
        protocol: ROUTE_PROTOCOL,
        unicast: true,
        hops: vec![tunl_io::netlink::KernelHop {
            oif: device,
            gateway: Some(via),
            weight: 1,
        }],
    }
}

/// A replacement of the mirror in progress ([`RouteMirror::replace`]).
pub struct Replacement<'a> {
    mirror: &'a mut RouteMirror,
    prefixes: HashMap<Ipv4Network, Aliases>,
    elsewhere: HashMap<(Ipv4Network, u8, u32), u32>,
    committed: bool,
}

impl Replacement<'_> {
    /// Adds a dumped route (routes come in the kernel's order).
    pub fn add(&mut self, route: &KernelRoute) {
        if let Some((key, oif)) = tagged_elsewhere_of(route, self.mirror.table, self.mirror.device)
        {
            self.elsewhere.insert(key, oif);
        }
        let Some(hop) = self.mirror.hop_of(route, true) else {
            return;
        };
        let alias = Alias {
            tos: route.tos,
            protocol: route.protocol,
            metric: route.metric,
            hop,
        };
        match self.prefixes.remove(&route.prefix) {
            None => {
                self.prefixes.insert(route.prefix, Aliases::One(alias));
            }
            Some(list) => {
                if let Some(list) = list.edit(|v| v.push(alias)) {
                    self.prefixes.insert(route.prefix, list);
                }
            }
        }
    }

    /// Keeps tunl's own routes `own` that the dump lacks (the kernel
    /// flushed them with the device going down; tunl puts them back when
    /// it is up): their blocks stay routed and their nodes accepted IPIP
    /// sources meanwhile, as before the device went down. Call it after the
    /// dump's routes. Returns how many were kept so.
    pub fn keep_own(&mut self, own: impl IntoIterator<Item = (Ipv4Network, Ipv4Addr)>) -> usize {
        let mut kept = 0;
        for (prefix, via) in own {
            let there = self
                .prefixes
                .get(&prefix)
                .is_some_and(|a| a.as_slice().iter().any(|a| a.same_key(0, 0)));
            if !there {
                let route = own_route(prefix, via, self.mirror.table, self.mirror.device);
                self.add(&route);
                kept += 1;
            }
        }
        kept
    }

    /// Swaps the routes added in; returns how many prefixes the mirror
    /// now holds.
    pub fn commit(mut self) -> usize {
        self.committed = true;
        let prefixes = std::mem::take(&mut self.prefixes);
        self.mirror.elsewhere = std::mem::take(&mut self.elsewhere);
        self.mirror.install(prefixes);
        self.mirror.len()
    }
}

impl Drop for Replacement<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let prefixes = std::mem::take(&mut self.prefixes);
            self.mirror.release_all(prefixes);
            self.mirror.flush();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tunl_encap::TunnelSettings;
    use tunl_io::netlink::KernelHop;

    use super::*;

    pub(crate) const DEVICE: u32 = 7;
    const OTHER: u32 = 3;
    const TABLE: u32 = 254;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn node(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(172, 16, 36, last)
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(Policy {
            settings: TunnelSettings::new(Ipv4Addr::new(172, 16, 35, 4)),
            vias: Vec::new(),
            multipath: Arc::default(),
            allow: Vec::new(),
            blocks: Vec::new(),
            allow_nested: false,
            strict_source: false,
        }))
    }

    fn mirror() -> (RouteMirror, RouteReader<NextHop>) {
        let mut m = RouteMirror::new(TABLE, DEVICE, shared());
        let reader = m.reader();
        (m, reader)
    }

    fn route(
        prefix: &str,
        metric: u32,
        protocol: u8,
        hops: &[(u32, Option<u8>, u16)],
    ) -> KernelRoute {
        KernelRoute {
            table: TABLE,
            prefix: net(prefix),
            tos: 0,
            metric,
            protocol,
            unicast: true,
            hops: hops
                .iter()
                .map(|&(oif, gw, weight)| KernelHop {
                    oif,
                    gateway: gw.map(node),
                    weight,
                })
                .collect(),
        }
    }

    fn via(prefix: &str, metric: u32, n: u8) -> KernelRoute {
        route(prefix, metric, 12, &[(DEVICE, Some(n), 1)])
    }

    /// A plain add: the kernel had no route with its key.
    fn new(r: KernelRoute) -> RouteEvent {
        RouteEvent::New {
            route: r,
            replace: false,
            append: false,
            exclusive: true,
        }
    }

    fn replace(r: KernelRoute) -> RouteEvent {
        RouteEvent::New {
            route: r,
            replace: true,
            append: false,
            exclusive: false,
        }
    }

    /// `ip route prepend`: before the routes with its key.
    fn prepend(r: KernelRoute) -> RouteEvent {
        RouteEvent::New {
            route: r,
            replace: false,
            append: false,
            exclusive: false,
        }
    }

    fn lookup(reader: &RouteReader<NextHop>, addr: &str) -> Option<NextHop> {
        reader.lookup(addr.parse().unwrap())
    }

    fn vias(m: &RouteMirror) -> Vec<Ipv4Addr> {
        m.shared.policy.load().vias.clone()
    }

    #[test]
    fn a_route_on_the_device_is_learned_and_forgotten() {
        let (mut m, r) = mirror();
        m.apply(&[new(via("10.20.1.0/26", 32, 5))]);
        assert_eq!(lookup(&r, "10.20.1.9"), Some(NextHop::Node(node(5))));
        assert_eq!(vias(&m), vec![node(5)]);
        assert_eq!(m.stats.by_origin(), vec![(12, 1)]);
        assert_eq!(origin_name(12), "bird");
        m.apply(&[RouteEvent::Del(via("10.20.1.0/26", 32, 5))]);
        assert_eq!(lookup(&r, "10.20.1.9"), None);
        assert!(vias(&m).is_empty());
        assert_eq!(m.stats.total(), 0);
    }

    #[test]
    fn the_lowest_metric_wins_and_the_next_takes_over() {
        let (mut m, r) = mirror();
        m.apply(&[
            new(via("10.20.1.0/26", 100, 5)),
            new(via("10.20.1.0/26", 50, 6)),
        ]);
        assert_eq!(lookup(&r, "10.20.1.9"), Some(NextHop::Node(node(6))));
        // Both gateways are accepted sources.
        assert_eq!(vias(&m), vec![node(5), node(6)]);
        assert_eq!(m.stats.total(), 1);
        m.apply(&[RouteEvent::Del(via("10.20.1.0/26", 50, 6))]);
        assert_eq!(lookup(&r, "10.20.1.9"), Some(NextHop::Node(node(5))));
        assert_eq!(vias(&m), vec![node(5)]);
    }

    #[test]
    fn a_replace_overwrites_its_key_and_a_route_moved_away_is_dropped() {
        let (mut m, r) = mirror();
        m.apply(&[new(via("10.20.1.0/26", 32, 5))]);
        m.apply(&[replace(via("10.20.1.0/26", 32, 6))]);
        assert_eq!(lookup(&r, "10.20.1.9"), Some(NextHop::Node(node(6))));
        assert_eq!(vias(&m), vec![node(6)]);
        // Replaced by a route via eth0: not ours any more.
        m.apply(&[replace(route(
            "10.20.1.0/26",
            32,
            12,
            &[(OTHER, Some(6), 1)],
        ))]);
        assert_eq!(lookup(&r, "10.20.1.9"), None);
        assert!(vias(&m).is_empty());
    }

    #[test]
    fn routes_on_other_devices_tables_and_types_are_not_ours() {
        let (mut m, r) = mirror();
        let mut other_table = via("10.20.2.0/26", 0, 5);
        other_table.table = 100;
        let mut blackhole = route("10.20.3.0/26", 0, 12, &[]);
        blackhole.unicast = false;
        m.apply(&[
            new(route("10.20.1.0/26", 0, 12, &[(OTHER, Some(5), 1)])),
            new(other_table),
            new(blackhole),
        ]);
        assert!(m.is_empty());
        assert_eq!(lookup(&r, "10.20.1.1"), None);
        // Their deletion does not touch ours.
        m.apply(&[new(via("10.20.1.0/26", 0, 6))]);
        m.apply(&[RouteEvent::Del(route(
            "10.20.1.0/26",
            0,
            12,
            &[(OTHER, Some(5), 1)],
        ))]);
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(6))));
    }

    #[test]
    fn no_gateway_is_direct_and_multipath_keeps_only_the_devices_hops() {
        let (mut m, r) = mirror();
        m.apply(&[
            new(route("10.20.0.0/16", 0, 2, &[(DEVICE, None, 1)])),
            new(route(
                "10.20.1.0/26",
                0,
                12,
                &[
                    (DEVICE, Some(5), 1),
                    (DEVICE, Some(6), 2),
                    (OTHER, Some(7), 1),
                ],
            )),
            new(route(
                "10.20.2.0/26",
                0,
                12,
                &[(DEVICE, Some(5), 1), (OTHER, Some(7), 1)],
            )),
        ]);
        assert_eq!(lookup(&r, "10.20.9.9"), Some(NextHop::Direct));
        assert_eq!(lookup(&r, "10.20.2.1"), Some(NextHop::Node(node(5))));
        let Some(NextHop::Multipath(i)) = lookup(&r, "10.20.1.1") else {
            panic!("a multipath next hop");
        };
        let policy = m.shared.policy.load();
        assert_eq!(
            policy.multipath[i as usize].members(),
            &[(Some(node(5)), 1), (Some(node(6)), 2)]
        );
        assert_eq!(
            vias(&m),
            vec![node(5), node(6)],
            "node 7 is on another device"
        );
        let listed = m.routes();
        assert_eq!(listed.len(), 3);
        assert_eq!(m.next_hops(listed[0].hop), vec![(None, 1)]);
    }

    #[test]
    fn a_freed_group_is_reused_only_after_two_publications() {
        let (mut m, r) = mirror();
        let mp =
            |p: &str, a: u8, b: u8| route(p, 0, 12, &[(DEVICE, Some(a), 1), (DEVICE, Some(b), 1)]);
        m.apply(&[new(mp("10.20.1.0/26", 5, 6))]);
        let first = lookup(&r, "10.20.1.1");
        m.apply(&[RouteEvent::Del(mp("10.20.1.0/26", 5, 6))]);
        // Another group at once: the freed slot may still be read.
        m.apply(&[new(mp("10.20.2.0/26", 7, 8))]);
        assert_ne!(lookup(&r, "10.20.2.1"), first);
        assert_eq!(m.groups.len(), 2);
        m.apply(&[new(via("10.20.3.0/26", 0, 5))]);
        m.apply(&[new(mp("10.20.4.0/26", 9, 10))]);
        assert_eq!(lookup(&r, "10.20.4.1"), first, "slot 0 reused");
        assert_eq!(m.groups.len(), 2);
        // The same set again shares a slot.
        m.apply(&[new(mp("10.20.5.0/26", 9, 10))]);
        assert_eq!(lookup(&r, "10.20.5.1"), first);
        assert_eq!(vias(&m), vec![node(5), node(7), node(8), node(9), node(10)]);
    }

    #[test]
    fn appended_routes_keep_the_kernels_order() {
        let (mut m, r) = mirror();
        let append = |rt| RouteEvent::New {
            route: rt,
            replace: false,
            append: true,
            exclusive: false,
        };
        m.apply(&[
            new(via("10.20.1.0/26", 0, 5)),
            append(via("10.20.1.0/26", 0, 6)),
        ]);
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(5))));
        // A prepend goes first and wins.
        m.apply(&[prepend(via("10.20.1.0/26", 0, 7))]);
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(7))));
        // A deletion names its gateway.
        m.apply(&[RouteEvent::Del(via("10.20.1.0/26", 0, 7))]);
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(5))));
        m.apply(&[RouteEvent::Del(via("10.20.1.0/26", 0, 6))]);
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(5))));
        assert_eq!(vias(&m), vec![node(5)]);
    }

    #[test]
    fn a_claim_is_in_the_lpm_at_once_and_undone_when_refused() {
        let (mut m, r) = mirror();
        m.apply(&[new(route("10.20.1.0/26", 0, 4, &[(DEVICE, Some(5), 1)]))]);
        let claim = m.claim(net("10.20.1.0/26"), node(6));
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(6))));
        assert_eq!(m.stats.by_origin(), vec![(ROUTE_PROTOCOL, 1)]);
        m.unclaim(claim);
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(5))));
        assert_eq!(m.stats.by_origin(), vec![(4, 1)]);
        assert_eq!(vias(&m), vec![node(5)]);
        // The kernel's notification of a claim changes nothing.
        m.claim(net("10.20.2.0/26"), node(6));
        m.apply(&[new(route(
            "10.20.2.0/26",
            0,
            ROUTE_PROTOCOL,
            &[(DEVICE, Some(6), 1)],
        ))]);
        m.apply(&[replace(route(
            "10.20.2.0/26",
            0,
            ROUTE_PROTOCOL,
            &[(DEVICE, Some(6), 1)],
        ))]);
        assert_eq!(m.routes().len(), 2);
        m.forget(net("10.20.2.0/26"), node(6));
        assert_eq!(lookup(&r, "10.20.2.1"), None);
        // Late notifications of the add are undone by the deletion's.
        m.apply(&[
            new(route(
                "10.20.2.0/26",
                0,
                ROUTE_PROTOCOL,
                &[(DEVICE, Some(6), 1)],
            )),
            RouteEvent::Del(route(
                "10.20.2.0/26",
                0,
                ROUTE_PROTOCOL,
                &[(DEVICE, Some(6), 1)],
            )),
        ]);
        assert_eq!(lookup(&r, "10.20.2.1"), None);
        assert_eq!(vias(&m), vec![node(5)]);
    }

    #[test]
    fn a_reload_keeps_tunls_own_routes_the_kernel_flushed() {
        let (mut m, r) = mirror();
        m.apply(&[new(via("10.20.2.0/26", 32, 6))]);
        m.claim(net("10.20.1.0/26"), node(5));
        // The device went down: the dump has none of its routes.
        let mut dump = m.replace();
        let own = [(net("10.20.1.0/26"), node(5))];
        assert_eq!(dump.keep_own(own), 1);
        dump.commit();
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(5))));
        assert_eq!(lookup(&r, "10.20.2.1"), None, "another program's is gone");
        assert_eq!(vias(&m), vec![node(5)]);
        // A dump that has it keeps it as dumped, once.
        let mut dump = m.replace();
        dump.add(&route(
            "10.20.1.0/26",
            0,
            ROUTE_PROTOCOL,
            &[(DEVICE, Some(5), 1)],
        ));
        assert_eq!(dump.keep_own(own), 0);
        assert_eq!(dump.commit(), 1);
    }

    #[test]
    fn tagged_routes_on_other_devices_are_known_from_events_and_dumps() {
        let (mut m, _) = mirror();
        let tagged = |p: &str, oif: u32| route(p, 0, ROUTE_PROTOCOL, &[(oif, Some(5), 1)]);
        let all = |_: &Ipv4Network| true;
        m.apply(&[
            new(tagged("10.20.1.0/26", OTHER)),
            // Ours, and another program's on the other device: not counted.
            new(tagged("10.20.2.0/26", DEVICE)),
            new(route("10.20.3.0/26", 0, 12, &[(OTHER, Some(5), 1)])),
            new(tagged("10.20.4.0/26", OTHER)),
        ]);
        assert_eq!(
            m.tagged_elsewhere(all),
            vec![(net("10.20.1.0/26"), OTHER), (net("10.20.4.0/26"), OTHER)]
        );
        assert_eq!(
            m.tagged_elsewhere(|p| *p == net("10.20.4.0/26")),
            vec![(net("10.20.4.0/26"), OTHER)]
        );
        // Deleted, or replaced by another program's route under its key.
        m.apply(&[
            RouteEvent::Del(tagged("10.20.1.0/26", OTHER)),
            replace(via("10.20.4.0/26", 0, 6)),
        ]);
        assert!(m.tagged_elsewhere(all).is_empty());
        // A dump rebuilds it from scratch.
        m.apply(&[new(tagged("10.20.9.0/26", OTHER))]);
        let mut dump = m.replace();
        dump.add(&tagged("10.20.7.0/26", OTHER));
        dump.add(&via("10.20.8.0/26", 0, 5));
        dump.commit();
        assert_eq!(m.tagged_elsewhere(all), vec![(net("10.20.7.0/26"), OTHER)]);
        assert_eq!(m.get(net("10.20.8.0/26")).map(|r| r.protocol), Some(12));
        assert_eq!(m.get(net("10.20.7.0/26")), None);
    }

    #[test]
    fn the_first_load_builds_the_table_and_readers_see_it() {
        let mut m = RouteMirror::new(TABLE, DEVICE, shared());
        let mut first = m.replace();
        first.add(&via("10.20.1.0/26", 0, 5));
        assert_eq!(first.commit(), 1);
        let r = m.reader();
        assert_eq!(lookup(&r, "10.20.1.1"), Some(NextHop::Node(node(5))));
        m.apply(&[new(via("10.20.2.0/26", 0, 6))]);
        assert_eq!(lookup(&r, "10.20.2.1"), Some(NextHop::Node(node(6))));
        assert_eq!(vias(&m), vec![node(5), node(6)]);
    }

    #[test]
    fn a_dump_replaces_everything_in_one_publication() {
        let (mut m, r) = mirror();
        m.apply(&[
            new(via("10.20.1.0/26", 0, 5)),
            new(via("10.20.2.0/26", 0, 6)),
        ]);
        let (updates, _) = m.stats.updates();
        // A dump abandoned halfway changes nothing.
        let mut abandoned = m.replace();
        abandoned.add(&via("10.20.9.0/26", 0, 9));
        drop(abandoned);
        assert_eq!(vias(&m), vec![node(5), node(6)]);
        assert_eq!(lookup(&r, "10.20.9.1"), None);
        let mut replacement = m.replace();
        for rt in [via("10.20.2.0/26", 0, 6), via("10.20.3.0/26", 0, 7)] {
            replacement.add(&rt);
        }
        assert_eq!(replacement.commit(), 2);
        assert_eq!(lookup(&r, "10.20.1.1"), None);
        assert_eq!(lookup(&r, "10.20.2.1"), Some(NextHop::Node(node(6))));
        assert_eq!(lookup(&r, "10.20.3.1"), Some(NextHop::Node(node(7))));
        assert_eq!(vias(&m), vec![node(6), node(7)]);
        assert_eq!(m.stats.updates().0, updates + 1);
        assert_eq!(m.stats.total(), 2);
    }
}
