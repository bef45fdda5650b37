//! The daemon's configuration file (TOML) and its validation.
//!
//! ```toml
//! [tunnel]
//! name = "tunl0"              # TUN device name; default tunl0
//! local = "172.16.35.4"       # this node's underlay address: the outer source; required
//! mtu = 1480                  # default: MTU of the underlay interface holding `local`, minus 20
//! address = "10.20.42.0/32"   # optional address put on the tunnel device
//! ttl = "inherit"             # or 1..=255
//! blocks = ["10.20.42.0/26"]  # optional: this node's pod blocks; decap refuses other inner destinations
//! persist = true              # keep the device (and others' routes on it) when tunl stops
//!
//! [routing]                   # optional, these are the defaults
//! table = 254                 # the kernel table whose routes on the device tunl follows (main)
//! listen_buffer = 8388608     # receive buffer of the route listener, bytes (tests shrink it)
//!
//! [[route]]                   # one per remote block
//! prefix = "10.20.105.192/26"
//! via = "172.16.36.5"
//!
//! [security]
//! allow = ["172.16.0.0/16"]   # IPIP sources accepted besides every route's `via`
//! allow_nested = false        # refuse inner packets that are themselves IPIP
//! strict_source = false       # true: an inner source must be in a block routed via the outer source
//! user = "tunl"               # optional: run as this user after setup (keeps CAP_NET_ADMIN)
//!
//! [control]
//! socket = "/run/tunl/tunl.sock"  # the control socket (mode 0600); this is the default
//!
//! [metrics]
//! listen = "127.0.0.1:9099"   # optional: serve Prometheus metrics at http://ADDR/metrics
//!
//! [dataplane]                 # optional, these are the defaults
//! workers = 1                 # encap threads, one TUN queue each
//! offload = true              # TUN TSO/GRO offloads
//! tx_queue_len = 1000
//! socket_buffer = 8388608     # raw socket buffers, bytes
//! icmp_rate = 100             # ICMP errors per second
//! underlay = "raw"            # "raw", "packet" (AF_PACKET transmit), "xdp" (AF_XDP) or "auto"
//! xdp_mode = "auto"           # with underlay "xdp"/"auto": "auto", "generic" or "native"
//! busy_poll_us = 0            # poll this long before sleeping
//! poll_interval_us = 100      # under load, sleep this long instead of blocking
//! poll_quiet_us = 1000        # block again after this long without packets
//! ```
//!
//! Reading is strict and reports like a compiler: a file that is not TOML
//! is one error (with its line and column); otherwise every problem is
//! collected, each naming its key (`route[1].prefix: ...`): unknown and
//! missing keys, values of the wrong type or out of range (said in words:
//! `tunnel.mtu: expected a number 68..=65515, found "abc"`), and the rules
//! between keys. Every prefix carries its length (`10.20.105.192/26`, or
//! `/32` for one address). A reload (SIGHUP) applies every key but the
//! [`START_ONLY_KEYS`], which wait for a restart.
//!
//! - `read`: TOML text to a [`Config`], each value's type, range and form;
//! - `check`: the rules between keys (own blocks, the local address,
//!   duplicates, next hops), also run on route sets from the control socket.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use tunl_encap::{Ttl, TunnelSettings};

mod check;
mod read;

