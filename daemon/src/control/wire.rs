//! The control protocol's wire types, as `docs/control-protocol.md` describes
//! them: the request and reply objects, the results of each command, the
//! framing limits, and the parser of a request line.

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// The longest request line accepted, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long the daemon waits for a request line (or the rest of one).
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most routes one `route_replace` may carry, streamed or not.
pub const MAX_REPLACE_ROUTES: usize = 250_000;
/// How long a streamed `route_replace` may take to arrive, from its header
/// to its last chunk (each line also within [`READ_TIMEOUT`]).
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How many routes the client puts in one chunk of a streamed
/// `route_replace`: the longest route is 56 bytes of JSON, so a chunk line
/// stays under [`MAX_REQUEST`].
pub const ROUTES_PER_CHUNK: usize = 1000;

/// A route as the protocol spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The remote block, with its length.
    #[serde(with = "crate::control::prefix")]
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
        /// The remote block, with its length.
        #[serde(with = "crate::control::prefix")]
        prefix: Ipv4Network,
        /// The node owning it.
        via: Ipv4Addr,
    },
    /// Remove a route (idempotent: removing an absent route succeeds).
    RouteDel {
        /// The block, with its length.
        #[serde(with = "crate::control::prefix")]
        prefix: Ipv4Network,
    },
    /// List the routes.
    RouteList {},
    /// Make the route set exactly `routes`, in one step.
    RouteReplace {
        /// The whole new set.
        routes: Vec<Route>,
        /// Whether an empty `routes` is meant: it removes every route, the
        /// config's too, so it is refused unless this is `true`.
        #[serde(default, skip_serializing_if = "is_false")]
        allow_empty: bool,
    },
    /// Device, MTU, per-node traffic, refused sources.
    Status {},
    /// Every counter, with drops by reason.
    Stats {},
}

impl std::fmt::Display for Request {
    /// The request in a few words, for the log: `route_add 10.20.105.192/26
    /// via 172.16.36.5`, `route_replace of 3 routes`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::RouteAdd { prefix, via } => write!(f, "route_add {prefix} via {via}"),
            Request::RouteDel { prefix } => write!(f, "route_del {prefix}"),
            Request::RouteList {} => f.write_str("route_list"),
            Request::RouteReplace {
                routes,
                allow_empty,
            } => {
                write!(f, "route_replace of {} routes", routes.len())?;
                if *allow_empty {
                    f.write_str(" (allow_empty)")?;
                }
                Ok(())
            }
            Request::Status {} => f.write_str("status"),
            Request::Stats {} => f.write_str("stats"),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The reply to a request: `{"ok": true, "result": ...}` or
/// `{"ok": false, "error": "..."}`.
///
/// The result is kept as the JSON text it was written as, not as a
/// [`serde_json::Value`]: a `status` at 100k routes is megabytes, and
/// building a value tree of it on each side cost more than the encoding
/// itself. [`Response::decode`] reads it straight into the type wanted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What went wrong, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The command's result, when `ok`, as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
}

impl PartialEq for Response {
    fn eq(&self, other: &Response) -> bool {
        self.ok == other.ok
            && self.error == other.error
            && self.result.as_ref().map(|r| r.get()) == other.result.as_ref().map(|r| r.get())
    }
}

impl Response {
    /// A success carrying `result`.
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::value::to_raw_value(&result) {
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

    /// The result read as `T` (a missing result reads as JSON `null`).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.result.as_ref().map_or("null", |r| r.get()))
    }
}

/// Result of `route_add`, `route_del` and `route_replace`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChange {
    /// Routes added or given a new next hop.
    pub added: Vec<Route>,
    /// Blocks removed.
    #[serde(with = "crate::control::prefix::list")]
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
    #[serde(with = "crate::control::prefix")]
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
    #[serde(default, deserialize_with = "crate::control::origin::deserialize")]
    pub origin: Cow<'static, str>,
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
    #[serde(with = "crate::control::prefix::list")]
    pub blocks: Vec<Ipv4Network>,
    /// The origin of each block, in the order of `blocks` (`tunl`, `bird`,
    /// ...: see [`ListedRoute::origin`]).
    #[serde(
        default,
        deserialize_with = "crate::control::origin::list::deserialize"
    )]
    pub origins: Vec<Cow<'static, str>>,
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
    /// Whether the running policy accepts this source now (a route via it
    /// was added, or `security.allow` grew, after its packets were
    /// refused). Absent in replies of older daemons: `false`.
    #[serde(default)]
    pub accepted_now: bool,
}

