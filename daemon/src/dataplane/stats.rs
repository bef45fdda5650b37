//! A worker's statistics: the counts of the batch in hand, which the
//! pipeline adds to as plain memory, and when they go to the shared
//! counters.

use std::sync::Arc;

use super::counters::{Counters, LocalCounters};
use super::nodes::LocalNodeCounters;
use super::state::{Policy, Shared};

/// Batches between flushes of the per-node counters.
const NODE_FLUSH_BATCHES: u32 = 64;

/// The unflushed counts of one worker: what the pipeline and the worker's
/// I/O add to while they handle a batch.
#[derive(Debug, Default)]
pub struct BatchCounts {
    /// The worker's counters (packets, bytes, drops by reason, ...).
    pub local: LocalCounters,
    /// Per-node traffic and refused sources.
    pub nodes: LocalNodeCounters,
}

/// One worker's statistics: its shared [`Counters`], the counts of the
/// batch in hand and the policy its per-node counts are indexed by.
#[derive(Debug)]
pub struct Stats {
    shared: Arc<Counters>,
    /// The counts not yet flushed.
    pub counts: BatchCounts,
    /// The policy `counts.nodes` is counting against (its `vias` index the
    /// tallies).
    nodes_policy: Option<Arc<Policy>>,
    /// Batches since `counts.nodes` was last flushed.
    node_batches: u32,
}

impl Stats {
    /// Statistics flushed into `shared` (from [`Shared::register_counters`]).
    pub fn new(shared: Arc<Counters>) -> Stats {
        Stats {
            shared,
            counts: BatchCounts::default(),
            nodes_policy: None,
            node_batches: 0,
        }
    }

    /// Loads the policy for one batch and makes the per-node counts count
    /// against it: when the policy changed since the last batch, the counts
    /// made against the old one (whose `vias` index them) are flushed first.
    pub fn load_policy(&mut self, shared: &Shared) -> arc_swap::Guard<Arc<Policy>> {
        let policy = shared.policy.load();
        match &self.nodes_policy {
            Some(p) if Arc::ptr_eq(p, &policy) => {}
            Some(p) => {
                self.counts.nodes.flush(&p.vias, &shared.nodes);
                self.nodes_policy = Some(Arc::clone(&policy));
            }
            None => self.nodes_policy = Some(Arc::clone(&policy)),
        }
        policy
    }

    /// Counts a batch for the per-node flush: the counts go to the shared
    /// table every 64 batches (and when the worker goes idle), not per
    /// batch, so small-packet batches do not each take its lock and read
    /// the clock.
    pub fn batch_done(&mut self, shared: &Shared) {
        self.node_batches += 1;
        if self.node_batches >= NODE_FLUSH_BATCHES {
            self.flush_nodes(shared);
        }
    }

    /// Publishes the per-node counts into [`Shared::nodes`].
    pub fn flush_nodes(&mut self, shared: &Shared) {
        self.node_batches = 0;
        if let Some(policy) = &self.nodes_policy {
            self.counts.nodes.flush(&policy.vias, &shared.nodes);
        }
    }

    /// Adds the counters into the shared ones (once per batch or wakeup).
    pub fn flush(&mut self) {
        self.shared.flush(&mut self.counts.local);
    }
}
