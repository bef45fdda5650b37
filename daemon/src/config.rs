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
//! packet_tx = false           # AF_PACKET transmit
//! busy_poll_us = 0            # poll this long before sleeping
//! ```
//!
//! Parsing is strict: unknown keys are errors, and every semantic error names
//! the key it is about (`route[1].prefix: ...`). A reload (SIGHUP) applies
//! every key but the [`START_ONLY_KEYS`], which wait for a restart.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::num::NonZeroU8;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use serde::Deserialize;
use tunl_encap::{Ttl, TunnelSettings};

/// Default TUN device name, as Calico's kernel device.
pub const DEFAULT_DEVICE: &str = "tunl0";
/// The smallest MTU IPv4 allows (RFC 791): the floor of `tunnel.mtu`,
/// configured or derived from the underlay.
pub use tunl_encap::MIN_MTU;
/// The largest tunnel MTU: an outer packet must fit in 65535 bytes.
pub const MAX_MTU: u16 = 65535 - 20;
/// Default path of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tunl/tunl.sock";

/// A configuration error: the file could not be read, parsed or validated.
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
    /// The file is not valid TOML, or a key has the wrong type or is unknown.
    #[error("config {path}: {message}")]
    Parse {
        /// The path given.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A key has a value that parses but is not acceptable.
    #[error("config {path}: {key}: {problem}")]
    Invalid {
        /// The path given.
        path: PathBuf,
        /// The key, e.g. `route[2].via`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Reads `tunnel.ttl` straight into [`Ttl`]: `"inherit"` (copy the inner
/// TTL) or a fixed 1..=255. (`tunl-encap` has no serde.)
fn deserialize_ttl<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Ttl, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Word(String),
        Number(i64),
    }
    match Raw::deserialize(d)? {
        Raw::Word(w) if w == "inherit" => Ok(Ttl::Inherit),
        Raw::Word(w) => Err(serde::de::Error::custom(format!(
            "ttl must be \"inherit\" or a number 1..=255, not {w:?}"
        ))),
        Raw::Number(n) => u8::try_from(n)
            .ok()
            .and_then(NonZeroU8::new)
            .map(Ttl::Fixed)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "ttl must be \"inherit\" or a number 1..=255, not {n}"
                ))
            }),
    }
}

/// `[tunnel]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelSection {
    /// TUN device name.
    #[serde(default = "default_device")]
    pub name: String,
    /// This node's underlay address.
    pub local: Ipv4Addr,
    /// Tunnel MTU; `None` derives it from the underlay interface.
    pub mtu: Option<u16>,
    /// Address (with prefix length) put on the tunnel device.
    pub address: Option<Ipv4Network>,
    /// Outer TTL.
    #[serde(default, deserialize_with = "deserialize_ttl")]
    pub ttl: Ttl,
    /// Copy the inner DSCP to the outer header (`tos inherit`).
    #[serde(default)]
    pub tos_inherit: bool,
    /// Always set DF on outer packets (`pmtudisc`); tunl0 under Calico has `nopmtudisc`.
    #[serde(default)]
    pub pmtudisc: bool,
    /// This node's pod blocks.
    #[serde(default)]
    pub blocks: Vec<Ipv4Network>,
    /// Keep the device when tunl stops (`TUNSETPERSIST`), so routes others
    /// installed on it stay in the kernel while tunl restarts; `false`
    /// deletes it at exit, taking every route on it along.
    #[serde(default = "default_true")]
    pub persist: bool,
}

fn default_device() -> String {
    DEFAULT_DEVICE.to_owned()
}

/// One `[[route]]`: a remote block and the node that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// The remote block.
    pub prefix: Ipv4Network,
    /// The node owning it (its underlay address).
    pub via: Ipv4Addr,
}

/// `[security]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    /// IPIP sources accepted besides every route's `via`.
    #[serde(default)]
    pub allow: Vec<Ipv4Network>,
    /// Accept inner packets that are themselves IPIP.
    #[serde(default)]
    pub allow_nested: bool,
    /// Switch to this user (and its primary group) after setup, keeping
    /// only CAP_NET_ADMIN; `None` stays root with only CAP_NET_ADMIN.
    #[serde(default)]
    pub user: Option<String>,
}

