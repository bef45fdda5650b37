//! Network-namespace topologies: the seed article's Calico IPIP cluster, built
//! in network namespaces for tunl's end-to-end tests, `tunl lab` and
//! `tunl bench`.
//!
//! A [`Cluster`] is a set of **node** namespaces on one L2 underlay segment
//! (a veth pair for two nodes, otherwise a bridge in a separate "switch"
//! namespace), each owning a **block** (a /26) and some **pod** namespaces
//! wired the way Calico wires them:
//!
//! ```text
//!  tunl-<tag>-demo-hello-perf       tunl-<tag>-node2.perf            tunl-<tag>-node1.sit
//!  eth0 10.20.105.215/32  ───────  cali4bb1efe70a2                  eth0 172.16.35.4/16
//!  169.254.1.1 dev eth0            (ee:ee:ee:ee:ee:ee, proxy_arp)    │
//!  default via 169.254.1.1         eth0 172.16.36.5/16  ─────────────┘ (veth or bridge)
//! ```
//!
//! Between blocks the builder installs nothing ([`Overlay::None`], the caller
//! runs tunl daemons), plain routes over the underlay ([`Overlay::Direct`],
//! the limit of the machine) or kernel VXLAN the way Calico's VXLAN mode does
//! it ([`Overlay::Vxlan`], the kernel-tunnel reference).
//!
//! Every namespace is named `tunl-<tag>-<node or pod name>`, with a tag that
//! is unique per cluster unless the caller fixes one, so parallel tests never
//! collide. Dropping the [`Cluster`] (also while unwinding from a panic) kills
//! every process it spawned and deletes every namespace it created;
//! [`Cluster::keep`] disarms that and [`teardown`] undoes a kept cluster.
//!
//! The builder drives `ip` (iproute2) and `/proc/sys` as subprocesses; the
//! measurement helpers run `ping` and `iperf3`. It needs root (precisely
//! `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use thiserror::Error;
use tracing::{debug, warn};

/// Prefix length of every node's underlay address: all nodes are on-link.
pub const UNDERLAY_PREFIX_LEN: u8 = 16;
/// The pods' default gateway, answered by proxy ARP on the node's `cali*` veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// MAC address of every node-side `cali*` veth, as Calico sets it.
pub const CALI_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// Name of the kernel VXLAN device in [`Overlay::Vxlan`] mode.
pub const VXLAN_DEVICE: &str = "vxlan.calico";
/// VXLAN network identifier, as Calico uses it.
pub const VXLAN_VNI: u32 = 4096;
/// VXLAN UDP destination port, as Calico uses it.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes an IPIP outer header adds.
pub const IPIP_OVERHEAD: u16 = 20;
/// Bytes VXLAN over IPv4 adds (outer IP, UDP, VXLAN, inner Ethernet).
pub const VXLAN_OVERHEAD: u16 = 50;

/// Directory where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// How long a process gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_millis(1000);
/// How long an iperf3 server may take to start listening.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// Counter that makes automatic tags unique within this process.
static NEXT_TAG: AtomicU32 = AtomicU32::new(0);
/// Counter that spreads iperf3 ports so concurrent runs do not collide.
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// Errors of building, using or tearing down a [`Cluster`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The process lacks the privileges to create namespaces and links.
    #[error("needs root or CAP_NET_ADMIN (plus CAP_SYS_ADMIN for `ip netns add`): run with sudo")]
    NotPrivileged,
    /// The cluster spec is inconsistent.
    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),
    /// A namespace of the cluster already exists and `replace_existing` is off.
    #[error(
        "network namespace {0} already exists (left over from an earlier run?): \
         set replace_existing or run `tunl lab down`"
    )]
    NamespaceExists(String),
    /// A node, pod or namespace name that is not part of this cluster.
    #[error("no {kind} named {name:?} in this cluster")]
    NotFound {
        /// What was looked up ("node", "pod", "namespace", "process").
        kind: &'static str,
        /// The name that was not found.
        name: String,
    },
    /// A program could not be started.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not be started.
        source: io::Error,
    },
    /// A command exited with a failure status.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr (or its error report).
        stderr: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The output of a measurement tool could not be understood.
    #[error("could not parse {tool} output: {detail}")]
    Parse {
        /// The tool ("ping", "iperf3").
        tool: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Something did not happen within its bound.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// How blocks on different nodes reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overlay {
    /// Nothing between blocks: the caller runs tunl daemons, which create the
    /// tunnel device and the block routes themselves.
    #[default]
    None,
    /// No tunnel: `BLOCK via NODE dev eth0` routes on every node (the limit of
    /// the machine).
    Direct,
    /// Kernel VXLAN as Calico's VXLAN mode sets it up (`vxlan.calico`, VNI
    /// 4096, port 4789, a VTEP address per node, static neigh and fdb
    /// entries): the kernel-tunnel reference for benchmarks.
    Vxlan,
}

impl std::fmt::Display for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overlay::None => "none",
            Overlay::Direct => "direct",
            Overlay::Vxlan => "vxlan",
        })
    }
}

impl std::str::FromStr for Overlay {
    type Err = TopologyError;

    /// Parses `none`, `direct` or `vxlan` (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Overlay::None),
            "direct" => Ok(Overlay::Direct),
            "vxlan" => Ok(Overlay::Vxlan),
            _ => Err(TopologyError::InvalidSpec(format!(
                "unknown overlay {s:?}: expected none, direct or vxlan"
            ))),
        }
    }
}

/// What to build: nodes, their blocks and pods, the underlay and the overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Namespace tag: `None` for a fresh unique one (pid + counter), or a
    /// fixed one such as `"lab"` (ASCII letters, digits and `_` only).
    pub tag: Option<String>,
    /// The nodes, in order.
    pub nodes: Vec<NodeSpec>,
    /// MTU of every node's `eth0`.
    pub underlay_mtu: u16,
    /// What the builder installs between blocks.
    pub overlay: Overlay,
    /// With a fixed tag: delete namespaces left over from an earlier run with
    /// that tag instead of failing with [`TopologyError::NamespaceExists`].
    pub replace_existing: bool,
}

/// One node: a namespace with an underlay `eth0` and a block of pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node name, e.g. `node1.sit` (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Underlay address, on-link (/16) with the other nodes'.
    pub underlay: Ipv4Addr,
    /// The node's block, e.g. `10.20.42.0/26`.
    pub block: Ipv4Network,
    /// The node's pods; their addresses lie inside `block`.
    pub pods: Vec<PodSpec>,
}

