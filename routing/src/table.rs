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

use std::marker::PhantomData;
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

/// Builds the writer and readers of a concurrent route table.
#[derive(Debug)]
pub struct RouteTable<V> {
    _value: PhantomData<fn() -> V>,
}

impl<V: Copy + PartialEq + Send + Sync + 'static> RouteTable<V> {
    /// An empty table tuned for /26 blocks.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (RouteWriter<V>, RouteReader<V>) {
        Self::from_lpm(Lpm::new())
    }

    /// A table starting with the routes (and block length) of `lpm`.
    pub fn from_lpm(lpm: Lpm<V>) -> (RouteWriter<V>, RouteReader<V>) {
        let (mut write, read) = left_right::new_from_empty(lpm);
        // The first publish only swaps and the second syncs the copies by
        // cloning; do both now so no later update pays for a clone.
        write.publish();
        write.publish();
        (RouteWriter { write }, RouteReader::from_handle(read))
    }
}

/// The single writer of a [`RouteTable`]. Every method publishes before it
/// returns: readers see the change from then on.
pub struct RouteWriter<V: Copy + PartialEq> {
    write: WriteHandle<Lpm<V>, RouteOp<V>>,
}

impl<V: Copy + PartialEq + Send + Sync + 'static> RouteWriter<V> {
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

impl<V: Copy + PartialEq + std::fmt::Debug> std::fmt::Debug for RouteWriter<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteWriter").finish_non_exhaustive()
    }
}

/// A reader of a [`RouteTable`]; clone one per dataplane thread.
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
