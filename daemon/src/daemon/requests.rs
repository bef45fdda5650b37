//! Control requests: what the main loop does with each request from the
//! control socket (`docs/control-protocol.md`), one at a time.
//!
//! Route changes are validated like the config file (the running config
//! with its routes replaced), then applied by the [`RouteManager`]: they
//! change tunl's own routes only. `route_list` and `status` show every
//! route on the device with its origin (the mirror of the kernel's table);
//! `stats` reads the dataplane's shared state.

use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnetwork::Ipv4Network;
use tunl_encap::DecapPolicy;

use super::BuildInfo;
use super::mirror::{MirroredRoute, RouteMirror, origin_name};
use super::routes::{KernelRoutes, RouteManager, RouteOrigin, Routes};
use crate::config::{Config, RouteEntry};
use crate::control::{self, Request, Response};
use crate::dataplane::{CounterSnapshot, NextHop};

/// What `status` reports that does not change at runtime.
#[derive(Debug, Clone)]
pub(super) struct DeviceInfo {
    /// The TUN device's name.
    pub name: String,
    /// The tunnel MTU.
    pub mtu: u16,
    /// `tunnel.local`.
    pub local: Ipv4Addr,
    /// `tunnel.address`.
    pub address: Option<Ipv4Network>,
    /// Dataplane worker threads.
    pub workers: usize,
    /// The daemon's build.
    pub build: BuildInfo,
    /// When the daemon started.
    pub started: SystemTime,
    /// The underlay running and why.
    pub underlay: control::UnderlayStatus,
}