/// `[metrics]`: the optional Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address to serve `GET /metrics` on; `None` serves nothing.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[dataplane]`: how the packet path runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    /// Encap (TUN to underlay) worker threads, each with its own TUN queue.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Use TUN offloads (TSO split on read, GRO on write).
    #[serde(default = "default_true")]
    pub offload: bool,
    /// TUN device transmit queue length.
    #[serde(default = "default_txqueuelen")]
    pub tx_queue_len: u32,
    /// Raw socket buffer sizes in bytes.
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer: usize,
    /// ICMP errors the daemon may send per second (frag-needed, unreachable).
    #[serde(default = "default_icmp_rate")]
    pub icmp_rate: u32,
    /// Send outer packets with AF_PACKET straight to the underlay device
    /// (the one holding `tunnel.local`), skipping the per-packet route
    /// lookup, netfilter and qdisc; next-hop MACs come from the neighbour
    /// table, unresolved ones go through the IP stack. Outer packets then
    /// bypass the node's OUTPUT firewall rules. Default false.
    #[serde(default)]
    pub packet_tx: bool,
    /// Microseconds a worker keeps polling its queues without sleeping after
    /// the last packet it handled. Each sleep costs a thread wakeup on the
    /// next packet (tens of µs on a VM), so this cuts the latency tunl adds,
    /// at the price of CPU: up to one core per worker while traffic lasts
    /// and for this long after. 0 (default) sleeps at once; at most
    /// 1 000 000.
    #[serde(default)]
    pub busy_poll_us: u32,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            workers: default_workers(),
            offload: true,
            tx_queue_len: default_txqueuelen(),
            socket_buffer: default_socket_buffer(),
            icmp_rate: default_icmp_rate(),
            packet_tx: false,
            busy_poll_us: 0,
        }
    }
}

/// The longest `dataplane.busy_poll_us` accepted: one second.
pub const MAX_BUSY_POLL_US: u32 = 1_000_000;

fn default_workers() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_txqueuelen() -> u32 {
    1000
}
fn default_socket_buffer() -> usize {
    8 << 20
}
fn default_icmp_rate() -> u32 {
    100
}

/// `[routing]`: which kernel routes tunl follows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// The kernel routing table whose routes on the device tunl mirrors,
    /// and where it installs its own (`[[route]]`, the control socket).
    #[serde(default = "default_table")]
    pub table: u32,
    /// Receive buffer of the netlink socket that follows route changes, in
    /// bytes (the kernel doubles it). Large enough that a burst of changes
    /// does not overrun it; an overrun costs a full resynchronisation.
    /// Tests make it tiny to force overruns.
    #[serde(default = "default_listen_buffer")]
    pub listen_buffer: usize,
}

impl Default for RoutingSection {
    fn default() -> Self {
        RoutingSection {
            table: default_table(),
            listen_buffer: default_listen_buffer(),
        }
    }
}

/// The kernel's main routing table.
pub const MAIN_TABLE: u32 = 254;

fn default_table() -> u32 {
    MAIN_TABLE
}
fn default_listen_buffer() -> usize {
    8 << 20
}