/// One pod: a namespace whose `eth0` is `ip/32`, wired to its node by a veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name, e.g. `demo-hello-sit` (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// Name of the node-side veth, e.g. `cali04736ec14ce` (at most 15 bytes).
    pub veth: String,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self::seed()
    }
}

impl ClusterSpec {
    /// The seed article's cluster: `node1.sit` (172.16.35.4, block
    /// 10.20.42.0/26, pod `demo-hello-sit` 10.20.42.31 via `cali04736ec14ce`)
    /// and `node2.perf` (172.16.36.5, block 10.20.105.192/26, pod
    /// `demo-hello-perf` 10.20.105.215 via `cali4bb1efe70a2`), underlay MTU
    /// 1500, [`Overlay::None`], a fresh tag.
    pub fn seed() -> Self {
        let node = |name: &str, underlay, block, pod: PodSpec| NodeSpec {
            name: name.to_owned(),
            underlay,
            block,
            pods: vec![pod],
        };
        let pod = |name: &str, ip, veth: &str| PodSpec {
            name: name.to_owned(),
            ip,
            veth: veth.to_owned(),
        };
        Self {
            tag: None,
            nodes: vec![
                node(
                    "node1.sit",
                    Ipv4Addr::new(172, 16, 35, 4),
                    net(Ipv4Addr::new(10, 20, 42, 0), 26),
                    pod(
                        "demo-hello-sit",
                        Ipv4Addr::new(10, 20, 42, 31),
                        "cali04736ec14ce",
                    ),
                ),
                node(
                    "node2.perf",
                    Ipv4Addr::new(172, 16, 36, 5),
                    net(Ipv4Addr::new(10, 20, 105, 192), 26),
                    pod(
                        "demo-hello-perf",
                        Ipv4Addr::new(10, 20, 105, 215),
                        "cali4bb1efe70a2",
                    ),
                ),
            ],
            underlay_mtu: 1500,
            overlay: Overlay::None,
            replace_existing: false,
        }
    }

    /// A generated cluster: nodes `node1`..`nodeN` at 172.16.(35+i).(4+i)
    /// (i from 0), owning consecutive /26 blocks from 10.20.0.0, each with
    /// pods `nodeK-pod1`.. at the block's addresses .2, .3, ... and veths
    /// named by [`veth_name`]. Underlay MTU 1500, [`Overlay::None`].
    ///
    /// # Panics
    /// If `nodes` is 0 or more than 200, or `pods_per_node` more than 60.
    pub fn generated(nodes: usize, pods_per_node: usize) -> Self {
        assert!(
            (1..=200).contains(&nodes),
            "generated clusters have 1 to 200 nodes"
        );
        assert!(
            pods_per_node <= 60,
            "generated clusters have at most 60 pods per node"
        );
        let nodes = (0..nodes)
            .map(|i| {
                let name = format!("node{}", i + 1);
                let base = u32::from(Ipv4Addr::new(10, 20, 0, 0)) + 64 * i as u32;
                let pods = (0..pods_per_node)
                    .map(|k| {
                        PodSpec::new(format!("{name}-pod{}", k + 1), (base + 2 + k as u32).into())
                    })
                    .collect();
                NodeSpec {
                    underlay: Ipv4Addr::new(172, 16, 35 + i as u8, 4 + i as u8),
                    block: net(base.into(), 26),
                    pods,
                    name,
                }
            })
            .collect();
        Self {
            tag: None,
            nodes,
            underlay_mtu: 1500,
            overlay: Overlay::None,
            replace_existing: false,
        }
    }

    /// Sets the overlay.
    pub fn with_overlay(mut self, overlay: Overlay) -> Self {
        self.overlay = overlay;
        self
    }

    /// Fixes the tag (e.g. `"lab"`); see [`ClusterSpec::tag`].
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Sets the underlay MTU.
    pub fn with_underlay_mtu(mut self, mtu: u16) -> Self {
        self.underlay_mtu = mtu;
        self
    }

    /// Sets [`ClusterSpec::replace_existing`].
    pub fn with_replace_existing(mut self, replace: bool) -> Self {
        self.replace_existing = replace;
        self
    }

    /// MTU of the pod veths: the underlay MTU minus the tunnel overhead
    /// (IPIP's 20 bytes, or VXLAN's 50 in [`Overlay::Vxlan`] mode, as Calico
    /// sets it).
    pub fn pod_mtu(&self) -> u16 {
        let overhead = match self.overlay {
            Overlay::Vxlan => VXLAN_OVERHEAD,
            _ => IPIP_OVERHEAD,
        };
        self.underlay_mtu.saturating_sub(overhead)
    }

    fn validate(&self) -> Result<(), TopologyError> {
        let bad = |msg: String| Err(TopologyError::InvalidSpec(msg));
        if let Some(tag) = &self.tag
            && (tag.is_empty()
                || tag.len() > 32
                || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return bad(format!(
                "tag {tag:?} must be 1-32 ASCII letters, digits or '_'"
            ));
        }
        if self.nodes.is_empty() {
            return bad("a cluster needs at least one node".into());
        }
        if !(576..=9000).contains(&self.underlay_mtu) {
            return bad(format!(
                "underlay MTU {} is outside 576..=9000",
                self.underlay_mtu
            ));
        }
        let first = net(self.nodes[0].underlay, UNDERLAY_PREFIX_LEN);
        let mut names = HashSet::new();
        let mut underlays = HashSet::new();
        let mut ips = HashSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            check_name("node", &node.name)?;
            if node.name == "switch" || !names.insert(node.name.as_str()) {
                return bad(format!("node name {:?} is reserved or repeated", node.name));
            }
            if !first.contains(node.underlay) || !underlays.insert(node.underlay) {
                return bad(format!(
                    "node {} underlay {} must be unique and inside {first}",
                    node.name, node.underlay
                ));
            }
            for other in &self.nodes[..i] {
                if other.block.overlaps(node.block) {
                    return bad(format!(
                        "blocks {} ({}) and {} ({}) overlap",
                        other.block, other.name, node.block, node.name
                    ));
                }
            }
            let mut veths = HashSet::new();
            for pod in &node.pods {
                check_name("pod", &pod.name)?;
                if pod.name == "switch" || !names.insert(pod.name.as_str()) {
                    return bad(format!("pod name {:?} is reserved or repeated", pod.name));
                }
                if !node.block.contains(pod.ip) || !ips.insert(pod.ip) {
                    return bad(format!(
                        "pod {} address {} must be unique and inside block {}",
                        pod.name, pod.ip, node.block
                    ));
                }
                if self.overlay == Overlay::Vxlan && pod.ip == node.block.network() {
                    return bad(format!(
                        "pod {} uses {}, the node's VTEP address in VXLAN mode",
                        pod.name, pod.ip
                    ));
                }
                let veth_ok = !pod.veth.is_empty()
                    && pod.veth.len() <= 15
                    && pod
                        .veth
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                    && !["eth0", "lo", "all", "default", ".", "..", VXLAN_DEVICE]
                        .contains(&pod.veth.as_str());
                if !veth_ok || !veths.insert(pod.veth.as_str()) {
                    return bad(format!(
                        "veth name {:?} of pod {} is invalid or repeated",
                        pod.veth, pod.name
                    ));
                }
            }
        }
        Ok(())
    }
}