/// Carries out one control request.
pub(super) async fn handle<K: KernelRoutes>(
    request: Request,
    config: &Config,
    routes: &mut RouteManager<K>,
    device: &DeviceInfo,
) -> Response {
    let wanted = match request {
        Request::RouteList {} => {
            let mirror = routes.mirror();
            return Response::ok(control::RouteList {
                routes: mirror.routes().iter().map(|r| listed(mirror, r)).collect(),
            });
        }
        Request::Status {} => return Response::ok(status(routes, device)),
        Request::Stats {} => return Response::ok(stats(&routes.shared().counters())),
        Request::RouteAdd { prefix, via } => {
            // One route against the set: no copy of it, no whole check.
            if let Err(problem) = config.check_added_route(routes.routes(), prefix, via) {
                return Response::error(format!("cannot add {prefix} via {via}: {problem}"));
            }
            return reply(
                routes
                    .change_one(prefix, Some(via), RouteOrigin::Control)
                    .await,
            );
        }
        Request::RouteDel { prefix } => {
            if let Err(e) = crate::config::check_prefix(&prefix) {
                return Response::error(format!("cannot delete {prefix}: {e}"));
            }
            if !routes.routes().contains_key(&prefix)
                && let Some(r) = routes.mirror().get(prefix)
            {
                return Response::error(format!(
                    "cannot delete {prefix}: it is not tunl's route (origin {}); \
                     tunl never removes routes others installed",
                    origin_name(r.protocol)
                ));
            }
            return reply(routes.change_one(prefix, None, RouteOrigin::Control).await);
        }
        Request::RouteReplace {
            routes: list,
            allow_empty,
        } => {
            if list.is_empty() && !allow_empty {
                return Response::error(format!(
                    "route set refused, nothing changed: an empty set would remove every route \
                     ({} now, the config's included); send \"allow_empty\": true to mean it",
                    routes.routes().len()
                ));
            }
            let entries: Vec<RouteEntry> = list
                .iter()
                .map(|r| RouteEntry {
                    prefix: r.prefix,
                    via: r.via,
                })
                .collect();
            if let Err(e) = config.with_routes(entries) {
                let e = match e.problems() {
                    [] => e.to_string(),
                    problems => problems
                        .iter()
                        .map(|p| format!("{}: {}", p.key.replace("route[", "routes["), p.problem))
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                return Response::error(format!("route set refused, nothing changed: {e}"));
            }
            list.iter().map(|r| (r.prefix, r.via)).collect::<Routes>()
        }
    };
    reply(routes.apply(&wanted, RouteOrigin::Control).await)
}

/// The reply to a route change.
fn reply(result: Result<control::RouteChange, super::error::RouteError>) -> Response {
    match result {
        Ok(change) => Response::ok(change),
        Err(e) => Response::error(e.to_string()),
    }
}

/// Checks a whole route set against the config's rules (own blocks, local
/// address, host bits); returns the problem. What
/// [`Config::check_added_route`] must agree with.
#[cfg(test)]
fn validate(config: &Config, routes: &Routes) -> Result<(), String> {
    let entries = routes
        .iter()
        .map(|(p, v)| RouteEntry {
            prefix: *p,
            via: *v,
        })
        .collect();
    config
        .with_routes(entries)
        .map(|_| ())
        .map_err(|e| match e.problems() {
            [] => e.to_string(),
            problems => problems
                .iter()
                .map(|p| p.problem.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        })
}

/// A mirrored route as `route_list` shows it.
fn listed(mirror: &RouteMirror, r: &MirroredRoute) -> control::ListedRoute {
    let (via, nexthops) = match r.hop {
        NextHop::Node(n) => (Some(n), Vec::new()),
        NextHop::Direct => (None, Vec::new()),
        NextHop::Multipath(i) => (
            None,
            mirror
                .group(i)
                .iter()
                .map(|&(via, weight)| control::ListedNextHop { via, weight })
                .collect(),
        ),
    };
    control::ListedRoute {
        prefix: r.prefix,
        via,
        nexthops,
        origin: origin_name(r.protocol),
        metric: r.metric,
    }
}

fn status<K: KernelRoutes>(routes: &RouteManager<K>, device: &DeviceInfo) -> control::Status {
    let shared = routes.shared();
    let mirror = routes.mirror();
    // One sort of one key per (node, block): the node, then the block's
    // network and length, with its protocol in the low byte (a prefix is
    // in the mirror once, so the protocol never decides the order). At
    // 100k routes a map of vectors and a sort per node cost twice this.
    let mut keys: Vec<u128> = Vec::with_capacity(mirror.len());
    let key = |node: Ipv4Addr, r: &MirroredRoute| {
        u128::from(u32::from(node)) << 64
            | u128::from(u32::from(r.prefix.network())) << 16
            | u128::from(r.prefix.prefix()) << 8
            | u128::from(r.protocol)
    };
    for r in mirror.winners() {
        match r.hop {
            NextHop::Node(node) => keys.push(key(node, &r)),
            NextHop::Direct => {}
            NextHop::Multipath(i) => keys.extend(
                mirror
                    .group(i)
                    .iter()
                    .filter_map(|(via, _)| *via)
                    .map(|node| key(node, &r)),
            ),
        }
    }
    keys.sort_unstable();
    let traffic = shared.nodes.traffic();
    let policy = shared.policy.load();
    let tunnel_mtu = policy.settings.mtu;
    let now = std::time::Instant::now();
    let nodes = keys
        .chunk_by(|a, b| a >> 64 == b >> 64)
        .map(|run| {
            let node = Ipv4Addr::from((run[0] >> 64) as u32);
            let t = traffic.get(&node).copied().unwrap_or_default();
            control::NodeStatus {
                node,
                blocks: run
                    .iter()
                    .filter_map(|k| {
                        Ipv4Network::new(Ipv4Addr::from((k >> 16) as u32), (k >> 8) as u8).ok()
                    })
                    .collect(),
                origins: run.iter().map(|k| origin_name(*k as u8)).collect(),
                path_mtu: shared.pmtu.toward(node, tunnel_mtu, now),
                tx_packets: t.tx_packets,
                tx_bytes: t.tx_bytes,
                rx_packets: t.rx_packets,
                rx_bytes: t.rx_bytes,
                last_seen_unix_ms: t.last_seen.map(control::unix_ms),
            }
        })
        .collect();
    let refused = shared.nodes.refused();
    let stats = routes.stats();
    let (route_updates, last_route_update_ns) = stats.updates();
    control::Status {
        device: device.name.clone(),
        mtu: device.mtu,
        local: device.local,
        address: device.address,
        blocks: policy.blocks.clone(),
        workers: device.workers,
        underlay: device.underlay.clone(),
        routes: mirror.len(),
        routes_by_origin: stats
            .by_origin()
            .into_iter()
            .map(|(p, n)| (origin_name(p).into_owned(), n))
            .collect(),
        route_resyncs: stats.resyncs(),
        route_updates,
        last_route_update_ns,
        now_unix_ms: control::unix_ms(SystemTime::now()),
        started_unix_ms: control::unix_ms(device.started),
        version: device.build.version.to_owned(),
        commit: device.build.commit.to_owned(),
        nodes,
        refused: refused
            .sources
            .iter()
            .map(|r| control::RefusedStatus {
                source: r.source,
                packets: r.packets,
                last_seen_unix_ms: control::unix_ms(r.last_seen),
                accepted_now: policy.source_allowed(r.source),
            })
            .collect(),
        refused_other_packets: refused.other_packets,
        underlay_link: Some({
            let u = shared.links.report();
            control::UnderlayLink {
                local_present: u.local_present,
                device: u.device,
                state: u.state.as_str().to_owned(),
            }
        }),
    }
}

/// The `stats` reply for a counter snapshot.
pub fn stats(c: &CounterSnapshot) -> control::Stats {
    control::Stats {
        counters: c
            .fields()
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect(),
        drops: c
            .drops_by_reason()
            .map(|(r, n)| (r.as_str().to_owned(), n))
            .collect(),
        drops_total: c.total_drops(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::routes::fake::{FakeKernel, KernelCall};
    use super::super::routes::tests::{manager, net, node, routes};
    use super::*;
    use crate::control::{RouteChange, RouteList, Status};

    /// The seed node: its own block 10.20.42.0/26, local 172.16.35.4.
    fn config() -> Config {
        let text = "[tunnel]\nlocal = \"172.16.35.4\"\nmtu = 1480\nblocks = [\"10.20.42.0/26\"]\n";
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    fn device() -> DeviceInfo {
        DeviceInfo {
            name: "tunl0".to_owned(),
            mtu: 1480,
            local: Ipv4Addr::new(172, 16, 35, 4),
            address: None,
            workers: 1,
            build: BuildInfo {
                version: "0.1.0",
                commit: "abc1234",
            },
            started: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000),
            underlay: control::UnderlayStatus {
                requested: "auto".to_owned(),
                running: "packet".to_owned(),
                fallback: Some("xdp: not permitted".to_owned()),
                ..control::UnderlayStatus::default()
            },
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// Handles `request` and returns the reply's result or error.
    fn call<T: serde::de::DeserializeOwned>(
        m: &mut RouteManager<FakeKernel>,
        request: Request,
    ) -> Result<T, String> {
        let r = run(handle(request, &config(), m, &device()));
        match (r.ok, &r.result, r.error.clone()) {
            (true, Some(_), None) => Ok(r.decode().unwrap()),
            (false, None, Some(e)) => Err(e),
            other => panic!("not a protocol reply: {other:?}"),
        }
    }

    fn add(prefix: &str, via: Ipv4Addr) -> Request {
        Request::RouteAdd {
            prefix: net(prefix),
            via,
        }
    }

    #[test]
    fn route_add_is_validated_like_the_config() {
        let (mut m, _) = manager();
        let cases = [
            (
                add("10.20.42.0/27", node(5)),
                "cannot add 10.20.42.0/27 via 172.16.36.5: 10.20.42.0/27 overlaps this node's own block 10.20.42.0/26",
            ),
            (
                add("10.20.1.0/26", Ipv4Addr::new(172, 16, 35, 4)),
                "cannot add 10.20.1.0/26 via 172.16.35.4: 172.16.35.4 is this node's own address (tunnel.local)",
            ),
            (
                add("10.20.1.1/26", node(5)),
                "cannot add 10.20.1.1/26 via 172.16.36.5: 10.20.1.1/26 has host bits set (did you mean 10.20.1.0/26?)",
            ),
            (
                add("10.20.1.0/26", Ipv4Addr::new(10, 20, 42, 7)),
                "cannot add 10.20.1.0/26 via 10.20.42.7: 10.20.42.7 is inside the pod block 10.20.42.0/26; \
                 `via` must be a node's underlay address",
            ),
            (
                add("10.20.1.0/26", Ipv4Addr::BROADCAST),
                "cannot add 10.20.1.0/26 via 255.255.255.255: 255.255.255.255 is not a unicast host address",
            ),
            (
                add("0.0.0.0/0", node(5)),
                "cannot add 0.0.0.0/0 via 172.16.36.5: 0.0.0.0/0 would be a default route into the \
                 tunnel: every destination without a more specific route would go to 172.16.36.5, \
                 and installing it would replace the host's own default route; route the pod \
                 blocks (e.g. 10.20.105.192/26) or the IP pool (e.g. 10.20.0.0/16) instead",
            ),
            (
                add("172.16.35.0/24", node(5)),
                "cannot add 172.16.35.0/24 via 172.16.36.5: 172.16.35.0/24 contains this node's \
                 own address 172.16.35.4 (tunnel.local): the route would take the underlay's \
                 traffic into the tunnel",
            ),
        ];
        for (request, want) in cases {
            assert_eq!(call::<RouteChange>(&mut m, request).unwrap_err(), want);
        }
        assert!(m.routes().is_empty());
        assert!(
            m.kernel().call_list().is_empty(),
            "a refused request touches nothing"
        );
    }

    #[test]
    fn route_add_then_again_then_moved() {
        let (mut m, _) = manager();
        let change: RouteChange = call(&mut m, add("10.20.1.0/26", node(5))).unwrap();
        assert_eq!(change.added.len(), 1);
        let again: RouteChange = call(&mut m, add("10.20.1.0/26", node(5))).unwrap();
        assert_eq!(
            again,
            RouteChange {
                unchanged: 1,
                ..RouteChange::default()
            }
        );
        let moved: RouteChange = call(&mut m, add("10.20.1.0/26", node(6))).unwrap();
        assert_eq!(moved.added[0].via, node(6));
        assert_eq!(moved.unchanged, 0);
        assert_eq!(*m.routes(), routes(&[("10.20.1.0/26", 6)]));
    }

    #[test]
    fn route_del_of_an_absent_route_succeeds_and_changes_nothing() {
        let (mut m, _) = manager();
        call::<RouteChange>(&mut m, add("10.20.1.0/26", node(5))).unwrap();
        m.kernel_mut().calls.clear();
        let change: RouteChange = call(
            &mut m,
            Request::RouteDel {
                prefix: net("10.20.2.0/26"),
            },
        )
        .unwrap();
        assert_eq!(
            change,
            RouteChange {
                unchanged: 1,
                ..RouteChange::default()
            }
        );
        assert!(m.kernel().call_list().is_empty());
        let e = call::<RouteChange>(
            &mut m,
            Request::RouteDel {
                prefix: net("10.20.1.1/26"),
            },
        )
        .unwrap_err();
        assert_eq!(
            e,
            "cannot delete 10.20.1.1/26: 10.20.1.1/26 has host bits set (did you mean 10.20.1.0/26?)"
        );
        let change: RouteChange = call(
            &mut m,
            Request::RouteDel {
                prefix: net("10.20.1.0/26"),
            },
        )
        .unwrap();
        assert_eq!(change.removed, vec![net("10.20.1.0/26")]);
        assert!(m.routes().is_empty());
    }

    #[test]
    fn route_replace_applies_only_the_difference() {
        let (mut m, _) = manager();
        let list = |r: &[(&str, u8)]| Request::RouteReplace {
            routes: r
                .iter()
                .map(|(p, n)| control::Route {
                    prefix: net(p),
                    via: node(*n),
                })
                .collect(),
            allow_empty: false,
        };
        call::<RouteChange>(&mut m, list(&[("10.20.1.0/26", 5), ("10.20.2.0/26", 6)])).unwrap();
        m.kernel_mut().calls.clear();
        let change: RouteChange =
            call(&mut m, list(&[("10.20.1.0/26", 5), ("10.20.3.0/26", 7)])).unwrap();
        assert_eq!(change.added.len(), 1);
        assert_eq!(change.removed, vec![net("10.20.2.0/26")]);
        assert_eq!(change.unchanged, 1);
        assert!(
            !m.kernel().call_list()
                .iter()
                .any(|c| matches!(c, KernelCall::Add(p, _) | KernelCall::Del(p, _) if *p == net("10.20.1.0/26"))),
            "the unchanged route was touched: {:?}",
            m.kernel().call_list()
        );
        let e = call::<RouteChange>(&mut m, list(&[("10.20.4.0/26", 5), ("10.20.4.0/26", 6)]))
            .unwrap_err();
        assert_eq!(
            e,
            "route set refused, nothing changed: routes[1].prefix: duplicate prefix 10.20.4.0/26: also route[0]"
        );
        let listed: RouteList = call(&mut m, Request::RouteList {}).unwrap();
        assert!(listed.routes.iter().all(|r| r.origin == "tunl"));
        let listed: Routes = listed
            .routes
            .iter()
            .map(|r| (r.prefix, r.via.unwrap()))
            .collect();
        assert_eq!(listed, routes(&[("10.20.1.0/26", 5), ("10.20.3.0/26", 7)]));
    }

    #[test]
    fn an_empty_replace_is_refused_unless_allowed() {
        let (mut m, _) = manager();
        call::<RouteChange>(&mut m, add("10.20.1.0/26", node(5))).unwrap();
        call::<RouteChange>(&mut m, add("10.20.2.0/26", node(6))).unwrap();
        m.kernel_mut().calls.clear();
        let empty = |allow_empty| Request::RouteReplace {
            routes: vec![],
            allow_empty,
        };
        let e = call::<RouteChange>(&mut m, empty(false)).unwrap_err();
        assert_eq!(
            e,
            "route set refused, nothing changed: an empty set would remove every route \
             (2 now, the config's included); send \"allow_empty\": true to mean it"
        );
        assert_eq!(m.routes().len(), 2);
        assert!(m.kernel().call_list().is_empty(), "nothing touched");
        assert_eq!(m.kernel().ours().len(), 2);
        let change: RouteChange = call(&mut m, empty(true)).unwrap();
        assert_eq!(change.removed.len(), 2);
        assert!(m.routes().is_empty());
        assert!(m.kernel().ours().is_empty());
        // `allow_empty` with a non-empty set is a plain replace.
        let one = Request::RouteReplace {
            routes: vec![control::Route {
                prefix: net("10.20.3.0/26"),
                via: node(7),
            }],
            allow_empty: true,
        };
        let change: RouteChange = call(&mut m, one).unwrap();
        assert_eq!(change.added.len(), 1);
    }

    #[test]
    fn a_kernel_refusal_is_the_reply() {
        let (mut m, _) = manager();
        m.kernel_mut()
            .refuse
            .push(KernelCall::Add(net("10.20.1.0/26"), node(5)));
        let e = call::<RouteChange>(&mut m, add("10.20.1.0/26", node(5))).unwrap_err();
        assert!(
            e.starts_with("cannot install route 10.20.1.0/26 via 172.16.36.5"),
            "{e}"
        );
        assert!(e.ends_with("nothing was changed"), "{e}");
        assert!(m.routes().is_empty());
    }

    #[test]
    fn status_groups_blocks_by_node() {
        let (mut m, _) = manager();
        for (p, n) in [
            ("10.20.1.0/26", 5),
            ("10.20.2.0/26", 6),
            ("10.20.3.0/26", 5),
        ] {
            call::<RouteChange>(&mut m, add(p, node(n))).unwrap();
        }
        let s: Status = call(&mut m, Request::Status {}).unwrap();
        assert_eq!((s.device.as_str(), s.mtu, s.routes), ("tunl0", 1480, 3));
        assert_eq!(
            (s.version.as_str(), s.commit.as_str()),
            ("0.1.0", "abc1234")
        );
        assert_eq!(s.started_unix_ms, 1_764_000_000_000);
        assert!(s.now_unix_ms > s.started_unix_ms);
        let nodes: Vec<(Ipv4Addr, Vec<Ipv4Network>)> =
            s.nodes.iter().map(|n| (n.node, n.blocks.clone())).collect();
        assert_eq!(
            nodes,
            vec![
                (node(5), vec![net("10.20.1.0/26"), net("10.20.3.0/26")]),
                (node(6), vec![net("10.20.2.0/26")]),
            ]
        );
        assert!(s.nodes.iter().all(|n| n.last_seen_unix_ms.is_none()));
        assert_eq!(s.underlay, device().underlay, "the underlay as started");
        let stats: control::Stats = call(&mut m, Request::Stats {}).unwrap();
        assert_eq!(stats.drops_total, 0);
        assert!(stats.counter("tx_packets").is_some());
    }

    #[test]
    fn refused_sources_are_judged_against_the_running_policy() {
        let (mut m, _) = manager();
        // IPIP from two unknown sources, refused by the dataplane.
        let mut local = crate::dataplane::nodes::LocalNodeCounters::default();
        for source in [node(7), node(9), node(9)] {
            local.refused(source);
        }
        local.flush(&[], &m.shared().nodes);
        let judged = |m: &mut RouteManager<FakeKernel>| -> Vec<(Ipv4Addr, u64, bool)> {
            let s: Status = call(m, Request::Status {}).unwrap();
            s.refused
                .iter()
                .map(|r| (r.source, r.packets, r.accepted_now))
                .collect()
        };
        assert_eq!(
            judged(&mut m),
            vec![(node(7), 1, false), (node(9), 2, false)]
        );
        // Then node 7 becomes a node: a route via it is added.
        call::<RouteChange>(&mut m, add("10.20.1.0/26", node(7))).unwrap();
        assert_eq!(
            judged(&mut m),
            vec![(node(7), 1, true), (node(9), 2, false)]
        );
        // And when the route goes, it is refused again.
        call::<RouteChange>(
            &mut m,
            Request::RouteDel {
                prefix: net("10.20.1.0/26"),
            },
        )
        .unwrap();
        assert_eq!(
            judged(&mut m),
            vec![(node(7), 1, false), (node(9), 2, false)]
        );
    }

    #[test]
    fn the_check_of_one_added_route_agrees_with_the_whole_set_check() {
        let c = config();
        let set = routes(&[
            ("10.20.1.0/26", 5),
            ("10.20.2.0/26", 6),
            ("172.16.40.0/24", 7),
        ]);
        let cases = [
            ("10.20.3.0/26", node(8)),                       // fine
            ("10.20.1.0/26", node(9)),                       // a move
            ("10.20.4.0/26", "10.20.2.9".parse().unwrap()),  // via inside a route
            ("10.20.5.0/26", "10.20.5.1".parse().unwrap()),  // via inside itself
            ("10.20.42.0/27", node(8)),                      // over our block
            ("10.20.6.0/26", "10.20.42.3".parse().unwrap()), // via in our block
            ("172.16.36.0/24", node(8)),                     // holds existing vias
            ("10.20.7.1/26", node(8)),                       // host bits
            ("0.0.0.0/0", node(8)),                          // default route
            ("172.16.35.0/24", node(8)),                     // holds tunnel.local
            ("10.20.8.0/26", Ipv4Addr::new(172, 16, 35, 4)), // via tunnel.local
            ("10.20.9.0/26", Ipv4Addr::new(224, 0, 0, 1)),   // not unicast
        ];
        for (prefix, via) in cases {
            let prefix: Ipv4Network = prefix.parse().unwrap();
            let mut wanted = set.clone();
            wanted.insert(prefix, via);
            let whole = validate(&c, &wanted);
            let one = c.check_added_route(&set, prefix, via);
            assert_eq!(
                one.is_ok(),
                whole.is_ok(),
                "{prefix} via {via}: {one:?} / {whole:?}"
            );
            if let (Err(one), Err(whole)) = (&one, &whole) {
                assert!(
                    whole.contains(one.split("; ").next().unwrap()),
                    "{prefix} via {via}: {one} / {whole}"
                );
            }
        }
    }
}
