//! The link watcher: a task that follows the underlay and the tunnel
//! device over netlink ([`LinkWatch`]: links and IPv4 addresses, a listener
//! of its own) and says once what changed:
//! - `tunnel.local` gone from the node, or back: published in
//!   [`Shared::links`](crate::dataplane::Shared::links), so the dataplane
//!   sends nothing from an address the node no longer has
//!   (`no_local_address`), and `tunl status` and the metrics show it;
//! - the underlay device (the one holding `tunnel.local`, or that last
//!   did) down, up again, or gone;
//! - the tunnel device set down and up again: the kernel removed its routes
//!   with the link, without a word, so the main loop is asked to put them
//!   back ([`LinkEvent::TunnelUp`]).
//!
//! After every wake-up it dumps the links and addresses and compares with
//! what it saw before ([`look`], [`changes`]): a lost event costs nothing.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};
use tunl_io::watch::{Link, LinkWatch};

use crate::dataplane::{DeviceState, Shared, UnderlayReport};

/// What the watcher tells the main loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkEvent {
    /// The tunnel device is up again after being down: put the routes back.
    TunnelUp,
}

/// What the watcher follows.
#[derive(Debug, Clone)]
pub(super) struct Watched {
    /// `tunnel.local`.
    pub local: Ipv4Addr,
    /// The tunnel device's index.
    pub tunnel: u32,
    /// The tunnel device's name, for the log.
    pub tunnel_name: String,
}

/// What one look at the links and addresses found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    /// The underlay as status shows it.
    pub report: UnderlayReport,
    /// The underlay device's index (the one holding `tunnel.local`, or that
    /// last did).
    pub underlay: Option<u32>,
    /// Whether the tunnel device is up.
    pub tunnel_up: bool,
}

impl Seen {
    /// What the start found: `underlay` holds `tunnel.local` (or nothing
    /// does), the tunnel device is up.
    pub fn at_start(underlay: Option<(u32, String)>) -> Seen {
        let (index, name) = underlay.unzip();
        Seen {
            report: UnderlayReport {
                local_present: index.is_some(),
                state: if index.is_some() {
                    DeviceState::Up
                } else {
                    DeviceState::Gone
                },
                device: name,
            },
            underlay: index,
            tunnel_up: true,
        }
    }
}

/// What a look found, given the one before (whose underlay device is kept
/// while no device holds `tunnel.local`).
pub(super) fn look(
    before: &Seen,
    watched: &Watched,
    addresses: &[(u32, Ipv4Addr)],
    links: &[Link],
) -> Seen {
    let holder = addresses
        .iter()
        .find(|(_, a)| *a == watched.local)
        .map(|(i, _)| *i);
    let underlay = holder.or(before.underlay);
    let link = |index: u32| links.iter().find(|l| l.index == index);
    let device = underlay.and_then(link);
    let state = match device {
        Some(l) if l.up && l.lower_up => DeviceState::Up,
        Some(_) => DeviceState::Down,
        None => DeviceState::Gone,
    };
    let name = device
        .map(|l| l.name.clone())
        .or_else(|| before.report.device.clone());
    Seen {
        report: UnderlayReport {
            local_present: holder.is_some(),
            device: name,
            state,
        },
        underlay,
        tunnel_up: link(watched.tunnel).is_some_and(|l| l.up),
    }
}

/// One change between two looks, to log once and act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    /// `tunnel.local` is no longer an address of this node.
    LocalGone,
    /// `tunnel.local` is back, on this device.
    LocalBack(Option<String>),
    /// The underlay device changed state.
    Underlay(Option<String>, DeviceState),
    /// The tunnel device went down.
    TunnelDown,
    /// The tunnel device is up again.
    TunnelUp,
}

/// What changed from `before` to `now`.
pub(super) fn changes(before: &Seen, now: &Seen) -> Vec<Change> {
    let mut out = Vec::new();
    match (before.report.local_present, now.report.local_present) {
        (true, false) => out.push(Change::LocalGone),
        (false, true) => out.push(Change::LocalBack(now.report.device.clone())),
        _ => {}
    }
    if now.report.state != before.report.state
        || (now.report.device != before.report.device && now.report.device.is_some())
    {
        out.push(Change::Underlay(
            now.report.device.clone(),
            now.report.state,
        ));
    }
    match (before.tunnel_up, now.tunnel_up) {
        (true, false) => out.push(Change::TunnelDown),
        (false, true) => out.push(Change::TunnelUp),
        _ => {}
    }
    out
}

fn log(change: &Change, watched: &Watched) {
    let local = watched.local;
    let tunnel = &watched.tunnel_name;
    let or_none = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".to_owned());
    match change {
        Change::LocalGone => warn!(
            %local,
            "tunnel.local is no longer an address of this node: nothing is sent from it (dropped as no_local_address) until it is back"
        ),
        Change::LocalBack(device) => info!(
            %local,
            device = %or_none(device),
            "tunnel.local is an address of this node again: sending"
        ),
        Change::Underlay(device, DeviceState::Up) => {
            info!(device = %or_none(device), "underlay device is up")
        }
        Change::Underlay(device, state) => warn!(
            device = %or_none(device),
            state = %state,
            "underlay device is {state}: outer packets cannot leave through it"
        ),
        Change::TunnelDown => warn!(
            device = %tunnel,
            "the tunnel device was set down: the kernel removed its routes; tunl puts them back when it is up"
        ),
        Change::TunnelUp => info!(device = %tunnel, "the tunnel device is up again"),
    }
}

