//! Path MTUs learned from the underlay: read by the workers, written by the
//! control plane.
//!
//! A worker that reads an underlay frag-needed about one of its packets
//! does not change the table itself: it [offers](PathMtu::offer) the lower
//! MTU into a small array of atomic slots, and the control plane's
//! [`PathMtu::maintain`] (a tokio task,
//! [`maintain_path_mtu`](super::maintain_path_mtu), every
//! [`MAINTAIN_INTERVAL`]) takes the offers, builds the next table and
//! drops expired entries. Every allocation and the writers' lock are on
//! the control plane; a worker only loads atomics and the current table.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::debug;

/// How long a learned path MTU holds before it reverts (the kernel's
/// `net.ipv4.route.mtu_expires` default).
pub const PMTU_EXPIRES: Duration = Duration::from_secs(600);

/// Offers that can wait for the control plane at once: distinct nodes whose
/// MTU dropped within one [`MAINTAIN_INTERVAL`]. More are lost until the
/// next frag-needed about them.
pub const INTAKE_SLOTS: usize = 16;

/// How often the control plane applies offers and prunes expired entries.
///
/// A timer rather than a wakeup from the worker: waking a tokio task from
/// another thread takes the runtime's scheduler lock and may write to its
/// eventfd, which is what the dataplane threads must not do. 100 ms delays
/// a lowered MTU by less than TCP's minimum retransmission timeout (200 ms),
/// so a flow loses at most the packets it sends in that time, as it already
/// does before the frag-needed arrives; the task itself costs a few atomic
/// loads per tick while nothing changes.
pub const MAINTAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Marks an occupied intake slot (a slot is `VALID | node << 16 | mtu`).
const VALID: u64 = 1 << 63;

fn encode(node: Ipv4Addr, mtu: u16) -> u64 {
    VALID | u64::from(u32::from(node)) << 16 | u64::from(mtu)
}

fn decode(slot: u64) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from((slot >> 16) as u32), slot as u16)
}

type Table = HashMap<Ipv4Addr, (u16, Instant)>;

/// Path MTUs learned from the underlay, per node (the tunnel MTU toward it).
///
/// Readers (the workers, status, metrics) pass the time in: an entry past
/// its expiry reads as absent, whether or not the control plane has pruned
/// it yet.
#[derive(Debug)]
pub struct PathMtu {
    /// The lowest MTU in the table, or `u32::MAX` when it is empty: packets
    /// no longer than this skip the table entirely.
    floor: AtomicU32,
    table: ArcSwap<Table>,
    /// Lowered MTUs offered by the workers, not applied yet (0: empty).
    intake: [AtomicU64; INTAKE_SLOTS],
    /// Reductions applied by [`PathMtu::maintain`] or [`PathMtu::learn`].
    updates: AtomicU64,
    /// Serialises the writers (control plane only).
    write: Mutex<()>,
}

impl Default for PathMtu {
    fn default() -> Self {
        PathMtu {
            floor: AtomicU32::new(u32::MAX),
            table: ArcSwap::from_pointee(HashMap::new()),
            intake: std::array::from_fn(|_| AtomicU64::new(0)),
            updates: AtomicU64::new(0),
            write: Mutex::new(()),
        }
    }
}

impl PathMtu {
    /// The MTU to enforce for an inner packet of `len` bytes toward `node`:
    /// one relaxed load while `len` is under every learned MTU.
    #[inline]
    pub fn effective(&self, node: Ipv4Addr, len: usize, tunnel_mtu: u16, now: Instant) -> u16 {
        if len as u64 <= u64::from(self.floor.load(Ordering::Relaxed)) {
            return tunnel_mtu;
        }
        self.toward(node, tunnel_mtu, now)
    }

    /// The MTU toward `node`: the learned one while it holds, never above
    /// `tunnel_mtu`.
    pub fn toward(&self, node: Ipv4Addr, tunnel_mtu: u16, now: Instant) -> u16 {
        self.lookup(node, now)
            .map_or(tunnel_mtu, |learned| learned.min(tunnel_mtu))
    }

    /// The learned MTU toward `node`, if one holds at `now`.
    pub fn lookup(&self, node: Ipv4Addr, now: Instant) -> Option<u16> {
        match self.table.load().get(&node) {
            Some((mtu, expires)) if *expires > now => Some(*mtu),
            _ => None,
        }
    }

