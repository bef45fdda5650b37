//! Neighbours: the next hops' MACs on the underlay device, for AF_PACKET
//! transmit (`[dataplane] packet_tx`), read from the kernel's neighbour
//! table over the watcher's own netlink connection.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};
use tunl_io::netlink::Netlink;

use crate::dataplane::Shared;

/// How often the next hops' MACs are re-read for `packet_tx`.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(1);
/// The shortest time between two reads when workers report unknown next
/// hops.
const NEIGHBOUR_MIN_INTERVAL: Duration = Duration::from_millis(20);

/// Keeps [`Shared::neighbours`] in step with the kernel's neighbour table
/// of the underlay device, for AF_PACKET transmit: every
/// [`NEIGHBOUR_REFRESH`], and soon after a worker meets a node missing from
/// it (that batch takes the raw socket, whose ARP then resolves an on-link
/// node; a node behind a router never shows up, so repeated misses back off
/// to the regular interval).
pub(super) async fn watch_neighbours(netlink: Netlink, ifindex: u32, shared: Arc<Shared>) {
    let mut failing = false;
    let mut pause = NEIGHBOUR_MIN_INTERVAL;
    loop {
        let mut changed = false;
        match netlink.ipv4_neighbours(ifindex).await {
            Ok(entries) => {
                failing = false;
                changed = shared.neighbours.replace(entries);
                if changed {
                    debug!(
                        neighbours = shared.neighbours.load().len(),
                        "underlay neighbours changed"
                    );
                }
            }
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "cannot read the underlay neighbours; packet_tx falls back to the raw socket for new next hops");
            }
            Err(_) => {}
        }
        // After a miss that the last read did not resolve (a node behind
        // a router is never in the table), wait twice as long before the
        // next miss-driven read, up to the regular interval.
        tokio::time::sleep(pause).await;
        let missed = tokio::time::timeout(
            NEIGHBOUR_REFRESH.saturating_sub(pause),
            shared.neighbours.missed(),
        )
        .await
        .is_ok();
        pause = if missed && !changed {
            (pause * 2).min(NEIGHBOUR_REFRESH)
        } else {
            NEIGHBOUR_MIN_INTERVAL
        };
    }
}
