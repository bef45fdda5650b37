//! Per-node traffic counters (for `tunl status`) and the record of refused
//! IPIP sources.
//!
//! A worker counts into a [`LocalNodeCounters`] indexed by the next hop's
//! position in the batch's [`Policy::vias`](super::Policy::vias) (a binary
//! search, no hashing, no lock, no allocation once the array has grown to the
//! route set), and flushes it into the shared [`NodeCounters`] every 64
//! batches, when it goes idle, and before it counts against a new policy
//! snapshot, so indexes and addresses always agree. Refused sources are kept in a table of at most
//! [`MAX_REFUSED_SOURCES`] entries; sources past that are only summed, so a
//! flood of spoofed addresses costs bounded memory.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Distinct refused sources remembered; more are counted in
/// [`RefusedSnapshot::other_packets`].
pub const MAX_REFUSED_SOURCES: usize = 32;

/// How long a refused source keeps its place in a full table: a new source
/// takes the place of the one seen longest ago, if that was longer ago
/// than this (its packets then count in
/// [`RefusedSnapshot::other_packets`]). So the recent offenders show,
/// while a flood of fresh spoofed sources changes at most
/// [`MAX_REFUSED_SOURCES`] entries (and log lines) per period.
pub const REFUSED_SOURCE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Traffic with one remote node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeTraffic {
    /// Inner packets encapsulated toward the node.
    pub tx_packets: u64,
    /// Inner bytes of `tx_packets`.
    pub tx_bytes: u64,
    /// Inner packets decapsulated from the node.
    pub rx_packets: u64,
    /// Inner bytes of `rx_packets`.
    pub rx_bytes: u64,
    /// When a packet was last sent to or received from the node.
    pub last_seen: Option<SystemTime>,
    /// When a packet was last received from the node.
    pub last_rx: Option<SystemTime>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    tx_packets: u64,
    tx_bytes: u64,
    rx_packets: u64,
    rx_bytes: u64,
}

/// One worker's unflushed per-node counts.
#[derive(Debug, Default)]
pub struct LocalNodeCounters {
    tally: Vec<Tally>,
    dirty: bool,
    refused: Vec<(Ipv4Addr, u64)>,
}

impl LocalNodeCounters {
    fn slot(&mut self, vias: &[Ipv4Addr], node: Ipv4Addr) -> Option<&mut Tally> {
        let i = vias.binary_search(&node).ok()?;
        if self.tally.len() < vias.len() {
            self.tally.resize(vias.len(), Tally::default());
        }
        self.dirty = true;
        self.tally.get_mut(i)
    }

    /// Counts one inner packet of `bytes` encapsulated toward `node`.
    #[inline]
    pub fn tx(&mut self, vias: &[Ipv4Addr], node: Ipv4Addr, bytes: usize) {
        if let Some(t) = self.slot(vias, node) {
            t.tx_packets += 1;
            t.tx_bytes += bytes as u64;
        }
    }

    /// Counts one inner packet of `bytes` decapsulated from `node`.
    #[inline]
    pub fn rx(&mut self, vias: &[Ipv4Addr], node: Ipv4Addr, bytes: usize) {
        if let Some(t) = self.slot(vias, node) {
            t.rx_packets += 1;
            t.rx_bytes += bytes as u64;
        }
    }

    /// Counts one IPIP packet refused because its source is not a known node.
    #[inline]
    pub fn refused(&mut self, source: Ipv4Addr) {
        // At most MAX_REFUSED_SOURCES entries plus one for "others"
        // (0.0.0.0), so a batch of spoofed sources costs bounded work.
        let key = if self.refused.len() < MAX_REFUSED_SOURCES
            || self.refused.iter().any(|(a, _)| *a == source)
        {
            source
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        match self.refused.iter().position(|(a, _)| *a == key) {
            Some(i) => self.refused[i].1 += 1,
            None => self.refused.push((key, 1)),
        }
    }

    /// Counts an outer packet refused for its unknown source (read from the
    /// outer header at the start of `outer`).
    #[inline]
    pub fn refused_packet(&mut self, outer: &[u8]) {
        if let Some(src) = outer.get(12..16).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
            self.refused(Ipv4Addr::from(src));
        }
    }