/// How long to wait before trying again when the watch fails.
const RETRY: Duration = Duration::from_secs(1);

/// Follows the links until the task is aborted: publishes the underlay's
/// state into `shared`, logs each change once, and sends
/// [`LinkEvent::TunnelUp`] to the main loop when the tunnel device is up
/// again. Starts from `seen` (what startup found) and looks at once, so a
/// change during the start is not missed.
pub(super) async fn watch_links(
    mut watch: LinkWatch,
    watched: Watched,
    mut seen: Seen,
    shared: Arc<Shared>,
    events: mpsc::Sender<LinkEvent>,
) {
    shared.links.set(seen.report.clone());
    loop {
        let looked = match (watch.ipv4_addresses().await, watch.links().await) {
            (Ok(addresses), Ok(links)) => Some(look(&seen, &watched, &addresses, &links)),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot list links and addresses; trying again");
                None
            }
        };
        if let Some(now) = looked {
            for change in changes(&seen, &now) {
                log(&change, &watched);
                if change == Change::TunnelUp {
                    let _ = events.send(LinkEvent::TunnelUp).await;
                }
            }
            shared.links.set(now.report.clone());
            seen = now;
        } else {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        if let Err(e) = watch.changed().await {
            warn!(error = %e, "the link watch stopped; looking again in a second");
            tokio::time::sleep(RETRY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(172, 16, 35, 4);

    fn watched() -> Watched {
        Watched {
            local: LOCAL,
            tunnel: 9,
            tunnel_name: "tunl0".into(),
        }
    }

    fn link(index: u32, name: &str, up: bool, lower_up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            up,
            lower_up,
        }
    }

    fn links(eth0_up: bool, tunl0_up: bool) -> Vec<Link> {
        vec![
            link(1, "lo", true, true),
            link(2, "eth0", eth0_up, eth0_up),
            link(9, "tunl0", tunl0_up, true),
        ]
    }

    #[test]
    fn the_local_address_going_and_coming_back() {
        let start = Seen::at_start(Some((2, "eth0".into())));
        let w = watched();
        let same = look(&start, &w, &[(2, LOCAL)], &links(true, true));
        assert_eq!(same, start);
        assert!(changes(&start, &same).is_empty());

        // Deleted (ip addr del): the device stays the underlay.
        let gone = look(&start, &w, &[(1, Ipv4Addr::LOCALHOST)], &links(true, true));
        assert!(!gone.report.local_present);
        assert_eq!(gone.report.device.as_deref(), Some("eth0"));
        assert_eq!(gone.report.state, DeviceState::Up);
        assert_eq!(changes(&start, &gone), [Change::LocalGone]);

        // Back on another device: that one is the underlay now.
        let mut l = links(true, true);
        l.push(link(5, "eth1", true, true));
        let back = look(&gone, &w, &[(5, LOCAL)], &l);
        assert_eq!(back.underlay, Some(5));
        assert_eq!(
            changes(&gone, &back),
            [
                Change::LocalBack(Some("eth1".into())),
                Change::Underlay(Some("eth1".into()), DeviceState::Up)
            ]
        );
    }

    #[test]
    fn the_underlay_device_down_and_gone() {
        let start = Seen::at_start(Some((2, "eth0".into())));
        let w = watched();
        let down = look(&start, &w, &[(2, LOCAL)], &links(false, true));
        assert_eq!(
            changes(&start, &down),
            [Change::Underlay(Some("eth0".into()), DeviceState::Down)]
        );
        // No carrier counts as down too.
        let mut l = links(true, true);
        l[1].lower_up = false;
        assert_eq!(
            look(&start, &w, &[(2, LOCAL)], &l).report.state,
            DeviceState::Down
        );
        // Deleted: its addresses go with it; the name stays for status.
        let gone = look(&down, &w, &[], &[link(9, "tunl0", true, true)]);
        assert_eq!(gone.report.state, DeviceState::Gone);
        assert_eq!(gone.report.device.as_deref(), Some("eth0"));
        assert_eq!(
            changes(&down, &gone),
            [
                Change::LocalGone,
                Change::Underlay(Some("eth0".into()), DeviceState::Gone)
            ]
        );
        // No underlay at start (allowed with tunnel.mtu): missing, gone.
        let none = Seen::at_start(None);
        assert!(!none.report.local_present);
        let still = look(&none, &w, &[], &links(true, true));
        assert!(changes(&none, &still).is_empty());
    }

    #[test]
    fn the_tunnel_device_down_and_up() {
        let start = Seen::at_start(Some((2, "eth0".into())));
        let w = watched();
        let down = look(&start, &w, &[(2, LOCAL)], &links(true, false));
        assert_eq!(changes(&start, &down), [Change::TunnelDown]);
        let up = look(&down, &w, &[(2, LOCAL)], &links(true, true));
        assert_eq!(changes(&down, &up), [Change::TunnelUp]);
    }
}
