//! The concurrent route table: one writer, many readers that never block.
//!
//! # Design: left-right
//! The table is kept twice (the [`left_right`] crate). Readers read one copy
//! through an atomic pointer; the writer changes the other, then swaps the
//! pointer. Entering a read is one atomic increment of a per-reader epoch
//! counter, a fence and one pointer load (a few ns, once per batch of
//! packets); no lock, no reference count shared between threads.
//!
//! Every writer method appends its operations to an op log and publishes
//! before returning: it waits until every reader has left the copy it is about
//! to change (readers hold a [`RouteGuard`] for one batch only), applies the
//! log to it, and swaps. A publish therefore costs two applications of each
//! operation (one per copy), not a clone of the table, and readers see the
//! update as soon as the swap is done. Operations given to one
//! [`RouteWriter::apply`] or [`RouteWriter::replace_all`] land in the same
//! publish, so a reader sees all of them or none.
//!
//! Costs: memory is twice one [`Lpm`]; the writer (never a reader) may wait
//! for a reader that holds a guard for long.
//!
//! After the [`RouteWriter`] is dropped, readers see an empty table.

use std::net::Ipv4Addr;
use std::ops::Deref;

use ipnetwork::Ipv4Network;
use left_right::{Absorb, ReadGuard, ReadHandle, WriteHandle};

use crate::lpm::Lpm;

/// One change to the route table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteOp<V> {
    /// Add or replace the route for a prefix.
    Insert(Ipv4Network, V),
    /// Remove the route for exactly this prefix.
    Remove(Ipv4Network),
}

impl<V: Copy + PartialEq> Absorb<RouteOp<V>> for Lpm<V> {
    fn absorb_first(&mut self, op: &mut RouteOp<V>, _: &Self) {
        match *op {
            RouteOp::Insert(prefix, value) => {
                self.insert(prefix, value);
            }
            RouteOp::Remove(prefix) => {
                self.remove(prefix);
            }
        }
    }

    fn sync_with(&mut self, first: &Self) {
        self.clone_from(first);
    }
}

/// The single writer of the concurrent route table; [`RouteWriter::reader`]
/// hands out its readers. Every method publishes before it returns: readers
/// see the change from then on.
pub struct RouteWriter<V: Copy + PartialEq> {
    write: WriteHandle<Lpm<V>, RouteOp<V>>,
}

impl<V: Copy + PartialEq + Send + Sync + 'static> RouteWriter<V> {
    /// An empty table tuned for /26 blocks ([`Lpm::new`]).
    pub fn new() -> Self {
        Self::from_lpm(Lpm::new())
    }

    /// A table starting with the routes (and block length) of `lpm`.
    pub fn from_lpm(lpm: Lpm<V>) -> Self {
        let (mut write, _) = left_right::new_from_empty(lpm);
        // The first publish only swaps and the second syncs the copies by
        // cloning; do both now so no later update pays for a clone.
        write.publish();
        write.publish();
        RouteWriter { write }
    }

    /// Runs `f` on the published copy (which, since every method publishes, is current).
    fn with_current<R>(&self, f: impl FnOnce(&Lpm<V>) -> R) -> Option<R> {
        self.write.enter().map(|lpm| f(&lpm))
    }

    /// Adds or replaces the route for `prefix` (normalised to its network) and
    /// publishes. Returns the previous value.
    pub fn insert(&mut self, prefix: Ipv4Network, value: V) -> Option<V> {
        let prev = self.with_current(|lpm| lpm.get(prefix)).flatten();
        if prev != Some(value) {
            self.write.append(RouteOp::Insert(prefix, value));
            self.write.publish();
        }
        prev
    }

    /// Removes the route for exactly `prefix` and publishes. Returns its value.
    pub fn remove(&mut self, prefix: Ipv4Network) -> Option<V> {
        let prev = self.with_current(|lpm| lpm.get(prefix)).flatten();
        if prev.is_some() {
            self.write.append(RouteOp::Remove(prefix));
            self.write.publish();
        }
        prev
    }

    /// Applies all `ops` in order and publishes once: readers see all of them or none.
    pub fn apply(&mut self, ops: impl IntoIterator<Item = RouteOp<V>>) {
        self.write.extend(ops);
        self.write.flush();
    }

    /// Replaces the whole route set in one publish. Only the difference is
    /// applied, and readers switch from the old set to the new one at once, so
    /// routes that did not change keep resolving throughout. If `routes` holds
    /// a prefix twice, the last value wins.
    pub fn replace_all(&mut self, routes: impl IntoIterator<Item = (Ipv4Network, V)>) {
        let mut next = Lpm::<V>::new();
        for (prefix, value) in routes {
            next.insert(prefix, value);
        }
        let ops = self
            .with_current(|current| {
                let removals = current
                    .iter()
                    .filter(|&(prefix, _)| next.get(prefix).is_none())
                    .map(|(prefix, _)| RouteOp::Remove(prefix));
                let changes = next
                    .iter()
                    .filter(|&(prefix, value)| current.get(prefix) != Some(value))
                    .map(|(prefix, value)| RouteOp::Insert(prefix, value));
                removals.chain(changes).collect::<Vec<_>>()
            })
            .unwrap_or_default();
        self.apply(ops);
    }

    /// A new reader of this table.
    pub fn reader(&self) -> RouteReader<V> {
        RouteReader::from_handle((*self.write).clone())
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.with_current(Lpm::len).unwrap_or(0)
    }

    /// Whether the table holds no route.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All routes, sorted by (network, prefix length).
    pub fn snapshot(&self) -> Vec<(Ipv4Network, V)> {
        self.with_current(|lpm| lpm.iter().collect())
            .unwrap_or_default()
    }
}

