//! Netlink tests, each in a private network namespace (needs root).

mod common;

use std::net::Ipv4Addr;

use common::in_netns_async;
use ipnetwork::Ipv4Network;
use tunl_io::netlink::Netlink;
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

        assert_eq!(nl.routes_with_protocol(PROTO).await.unwrap(), vec![]);
        nl.add_route(a, via1, idx, PROTO).await.unwrap();
        nl.add_route(a, via1, idx, PROTO).await.expect("idempotent");
        nl.add_route(a, via2, idx, PROTO).await.expect("replace");
        assert_eq!(
            nl.routes_with_protocol(PROTO).await.unwrap(),
            vec![(a, Some(via2), Some(idx))]
        );
        // Host bits are ignored.
        nl.add_route(net("10.30.0.65/26"), via1, idx, PROTO)
            .await
            .unwrap();
        let mut routes = nl.routes_with_protocol(PROTO).await.unwrap();
        routes.sort();
        assert_eq!(
            routes,
            vec![(a, Some(via2), Some(idx)), (b, Some(via1), Some(idx))]
        );
        assert_eq!(nl.routes_with_protocol(PROTO + 1).await.unwrap(), vec![]);

        nl.del_route(a, idx, PROTO).await.unwrap();
        nl.del_route(a, idx, PROTO).await.expect("absent is Ok");
        assert_eq!(
            nl.routes_with_protocol(PROTO).await.unwrap(),
            vec![(b, Some(via1), Some(idx))]
        );
        // A route of another protocol is not ours to delete.
        nl.del_route(b, idx, PROTO + 1).await.unwrap();
        assert_eq!(nl.routes_with_protocol(PROTO).await.unwrap().len(), 1);
        nl.del_route(b, idx, PROTO).await.unwrap();
        assert_eq!(nl.routes_with_protocol(PROTO).await.unwrap(), vec![]);
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
