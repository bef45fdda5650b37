//! The kernel's IPv4 routes as tunl reads them: [`KernelRoute`], decoded from
//! `RTM_NEWROUTE`/`RTM_DELROUTE` messages, and a streamed dump of them
//! ([`dump_ipv4_routes`]).
//!
//! The dump runs on a socket of its own, read one datagram at a time and
//! decoded message by message: the kernel produces the next part of a dump
//! only when the previous one has been read, so however many routes the
//! table holds, the memory in use is one datagram and the caller's own
//! record of the routes (netlink-proto, by contrast, reads the whole dump
//! into its channel before the caller sees the first route: about 39 MiB
//! for 100k routes).

use std::io;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rtnetlink::packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags,
    RouteProtocol, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket, protocols};

use super::NetlinkError;

/// The size of the buffer one netlink datagram is read into. The kernel
/// caps a dump's datagrams at 32 KiB; notifications are far smaller.
pub(super) const DATAGRAM: usize = 64 * 1024;

/// One next hop of a kernel route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelHop {
    /// The output device (`dev`).
    pub oif: u32,
    /// The gateway (`via`), or `None` for a route straight out of the
    /// device.
    pub gateway: Option<Ipv4Addr>,
    /// The weight of a multipath next hop (`weight`, 1 to 256); 1 for a
    /// single path.
    pub weight: u16,
}

/// An IPv4 route of the kernel's FIB, as much of it as tunl needs.
///
/// The kernel identifies a route by `(table, prefix, tos, metric)`; several
/// routes can share that key only through `ip route append`/`prepend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    /// The routing table (`RTA_TABLE`).
    pub table: u32,
    /// The destination.
    pub prefix: Ipv4Network,
    /// The TOS the route matches (0: any).
    pub tos: u8,
    /// The metric (`RTA_PRIORITY`; absent means 0).
    pub metric: u32,
    /// The routing protocol that installed it (`proto`: 12 is bird, 116
    /// tunl).
    pub protocol: u8,
    /// Whether it is a unicast route (not blackhole, unreachable, local...).
    pub unicast: bool,
    /// Its live next hops, in the kernel's order: dead ones (`RTNH_F_DEAD`)
    /// are left out. Several for a multipath route.
    pub hops: Vec<KernelHop>,
}

impl KernelRoute {
    /// Decodes an IPv4 route message; `None` for another family or a
    /// destination that is not a valid prefix.
    pub fn from_message(msg: &RouteMessage) -> Option<KernelRoute> {
        if msg.header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gateway = None;
        let mut oif = None;
        let mut metric = 0;
        let mut table = u32::from(msg.header.table);
        let mut multipath = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::MultiPath(hops) => multipath = Some(hops),
                _ => {}
            }
        }
        let prefix = Ipv4Network::new(dst, msg.header.destination_prefix_length).ok()?;
        let mut hops = Vec::new();
        match multipath {
            Some(list) => {
                for nh in list {
                    if nh.flags.contains(RouteNextHopFlags::Dead) {
                        continue;
                    }
                    let gateway = nh.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                        _ => None,
                    });
                    hops.push(KernelHop {
                        oif: nh.interface_index,
                        gateway,
                        weight: u16::from(nh.hops) + 1,
                    });
                }
            }
            None => {
                let dead = msg.header.flags.contains(RouteFlags::Dead);
                if let (Some(oif), false) = (oif, dead) {
                    hops.push(KernelHop {
                        oif,
                        gateway,
                        weight: 1,
                    });
                }
            }
        }
        Some(KernelRoute {
            table,
            prefix,
            tos: msg.header.tos,
            metric,
            protocol: u8::from(msg.header.protocol),
            unicast: msg.header.kind == RouteType::Unicast,
            hops,
        })
    }
}

/// Reads every IPv4 route of `table` from the kernel, on a socket of its
/// own, and hands each to `each` as soon as it is decoded (see the module
/// doc for why not through netlink-proto). Returns how many it handed over.
///
/// # Errors
/// [`NetlinkError`] when the socket cannot be opened, the kernel refuses
/// the dump, or a message cannot be decoded.
pub async fn dump_ipv4_routes(
    table: u32,
    each: impl FnMut(KernelRoute),
) -> Result<usize, NetlinkError> {
    dump_ipv4_routes_of(table, None, each).await
}