impl<V: Copy + PartialEq + Send + Sync + 'static> Default for RouteWriter<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy + PartialEq + std::fmt::Debug> std::fmt::Debug for RouteWriter<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWriter").finish_non_exhaustive()
    }
}

/// A reader of the table of a [`RouteWriter`]; clone one per dataplane
/// thread.
pub struct RouteReader<V> {
    read: ReadHandle<Lpm<V>>,
    /// What [`RouteReader::load`] shows once the writer is gone.
    empty: Lpm<V>,
}

impl<V: Copy + PartialEq + Send + Sync + 'static> RouteReader<V> {
    fn from_handle(read: ReadHandle<Lpm<V>>) -> Self {
        Self {
            read,
            empty: Lpm::new(),
        }
    }

    /// The current table. Hold the guard for one batch of packets, not
    /// longer: the writer waits for it before its next update.
    #[inline]
    pub fn load(&self) -> RouteGuard<'_, V> {
        match self.read.enter() {
            Some(guard) => RouteGuard {
                inner: GuardInner::Live(guard),
            },
            None => RouteGuard {
                inner: GuardInner::Gone(&self.empty),
            },
        }
    }

    /// The value of the longest prefix containing `addr` (one load + lookup).
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<V> {
        self.load().lookup(addr)
    }
}

impl<V: Copy + PartialEq + Send + Sync + 'static> Clone for RouteReader<V> {
    fn clone(&self) -> Self {
        Self::from_handle(self.read.clone())
    }
}

impl<V> std::fmt::Debug for RouteReader<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteReader").finish_non_exhaustive()
    }
}

/// A snapshot of the route table; derefs to [`Lpm`]. Returned by [`RouteReader::load`].
pub struct RouteGuard<'a, V> {
    inner: GuardInner<'a, V>,
}