/// Default TUN device name, as Calico's kernel device.
pub const DEFAULT_DEVICE: &str = "tunl0";
/// The smallest MTU IPv4 allows (RFC 791): the floor of `tunnel.mtu`,
/// configured or derived from the underlay.
pub use tunl_encap::MIN_MTU;
/// The largest tunnel MTU: an outer packet must fit in 65535 bytes.
pub const MAX_MTU: u16 = 65535 - 20;
/// Default path of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tunl/tunl.sock";
/// Where `tunl run` and `tunl check` read their config when none is given.
pub const DEFAULT_CONFIG: &str = "/etc/tunl/tunl.toml";
/// The longest `dataplane.busy_poll_us` accepted: one second.
pub const MAX_BUSY_POLL_US: u32 = 1_000_000;
/// The default `dataplane.poll_interval_us`: on, at the interval that
/// measured best (docs/performance.md, experiment 10: shorter ones cost
/// more CPU than they save, longer ones hold TCP back).
pub const DEFAULT_POLL_INTERVAL_US: u32 = 100;
/// The longest `dataplane.poll_interval_us` accepted: 1 ms, epoll's own
/// granularity; a longer sleep only holds packets back (a TUN queue holds
/// 1000).
pub const MAX_POLL_INTERVAL_US: u32 = 1_000;
/// The default `dataplane.poll_quiet_us`: ten intervals (a 5 ms spell
/// measured no better and keeps an idle worker waking longer).
pub const DEFAULT_POLL_QUIET_US: u32 = 1_000;
/// The longest `dataplane.poll_quiet_us` accepted: one second.
pub const MAX_POLL_QUIET_US: u32 = 1_000_000;
/// The most dataplane worker threads (`dataplane.workers`).
pub const MAX_WORKERS: usize = 64;
/// The kernel's main routing table, the default `routing.table`.
pub const MAIN_TABLE: u32 = 254;
/// The default `routing.listen_buffer`, bytes.
pub const DEFAULT_LISTEN_BUFFER: usize = 8 << 20;

/// One thing wrong with a config: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, e.g. `route[2].via`, or `[tunnel]` for a whole section.
    pub key: String,
    /// What is wrong with it, for a person.
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// A configuration error: the file could not be read, is not TOML, or
/// holds keys that are not acceptable (every one of them).
///
/// Its text is one line (for the log); [`ConfigError::problems`] gives the
/// problems one by one (for the CLI, one line each).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config {path}: line {line}, column {column}: not TOML: {message}")]
    Syntax {
        /// The path given.
        path: PathBuf,
        /// Where the parser stopped, from 1.
        line: usize,
        /// The column there, from 1.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// Keys are unknown, missing, of the wrong type or range, or break a
    /// rule: every problem found, in the order of the docs.
    #[error("config {path}: {}", ProblemsText(problems))]
    Invalid {
        /// The path given.
        path: PathBuf,
        /// What is wrong, at least one.
        problems: Vec<Problem>,
    },
}

/// `key: problem`, or `N errors: key: problem; key: problem`.
struct ProblemsText<'a>(&'a [Problem]);

impl fmt::Display for ProblemsText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [one] = self.0 {
            return write!(f, "{one}");
        }
        write!(f, "{} errors: ", self.0.len())?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// The path of the config this is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Syntax { path, .. }
            | ConfigError::Invalid { path, .. } => path,
        }
    }

    /// The problems of an invalid config, one per key; empty when the file
    /// could not be read or is not TOML.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Problems found so far, at most one per key: a key already reported (or
/// a section or route entry holding it) is not reported again, so one
/// mistake does not cascade into others.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    /// Records that `key` has `problem`, unless `key` (or what holds it)
    /// has one already.
    pub(crate) fn push(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        let key = key.into();
        if !self.has(&key) {
            self.0.push(Problem {
                key,
                problem: problem.into(),
            });
        }
    }

    /// Whether `key`, or a section or entry holding it, has a problem.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|p| {
            // `[tunnel]` holds `tunnel.*`, `[[route]]` holds `route[*]`.
            let k = if p.key.starts_with('[') {
                p.key.trim_matches(['[', ']'])
            } else {
                &p.key
            };
            key == p.key
                || key
                    .strip_prefix(k)
                    .is_some_and(|rest| rest.starts_with(['.', '[']))
        })
    }

    /// `Ok` when nothing was found, else the error for `path`.
    pub(crate) fn into_result(self, path: &Path) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems: self.0,
            })
        }
    }
}

/// `[tunnel]`.
#[derive(Debug, Clone)]
pub struct TunnelSection {
    /// TUN device name.
    pub name: String,
    /// This node's underlay address.
    pub local: Ipv4Addr,
    /// Tunnel MTU; `None` derives it from the underlay interface.
    pub mtu: Option<u16>,
    /// Address (with prefix length) put on the tunnel device.
    pub address: Option<Ipv4Network>,
    /// Outer TTL.
    pub ttl: Ttl,
    /// Copy the inner DSCP to the outer header (`tos inherit`).
    pub tos_inherit: bool,
    /// Always set DF on outer packets (`pmtudisc`); tunl0 under Calico has `nopmtudisc`.
    pub pmtudisc: bool,
    /// This node's pod blocks.
    pub blocks: Vec<Ipv4Network>,
    /// Keep the device when tunl stops (`TUNSETPERSIST`), so routes others
    /// installed on it stay in the kernel while tunl restarts; `false`
    /// deletes it at exit, taking every route on it along.
    pub persist: bool,
}