/// [`dump_ipv4_routes`] of the routes of one routing protocol only
/// (`protocol`), or of all (`None`). The kernel filters (strict checking,
/// `NETLINK_GET_STRICT_CHK`): it walks the table but sends only what
/// matches, so looking for tunl's few routes among 100k others is cheap.
///
/// # Errors
/// As [`dump_ipv4_routes`].
pub async fn dump_ipv4_routes_of(
    table: u32,
    protocol: Option<u8>,
    mut each: impl FnMut(KernelRoute),
) -> Result<usize, NetlinkError> {
    let op = || format!("dump the IPv4 routes of table {table}");
    let kernel = |source: io::Error| NetlinkError::Kernel { op: op(), source };
    let mut socket = TokioSocket::new(protocols::NETLINK_ROUTE).map_err(kernel)?;
    socket
        .socket_mut()
        .bind(&SocketAddr::new(0, 0))
        .map_err(kernel)?;
    socket
        .socket_ref()
        .set_netlink_get_strict_chk(true)
        .map_err(kernel)?;
    // A strict dump filters on what the header and RTA_TABLE name; every
    // other header field must be 0 (the defaults).
    let mut query = RouteMessage::default();
    query.header.address_family = AddressFamily::Inet;
    query.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    query.attributes.push(RouteAttribute::Table(table));
    if let Some(p) = protocol {
        query.header.protocol = RouteProtocol::from(p);
    }
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(query)),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket
        .send_to(&bytes, &SocketAddr::new(0, 0))
        .await
        .map_err(kernel)?;
    let mut buf = Vec::with_capacity(DATAGRAM);
    let mut count = 0;
    loop {
        buf.clear();
        socket.recv(&mut buf).await.map_err(kernel)?;
        let mut done = false;
        for_each_message(&buf, |msg| {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(m)) => {
                    if let Some(route) = KernelRoute::from_message(&m)
                        && route.table == table
                        && protocol.is_none_or(|p| route.protocol == p)
                    {
                        count += 1;
                        each(route);
                    }
                }
                NetlinkPayload::Done(_) => done = true,
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(NetlinkError::Kernel {
                            op: op(),
                            source: io::Error::from_raw_os_error(-code.get()),
                        });
                    }
                }
                _ => {}
            }
            Ok(())
        })
        .map_err(|e| match e {
            Decode::Bad(message) => NetlinkError::Protocol { op: op(), message },
            Decode::Stop(e) => e,
        })?;
        if done {
            return Ok(count);
        }
    }
}

/// Why [`for_each_message`] stopped.
pub(super) enum Decode<E> {
    /// A message could not be decoded.
    Bad(String),
    /// The callback stopped with this error.
    Stop(E),
}

/// Decodes every netlink message of one datagram, in order, and hands each
/// to `f`.
pub(super) fn for_each_message<E>(
    mut datagram: &[u8],
    mut f: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> Result<(), E>,
) -> Result<(), Decode<E>> {
    const HEADER: usize = 16;
    while datagram.len() >= HEADER {
        let len = u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]) as usize;
        if len < HEADER || len > datagram.len() {
            return Err(Decode::Bad(format!(
                "a message of {len} bytes in a datagram of {}",
                datagram.len()
            )));
        }
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[..len])
            .map_err(|e| Decode::Bad(e.to_string()))?;
        f(msg).map_err(Decode::Stop)?;
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        datagram = datagram.get(next..).unwrap_or_default();
    }
    Ok(())
}