    /// Adds these counts into `shared` (`vias` must be the slice they were
    /// counted against) and zeroes them.
    pub fn flush(&mut self, vias: &[Ipv4Addr], shared: &NodeCounters) {
        if !self.dirty && self.refused.is_empty() {
            return;
        }
        let now = SystemTime::now();
        if self.dirty {
            let mut traffic = shared.traffic.lock().unwrap_or_else(|e| e.into_inner());
            for (t, node) in self.tally.iter_mut().zip(vias) {
                if t.tx_packets == 0 && t.rx_packets == 0 {
                    continue;
                }
                let e = traffic.entry(*node).or_default();
                e.tx_packets += t.tx_packets;
                e.tx_bytes += t.tx_bytes;
                e.rx_packets += t.rx_packets;
                e.rx_bytes += t.rx_bytes;
                e.last_seen = Some(now);
                if t.rx_packets > 0 {
                    e.last_rx = Some(now);
                }
                *t = Tally::default();
            }
            self.dirty = false;
        }
        if !self.refused.is_empty() {
            let mut refused = shared.refused.lock().unwrap_or_else(|e| e.into_inner());
            for (source, n) in self.refused.drain(..) {
                refused.add(source, n, now);
            }
        }
    }
}

#[derive(Debug, Default)]
struct RefusedTable {
    sources: BTreeMap<Ipv4Addr, (u64, SystemTime)>,
    other_packets: u64,
    logged_overflow: bool,
}

impl RefusedTable {
    /// Makes room for a new source in a full table: forgets the source seen
    /// longest ago, if that was more than [`REFUSED_SOURCE_EXPIRY`] before
    /// `now` (its packets go to `other_packets`). Returns whether there is
    /// room.
    fn make_room(&mut self, now: SystemTime) -> bool {
        if self.sources.len() < MAX_REFUSED_SOURCES {
            return true;
        }
        let Some((&oldest, &(packets, seen))) =
            self.sources.iter().min_by_key(|(_, (_, seen))| *seen)
        else {
            return true;
        };
        let stale = now
            .duration_since(seen)
            .is_ok_and(|age| age > REFUSED_SOURCE_EXPIRY);
        if stale {
            self.sources.remove(&oldest);
            self.other_packets += packets;
        }
        stale
    }

    fn add(&mut self, source: Ipv4Addr, n: u64, now: SystemTime) {
        if let Some((count, seen)) = self.sources.get_mut(&source) {
            *count += n;
            *seen = now;
        } else if source.is_unspecified() || !self.make_room(now) {
            self.other_packets += n;
            if !self.logged_overflow {
                self.logged_overflow = true;
                tracing::warn!(
                    max = MAX_REFUSED_SOURCES,
                    "IPIP from more unknown sources than tunl remembers; further ones are only counted until a remembered one has been quiet for 5 minutes"
                );
            }
        } else {
            // One log line per new source, at most MAX_REFUSED_SOURCES per
            // REFUSED_SOURCE_EXPIRY.
            tracing::warn!(%source, "refused IPIP from a source that is neither a route's node nor allowed");
            self.sources.insert(source, (n, now));
        }
    }
}

/// A refused IPIP source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedSource {
    /// The outer source address.
    pub source: Ipv4Addr,
    /// Packets refused from it.
    pub packets: u64,
    /// When the last one arrived.
    pub last_seen: SystemTime,
}

/// The refused sources at one point in time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusedSnapshot {
    /// Remembered sources, by address.
    pub sources: Vec<RefusedSource>,
    /// Packets from sources past the table's size.
    pub other_packets: u64,
}

/// Per-node traffic and refused sources, shared by all workers.
#[derive(Debug, Default)]
pub struct NodeCounters {
    traffic: Mutex<HashMap<Ipv4Addr, NodeTraffic>>,
    refused: Mutex<RefusedTable>,
}