impl Default for TunnelSection {
    /// The defaults, with `local` unset (`0.0.0.0`, which the rules refuse).
    fn default() -> Self {
        TunnelSection {
            name: DEFAULT_DEVICE.to_owned(),
            local: Ipv4Addr::UNSPECIFIED,
            mtu: None,
            address: None,
            ttl: Ttl::Inherit,
            tos_inherit: false,
            pmtudisc: false,
            blocks: Vec::new(),
            persist: true,
        }
    }
}

/// One `[[route]]`: a remote block and the node that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    /// The remote block.
    pub prefix: Ipv4Network,
    /// The node owning it (its underlay address).
    pub via: Ipv4Addr,
}

/// The default of `security.strict_source`: off, by measurement. The check
/// is cheap (one LPM lookup per received packet: 45 -> 51 ns per packet in
/// the daemon's pipeline bench), but it refuses replies that take an
/// asymmetric path while routes converge: in the BGP tests' block moves
/// (a ping every 2 ms), 2 of 6 moves lost one ping to it, refused as
/// `inner_source_mismatch`; with it off no move has lost one. The
/// kernel's tunl0, which tunl stands in for, has no such check.
pub const DEFAULT_STRICT_SOURCE: bool = false;

/// `[security]`.
#[derive(Debug, Clone)]
pub struct SecuritySection {
    /// IPIP sources accepted besides every route's `via`.
    pub allow: Vec<Ipv4Network>,
    /// Accept inner packets that are themselves IPIP.
    pub allow_nested: bool,
    /// Refuse an inner source that is not in a block routed via the outer
    /// source (nor the outer source itself).
    pub strict_source: bool,
    /// Switch to this user (and its primary group) after setup, keeping
    /// only CAP_NET_ADMIN; `None` stays root with only CAP_NET_ADMIN.
    pub user: Option<String>,
}

impl Default for SecuritySection {
    fn default() -> SecuritySection {
        SecuritySection {
            allow: Vec::new(),
            allow_nested: false,
            strict_source: DEFAULT_STRICT_SOURCE,
            user: None,
        }
    }
}

/// `[metrics]`: the optional Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSection {
    /// Address to serve `GET /metrics` on; `None` serves nothing.
    pub listen: Option<SocketAddr>,
}