    /// When the MTU toward `node` was last lowered, if a learned one holds
    /// at `now`.
    pub fn lowered_at(&self, node: Ipv4Addr, now: Instant) -> Option<Instant> {
        match self.table.load().get(&node) {
            Some((_, expires)) if *expires > now => expires.checked_sub(PMTU_EXPIRES),
            _ => None,
        }
    }

    /// Every learned MTU still in force at `now`, by node.
    pub fn entries(&self, now: Instant) -> Vec<(Ipv4Addr, u16)> {
        let mut v: Vec<_> = self
            .table
            .load()
            .iter()
            .filter(|(_, (_, exp))| *exp > now)
            .map(|(k, (m, _))| (*k, *m))
            .collect();
        v.sort_unstable();
        v
    }

    /// Reductions applied so far (the `pmtu_updates` counter).
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Offers a lower tunnel MTU toward `node`, for the control plane to
    /// apply at its next [`PathMtu::maintain`]. For the dataplane: no lock,
    /// no allocation, a few atomic operations. An offer no lower than one
    /// already waiting for `node` is merged into it. Returns false when
    /// every slot holds another node's offer: this one is lost (the
    /// underlay repeats its frag-needed for every packet still too big).
    pub fn offer(&self, node: Ipv4Addr, mtu: u16) -> bool {
        let want = encode(node, mtu);
        for slot in &self.intake {
            let mut current = slot.load(Ordering::Acquire);
            loop {
                if current != 0 {
                    let (pending, pending_mtu) = decode(current);
                    if pending != node {
                        break;
                    }
                    if pending_mtu <= mtu {
                        return true;
                    }
                }
                match slot.compare_exchange(current, want, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return true,
                    Err(now_there) => current = now_there,
                }
            }
        }
        false
    }

    /// The control plane's side: applies the waiting offers (lower only)
    /// and drops the entries expired at `now`, then publishes the new table
    /// for the workers. Allocates only when something changed. Returns how
    /// many offers lowered an MTU.
    pub fn maintain(&self, now: Instant) -> usize {
        let mut offers = [(Ipv4Addr::UNSPECIFIED, 0u16); INTAKE_SLOTS];
        let mut n = 0;
        for slot in &self.intake {
            // Look before taking: an empty slot is not written to.
            if slot.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let taken = slot.swap(0, Ordering::AcqRel);
            if taken != 0 {
                offers[n] = decode(taken);
                n += 1;
            }
        }
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.table.load();
        let lowers = |node: &Ipv4Addr, mtu: u16| match current.get(node) {
            Some((old, expires)) => *expires <= now || mtu < *old,
            None => true,
        };
        let expired = current.values().any(|(_, exp)| *exp <= now);
        if !expired && !offers[..n].iter().any(|(node, mtu)| lowers(node, *mtu)) {
            return 0;
        }
        let mut next: Table = current
            .iter()
            .filter(|(_, (_, exp))| *exp > now)
            .map(|(k, v)| (*k, *v))
            .collect();
        let mut lowered = 0;
        for (node, mtu) in &offers[..n] {
            let applies = match next.get(node) {
                Some((old, _)) => mtu < old,
                None => true,
            };
            if applies {
                next.insert(*node, (*mtu, now + PMTU_EXPIRES));
                lowered += 1;
                debug!(%node, tunnel_mtu = mtu, "path MTU lowered");
            }
        }
        drop(current);
        self.publish(next);
        self.updates.fetch_add(lowered as u64, Ordering::Relaxed);
        lowered
    }

