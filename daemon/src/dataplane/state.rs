//! State shared between the control plane and the dataplane workers.
//!
//! What a worker takes from here, per batch unless said otherwise:
//! - the route table: one left-right read guard
//!   ([`tunl_routing::RouteReader::load`], an epoch counter, no lock);
//! - the decap policy and tunnel settings: one [`ArcSwap`] load of
//!   [`Policy`];
//! - learned path MTUs ([`PathMtu`]): one relaxed load per packet; only
//!   while the underlay has reported a lower MTU do packets longer than it
//!   also pay an `ArcSwap` load and a map lookup. Learning goes through
//!   [`PathMtu::offer`] (atomic slots); the control plane applies it;
//! - with `packet_tx`, the neighbour table: one `ArcSwap` load;
//! - whether `tunnel.local` is still this node's ([`LinkStates`]): one
//!   relaxed load;
//! - its [`Counters`]: relaxed `fetch_add`s, once per batch.
//!
//! Locks a worker does take, none per packet:
//! - the [`NodeCounters`] mutexes, when it flushes its per-node counts
//!   (every 64 batches, when it goes idle, when the policy changes);
//! - the ICMP token bucket's mutex, shared by the workers: per ICMP answer,
//!   and once the bucket refuses not again for a token's time (the
//!   pipeline's [`IcmpLimit`](super::pipeline::IcmpLimit));
//! - [`NeighbourTable::report_miss`], once per batch that met a next hop
//!   without a known MAC: a tokio `Notify`, which locks its waiter list
//!   and wakes the control-plane task waiting on it;
//! - the failure watch channel of [`Shared::fail`] (its lock, once, on
//!   the way out), and the counters list once at start
//!   ([`Shared::register_counters`]).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnetwork::Ipv4Network;
use tunl_encap::{DecapPolicy, TunnelSettings};

use super::counters::{CounterSnapshot, Counters};
use super::links::LinkStates;
use super::nexthop::{MultipathGroup, NextHop, flow_hash};
use super::nodes::NodeCounters;
use super::pmtu::PathMtu;

/// What the dataplane needs of the configuration, swapped as one piece.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Outer header settings (local address, TTL, TOS, DF, tunnel MTU).
    pub settings: TunnelSettings,
    /// The gateways of every route on the device, sorted: IPIP from them
    /// is accepted.
    pub vias: Vec<Ipv4Addr>,
    /// The multipath groups the LPM's [`NextHop::Multipath`] values index.
    pub multipath: Arc<Vec<MultipathGroup>>,
    /// Further accepted IPIP sources (`security.allow`).
    pub allow: Vec<Ipv4Network>,
    /// This node's pod blocks; empty means no relay check.
    pub blocks: Vec<Ipv4Network>,
    /// Accept inner IPIP packets.
    pub allow_nested: bool,
    /// `security.strict_source`: an inner source must lie in a block routed
    /// via the outer source, or be the outer source itself.
    pub strict_source: bool,
}

impl Policy {
    /// Rebuilds `vias` from a route set.
    pub fn set_vias(&mut self, vias: impl IntoIterator<Item = Ipv4Addr>) {
        let mut v: Vec<Ipv4Addr> = vias.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        self.vias = v;
    }
}

impl Policy {
    /// The node the outer packet of a packet to `dst` goes to, for the
    /// route's next hop `hop`; `src` gives the inner source, read only for
    /// a multipath route (its flow hash). `None` for a multipath group this
    /// snapshot does not hold yet (a route the control plane is adding at
    /// this very moment): the packet counts as one without a route.
    #[inline]
    pub fn node_for(
        &self,
        hop: NextHop,
        dst: Ipv4Addr,
        src: impl FnOnce() -> Ipv4Addr,
    ) -> Option<Ipv4Addr> {
        match hop {
            NextHop::Node(node) => Some(node),
            NextHop::Direct => Some(dst),
            NextHop::Multipath(i) => self
                .multipath
                .get(i as usize)?
                .pick(flow_hash(src(), dst), dst),
        }
    }

    /// Whether the route next hop `hop` can send packets for its block
    /// through `node` (the strict inner-source check): its gateway, one of
    /// its multipath group's gateways; a route without a gateway sends to
    /// the inner destination itself, which the check accepts on its own.
    pub fn routes_via(&self, hop: NextHop, node: Ipv4Addr) -> bool {
        match hop {
            NextHop::Node(n) => n == node,
            NextHop::Direct => false,
            NextHop::Multipath(i) => self
                .multipath
                .get(i as usize)
                .is_some_and(|g| g.members().iter().any(|&(n, _)| n == Some(node))),
        }
    }
}

