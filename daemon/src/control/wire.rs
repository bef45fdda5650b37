//! The control protocol's wire types, as `docs/control-protocol.md` describes
//! them: the request and reply objects, the results of each command, the
//! framing limits, and the parser of a request line.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// The longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long the daemon waits for a request line (or the rest of one).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A route as the protocol spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The remote block.
    pub prefix: Ipv4Network,
    /// The node owning it.
    pub via: Ipv4Addr,
}

/// A request, one JSON object per line: `{"cmd": "route_add", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Add a route, or change its next hop (idempotent).
    RouteAdd {
        /// The remote block.
        prefix: Ipv4Network,
        /// The node owning it.
        via: Ipv4Addr,
    },
    /// Remove a route (idempotent: removing an absent route succeeds).
    RouteDel {
        /// The block.
        prefix: Ipv4Network,
    },
    /// List the routes.
    RouteList {},
    /// Make the route set exactly `routes`, in one step.
    RouteReplace {
        /// The whole new set.
        routes: Vec<Route>,
    },
    /// Device, MTU, per-node traffic, refused sources.
    Status {},
    /// Every counter, with drops by reason.
    Stats {},
}

/// The reply to a request: `{"ok": true, "result": ...}` or
/// `{"ok": false, "error": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What went wrong, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The command's result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                error: None,
                result: Some(v),
            },
            Err(e) => Response::error(format!("cannot encode the result: {e}")),
        }
    }

    /// A failure.
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            result: None,
        }
    }
}

/// Result of `route_add`, `route_del` and `route_replace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChange {
    /// Routes added or given a new next hop.
    pub added: Vec<Route>,
    /// Blocks removed.
    pub removed: Vec<Ipv4Network>,
    /// Routes left as they were.
    pub unchanged: usize,
}

/// One next hop of a multipath route in `route_list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedNextHop {
    /// The node; absent for a next hop without a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
    /// Its weight.
    pub weight: u16,
}

/// A route in `route_list`: one of the kernel's routes on the device, the
/// one the kernel uses for its prefix, whoever installed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedRoute {
    /// The block.
    pub prefix: Ipv4Network,
    /// The node (the route's gateway); absent for a route without one
    /// (encapsulated toward the inner destination) and for a multipath
    /// route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
    /// A multipath route's next hops on the device; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nexthops: Vec<ListedNextHop>,
    /// Who installed it, by its routing protocol: `tunl` (tunl's own),
    /// `bird`, `static`, `kernel`..., or the protocol number.
    #[serde(default)]
    pub origin: String,
    /// Its metric.
    #[serde(default)]
    pub metric: u32,
}

/// Result of `route_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteList {
    /// Every route on the device, sorted by block.
    pub routes: Vec<ListedRoute>,
}

/// One remote node in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's underlay address.
    pub node: Ipv4Addr,
    /// The blocks routed to it.
    pub blocks: Vec<Ipv4Network>,
    /// The origin of each block, in the order of `blocks` (`tunl`, `bird`,
    /// ...: see [`ListedRoute::origin`]).
    #[serde(default)]
    pub origins: Vec<String>,
    /// The tunnel MTU toward it (lowered by underlay frag-needed).
    pub path_mtu: u16,
    /// Inner packets sent to it.
    pub tx_packets: u64,
    /// Inner bytes sent to it.
    pub tx_bytes: u64,
    /// Inner packets received from it.
    pub rx_packets: u64,
    /// Inner bytes received from it.
    pub rx_bytes: u64,
    /// Unix time in milliseconds of the last packet either way.
    pub last_seen_unix_ms: Option<u64>,
}

/// A refused IPIP source in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedStatus {
    /// The outer source address.
    pub source: Ipv4Addr,
    /// Packets refused.
    pub packets: u64,
    /// Unix time in milliseconds of the last one.
    pub last_seen_unix_ms: u64,
}