/// `[control]`: the Unix control socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Path of the control socket.
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            socket: default_control_socket(),
        }
    }
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tunnel: TunnelSection,
    #[serde(default)]
    route: Vec<RouteEntry>,
    #[serde(default)]
    security: SecuritySection,
    #[serde(default)]
    dataplane: DataplaneSection,
    #[serde(default)]
    routing: RoutingSection,
    #[serde(default)]
    control: ControlSection,
    #[serde(default)]
    metrics: MetricsSection,
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
    /// [`ConfigError::Read`] when the file cannot be read,
    /// [`ConfigError::Parse`] and [`ConfigError::Invalid`] as [`Config::parse`].
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
    /// [`ConfigError::Parse`] when the text is not valid TOML or a key is
    /// unknown or of the wrong type; [`ConfigError::Invalid`] naming the
    /// first key whose value is not acceptable.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let config = Config {
            path: path.to_owned(),
            tunnel: raw.tunnel,
            routes: raw.route,
            security: raw.security,
            dataplane: raw.dataplane,
            routing: raw.routing,
            control: raw.control,
            metrics: raw.metrics,
        };
        config.validate()?;
        Ok(config)
    }

    /// This config with its routes replaced by `routes`, validated as if the
    /// file had named them (the control socket's route commands use it).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first route (`route[i]`) that
    /// breaks a rule.
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
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.tunnel;
        let bad = |key: &str, problem: String| Err(self.invalid(key, problem));
        if t.name.is_empty()
            || t.name.len() > 15
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return bad(
                "tunnel.name",
                format!(
                    "{:?} is not a valid interface name (1 to 15 characters: letters, digits, - _ .)",
                    t.name
                ),
            );
        }
        if !is_unicast(t.local) {
            return bad(
                "tunnel.local",
                format!("{} is not a unicast host address", t.local),
            );
        }
        if let Some(mtu) = t.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return bad(
                    "tunnel.mtu",
                    format!("{mtu} is out of range {MIN_MTU}..={MAX_MTU}"),
                );
            }
        }
        for (i, block) in t.blocks.iter().enumerate() {
            self.check_network(&format!("tunnel.blocks[{i}]"), block)?;
        }
        let mut seen: HashMap<Ipv4Network, usize> = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("route[{i}]");
            self.check_network(&format!("{key}.prefix"), &r.prefix)?;
            if let Some(j) = seen.insert(r.prefix, i) {
                return bad(
                    &format!("{key}.prefix"),
                    format!("duplicate prefix {}: also route[{j}]", r.prefix),
                );
            }
            if !is_unicast(r.via) {
                return bad(
                    &format!("{key}.via"),
                    format!("{} is not a unicast host address", r.via),
                );
            }
            if r.via == t.local {
                return bad(
                    &format!("{key}.via"),
                    format!("{} is this node's own address (tunnel.local)", r.via),
                );
            }
            if let Some(b) = t.blocks.iter().find(|b| b.overlaps(r.prefix)) {
                return bad(
                    &format!("{key}.prefix"),
                    format!("{} overlaps this node's own block {b}", r.prefix),
                );
            }
        }
        // A next hop must be an underlay address, never inside a pod block
        // (ours or a route's): that would route the tunnel into itself.
        for (i, r) in self.routes.iter().enumerate() {
            let pod_block = t
                .blocks
                .iter()
                .chain(self.routes.iter().map(|r| &r.prefix))
                .find(|b| b.contains(r.via));
            if let Some(b) = pod_block {
                return bad(
                    &format!("route[{i}].via"),
                    format!(
                        "{} is inside the pod block {b}; `via` must be a node's underlay address",
                        r.via
                    ),
                );
            }
        }
        for (i, a) in self.security.allow.iter().enumerate() {
            self.check_network(&format!("security.allow[{i}]"), a)?;
        }
        let d = &self.dataplane;
        if !(1..=64).contains(&d.workers) {
            return bad(
                "dataplane.workers",
                format!("{} is out of range 1..=64", d.workers),
            );
        }
        if d.tx_queue_len == 0 {
            return bad("dataplane.tx_queue_len", "must be at least 1".to_owned());
        }
        if let Some(user) = &self.security.user {
            if user.is_empty() || user.contains(['/', ':', '\0']) {
                return bad("security.user", format!("{user:?} is not a user name"));
            }
        }
        if d.icmp_rate == 0 {
            return bad(
                "dataplane.icmp_rate",
                "must be at least 1 (per second)".to_owned(),
            );
        }
        let r = &self.routing;
        if r.table == 0 || r.table == 255 {
            return bad(
                "routing.table",
                format!(
                    "{} is not a table for tunl's routes (0 is unspecified, 255 the local table)",
                    r.table
                ),
            );
        }
        if r.listen_buffer == 0 {
            return bad(
                "routing.listen_buffer",
                "must be at least 1 (bytes)".to_owned(),
            );
        }
        if d.busy_poll_us > MAX_BUSY_POLL_US {
            return bad(
                "dataplane.busy_poll_us",
                format!(
                    "{} is out of range 0..={MAX_BUSY_POLL_US} (µs)",
                    d.busy_poll_us
                ),
            );
        }
        Ok(())
    }

    fn check_network(&self, key: &str, n: &Ipv4Network) -> Result<(), ConfigError> {
        check_prefix(n).map_err(|e| self.invalid(key, e.to_string()))
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

fn is_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
[tunnel]
name = "tunl0"
local = "172.16.35.4"
mtu = 1480
address = "10.20.42.0/32"
ttl = "inherit"
blocks = ["10.20.42.0/26"]

[[route]]
prefix = "10.20.105.192/26"
via = "172.16.36.5"

[security]
allow = ["172.16.0.0/16"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn invalid_key(text: &str) -> (String, String) {
        match parse(text) {
            Err(ConfigError::Invalid { key, problem, .. }) => (key, problem),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn issue_example_parses() {
        let c = parse(SEED).unwrap();
        assert_eq!(c.tunnel.name, "tunl0");
        assert_eq!(c.tunnel.local, Ipv4Addr::new(172, 16, 35, 4));
        assert_eq!(c.tunnel.mtu, Some(1480));
        assert_eq!(c.tunnel.ttl, Ttl::Inherit);
        assert_eq!(c.tunnel.blocks, vec!["10.20.42.0/26".parse().unwrap()]);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].via, Ipv4Addr::new(172, 16, 36, 5));
        assert_eq!(c.security.allow.len(), 1);
        assert_eq!(c.dataplane.workers, 1);
    }

    #[test]
    fn shipped_example_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/tunl.toml"
        ));
        let c = Config::load(path).unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.tunnel.blocks.len(), 1);
    }

    #[test]
    fn defaults() {
        let c = parse("[tunnel]\nlocal = \"172.16.35.4\"\n").unwrap();
        assert_eq!(c.tunnel.name, DEFAULT_DEVICE);
        assert_eq!(c.tunnel.mtu, None);
        assert!(c.routes.is_empty());
        assert!(!c.security.allow_nested);
        assert_eq!(c.control.socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.security.user, None);
    }

    #[test]
    fn metrics_user_and_with_routes() {
        let text = format!("{SEED}user = \"tunl\"\n\n[metrics]\nlisten = \"127.0.0.1:9099\"\n");
        let c = parse(&text).unwrap();
        assert_eq!(c.security.user.as_deref(), Some("tunl"));
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9099".parse().unwrap()));
        assert!(parse(&text.replace("127.0.0.1:9099", "localhost")).is_err());
        let ok = RouteEntry {
            prefix: "10.20.106.0/26".parse().unwrap(),
            via: Ipv4Addr::new(172, 16, 37, 6),
        };
        assert_eq!(c.with_routes(vec![ok]).unwrap().routes, vec![ok]);
        let into_own = RouteEntry {
            prefix: "10.20.42.0/27".parse().unwrap(),
            ..ok
        };
        let err = c.with_routes(vec![ok, into_own]).unwrap_err().to_string();
        assert!(
            err.contains("route[1].prefix") && err.contains("own block"),
            "{err}"
        );
    }

    #[test]
    fn fixed_ttl() {
        let c = parse("[tunnel]\nlocal = \"172.16.35.4\"\nttl = 64\n").unwrap();
        assert_eq!(c.tunnel.ttl, Ttl::Fixed(NonZeroU8::new(64).unwrap()));
        for bad in ["0", "256", "\"always\"", "-1"] {
            let text = format!("[tunnel]\nlocal = \"172.16.35.4\"\nttl = {bad}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("ttl"), "{err}");
        }
    }

    #[test]
    fn missing_local_names_the_key() {
        let err = parse("[tunnel]\nname = \"tunl0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("local"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse("[tunnel]\nlocal = \"172.16.35.4\"\nmut = 1400\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mut"), "{err}");
    }

    #[test]
    fn host_bits_in_prefix() {
        let text = SEED.replace("10.20.105.192/26", "10.20.105.193/26");
        let (key, problem) = invalid_key(&text);
        assert_eq!(key, "route[0].prefix");
        assert!(problem.contains("host bits"), "{problem}");
        assert!(problem.contains("10.20.105.192/26"), "{problem}");
    }

    #[test]
    fn via_inside_a_pod_block() {
        let text = SEED.replace("via = \"172.16.36.5\"", "via = \"10.20.42.7\"");
        let (key, problem) = invalid_key(&text);
        assert_eq!(key, "route[0].via");
        assert!(problem.contains("10.20.42.0/26"), "{problem}");
        let text = SEED.replace("via = \"172.16.36.5\"", "via = \"10.20.105.200\"");
        assert_eq!(invalid_key(&text).0, "route[0].via");
    }

    #[test]
    fn duplicate_prefixes() {
        let text =
            format!("{SEED}\n[[route]]\nprefix = \"10.20.105.192/26\"\nvia = \"172.16.37.6\"\n");
        let (key, problem) = invalid_key(&text);
        assert_eq!(key, "route[1].prefix");
        assert!(problem.contains("duplicate"), "{problem}");
    }

    #[test]
    fn mtu_range() {
        let (key, _) = invalid_key(&SEED.replace("mtu = 1480", "mtu = 67"));
        assert_eq!(key, "tunnel.mtu");
        assert!(parse(&SEED.replace("mtu = 1480", "mtu = 68")).is_ok());
        assert!(parse(&SEED.replace("mtu = 1480", "mtu = 70000")).is_err());
    }

    #[test]
    fn reload_keeps_the_keys_that_need_a_restart() {
        let old = parse(SEED).unwrap();
        let edited = SEED
            .replace("172.16.35.4", "172.16.35.9")
            .replace("mtu = 1480", "mtu = 1400")
            .replace("10.20.105.192/26", "10.20.106.0/26")
            .replace("ttl = \"inherit\"", "ttl = 64");
        let new = parse(&format!("{edited}\n[dataplane]\nworkers = 2\n")).unwrap();
        let (running, pending) = old.reloaded(new).unwrap();
        assert_eq!(pending, ["tunnel.local", "tunnel.mtu", "[dataplane]"]);
        assert_eq!(
            running.tunnel.local, old.tunnel.local,
            "local waits for a restart"
        );
        assert_eq!(running.tunnel.mtu, Some(1480));
        assert_eq!(running.dataplane.workers, 1);
        assert_eq!(running.routes[0].prefix, "10.20.106.0/26".parse().unwrap());
        assert_eq!(running.tunnel.ttl, Ttl::Fixed(NonZeroU8::new(64).unwrap()));
        // Validated against the address still in use: a route via it is refused.
        let via_self = parse(
            &SEED
                .replace("172.16.35.4", "172.16.35.9")
                .replace("via = \"172.16.36.5\"", "via = \"172.16.35.4\""),
        )
        .unwrap();
        let (key, _) = match old.reloaded(via_self) {
            Err(ConfigError::Invalid { key, problem, .. }) => (key, problem),
            other => panic!("expected an invalid-config error, got {other:?}"),
        };
        assert_eq!(key, "route[0].via");
    }

    #[test]
    fn busy_poll_range() {
        let text = format!("{SEED}\n[dataplane]\nbusy_poll_us = 200\n");
        assert_eq!(parse(&text).unwrap().dataplane.busy_poll_us, 200);
        assert_eq!(parse(SEED).unwrap().dataplane.busy_poll_us, 0);
        let (key, problem) = invalid_key(&text.replace("200", "1000001"));
        assert_eq!(key, "dataplane.busy_poll_us");
        assert!(problem.contains("out of range"), "{problem}");
    }

    #[test]
    fn route_into_own_block() {
        let text =
            format!("{SEED}\n[[route]]\nprefix = \"10.20.42.0/27\"\nvia = \"172.16.37.6\"\n");
        let (key, problem) = invalid_key(&text);
        assert_eq!(key, "route[1].prefix");
        assert!(problem.contains("own block"), "{problem}");
    }

    #[test]
    fn bad_local_and_name() {
        let (key, _) = invalid_key(&SEED.replace("172.16.35.4", "0.0.0.0"));
        assert_eq!(key, "tunnel.local");
        let (key, _) = invalid_key(&SEED.replace("\"tunl0\"", "\"a-very-long-device-name\""));
        assert_eq!(key, "tunnel.name");
        let (key, _) = invalid_key(&SEED.replace("via = \"172.16.36.5\"", "via = \"172.16.35.4\""));
        assert_eq!(key, "route[0].via");
    }

    #[test]
    fn malformed_values_are_parse_errors() {
        for (from, to) in [
            ("\"172.16.35.4\"", "\"172.16.35\""),
            ("\"10.20.105.192/26\"", "\"10.20.105.192/33\""),
        ] {
            assert!(matches!(
                parse(&SEED.replace(from, to)),
                Err(ConfigError::Parse { .. })
            ));
        }
    }
    #[test]
    fn ttl_reads_into_the_encap_ttl_and_prints_as_written() {
        assert_eq!(parse(SEED).unwrap().tunnel.ttl, Ttl::Inherit);
        assert_eq!(Ttl::Inherit.to_string(), "inherit");
        let c = parse("[tunnel]\nlocal = \"172.16.35.4\"\nttl = 255\n").unwrap();
        assert_eq!(c.tunnel.ttl.to_string(), "255");
        assert_eq!(
            c.tunnel_settings(1480).ttl,
            Ttl::Fixed(NonZeroU8::new(255).unwrap())
        );
    }

    /// A config in which every key differs from SEED's.
    const EVERY_KEY_CHANGED: &str = r#"