/// `[dataplane]`: how the packet path runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DataplaneSection {
    /// Encap (TUN to underlay) worker threads, each with its own TUN queue.
    pub workers: usize,
    /// Use TUN offloads (TSO split on read, GRO on write).
    pub offload: bool,
    /// TUN device transmit queue length.
    pub tx_queue_len: u32,
    /// Raw socket buffer sizes in bytes.
    pub socket_buffer: usize,
    /// ICMP errors the daemon may send per second (frag-needed, unreachable).
    pub icmp_rate: u32,
    /// How outer packets reach the underlay device (the one holding
    /// `tunnel.local`): see [`Underlay`]. `None` (not in the file) is
    /// [`Underlay::DEFAULT`], or what the deprecated `packet_tx` says.
    pub underlay: Option<Underlay>,
    /// How the XDP program runs on the underlay device with `underlay =
    /// "xdp"` or `"auto"`.
    pub xdp_mode: XdpModeSetting,
    /// Deprecated: `packet_tx = true` is `underlay = "packet"` (read with a
    /// warning); it cannot be combined with `underlay`.
    pub packet_tx: Option<bool>,
    /// Microseconds a worker keeps polling its queues without sleeping after
    /// the last packet it handled. Each sleep costs a thread wakeup on the
    /// next packet (tens of µs on a VM), so this cuts the latency tunl adds,
    /// at the price of CPU: up to one core per worker while traffic lasts
    /// and for this long after. 0 (default) sleeps at once; at most
    /// 1 000 000.
    pub busy_poll_us: u32,
    /// Under load, microseconds a worker whose sources ran dry sleeps
    /// before it looks again, instead of blocking in epoll (interrupt
    /// mitigation, as NAPI does it): a blocked worker costs whoever queues
    /// a packet for it a cross-CPU wakeup, which on veth is the sending
    /// side's own syscall. Load: a pass of at least
    /// [`POLL_START_PACKETS`](crate::dataplane::worker::POLL_START_PACKETS)
    /// packets. 0 turns it off; at most [`MAX_POLL_INTERVAL_US`].
    pub poll_interval_us: u32,
    /// Microseconds without a packet after which a worker polling on the
    /// timer blocks in epoll again, so an idle daemon uses no CPU and the
    /// first packet after a pause wakes it as before. 0 turns the timer
    /// polling off; otherwise at least `poll_interval_us`, at most
    /// [`MAX_POLL_QUIET_US`].
    pub poll_quiet_us: u32,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            workers: 1,
            offload: true,
            tx_queue_len: 1000,
            socket_buffer: 8 << 20,
            icmp_rate: 100,
            underlay: None,
            xdp_mode: XdpModeSetting::Auto,
            packet_tx: None,
            busy_poll_us: 0,
            poll_interval_us: DEFAULT_POLL_INTERVAL_US,
            poll_quiet_us: DEFAULT_POLL_QUIET_US,
        }
    }
}

impl DataplaneSection {
    /// The underlay asked for: `underlay`, else the deprecated `packet_tx`,
    /// else [`Underlay::DEFAULT`].
    pub fn underlay(&self) -> Underlay {
        match (self.underlay, self.packet_tx) {
            (Some(u), _) => u,
            (None, Some(true)) => Underlay::Packet,
            (None, _) => Underlay::DEFAULT,
        }
    }
}

/// `[dataplane] underlay`: how outer packets leave for (and arrive from) the
/// underlay device, the one holding `tunnel.local`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Underlay {
    /// A raw IP socket both ways: the kernel routes each outer packet,
    /// resolves its next hop (ARP) and runs netfilter and the qdisc.
    Raw,
    /// AF_PACKET transmit (`PACKET_QDISC_BYPASS`) with next-hop MACs from
    /// the neighbour table (a batch with an unknown one takes the raw
    /// socket); receive through the raw socket. Outer packets bypass the
    /// OUTPUT and POSTROUTING hooks.
    Packet,
    /// AF_XDP both ways: an XDP program on the device hands IPIP frames for
    /// tunl to AF_XDP sockets, and tunl transmits through them. Outer IPIP
    /// packets bypass netfilter both ways; when it cannot be set up, tunl
    /// logs why and runs on `packet` (then `raw`).
    Xdp,
    /// The fastest that works here: `xdp`, else `packet`, else `raw`.
    Auto,
}

impl Underlay {
    /// The underlay without an `underlay` key.
    pub const DEFAULT: Underlay = Underlay::Raw;

    /// The name as the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Underlay::Raw => "raw",
            Underlay::Packet => "packet",
            Underlay::Xdp => "xdp",
            Underlay::Auto => "auto",
        }
    }
}

impl fmt::Display for Underlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Underlay {
    type Err = String;

    fn from_str(s: &str) -> Result<Underlay, String> {
        match s {
            "raw" => Ok(Underlay::Raw),
            "packet" => Ok(Underlay::Packet),
            "xdp" => Ok(Underlay::Xdp),
            "auto" => Ok(Underlay::Auto),
            other => Err(format!(
                "unknown underlay {other:?}: raw, packet, xdp or auto"
            )),
        }
    }
}

/// `[dataplane] xdp_mode`: how the XDP program runs on the underlay device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XdpModeSetting {
    /// Generic on veth (measured faster there: native mode copies every
    /// frame and turns TSO off on the peer), native elsewhere, falling back
    /// to generic when the driver has no native XDP.
    #[default]
    Auto,
    /// Generic (skb) mode, on any device.
    Generic,
    /// Native (driver) mode only.
    Native,
}