/// The underlay in `status`: what was asked for, what runs, and why not
/// the first choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayStatus {
    /// `[dataplane] underlay` as configured: `raw`, `packet`, `xdp` or `auto`.
    pub requested: String,
    /// The underlay running: `raw`, `packet` or `xdp`.
    pub running: String,
    /// With `xdp`: the program's mode on the device, `generic` or `native`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<String>,
    /// With `xdp`: the AF_XDP sockets (one per RX queue in use).
    #[serde(default)]
    pub xdp_sockets: usize,
    /// With `xdp`: the workers holding one (the others transmit through
    /// `packet`).
    #[serde(default)]
    pub xdp_workers: usize,
    /// Why an underlay asked for (or tried by `auto`) is not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
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
    /// The underlay in use.
    #[serde(default)]
    pub underlay: UnderlayStatus,
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
    /// Unix time in milliseconds when the daemon started (0 from daemons
    /// older than this field).
    #[serde(default)]
    pub started_unix_ms: u64,
    /// The daemon's release, e.g. `0.1.0` (empty from older daemons).
    #[serde(default)]
    pub version: String,
    /// The git commit the daemon was built from, short, or `unknown`
    /// (empty from older daemons).
    #[serde(default)]
    pub commit: String,
    /// Every remote node, by address.
    pub nodes: Vec<NodeStatus>,
    /// IPIP sources refused (at most 32 remembered).
    pub refused: Vec<RefusedStatus>,
    /// Refused packets from sources past that table.
    pub refused_other_packets: u64,
    /// The underlay's address and link as the daemon sees them now (absent
    /// from older daemons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_link: Option<UnderlayLink>,
}

/// The underlay's address and link in `status`: whether `local` is still an
/// address of the node, and the state of the device holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnderlayLink {
    /// Whether `local` is an address of this node; while it is not, nothing
    /// is sent (dropped as `no_local_address`).
    pub local_present: bool,
    /// The underlay device: the one holding `local`, or the one that last
    /// did (absent when none ever did).
    pub device: Option<String>,
    /// Its state: `up`, `down` (or without carrier) or `gone`.
    pub state: String,
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

/// The header of a streamed `route_replace`: the set follows in chunk
/// lines (`{"routes": [...]}`) until `count` routes have arrived, and is
/// then carried out as one `route_replace`. On the wire it is a
/// `route_replace` with `count` in place of `routes`:
/// `{"cmd":"route_replace","count":100000}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    /// Always `route_replace`.
    pub cmd: StreamCmd,
    /// How many routes the chunks carry, in all.
    pub count: usize,
    /// As in [`Request::RouteReplace`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_empty: bool,
}

/// The only command that may be streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamCmd {
    /// `route_replace`.
    RouteReplace,
}

impl StreamHeader {
    /// The header of a streamed replace of `count` routes.
    pub fn route_replace(count: usize, allow_empty: bool) -> StreamHeader {
        StreamHeader {
            cmd: StreamCmd::RouteReplace,
            count,
            allow_empty,
        }
    }
}

/// One chunk line of a streamed `route_replace`: `{"routes": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteChunk {
    /// Some routes of the set, at least one.
    pub routes: Vec<Route>,
}

/// A line read where a request may begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A whole request.
    Request(Request),
    /// The header of a streamed `route_replace`; its chunks follow.
    Stream(ReplaceStream),
}

/// A streamed `route_replace` being received: feed it the chunk lines
/// ([`ReplaceStream::push`]) until [`ReplaceStream::is_complete`], then take
/// the request ([`ReplaceStream::into_request`]). It holds at most
/// [`MAX_REPLACE_ROUTES`] routes: a header announcing more is refused, and
/// so is a chunk carrying more than announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceStream {
    count: usize,
    allow_empty: bool,
    routes: Vec<Route>,
    chunks: usize,
}

impl ReplaceStream {
    /// A stream for `header`.
    ///
    /// # Errors
    /// A `count` over [`MAX_REPLACE_ROUTES`].
    pub fn new(header: StreamHeader) -> Result<ReplaceStream, String> {
        if header.count > MAX_REPLACE_ROUTES {
            return Err(format!(
                "route set refused, nothing changed: {} routes announced, at most \
                 {MAX_REPLACE_ROUTES} in one route_replace",
                header.count
            ));
        }
        Ok(ReplaceStream {
            count: header.count,
            allow_empty: header.allow_empty,
            routes: Vec::new(),
            chunks: 0,
        })
    }

    /// The routes announced.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The routes received so far.
    pub fn received(&self) -> usize {
        self.routes.len()
    }

    /// Whether every announced route has arrived.
    pub fn is_complete(&self) -> bool {
        self.routes.len() == self.count
    }