    /// Records at once that the tunnel MTU toward `node` is `mtu` (lower
    /// only), for the control plane and tests; workers [offer](Self::offer).
    /// Returns true when this lowered it.
    pub fn learn(&self, node: Ipv4Addr, mtu: u16, now: Instant) -> bool {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.table.load();
        if let Some((old, expires)) = current.get(&node) {
            if *expires > now && *old <= mtu {
                return false;
            }
        }
        let mut next: Table = current
            .iter()
            .filter(|(_, (_, exp))| *exp > now)
            .map(|(k, v)| (*k, *v))
            .collect();
        next.insert(node, (mtu, now + PMTU_EXPIRES));
        drop(current);
        self.publish(next);
        self.updates.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn publish(&self, next: Table) {
        let floor = next.values().map(|(m, _)| u32::from(*m)).min();
        self.table.store(Arc::new(next));
        self.floor
            .store(floor.unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 5);
    const OTHER: Ipv4Addr = Ipv4Addr::new(172, 16, 37, 6);

    #[test]
    fn lowers_only() {
        let pm = PathMtu::default();
        let now = Instant::now();
        assert_eq!(pm.effective(NODE, 1480, 1480, now), 1480);
        assert!(pm.learn(NODE, 1380, now));
        assert_eq!(pm.effective(NODE, 1400, 1480, now), 1380);
        assert_eq!(pm.effective(NODE, 1380, 1480, now), 1480, "under the floor");
        assert_eq!(pm.effective(OTHER, 1400, 1480, now), 1480);
        assert!(!pm.learn(NODE, 1400, now), "a higher MTU does not raise it");
        assert!(pm.learn(NODE, 1280, now));
        assert_eq!(pm.lookup(NODE, now), Some(1280));
        assert_eq!(pm.lowered_at(NODE, now), Some(now));
        assert_eq!(pm.lowered_at(OTHER, now), None);
        assert_eq!(pm.lowered_at(NODE, now + PMTU_EXPIRES), None, "expired");
        assert_eq!(pm.entries(now), vec![(NODE, 1280)]);
        assert_eq!(pm.updates(), 2);
    }

    #[test]
    fn offers_wait_for_maintain() {
        let pm = PathMtu::default();
        let now = Instant::now();
        assert!(pm.offer(NODE, 1400));
        assert!(
            pm.offer(NODE, 1380),
            "a lower offer replaces the waiting one"
        );
        assert!(pm.offer(NODE, 1450), "a higher one merges into it");
        assert!(pm.offer(OTHER, 1300));
        assert_eq!(pm.lookup(NODE, now), None, "not applied before maintain");
        assert_eq!(pm.maintain(now), 2);
        assert_eq!(pm.entries(now), vec![(NODE, 1380), (OTHER, 1300)]);
        assert_eq!(pm.updates(), 2);
        assert_eq!(pm.maintain(now), 0, "the intake was drained");
        assert!(pm.offer(NODE, 1390));
        assert_eq!(pm.maintain(now), 0, "not lower than the learned 1380");
        assert_eq!(pm.lookup(NODE, now), Some(1380));
    }

    #[test]
    fn a_full_intake_loses_new_nodes_only() {
        let pm = PathMtu::default();
        for i in 0..INTAKE_SLOTS as u32 {
            assert!(pm.offer(Ipv4Addr::from(0x0a00_0001 + i), 1400));
        }
        assert!(!pm.offer(NODE, 1400), "no slot left");
        assert!(pm.offer(Ipv4Addr::new(10, 0, 0, 1), 1300), "merged");
        let now = Instant::now();
        assert_eq!(pm.maintain(now), INTAKE_SLOTS);
        assert_eq!(pm.lookup(Ipv4Addr::new(10, 0, 0, 1), now), Some(1300));
        assert!(pm.offer(NODE, 1400), "room again");
    }

    #[test]
    fn expired_entries_read_as_absent_and_maintain_prunes_them() {
        let pm = PathMtu::default();
        let t0 = Instant::now();
        assert!(pm.learn(NODE, 1380, t0));
        assert!(pm.learn(OTHER, 1300, t0 + Duration::from_secs(300)));
        let later = t0 + PMTU_EXPIRES + Duration::from_secs(1);
        assert_eq!(pm.lookup(NODE, later), None, "expired, not yet pruned");
        assert_eq!(pm.effective(NODE, 1400, 1480, later), 1480);
        assert_eq!(pm.maintain(later), 0);
        assert_eq!(pm.entries(later), vec![(OTHER, 1300)]);
        // The floor follows the table: 1350 is above OTHER's 1300 only.
        assert_eq!(pm.floor.load(Ordering::Relaxed), 1300);
        // An expired entry is raised again by an offer above its old MTU.
        let much_later = later + PMTU_EXPIRES;
        assert!(pm.offer(OTHER, 1400));
        assert_eq!(pm.maintain(much_later), 1);
        assert_eq!(pm.entries(much_later), vec![(OTHER, 1400)]);
        assert_eq!(pm.floor.load(Ordering::Relaxed), 1400);
    }
}
