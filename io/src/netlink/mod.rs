//! Routes and links over rtnetlink, async on tokio.
//!
//! - [`Netlink`]: requests (routes, links, addresses, neighbours) on one
//!   connection, never subscribed to anything;
//! - [`dump_ipv4_routes`]: a table's routes as [`KernelRoute`]s, streamed
//!   from a socket of its own;
//! - [`RouteListener`]: route and link changes as [`RouteEvent`]s, read on a
//!   thread of its own from subscribed sockets ([`Subscription`]).
//!
//! Every netlink socket belongs to the network namespace of the thread that
//! opens it.

mod batch;
mod listen;
mod routes;

pub use listen::{RouteEvent, RouteListener, Subscription};
pub use routes::{KernelHop, KernelRoute, MAIN_TABLE, dump_ipv4_routes, dump_ipv4_routes_of};

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// A failed netlink request.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The kernel refused the request with an OS error.
    #[error("netlink {op}: {source}")]
    Kernel {
        /// The operation, e.g. "add route 10.20.1.0/26".
        op: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The request failed for another reason (connection closed, unexpected
    /// or undecodable reply).
    #[error("netlink {op}: {message}")]
    Protocol {
        /// The operation.
        op: String,
        /// What went wrong.
        message: String,
    },
}

impl NetlinkError {
    pub(crate) fn new(op: impl Into<String>, e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(msg) => NetlinkError::Kernel {
                op: op.into(),
                source: msg.to_io(),
            },
            other => NetlinkError::Protocol {
                op: op.into(),
                message: other.to_string(),
            },
        }
    }

    /// The kernel's errno, if the kernel refused the request.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            NetlinkError::Protocol { .. } => None,
        }
    }
}

/// Route adds sent in one datagram by [`Netlink::add_routes`]: 128 of
/// about 70 bytes each, and at most as many error replies, which the
/// socket's default receive buffer holds.
pub const ROUTES_PER_DATAGRAM: usize = 128;

/// The message adding `PREFIX via VIA dev IFINDEX onlink proto PROTOCOL
/// table TABLE`.
fn route_message(
    prefix: Ipv4Network,
    via: Ipv4Addr,
    ifindex: u32,
    protocol: u8,
    table: u32,
) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(prefix.network(), prefix.prefix())
        .gateway(via)
        .output_interface(ifindex)
        .protocol(RouteProtocol::from(protocol))
        .table_id(table)
        .onlink()
        .build()
}

/// The message deleting the route for `prefix` out of `ifindex` with
/// `protocol` from `table`.
fn del_message(prefix: Ipv4Network, ifindex: u32, protocol: u8, table: u32) -> RouteMessage {
    let mut msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(prefix.network(), prefix.prefix())
        .output_interface(ifindex)
        .protocol(RouteProtocol::from(protocol))
        .table_id(table)
        .build();
    // Scope "nowhere" on delete matches any scope.
    msg.header.scope = rtnetlink::packet_route::route::RouteScope::NoWhere;
    msg
}

/// Sends a request per item, [`ROUTES_PER_DATAGRAM`] per datagram on a
/// socket of its own ([`batch`]); the results in the order of `items`.
/// Without the socket, or for a datagram whose replies were lost, each
/// item goes through `one` (a request on the connection) instead.
async fn batched<T, F: std::future::Future<Output = Result<(), NetlinkError>>>(
    items: &[T],
    message: impl Fn(&T) -> RouteNetlinkMessage,
    flags: u16,
    op: impl Fn(&T) -> String,
    one: impl Fn(&T) -> F,
) -> Vec<Result<(), NetlinkError>> {
    let mut results: Vec<Result<(), NetlinkError>> = items.iter().map(|_| Ok(())).collect();
    let mut socket = match batch::Socket::open() {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::debug!(%error, "no socket for batched route requests; one at a time");
            None
        }
    };
    for (chunk, done) in items
        .chunks(ROUTES_PER_DATAGRAM)
        .zip(results.chunks_mut(ROUTES_PER_DATAGRAM))
    {
        if let Some(s) = socket.as_mut() {
            let sent = s
                .send_all(chunk.iter().map(&message), flags, done, |i| op(&chunk[i]))
                .await;
            match sent {
                Ok(()) => continue,
                Err(error) => {
                    tracing::debug!(%error, requests = chunk.len(), "batched route requests lost their replies; one at a time")
                }
            }
        }
        for (r, item) in done.iter_mut().zip(chunk) {
            *r = one(item).await;
        }
    }
    results
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.to_io().raw_os_error(),
        _ => None,
    }
}