[tunnel]
name = "tunl7"
local = "172.16.35.9"
mtu = 1400
address = "10.20.43.0/32"
ttl = 64
tos_inherit = true
pmtudisc = true
blocks = ["10.20.43.0/26"]
persist = false

[routing]
table = 100

[[route]]
prefix = "10.20.106.0/26"
via = "172.16.37.6"

[security]
allow = ["172.17.0.0/16"]
allow_nested = true
user = "tunl"

[control]
socket = "/run/tunl/other.sock"

[metrics]
listen = "127.0.0.1:9100"

[dataplane]
workers = 2
"#;

    #[test]
    fn a_reload_keeps_exactly_the_start_only_keys() {
        let old = parse(SEED).unwrap();
        let new = parse(EVERY_KEY_CHANGED).unwrap();
        let (running, pending) = old.reloaded(new.clone()).unwrap();
        let names: Vec<&str> = START_ONLY_KEYS.iter().map(|k| k.name).collect();
        assert_eq!(pending, names, "every start-only key changed");
        for key in START_ONLY_KEYS {
            assert!(!(key.changed)(&old, &running), "{} was applied", key.name);
        }
        // Everything else is the new file's.
        let (t, n) = (&running.tunnel, &new.tunnel);
        assert_eq!(t.ttl, n.ttl);
        assert_eq!(t.tos_inherit, n.tos_inherit);
        assert_eq!(t.pmtudisc, n.pmtudisc);
        assert_eq!(t.blocks, n.blocks);
        assert_eq!(running.routes, new.routes);
        assert_eq!(running.security.allow, new.security.allow);
        assert_eq!(running.security.allow_nested, new.security.allow_nested);
        let (unchanged, none) = old.reloaded(parse(SEED).unwrap()).unwrap();
        assert!(none.is_empty(), "{none:?}");
        assert_eq!(unchanged.tunnel.name, old.tunnel.name);
    }

    #[test]
    fn operating_md_names_every_start_only_key() {
        let doc = include_str!("../../docs/operating.md");
        for key in START_ONLY_KEYS {
            assert!(
                doc.contains(&format!("`{}`", key.name)),
                "docs/operating.md does not name {}",
                key.name
            );
        }
    }
}