/// The main table's number (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::RouteNextHop;

    use super::*;

    fn message(prefix: &str) -> RouteMessage {
        let prefix: Ipv4Network = prefix.parse().unwrap();
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = prefix.prefix();
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Bird;
        m.header.kind = RouteType::Unicast;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                prefix.network(),
            )));
        m.attributes.push(RouteAttribute::Table(254));
        m
    }

    const A: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 5);
    const B: Ipv4Addr = Ipv4Addr::new(172, 16, 36, 6);

    #[test]
    fn a_single_path_route_decodes() {
        let mut m = message("10.20.105.192/26");
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(A)));
        m.attributes.push(RouteAttribute::Oif(2));
        m.attributes.push(RouteAttribute::Priority(32));
        m.header.flags = RouteFlags::Onlink | RouteFlags::Linkdown;
        let r = KernelRoute::from_message(&m).unwrap();
        assert_eq!(
            r,
            KernelRoute {
                table: 254,
                prefix: "10.20.105.192/26".parse().unwrap(),
                tos: 0,
                metric: 32,
                protocol: 12,
                unicast: true,
                hops: vec![KernelHop {
                    oif: 2,
                    gateway: Some(A),
                    weight: 1
                }],
            }
        );
        // No gateway, no metric: a route straight out of the device.
        let mut m = message("10.20.0.0/16");
        m.attributes.push(RouteAttribute::Oif(2));
        let r = KernelRoute::from_message(&m).unwrap();
        assert_eq!((r.metric, r.hops[0].gateway), (0, None));
        // Dead: no live next hop. A blackhole: no next hop, not unicast.
        let mut m = message("10.20.0.0/16");
        m.attributes.push(RouteAttribute::Oif(2));
        m.header.flags = RouteFlags::Dead;
        assert!(KernelRoute::from_message(&m).unwrap().hops.is_empty());
        let mut m = message("10.20.0.0/16");
        m.header.kind = RouteType::BlackHole;
        let r = KernelRoute::from_message(&m).unwrap();
        assert!(!r.unicast && r.hops.is_empty());
        // IPv6 is not ours.
        let mut m = message("10.20.0.0/16");
        m.header.address_family = AddressFamily::Inet6;
        assert!(KernelRoute::from_message(&m).is_none());
    }

    #[test]
    fn a_multipath_route_keeps_its_live_hops_and_weights() {
        let mut m = message("10.20.1.0/26");
        let hop = |oif, gw, hops, flags| {
            let mut nh = RouteNextHop::default();
            nh.flags = flags;
            nh.hops = hops;
            nh.interface_index = oif;
            nh.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gw))];
            nh
        };
        m.attributes.push(RouteAttribute::MultiPath(vec![
            hop(2, A, 0, RouteNextHopFlags::Onlink),
            hop(
                2,
                B,
                1,
                RouteNextHopFlags::Onlink | RouteNextHopFlags::Linkdown,
            ),
            hop(4, B, 0, RouteNextHopFlags::Dead),
        ]));
        let r = KernelRoute::from_message(&m).unwrap();
        assert_eq!(
            r.hops,
            vec![
                KernelHop {
                    oif: 2,
                    gateway: Some(A),
                    weight: 1
                },
                KernelHop {
                    oif: 2,
                    gateway: Some(B),
                    weight: 2
                },
            ]
        );
    }

    #[test]
    fn messages_of_a_datagram_decode_in_order_and_garbage_is_refused() {
        let mut datagram = Vec::new();
        for p in ["10.20.1.0/26", "10.20.2.0/26"] {
            let mut msg = NetlinkMessage::new(
                NetlinkHeader::default(),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(message(p))),
            );
            msg.finalize();
            let mut bytes = vec![0; msg.buffer_len()];
            msg.serialize(&mut bytes);
            datagram.extend_from_slice(&bytes);
        }
        let mut seen = Vec::new();
        let r: Result<(), Decode<()>> = for_each_message(&datagram, |m| {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = m.payload {
                seen.push(KernelRoute::from_message(&r).unwrap().prefix.to_string());
            }
            Ok(())
        });
        assert!(r.is_ok());
        assert_eq!(seen, vec!["10.20.1.0/26", "10.20.2.0/26"]);
        let mut bad = datagram.clone();
        bad[0] = 200;
        assert!(matches!(
            for_each_message(&bad, |_| Ok::<(), ()>(())),
            Err(Decode::Bad(_))
        ));
    }
}