impl DecapPolicy for Policy {
    fn source_allowed(&self, outer_src: Ipv4Addr) -> bool {
        self.vias.binary_search(&outer_src).is_ok()
            || self.allow.iter().any(|n| n.contains(outer_src))
    }

    fn destination_local(&self, inner_dst: Ipv4Addr) -> bool {
        self.blocks.is_empty() || self.blocks.iter().any(|b| b.contains(inner_dst))
    }

    fn allow_nested(&self) -> bool {
        self.allow_nested
    }
}

/// One resolved neighbour: underlay address and MAC.
pub type Neighbour = (Ipv4Addr, [u8; 6]);

/// The next hops' MACs on the underlay device, for AF_PACKET transmit
/// (`[dataplane] packet_tx`): the control plane refreshes it from the
/// kernel's neighbour table over netlink, workers load it once per batch.
#[derive(Debug, Default)]
pub struct NeighbourTable {
    table: ArcSwap<Vec<Neighbour>>,
    /// Woken by a worker that met a next hop missing from the table.
    missed: tokio::sync::Notify,
}

impl NeighbourTable {
    /// Replaces the table; returns whether it changed.
    pub fn replace(&self, mut entries: Vec<Neighbour>) -> bool {
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.0);
        if **self.table.load() == entries {
            return false;
        }
        self.table.store(Arc::new(entries));
        true
    }

    /// The current table, sorted by address.
    pub fn load(&self) -> arc_swap::Guard<Arc<Vec<Neighbour>>> {
        self.table.load()
    }

    /// Asks for a refresh: a worker met a next hop that is not in the table
    /// (its batch went through the raw socket, which resolves it).
    pub fn report_miss(&self) {
        self.missed.notify_one();
    }

    /// Waits until a worker reports a miss.
    pub async fn missed(&self) {
        self.missed.notified().await;
    }
}

/// Writes the MAC of every destination into `out`; `None` as soon as one
/// is not in `table` (sorted by address). Consecutive packets to the same
/// next hop cost one comparison.
pub fn resolve_macs(table: &[Neighbour], dsts: &[Ipv4Addr], out: &mut [[u8; 6]]) -> Option<()> {
    let mut last: Option<Neighbour> = None;
    for (dst, mac) in dsts.iter().zip(out.iter_mut()) {
        let found = match last {
            Some((ip, m)) if ip == *dst => m,
            _ => table[table.binary_search_by_key(dst, |e| e.0).ok()?].1,
        };
        last = Some((*dst, found));
        *mac = found;
    }
    Some(())
}

/// Everything the workers share with the control plane.
#[derive(Debug)]
pub struct Shared {
    /// Decap policy and tunnel settings.
    pub policy: ArcSwap<Policy>,
    /// Learned path MTUs.
    pub pmtu: PathMtu,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// Traffic per remote node and refused IPIP sources.
    pub nodes: NodeCounters,
    /// Next-hop MACs for AF_PACKET transmit.
    pub neighbours: NeighbourTable,
    /// Whether `tunnel.local` is still this node's, and the underlay
    /// device's state (kept by the link watcher).
    pub links: LinkStates,
    counters: Mutex<Vec<Arc<Counters>>>,
    /// The first failure a worker reported; the main loop waits on it.
    failure: tokio::sync::watch::Sender<Option<String>>,
}

impl Shared {
    /// Shared state over an initial policy.
    pub fn new(policy: Policy) -> Self {
        Shared {
            policy: ArcSwap::from_pointee(policy),
            pmtu: PathMtu::default(),
            stop: AtomicBool::new(false),
            nodes: NodeCounters::default(),
            neighbours: NeighbourTable::default(),
            links: LinkStates::default(),
            counters: Mutex::new(Vec::new()),
            failure: tokio::sync::watch::Sender::new(None),
        }
    }

    /// A worker hit an error it cannot go on from (the TUN device is gone):
    /// records it, stops the workers and wakes the daemon's main loop
    /// ([`Shared::failed`]), which shuts down, reports the failure and exits
    /// non-zero. Only the first failure is kept.
    pub fn fail(&self, reason: String) {
        tracing::error!("dataplane: {reason}; stopping");
        self.failure.send_if_modified(|failure| {
            let first = failure.is_none();
            if first {
                *failure = Some(reason);
            }
            first
        });
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The failure recorded by [`Shared::fail`], if any.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Waits until a worker calls [`Shared::fail`] (at once if one did
    /// already) and returns its reason. Cancel-safe.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.subscribe();
        match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in `self`: it cannot be gone.
            Err(_) => std::future::pending().await,
        }
    }

