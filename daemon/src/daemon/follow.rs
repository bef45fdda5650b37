//! Following the kernel's routes: the listener's events feed the
//! [`RouteMirror`]; a dump fills it at start and again whenever events were
//! lost.
//!
//! The recipe (measured on Linux 6.18, see docs/operating.md):
//! 1. subscribe first (a socket of its own, on the listener's thread,
//!    never used for requests), then dump on another socket: every change
//!    after the dump arrives on the subscription, and changes the dump
//!    already shows do no harm when applied again;
//! 2. apply the events in order, in batches (one LPM publication each);
//! 3. on `ENOBUFS` (the subscription's buffer overran: changes were lost),
//!    drop the subscription with whatever it still holds (it may be older
//!    than the loss), subscribe anew, dump, and swap the dumped table in at
//!    once: the old one forwards until then;
//! 4. the kernel flushes a device's routes without a word when the device
//!    goes down or away: a link change of tunl's device also reloads the
//!    table from a dump.

use tracing::{debug, error, warn};
use tunl_io::netlink::{NetlinkError, RouteEvent, RouteListener, Subscription, dump_ipv4_routes};

use super::error::DaemonError;
use super::mirror::RouteMirror;
use super::routes::Routes;

/// Events handled per batch at most (one LPM publication each).
const BATCH: usize = 4096;
/// Route events after which, once the feed has caught up, the heap's free
/// memory is handed back to the kernel: a start on a large config, a
/// large `route replace` or another program's mass change allocate far
/// more while in flight (the queued events, the kernel's messages) than
/// the mirror keeps.
const RELEASE_AFTER: usize = 10_000;

/// The subscription to the kernel's route changes, and what happened to it.
pub(super) struct KernelFeed {
    listener: RouteListener,
    subscription: Subscription,
    receive_buffer: usize,
    events: Vec<RouteEvent>,
    /// Whether tunl's device was up at the last link event.
    device_up: bool,
    logged_overrun: bool,
    /// Events applied since the heap was last trimmed.
    since_release: usize,
}

/// What a batch asked the caller to do besides applying its routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resync {
    /// Nothing.
    No,
    /// Reload the table from a dump (the device's routes were flushed).
    Dump,
    /// Events were lost: subscribe anew, then dump.
    Resubscribe,
}

impl KernelFeed {
    /// Starts the listener thread and subscribes with a receive buffer of
    /// `receive_buffer` bytes. Do it before the first dump.
    pub(super) fn start(receive_buffer: usize) -> Result<KernelFeed, DaemonError> {
        let listener =
            RouteListener::start().map_err(|source| DaemonError::RouteListener { source })?;
        let subscription = listener
            .subscribe(receive_buffer)
            .map_err(|source| DaemonError::RouteListener { source })?;
        debug!(
            receive_buffer = subscription.receive_buffer(),
            "following the kernel's routes"
        );
        Ok(KernelFeed {
            listener,
            subscription,
            receive_buffer,
            events: Vec::with_capacity(BATCH),
            device_up: true,
            logged_overrun: false,
            since_release: 0,
        })
    }

    /// Drops every capability of the listener thread: it only reads sockets
    /// the control plane opens for it. Call it once the process's
    /// privileges are dropped (a thread without CAP_SETUID would make the
    /// user switch, which glibc applies to every thread, abort).
    pub(super) fn drop_capabilities(&self) -> Result<(), DaemonError> {
        self.listener
            .run_on_thread(super::privileges::drop_thread_capabilities)
            .map_err(|source| DaemonError::RouteListener { source })
    }

    /// Waits for the next batch of events. Cancel-safe.
    pub(super) async fn recv(&mut self) {
        self.events.clear();
        if self.subscription.recv_many(&mut self.events, BATCH).await == 0 {
            // The subscription ended without a Failed event (it cannot,
            // but never spin on it): treat it as a loss.
            self.events
                .push(RouteEvent::Failed("the route listener stopped".to_owned()));
        }
    }

    /// Applies the batch [`KernelFeed::recv`] got to `mirror` and says
    /// whether it must be reloaded. A batch with an overrun or a failure is
    /// not applied: what it holds may be older than the loss.
    pub(super) fn apply(&mut self, mirror: &mut RouteMirror) -> Resync {
        let device = mirror.device();
        let mut resync = Resync::No;
        for e in &self.events {
            match e {
                RouteEvent::Overrun => {
                    if self.logged_overrun {
                        debug!("route listener overran again; resynchronising");
                    } else {
                        self.logged_overrun = true;
                        warn!(
                            receive_buffer = self.subscription.receive_buffer(),
                            "the kernel dropped route changes tunl had no room for (ENOBUFS); \
                             resynchronising from a dump (counted in route_resyncs; logged once)"
                        );
                    }
                    return Resync::Resubscribe;
                }
                RouteEvent::Failed(reason) => {
                    error!(%reason, "route listener failed; subscribing again and resynchronising");
                    return Resync::Resubscribe;
                }
                RouteEvent::Link { index, up } if *index == device && *up != self.device_up => {
                    self.device_up = *up;
                    resync = Resync::Dump;
                }
                RouteEvent::LinkGone { index } if *index == device => resync = Resync::Dump,
                _ => {}
            }
        }
        mirror.apply(&self.events);
        self.since_release += self.events.len();
        // A short batch: the feed has caught up.
        if self.events.len() < BATCH && self.since_release >= RELEASE_AFTER {
            self.since_release = 0;
            tunl_io::memory::release_free_memory();
        }
        resync
    }

    /// Replaces the subscription with a new one (the old one and what it
    /// still holds are dropped).
    pub(super) fn resubscribe(&mut self) -> Result<(), std::io::Error> {
        self.subscription = self.listener.subscribe(self.receive_buffer)?;
        Ok(())
    }
}

/// Replaces the mirror's content with a dump of its table (start, resync),
/// in one LPM publication, keeping tunl's own routes (`own`) that the dump
/// lacks ([`super::mirror::Replacement::keep_own`]); returns the number of
/// routes dumped.
///
/// # Errors
/// The dump failed; the mirror is as it was.
pub(super) async fn load(mirror: &mut RouteMirror, own: &Routes) -> Result<usize, NetlinkError> {
    let table = mirror.table();
    let mut replacement = mirror.replace();
    dump_ipv4_routes(table, |route| replacement.add(&route)).await?;
    let kept = replacement.keep_own(own.iter().map(|(p, v)| (*p, *v)));
    if kept > 0 {
        debug!(
            routes = kept,
            "tunl's routes the kernel lacks kept in the table until they are put back"
        );
    }
    Ok(replacement.commit())
}

/// Handles what a batch asked for: resubscribes when events were lost,
/// then reloads the mirror; counts resyncs after a loss. Failures are
/// logged and leave the mirror as it was (the next loss or link change
/// tries again).
pub(super) async fn resync(
    feed: &mut KernelFeed,
    mirror: &mut RouteMirror,
    own: &Routes,
    why: Resync,
) {
    if why == Resync::No {
        return;
    }
    if why == Resync::Resubscribe {
        mirror.stats().count_resync();
        if let Err(e) = feed.resubscribe() {
            error!(error = %e, "cannot subscribe to route changes again; the LPM no longer follows the kernel");
            return;
        }
    }
    match load(mirror, own).await {
        Ok(n) => debug!(
            routes = n,
            mirrored = mirror.len(),
            "route table reloaded from a dump"
        ),
        Err(e) => error!(error = %e, "cannot reload the route table from a dump"),
    }
}