impl NodeSpec {
    /// A node without pods.
    pub fn new(name: impl Into<String>, underlay: Ipv4Addr, block: Ipv4Network) -> Self {
        Self {
            name: name.into(),
            underlay,
            block,
            pods: Vec::new(),
        }
    }

    /// Adds a pod.
    pub fn with_pod(mut self, pod: PodSpec) -> Self {
        self.pods.push(pod);
        self
    }
}

impl PodSpec {
    /// A pod whose veth is named by [`veth_name`].
    pub fn new(name: impl Into<String>, ip: Ipv4Addr) -> Self {
        let name = name.into();
        let veth = veth_name(&name);
        Self { name, ip, veth }
    }
}

/// The node-side veth name for a pod, the way Calico names them: `cali`
/// followed by 11 hex digits of a hash of the pod name (FNV-1a, stable across
/// runs and builds).
pub fn veth_name(pod: &str) -> String {
    let hash = pod.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("cali{:011x}", hash >> 20)
}

/// A node of a built cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Node name, e.g. `node1.sit`.
    pub name: String,
    /// Its namespace, e.g. `tunl-<tag>-node1.sit`.
    pub netns: String,
    /// Underlay address of its `eth0` (/16).
    pub underlay: Ipv4Addr,
    /// Its block.
    pub block: Ipv4Network,
    /// Its VTEP address on `vxlan.calico` (the block's first address) in
    /// [`Overlay::Vxlan`] mode.
    pub vtep: Option<Ipv4Addr>,
    /// Its pods.
    pub pods: Vec<Pod>,
}

/// A pod of a built cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Pod name, e.g. `demo-hello-sit`.
    pub name: String,
    /// Its namespace, e.g. `tunl-<tag>-demo-hello-sit`.
    pub netns: String,
    /// Its address (`eth0`, /32).
    pub ip: Ipv4Addr,
    /// Name of the node-side veth.
    pub veth: String,
    /// Name of its node.
    pub node: String,
}

/// Where a spawned process's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProcessOutput {
    /// Discarded.
    #[default]
    Null,
    /// This process's stdout and stderr.
    Inherit,
    /// Appended (both streams) to this file, created if missing.
    File(PathBuf),
    /// Pipes; read them from the [`Child`] taken with [`Cluster::take_child`].
    Piped,
}

/// What `ping` reported.
#[derive(Debug, Clone, PartialEq)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// TTL of each reply, in order.
    pub ttls: Vec<u8>,
    /// Round-trip time of each reply, in milliseconds.
    pub rtts_ms: Vec<f64>,
    /// Everything ping printed.
    pub raw: String,
}

impl PingResult {
    /// Whether every request got a reply (and at least one was sent).
    pub fn all_replied(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }
}

/// What an `iperf3` TCP run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    /// Goodput at the receiver, bits per second, all streams.
    pub bits_per_second: f64,
    /// TCP retransmissions at the sender, all streams.
    pub retransmits: u64,
    /// Bytes received, all streams.
    pub bytes: u64,
}

/// What an `iperf3` UDP run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpResult {
    /// Datagrams received per second.
    pub packets_per_second_received: f64,
    /// Percentage of datagrams lost.
    pub lost_percent: f64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Datagrams lost.
    pub packets_lost: u64,
    /// Bits per second received (payload).
    pub bits_per_second_received: f64,
}

/// A built cluster of namespaces. Dropping it kills the processes it spawned
/// and deletes its namespaces, unless [`Cluster::keep`] disarmed that.
#[derive(Debug)]
pub struct Cluster {
    tag: String,
    overlay: Overlay,
    underlay_mtu: u16,
    pod_mtu: u16,
    nodes: Vec<Node>,
    switch: Option<String>,
    /// Namespaces created so far, in creation order.
    namespaces: Vec<String>,
    /// Processes spawned and not yet reaped or taken.
    children: Mutex<Vec<Child>>,
    armed: bool,
}

impl Cluster {
    /// Builds the cluster. Checks privileges first; on any error, whatever
    /// was built so far is removed again.
    pub fn build(spec: ClusterSpec) -> Result<Cluster, TopologyError> {
        check_privileges()?;
        spec.validate()?;
        let fixed_tag = spec.tag.is_some();
        let tag = spec.tag.clone().unwrap_or_else(|| {
            let n = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
            format!("{}x{n}", std::process::id())
        });
        let nodes = node_plan(&spec, &tag);
        let switch = (nodes.len() != 2).then(|| ns_name(&tag, "switch"));

        // An automatic tag names only namespaces of a dead earlier process
        // with our pid: always safe to replace.
        let leftovers = tagged_namespaces(&tag)?;
        if let Some(first) = leftovers.first() {
            if fixed_tag && !spec.replace_existing {
                return Err(TopologyError::NamespaceExists(first.clone()));
            }
            warn!(
                tag,
                count = leftovers.len(),
                "replacing left-over namespaces"
            );
            teardown(&tag)?;
        }

        let mut cluster = Cluster {
            tag,
            overlay: spec.overlay,
            underlay_mtu: spec.underlay_mtu,
            pod_mtu: spec.pod_mtu(),
            nodes,
            switch,
            namespaces: Vec::new(),
            children: Mutex::new(Vec::new()),
            armed: true,
        };
        cluster.wire()?;
        debug!(
            tag = cluster.tag,
            nodes = cluster.nodes.len(),
            "cluster built"
        );
        Ok(cluster)
    }

    /// The cluster's tag (the `<tag>` in `tunl-<tag>-...`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The overlay the builder installed.
    pub fn overlay(&self) -> Overlay {
        self.overlay
    }

    /// MTU of every node's `eth0`.
    pub fn underlay_mtu(&self) -> u16 {
        self.underlay_mtu
    }

