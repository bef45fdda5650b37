//! Watching links and IPv4 addresses over rtnetlink.
//!
//! [`LinkWatch`] keeps two connections: a listener subscribed to
//! `RTNLGRP_LINK` and `RTNLGRP_IPV4_IFADDR`, which only ever receives, and
//! one for the dumps. Requests must not go over a subscribed socket: when
//! it overruns, the kernel drops the replies too and the request waits for
//! ever. The events themselves are only a wake-up: after one, the caller
//! dumps the links and addresses ([`LinkWatch::links`],
//! [`LinkWatch::ipv4_addresses`]) and compares, so a lost event (an
//! overrun, after which the watch subscribes a fresh socket) costs nothing
//! but the dump.
//!
//! Like [`Netlink`](crate::netlink::Netlink), it belongs to the network
//! namespace of the thread that opens it, and needs a tokio runtime.

use std::io;
use std::net::Ipv4Addr;

use futures::channel::mpsc::{TryRecvError, UnboundedReceiver};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::sys::SocketAddr;
use rtnetlink::{Handle, MulticastGroup};

use crate::netlink::NetlinkError;

/// One network interface, as a dump shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// It has carrier (`IFF_LOWER_UP`).
    pub lower_up: bool,
}

/// What [`LinkWatch::changed`] woke up for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wakeup {
    /// A link or an IPv4 address changed.
    Changed,
    /// The listener overran (events were lost) and was subscribed again:
    /// dump everything.
    Lost,
}

type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A subscription to link and IPv4 address changes, and dumps of both.
pub struct LinkWatch {
    /// The dump connection (no groups).
    requests: Handle,
    /// The listener's messages.
    events: Events,
    /// Keeps the listener connection's request side open.
    _listener: Handle,
}

impl std::fmt::Debug for LinkWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWatch").finish_non_exhaustive()
    }
}

/// A new listener connection, spawned on the current runtime.
fn subscribe() -> io::Result<(Handle, Events)> {
    let rt = tokio::runtime::Handle::try_current()
        .map_err(|_| io::Error::other("LinkWatch needs a tokio runtime"))?;
    let (conn, handle, events) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr])?;
    rt.spawn(conn);
    Ok((handle, events))
}

impl LinkWatch {
    /// Subscribes to link and IPv4 address changes and opens the dump
    /// connection, both on the current tokio runtime.
    pub fn open() -> io::Result<LinkWatch> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("LinkWatch needs a tokio runtime"))?;
        let (listener, events) = subscribe()?;
        let (conn, requests, _) = rtnetlink::new_connection()?;
        rt.spawn(conn);
        Ok(LinkWatch {
            requests,
            events,
            _listener: listener,
        })
    }

    /// Waits until a link or an IPv4 address changes, then takes every
    /// event already queued as part of the same change. After an overrun it
    /// subscribes a new socket (the old one's queue may hold events older
    /// than the loss) and says so. Fails when the listener has stopped and
    /// cannot be subscribed again.
    pub async fn changed(&mut self) -> io::Result<Wakeup> {
        let mut wakeup = match self.events.next().await {
            Some((msg, _)) => classify(&msg),
            None => Wakeup::Lost,
        };
        while wakeup == Wakeup::Changed {
            match self.events.try_recv() {
                Ok((msg, _)) => wakeup = classify(&msg),
                Err(TryRecvError::Closed) => wakeup = Wakeup::Lost,
                Err(TryRecvError::Empty) => break,
            }
        }
        if wakeup == Wakeup::Lost {
            let (listener, events) = subscribe()?;
            self._listener = listener;
            self.events = events;
        }
        Ok(wakeup)
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut dump = self.requests.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(|e| NetlinkError::new("list links", e))?
        {
            let name = msg
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            out.push(Link {
                index: msg.header.index,
                name,
                up: msg.header.flags.contains(LinkFlags::Up),
                lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
            });
        }
        Ok(out)
    }

    /// Every IPv4 address: `(interface index, local address)`.
    pub async fn ipv4_addresses(&self) -> Result<Vec<(u32, Ipv4Addr)>, NetlinkError> {
        let mut dump = self.requests.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(|e| NetlinkError::new("list addresses", e))?
        {
            if let Some(ip) = crate::netlink::ipv4_local(&msg) {
                out.push((msg.header.index, ip));
            }
        }
        Ok(out)
    }
}

/// An event from the listener: an overrun, or any other message (the
/// subscription only brings links and IPv4 addresses).
fn classify(msg: &NetlinkMessage<RouteNetlinkMessage>) -> Wakeup {
    match msg.payload {
        NetlinkPayload::Overrun(_) => Wakeup::Lost,
        _ => Wakeup::Changed,
    }
}