/// An interface as [`Netlink::link_state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// Its index.
    pub index: u32,
    /// Whether it is a TUN/TAP device.
    pub tun: bool,
    /// Whether it has carrier: for a TUN device, whether a process holds
    /// one of its queues open.
    pub carrier: bool,
}

/// A handle over an rtnetlink connection. Cheap to clone; all clones share
/// the connection task.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens an rtnetlink socket and spawns its connection task on the
    /// current tokio runtime, which needs its I/O driver enabled
    /// (`enable_io`/`enable_all`). Fails when called outside a tokio runtime.
    pub fn new() -> io::Result<Netlink> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("Netlink::new must be called from within a tokio runtime")
        })?;
        let (conn, handle, _) = rtnetlink::new_connection()?;
        rt.spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of the interface `name`, or `None` when there is none.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetlinkError::new(format!("get link {name}"), e)),
        }
    }

    /// The name of interface `index` and whether it is a TUN/TAP device, or
    /// `None` when there is no such interface.
    pub async fn link_name_and_tun(
        &self,
        index: u32,
    ) -> Result<Option<(String, bool)>, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(NetlinkError::new(format!("get link {index}"), e)),
        };
        let mut name = String::new();
        let mut tun = false;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name.clone_from(n),
                LinkAttribute::LinkInfo(infos) => {
                    tun |= infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun)));
                }
                _ => {}
            }
        }
        Ok(Some((name, tun)))
    }

    /// Caps the segments of one GSO packet the kernel hands to interface
    /// `index` (`ip link set DEV gso_max_segs SEGS`): bigger ones it
    /// segments itself before the device sees them.
    pub async fn set_gso_max_segs(&self, index: u32, segs: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::GsoMaxSegs(segs))
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("set gso_max_segs {segs} on link {index}"), e))
    }

    /// What a device check needs of interface `name`, or `None` when there
    /// is none.
    pub async fn link_state(&self, name: &str) -> Result<Option<LinkState>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(NetlinkError::new(format!("get link {name}"), e)),
        };
        let mut state = LinkState {
            index: msg.header.index,
            tun: false,
            carrier: false,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::LinkInfo(infos) => {
                    state.tun |= infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun)));
                }
                LinkAttribute::Carrier(c) => state.carrier = *c != 0,
                _ => {}
            }
        }
        Ok(Some(state))
    }

    /// Deletes the interface `name`; Ok if there is none.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(NetlinkError::new(format!("delete link {name}"), e)),
        }
    }

    /// `PREFIX via VIA dev IFINDEX onlink proto PROTOCOL table TABLE`
    /// (metric 0). Replaces an existing route with the same prefix and
    /// metric (`NLM_F_REPLACE`), whoever installed it, so it is idempotent.
    /// Host bits of `prefix` are ignored.
    pub async fn add_route(
        &self,
        prefix: Ipv4Network,
        via: Ipv4Addr,
        ifindex: u32,
        protocol: u8,
        table: u32,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(route_message(prefix, via, ifindex, protocol, table))
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("add route {prefix} via {via}"), e))
    }

    /// [`add_route`](Self::add_route) for each of `routes`, many per
    /// datagram ([`ROUTES_PER_DATAGRAM`]) on a socket of its own. Only the
    /// last request of a datagram asks for an acknowledgement: the kernel
    /// handles a datagram's requests in order while it is sent and answers
    /// a failed one with its error either way, so when that last
    /// acknowledgement arrives every error of the datagram is there before
    /// it. One request and one acknowledgement per route cost two system
    /// calls and a wakeup each: most of the start on 100k routes. The
    /// results come in the order of `routes`; should the socket lose
    /// replies (`ENOBUFS`), that datagram's routes are added again one at a
    /// time (the adds replace, so twice is harmless).
    pub async fn add_routes(
        &self,
        routes: &[(Ipv4Network, Ipv4Addr)],
        ifindex: u32,
        protocol: u8,
        table: u32,
    ) -> Vec<Result<(), NetlinkError>> {
        let message = |&(prefix, via): &(Ipv4Network, Ipv4Addr)| {
            RouteNetlinkMessage::NewRoute(route_message(prefix, via, ifindex, protocol, table))
        };
        let op = |&(prefix, via): &(Ipv4Network, Ipv4Addr)| format!("add route {prefix} via {via}");
        let one = |&(prefix, via): &(Ipv4Network, Ipv4Addr)| {
            self.add_route(prefix, via, ifindex, protocol, table)
        };
        batched(routes, message, NLM_F_CREATE | NLM_F_REPLACE, op, one).await
    }

    /// [`del_route`](Self::del_route) for each of `prefixes`, batched as
    /// [`add_routes`](Self::add_routes) is; an absent route is not an
    /// error.
    pub async fn del_routes(
        &self,
        prefixes: &[Ipv4Network],
        ifindex: u32,
        protocol: u8,
        table: u32,
    ) -> Vec<Result<(), NetlinkError>> {
        let message = |&prefix: &Ipv4Network| {
            RouteNetlinkMessage::DelRoute(del_message(prefix, ifindex, protocol, table))
        };
        let op = |prefix: &Ipv4Network| format!("delete route {prefix}");
        let one = |&prefix: &Ipv4Network| self.del_route(prefix, ifindex, protocol, table);
        let mut results = batched(prefixes, message, 0, op, one).await;
        for r in &mut results {
            if r.as_ref().err().and_then(NetlinkError::raw_os_error) == Some(libc::ESRCH) {
                *r = Ok(());
            }
        }
        results
    }

    /// Deletes the route for `prefix` on `ifindex` carrying `protocol` from
    /// `table`; Ok if there is none.
    pub async fn del_route(
        &self,
        prefix: Ipv4Network,
        ifindex: u32,
        protocol: u8,
        table: u32,
    ) -> Result<(), NetlinkError> {
        let msg = del_message(prefix, ifindex, protocol, table);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(NetlinkError::new(format!("delete route {prefix}"), e)),
        }
    }

    /// IPv4 routes in `table` carrying this protocol tag:
    /// `(prefix, gateway, oif)`.
    pub async fn routes_with_protocol(
        &self,
        protocol: u8,
        table: u32,
    ) -> Result<Vec<(Ipv4Network, Option<Ipv4Addr>, Option<u32>)>, NetlinkError> {
        let op = || format!("list routes of protocol {protocol}");
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(query).execute();
        let mut out = Vec::new();
        while let Some(msg) = routes
            .try_next()
            .await
            .map_err(|e| NetlinkError::new(op(), e))?
        {
            if msg.header.address_family != AddressFamily::Inet
                || u8::from(msg.header.protocol) != protocol
                || route_table(&msg) != table
            {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let prefix =
                Ipv4Network::new(dst, msg.header.destination_prefix_length).map_err(|e| {
                    NetlinkError::Protocol {
                        op: op(),
                        message: e.to_string(),
                    }
                })?;
            out.push((prefix, gateway, oif));
        }
        Ok(out)
    }

    /// The interface holding this IPv4 address (its local address):
    /// `(ifindex, name, mtu)`.
    pub async fn interface_with_address(
        &self,
        addr: Ipv4Addr,
    ) -> Result<Option<(u32, String, u32)>, NetlinkError> {
        let op = || format!("find interface with address {addr}");
        let mut addrs = self.handle.address().get().execute();
        let mut index = None;
        while let Some(msg) = addrs
            .try_next()
            .await
            .map_err(|e| NetlinkError::new(op(), e))?
        {
            if ipv4_local(&msg) == Some(addr) && index.is_none() {
                index = Some(msg.header.index);
            }
        }
        let Some(index) = index else {
            return Ok(None);
        };
        let mut links = self.handle.link().get().match_index(index).execute();
        let Some(link) = links
            .try_next()
            .await
            .map_err(|e| NetlinkError::new(op(), e))?
        else {
            return Ok(None);
        };
        let mut name = String::new();
        let mut mtu = 0;
        for attr in &link.attributes {
            match attr {
                LinkAttribute::IfName(n) => name.clone_from(n),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        Ok(Some((index, name, mtu)))
    }

    /// The resolved IPv4 neighbours on interface `ifindex`: `(address,
    /// MAC)` for every Ethernet entry whose link-layer address is valid
    /// (reachable, stale, delay, probe, permanent), the entries `ip neigh`
    /// shows with `lladdr`.
    pub async fn ipv4_neighbours(
        &self,
        ifindex: u32,
    ) -> Result<Vec<(Ipv4Addr, [u8; 6])>, NetlinkError> {
        let op = || format!("list the neighbours of interface {ifindex}");
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(|e| NetlinkError::new(op(), e))?
        {
            if msg.header.ifindex == ifindex
                && let Some(entry) = resolved_neighbour(&msg)
            {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

/// `(address, MAC)` of a neighbour entry with a valid Ethernet address.
fn resolved_neighbour(msg: &NeighbourMessage) -> Option<(Ipv4Addr, [u8; 6])> {
    let valid = matches!(
        msg.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
    );
    if !valid {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
            NeighbourAttribute::LinkLayerAddress(l) => {
                mac = <[u8; 6]>::try_from(l.as_slice()).ok();
            }
            _ => {}
        }
    }
    let mac = mac.filter(|m| *m != [0; 6])?;
    Some((ip?, mac))
}

/// The table of a route: the `RTA_TABLE` attribute, else the header field.
fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

/// The local IPv4 address of an address message (`IFA_LOCAL`, else
/// `IFA_ADDRESS`, as `ip addr` shows it); `None` for other families.
pub(crate) fn ipv4_local(msg: &AddressMessage) -> Option<Ipv4Addr> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: NeighbourState, ip: Ipv4Addr, lladdr: &[u8]) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.state = state;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(lladdr.to_vec()));
        m
    }

    #[test]
    fn only_entries_with_a_valid_ethernet_address_resolve() {
        let ip = Ipv4Addr::new(172, 16, 36, 5);
        let mac = [0x8a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f];
        for state in [
            NeighbourState::Reachable,
            NeighbourState::Stale,
            NeighbourState::Delay,
            NeighbourState::Probe,
            NeighbourState::Permanent,
        ] {
            assert_eq!(
                resolved_neighbour(&entry(state, ip, &mac)),
                Some((ip, mac)),
                "{state:?}"
            );
        }
        for state in [
            NeighbourState::Incomplete,
            NeighbourState::Failed,
            NeighbourState::Noarp,
            NeighbourState::None,
        ] {
            assert_eq!(
                resolved_neighbour(&entry(state, ip, &mac)),
                None,
                "{state:?}"
            );
        }
        let reachable = NeighbourState::Reachable;
        assert_eq!(resolved_neighbour(&entry(reachable, ip, &[0; 6])), None);
        assert_eq!(resolved_neighbour(&entry(reachable, ip, &mac[..4])), None);
    }
}