impl NodeCounters {
    /// Traffic per node seen so far.
    pub fn traffic(&self) -> HashMap<Ipv4Addr, NodeTraffic> {
        self.traffic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Refused sources so far.
    pub fn refused(&self) -> RefusedSnapshot {
        let t = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        RefusedSnapshot {
            sources: t
                .sources
                .iter()
                .map(|(a, (n, seen))| RefusedSource {
                    source: *a,
                    packets: *n,
                    last_seen: *seen,
                })
                .collect(),
            other_packets: t.other_packets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_node_and_flushes() {
        let a = Ipv4Addr::new(172, 16, 36, 5);
        let b = Ipv4Addr::new(172, 16, 37, 6);
        let vias = [a, b];
        let shared = NodeCounters::default();
        let mut local = LocalNodeCounters::default();
        local.tx(&vias, a, 100);
        local.tx(&vias, a, 50);
        local.rx(&vias, b, 84);
        local.tx(&vias, Ipv4Addr::new(1, 2, 3, 4), 10); // not a node: ignored
        local.flush(&vias, &shared);
        local.flush(&vias, &shared); // nothing new
        let t = shared.traffic();
        assert_eq!(t.len(), 2);
        assert_eq!((t[&a].tx_packets, t[&a].tx_bytes), (2, 150));
        assert_eq!((t[&b].rx_packets, t[&b].rx_bytes), (1, 84));
        assert!(t[&a].last_seen.is_some());
        assert!(t[&a].last_rx.is_none(), "only sent to");
        assert!(t[&b].last_rx.is_some());
    }

    #[test]
    fn refused_sources_are_bounded() {
        let shared = NodeCounters::default();
        let mut local = LocalNodeCounters::default();
        for i in 0..100u32 {
            local.refused(Ipv4Addr::from(0x0a00_0000 + i));
            local.refused(Ipv4Addr::new(10, 0, 0, 0));
        }
        local.flush(&[], &shared);
        let r = shared.refused();
        assert_eq!(r.sources.len(), MAX_REFUSED_SOURCES);
        let total: u64 = r.sources.iter().map(|s| s.packets).sum::<u64>() + r.other_packets;
        assert_eq!(total, 200);
        assert_eq!(r.sources[0].packets, 101);
    }

    #[test]
    fn a_full_table_gives_way_to_new_sources_after_the_oldest_went_quiet() {
        let mut t = RefusedTable::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let source = |i: u32| Ipv4Addr::from(0x0a00_0000 + i);
        for i in 0..MAX_REFUSED_SOURCES as u32 {
            // Seen one second apart: source 0 first.
            t.add(source(i), 2, t0 + Duration::from_secs(u64::from(i)));
        }
        // A busy one keeps its place: seen again now.
        t.add(source(0), 1, t0 + Duration::from_secs(100));
        let new = Ipv4Addr::new(172, 16, 40, 7);
        // Within the expiry: only counted.
        t.add(new, 5, t0 + Duration::from_secs(60));
        assert!(!t.sources.contains_key(&new));
        assert_eq!(t.other_packets, 5);
        // Source 1, quiet for longer than the expiry, gives way; source 0,
        // seen later, stays.
        let later = t0 + Duration::from_secs(1) + REFUSED_SOURCE_EXPIRY + Duration::from_secs(1);
        t.add(new, 3, later);
        assert_eq!(t.sources.get(&new), Some(&(3, later)));
        assert!(!t.sources.contains_key(&source(1)));
        assert!(t.sources.contains_key(&source(0)));
        assert_eq!(t.sources.len(), MAX_REFUSED_SOURCES);
        assert_eq!(t.other_packets, 5 + 2, "the forgotten source's packets");
        let total: u64 = t.sources.values().map(|(n, _)| n).sum::<u64>() + t.other_packets;
        assert_eq!(total, 2 * MAX_REFUSED_SOURCES as u64 + 1 + 5 + 3);
        // A clock that went back never evicts.
        let mut t2 = RefusedTable::default();
        for i in 0..MAX_REFUSED_SOURCES as u32 {
            t2.add(source(i), 1, t0);
        }
        t2.add(new, 1, t0 - Duration::from_secs(3600));
        assert!(!t2.sources.contains_key(&new));
    }
}