    /// MTU of the pod veths (see [`ClusterSpec::pod_mtu`]).
    pub fn pod_mtu(&self) -> u16 {
        self.pod_mtu
    }

    /// The nodes, in spec order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A pod by name.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods().find(|p| p.name == name)
    }

    /// All pods, node by node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// Every namespace of the cluster (nodes, pods and the switch, if any).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The switch namespace holding the underlay bridge (clusters of other
    /// than two nodes).
    pub fn switch_netns(&self) -> Option<&str> {
        self.switch.as_deref()
    }

    /// Routes a node needs toward the other nodes' blocks:
    /// `(block, next hop's underlay address)`, for tunl configs. Empty for an
    /// unknown node.
    pub fn remote_routes(&self, node: &str) -> Vec<(Ipv4Network, Ipv4Addr)> {
        if self.node(node).is_none() {
            return Vec::new();
        }
        self.nodes
            .iter()
            .filter(|n| n.name != node)
            .map(|n| (n.block, n.underlay))
            .collect()
    }

    /// The namespace for `name`: a namespace of this cluster, or the name of
    /// one of its nodes or pods, or `"switch"`.
    pub fn netns(&self, name: &str) -> Result<&str, TopologyError> {
        if let Some(ns) = self.namespaces.iter().find(|ns| *ns == name) {
            return Ok(ns);
        }
        if let Some(node) = self.node(name) {
            return Ok(&node.netns);
        }
        if let Some(pod) = self.pod(name) {
            return Ok(&pod.netns);
        }
        if name == "switch"
            && let Some(sw) = &self.switch
        {
            return Ok(sw);
        }
        Err(TopologyError::NotFound {
            kind: "namespace",
            name: name.to_owned(),
        })
    }

    /// Runs `args` in a namespace of the cluster (by namespace, node or pod
    /// name; see [`Cluster::netns`]) and returns its output whatever its exit
    /// status.
    pub fn exec(&self, netns: &str, args: &[&str]) -> Result<Output, TopologyError> {
        let ns = self.netns(netns)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        output_of(&mut cmd)
    }

    /// Like [`Cluster::exec`], but fails unless the command succeeds; returns
    /// its stdout.
    pub fn exec_ok(&self, netns: &str, args: &[&str]) -> Result<String, TopologyError> {
        let ns = self.netns(netns)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        checked(&mut cmd)
    }

    /// A [`Command`] that runs `program` in a namespace of the cluster (by
    /// namespace, node or pod name), for callers that need environment
    /// variables or other settings; start it and hand the child to
    /// [`Cluster::adopt`] so the cluster ends it on drop.
    pub fn command(&self, netns: &str, program: &str) -> Result<Command, TopologyError> {
        let ns = self.netns(netns)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        Ok(cmd)
    }

    /// Tracks a process started from [`Cluster::command`]: the cluster kills
    /// it on drop. Returns its pid.
    pub fn adopt(&self, child: Child) -> u32 {
        let pid = child.id();
        self.lock_children().push(child);
        pid
    }

    /// Starts `args` in a namespace of the cluster and returns its pid. The
    /// process is tracked: the cluster kills it on drop. Its stdin is null.
    pub fn spawn(
        &self,
        netns: &str,
        args: &[&str],
        output: ProcessOutput,
    ) -> Result<u32, TopologyError> {
        let ns = self.netns(netns)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null());
        match &output {
            ProcessOutput::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
            ProcessOutput::Inherit => {}
            ProcessOutput::Piped => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            ProcessOutput::File(path) => {
                let file = open_log(path)?;
                let err = file.try_clone().map_err(|source| TopologyError::Io {
                    context: format!("duplicating log file {}", path.display()),
                    source,
                })?;
                cmd.stdout(file).stderr(err);
            }
        }
        // `ip netns exec` execs the command itself, so the pid is the
        // command's.
        let child = cmd.spawn().map_err(|source| TopologyError::Spawn {
            command: command_line(&cmd),
            source,
        })?;
        let pid = child.id();
        debug!(pid, netns = ns, command = ?args, "spawned");
        self.lock_children().push(child);
        Ok(pid)
    }

    /// Pids of the tracked processes (spawned, not yet reaped or taken).
    pub fn pids(&self) -> Vec<u32> {
        self.lock_children().iter().map(Child::id).collect()
    }

    /// Takes a spawned process out of the cluster's care, e.g. to read its
    /// pipes. The caller must then end and reap it.
    pub fn take_child(&self, pid: u32) -> Option<Child> {
        let mut children = self.lock_children();
        let i = children.iter().position(|c| c.id() == pid)?;
        Some(children.swap_remove(i))
    }

    /// The exit status of a spawned process if it has exited (it is then
    /// reaped and no longer tracked), `None` if it still runs.
    pub fn try_wait(&self, pid: u32) -> Result<Option<ExitStatus>, TopologyError> {
        let mut children = self.lock_children();
        let i = children
            .iter()
            .position(|c| c.id() == pid)
            .ok_or_else(|| not_found_pid(pid))?;
        let status = children[i].try_wait().map_err(|source| TopologyError::Io {
            context: format!("waiting for pid {pid}"),
            source,
        })?;
        if status.is_some() {
            // Already reaped: `wait` returns the cached status at once.
            let _ = children.swap_remove(i).wait();
        }
        Ok(status)
    }

    /// Waits up to `timeout` for a spawned process to exit; `None` if it
    /// still runs then.
    pub fn wait_timeout(
        &self,
        pid: u32,
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, TopologyError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait(pid)? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (e.g. `libc::SIGHUP`) to a spawned process.
    pub fn signal(&self, pid: u32, signal: i32) -> Result<(), TopologyError> {
        if !self.lock_children().iter().any(|c| c.id() == pid) {
            return Err(not_found_pid(pid));
        }
        send_signal(pid, signal)
    }

    /// Ends a spawned process: SIGTERM, then SIGKILL if it has not exited
    /// after a short grace period. Returns its exit status.
    pub fn terminate(&self, pid: u32) -> Result<ExitStatus, TopologyError> {
        let mut child = self.take_child(pid).ok_or_else(|| not_found_pid(pid))?;
        stop_child(&mut child).map_err(|source| TopologyError::Io {
            context: format!("ending pid {pid}"),
            source,
        })
    }

    /// Disarms cleanup and returns the tag: the namespaces and the processes
    /// stay (for `tunl lab --keep`); [`teardown`] removes them later.
    pub fn keep(mut self) -> String {
        self.armed = false;
        std::mem::take(&mut self.tag)
    }

    /// Pings `to` from a pod (`count` echo requests, `interval` apart, one
    /// second's wait for the last reply). Lost replies are not an error:
    /// look at [`PingResult::received`].
    pub fn ping(
        &self,
        from_pod: &str,
        to: Ipv4Addr,
        count: u32,
        interval: Duration,
    ) -> Result<PingResult, TopologyError> {
        let pod = self.pod_named(from_pod)?;
        let count = count.max(1).to_string();
        let interval = format!("{:.3}", interval.as_secs_f64().max(0.002));
        let to = to.to_string();
        let out = self.exec(
            &pod.netns,
            &["ping", "-n", "-c", &count, "-i", &interval, "-W", "1", &to],
        )?;
        let raw = String::from_utf8_lossy(&out.stdout).into_owned();
        // ping exits 1 when replies were missing, 2 on other errors.
        if !matches!(out.status.code(), Some(0 | 1)) {
            return Err(TopologyError::Command {
                command: format!("ping {to} in {}", pod.netns),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned() + &raw,
            });
        }
        parse_ping(raw)
    }

    /// Pings `to` from a pod, one request at a time, until a reply comes
    /// (e.g. while tunl daemons start); gives up with
    /// [`TopologyError::Timeout`] after `timeout`. Returns the ping that got
    /// the reply.
    pub fn wait_reachable(
        &self,
        from_pod: &str,
        to: Ipv4Addr,
        timeout: Duration,
    ) -> Result<PingResult, TopologyError> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.ping(from_pod, to, 1, Duration::from_millis(200))?;
            if result.received > 0 {
                return Ok(result);
            }
            if Instant::now() >= deadline {
                return Err(TopologyError::Timeout(format!(
                    "{to} to answer pings from {from_pod}: {}",
                    result.raw.trim()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One `iperf3` TCP run from `client_pod` to `server_pod`: `seconds`
    /// long, `streams` parallel streams. Starts a one-shot server in the
    /// server pod, waits until it listens, runs the client with `-J` and
    /// always ends the server.
    pub fn iperf3_tcp(
        &self,
        client_pod: &str,
        server_pod: &str,
        seconds: u32,
        streams: u32,
    ) -> Result<IperfResult, TopologyError> {
        let streams = streams.max(1).to_string();
        let json = self.iperf3(client_pod, server_pod, seconds, &["-P", &streams])?;
        let end = &json["end"];
        let received = &end["sum_received"];
        Ok(IperfResult {
            bits_per_second: json_f64(received, "bits_per_second")?,
            retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            bytes: json_f64(received, "bytes")? as u64,
        })
    }

    /// One `iperf3` UDP run from `client_pod` to `server_pod`: `seconds`
    /// long, datagrams of `payload_len` bytes, at `target_bitrate` bits per
    /// second (0: as fast as possible).
    pub fn iperf3_udp(
        &self,
        client_pod: &str,
        server_pod: &str,
        seconds: u32,
        payload_len: u16,
        target_bitrate: u64,
    ) -> Result<UdpResult, TopologyError> {
        let len = payload_len.to_string();
        let rate = target_bitrate.to_string();
        let json = self.iperf3(
            client_pod,
            server_pod,
            seconds,
            &["-u", "-l", &len, "-b", &rate],
        )?;
        let end = &json["end"];
        let sum = if end["sum_received"].is_object() {
            &end["sum_received"]
        } else {
            &end["sum"]
        };
        let packets = json_f64(sum, "packets")? as u64;
        let lost = json_f64(sum, "lost_packets")?.max(0.0) as u64;
        let secs = json_f64(sum, "seconds")?;
        let received = packets.saturating_sub(lost) as f64;
        Ok(UdpResult {
            packets_per_second_received: if secs > 0.0 { received / secs } else { 0.0 },
            lost_percent: json_f64(sum, "lost_percent")?,
            packets_sent: packets,
            packets_lost: lost,
            bits_per_second_received: received * f64::from(payload_len) * 8.0 / secs.max(1e-9),
        })
    }

    /// The shared part of the iperf3 helpers: returns the client's JSON.
    fn iperf3(
        &self,
        client_pod: &str,
        server_pod: &str,
        seconds: u32,
        extra: &[&str],
    ) -> Result<serde_json::Value, TopologyError> {
        let client = self.pod_named(client_pod)?;
        let server = self.pod_named(server_pod)?;
        let port = (5201 + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 1000).to_string();
        let server_ip = server.ip.to_string();
        let pid = self.spawn(
            &server.netns,
            &["iperf3", "-s", "-1", "-B", &server_ip, "-p", &port],
            ProcessOutput::Null,
        )?;
        let _server = Terminator { cluster: self, pid };
        self.wait_listening(&server.netns, pid, &port)?;

        let secs = seconds.max(1).to_string();
        let mut args = vec!["iperf3", "-c", &server_ip, "-p", &port, "-t", &secs, "-J"];
        args.extend_from_slice(extra);
        let out = self.exec(&client.netns, &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json: serde_json::Value =
            serde_json::from_str(&stdout).map_err(|e| TopologyError::Parse {
                tool: "iperf3",
                detail: format!("{e}: {}", String::from_utf8_lossy(&out.stderr)),
            })?;
        if let Some(error) = json["error"].as_str() {
            return Err(TopologyError::Command {
                command: args.join(" "),
                status: out.status,
                stderr: error.to_owned(),
            });
        }
        Ok(json)
    }

    /// Waits until a TCP socket listens on `port` in `netns` (or the process
    /// `pid` exited, which is an error).
    fn wait_listening(&self, netns: &str, pid: u32, port: &str) -> Result<(), TopologyError> {
        let deadline = Instant::now() + LISTEN_WAIT;
        let filter = format!("sport = :{port}");
        loop {
            let out = self.exec_ok(netns, &["ss", "-Hltn", &filter])?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            if let Some(status) = self.try_wait(pid)? {
                return Err(TopologyError::Command {
                    command: format!("iperf3 -s -p {port} in {netns}"),
                    status,
                    stderr: "exited before listening".into(),
                });
            }
            if Instant::now() >= deadline {
                return Err(TopologyError::Timeout(format!(
                    "iperf3 to listen on port {port} in {netns}"
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn pod_named(&self, name: &str) -> Result<&Pod, TopologyError> {
        self.pod(name).ok_or_else(|| TopologyError::NotFound {
            kind: "pod",
            name: name.to_owned(),
        })
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates and wires every namespace; records each namespace as soon as
    /// it exists so a failure part-way is cleaned up by `Drop`.
    fn wire(&mut self) -> Result<(), TopologyError> {
        let mtu = self.underlay_mtu.to_string();
        let pod_mtu = self.pod_mtu.to_string();
        let nodes = self.nodes.clone();

        for node in &nodes {
            self.add_netns(&node.netns)?;
            write_sysctls(
                &node.netns,
                &[
                    ("ipv4/ip_forward", "1"),
                    ("ipv4/conf/all/rp_filter", "0"),
                    ("ipv4/conf/default/rp_filter", "0"),
                    ("ipv6/conf/all/disable_ipv6", "1"),
                    ("ipv6/conf/default/disable_ipv6", "1"),
                ],
            )?;
        }

        // Underlay: one veth pair, or a bridge in the switch namespace.
        if let Some(switch) = self.switch.clone() {
            self.add_netns(&switch)?;
            write_sysctls(
                &switch,
                &[
                    ("ipv6/conf/all/disable_ipv6", "1"),
                    ("ipv6/conf/default/disable_ipv6", "1"),
                ],
            )?;
            ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &switch, "link", "set", "br0", "up"])?;
            for (i, node) in nodes.iter().enumerate() {
                let port = format!("n{}", i + 1);
                ip(&[
                    "-n",
                    &switch,
                    "link",
                    "add",
                    &port,
                    "mtu",
                    &mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "mtu",
                    &mtu,
                    "netns",
                    &node.netns,
                ])?;
                ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            }
        } else {
            let (a, b) = (&nodes[0].netns, &nodes[1].netns);
            ip(&[
                "-n", a, "link", "add", "eth0", "mtu", &mtu, "type", "veth", "peer", "name",
                "eth0", "mtu", &mtu, "netns", b,
            ])?;
        }
        for node in &nodes {
            let addr = format!("{}/{UNDERLAY_PREFIX_LEN}", node.underlay);
            ip(&["-n", &node.netns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &node.netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &node.netns, "link", "set", "lo", "up"])?;
            // Proxy ARP answers only for an address with a unicast route out
            // of another device: give the pods' gateway one, as a node's
            // default route does in a real cluster.
            ip(&[
                "-n",
                &node.netns,
                "route",
                "add",
                &POD_GATEWAY.to_string(),
                "dev",
                "eth0",
                "scope",
                "link",
            ])?;
            write_sysctls(&node.netns, &[("ipv4/conf/eth0/rp_filter", "0")])?;
        }

        // Pods, wired as Calico's CNI plugin wires them.
        for node in &nodes {
            for pod in &node.pods {
                self.add_netns(&pod.netns)?;
                write_sysctls(
                    &pod.netns,
                    &[
                        ("ipv6/conf/all/disable_ipv6", "1"),
                        ("ipv6/conf/default/disable_ipv6", "1"),
                    ],
                )?;
                let (n, p, v) = (node.netns.as_str(), pod.netns.as_str(), pod.veth.as_str());
                ip(&[
                    "-n", n, "link", "add", v, "mtu", &pod_mtu, "type", "veth", "peer", "name",
                    "eth0", "mtu", &pod_mtu, "netns", p,
                ])?;
                ip(&["-n", n, "link", "set", v, "address", CALI_MAC, "up"])?;
                write_sysctls(
                    n,
                    &[
                        (&format!("ipv4/conf/{v}/proxy_arp"), "1"),
                        (&format!("ipv4/conf/{v}/rp_filter"), "0"),
                        (&format!("ipv4/neigh/{v}/proxy_delay"), "0"),
                    ],
                )?;
                let ip32 = format!("{}/32", pod.ip);
                let gw = POD_GATEWAY.to_string();
                ip(&["-n", p, "link", "set", "lo", "up"])?;
                ip(&["-n", p, "addr", "add", &ip32, "dev", "eth0"])?;
                ip(&["-n", p, "link", "set", "eth0", "up"])?;
                ip(&["-n", p, "route", "add", &gw, "dev", "eth0", "scope", "link"])?;
                ip(&[
                    "-n", p, "route", "add", "default", "via", &gw, "dev", "eth0",
                ])?;
                ip(&["-n", n, "route", "add", &ip32, "dev", v, "scope", "link"])?;
            }
        }

        match self.overlay {
            Overlay::None => {}
            Overlay::Direct => {
                for node in &nodes {
                    for (block, via) in self.remote_routes(&node.name) {
                        ip(&[
                            "-n",
                            &node.netns,
                            "route",
                            "add",
                            &block.to_string(),
                            "via",
                            &via.to_string(),
                            "dev",
                            "eth0",
                        ])?;
                    }
                }
            }
            Overlay::Vxlan => self.wire_vxlan(&nodes)?,
        }
        Ok(())
    }

    /// Kernel VXLAN between every pair of nodes, as Calico's VXLAN mode sets
    /// it up: static routes, neighbours and fdb entries, no learning.
    fn wire_vxlan(&self, nodes: &[Node]) -> Result<(), TopologyError> {
        let mtu = (self.underlay_mtu - VXLAN_OVERHEAD).to_string();
        let vni = VXLAN_VNI.to_string();
        let port = VXLAN_PORT.to_string();
        for (i, node) in nodes.iter().enumerate() {
            let ns = node.netns.as_str();
            let vtep = node.vtep.expect("VXLAN nodes have a VTEP");
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                VXLAN_DEVICE,
                "mtu",
                &mtu,
                "address",
                &vtep_mac(i),
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &node.underlay.to_string(),
                "dev",
                "eth0",
                "dstport",
                &port,
                "nolearning",
            ])?;
            write_sysctls(ns, &[(&format!("ipv4/conf/{VXLAN_DEVICE}/rp_filter"), "0")])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{vtep}/32"),
                "dev",
                VXLAN_DEVICE,
            ])?;
            ip(&["-n", ns, "link", "set", VXLAN_DEVICE, "up"])?;
            for (j, other) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                let other_vtep = other.vtep.expect("VXLAN nodes have a VTEP").to_string();
                let mac = vtep_mac(j);
                ip(&[
                    "-n",
                    ns,
                    "neigh",
                    "add",
                    &other_vtep,
                    "lladdr",
                    &mac,
                    "dev",
                    VXLAN_DEVICE,
                    "nud",
                    "permanent",
                ])?;
                let mut fdb = Command::new("bridge");
                fdb.args(["-netns", ns, "fdb", "append", &mac, "dev", VXLAN_DEVICE])
                    .args(["dst", &other.underlay.to_string()]);
                checked(&mut fdb)?;
                ip(&[
                    "-n",
                    ns,
                    "route",
                    "add",
                    &other.block.to_string(),
                    "via",
                    &other_vtep,
                    "dev",
                    VXLAN_DEVICE,
                    "onlink",
                ])?;
            }
        }
        Ok(())
    }

    fn add_netns(&mut self, name: &str) -> Result<(), TopologyError> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        Ok(())
    }

    /// Kills the tracked processes, then deletes the namespaces.
    fn cleanup(&mut self) {
        let mut children = std::mem::take(&mut *self.lock_children());
        for child in &children {
            let _ = send_signal(child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline {
            children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
            if children.is_empty() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        for child in &mut children {
            warn!(pid = child.id(), "process ignored SIGTERM; killing");
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = remove_netns(ns) {
                warn!(netns = ns, error = %e, "could not remove namespace");
            }
        }
        self.namespaces.clear();
    }
}

/// A summary for people: one line per node and per pod, with namespaces.
impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "cluster {} (overlay {}, underlay MTU {}, pod MTU {})",
            self.tag, self.overlay, self.underlay_mtu, self.pod_mtu
        )?;
        for node in &self.nodes {
            write!(
                f,
                "  node {} underlay {}/{UNDERLAY_PREFIX_LEN} block {} netns {}",
                node.name, node.underlay, node.block, node.netns
            )?;
            if let Some(vtep) = node.vtep {
                write!(f, " vtep {vtep}")?;
            }
            writeln!(f)?;
            for pod in &node.pods {
                writeln!(
                    f,
                    "    pod {} {} via {} netns {}",
                    pod.name, pod.ip, pod.veth, pod.netns
                )?;
            }
        }
        if let Some(switch) = &self.switch {
            writeln!(f, "  switch netns {switch} (bridge br0)")?;
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.armed {
            self.cleanup();
        }
    }
}

/// Ends a process of the cluster when dropped (used for iperf3 servers).
struct Terminator<'a> {
    cluster: &'a Cluster,
    pid: u32,
}

impl Drop for Terminator<'_> {
    fn drop(&mut self) {
        // Not found means it already exited and was reaped.
        let _ = self.cluster.terminate(self.pid);
    }
}

/// Namespaces that carry `tag` (`tunl-<tag>-*`), sorted.
pub fn tagged_namespaces(tag: &str) -> Result<Vec<String>, TopologyError> {
    let prefix = ns_name(tag, "");
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TopologyError::Io {
                context: format!("listing {NETNS_DIR}"),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    names.sort();
    Ok(names)
}

/// Removes a kept cluster (see [`Cluster::keep`]) by its tag: ends every
/// process inside its namespaces (SIGTERM, then SIGKILL) and deletes the
/// namespaces. Returns how many namespaces were deleted.
pub fn teardown(tag: &str) -> Result<usize, TopologyError> {
    let names = tagged_namespaces(tag)?;
    for ns in &names {
        remove_netns(ns)?;
    }
    Ok(names.len())
}

/// Ends the processes inside a namespace and deletes it.
fn remove_netns(ns: &str) -> Result<(), TopologyError> {
    let pids = checked(Command::new("ip").args(["netns", "pids", ns])).unwrap_or_default();
    let pids: Vec<u32> = pids
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != std::process::id())
        .collect();
    for &pid in &pids {
        let _ = send_signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + KILL_GRACE;
    let mut alive = pids;
    while !alive.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        alive.retain(|&p| process_alive(p));
    }
    for &pid in &alive {
        warn!(pid, netns = ns, "process ignored SIGTERM; killing");
        let _ = send_signal(pid, libc::SIGKILL);
    }
    ip(&["netns", "del", ns])
}

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// SIGTERM, a grace period, then SIGKILL; reaps the child.
fn stop_child(child: &mut Child) -> io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let _ = send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()
}

/// Sends a signal with the shell's kill (this crate keeps `unsafe` out of `src/`).
fn send_signal(pid: u32, signal: i32) -> Result<(), TopologyError> {
    // The shell's builtin, so no procps is needed; both are integers.
    let script = format!("kill -{signal} {pid}");
    checked(Command::new("sh").args(["-c", &script])).map(drop)
}

/// Checks for CAP_NET_ADMIN and CAP_SYS_ADMIN in the effective set.
fn check_privileges() -> Result<(), TopologyError> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let needed = (1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN);
    if caps & needed == needed {
        Ok(())
    } else {
        Err(TopologyError::NotPrivileged)
    }
}

fn check_name(kind: &str, name: &str) -> Result<(), TopologyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(TopologyError::InvalidSpec(format!(
            "{kind} name {name:?} must be 1-64 ASCII letters, digits, '.', '_' or '-'"
        )))
    }
}