impl std::str::FromStr for XdpModeSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<XdpModeSetting, String> {
        match s {
            "auto" => Ok(XdpModeSetting::Auto),
            "generic" => Ok(XdpModeSetting::Generic),
            "native" => Ok(XdpModeSetting::Native),
            other => Err(format!("unknown XDP mode {other:?}")),
        }
    }
}

/// `[routing]`: which kernel routes tunl follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingSection {
    /// The kernel routing table whose routes on the device tunl mirrors,
    /// and where it installs its own (`[[route]]`, the control socket).
    pub table: u32,
    /// Receive buffer of the netlink socket that follows route changes, in
    /// bytes (the kernel doubles it). Large enough that a burst of changes
    /// does not overrun it; an overrun costs a full resynchronisation.
    /// Tests make it tiny to force overruns.
    pub listen_buffer: usize,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            table: MAIN_TABLE,
            listen_buffer: DEFAULT_LISTEN_BUFFER,
        }
    }
}

/// `[control]`: the Unix control socket.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlSection {
    /// Path of the control socket.
    pub socket: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for reloads and messages).
    pub path: PathBuf,
    /// `[tunnel]`.
    pub tunnel: TunnelSection,
    /// `[[route]]`, in file order; prefixes are unique.
    pub routes: Vec<RouteEntry>,
    /// `[security]`.
    pub security: SecuritySection,
    /// `[dataplane]`.
    pub dataplane: DataplaneSection,
    /// `[routing]`.
    pub routing: RoutingSection,
    /// `[control]`.
    pub control: ControlSection,
    /// `[metrics]`.
    pub metrics: MetricsSection,
}

/// A key that takes effect only when the daemon starts: a reload (SIGHUP)
/// keeps its running value and logs that the file changed it. Every key not
/// listed in [`START_ONLY_KEYS`] is applied by a reload.
#[derive(Clone, Copy)]
pub struct StartOnlyKey {
    /// The key as the docs and the log name it: `tunnel.mtu`, or
    /// `[dataplane]` for a whole section.
    pub name: &'static str,
    changed: fn(&Config, &Config) -> bool,
    keep: fn(&mut Config, &Config),
}

impl fmt::Debug for StartOnlyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StartOnlyKey").field(&self.name).finish()
    }
}

macro_rules! start_only {
    ($name:literal, $($field:ident).+) => {
        StartOnlyKey {
            name: $name,
            changed: |a, b| a.$($field).+ != b.$($field).+,
            keep: |new, old| new.$($field).+ = Clone::clone(&old.$($field).+),
        }
    };
}

/// The keys that shape the device and the process: they take effect at the
/// next start, a reload keeps the running ones. The one list of them: the
/// reload, its log line and `tunl run --help` use it, and a test keeps
/// docs/operating.md naming each.
pub const START_ONLY_KEYS: &[StartOnlyKey] = &[
    start_only!("tunnel.name", tunnel.name),
    start_only!("tunnel.local", tunnel.local),
    start_only!("tunnel.address", tunnel.address),
    start_only!("tunnel.mtu", tunnel.mtu),
    start_only!("tunnel.persist", tunnel.persist),
    start_only!("security.user", security.user),
    start_only!("[dataplane]", dataplane),
    start_only!("[routing]", routing),
    start_only!("[control]", control),
    start_only!("[metrics]", metrics),
];