    /// A new set of counters for one worker, included in [`Shared::counters`].
    pub fn register_counters(&self) -> Arc<Counters> {
        let c = Arc::new(Counters::default());
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c.clone());
        c
    }

    /// The sum of every worker's counters, and the path MTU reductions the
    /// control plane applied (`pmtu_updates`).
    pub fn counters(&self) -> CounterSnapshot {
        let mut sum = CounterSnapshot {
            pmtu_updates: self.pmtu.updates(),
            ..CounterSnapshot::default()
        };
        for c in self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            c.add_to(&mut sum);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_table_resolves_every_destination_or_none() {
        let a = Ipv4Addr::new(172, 16, 36, 5);
        let b = Ipv4Addr::new(172, 16, 37, 6);
        let c = Ipv4Addr::new(172, 16, 38, 7);
        let table = NeighbourTable::default();
        assert!(table.replace(vec![(b, [2; 6]), (a, [1; 6]), (b, [2; 6])]));
        assert!(!table.replace(vec![(a, [1; 6]), (b, [2; 6])]), "same set");
        let t = table.load();
        assert_eq!(t.len(), 2);
        let mut out = [[0u8; 6]; 4];
        assert_eq!(resolve_macs(&t, &[a, a, b, a], &mut out), Some(()));
        assert_eq!(out, [[1; 6], [1; 6], [2; 6], [1; 6]]);
        assert_eq!(resolve_macs(&t, &[a, c], &mut out[..2]), None);
        assert!(table.replace(vec![(a, [9; 6])]), "a MAC changed");
        assert_eq!(resolve_macs(&table.load(), &[b], &mut out[..1]), None);
    }

    fn policy() -> Policy {
        Policy {
            settings: TunnelSettings::new(Ipv4Addr::new(172, 16, 35, 4)),
            vias: vec![],
            multipath: Arc::default(),
            allow: vec!["192.168.0.0/16".parse().unwrap()],
            blocks: vec!["10.20.42.0/26".parse().unwrap()],
            allow_nested: false,
            strict_source: false,
        }
    }

    #[test]
    fn a_next_hop_resolves_to_the_node_the_outer_packet_goes_to() {
        let a = Ipv4Addr::new(172, 16, 36, 5);
        let b = Ipv4Addr::new(172, 16, 36, 6);
        let dst = Ipv4Addr::new(10, 20, 1, 9);
        let mut p = policy();
        p.multipath = Arc::new(vec![MultipathGroup::new(&[(Some(a), 1), (Some(b), 1)])]);
        let src = || Ipv4Addr::new(10, 20, 42, 31);
        assert_eq!(p.node_for(NextHop::Node(a), dst, src), Some(a));
        assert_eq!(p.node_for(NextHop::Direct, dst, src), Some(dst));
        let picked = p.node_for(NextHop::Multipath(0), dst, src).unwrap();
        assert!(picked == a || picked == b);
        assert_eq!(p.node_for(NextHop::Multipath(0), dst, src), Some(picked));
        // A group this snapshot does not hold yet: as if there were no route.
        assert_eq!(p.node_for(NextHop::Multipath(1), dst, src), None);
        // The inner source is read only for a multipath route.
        let never = || -> Ipv4Addr { panic!("source read for a single path") };
        assert_eq!(p.node_for(NextHop::Node(a), dst, never), Some(a));
    }

    #[test]
    fn decap_policy() {
        let mut p = policy();
        p.set_vias([Ipv4Addr::new(172, 16, 36, 5), Ipv4Addr::new(172, 16, 36, 5)]);
        assert_eq!(p.vias.len(), 1);
        assert!(p.source_allowed(Ipv4Addr::new(172, 16, 36, 5)));
        assert!(p.source_allowed(Ipv4Addr::new(192, 168, 1, 1)));
        assert!(!p.source_allowed(Ipv4Addr::new(172, 16, 36, 6)));
        assert!(p.destination_local(Ipv4Addr::new(10, 20, 42, 31)));
        assert!(!p.destination_local(Ipv4Addr::new(10, 20, 42, 64)));
        p.blocks.clear();
        assert!(p.destination_local(Ipv4Addr::new(10, 20, 42, 64)));
    }
}
