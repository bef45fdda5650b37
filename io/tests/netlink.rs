//! Netlink tests, each in a private network namespace (needs root).

mod common;

use std::net::Ipv4Addr;

use common::in_netns_async;
use ipnetwork::Ipv4Network;
use tunl_io::netlink::{
    KernelHop, MAIN_TABLE, Netlink, RouteEvent, RouteListener, Subscription, dump_ipv4_routes,
    dump_ipv4_routes_of,
};
use tunl_io::{Tun, TunConfig};

const PROTO: u8 = 80;

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn tun() -> Tun {
    Tun::create(&TunConfig {
        name: "tt0".into(),
        mtu: 1480,
        ipv4: Some((Ipv4Addr::new(10, 20, 0, 1), 32)),
        offload: true,
        queues: 1,
        tx_queue_len: 1000,
        persist: false,
        attach: false,
    })
    .expect("create TUN")
}

#[test]
#[ignore = "needs root: scripts/test"]
fn routes_are_added_replaced_listed_and_deleted_by_protocol() {
    in_netns_async(|| async {
        let tun = tun();
        let nl = Netlink::new().unwrap();
        let idx = nl.link_index("tt0").await.unwrap().expect("tt0 exists");
        assert_eq!(idx, tun.if_index().unwrap());
        let (a, b) = (net("10.30.0.0/26"), net("10.30.0.64/26"));
        let (via1, via2) = (Ipv4Addr::new(172, 16, 0, 2), Ipv4Addr::new(172, 16, 0, 3));

        assert_eq!(
            nl.routes_with_protocol(PROTO, MAIN_TABLE).await.unwrap(),
            vec![]
        );
        nl.add_route(a, via1, idx, PROTO, MAIN_TABLE).await.unwrap();
        nl.add_route(a, via1, idx, PROTO, MAIN_TABLE)
            .await
            .expect("idempotent");
        nl.add_route(a, via2, idx, PROTO, MAIN_TABLE)
            .await
            .expect("replace");
        assert_eq!(
            nl.routes_with_protocol(PROTO, MAIN_TABLE).await.unwrap(),
            vec![(a, Some(via2), Some(idx))]
        );
        // Host bits are ignored.
        nl.add_route(net("10.30.0.65/26"), via1, idx, PROTO, MAIN_TABLE)
            .await
            .unwrap();
        let mut routes = nl.routes_with_protocol(PROTO, MAIN_TABLE).await.unwrap();
        routes.sort();
        assert_eq!(
            routes,
            vec![(a, Some(via2), Some(idx)), (b, Some(via1), Some(idx))]
        );
        assert_eq!(
            nl.routes_with_protocol(PROTO + 1, MAIN_TABLE)
                .await
                .unwrap(),
            vec![]
        );

        nl.del_route(a, idx, PROTO, MAIN_TABLE).await.unwrap();
        nl.del_route(a, idx, PROTO, MAIN_TABLE)
            .await
            .expect("absent is Ok");
        assert_eq!(
            nl.routes_with_protocol(PROTO, MAIN_TABLE).await.unwrap(),
            vec![(b, Some(via1), Some(idx))]
        );
        // A route of another protocol is not ours to delete.
        nl.del_route(b, idx, PROTO + 1, MAIN_TABLE).await.unwrap();
        assert_eq!(
            nl.routes_with_protocol(PROTO, MAIN_TABLE)
                .await
                .unwrap()
                .len(),
            1
        );
        nl.del_route(b, idx, PROTO, MAIN_TABLE).await.unwrap();
        assert_eq!(
            nl.routes_with_protocol(PROTO, MAIN_TABLE).await.unwrap(),
            vec![]
        );
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn links_are_found_and_deleted() {
    in_netns_async(|| async {
        let tun = tun();
        let nl = Netlink::new().unwrap();
        assert_eq!(nl.link_index("nope0").await.unwrap(), None);
        nl.delete_link("nope0").await.expect("absent is Ok");
        let found = nl
            .interface_with_address(Ipv4Addr::new(10, 20, 0, 1))
            .await
            .unwrap();
        assert_eq!(found, Some((tun.if_index().unwrap(), "tt0".into(), 1480)));
        let lo = nl
            .interface_with_address(Ipv4Addr::LOCALHOST)
            .await
            .unwrap();
        assert_eq!(lo.map(|(_, name, _)| name), Some("lo".into()));
        nl.delete_link("tt0").await.unwrap();
        assert_eq!(nl.link_index("tt0").await.unwrap(), None);
    });
}

#[test]
#[ignore = "needs root: scripts/test"]
fn netlink_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Netlink::new().unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

/// The next event of `sub` that is about a route or the link `index`
/// (the kernel also reports its own routes and other links).
async fn next_event(sub: &mut Subscription, index: u32) -> RouteEvent {
    let mut out = Vec::new();
    loop {
        if out.is_empty() {
            let n = tokio::time::timeout(common::PATIENCE, sub.recv_many(&mut out, 16))
                .await
                .expect("an event within the patience");
            assert!(n > 0, "the subscription ended");
        }
        let e = out.remove(0);
        match &e {
            RouteEvent::New { route, .. } | RouteEvent::Del(route) if route.protocol == PROTO => {
                return e;
            }
            RouteEvent::Link { index: i, .. } | RouteEvent::LinkGone { index: i }
                if *i == index =>
            {
                return e;
            }
            _ => {}
        }
    }
}

#[test]
#[ignore = "needs root: scripts/test"]
fn the_listener_reports_route_and_link_changes_and_the_dump_streams_the_table() {
    in_netns_async(|| async {
        let tun = tun();
        let nl = Netlink::new().unwrap();
        let idx = tun.if_index().unwrap();
        let listener = RouteListener::start().unwrap();
        let mut sub = listener.subscribe(1 << 20).unwrap();
        let on_thread = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = on_thread.clone();
        listener
            .run_on_thread(move || {
                *seen.lock().unwrap() = std::thread::current().name().map(str::to_owned);
            })
            .unwrap();
        assert_eq!(on_thread.lock().unwrap().as_deref(), Some("tunl-routes"));
        assert!(sub.receive_buffer() >= 1 << 20, "{}", sub.receive_buffer());
        let (a, via) = (net("10.30.0.0/26"), Ipv4Addr::new(172, 16, 0, 2));
        nl.add_route(a, via, idx, PROTO, MAIN_TABLE).await.unwrap();
        let hop = KernelHop {
            oif: idx,
            gateway: Some(via),
            weight: 1,
        };
        let RouteEvent::New {
            route,
            replace,
            exclusive,
            ..
        } = next_event(&mut sub, idx).await
        else {
            panic!("expected a new route");
        };
        assert!(exclusive, "no route had its key before");
        assert_eq!(
            (route.table, route.prefix, route.metric, route.unicast),
            (MAIN_TABLE, a, 0, true)
        );
        assert_eq!(route.hops, vec![hop]);
        // A replace that matched no route is reported as a plain add.
        assert!(!replace);
        let via2 = Ipv4Addr::new(172, 16, 0, 3);
        nl.add_route(a, via2, idx, PROTO, MAIN_TABLE).await.unwrap();
        let RouteEvent::New { route, replace, .. } = next_event(&mut sub, idx).await else {
            panic!("expected the replaced route");
        };
        assert!(replace, "the second add replaced the first");
        assert_eq!(route.hops[0].gateway, Some(via2));
        nl.add_route(a, via, idx, PROTO, MAIN_TABLE).await.unwrap();
        assert!(matches!(
            next_event(&mut sub, idx).await,
            RouteEvent::New { replace: true, .. }
        ));
        let mut dumped = Vec::new();
        let n = dump_ipv4_routes(MAIN_TABLE, |r| dumped.push(r))
            .await
            .unwrap();
        assert_eq!(n, dumped.len());
        assert_eq!(dumped.iter().filter(|r| r.protocol == PROTO).count(), 1);
        assert!(dumped.iter().all(|r| r.table == MAIN_TABLE));
        // Filtered by protocol in the kernel: only ours.
        let mut ours = Vec::new();
        dump_ipv4_routes_of(MAIN_TABLE, Some(PROTO), |r| ours.push(r))
            .await
            .unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].prefix, a);
        let mut other = Vec::new();
        dump_ipv4_routes_of(MAIN_TABLE, Some(PROTO + 1), |r| other.push(r))
            .await
            .unwrap();
        assert!(other.is_empty());
        nl.del_route(a, idx, PROTO, MAIN_TABLE).await.unwrap();
        let RouteEvent::Del(gone) = next_event(&mut sub, idx).await else {
            panic!("expected a deleted route");
        };
        assert_eq!((gone.prefix, gone.hops), (a, vec![hop]));
        drop(tun);
        let e = next_event(&mut sub, idx).await;
        assert!(
            matches!(e, RouteEvent::LinkGone { .. } | RouteEvent::Link { .. }),
            "{e:?}"
        );
    });
}