enum GuardInner<'a, V> {
    Live(ReadGuard<'a, Lpm<V>>),
    Gone(&'a Lpm<V>),
}

impl<V> Deref for RouteGuard<'_, V> {
    type Target = Lpm<V>;

    #[inline]
    fn deref(&self) -> &Lpm<V> {
        match &self.inner {
            GuardInner::Live(guard) => guard,
            GuardInner::Gone(empty) => empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::thread;

    use ipnetwork::Ipv4Network;

    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("test prefix")
    }

    fn addr(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn assert_send<T: Send>() {}
    fn assert_clone<T: Clone>() {}

    #[test]
    fn handles_are_send() {
        assert_send::<RouteWriter<Ipv4Addr>>();
        assert_send::<RouteReader<Ipv4Addr>>();
        assert_clone::<RouteReader<Ipv4Addr>>();
    }

    #[test]
    fn writer_methods_publish() {
        let mut w = RouteWriter::<u32>::new();
        let r = w.reader();
        assert!(w.is_empty());
        assert_eq!(w.insert(net("10.0.0.0/26"), 1), None);
        assert_eq!(r.lookup(addr("10.0.0.9")), Some(1));
        assert_eq!(w.insert(net("10.0.0.5/26"), 2), Some(1));
        assert_eq!(r.lookup(addr("10.0.0.9")), Some(2));
        assert_eq!(w.insert(net("10.0.0.0/26"), 2), Some(2));
        w.apply([
            RouteOp::Insert(net("10.0.0.0/8"), 3),
            RouteOp::Remove(net("10.0.0.0/26")),
        ]);
        assert_eq!(r.lookup(addr("10.0.0.9")), Some(3));
        assert_eq!(w.snapshot(), vec![(net("10.0.0.0/8"), 3)]);
        let r2 = w.reader();
        assert_eq!(r2.clone().lookup(addr("10.1.2.3")), Some(3));
        assert_eq!(w.remove(net("10.0.0.0/8")), Some(3));
        assert_eq!(w.remove(net("10.0.0.0/8")), None);
        assert_eq!(r2.lookup(addr("10.1.2.3")), None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn from_lpm_keeps_routes_and_drop_empties() {
        let mut lpm = Lpm::new();
        lpm.insert(net("10.1.0.0/26"), 7u32);
        let w = RouteWriter::from_lpm(lpm);
        let r = w.reader();
        assert_eq!(w.len(), 1);
        assert_eq!(r.lookup(addr("10.1.0.1")), Some(7));
        drop(w);
        assert_eq!(r.lookup(addr("10.1.0.1")), None);
        assert!(r.load().is_empty());
    }

    #[test]
    fn update_is_seen_by_a_reader_after_insert_returns() {
        let mut w = RouteWriter::<u32>::new();
        let r = w.reader();
        let (tx, rx) = mpsc::channel::<u32>();
        let (back_tx, back_rx) = mpsc::channel::<Option<u32>>();
        let reader = thread::spawn(move || {
            for i in rx {
                let a = Ipv4Addr::from((10 << 24) | (i << 6));
                back_tx.send(r.lookup(a)).expect("main thread alive");
            }
        });
        for i in 0..500u32 {
            let p = Ipv4Network::new(Ipv4Addr::from((10 << 24) | (i << 6)), 26).expect("/26");
            w.insert(p, i);
            tx.send(i).expect("reader alive");
            assert_eq!(back_rx.recv().expect("reader answers"), Some(i));
        }
        drop(tx);
        reader.join().expect("reader thread");
    }

    /// A writer publishes pairs of routes with `apply`; readers must see both or neither.
    #[test]
    fn readers_never_see_half_an_apply() {
        let mut lpm = Lpm::new();
        for i in 0..10_000u32 {
            let p = Ipv4Network::new(Ipv4Addr::from((10 << 24) | (i << 6)), 26).expect("/26");
            lpm.insert(p, i);
        }
        let mut w = RouteWriter::from_lpm(lpm);
        let r = w.reader();
        let a = net("10.200.0.0/26");
        let b = net("10.201.0.0/24");
        let a_addr = addr("10.200.0.1");
        let b_addr = addr("10.201.0.200");
        let done = Arc::new(AtomicBool::new(false));
        let seen_total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let r = r.clone();
                let done = Arc::clone(&done);
                let seen_total = Arc::clone(&seen_total);
                thread::spawn(move || {
                    let mut last = 0;
                    while !done.load(Ordering::Relaxed) {
                        let table = r.load();
                        let (va, vb) = (table.lookup(a_addr), table.lookup(b_addr));
                        assert_eq!(va, vb, "torn update");
                        if let Some(v) = va {
                            assert!(v >= last, "went back from {last} to {v}");
                            last = v;
                            seen_total.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        // At least 3001 rounds, and on until the readers have looked at the
        // pair a good number of times (they may start late).
        let mut g = 0u32;
        while g < 3001 || (seen_total.load(Ordering::Relaxed) < 1000 && g < 10_000_000) {
            g += 1;
            w.apply([RouteOp::Insert(a, g), RouteOp::Insert(b, g)]);
            if g.is_multiple_of(3) {
                w.apply([RouteOp::Remove(a), RouteOp::Remove(b)]);
            }
        }
        w.apply([RouteOp::Insert(a, g + 1), RouteOp::Insert(b, g + 1)]);
        done.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().expect("reader saw a torn update");
        }
        assert!(
            seen_total.load(Ordering::Relaxed) >= 1000,
            "the readers must have seen the pair to check it"
        );
        assert_eq!(w.len(), 10_002);
    }

    /// `replace_all` swaps between sets sharing stable routes; every reader
    /// observation must resolve every stable route.
    #[test]
    fn replace_all_keeps_unchanged_routes() {
        let stable: Vec<(Ipv4Network, u32)> = (0..200u32)
            .map(|i| {
                let p = Ipv4Network::new(Ipv4Addr::from((10 << 24) | (i << 6)), 26).expect("/26");
                (p, i)
            })
            .chain([(net("192.168.0.0/16"), 9999)])
            .collect();
        let mut w = RouteWriter::<u32>::new();
        let r = w.reader();
        w.replace_all(stable.iter().copied());
        let done = Arc::new(AtomicBool::new(false));
        let probes: Vec<(Ipv4Addr, u32)> = stable
            .iter()
            .map(|&(p, v)| (p.nth(1).expect("in prefix"), v))
            .collect();
        let reader = {
            let r = r.clone();
            let done = Arc::clone(&done);
            thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let table = r.load();
                    for &(a, v) in &probes {
                        assert_eq!(table.lookup(a), Some(v), "{a} lost its route");
                    }
                }
            })
        };
        for round in 0..300u32 {
            // Churn: a different set of extra routes each round, some overlapping stable ones.
            let extra = (0..50u32).map(|i| {
                let a = (10 << 24) | ((1000 + round * 7 + i) << 6);
                (Ipv4Network::new(Ipv4Addr::from(a), 26).expect("/26"), round)
            });
            let overlap = [(net("10.0.0.0/8"), round), (net("192.168.1.0/24"), 9999)];
            w.replace_all(stable.iter().copied().chain(extra).chain(overlap));
            assert_eq!(w.len(), stable.len() + 52);
        }
        w.replace_all(stable.iter().copied());
        assert_eq!(w.snapshot().len(), stable.len());
        done.store(true, Ordering::Relaxed);
        reader.join().expect("a stable route stopped resolving");
    }
}