/// Result of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The TUN device.
    pub device: String,
    /// The tunnel MTU.
    pub mtu: u16,
    /// The local underlay address.
    pub local: Ipv4Addr,
    /// The address on the device, if any.
    pub address: Option<Ipv4Network>,
    /// This node's pod blocks.
    pub blocks: Vec<Ipv4Network>,
    /// Dataplane worker threads.
    pub workers: usize,
    /// Number of routes.
    pub routes: usize,
    /// The routes by origin, e.g. `[["bird", 12], ["tunl", 1]]`.
    #[serde(default)]
    pub routes_by_origin: Vec<(String, usize)>,
    /// Full reloads of the routes from a dump after the kernel dropped
    /// route changes (ENOBUFS).
    #[serde(default)]
    pub route_resyncs: u64,
    /// Updates of the dataplane's route table for the kernel's changes.
    #[serde(default)]
    pub route_updates: u64,
    /// `CLOCK_MONOTONIC` (ns) at the last of them; the host's clock, for
    /// benchmarks that compare it with their own.
    #[serde(default)]
    pub last_route_update_ns: u64,
    /// Unix time in milliseconds when the reply was made.
    pub now_unix_ms: u64,
    /// Every remote node, by address.
    pub nodes: Vec<NodeStatus>,
    /// IPIP sources refused (at most 32 remembered).
    pub refused: Vec<RefusedStatus>,
    /// Refused packets from sources past that table.
    pub refused_other_packets: u64,
}

/// Result of `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every counter by name (`tx_packets`, ...), in a fixed order.
    pub counters: Vec<(String, u64)>,
    /// Drops by reason name, every reason listed.
    pub drops: Vec<(String, u64)>,
    /// Sum of `drops`.
    pub drops_total: u64,
}

impl Stats {
    /// A counter by name.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .chain(&self.drops)
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Unix time in milliseconds.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses one request line, saying what is wrong with a bad one (not
/// UTF-8, not JSON, no or an unknown `cmd`, a missing or extra field).
///
/// # Errors
/// The message the daemon sends back in its `ok: false` reply.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty request".to_owned());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("request is not JSON: {e}"))?;
    if let Some(cmd) = value.get("cmd") {
        let known = [
            "route_add",
            "route_del",
            "route_list",
            "route_replace",
            "status",
            "stats",
        ];
        match cmd.as_str() {
            Some(c) if !known.contains(&c) => {
                return Err(format!(
                    "unknown command {c:?}; known: {}",
                    known.join(", ")
                ));
            }
            None => return Err("\"cmd\" must be a string".to_owned()),
            _ => {}
        }
    } else if value.is_object() {
        return Err("request has no \"cmd\"".to_owned());
    }
    serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::RouteAdd {
                prefix: "10.20.105.192/26".parse().unwrap(),
                via: Ipv4Addr::new(172, 16, 36, 5),
            },
            Request::RouteDel {
                prefix: "10.20.105.192/26".parse().unwrap(),
            },
            Request::RouteList {},
            Request::RouteReplace { routes: vec![] },
            Request::Status {},
            Request::Stats {},
        ] {
            let line = serde_json::to_string(&r).unwrap();
            assert_eq!(parse_request(line.as_bytes()).unwrap(), r, "{line}");
        }
        assert_eq!(
            serde_json::to_string(&Request::RouteList {}).unwrap(),
            r#"{"cmd":"route_list"}"#
        );
    }

    #[test]
    fn bad_requests_say_why() {
        let cases: [(&[u8], &str); 7] = [
            (b"{", "not JSON"),
            (b"", "empty"),
            (b"\xff\xfe", "UTF-8"),
            (br#"{"cmd":"reboot"}"#, "unknown command"),
            (br#"{"prefix":"10.0.0.0/8"}"#, "no \"cmd\""),
            (
                br#"{"cmd":"route_add","prefix":"10.0.0.0/33","via":"1.2.3.4"}"#,
                "bad request",
            ),
            (br#"{"cmd":"route_list","extra":1}"#, "bad request"),
        ];
        for (line, want) in cases {
            let e = parse_request(line).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn replies_as_the_protocol_spells_them() {
        let ok = serde_json::to_string(&Response::ok(RouteChange::default())).unwrap();
        assert_eq!(
            ok,
            r#"{"ok":true,"result":{"added":[],"removed":[],"unchanged":0}}"#
        );
        let err = serde_json::to_string(&Response::error("no")).unwrap();
        assert_eq!(err, r#"{"ok":false,"error":"no"}"#);
        let stats = Stats {
            counters: vec![("tx_packets".to_owned(), 3)],
            drops: vec![("no_route".to_owned(), 1)],
            drops_total: 1,
        };
        assert_eq!(stats.counter("tx_packets"), Some(3));
        assert_eq!(stats.counter("no_route"), Some(1));
        assert_eq!(stats.counter("rx_packets"), None);
    }
}