/// The built nodes and pods (names resolved, nothing created yet).
fn node_plan(spec: &ClusterSpec, tag: &str) -> Vec<Node> {
    spec.nodes
        .iter()
        .map(|n| Node {
            name: n.name.clone(),
            netns: ns_name(tag, &n.name),
            underlay: n.underlay,
            block: n.block,
            vtep: (spec.overlay == Overlay::Vxlan).then(|| n.block.network()),
            pods: n
                .pods
                .iter()
                .map(|p| Pod {
                    name: p.name.clone(),
                    netns: ns_name(tag, &p.name),
                    ip: p.ip,
                    veth: p.veth.clone(),
                    node: n.name.clone(),
                })
                .collect(),
        })
        .collect()
}

fn ns_name(tag: &str, name: &str) -> String {
    format!("tunl-{tag}-{name}")
}

/// A locally administered unicast MAC for the i-th node's VTEP.
fn vtep_mac(i: usize) -> String {
    format!("66:74:75:6e:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Network {
    Ipv4Network::new(addr, prefix).expect("prefix length is at most 32")
}

/// Writes `/proc/sys/net/<key>` values inside a namespace. IPv6 keys are
/// skipped on kernels without IPv6.
fn write_sysctls(ns: &str, values: &[(&str, &str)]) -> Result<(), TopologyError> {
    let mut script = String::from("set -e\n");
    for (key, value) in values {
        let path = format!("/proc/sys/net/{key}");
        if key.starts_with("ipv6/") {
            let _ = writeln!(script, "[ ! -e '{path}' ] || echo {value} > '{path}'");
        } else {
            let _ = writeln!(script, "echo {value} > '{path}'");
        }
    }
    checked(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", &script])).map(drop)
}

/// Runs `ip ARGS`, failing unless it succeeds.
fn ip(args: &[&str]) -> Result<(), TopologyError> {
    checked(Command::new("ip").args(args)).map(drop)
}

/// Runs a command, failing unless it succeeds; returns its stdout.
fn checked(cmd: &mut Command) -> Result<String, TopologyError> {
    let out = output_of(cmd)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TopologyError::Command {
            command: command_line(cmd),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn output_of(cmd: &mut Command) -> Result<Output, TopologyError> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| TopologyError::Spawn {
            command: command_line(cmd),
            source,
        })
}

fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

fn open_log(path: &Path) -> Result<File, TopologyError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| TopologyError::Io {
            context: format!("opening log file {}", path.display()),
            source,
        })
}