impl Config {
    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, else as
    /// [`Config::parse`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` is used in messages.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] when the text is not TOML;
    /// [`ConfigError::Invalid`] with every problem found otherwise.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let (config, route_keys, mut problems) = read::read(text, path)?;
        config.check(&route_keys, &mut problems);
        problems.into_result(path)?;
        Ok(config)
    }

    /// This config with its routes replaced by `routes`, validated as if the
    /// file had named them (the control socket's route commands use it).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming each route (`route[i]`) that breaks
    /// a rule.
    pub fn with_routes(&self, routes: Vec<RouteEntry>) -> Result<Config, ConfigError> {
        let config = Config {
            routes,
            ..self.clone()
        };
        config.validate()?;
        Ok(config)
    }

    /// What a reload (SIGHUP) runs on when `new` was read from the file:
    /// `new`, except for the [`START_ONLY_KEYS`], which keep this config's
    /// values; validated as a whole. Also returns the start-only keys that
    /// changed in the file and wait for a restart.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when `new` does not hold together with the
    /// running start-only keys (a route via the `tunnel.local` in use).
    pub fn reloaded(&self, mut new: Config) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let mut pending = Vec::new();
        for key in START_ONLY_KEYS {
            if (key.changed)(self, &new) {
                pending.push(key.name);
            }
            (key.keep)(&mut new, self);
        }
        new.path.clone_from(&self.path);
        new.validate()?;
        Ok((new, pending))
    }

    /// The error for `key` of this config: its value is not acceptable, in
    /// itself or on this host (the daemon's start checks use it too).
    pub fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            problems: vec![Problem {
                key: key.into(),
                problem: problem.into(),
            }],
        }
    }

    /// Checks every rule, the routes named `route[0]`, `route[1]`, ...
    fn validate(&self) -> Result<(), ConfigError> {
        let keys: Vec<usize> = (0..self.routes.len()).collect();
        let mut problems = Problems::default();
        self.check(&keys, &mut problems);
        problems.into_result(&self.path)
    }

    /// The encapsulation settings for a tunnel MTU.
    pub fn tunnel_settings(&self, mtu: u16) -> TunnelSettings {
        TunnelSettings {
            local: self.tunnel.local,
            ttl: self.tunnel.ttl,
            tos_inherit: self.tunnel.tos_inherit,
            pmtudisc: self.tunnel.pmtudisc,
            mtu,
        }
    }
}

/// A prefix with host bits set (`10.20.105.193/26`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{prefix} has host bits set (did you mean {network}?)")]
pub struct HostBitsError {
    /// The prefix as given.
    pub prefix: Ipv4Network,
    /// The network it probably meant.
    pub network: Ipv4Network,
}

/// Refuses a prefix with host bits set (`10.20.105.193/26`), naming the
/// network it probably meant.
///
/// # Errors
/// [`HostBitsError`] when an address bit past the prefix length is set.
pub fn check_prefix(n: &Ipv4Network) -> Result<(), HostBitsError> {
    let network = Ipv4Network::new(n.network(), n.prefix()).unwrap_or(*n);
    if network.ip() != n.ip() {
        return Err(HostBitsError {
            prefix: *n,
            network,
        });
    }
    Ok(())
}

/// Why a prefix as written was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// An address without `/LENGTH` (which would silently mean `/32`).
    #[error(
        "{0:?} has no prefix length: write {0}/32 for one address, or the block's length \
         (e.g. {0}/26)"
    )]
    NoLength(String),
    /// Not `ADDRESS/LENGTH` with an IPv4 address and a length 0..=32.
    #[error("{0:?} is not an IPv4 prefix (ADDRESS/LENGTH, the length 0..=32)")]
    Malformed(String),
}

/// Parses an IPv4 prefix that carries its length (`10.20.105.192/26`): an
/// address alone (`10.20.105.192`) is refused instead of being taken as
/// `/32`. Host bits are left to [`check_prefix`].
///
/// # Errors
/// [`PrefixError`]: no length, or not a prefix.
pub fn parse_prefix(text: &str) -> Result<Ipv4Network, PrefixError> {
    let malformed = || PrefixError::Malformed(text.to_owned());
    match text.split_once('/') {
        None if text.parse::<Ipv4Addr>().is_ok() => Err(PrefixError::NoLength(text.to_owned())),
        None => Err(malformed()),
        Some((addr, len)) => {
            let addr: Ipv4Addr = addr.parse().map_err(|_| malformed())?;
            let len = match len.parse::<u8>() {
                Ok(n) if len.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(malformed()),
            };
            Ipv4Network::new(addr, len).map_err(|_| malformed())
        }
    }
}

/// Deserializes a prefix as [`parse_prefix`] reads it (for the control
/// protocol's `prefix` fields).
///
/// # Errors
/// The deserializer's error carrying the [`PrefixError`] message.
pub fn deserialize_prefix<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Ipv4Network, D::Error> {
    crate::control::prefix::deserialize(d)
}

#[cfg(test)]
mod tests;