    /// Takes one chunk line.
    ///
    /// # Errors
    /// The line is not a chunk (not UTF-8, not JSON, another field, a bad
    /// route), is empty of routes, or carries more routes than the header
    /// announced. The stream is then unusable: the daemon answers the error
    /// and closes the connection.
    pub fn push(&mut self, line: &[u8]) -> Result<(), String> {
        self.chunks += 1;
        let at = |e: String| {
            format!(
                "route set refused, nothing changed: chunk {} of the route_replace stream \
                 (after {} routes): {e}",
                self.chunks,
                self.routes.len()
            )
        };
        let text = std::str::from_utf8(line).map_err(|_| at("not UTF-8".to_owned()))?;
        let chunk: RouteChunk = serde_json::from_str(text.trim())
            .map_err(|e| at(format!("not a chunk ({{\"routes\": [...]}}): {e}")))?;
        if chunk.routes.is_empty() {
            return Err(at("a chunk carries at least one route".to_owned()));
        }
        if chunk.routes.len() > self.count - self.routes.len() {
            return Err(at(format!(
                "{} routes, more than the {} announced",
                self.routes.len() + chunk.routes.len(),
                self.count
            )));
        }
        self.routes.extend(chunk.routes);
        Ok(())
    }

    /// The `route_replace` the stream carried (complete or not: the caller
    /// checks [`ReplaceStream::is_complete`]).
    pub fn into_request(self) -> Request {
        Request::RouteReplace {
            routes: self.routes,
            allow_empty: self.allow_empty,
        }
    }
}