fn not_found_pid(pid: u32) -> TopologyError {
    TopologyError::NotFound {
        kind: "process",
        name: pid.to_string(),
    }
}

fn json_f64(value: &serde_json::Value, key: &str) -> Result<f64, TopologyError> {
    value[key].as_f64().ok_or_else(|| TopologyError::Parse {
        tool: "iperf3",
        detail: format!("no number {key:?} in {value}"),
    })
}

/// Parses ping's output: one `ttl=` and `time=` per reply line, then the
/// `N packets transmitted, M received` summary.
fn parse_ping(raw: String) -> Result<PingResult, TopologyError> {
    let mut ttls = Vec::new();
    let mut rtts_ms = Vec::new();
    let mut summary = None;
    for line in raw.lines() {
        if line.contains(" bytes from ") {
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            if let (Some(ttl), Some(time)) = (field("ttl="), field("time=")) {
                let ttl = ttl.parse().ok();
                let time = time.parse().ok();
                if let (Some(ttl), Some(time)) = (ttl, time) {
                    ttls.push(ttl);
                    rtts_ms.push(time);
                }
            }
        } else if line.contains("packets transmitted") {
            let mut numbers = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
            summary = numbers.next().zip(numbers.next());
        }
    }
    let (transmitted, received) = summary.ok_or_else(|| TopologyError::Parse {
        tool: "ping",
        detail: format!("no summary line in {raw:?}"),
    })?;
    Ok(PingResult {
        transmitted,
        received,
        ttls,
        rtts_ms,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_output() {
        let raw = "PING 10.20.42.31 (10.20.42.31) 56(84) bytes of data.\n\
            64 bytes from 10.20.42.31: icmp_seq=1 ttl=62 time=5.60 ms\n\
            64 bytes from 10.20.42.31: icmp_seq=2 ttl=62 time=1.66 ms\n\
            \n--- 10.20.42.31 ping statistics ---\n\
            3 packets transmitted, 2 received, 33.3333% packet loss, time 6ms\n\
            rtt min/avg/max/mdev = 1.662/3.015/5.595/1.825 ms\n";
        let r = parse_ping(raw.to_owned()).unwrap();
        assert_eq!((r.transmitted, r.received), (3, 2));
        assert_eq!(r.ttls, vec![62, 62]);
        assert_eq!(r.rtts_ms, vec![5.60, 1.66]);
        assert!(!r.all_replied());
    }

    #[test]
    fn parses_ping_output_with_errors_and_no_replies() {
        let raw = "PING 10.9.9.9 (10.9.9.9) 56(84) bytes of data.\n\
            From 10.20.105.215 icmp_seq=1 Destination Host Unreachable\n\n\
            --- 10.9.9.9 ping statistics ---\n\
            2 packets transmitted, 0 received, +1 errors, 100% packet loss, time 1001ms\n";
        let r = parse_ping(raw.to_owned()).unwrap();
        assert_eq!((r.transmitted, r.received), (2, 0));
        assert!(r.ttls.is_empty());
        assert!(parse_ping("garbage".into()).is_err());
    }

    #[test]
    fn seed_spec_matches_the_article() {
        let spec = ClusterSpec::seed();
        spec.validate().unwrap();
        assert_eq!(spec.nodes[0].name, "node1.sit");
        assert_eq!(spec.nodes[1].pods[0].veth, "cali4bb1efe70a2");
        assert_eq!(spec.pod_mtu(), 1480);
        assert_eq!(spec.clone().with_overlay(Overlay::Vxlan).pod_mtu(), 1450);
    }

    #[test]
    fn generated_spec_is_valid_and_unique() {
        let spec = ClusterSpec::generated(5, 3).with_overlay(Overlay::Vxlan);
        spec.validate().unwrap();
        assert_eq!(spec.nodes[2].underlay, Ipv4Addr::new(172, 16, 37, 6));
        assert_eq!(spec.nodes[2].block.to_string(), "10.20.0.128/26");
        assert_eq!(spec.nodes[2].pods[0].ip, Ipv4Addr::new(10, 20, 0, 130));
        let veth = &spec.nodes[0].pods[0].veth;
        assert_eq!(veth.len(), 15);
        assert!(veth.starts_with("cali"));
        assert_eq!(veth_name("node1-pod1"), *veth);
        assert_ne!(veth_name("node1-pod1"), veth_name("node1-pod2"));
    }

    #[test]
    fn overlay_names_round_trip() {
        for o in [Overlay::None, Overlay::Direct, Overlay::Vxlan] {
            assert_eq!(o.to_string().parse::<Overlay>().unwrap(), o);
        }
        assert_eq!("VXLAN".parse::<Overlay>().unwrap(), Overlay::Vxlan);
        assert!("ipip".parse::<Overlay>().is_err());
    }

    #[test]
    fn rejects_bad_specs() {
        let mut spec = ClusterSpec::seed();
        spec.nodes[1].block = spec.nodes[0].block;
        assert!(matches!(
            spec.validate(),
            Err(TopologyError::InvalidSpec(_))
        ));

        let mut spec = ClusterSpec::seed();
        spec.nodes[0].pods[0].ip = Ipv4Addr::new(10, 20, 105, 1);
        assert!(spec.validate().is_err());

        let spec = ClusterSpec::seed().with_tag("a-b");
        assert!(spec.validate().is_err());

        let mut spec = ClusterSpec::seed();
        spec.nodes[1].underlay = Ipv4Addr::new(192, 168, 0, 1);
        assert!(spec.validate().is_err());

        let mut spec = ClusterSpec::seed();
        spec.nodes[0].pods[0].veth = "cali-name-too-long".into();
        assert!(spec.validate().is_err());

        let mut spec = ClusterSpec::generated(3, 1);
        spec.nodes[0].pods[0].name = "switch".into();
        assert!(spec.validate().is_err());

        let mut spec = ClusterSpec::seed();
        spec.nodes[1].pods[0].name = "node1.sit".into();
        assert!(spec.validate().is_err());
    }
}