/// Parses a line where a request may begin: a request
/// ([`parse_request`]), or the header of a streamed `route_replace` (one
/// with `count` in place of `routes`).
///
/// # Errors
/// As [`parse_request`], and a header announcing more than
/// [`MAX_REPLACE_ROUTES`] routes.
pub fn parse_line(line: &[u8]) -> Result<Incoming, String> {
    if let Ok(text) = std::str::from_utf8(line) {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text.trim()) {
            if value.get("cmd").and_then(|c| c.as_str()) == Some("route_replace")
                && value.get("count").is_some()
            {
                if value.get("routes").is_some() {
                    return Err(
                        "bad request: route_replace carries either `routes` or `count` (a stream)"
                            .to_owned(),
                    );
                }
                let header: StreamHeader =
                    serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))?;
                return ReplaceStream::new(header).map(Incoming::Stream);
            }
        }
    }
    parse_request(line).map(Incoming::Request)
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
            Request::RouteReplace {
                routes: vec![],
                allow_empty: true,
            },
            Request::RouteReplace {
                routes: vec![Route {
                    prefix: "10.20.105.192/26".parse().unwrap(),
                    via: Ipv4Addr::new(172, 16, 36, 5),
                }],
                allow_empty: false,
            },
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
        // `allow_empty` is optional and false by default.
        assert_eq!(
            parse_request(br#"{"cmd":"route_replace","routes":[]}"#).unwrap(),
            Request::RouteReplace {
                routes: vec![],
                allow_empty: false
            }
        );
        let empty = Request::RouteReplace {
            routes: vec![],
            allow_empty: false,
        };
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"cmd":"route_replace","routes":[]}"#
        );
    }

    #[test]
    fn requests_in_a_few_words() {
        let add = Request::RouteAdd {
            prefix: "10.20.105.192/26".parse().unwrap(),
            via: Ipv4Addr::new(172, 16, 36, 5),
        };
        assert_eq!(
            add.to_string(),
            "route_add 10.20.105.192/26 via 172.16.36.5"
        );
        let replace = Request::RouteReplace {
            routes: vec![],
            allow_empty: true,
        };
        assert_eq!(
            replace.to_string(),
            "route_replace of 0 routes (allow_empty)"
        );
        assert_eq!(Request::Status {}.to_string(), "status");
    }

    #[test]
    fn bad_requests_say_why() {
        let cases: [(&[u8], &str); 8] = [
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
            (
                br#"{"cmd":"route_del","prefix":"10.0.0.0"}"#,
                "has no prefix length",
            ),
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

    fn chunk(routes: &[(&str, [u8; 4])]) -> Vec<u8> {
        let chunk = RouteChunk {
            routes: routes
                .iter()
                .map(|(p, v)| Route {
                    prefix: p.parse().unwrap(),
                    via: Ipv4Addr::from(*v),
                })
                .collect(),
        };
        serde_json::to_vec(&chunk).unwrap()
    }

    fn stream(line: &[u8]) -> ReplaceStream {
        match parse_line(line) {
            Ok(Incoming::Stream(s)) => s,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(line)),
        }
    }

    #[test]
    fn a_stream_header_is_a_route_replace_with_a_count() {
        let header = StreamHeader::route_replace(3, false);
        let line = serde_json::to_string(&header).unwrap();
        assert_eq!(line, r#"{"cmd":"route_replace","count":3}"#);
        let s = stream(line.as_bytes());
        assert_eq!((s.count(), s.received(), s.is_complete()), (3, 0, false));
        let with = serde_json::to_string(&StreamHeader::route_replace(0, true)).unwrap();
        assert_eq!(
            with,
            r#"{"cmd":"route_replace","count":0,"allow_empty":true}"#
        );
        let empty = stream(with.as_bytes());
        assert!(empty.is_complete(), "nothing to wait for");
        assert_eq!(
            empty.into_request(),
            Request::RouteReplace {
                routes: vec![],
                allow_empty: true
            }
        );
        // Every other request still parses as before.
        assert_eq!(
            parse_line(br#"{"cmd":"route_replace","routes":[]}"#).unwrap(),
            Incoming::Request(Request::RouteReplace {
                routes: vec![],
                allow_empty: false
            })
        );
        assert_eq!(
            parse_line(br#"{"cmd":"status"}"#).unwrap(),
            Incoming::Request(Request::Status {})
        );
        assert!(parse_line(b"nonsense").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn a_stream_gathers_its_chunks_into_one_replace() {
        let mut s = stream(br#"{"cmd":"route_replace","count":3}"#);
        s.push(&chunk(&[
            ("10.20.0.0/26", [172, 16, 0, 1]),
            ("10.20.0.64/26", [172, 16, 0, 2]),
        ]))
        .unwrap();
        assert_eq!((s.received(), s.is_complete()), (2, false));
        s.push(b"  {\"routes\":[{\"prefix\":\"10.20.0.128/26\",\"via\":\"172.16.0.3\"}]}\n")
            .unwrap();
        assert!(s.is_complete());
        let Request::RouteReplace {
            routes,
            allow_empty,
        } = s.into_request()
        else {
            panic!("not a replace");
        };
        assert!(!allow_empty);
        let vias: Vec<Ipv4Addr> = routes.iter().map(|r| r.via).collect();
        assert_eq!(
            vias,
            [[172, 16, 0, 1], [172, 16, 0, 2], [172, 16, 0, 3]].map(Ipv4Addr::from),
            "in the order sent"
        );
        assert_eq!(routes[2].prefix, "10.20.0.128/26".parse().unwrap());
    }

    #[test]
    fn bad_streams_say_why() {
        // More than the cap, announced: refused at the header.
        let over = format!(
            r#"{{"cmd":"route_replace","count":{}}}"#,
            MAX_REPLACE_ROUTES + 1
        );
        let e = parse_line(over.as_bytes()).unwrap_err();
        assert!(e.contains("at most 250000"), "{e}");
        assert!(
            stream(format!(r#"{{"cmd":"route_replace","count":{MAX_REPLACE_ROUTES}}}"#).as_bytes())
                .count()
                == MAX_REPLACE_ROUTES
        );
        for (header, want) in [
            (&br#"{"cmd":"route_replace","count":-1}"#[..], "bad request"),
            (br#"{"cmd":"route_replace","count":"9"}"#, "bad request"),
            (
                br#"{"cmd":"route_replace","count":2,"extra":1}"#,
                "unknown field",
            ),
            (
                br#"{"cmd":"route_replace","count":2,"routes":[]}"#,
                "either",
            ),
        ] {
            let e = parse_line(header).unwrap_err();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(header));
        }
        let one = chunk(&[("10.20.0.0/26", [172, 16, 0, 1])]);
        let two = chunk(&[
            ("10.20.0.0/26", [172, 16, 0, 1]),
            ("10.20.1.0/26", [172, 16, 0, 1]),
        ]);
        let cases: [(&[u8], &str); 7] = [
            (&two, "2 routes, more than the 1 announced"),
            (br#"{"routes":[]}"#, "at least one route"),
            (b"{", "not a chunk"),
            (b"\xff", "not UTF-8"),
            (br#"{"routes":[],"more":1}"#, "unknown field"),
            (br#"{"cmd":"status"}"#, "not a chunk"),
            (
                br#"{"routes":[{"prefix":"10.0.0.0","via":"1.2.3.4"}]}"#,
                "has no prefix length",
            ),
        ];
        for (line, want) in cases {
            let mut s = stream(br#"{"cmd":"route_replace","count":1}"#);
            let e = s.push(line).unwrap_err();
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(line));
            assert!(e.contains("chunk 1 of the route_replace stream"), "{e}");
            assert!(e.starts_with("route set refused, nothing changed"), "{e}");
        }
        // A chunk past the count, after a complete one.
        let mut s = stream(br#"{"cmd":"route_replace","count":1}"#);
        s.push(&one).unwrap();
        let e = s.push(&one).unwrap_err();
        assert!(e.contains("chunk 2") && e.contains("after 1 routes"), "{e}");
    }

    #[test]
    fn a_full_chunk_of_the_longest_routes_fits_a_line() {
        let longest = ("255.255.255.255/32", [255, 255, 255, 255]);
        let line = chunk(&vec![longest; ROUTES_PER_CHUNK]);
        assert!(line.len() < MAX_REQUEST, "{}", line.len());
    }
}
